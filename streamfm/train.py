"""The training pipeline: reader thread -> N worker threads -> shared model.

Each worker takes a block of lines, parses it (numba), resolves feature
names to rows (lock-free lookups; new names are added under one insert
lock), then runs the FTRL-FM update on the block (numba, nogil) while the
other workers do the same on theirs (Hogwild: no locks on rows). Growing
the table replaces arrays, so it waits for the workers to leave their
kernels (a readers-writer lock around them); nothing else pauses them.
With one worker the run is sequential and deterministic.
"""

import contextlib
import os
import threading
import time
import types

import numpy as np
from numba import njit

from . import cache as block_cache
from . import ffm, ftrl, parse
from .badlines import BadLineLog, RunSummary
from .errors import OutputError
from .metrics import M_SAMPLES, N_METRICS, MetricSummary, new_accumulators
from .pipeline import run_workers
from .reader import BlockReader
from .table import hash_table_names

NO_MODEL = ", no model written"  # ends a stop message: the model in hand is not written


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def acquire_read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self):
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self):
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


class Options:
    """What a run does besides the FTRL math (which lives on the Model)."""

    def __init__(self, k0=True, k1=True, cores=1, on_error="skip", max_bad_fraction=None,
                 quiet=False, bad_lines=None, progress_every=5.0, max_errors_shown=10,
                 block_size=None):
        self.k0 = bool(k0)
        self.k1 = bool(k1)
        self.cores = max(1, int(cores))
        self.on_error = on_error
        self.max_bad_fraction = max_bad_fraction
        self.quiet = quiet
        self.bad_lines = bad_lines
        self.progress_every = progress_every
        self.max_errors_shown = max_errors_shown
        self.block_size = block_size


class Summary(RunSummary, MetricSummary):
    """Counts and progressive metrics of one pass of a run.

    ``stats``/``hist``: the (first) model's progressive accumulators;
    ``acc[g]``: model g's (a grid trains several, see ``train_stream``);
    ``hacc[g]``: model g's held-out accumulators (``holdout``), else None.
    """

    def __init__(self, n_models=1, holdout=False, pass_no=1):
        RunSummary.__init__(self)
        MetricSummary.__init__(self, *new_accumulators(ftrl.N_STATS - N_METRICS))
        self.acc = [(self.stats, self.hist)] + [new_accumulators(ftrl.N_STATS - N_METRICS)
                                                for _ in range(n_models - 1)]
        self.hacc = [new_accumulators() for _ in range(n_models)] if holdout else None
        self.pass_no = pass_no

    @property
    def overflow_samples(self):
        return int(self.stats[ftrl.ST_SKIPPED_OVERFLOW])

    @property
    def overflow_updates(self):
        return int(self.stats[ftrl.ST_COORD_OVERFLOW])

    def progressive(self, g=0):
        """Model g's progressive metrics (a MetricSummary)."""
        return MetricSummary(*self.acc[g])

    def held_out(self, g=0):
        """Model g's held-out metrics (a MetricSummary), or None without a held-out set."""
        return None if self.hacc is None else MetricSummary(*self.hacc[g])


# Rows each trainer thread keeps a private copy of (ftrl.py, "Hogwild's
# hottest rows"): up to HOT_ROWS, and at most HOT_BYTES of them, so a
# thread's copy and its base fit in its core's L2 beside the block's rows.
HOT_ROWS = 1024
HOT_BYTES = 1 << 18


def hot_rows(model, cores):
    """How many of ``model``'s first rows each of ``cores`` trainer threads trains in a copy
    of its own: none with one thread (the run stays alphaFM's, bit for bit), with
    -fvs (its re-draws read w as the shared row holds it) or for a field-aware FM."""
    if cores < 2 or model.fvs or getattr(model, "kind", "fm") != "fm":
        return 0
    row_bytes = model.params.shape[1] * model.params.itemsize
    return int(min(HOT_ROWS, HOT_BYTES // row_bytes))


class _Hot:
    """One trainer thread's copy of one model's hottest rows; ``train`` runs
    ftrl.train_block on a block with them. ``lock`` (one per model, shared
    by its threads) lets one thread at a time add its changes."""

    def __init__(self, model, n, lock):
        self.model = model
        self.n = n
        self.lock = lock
        cols, dtype = model.params.shape[1], model.params.dtype
        self.hot = np.empty((n, cols), dtype=dtype)
        self.base = np.empty((n, cols), dtype=dtype)

    def train(self, indptr, rows, vals, ys, n_samples, k0, k1, stats, hist):
        m = self.model
        n = min(self.n, m.n_rows)
        if n:
            # unlocked: a copy taken while another thread merges is a base
            # like any other, since only the difference hot - base is added
            ftrl.hot_copy(m.params, self.hot, self.base, n)
        ftrl.train_block(indptr, rows, vals, ys, n_samples, m.params, m.table.row_init, m.hp, m.k,
                         k0, k1, m.fvs, m.seed, stats, hist, self.hot if n else None, n)
        if n:
            with self.lock:
                stats[ftrl.ST_COORD_OVERFLOW] += ftrl.hot_merge(m.params, self.hot, self.base, n, m.k)


# one sample (label 1) on the bias and row 1: warm_up's block for the hot-row kernels
_TINY_BLOCK = (np.array([0, 1], dtype=np.int64), np.array([1], dtype=np.int64), np.array([1.0]),
               np.array([1.0]), 1)


def _give_hot_rows(workers, models):
    """Each worker gets its _Hot of each model (a model's workers share one lock)."""
    for m in models:
        n, lock = hot_rows(m, len(workers)), threading.Lock()
        for w in workers:
            w.hot.append(_Hot(m, n, lock))


class _Worker:
    def __init__(self, n_models=1, holdout=False):
        self.bufs = parse.ParseBuffers(0)
        self.hot = []  # per model, this thread's _Hot (_give_hot_rows)
        self.acc = [new_accumulators(ftrl.N_STATS - N_METRICS) for _ in range(n_models)]
        self.hacc = [new_accumulators() for _ in range(n_models)] if holdout else None
        self.stats, self.hist = self.acc[0]
        self.lines = 0
        self.clipped = 0


@njit(inline="always")
def _copy_sample(indptr, rows, vals, ys, s, d_indptr, d_rows, d_vals, d_ys, d):
    """Sample s of a CSR block becomes sample d of another (whose samples before d are in place)."""
    o = d_indptr[d]
    for j in range(indptr[s], indptr[s + 1]):
        d_rows[o + j - indptr[s]] = rows[j]
        d_vals[o + j - indptr[s]] = vals[j]
    d_ys[d] = ys[s]
    d_indptr[d + 1] = o + indptr[s + 1] - indptr[s]


@njit(cache=True, nogil=True)
def split_holdout(indptr, rows, vals, ys, lines, n, every):
    """Split a CSR block into the samples to train (line % every != 0) and
    the held-out ones (line % every == 0), each in input order.

    Returns (indptr, rows, vals, ys, n) of both parts.
    """
    n_h = 0
    nnz_h = 0
    for s in range(n):
        if lines[s] % every == 0:
            n_h += 1
            nnz_h += indptr[s + 1] - indptr[s]
    n_t = n - n_h
    nnz_t = indptr[n] - nnz_h
    ti = np.empty(n_t + 1, np.int64)
    tr = np.empty(nnz_t, np.int64)
    tv = np.empty(nnz_t, np.float64)
    ty = np.empty(n_t, np.float64)
    hi = np.empty(n_h + 1, np.int64)
    hr = np.empty(nnz_h, np.int64)
    hv = np.empty(nnz_h, np.float64)
    hy = np.empty(n_h, np.float64)
    ti[0] = 0
    hi[0] = 0
    a = 0
    b = 0
    for s in range(n):
        if lines[s] % every == 0:
            _copy_sample(indptr, rows, vals, ys, s, hi, hr, hv, hy, b)
            b += 1
        else:
            _copy_sample(indptr, rows, vals, ys, s, ti, tr, tv, ty, a)
            a += 1
    return ti, tr, tv, ty, n_t, hi, hr, hv, hy, n_h


def _train_block(models, w, indptr, rows, vals, ys, n, lines, holdout, k0, k1):
    """One block through every model: its samples trained, then its held-out samples
    scored (the caller holds the read lock).

    Scoring after the block's training lets a held-out sample see every
    training sample of its block (never itself): on a file of one block, a
    pass's held-out metric is the model of that pass, not of the one before.
    """
    if holdout:
        indptr, rows, vals, ys, n, hi, hr, hv, hy, nh = split_holdout(indptr, rows, vals, ys, lines, n, holdout)
    for m, hot, (st, hh) in zip(models, w.hot, w.acc):
        if getattr(m, "kind", "fm") == "ffm":
            ffm.train_block(indptr, rows, vals, ys, n, m.params, m.row_field, m.hp, m.field_k,
                            m.fields.capacity, k0, k1, st, hh)
            continue
        hot.train(indptr, rows, vals, ys, n, k0, k1, st, hh)
    if holdout and nh:
        for m, (st, hh) in zip(models, w.hacc):
            if getattr(m, "kind", "fm") == "ffm":
                ffm.score_state_block(hi, hr, hv, hy, nh, m.params, m.row_field, m.hp, m.field_k,
                                      m.fields.capacity, st, hh)
                continue
            ftrl.score_state_block(hi, hr, hv, hy, nh, m.params, m.hp, m.k, m.fvs, st, hh)


def train_stream(model, stream, opts, log, bad=None, progress=None, summary=None, others=(), cache=None,
                 holdout=None):
    """Train ``model`` on the lines of ``stream``; returns a Summary.

    Raises BadInputStop (no model must be written) when --on-error stop
    meets a bad line or the bad fraction exceeds --max-bad-fraction.
    ``bad``: the BadLineLog to use (default: a new one from ``opts``);
    ``progress``: an object whose ``maybe(summary, features)`` is called a
    few times a second (default: none);
    ``summary``: the Summary to fill (the caller keeps the counts of a run
    that raises);
    ``others``: more Models over the same FeatureTable object as ``model``
    (a grid: each block is parsed and looked up once, then trained by every
    model on its own params; their arrays grow with the table);
    ``cache``: a cache.CacheWriter that gets every parsed block;
    ``holdout``: K, the samples on input lines K, 2K, ... are scored
    (``summary.hacc``), never trained on.
    Installs no signal handler: Ctrl-C (KeyboardInterrupt in
    the calling thread) stops the run, each worker finishing its block in
    hand. However the run ends, the workers have left the model when this
    returns or raises, and ``model.samples_seen`` counts the samples trained.
    """
    models = [model] + list(others)
    summary = Summary(len(models), bool(holdout)) if summary is None else summary
    reader = BlockReader(stream, **({"block_size": opts.block_size} if opts.block_size else {}))
    rw = RWLock()
    insert_lock = threading.Lock()
    stop = threading.Event()
    if bad is None:
        bad = BadLineLog(opts, log)
    workers = [_Worker(len(models), bool(holdout)) for _ in range(opts.cores)]
    _give_hot_rows(workers, models)
    flags = (opts.k0, opts.k1)
    fields = getattr(model, "kind", "fm") == "ffm"  # new names get their fields (and a line may be bad) first
    t0 = time.time()

    def add_unknown(p, data):
        if not others:
            model.add_unknown(p, data, pause=rw.writing)
            return
        # the other models' rows must exist before any worker can find them
        with rw.writing():
            n0 = model.n_rows
            model.add_unknown(p, data)
            add_rows(model, others, n0)

    def handler(w):
        def handle(blk):
            rw.acquire_read()
            try:
                p = parse.parse(blk.data, blk.n_lines, w.bufs, model.table)
            finally:
                rw.release_read()
            w.lines += p.n_lines
            w.clipped += p.n_clipped
            if fields and p.n_unknown:
                with insert_lock:
                    model.screen(p, blk.data)
            bad.check(blk, p, sum(x.lines for x in workers), NO_MODEL)
            if p.n_unknown:
                with insert_lock:
                    add_unknown(p, blk.data)
            if fields and cache is None and not holdout and not others:
                rw.acquire_read()
                try:
                    ffm.train_block(p.indptr, p.rows, p.vals, p.ys, p.n_samples, model.params, model.row_field,
                                    model.hp, model.field_k, model.fields.capacity, flags[0], flags[1],
                                    w.stats, w.hist)
                finally:
                    rw.release_read()
                return
            if cache is None and not holdout and not others:
                rw.acquire_read()
                try:
                    w.hot[0].train(p.indptr, p.rows, p.vals, p.ys, p.n_samples, flags[0], flags[1], w.stats, w.hist)
                finally:
                    rw.release_read()
                return
            lines = blk.first_line + p.sample_line
            if cache is not None:
                cache.add(p.n_lines, p.indptr, p.rows, p.vals, p.ys, lines)
            rw.acquire_read()
            try:
                _train_block(models, w, p.indptr, p.rows, p.vals, p.ys, p.n_samples, lines, holdout,
                             flags[0], flags[1])
            finally:
                rw.release_read()
        return handle

    def tick():
        if progress is not None:
            _collect(summary, workers, model)
            summary.bad = bad.count
            progress.maybe(summary, model.n_rows - 1)

    closing = None
    try:
        run_workers(reader, [handler(w) for w in workers], tick, stop, "streamfm-train")
    finally:
        # however the run ends (a KeyboardInterrupt too), no worker is left
        # updating the model behind the caller's back
        try:
            bad.close()
        except OutputError as e:  # the model's counts below must still be taken
            closing = e
        summary.seconds = time.time() - t0
        _collect(summary, workers, model)
        summary.take_bad(bad)
        for m, (st, _) in zip(models, summary.acc):
            m.samples_seen += int(st[M_SAMPLES])
    bad.check_fraction(summary.lines, final=True, what=NO_MODEL)
    if closing is not None:
        # every sample trained; only the bad-lines file failed: the model is whole
        closing.model_trained = True
        raise closing
    return summary


def add_rows(model, others, n0):
    """Give ``others`` (Models over ``model``'s table) the rows n0.. the table just made:
    arrays grown with the table, each row's initial state drawn with its own seed and init_stdev."""
    n1 = model.n_rows
    for m in others:
        m.reserve(0, 0)  # the shared table has grown already: the params follow its capacity
        if n1 > n0:
            ftrl.init_rows(m.params, model.table.row_init, n0, n1, m.k, m.seed, m.hp[ftrl.HP_INIT_STDEV])


def train_cached(model, reader, opts, progress=None, summary=None, others=(), holdout=None):
    """One more pass over the blocks of ``reader`` (a cache.CacheReader): no
    parsing, no lookups, the same worker threads and kernels as ``train_stream``.

    ``summary.lines`` counts the input lines the blocks came from; the rest
    as ``train_stream`` (``model.samples_seen`` counts the samples trained).
    """
    models = [model] + list(others)
    summary = Summary(len(models), bool(holdout)) if summary is None else summary
    workers = [_Worker(len(models), bool(holdout)) for _ in range(opts.cores)]
    _give_hot_rows(workers, models)
    t0 = time.time()

    def handler(w):
        def handle(b):
            _train_block(models, w, b.indptr, b.rows, b.vals, b.ys, b.n_samples, b.lines, holdout,
                         opts.k0, opts.k1)
            w.lines += b.n_lines
        return handle

    def tick():
        if progress is not None:
            _collect(summary, workers, model)
            progress.maybe(summary, model.n_rows - 1)

    try:
        run_workers(reader, [handler(w) for w in workers], tick, None, "streamfm-pass")
    finally:
        summary.seconds = time.time() - t0
        _collect(summary, workers, model)
        for m, (st, _) in zip(models, summary.acc):
            m.samples_seen += int(st[M_SAMPLES])
    return summary


class CachePlan:
    """Where a multi-pass run keeps its block cache and whether it may reuse one.

    ``path``: the cache file; ``keep``: leave it in place at the end (else it
    is removed); ``reuse``: when ``path`` holds a complete cache that fits
    (``open_reusable``), pass 1 reads it instead of the input;
    ``input_fp``: the input's ``cache.input_fingerprint`` (None: a pipe).
    """

    def __init__(self, path, keep=False, reuse=False, input_fp=None):
        self.path = str(path)
        self.keep = keep
        self.reuse = reuse
        self.input_fp = input_fp


def open_reusable(plan, model, others=()):
    """A CacheReader on ``plan.path`` once it is known to fit this run, with
    the rows the cached pass 1 created added to the model's table (in their
    order, so the cached row ids are theirs); CacheError otherwise.

    It fits when it was made from a model whose feature table held the
    same names as ``model``'s now (a new model, or the same -im model) and,
    when both the cache and this run know their input file, from an input
    of the same size and modification time. An input from a pipe cannot be
    checked: the caller vouches for it by asking to reuse. Every block is
    checked (``CacheReader.verify``: crc and numbers) before anything changes.
    """
    reader = block_cache.CacheReader(plan.path)
    try:
        meta, tr = reader.meta, reader.trailer
        why = None
        if meta.get("start") != block_cache.table_fingerprint(model.table):
            why = "it continues another model's feature table"
        elif plan.input_fp is not None and meta.get("input") != plan.input_fp:
            why = ("its input was a pipe; this run's input is a file" if meta.get("input") is None
                   else "the input file changed since it was written (size or modification time)")
        elif meta.get("k") != model.k:
            why = "it was written for -dim k=%s" % meta.get("k")
        if why:
            raise block_cache.CacheError("%s: cannot reuse the cache: %s" % (plan.path, why))
        reader.verify()  # a damaged cache is refused before the table or a model changes
        names, off = reader.names, reader.name_off  # checked by the reader: in order, within names
        n = off.shape[0] - 1
        if n > 0:
            hashes = np.empty(n, dtype=np.uint64)
            hash_table_names(off, names, hashes, 0, n, model.table.key)
            fake = types.SimpleNamespace(rows=np.full(n, -1, np.int64), hashes=hashes, name_start=off[:-1].copy(),
                                         name_len=np.diff(off), nnz=n, n_unknown=n)
            n0 = model.n_rows
            model.add_unknown(fake, names)
            add_rows(model, others, n0)
        if model.n_rows != tr.get("rows_end"):
            raise block_cache.CacheError("%s: cannot reuse the cache: its feature names do not make the rows "
                                         "it refers to" % plan.path)
    except BaseException:
        reader.close()
        raise
    return reader


def train_passes(model, stream, opts, log, passes=1, holdout=None, plan=None, bad=None, progress=None,
                 summaries=None, others=()):
    """``passes`` passes over ``stream``: the first reads the text (writing the
    block cache of ``plan``, a CachePlan, when given), the others read the cache.

    Returns the list of per-pass Summaries (``summaries``, when given, is
    filled as the run goes, so the caller keeps them if it raises). With a
    reusable cache (``plan.reuse``) pass 1 too reads the cache, and its bad
    lines are the counts the cache recorded. ``progress.maybe`` gets each
    pass's Summary (``pass_no``). The cache is removed at the end unless
    ``plan.keep``. The rest as ``train_stream``.
    """
    summaries = [] if summaries is None else summaries
    nm = 1 + len(others)
    if passes > 1 and plan is None:
        raise ValueError("more than one pass needs a cache (a CachePlan)")
    reader = None
    made = False
    try:
        if plan is not None and plan.reuse and os.path.exists(plan.path):
            reader = open_reusable(plan, model, others)
            s = Summary(nm, bool(holdout), 1)
            summaries.append(s)
            train_cached(model, reader, opts, progress, s, others, holdout)
            tr = reader.trailer
            s.bad = int(tr.get("bad", 0))
            s.clipped = int(tr.get("clipped", 0))
            if bad is not None:
                bad.count = s.bad
                bad.by_reason = dict(tr.get("by_reason") or {})
            s.bad_description = ", ".join("%s: %d" % kv for kv in (tr.get("by_reason") or {}).items())
        else:
            writer = None
            if plan is not None:
                writer = block_cache.CacheWriter(plan.path, {
                    "k": model.k, "input": plan.input_fp, "start": block_cache.table_fingerprint(model.table)},
                    durable=plan.keep)
                made = True
            n0 = model.n_rows
            s = Summary(nm, bool(holdout), 1)
            summaries.append(s)
            try:
                train_stream(model, stream, opts, log, bad, progress, s, others, writer, holdout)
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if writer is not None:
                arena, off = model.table.names_view()
                n1 = model.n_rows
                by_reason = dict(getattr(bad, "by_reason", {}) or {})
                writer.finish({"lines": s.lines, "bad": s.bad, "clipped": s.clipped,
                               "by_reason": {str(a): int(b) for a, b in by_reason.items()},
                               "rows_start": n0, "rows_end": n1,
                               "names": bytes(arena[off[n0]:off[n1]]),
                               "name_off": (off[n0:n1 + 1] - off[n0]).astype(np.int64).tobytes()})
                reader = block_cache.CacheReader(plan.path)
        for p in range(2, passes + 1):
            reader.rewind()
            s = Summary(nm, bool(holdout), p)
            summaries.append(s)
            train_cached(model, reader, opts, progress, s, others, holdout)
            if reader.error is not None:
                raise reader.error
    finally:
        if reader is not None:
            reader.close()
        if plan is not None and made and not plan.keep:
            try:
                os.unlink(plan.path)
            except OSError:
                pass
    return summaries


def _collect(summary, workers, model):
    for g, acc in enumerate(summary.acc):
        acc[0][:] = sum(w.acc[g][0] for w in workers)
        acc[1][:] = sum(w.acc[g][1] for w in workers)
    if summary.hacc is not None:
        for g, acc in enumerate(summary.hacc):
            acc[0][:] = sum(w.hacc[g][0] for w in workers)
            acc[1][:] = sum(w.hacc[g][1] for w in workers)
    summary.lines = sum(w.lines for w in workers)
    summary.clipped = sum(w.clipped for w in workers)


def warm_up(k, dtype, hp, fvs, seed, fmt, log, quiet, continue_fmt=None, many=False, fields=None):
    """Compile or load every kernel a training run needs, on a tiny model.

    ``many``: also those of passes, held-out samples and grids.
    ``fields``: a field-aware FM's (an ffm.Fields): its kernels instead.

    Trains it, writes it in ``fmt`` and, for a run that continues a model of
    format ``continue_fmt``, reads it back as -im does. Loading the kernels
    up front lets the compiler's memory be released before the model is
    loaded or grows, and puts the one-time compile notice before the wait.
    """
    import io
    import tempfile

    from . import jit
    from .model import Model, read_model, write_model
    from .model import add_features as model_add_features
    from .table import hash_arena, index_names

    if fields is not None:
        return _warm_up_ffm(k, dtype, hp, seed, fmt, log, quiet, continue_fmt, many, fields)
    kernels = [parse.parse_block, model_add_features, ftrl.train_block, ftrl.hot_copy, ftrl.hot_merge,
               ftrl.serving_weights, ftrl.file_state, hash_arena, index_names]
    if many:
        kernels += [split_holdout, ftrl.score_state_block, ftrl.init_rows, block_cache.block_ok]
    jit.compile_notice(kernels, log, quiet)
    tiny = Model(k, dtype, hp=hp, fvs=fvs, seed=seed, row_capacity=16, arena_capacity=64)
    if many:
        other = Model(k, dtype, hp=hp, fvs=fvs, seed=seed, row_capacity=16, arena_capacity=64)
        other.table = tiny.table
        with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
            train_passes(tiny, io.BytesIO(b"1 a:1 b\n0 c:0.5\n"), Options(quiet=True), log, passes=2, holdout=2,
                         plan=CachePlan(os.path.join(d, "c")), others=[other])
        tiny = Model(k, dtype, hp=hp, fvs=fvs, seed=seed, row_capacity=16, arena_capacity=64)
    train_stream(tiny, io.BytesIO(b"1 a:1 b\n0 c:0.5\n"), Options(quiet=True), log)
    _Hot(tiny, 1, threading.Lock()).train(*_TINY_BLOCK, True, True, *new_accumulators(ftrl.N_STATS - N_METRICS))
    tiny.reserve(2000, 0)  # table growth has kernels of its own
    with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
        for f in {fmt, continue_fmt} - {None}:
            path = os.path.join(d, "tiny." + f)
            write_model(tiny, path, f)
            if f == continue_fmt:
                Model.from_arrays(read_model(path, k=k, state=True, dtype=dtype), hp, fvs, seed,
                                  dtype=dtype, extra_rows=16)


def _warm_up_ffm(k, dtype, hp, seed, fmt, log, quiet, continue_fmt, many, fields):
    """warm_up for a field-aware FM (FFMModel): its kernels, on a tiny model."""
    import io
    import tempfile

    from . import jit
    from .model import FFMModel, add_features, read_model, write_model
    from .table import hash_arena, index_names

    kernels = [parse.parse_block, ffm.screen_block, add_features, ffm.train_block, ffm.fields_of_rows,
               ftrl.serving_weights, ftrl.file_state, hash_arena, index_names]
    if many:
        kernels += [split_holdout, ffm.score_state_block, block_cache.block_ok]
    jit.compile_notice(kernels, log, quiet)
    tiny = FFMModel(k, dtype, hp=hp, seed=seed, fields=type(fields)(fields.sep, 2), row_capacity=16,
                    arena_capacity=64)
    data = b"1 a=1 b=2:0.5 c\n0 a=2 c\n"
    if many:
        with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
            train_passes(tiny, io.BytesIO(data), Options(quiet=True), log, passes=2, holdout=2,
                         plan=CachePlan(os.path.join(d, "c")))
    train_stream(tiny, io.BytesIO(data), Options(quiet=True), log)
    tiny.reserve(2000, 0)
    with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
        for f in {fmt, continue_fmt} - {None}:
            path = os.path.join(d, "tiny." + f)
            write_model(tiny, path, f)
            if f == continue_fmt:
                FFMModel.from_arrays(read_model(path, state=True, dtype=dtype, ffm=True), hp, False, seed,
                                     dtype=dtype, extra_rows=16)
