"""streamfm.spark on local[2]: the same model as the in-process driver on the same
partitions, bit for bit, and predictions in input order.

pyspark (and Java 17+) are not in the [test] extra: ``make test-spark`` installs
the [spark] extra and runs this file, and .ci/run runs it on every CI run.
"""

import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pyspark = pytest.importorskip("pyspark", reason="pyspark is not in the [test] extra: run make test-spark")


def java_major():
    """The major version of the java Spark would start (0: none)."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return 0
    try:
        out = subprocess.run([java, "-version"], capture_output=True, timeout=60).stderr.decode()
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else 0


if java_major() < 17:
    pytest.skip("no Java 17+ (Spark 4 needs it): run make test-spark, which installs a JRE",
                allow_module_level=True)

import streamfm  # noqa: E402
import streamfm.spark as sfs  # noqa: E402
from streamfm import distributed  # noqa: E402
from streamfm.synth import write_ctr  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def lines():
    buf = io.BytesIO()
    write_ctr(buf, 12000, seed=8, scale=0.01)
    return buf.getvalue().decode().splitlines()


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # the workers must run this interpreter (the one with streamfm and numba), not python3 on PATH
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    s = (SparkSession.builder.master("local[2]").appName("streamfm-test")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
         .config("spark.driver.memory", "1g").getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()
    if old is None:
        del os.environ["PYSPARK_PYTHON"]
    else:
        os.environ["PYSPARK_PYTHON"] = old


def same_model(a, b):
    ma, mb = a.training_model(), b.training_model()
    n = ma.n_rows
    return (mb.n_rows == n and ma.samples_seen == mb.samples_seen
            and all(ma.table.name_bytes(r) == mb.table.name_bytes(r) for r in range(n))
            and np.array_equal(ma.params[:n].view(np.uint64), mb.params[:n].view(np.uint64)))


def test_spark_trains_the_in_process_drivers_model(spark, lines):
    rdd = spark.sparkContext.parallelize(lines, 4)
    parts = rdd.glom().collect()
    assert len(parts) == 4 and sum(map(len, parts)) == len(lines) and min(map(len, parts)) > 1000
    fm = sfs.train(rdd, k=K, seed=2, sync_every=1000, warm_start=800)
    want = distributed.train(parts, k=K, seed=2, sync_every=1000, warm_start=800)
    assert same_model(fm, want)
    assert fm.last_report.lines == len(lines)
    assert not rdd.is_cached  # the run's cache is released


def test_spark_dataframe_column_and_prediction(spark, lines):
    df = spark.createDataFrame([(ln, i) for i, ln in enumerate(lines[:6000])], ["line", "i"]).repartition(1)
    fm = sfs.train(df, column="line", k=K, seed=3, sync_every=2500)
    seq = streamfm.FM(k=K, seed=3)
    seq.partial_fit(lines[:6000])
    assert same_model(fm, seq)  # one partition: a sequential run
    test = spark.createDataFrame([(ln, i) for i, ln in enumerate(lines[6000:9000] + ["1 bad:x"])], ["line", "i"])
    rows = sfs.predict_proba(fm, test.repartition(3), column="line").collect()
    got = {r["i"]: r["probability"] for r in rows}
    want = fm.predict_proba(lines[6000:9000])
    assert np.array_equal(np.array([got[i] for i in range(3000)]), want)
    assert np.isnan(got[3000])
    with pytest.raises(TypeError, match="column"):
        sfs.train(df, k=K)


def test_spark_rdd_prediction_in_input_order(spark, lines):
    fm = streamfm.FM(k=K, seed=1)
    fm.partial_fit(lines[:4000])
    rdd = spark.sparkContext.parallelize(lines[4000:10000], 3)
    got = sfs.predict_proba(fm, rdd).collect()
    assert np.array_equal(np.array(got), fm.predict_proba(lines[4000:10000]))
