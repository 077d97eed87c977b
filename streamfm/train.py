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
import threading
import time

from . import ftrl, parse
from .badlines import BadLineLog, RunSummary
from .metrics import N_METRICS, MetricSummary, new_accumulators
from .pipeline import run_workers
from .reader import BlockReader

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
    """Counts and progressive metrics of one run."""

    def __init__(self):
        RunSummary.__init__(self)
        MetricSummary.__init__(self, *new_accumulators(ftrl.N_STATS - N_METRICS))

    @property
    def overflow_samples(self):
        return int(self.stats[ftrl.ST_SKIPPED_OVERFLOW])

    @property
    def overflow_updates(self):
        return int(self.stats[ftrl.ST_COORD_OVERFLOW])


class _Worker:
    def __init__(self):
        self.bufs = parse.ParseBuffers(0)
        self.stats, self.hist = new_accumulators(ftrl.N_STATS - N_METRICS)
        self.lines = 0
        self.clipped = 0


def train_stream(model, stream, opts, log, bad=None, progress=None, summary=None):
    """Train ``model`` on the lines of ``stream``; returns a Summary.

    Raises BadInputStop (no model must be written) when --on-error stop
    meets a bad line or the bad fraction exceeds --max-bad-fraction.
    ``bad``: the BadLineLog to use (default: a new one from ``opts``);
    ``progress``: an object whose ``maybe(summary, features)`` is called a
    few times a second (default: none);
    ``summary``: the Summary to fill (the caller keeps the counts of a run
    that raises). Installs no signal handler: Ctrl-C (KeyboardInterrupt in
    the calling thread) stops the run, each worker finishing its block in
    hand. However the run ends, the workers have left the model when this
    returns or raises, and ``model.samples_seen`` counts the samples trained.
    """
    summary = Summary() if summary is None else summary
    reader = BlockReader(stream, **({"block_size": opts.block_size} if opts.block_size else {}))
    rw = RWLock()
    insert_lock = threading.Lock()
    stop = threading.Event()
    if bad is None:
        bad = BadLineLog(opts, log)
    workers = [_Worker() for _ in range(opts.cores)]
    k = model.k
    flags = (opts.k0, opts.k1, model.fvs)
    t0 = time.time()

    def handler(w):
        def handle(blk):
            rw.acquire_read()
            try:
                p = parse.parse(blk.data, blk.n_lines, w.bufs, model.table)
            finally:
                rw.release_read()
            w.lines += p.n_lines
            w.clipped += p.n_clipped
            bad.check(blk, p, sum(x.lines for x in workers), NO_MODEL)
            if p.n_unknown:
                with insert_lock:
                    model.add_unknown(p, blk.data, pause=rw.writing)
            rw.acquire_read()
            try:
                ftrl.train_block(p.indptr, p.rows, p.vals, p.ys, p.n_samples, model.params,
                                 model.table.row_init, model.hp, k, flags[0], flags[1], flags[2],
                                 model.seed, w.stats, w.hist)
            finally:
                rw.release_read()
        return handle

    def tick():
        if progress is not None:
            _collect(summary, workers, model)
            summary.bad = bad.count
            progress.maybe(summary, model.n_rows - 1)

    try:
        run_workers(reader, [handler(w) for w in workers], tick, stop, "streamfm-train")
    finally:
        # however the run ends (a KeyboardInterrupt too), no worker is left
        # updating the model behind the caller's back
        bad.close()
        summary.seconds = time.time() - t0
        _collect(summary, workers, model)
        summary.take_bad(bad)
        model.samples_seen += summary.samples
    bad.check_fraction(summary.lines, final=True, what=NO_MODEL)
    return summary


def _collect(summary, workers, model):
    summary.stats = sum(w.stats for w in workers)
    summary.hist = sum(w.hist for w in workers)
    summary.lines = sum(w.lines for w in workers)
    summary.clipped = sum(w.clipped for w in workers)


def warm_up(k, dtype, hp, fvs, seed, fmt, log, quiet, continue_fmt=None):
    """Compile or load every kernel a training run needs, on a tiny model.

    Trains it, writes it in ``fmt`` and, for a run that continues a model of
    format ``continue_fmt``, reads it back as -im does. Loading the kernels
    up front lets the compiler's memory be released before the model is
    loaded or grows, and puts the one-time compile notice before the wait.
    """
    import io
    import os
    import tempfile

    from . import jit
    from .model import Model, read_model, write_model
    from .model import add_features as model_add_features
    from .table import hash_arena, index_names

    jit.compile_notice([parse.parse_block, model_add_features, ftrl.train_block, ftrl.serving_weights,
                        ftrl.file_state, hash_arena, index_names], log, quiet)
    tiny = Model(k, dtype, hp=hp, fvs=fvs, seed=seed, row_capacity=16, arena_capacity=64)
    train_stream(tiny, io.BytesIO(b"1 a:1 b\n0 c:0.5\n"), Options(quiet=True), log)
    tiny.reserve(2000, 0)  # table growth has kernels of its own
    with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
        for f in {fmt, continue_fmt} - {None}:
            path = os.path.join(d, "tiny." + f)
            write_model(tiny, path, f)
            if f == continue_fmt:
                Model.from_arrays(read_model(path, k=k, state=True, dtype=dtype), hp, fvs, seed,
                                  dtype=dtype, extra_rows=16)
