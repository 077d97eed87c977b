"""Train and predict on a Dask cluster (optional extra: ``pip install streamfm[dask]``).

Like ``xgboost.dask`` and ``lightgbm.dask``: functions take the collection and
a ``client`` (default: the current ``distributed`` client), the data stay on
the workers, and the result is a plain ``streamfm.FM``::

    from distributed import Client
    import dask.bag as db
    import streamfm.dask

    client = Client("scheduler:8786")
    lines = db.read_text("s3://bucket/clicks/2024-05-01/*.txt")
    fm = streamfm.dask.train(lines, client=client, k=8, sync_every=200_000)
    fm.save("model.bin")
    probs = streamfm.dask.predict_proba(fm, db.read_text("s3://bucket/to-score/*.txt"))

Training runs the rounds of ``streamfm.distributed`` with every task on a
worker: the partitions' lines are computed once and stay where they are,
each round's base model is a future the tasks read (sent to each worker
once a round), the States are merged in a tree of tasks and written over
the base on a worker, so the model only comes back to the client at the
end. Tasks are pure functions of their inputs: a task lost with its worker
is simply run again by the scheduler.
"""

import uuid

import dask.bag as _db
from distributed import default_client

from . import distributed as _dist
from . import merge as _merge

__all__ = ["train", "predict_proba"]


def _client(client):
    return client if client is not None else default_client()


def _lines_collection(data, column):
    """The collection of lines: a Bag, a Series, or a DataFrame's ``column``."""
    if isinstance(data, _db.Bag):
        if column is not None:
            raise TypeError("column is for a DataFrame, not a Bag")
        return data
    if getattr(data, "ndim", None) == 1 and hasattr(data, "map_partitions"):
        # a dask Series (recent dask gives a Series ``columns`` too: test the dimension first)
        if column is not None:
            raise TypeError("column is for a DataFrame, not a Series")
        return data
    if hasattr(data, "columns"):  # a dask DataFrame
        if column is None:
            if len(data.columns) != 1:
                raise TypeError("a DataFrame with %d columns: give column= (the column of lines)"
                                % len(data.columns))
            column = data.columns[0]
        return data[column]
    raise TypeError("expected a dask Bag of lines or a dask DataFrame column, not %s" % type(data).__name__)


class _Engine:
    """The rounds of ``distributed.run`` as tasks on a Dask cluster."""

    def __init__(self, client, parts, rule, fan_in, task_options):
        self.client = client
        self.parts = parts
        self.rule = rule
        self.fan_in = max(2, int(fan_in))
        self.task_options = task_options
        self.run_id = uuid.uuid4().hex[:8]

    def lengths(self):
        return self.client.gather(self.client.map(len, self.parts, key=["streamfm-len-%s-%d" % (self.run_id, p)
                                                                      for p in range(len(self.parts))]))

    def heads(self, tasks):
        # only the heads travel: each is cut where its partition is
        c = self.client
        return c.gather([c.submit(_merge.head, self.parts[p], stop, key="streamfm-head-%s-p%d" % (self.run_id, p))
                         for p, _, stop in tasks])

    def ship(self, base):
        return self.client.scatter(base, broadcast=True, hash=False)

    def round(self, base, tasks, i):
        c = self.client
        futs = [c.submit(_merge.train_partition, base, self.parts[p], start, stop, partition=p,
                         key="streamfm-train-%s-r%d-p%d" % (self.run_id, i, p), **self.task_options)
                for p, start, stop in tasks]
        level = 0
        while len(futs) > 1:
            futs = [c.submit(_merge.merge, futs[j:j + self.fan_in], self.rule,
                             key="streamfm-merge-%s-r%d-l%d-%d" % (self.run_id, i, level, j))
                    for j in range(0, len(futs), self.fan_in)]
            level += 1
        return futs[0]

    def counts(self, state):
        return self.client.submit(_dist.counts, state, pure=False).result()

    def apply(self, base, state):
        return self.client.submit(_dist.apply_state, base, state, pure=False)

    def fetch(self, base):
        return base.result()


def train(data, client=None, *, fm=None, column=None, sync_every=None, warm_start=0, rule="blend", fan_in=4,
          on_error="skip", max_bad_fraction=None, **fm_params):
    """Train a ``streamfm.FM`` on a Dask collection of lines.

    Parameters
    ----------
    data : dask.bag.Bag or dask DataFrame/Series
        Lines ``LABEL NAME:VALUE ...`` (str or bytes; a trailing newline is
        fine), one element each: a Bag (e.g. ``dask.bag.read_text``), a
        Series of them, or a DataFrame with ``column`` naming that column.
        Each partition is one task's lines, in order.
    client : distributed.Client, optional
        Default: the current client (``distributed.default_client()``).
    fm : streamfm.FM, optional
        A model to continue (e.g. yesterday's, loaded with ``FM.load``);
        not changed. Without it, a new ``FM(**fm_params)``.
    sync_every : int, optional
        Lines per partition between merges (None: one merge at the end).
    warm_start : int
        Lines trained as one stream before the rounds, taken from the heads
        of all partitions in turn (brought to the client and trained there;
        see ``streamfm.distributed.train``).
    rule : str
        The merge rule (``streamfm.merge.merge``).
    fan_in : int
        States merged by one task of the merge tree.
    on_error, max_bad_fraction
        As in ``FM.partial_fit``, per task.
    **fm_params
        ``streamfm.FM`` parameters (k, seed, hyper-parameters...).

    Returns a new FM, the model ``streamfm.distributed.train`` makes from
    the same partitions; its ``last_report`` counts the lines, samples and
    bad lines of all partitions and their progressive logloss.
    """
    client = _client(client)
    lines = _lines_collection(data, column)
    _merge.Merger(rule)  # checks the name before anything runs
    base = _dist.start_base(fm, **fm_params)
    # the partitions' lines, computed once where they are (released with the futures:
    # cancelling them would cancel the user's collection too, which shares their keys)
    parts = client.compute(lines.to_delayed())
    engine = _Engine(client, parts, rule, fan_in, dict(on_error=on_error, max_bad_fraction=max_bad_fraction))
    return _dist.run(engine, base, sync_every, warm_start)


def _predict_lines(lines, scorer):
    return scorer.predict(list(lines)).tolist()


def _predict_series(series, scorer):
    import pandas as pd

    return pd.Series(scorer.predict(series.tolist()), index=series.index, name="probability")


def predict_proba(fm, data, client=None, *, column=None):
    """The probability of a positive for every line of ``data``, in input order.

    ``data``: a Bag of lines (returns a Bag of floats), or a dask Series of
    lines / a DataFrame and its ``column`` (returns a Series named
    "probability" with the input's index). A bad line gets NaN. The model's
    weights are sent to each worker once (``client.scatter``); the result
    is lazy, like the input.
    """
    client = _client(client)
    lines = _lines_collection(data, column)
    scorer = client.scatter(_dist.Scorer.of(fm), broadcast=True, hash=False)
    if isinstance(lines, _db.Bag):
        return lines.map_partitions(_predict_lines, scorer)
    return lines.map_partitions(_predict_series, scorer, meta=("probability", "f8"))
