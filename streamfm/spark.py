"""Train and predict on Spark (optional extra: ``pip install streamfm[spark]``; Java 17+).

    from pyspark.sql import SparkSession
    import streamfm.spark

    spark = SparkSession.builder.getOrCreate()
    lines = spark.sparkContext.textFile("hdfs:///clicks/2024-05-01/")
    fm = streamfm.spark.train(lines, k=8, sync_every=200_000)
    fm.save("model.bin")
    scored = streamfm.spark.predict_proba(fm, spark.read.text("hdfs:///to-score/"))  # adds "probability"

Training runs the rounds of ``streamfm.distributed``: each round's base is a
broadcast variable, every partition trains its range of lines in
``mapPartitionsWithIndex``, the States are merged with ``treeReduce``
(``streamfm.merge.merge``: associative and commutative, so Spark may group
them as it likes) and written over the base on the driver. The RDD is
cached for the run. Tasks are pure functions of the broadcast and their
partition, so Spark may re-run a lost or slow one.
"""

import functools
import itertools

from pyspark import RDD

from . import distributed as _dist
from . import merge as _merge

__all__ = ["train", "predict_proba"]


def _is_dataframe(data):
    return hasattr(data, "schema") and hasattr(data, "rdd") and hasattr(data, "columns")


def _text_column(df, column):
    if column is None:
        if len(df.columns) != 1:
            raise TypeError("a DataFrame with %d columns: give column= (the column of lines)" % len(df.columns))
        column = df.columns[0]
    if column not in df.columns:
        raise TypeError("no column %r in the DataFrame (columns: %s)" % (column, ", ".join(df.columns)))
    return column


def _lines_rdd(data, column):
    """An RDD of lines: the RDD itself, or a DataFrame's ``column``."""
    if isinstance(data, RDD):
        if column is not None:
            raise TypeError("column is for a DataFrame, not an RDD")
        return data
    if _is_dataframe(data):
        column = _text_column(data, column)
        return data.select(column).rdd.map(_first)
    raise TypeError("expected an RDD of lines or a DataFrame, not %s" % type(data).__name__)


def _first(row):
    return row[0]


def _count(_, it):
    return [sum(1 for _ in it)]


def _head_part(sizes, index, it):
    if not sizes.get(index):
        return []
    return [(index, list(itertools.islice(it, sizes[index])))]


def _train_part(bc, ranges, options, index, it):
    if index not in ranges:
        return []
    start, stop = ranges[index]
    return [_merge.train_partition(bc.value, it, start, stop, partition=index, **options)]


class _Engine:
    """The rounds of ``distributed.run`` on Spark."""

    def __init__(self, rdd, rule, depth, options):
        self.rdd = rdd
        self.sc = rdd.context
        self.rule = rule
        self.depth = depth
        self.task_options = options
        self.broadcasts = []

    def lengths(self):
        return self.rdd.mapPartitionsWithIndex(_count).collect()

    def heads(self, tasks):
        sizes = {p: stop for p, _, stop in tasks}
        got = dict(self.rdd.mapPartitionsWithIndex(functools.partial(_head_part, sizes)).collect())
        return [got[p] for p, _, _ in tasks]

    def ship(self, base):
        bc = self.sc.broadcast(base)
        self.broadcasts.append(bc)
        return bc

    def round(self, bc, tasks, i):
        ranges = {p: (start, stop) for p, start, stop in tasks}
        states = self.rdd.mapPartitionsWithIndex(functools.partial(_train_part, bc, ranges, self.task_options))
        return states.treeReduce(functools.partial(_merge.merge_pair, rule=self.rule), self.depth)

    def counts(self, state):
        return _dist.counts(state)

    def apply(self, bc, state):
        base = bc.value.apply(state)
        self.release()
        return self.ship(base)

    def fetch(self, bc):
        return bc.value

    def release(self):
        for bc in self.broadcasts:
            bc.unpersist()
        self.broadcasts = []


def train(data, *, fm=None, column=None, sync_every=None, warm_start=0, rule="blend", depth=2, on_error="skip",
          max_bad_fraction=None, **fm_params):
    """Train a ``streamfm.FM`` on a Spark RDD of lines or a DataFrame column of them.

    Parameters
    ----------
    data : pyspark.RDD or pyspark.sql.DataFrame
        Lines ``LABEL NAME:VALUE ...`` (str), one element each (e.g.
        ``sc.textFile``), or a DataFrame with ``column`` holding them
        (``spark.read.text`` gives one column, "value"). Each partition is
        one task's lines, in order.
    fm : streamfm.FM, optional
        A model to continue (yesterday's); not changed. Without it, a new
        ``FM(**fm_params)``.
    sync_every : int, optional
        Lines per partition between merges (None: one merge at the end).
    warm_start : int
        Lines trained as one stream before the rounds, taken from the heads
        of all partitions in turn (collected to the driver and trained
        there; see ``streamfm.distributed.train``).
    rule : str
        The merge rule (``streamfm.merge.merge``).
    depth : int
        Depth of ``treeReduce``.
    on_error, max_bad_fraction
        As in ``FM.partial_fit``, per task.

    Returns a new FM, the model ``streamfm.distributed.train`` makes from
    the same partitions (``rdd.glom().collect()``).
    """
    rdd = _lines_rdd(data, column)
    _merge.Merger(rule)  # checks the name before anything runs
    base = _dist.start_base(fm, **fm_params)
    cached = not rdd.is_cached
    if cached:
        rdd = rdd.cache()
    engine = _Engine(rdd, rule, depth, dict(on_error=on_error, max_bad_fraction=max_bad_fraction))
    try:
        return _dist.run(engine, base, sync_every, warm_start)
    finally:
        engine.release()
        if cached:
            rdd.unpersist()


def _score_lines(bc, it):
    return bc.value.predict(list(it)).tolist()


def _score_rows(bc, column, it):
    rows = list(it)
    probs = bc.value.predict([r[column] for r in rows]).tolist() if rows else []
    return [tuple(r) + (p,) for r, p in zip(rows, probs)]


def predict_proba(fm, data, *, column=None, output_col="probability"):
    """The probability of a positive for every line of ``data``, in input order.

    ``data``: an RDD of lines (returns an RDD of floats), or a DataFrame
    with the lines in ``column`` (returns the DataFrame with a double column
    ``output_col`` added). A bad line gets NaN. The model's weights go to
    the executors once, as a broadcast variable; the result is lazy.
    """
    if isinstance(data, RDD):
        if column is not None:
            raise TypeError("column is for a DataFrame, not an RDD")
        bc = data.context.broadcast(_dist.Scorer.of(fm))
        return data.mapPartitions(functools.partial(_score_lines, bc))
    if not _is_dataframe(data):
        raise TypeError("expected an RDD of lines or a DataFrame, not %s" % type(data).__name__)
    from pyspark.sql.types import DoubleType, StructField, StructType

    column = _text_column(data, column)
    if output_col in data.columns:
        raise TypeError("the DataFrame already has a column %r: give another output_col" % output_col)
    bc = data.rdd.context.broadcast(_dist.Scorer.of(fm))
    schema = StructType(data.schema.fields + [StructField(output_col, DoubleType(), True)])
    scored = data.rdd.mapPartitions(functools.partial(_score_rows, bc, column))
    return data.sparkSession.createDataFrame(scored, schema)
