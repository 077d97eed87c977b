"""Prediction: a serving model (names -> rows, w and v) and the predict pipeline.

Workers parse and score blocks in parallel; an ordered writer puts the
output back in input order whatever ``-core`` is (alphaFM does not).
"""

import threading
import time

import numpy as np
from numba import njit

from . import ffm, floatfmt, ftrl, parse
from .badlines import BadLineLog, RunSummary
from .metrics import MetricSummary, add_prediction, new_accumulators
from .model import fields_of_info, is_ffm, read_model, row_fields, table_for
from .pipeline import run_workers
from .reader import BlockReader


class ServingModel:
    """What prediction needs: the feature table and (w, v_1..v_k) per row."""

    kind = "fm"

    def __init__(self, table, weights, k, info=None):
        self.table = table
        self.weights = weights
        self.k = int(k)
        self.info = info or {}

    @classmethod
    def from_arrays(cls, arrays):
        mapped = getattr(arrays, "mapped", None)
        if mapped is not None and arrays.explicit_weights is None:
            # (w, v) from mapped FTRL rows a chunk at a time, each chunk's pages
            # given back once used: the rows are never all resident at once
            weights = np.empty((arrays.n_rows, 1 + arrays.k), dtype=arrays.dtype)
            for r0, r1, w, _s in arrays.chunks(weights=True, state=False):
                weights[r0:r1] = w
                mapped.drop(arrays.params[r0:r1])
        else:
            weights = arrays.weights
        table = table_for(arrays, share=mapped is not None)
        if is_ffm(arrays.info):
            fields = fields_of_info(arrays.info)
            row_field = row_fields(arrays, fields, np.zeros(arrays.n_rows, dtype=np.int64))
        if mapped is not None:
            # a mapped model: the names were needed to build the table (lookups
            # use its hashes) and full FTRL rows to derive (w, v); give their
            # pages back, only (w, v) stay in use
            mapped.drop(arrays.arena)
            mapped.drop(arrays.name_off)
            if arrays.params is not None:
                mapped.drop(arrays.params)
        if is_ffm(arrays.info):
            return FFMServingModel(table, weights, int(arrays.info["field_k"]), fields, row_field, arrays.info)
        return cls(table, weights, arrays.k, arrays.info)

    @classmethod
    def load(cls, path, k=None, mmap=False):
        """The serving model of a model file; ``mmap``: map a binary model's
        arrays read-only (``model.read_bin``) instead of reading them."""
        return cls.from_arrays(read_model(path, k=k, state=False, mmap=mmap))

    @property
    def n_rows(self):
        return self.weights.shape[0]

    def scores(self, parsed, out):
        """out[s] = raw FM score of each sample of a block parsed against self.table."""
        ftrl.score_block(parsed.indptr, parsed.rows, parsed.vals, parsed.n_samples, self.weights,
                         self.k, out)


class FFMServingModel(ServingModel):
    """A field-aware FM's serving model: ``k`` factors per field, (w, v_{f,d}) per row
    (v_{f,d} in column 1 + f * k + d), the field list and each row's field."""

    kind = "ffm"

    def __init__(self, table, weights, k, fields, row_field, info=None):
        ServingModel.__init__(self, table, weights, k, info)
        self.fields = fields
        self.row_field = row_field

    def scores(self, parsed, out):
        ffm.score_block(parsed.indptr, parsed.rows, parsed.vals, parsed.n_samples, self.weights,
                        self.row_field, self.k, self.fields.capacity, out)

    def phi(self, parsed, out):
        """out[j] = the exact attribution of feature j of the block (ffm.phi_block)."""
        ffm.phi_block(parsed.indptr, parsed.rows, parsed.vals, parsed.n_samples, self.weights,
                      self.row_field, self.k, self.fields.capacity, out)


@njit(inline="always")
def write_label_prob(y, raw, out, pos):
    """'1 prob' or '-1 prob' (prob = sigmoid of the raw score), alphaFM's output."""
    if y > 0:
        out[pos] = 49
        pos += 1
    else:
        out[pos] = 45
        out[pos + 1] = 49
        pos += 2
    out[pos] = 32
    return floatfmt.write_f64(ftrl.sigmoid(raw), out, pos + 1)


@njit(cache=True, nogil=True)
def format_predictions(ys, raw, n, out):
    """'label prob' lines, one per sample; returns the bytes used."""
    pos = 0
    for s in range(n):
        pos = write_label_prob(ys[s], raw[s], out, pos)
        out[pos] = 10
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def accumulate_metrics(ys, raw, n, stats, hist):
    for s in range(n):
        add_prediction(stats, hist, ys[s], ftrl.sigmoid(raw[s]))


class OrderedWriter:
    """Writes per-block outputs in block sequence order (``out.write`` writes
    all it is given or raises: output.Output)."""

    def __init__(self, out):
        self.out = out
        self.next = 0
        self.pending = {}
        self.lock = threading.Lock()

    def put(self, seq, data):
        with self.lock:
            self.pending[seq] = data
            while self.next in self.pending:
                data = self.pending.pop(self.next)
                if self.out is not None:
                    self.out.write(data)
                self.next += 1


class PredictSummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.metrics = None
        self.samples = 0


def predict_stream(model, stream, out, opts, log, make_on_block=None, metrics=False, bad=None,
                   on_scores=None, summary=None, progress=None):
    """Score every valid line of ``stream``, writing 'label prob' lines to ``out``.

    With ``metrics`` the summary's ``metrics`` holds logloss, AUC and
    calibration of the predictions against the input's labels.

    ``make_on_block()`` gives each worker its callback ``on_block(parsed,
    raw_scores)``, run on each block; bytes it returns replace the block's
    default output (explanations). ``out`` None discards the output.
    ``on_scores(block, parsed, raw_scores)``, if given, is called in the
    worker for each block (the Python API collects scores by line number).
    ``bad``: the BadLineLog to use (default: a new one from ``opts``);
    ``summary``: the PredictSummary to fill (default: a new one);
    ``progress``: an object whose ``maybe(summary)`` is called a few times a
    second (default: none).
    """
    reader = BlockReader(stream, **({"block_size": opts.block_size} if opts.block_size else {}))
    writer = OrderedWriter(out)
    if bad is None:
        bad = BadLineLog(opts, log)
    summary = PredictSummary() if summary is None else summary
    counts = []
    accs = []
    t0 = time.time()

    def handler():
        bufs = parse.ParseBuffers(0)
        raw = np.empty(0, dtype=np.float64)
        outbuf = np.empty(0, dtype=np.uint8)
        c = [0, 0, 0]
        acc = new_accumulators()
        counts.append(c)
        accs.append(acc)
        on_block = make_on_block() if make_on_block else None

        def handle(blk):
            nonlocal raw, outbuf
            p = parse.parse(blk.data, blk.n_lines, bufs, model.table)
            c[0] += p.n_lines
            c[1] += p.n_samples
            c[2] += p.n_clipped
            bad.check(blk, p, sum(x[0] for x in counts))
            if raw.shape[0] < p.n_samples:
                raw = np.empty(max(p.n_samples, 2 * raw.shape[0]), dtype=np.float64)
            model.scores(p, raw)
            if on_scores is not None:
                on_scores(blk, p, raw[: p.n_samples])
            if metrics:
                accumulate_metrics(p.ys, raw, p.n_samples, acc[0], acc[1])
            data = on_block(p, raw[: p.n_samples]) if on_block else None
            if data is None:
                need = p.n_samples * 32
                if outbuf.shape[0] < need:
                    outbuf = np.empty(max(need, 2 * outbuf.shape[0]), dtype=np.uint8)
                nb = format_predictions(p.ys, raw, p.n_samples, outbuf)
                data = outbuf[:nb].tobytes()
            writer.put(blk.seq, data)
        return handle

    def tick():
        if progress is not None:
            summary.lines = sum(c[0] for c in counts)
            summary.samples = sum(c[1] for c in counts)
            summary.bad = bad.count
            progress.maybe(summary)

    try:
        # also on an exception (SIGTERM, Ctrl-C): no worker writes to ``out``
        # once the caller closes it
        run_workers(reader, [handler() for _ in range(opts.cores)], tick, name="streamfm-predict")
    finally:
        bad.close()
        summary.lines = sum(c[0] for c in counts)
        summary.samples = sum(c[1] for c in counts)
        summary.clipped = sum(c[2] for c in counts)
        summary.take_bad(bad)
        summary.seconds = time.time() - t0
    if metrics:
        summary.metrics = MetricSummary(sum(a[0] for a in accs), sum(a[1] for a in accs))
    bad.check_fraction(summary.lines, final=True)
    return summary


def warm_up(fmt, dtype, log, quiet, stripped=False, field_aware=False):
    """Compile or load the kernels that loading a ``fmt`` model and predicting
    need, on a tiny model, so that the real model is then loaded at disk speed.

    ``stripped``: the model holds (w, v) only; a mapped binary one is then
    scored from read-only arrays (kernels of their own).
    ``field_aware``: a field-aware FM's kernels (ffm.py) too.
    """
    import io
    import os
    import tempfile

    from . import jit
    from .model import ModelArrays, write_model
    from .output import open_output
    from .train import Options

    # importing numba mapped all of LLVM; loading cached kernels needs only part of it
    jit.release_compiler_memory()
    jit.compile_notice([parse.parse_block, ftrl.score_block, format_predictions,
                        accumulate_metrics], log, quiet)
    with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
        path = os.path.join(d, "tiny." + fmt)
        if fmt == "txt":
            with open_output(path) as f:
                f.write(b"bias 0.1 0 0\na 0.2 0.3 0 0 0 0\n")
        elif stripped:
            arrays = ModelArrays(np.frombuffer(b"biasa", np.uint8), np.array([0, 4, 5]),
                                 np.zeros((2, 2), dtype=dtype), None, {"k": 1})
            write_model(arrays, path, "bin", state=False)
        else:
            params = np.zeros((2, ftrl.n_cols(1)), dtype=dtype)
            arrays = ModelArrays(np.frombuffer(b"biasa", np.uint8), np.array([0, 4, 5]), None, None,
                                 {"k": 1}, params=params)
            write_model(arrays, path, "bin")
        model = ServingModel.load(path, mmap=True)
    predict_stream(model, io.BytesIO(b"1 a:1 b\n"), io.BytesIO(), Options(quiet=True), log,
                   metrics=True)
    if field_aware:
        jit.compile_notice([ffm.fields_of_rows, ffm.score_block, ffm.phi_block], log, quiet)
        with tempfile.TemporaryDirectory(prefix="streamfm-warm-") as d:
            path = os.path.join(d, "tiny.txt")
            with open_output(path) as f:
                f.write(b"ffm k=1 max_fields=2 field_sep== fields a b\nbias 0.1 0 0\n"
                        b"a=1 0.2 0.3 0.1 0 0 0 0 0 0\nb=1 0.2 0.3 0.1 0 0 0 0 0 0\n")
            model = ServingModel.from_arrays(read_model(path, state=False, ffm=True))
        p = parse.parse(np.frombuffer(b"1 a=1 b=1:2 c\n", np.uint8), 1, parse.ParseBuffers(0), model.table)
        out = np.empty(max(p.nnz, 1))
        model.scores(p, out)
        model.phi(p, out)
