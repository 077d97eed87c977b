"""Training on partitions of the data in rounds: the driver, for any engine.

    base = the given model (or a new one)
    [warm start: base trains on the first ``warm_start`` lines of all the
     partitions' heads in turn (line 1 of each, then line 2, ...), one stream]
    repeat until every line is used:
        every partition trains a copy of base on its next ``sync_every`` lines
        base = base with the merge of their States written over it

(``merge.py`` holds the tasks and the merge rule.) An engine runs the rounds'
tasks: ``LocalEngine`` on threads of this process, ``streamfm.dask`` on a
Dask cluster, ``streamfm.spark`` on Spark. With one partition the rounds
continue one model on consecutive lines, which is exactly one sequential
run (``FM.partial_fit`` on all the lines).

Why the warm start takes the heads of all partitions: a partition keeps
its lines in stream order, so its first lines are the stream's first ones
only if it is the whole stream. Partition 0 alone (the first design) trains
on lines the others reach rounds later, and every round after it mixes
partition 0's later lines with the others' earlier ones; on the bench's
drifting data that cost most of the gap to one sequential model (4 random
partitions, ~30 rounds: +0.0111 with partition 0's head, +0.0068 with the
interleaved heads, +0.0029 at 100 rounds; bench/README.md). The heads are
small (the warm start is a few percent of the data): the engines bring them
to the driver, which trains them as one stream.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from . import merge as _merge
from .errors import ParameterError

logger = logging.getLogger("streamfm")


def head_sizes(lengths, warm_start):
    """Lines of each partition in a warm start of ``warm_start`` lines taken
    from the partitions in turn (line 1 of each, then line 2, ...; a partition
    that runs out drops out of the turn)."""
    lengths = [int(n) for n in lengths]
    if int(warm_start) < 0 or any(n < 0 for n in lengths):
        raise ParameterError("warm_start and the partitions' lengths must be >= 0")
    warm = min(int(warm_start), sum(lengths))
    lo, hi = 0, max(lengths, default=0)
    while lo < hi:  # the most full turns that fit
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= warm:
            lo = mid
        else:
            hi = mid - 1
    sizes = [min(n, lo) for n in lengths]
    left = warm - sum(sizes)
    for p, n in enumerate(lengths):  # the last, partial turn
        if left and n > sizes[p]:
            sizes[p] += 1
            left -= 1
    return sizes


def interleave(heads):
    """The heads' lines in turn: line 1 of each head, then line 2, ... (the warm
    start's one stream). A head is a list of lines or an (X, y) pair of rows."""
    if not heads:
        return []
    if all(isinstance(h, tuple) and len(h) == 2 for h in heads):
        import numpy as np

        n = [h[0].shape[0] for h in heads]
        # row i of head p goes to position (i, p) in turn order
        key = np.concatenate([np.arange(m) * len(heads) + p for p, m in enumerate(n)])
        order = np.argsort(key, kind="stable")
        xs = [h[0] for h in heads]
        if any(hasattr(x, "tocsr") for x in xs):
            # CSR as soon as one head is sparse (a dense head becomes CSR: the same rows)
            from scipy.sparse import csr_matrix, vstack

            X = vstack([x.tocsr() if hasattr(x, "tocsr") else csr_matrix(np.asarray(x)) for x in xs],
                       format="csr")[order]
        elif any(hasattr(x, "columns") for x in xs):
            # DataFrames name their columns: the features keep those names, as in the rounds
            cols = [list(x.columns) if hasattr(x, "columns") else None for x in xs]
            if any(c != cols[0] for c in cols):
                raise ParameterError("the partitions' DataFrames must have the same columns in the same order")
            import pandas as pd

            X = pd.concat(xs, ignore_index=True).iloc[order].reset_index(drop=True)
        else:
            X = np.concatenate([np.asarray(x) for x in xs])[order]
        ys = [h[1] for h in heads]
        y = None if any(v is None for v in ys) else np.concatenate([np.asarray(v) for v in ys])[order]
        return X, y
    out = []
    for i in range(max(len(h) for h in heads)):
        for h in heads:
            if i < len(h):
                out.append(h[i])
    return out


def train_heads(base, heads, **task_options):
    """The warm start's State: a copy of ``base`` trained on ``interleave(heads)``
    (``task_options`` as ``merge.train_partition``'s)."""
    data = interleave(heads)
    state = _merge.train_partition(base, data, partition=-1, **task_options)
    if state.bad_lines:
        # line j of the stream is line i of head p: give each bad line its partition's place
        sizes = [h[0].shape[0] if isinstance(h, tuple) and len(h) == 2 else len(h) for h in heads]
        place = [(p, i + 1) for i in range(max(sizes)) for p, m in enumerate(sizes) if i < m]
        state.bad_lines = sorted(place[li - 1] + tuple(rest) for _, li, *rest in state.bad_lines)
    return state


def plan_rounds(lengths, sync_every=None, warm_start=0):
    """The rounds of a run: per round, a list of (partition, start, stop) line ranges.

    ``lengths``: lines per partition. ``warm_start``: the first round is the
    warm start: the heads (p, 0, n_p) of ``head_sizes`` (``run`` trains them
    as one interleaved stream). ``sync_every``: lines per partition between
    two merges (None: one round over everything). Every line is in exactly
    one range, and each partition's ranges follow its order.
    """
    lengths = [int(n) for n in lengths]
    if sync_every is not None and not _whole(sync_every, 1):
        raise ParameterError("sync_every must be a positive number of lines, not %r" % (sync_every,))
    if not _whole(warm_start, 0):
        raise ParameterError("warm_start must be a number of lines >= 0, not %r" % (warm_start,))
    offsets = [0] * len(lengths)
    rounds = []
    if warm_start and sum(lengths):
        offsets = head_sizes(lengths, warm_start)
        rounds.append([(p, 0, n) for p, n in enumerate(offsets) if n])
    while True:
        tasks = []
        for p, n in enumerate(lengths):
            if offsets[p] < n:
                stop = n if sync_every is None else min(n, offsets[p] + int(sync_every))
                tasks.append((p, offsets[p], stop))
                offsets[p] = stop
        if not tasks:
            return rounds
        rounds.append(tasks)


def _whole(x, least):
    """x is a whole number (an int, or a float without a fraction) >= least."""
    import math
    import numbers

    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x) or x != int(x):
        return False
    return int(x) >= least


class Totals:
    """Counts of a distributed run: lines, samples, bad lines (by reason, and the
    first ``merge.KEEP_BAD`` by place), progressive logloss, rounds.

    ``lengths``: lines per partition; a bad line's number in the report counts
    the lines of all partitions in partition order (partition 0's first is 1).
    """

    def __init__(self, lengths=()):
        self.lines = self.samples = self.bad = self.rounds = 0
        self.loss_sum = 0.0
        self.by_reason = {}
        self.bad_lines = []
        self.first_line = [0]
        for n in lengths:
            self.first_line.append(self.first_line[-1] + int(n))

    def add(self, lines, samples, bad, loss_sum, by_reason=None, bad_lines=()):
        self.lines += lines
        self.samples += samples
        self.bad += bad
        self.loss_sum += loss_sum
        self.rounds += 1
        for r, c in (by_reason or {}).items():
            self.by_reason[r] = self.by_reason.get(r, 0) + c
        self.bad_lines = sorted(self.bad_lines + list(bad_lines))[:_merge.KEEP_BAD]

    def report(self, n_features, seconds):
        """A ``streamfm.Report`` of the run (AUC is not combined across partitions: NaN)."""
        import numpy as np

        from .fm import Report
        from .parse import REASONS

        r = Report("distributed train")
        r.lines, r.samples, r.bad = self.lines, self.samples, self.bad
        r.logloss = self.loss_sum / self.samples if self.samples else float("nan")
        r.n_features = n_features
        r.seconds = seconds
        r.by_reason = dict(sorted(self.by_reason.items()))
        r.bad_description = ", ".join("%s: %d" % kv for kv in r.by_reason.items())
        code = {v: c for c, v in REASONS.items()}
        kept = [(self.first_line[p] + li if 0 <= p < len(self.first_line) else li, code.get(why, 0), col, text)
                for p, li, why, col, text in self.bad_lines]
        r._bad = (np.array([k[0] for k in kept], np.int64), np.array([k[1] for k in kept], np.int8),
                  np.array([k[2] for k in kept], np.int64), {k[0]: k[3] for k in kept if k[3] is not None})
        return r


def counts(state):
    """(lines, samples, bad, loss_sum, by_reason, bad_lines) of a State."""
    return state.lines, state.samples, state.bad, state.loss_sum, state.by_reason, state.bad_lines


def apply_state(base, state):
    """``base.apply(state)`` as a task function."""
    return base.apply(state)


def run(engine, base, sync_every=None, warm_start=0):
    """Run the rounds on ``engine`` from ``base`` (a ``merge.Base``); returns a ``streamfm.FM``
    whose ``last_report`` counts the run.

    The engine provides ``lengths()`` (lines per partition), ``heads(tasks)``
    (the lines of the (p, 0, n) ranges, brought to this process, in task
    order), ``task_options`` (keyword arguments of every training task),
    ``ship(base)`` (a handle the tasks read the base through),
    ``round(handle, tasks, i)`` (train the tasks, merge their States: a
    handle of the merged State), ``counts(state)`` ((lines, samples, bad,
    loss_sum) of it), ``apply(handle, state)`` (the next base's handle) and
    ``fetch(handle)`` (the Base itself).
    """
    t0 = time.time()
    lengths = engine.lengths()
    rounds = plan_rounds(lengths, sync_every, warm_start)
    totals = Totals(lengths)
    if warm_start and rounds:
        # here, before the base is shipped: the heads are small, and one stream
        state = train_heads(base, engine.heads(rounds[0]), **engine.task_options)
        totals.add(*counts(state))
        base = base.apply(state)
        logger.info("distributed train: warm start on %d lines of %d partitions' heads", state.lines,
                    len(rounds[0]))
        rounds = rounds[1:]
    handle = engine.ship(base)
    for i, tasks in enumerate(rounds):
        state = engine.round(handle, tasks, i)
        totals.add(*engine.counts(state))
        handle = engine.apply(handle, state)
        logger.info("distributed train: round %d of %d: %d tasks, %d lines so far", i + 1, len(rounds),
                    len(tasks), totals.lines)
    fm = engine.fetch(handle).fm()
    fm.last_report = totals.report(fm.n_features, time.time() - t0)
    return fm


def start_base(fm=None, **fm_params):
    """The Base a run starts from: the model ``fm`` continues (a copy), or a new FM(**fm_params)."""
    if fm is not None:
        if fm_params:
            raise ParameterError("give either a model to continue or FM parameters, not both "
                                 "(got %s)" % ", ".join(sorted(fm_params)))
        return _merge.Base.of(fm)
    return _merge.empty_base(**fm_params)


class LocalEngine:
    """Rounds on threads of this process (the tasks release the GIL in their kernels).

    ``partitions``: a list of partitions, each what ``merge.train_partition``
    takes (a list of lines, a (matrix, y) pair...). ``threads``: tasks run
    at once. ``rule``: the merge rule (``merge.merge``). ``task_options``:
    keyword arguments of every task.
    """

    def __init__(self, partitions, threads=1, rule="blend", **task_options):
        self.partitions = list(partitions)
        self.threads = max(1, int(threads))
        self.rule = rule
        self.task_options = task_options

    def lengths(self):
        return [_length(p) for p in self.partitions]

    def heads(self, tasks):
        return [_merge.head(self.partitions[p], stop) for p, _, stop in tasks]

    def ship(self, base):
        return base

    def round(self, base, tasks, i):
        def one(task):
            p, start, stop = task
            return _merge.train_partition(base, self.partitions[p], start, stop, partition=p, **self.task_options)

        if self.threads == 1 or len(tasks) == 1:
            states = [one(t) for t in tasks]
        else:
            with ThreadPoolExecutor(min(self.threads, len(tasks))) as ex:
                states = list(ex.map(one, tasks))
        return _merge.merge(states, self.rule)

    def counts(self, state):
        return counts(state)

    def apply(self, base, state):
        return base.apply(state)

    def fetch(self, base):
        return base


def _length(p):
    if isinstance(p, tuple) and len(p) == 2:
        return p[0].shape[0]
    return len(p)


def train(partitions, fm=None, *, sync_every=None, warm_start=0, threads=1, rule="blend", on_error="skip",
          max_bad_fraction=None, feature_names=None, **fm_params):
    """Train an FM on partitions of the data with the merge rounds, in this process.

    The same run as ``streamfm.dask.train`` and ``streamfm.spark.train`` on
    the same partitions (the same model, bit for bit), without an engine:
    for tests, for comparing settings, and for a machine with many cores.

    Parameters
    ----------
    partitions : list
        Each a list of lines (str or bytes) or a (matrix, y) pair.
    fm : streamfm.FM, optional
        A model to continue (yesterday's, for incremental training); not
        changed. Without it, a new ``FM(**fm_params)``.
    sync_every : int, optional
        Lines per partition between merges (None: one merge at the end).
    warm_start : int
        Lines trained as one stream before the rounds, taken from the heads
        of all partitions in turn (line 1 of each, then line 2, ...), so all
        partitions begin from one model whose factors already agree, and
        each partition's rounds start from where its head ends (see the
        module's docstring for why in turn).
    threads : int
        Tasks run at once. Each task trains on one thread (deterministic).
    rule : str
        The merge rule: "blend" (default), "blend-each", "dn" or "sum" (see ``merge.merge``).
    on_error, max_bad_fraction
        As in ``FM.partial_fit``, per task.
    feature_names : sequence, optional
        Column names of (matrix, y) partitions.

    Returns a new ``streamfm.FM``; its ``last_report`` counts the lines,
    samples and bad lines of all partitions and their progressive logloss.
    """
    base = start_base(fm, **fm_params)
    _merge.Merger(rule)  # checks the name
    engine = LocalEngine(partitions, threads, rule, on_error=on_error, max_bad_fraction=max_bad_fraction,
                         feature_names=feature_names)
    return run(engine, base, sync_every, warm_start)


class Scorer:
    """What prediction on a worker needs: hyper-parameters, names and (w, v) per row.

    Ships to workers (numpy arrays and a dict); ``predict(lines)`` scores a
    partition. The table of names is built once per Scorer object.
    """

    def __init__(self, hyper, arena, name_off, weights, info):
        self.hyper = dict(hyper)
        self.arena = arena
        self.name_off = name_off
        self.weights = weights
        self.info = dict(info)
        self._fm = None

    @classmethod
    def of(cls, fm):
        sm = fm.serving_model()
        arena, off = sm.table.names_view()
        n = sm.n_rows
        info = dict(sm.info, k=fm.k, n_rows=n)
        return cls(fm.hyper_parameters(), arena.copy(), off.copy(), sm.weights[:n].copy(), info)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fm"] = None
        return state

    def fm(self):
        """An ``streamfm.FM`` that predicts with these weights (it cannot be trained)."""
        if self._fm is None:
            from .fm import FM
            from .model import ModelArrays

            fm = FM(**self.hyper)
            fm.replace_model(ModelArrays(self.arena, self.name_off, self.weights, None, self.info))
            self._fm = fm
        return self._fm

    def predict(self, lines):
        """Probabilities of the lines (NaN for a bad one), in order."""
        return self.fm().predict_proba(lines)
