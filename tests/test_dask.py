"""streamfm.dask on a LocalCluster of two worker processes: the same model as the
in-process driver on the same partitions, bit for bit, and predictions in input order."""

import io

import numpy as np
import pytest

dask_bag = pytest.importorskip("dask.bag", reason="dask is in the [test] extra: pip install -e .[test]")
distributed_mod = pytest.importorskip("distributed", reason="dask[distributed] is in the [test] extra")

import streamfm  # noqa: E402
import streamfm.dask as sfd  # noqa: E402
from streamfm import distributed  # noqa: E402
from streamfm.synth import write_ctr  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def lines():
    buf = io.BytesIO()
    write_ctr(buf, 20000, seed=7, scale=0.01)
    return buf.getvalue().decode().splitlines()


@pytest.fixture(scope="module")
def client():
    with distributed_mod.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
        with distributed_mod.Client(cluster) as c:
            yield c


def same_model(a, b):
    ma, mb = a.training_model(), b.training_model()
    n = ma.n_rows
    return (mb.n_rows == n and ma.samples_seen == mb.samples_seen
            and all(ma.table.name_bytes(r) == mb.table.name_bytes(r) for r in range(n))
            and np.array_equal(ma.params[:n].view(np.uint64), mb.params[:n].view(np.uint64)))


def test_dask_trains_the_in_process_drivers_model(client, lines):
    bag = dask_bag.from_sequence(lines, npartitions=4)
    parts = client.compute(bag.to_delayed(), sync=True)
    assert [len(p) for p in parts] == [5000] * 4
    fm = sfd.train(bag, client=client, k=K, seed=2, sync_every=1500, warm_start=1000)
    want = distributed.train(parts, k=K, seed=2, sync_every=1500, warm_start=1000)
    assert same_model(fm, want)
    assert fm.last_report.lines == 20000 and fm.last_report.bad == 0
    assert fm.last_report.logloss == pytest.approx(want.last_report.logloss, rel=1e-12)


def test_dask_one_partition_is_a_sequential_run(client, lines):
    bag = dask_bag.from_sequence(lines[:6000], npartitions=1)
    fm = sfd.train(bag, client=client, k=K, seed=3, sync_every=2500)
    seq = streamfm.FM(k=K, seed=3)
    seq.partial_fit(lines[:6000])
    assert same_model(fm, seq)


def test_dask_continues_a_model_and_uses_the_default_client(client, lines):
    start = streamfm.FM(k=K, seed=5)
    start.partial_fit(lines[:3000])
    bag = dask_bag.from_sequence(lines[3000:9000], npartitions=3)
    fm = sfd.train(bag, fm=start, sync_every=1000)  # client: the current one
    want = distributed.train(client.compute(bag.to_delayed(), sync=True), fm=start, sync_every=1000)
    assert same_model(fm, want) and fm.samples_seen == 9000


def test_dask_predict_proba_in_input_order(client, lines):
    fm = streamfm.FM(k=K, seed=1)
    fm.partial_fit(lines[:5000])
    test = lines[5000:8000] + ["1 broken:x", ""]
    got = sfd.predict_proba(fm, dask_bag.from_sequence(test, npartitions=3), client=client).compute()
    want = fm.predict_proba(test)
    assert len(got) == len(test)
    assert np.array_equal(np.array(got[:-2]), want[:-2])
    assert np.isnan(got[-2]) and np.isnan(got[-1])


def test_dask_dataframe_column(client, lines):
    pd = pytest.importorskip("pandas", reason="dask DataFrames need pandas (not in the [test] extra)")
    dd = pytest.importorskip("dask.dataframe", reason="dask DataFrames need dask[dataframe]")
    df = dd.from_pandas(pd.DataFrame({"line": lines[:6000], "n": range(6000)}), npartitions=3)
    fm = sfd.train(df, client=client, column="line", k=K, seed=4, sync_every=1000)
    want = distributed.train([lines[0:2000], lines[2000:4000], lines[4000:6000]], k=K, seed=4, sync_every=1000)
    assert same_model(fm, want)
    probs = sfd.predict_proba(fm, df, client=client, column="line").compute()
    assert probs.name == "probability" and list(probs.index) == list(range(6000))
    assert np.array_equal(probs.to_numpy(), fm.predict_proba(lines[:6000]))
    with pytest.raises(TypeError, match="column"):
        sfd.train(df, client=client, k=K)


def test_dask_series_of_lines(client, lines):
    """A dask Series is the lines, whatever its name (recent dask gives a Series
    ``columns`` too, which once made a Series named 0 train on its element 0)."""
    pd = pytest.importorskip("pandas", reason="dask DataFrames need pandas (not in the [test] extra)")
    dd = pytest.importorskip("dask.dataframe", reason="dask DataFrames need dask[dataframe]")
    want = distributed.train([lines[0:2000], lines[2000:4000], lines[4000:6000]], k=K, seed=4, sync_every=1000)
    for name in (None, 0, "line"):
        s = dd.from_pandas(pd.Series(lines[:6000], name=name), npartitions=3)
        fm = sfd.train(s, client=client, k=K, seed=4, sync_every=1000)
        assert fm.last_report.lines == 6000 and same_model(fm, want), name
        probs = sfd.predict_proba(fm, s, client=client).compute()
        assert np.array_equal(probs.to_numpy(), fm.predict_proba(lines[:6000])), name
    with pytest.raises(TypeError, match="Series"):
        sfd.train(s, client=client, column="line", k=K)


def test_dask_rejects_what_is_not_a_collection(client):
    with pytest.raises(TypeError, match="Bag"):
        sfd.train([b"1 a"], client=client)
