"""``streamfm.FM``: a Factorization Machine trained online with FTRL-Proximal, as an object.

The model, the update and the files are those of the commands (fm_train,
fm_predict, fm_dump): the object stands on the same pipeline (``train.py``,
``predict.py``), so a model trained here and the same model trained by
fm_train are bit for bit equal. See docs/design.md, "The Python API".

Library calls print nothing and install no signal handlers: Ctrl-C raises
KeyboardInterrupt in the caller once the worker threads have finished the
block in hand (the model stays usable and counts what it trained); progress
goes to a callback and to the ``streamfm`` logger (level INFO).
"""

import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import namedtuple

import numpy as np
from numba import njit

from . import ftrl, parse
from .badlines import BadLineLog, RunSummary
from .errors import BadInputError, ModelFormatError, ParameterError
from .explain import Explainer, block_phi
from .inputs import as_stream
from .metrics import MetricSummary
from .ffm import DEFAULT_MAX_FIELDS, DEFAULT_SEP, Fields
from .ffm import train_block as ffm_train_block
from .model import (MAX_FIELDS, MAX_K, FFMModel, Model, dtype_name, fields_of_info, read_model, refuse_ffm,
                    write_model)
from .predict import FFMServingModel, PredictSummary, ServingModel, predict_stream
from .cache import input_fingerprint
from .train import CachePlan, Options, Summary, train_passes, train_stream

logger = logging.getLogger("streamfm")

HYPER_PARAMETERS = dict(zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS))
_KEEP_TEXT = 100  # bad lines whose text a report keeps


@njit(cache=True, nogil=True)
def probabilities(raw, n, out):
    """out[s] = sigmoid(raw[s]), exactly as fm_predict computes it."""
    for s in range(n):
        out[s] = ftrl.sigmoid(raw[s])


class BadLine(namedtuple("BadLine", "line reason column text")):
    """One bad input line: its number (1-based), why it is bad, the byte column
    (1-based) where the problem is, and its text (kept for the first 100 bad
    lines of a call; None after)."""

    __slots__ = ()


class _BadLines(BadLineLog):
    """The input policy's bad-line log, keeping every bad line's number and reason."""

    def __init__(self, opts):
        BadLineLog.__init__(self, opts, logger.warning)
        self.parts = []  # (line numbers, reasons, columns) per block
        self.texts = {}

    def add(self, block, parsed):
        if not len(parsed.bad_line):
            return
        BadLineLog.add(self, block, parsed)
        with self.lock:
            self.parts.append((block.first_line + parsed.bad_line, parsed.bad_reason.copy(),
                               parsed.bad_col + 1))
            if len(self.texts) < _KEEP_TEXT:
                lines = bytes(block.data).split(b"\n")
                for li in parsed.bad_line.tolist()[:_KEEP_TEXT - len(self.texts)]:
                    raw = lines[li].rstrip(b"\r") if li < len(lines) else b""
                    self.texts[block.first_line + li] = raw.decode("utf-8", "backslashreplace")

    def arrays(self):
        """(line numbers, reason codes, columns) of every bad line, by line number."""
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64)
        lines, reasons, cols = (np.concatenate(x) for x in zip(*self.parts))
        order = np.argsort(lines, kind="stable")
        return lines[order], reasons[order], cols[order]


class PassMetrics(namedtuple("PassMetrics", "pass_no samples logloss auc holdout_samples holdout_logloss "
                                             "holdout_auc seconds")):
    """The metrics of one pass of a training call: ``samples`` trained,
    progressive ``logloss``/``auc`` (each sample scored before its update in
    this pass: honest in pass 1 only, later passes have seen the samples), and
    the held-out set's (``holdout_every``: samples never trained on, scored in
    stream order; NaN and 0 without one)."""

    __slots__ = ()


class Report(RunSummary):
    """What one call read and did.

    Attributes: ``lines`` read, ``samples`` trained (or scored), ``bad`` (the
    number of bad lines), ``bad_lines`` (a list of BadLine, by line number),
    ``by_reason`` ({reason: count}; ``bad_description`` as one line), ``clipped`` (values beyond +-1e16, set to
    it), ``logloss`` and ``auc`` (progressive for training: each sample
    scored before its own update; for prediction, against the input's
    labels when it has them, else NaN), ``overflow_samples`` and
    ``overflow_updates`` (skipped because a number would overflow),
    ``n_features`` (in the model afterwards), ``hash_collisions`` (new names
    whose 64-bit hash equals another name's: they share its row),
    ``mean_prediction`` and ``positive_rate`` (calibration: the mean predicted
    probability against the observed rate of positives) and ``seconds``.

    A training call with ``passes`` or ``holdout_every`` also fills
    ``passes`` (a list of PassMetrics, one per pass) and ``holdout_samples``,
    ``holdout_logloss``, ``holdout_auc`` (the last pass's held-out metrics);
    ``lines``, ``bad`` and ``clipped`` are then pass 1's (the input is read
    once), ``samples``, ``seconds`` and the overflow counts those of every
    pass, and ``logloss``/``auc`` the last pass's progressive metrics.
    Without them, ``passes`` holds the one pass.
    """

    def __init__(self, kind):
        RunSummary.__init__(self)
        self.kind = kind
        self.samples = 0
        self.by_reason = {}
        self.logloss = float("nan")
        self.auc = float("nan")
        self.overflow_samples = 0
        self.overflow_updates = 0
        self.n_features = 0
        self.hash_collisions = 0
        self.mean_prediction = float("nan")
        self.positive_rate = float("nan")
        self.passes = []
        self.pass_no = 1
        self.passes_total = 1
        self.holdout_samples = 0
        self.holdout_logloss = float("nan")
        self.holdout_auc = float("nan")
        self._bad = (np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64), {})

    @property
    def bad_lines(self):
        lines, reasons, cols, texts = self._bad
        return [BadLine(int(li), parse.REASONS[int(r)], int(c), texts.get(int(li)))
                for li, r, c in zip(lines, reasons, cols)]

    def _fill(self, summary, bad, n_features, metrics=None, seconds=None):
        self.lines = int(summary.lines)
        self.samples = int(summary.samples)
        self.clipped = int(summary.clipped)
        self.seconds = float(summary.seconds if seconds is None else seconds)
        self.n_features = int(n_features)
        with bad.lock:
            self.take_bad(bad)
            self.by_reason = dict(sorted(bad.by_reason.items()))
            self._bad = bad.arrays() + (dict(bad.texts),)
        m = summary if isinstance(summary, MetricSummary) else metrics
        if m is not None:
            self.logloss, self.auc = m.logloss, m.auc
            self.mean_prediction, self.positive_rate = m.mean_prediction, m.positive_rate
        if isinstance(summary, Summary):
            self.overflow_samples = summary.overflow_samples
            self.overflow_updates = summary.overflow_updates
            self.pass_no = summary.pass_no
            self._fill_passes([summary])
            self.seconds = float(summary.seconds if seconds is None else seconds)
        return self

    def _fill_passes(self, summaries, g=0):
        """The per-pass metrics of model g (of a grid) from the passes' Summaries."""
        nan = float("nan")
        rows = []
        for s in summaries:
            pm, ho = s.progressive(g), s.held_out(g)
            rows.append(PassMetrics(s.pass_no, pm.samples, pm.logloss, pm.auc, ho.samples if ho else 0,
                                    ho.logloss if ho else nan, ho.auc if ho else nan, s.seconds))
        self.passes = rows
        if not summaries:
            return self
        last = summaries[-1].progressive(g)
        self.samples = sum(r.samples for r in rows)
        self.seconds = sum(r.seconds for r in rows)
        self.logloss, self.auc = last.logloss, last.auc
        self.mean_prediction, self.positive_rate = last.mean_prediction, last.positive_rate
        self.overflow_samples = sum(int(s.acc[g][0][ftrl.ST_SKIPPED_OVERFLOW]) for s in summaries)
        self.overflow_updates = sum(int(s.acc[g][0][ftrl.ST_COORD_OVERFLOW]) for s in summaries)
        self.holdout_samples, self.holdout_logloss, self.holdout_auc = rows[-1][4:7]
        return self

    def __repr__(self):
        return "Report(%s: %d lines, %d samples, %d bad, logloss %.6g, auc %.6g)" % (
            self.kind, self.lines, self.samples, self.bad, self.logloss, self.auc)


class _Progress:
    """The pipeline's progress hook: a Report snapshot to the callback, a line to the logger."""

    def __init__(self, kind, callback, every, bad, passes=1):
        self.kind = kind
        self.passes = passes
        self.callback = callback
        self.every = every
        self.bad = bad
        self.start = self.last = time.time()

    def maybe(self, summary, features=None):
        now = time.time()
        if now - self.last < self.every:
            return
        self.last = now
        report = Report(self.kind)._fill(summary, self.bad, features or 0, seconds=now - self.start)
        report.passes_total = self.passes
        if self.callback is not None:
            self.callback(report)
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: %d lines, %d samples, %d bad, %d features", self.kind, report.lines,
                        report.samples, report.bad, report.n_features)


def _check_hp(name, value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParameterError("%s must be a number, not %r" % (name, value)) from None
    if not math.isfinite(x) or x < 0 or (name.endswith("alpha") and x == 0):
        raise ParameterError("%s must be a finite number %s 0, not %r"
                             % (name, ">" if name.endswith("alpha") else ">=", value))
    return x


def _check_dtype(dtype):
    if isinstance(dtype, str):
        d = {"float64": np.float64, "double": np.float64, "float32": np.float32}.get(dtype)
        if d is None:
            raise ParameterError("dtype must be 'float64' or 'float32', not %r" % (dtype,))
        return np.dtype(d)
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ParameterError("dtype must be 'float64' or 'float32', not %r" % (dtype,))
    return d


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError("%s must be an integer, not %r" % (name, value))
    if value < lo or (hi is not None and value > hi):
        raise ParameterError("%s must be in [%s, %s], not %d" % (name, lo, hi if hi is not None else "...", value))
    return int(value)


def run_options(k0, k1, cores, on_error, max_bad_fraction, bad_lines=None):
    """train.Options for an API call, its arguments checked (ParameterError).

    The first bad lines go to the ``streamfm`` logger (WARNING), silent
    unless the application configures logging."""
    cores = _check_int("cores", cores, 1, 256)
    if on_error not in ("skip", "stop"):
        raise ParameterError("on_error must be 'skip' or 'stop', not %r" % (on_error,))
    if max_bad_fraction is not None:
        f = float(max_bad_fraction)
        if not (0.0 <= f <= 1.0):
            raise ParameterError("max_bad_fraction must be in [0, 1], not %r" % (max_bad_fraction,))
    return Options(k0=k0, k1=k1, cores=cores, on_error=on_error, max_bad_fraction=max_bad_fraction,
                   bad_lines=None if bad_lines is None else str(bad_lines))


def _for_the_api(e, report):
    """A BadInputError of the pipeline in the API's words, with the call's report;
    ``e.flag_message`` keeps the words of the command-line flags for the commands."""
    e.flag_message = str(e)
    msg = str(e).replace(", no model written", "").replace("--on-error stop", "on_error='stop'")
    e.args = (msg.replace("--max-bad-fraction", "max_bad_fraction"),)
    e.report = report


def _check_passes(passes, holdout_every, cache, reuse_cache):
    passes = _check_int("passes", passes, 1, 1 << 20)
    holdout = None if holdout_every is None else _check_int("holdout_every", holdout_every, 2)
    if reuse_cache and cache is None:
        raise ParameterError("reuse_cache needs cache (the file to reuse)")
    return passes, holdout


def _run_passes(model, others, data, y, feature_names, opts, bad, passes, holdout, cache, reuse_cache, cache_dir,
                progress, summaries):
    """train.train_passes over ``data`` with the cache file a call asked for (or a temporary one)."""
    tmp = None
    if cache is not None:
        path = str(cache)
    elif passes > 1:
        tmp = tempfile.mkdtemp(prefix="streamfm-cache-", dir=None if cache_dir is None else str(cache_dir))
        path = os.path.join(tmp, "blocks.sfmcache")
    else:
        path = None
    try:
        reusing = reuse_cache and os.path.exists(path)
        src = None if (reusing and data is None) else as_stream(data, y, feature_names)
        fp = input_fingerprint(data if isinstance(data, (str, os.PathLike)) else getattr(src, "stream", None))
        plan = None if path is None else CachePlan(path, keep=cache is not None, reuse=reuse_cache, input_fp=fp)
        if src is None:
            train_passes(model, None, opts, logger.warning, passes, holdout, plan, bad, progress, summaries, others)
        else:
            with src:
                train_passes(model, src.stream, opts, logger.warning, passes, holdout, plan, bad, progress,
                             summaries, others)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def expand_grid(grid):
    """The settings of a grid {name: [values]}: a list of {name: value}, the
    cartesian product in order (the first name varies slowest). Names are
    those of ``HYPER_PARAMETERS``; every value is checked (ParameterError).

    >>> expand_grid({"v_alpha": [0.02, 0.05], "w_l2": [1]})
    [{'v_alpha': 0.02, 'w_l2': 1.0}, {'v_alpha': 0.05, 'w_l2': 1.0}]
    """
    if not hasattr(grid, "items") or not grid:
        raise ParameterError("a grid is a non-empty dict {hyper-parameter: [values]}, not %r" % (grid,))
    names, values = [], []
    for name, vals in grid.items():
        if name not in HYPER_PARAMETERS:
            raise ParameterError("%r is not a hyper-parameter a grid can vary (one of %s)"
                                 % (name, ", ".join(HYPER_PARAMETERS)))
        if isinstance(vals, (str, bytes)) or not hasattr(vals, "__iter__"):
            vals = [vals]
        vals = [_check_hp(name, v) for v in vals]
        if not vals:
            raise ParameterError("grid: %s has no values" % name)
        if len(set(vals)) != len(vals):
            raise ParameterError("grid: %s lists a value twice" % name)
        names.append(name)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def setting_name(setting):
    """A grid setting as text and file name: 'v_alpha=0.02,w_l2=1.0'."""
    return ",".join("%s=%r" % (n, float(v)) for n, v in setting.items())


class GridResult:
    """What ``FM.grid_fit`` trained: ``settings`` ({name: value} each), ``fms``
    (the trained FMs) and ``reports`` (their Reports), in grid order; ``best``
    (an index, see ``grid_fit``) and ``by`` (the metric it was chosen by:
    'holdout_logloss', or 'logloss of pass 1' without a hold-out or when no
    line was held out: a short input never reaching the K-th line)."""

    def __init__(self, settings, fms, reports, holdout):
        self.settings = settings
        self.fms = fms
        self.reports = reports
        self.holdout = holdout

    @property
    def by(self):
        # every setting holds out the same lines: none held out, no held-out metric to choose by
        if self.holdout and self.reports and self.reports[0].holdout_samples > 0:
            return "holdout_logloss"
        return "logloss of pass 1"

    @property
    def best(self):
        def key(i):
            x = self.score(i)
            return x if x == x else float("inf")

        return min(range(len(self.fms)), key=key) if self.fms else None

    def score(self, i):
        """The metric ``best`` is chosen by, of setting i."""
        r = self.reports[i]
        if self.by == "holdout_logloss":
            return r.holdout_logloss
        return r.passes[0].logloss if r.passes else r.logloss

    def __repr__(self):
        return "GridResult(%d settings, best %s)" % (len(self.fms), setting_name(self.settings[self.best])
                                                       if self.fms else None)


_SPACE_OR_CONTROL = re.compile(rb"[\x00- \x7f]")


def _one_line(x, y=None):
    """A sample given as {name: value} as the bytes of one input line."""
    if not hasattr(x, "items"):
        raise TypeError("a sample is a dict {feature name: value}, not a %s" % type(x).__name__)
    parts = [b"1" if y is not None and y > 0 else b"0"]
    for name, value in x.items():
        b = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        if _SPACE_OR_CONTROL.search(b):
            raise BadInputError("feature name %r holds white space or a control byte" % (name,))
        parts.append(b"%s:%s" % (b, repr(float(value)).encode()))
    return b" ".join(parts) + b"\n"


class FM:
    r"""A Factorization Machine for binary targets, trained online with FTRL-Proximal.

    The score of a sample with feature values :math:`x_i` is

    .. math::

        \hat{y}(x) = w_0 + \sum_i w_i x_i + \sum_{i<j} \langle v_i, v_j \rangle x_i x_j
                   = w_0 + \sum_i w_i x_i + \tfrac12 \sum_{f=1}^{k}
                     \Big[\big(\sum_i v_{i,f} x_i\big)^2 - \sum_i v_{i,f}^2 x_i^2\Big]

    and the predicted probability :math:`\sigma(\hat{y}) = 1 / (1 + e^{-\hat{y}})`.
    Each weight (:math:`w_0`, :math:`w_i`, :math:`v_{i,f}`) is learnt by
    FTRL-Proximal on the logistic loss, with per-coordinate state (n, z):

    .. math::

        g &= \partial \ell / \partial \theta, \quad
        \sigma = (\sqrt{n + g^2} - \sqrt{n}) / \alpha, \quad
        z \mathrel{+}= g - \sigma \theta, \quad n \mathrel{+}= g^2, \\
        \theta &= 0 \text{ if } |z| \le \lambda_1, \text{ else }
        -\frac{z - \operatorname{sgn}(z) \lambda_1}{\lambda_2 + (\beta + \sqrt{n}) / \alpha},

    exactly as alphaFM does it (docs/design.md, "The FTRL-Proximal update").
    A feature is a name (any bytes without white space) with a value; names
    the model has not seen get a row when first trained on, with
    :math:`v \sim N(0, \text{init\_stdev}^2)` drawn from the name and ``seed``
    alone, so training on A and then B equals training on A + B.

    Parameters
    ----------
    k0 : bool
        Use the bias :math:`w_0` (alphaFM's ``-dim`` first number).
    k1 : bool
        Use the linear weights :math:`w_i`.
    k : int
        Number of factors (0: logistic regression).
    init_stdev : float
        Standard deviation of the initial factors.
    w_alpha, w_beta, w_l1, w_l2 : float
        FTRL :math:`\alpha` (learning rate, > 0), :math:`\beta`, L1 and L2 of the
        bias and the linear weights.
    v_alpha, v_beta, v_l1, v_l2 : float
        The same for the factors.
    fvs : bool
        Force v to 0 while w is 0 (alphaFM's ``force_v_sparse``).
    dtype : str
        ``"float64"`` (alphaFM's double) or ``"float32"`` (half the memory).
    seed : int
        Seed of the initial factors.
    model : "fm" or "ffm"
        "ffm": a field-aware FM (Juan et al. 2016, as libffm and xLearn),

        .. math::

            \hat{y}(x) = w_0 + \sum_i w_i x_i
                       + \sum_{i<j} \langle v_{i,f(j)}, v_{j,f(i)} \rangle x_i x_j,

        where each feature has one k-vector per field and :math:`f(i)` is the
        field of feature i: its name up to the first ``field_sep`` (``age_b=3``
        is in field ``age_b``; a name without it is a field of its own). Every
        coordinate takes the same FTRL step; the gradient of
        :math:`v_{i,f,d}` is :math:`g \sum_{j: f(j) = f} v_{j,f(i),d} x_i x_j`.
        O(n^2 k) per sample. Not with ``fvs``; not for ``grid_fit``,
        ``embeddings`` or recall (they need an FM).
    field_sep : str
        The field separator of an FFM (1 to 8 bytes, no white space).
    max_fields : int
        An FFM's field capacity F: each feature holds F * k factors (memory
        8 (3 + 2 F k) bytes a feature in float64). A line whose new feature
        would bring a field beyond F is a bad line (skipped, counted).

    Hyper-parameters are attributes; ``k`` and ``dtype`` are fixed once the
    object exists, the others may be changed between calls (as fm_train's
    flags may change when it continues a model with ``-im``). An FM object is
    not meant to be trained from several threads at once (give ``cores``).

    Examples
    --------
    >>> import streamfm
    >>> fm = streamfm.FM(k=4, seed=1)
    >>> lines = [b"1 user=1 item=7", b"0 user=2 item=7", b"1 user=1 item=3"] * 50
    >>> report = fm.partial_fit(lines)
    >>> report.samples, report.bad, fm.n_features
    (150, 0, 4)
    >>> p = fm.predict_proba([b"1 user=1 item=7", b"0 user=2 item=7", b"1 oops:x"])
    >>> bool(p[0] > p[1]), bool(np.isnan(p[2]))
    (True, True)
    >>> fm.last_report.bad_lines
    [BadLine(line=3, reason='feature value is not a number', column=3, text='1 oops:x')]

    A field-aware FM: fields are the name parts before ``=``; the phis of
    ``explain`` add up to the raw score with the bias.

    >>> ffm = streamfm.FM(k=2, model="ffm", max_fields=4, seed=1)
    >>> _ = ffm.partial_fit([b"1 user=1 item=7 ctx=a", b"0 user=2 item=7 ctx=b"] * 50)
    >>> ffm.fields
    ['user', 'item', 'ctx']
    >>> p = ffm.predict_proba([b"1 user=1 item=7", b"0 user=2 item=7"])
    >>> bool(p[0] > p[1])
    True
    >>> raw = ffm.bias + sum(phi for _, phi in ffm.explain([b"1 user=1 item=7"])[0])
    >>> bool(abs(1 / (1 + math.exp(-raw)) - p[0]) < 1e-12)
    True
    """

    def __init__(self, k0=True, k1=True, k=8, init_stdev=0.1, w_alpha=0.05, w_beta=1.0, w_l1=0.1,
                 w_l2=5.0, v_alpha=0.05, v_beta=1.0, v_l1=0.1, v_l2=5.0, fvs=False, dtype="float64",
                 seed=0, model="fm", field_sep=DEFAULT_SEP, max_fields=DEFAULT_MAX_FIELDS):
        self._k = _check_int("k", k, 0, 1 << 16)
        if model not in ("fm", "ffm"):
            raise ParameterError("model must be 'fm' or 'ffm', not %r" % (model,))
        self._kind = model
        if model == "ffm":
            max_fields = _check_int("max_fields", max_fields, 1, MAX_FIELDS)
            if self._k * max_fields > MAX_K:
                raise ParameterError("k * max_fields must be at most %d (the factors of a row), not %d"
                                     % (MAX_K, self._k * max_fields))
            if fvs:
                raise ParameterError("fvs is not offered for a field-aware FM (model='ffm')")
            try:
                self._fields = Fields(field_sep, max_fields)
            except ValueError as e:
                raise ParameterError("field_sep: %s" % e) from None
        self._dtype = _check_dtype(dtype)
        given = {"init_stdev": init_stdev, "w_alpha": w_alpha, "w_beta": w_beta, "w_l1": w_l1, "w_l2": w_l2,
                 "v_alpha": v_alpha, "v_beta": v_beta, "v_l1": v_l1, "v_l2": v_l2}
        self._hp = np.array([_check_hp(n, given[n]) for n in ftrl.HP_NAMES], dtype=np.float64)
        self.k0 = k0
        self.k1 = k1
        self.fvs = fvs
        self.seed = seed
        self._model = (Model(self._k, self._dtype, hp=self._hp, fvs=self._fvs, seed=self._seed)
                       if model == "fm" else FFMModel(self._k, self._dtype, hp=self._hp, seed=self._seed,
                                                      fields=self._fields))
        self._arrays = None      # a loaded model file, until it is trained on
        self._reserve_rows = 0   # FM.load's reserve_rows, for the Model made of the file
        self._loaded_info = {}
        self._serving = None     # (w, v) per row for prediction, rebuilt after training
        self._bufs = parse.ParseBuffers(0)
        self._acc = None
        self._shares_table = False
        self.last_report = None
        self.last_grid = None

    # -- hyper-parameters ----------------------------------------------------
    @property
    def k(self):
        return self._k

    @property
    def dtype(self):
        return dtype_name(self._dtype)

    @property
    def k0(self):
        return self._k0

    @k0.setter
    def k0(self, value):
        self._k0 = bool(value)

    @property
    def k1(self):
        return self._k1

    @k1.setter
    def k1(self, value):
        self._k1 = bool(value)

    @property
    def fvs(self):
        return self._fvs

    @fvs.setter
    def fvs(self, value):
        if value and getattr(self, "_kind", "fm") == "ffm":
            raise ParameterError("fvs is not offered for a field-aware FM (model='ffm')")
        self._fvs = bool(value)
        self._serving = None

    @property
    def model(self):
        """"fm", or "ffm" for a field-aware FM."""
        return self._kind

    @property
    def field_sep(self):
        """An FFM's field separator (None for an FM)."""
        return None if self._kind == "fm" else self._field_list().sep.decode("utf-8", "surrogateescape")

    @property
    def max_fields(self):
        """An FFM's field capacity (None for an FM)."""
        return None if self._kind == "fm" else self._field_list().capacity

    @property
    def fields(self):
        """An FFM's field names in id order (first appearance); None for an FM."""
        if self._kind == "fm":
            return None
        return [n.decode("utf-8", "backslashreplace") for n in self._field_list().names]

    def _field_list(self):
        if self._model is not None:
            return self._model.fields
        return fields_of_info(self._arrays.info)

    def require_fm(self, what):
        """ModelFormatError unless this is an FM (``what`` needs one: recall, embeddings)."""
        if self._kind != "fm":
            refuse_ffm({"model": self._kind}, getattr(self._arrays, "path", "model"), what)

    @property
    def seed(self):
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = _check_int("seed", value, -(1 << 63), (1 << 63) - 1)

    def hyper_parameters(self):
        """{name: value} of every hyper-parameter (the constructor's arguments)."""
        out = {"k0": self.k0, "k1": self.k1, "k": self.k}
        out.update({n: float(v) for n, v in zip(ftrl.HP_NAMES, self._hp)})
        out.update({"fvs": self.fvs, "dtype": self.dtype, "seed": self.seed})
        if self._kind == "ffm":
            out.update({"model": "ffm", "field_sep": self.field_sep, "max_fields": self.max_fields})
        return out

    def __repr__(self):
        hp = self.hyper_parameters()
        return "FM(%s)" % ", ".join("%s=%r" % kv for kv in hp.items())

    # -- the model -----------------------------------------------------------
    @property
    def n_features(self):
        """Features the model holds (the bias not counted)."""
        src = self._model if self._model is not None else self._arrays
        return src.n_rows - 1

    @property
    def samples_seen(self):
        """Samples the model was trained on, over its whole life (0 if a text model did not say)."""
        if self._model is not None:
            return int(self._model.samples_seen)
        return int(self._arrays.info.get("samples_seen", 0))

    def training_model(self):
        """The trainable ``model.Model``, made from a loaded file on the first call.

        For the layers built on FM (recall, the commands): the caller is
        about to train it, so the prediction view is dropped.
        """
        if self._model is None:
            a = self._arrays
            if not a.has_state:
                raise ModelFormatError("%s: stripped model (w and v only) has no training state; it "
                                       "can be used for prediction, not trained" % getattr(a, "path", "model"))
            cls = FFMModel if self._kind == "ffm" else Model
            self._model = cls.from_arrays(a, self._hp, self._fvs, self._seed, dtype=self._dtype,
                                          extra_rows=self._reserve_rows or 1 << 16)
            self._arrays = None
        if getattr(self, "_shares_table", False):
            # a grid's FMs share one table; one that trains on gets its own
            self._model.table = self._model.table.copy()
            self._shares_table = False
        self._serving = None
        return self._synced()

    def _synced(self):
        """The Model with this object's hyper-parameters (they may have changed since)."""
        m = self._model
        m.hp = self._hp.copy()
        m.fvs = self._fvs
        m.seed = self._seed
        return m

    def serving_model(self):
        """The prediction view (``predict.ServingModel``): the feature table and (w, v) per row."""
        if self._serving is None:
            if self._model is None:
                self._serving = ServingModel.from_arrays(self._arrays)
            else:
                m = self._model
                w = np.empty((m.n_rows, 1 + m.k), dtype=m.dtype)
                ftrl.serving_weights(m.params, m.n_rows, m.k, self._hp, self._fvs, w)
                if self._kind == "ffm":
                    self._serving = FFMServingModel(m.table, w, m.field_k, m.fields.copy(),
                                                    m.row_field[: m.n_rows].copy())
                else:
                    self._serving = ServingModel(m.table, w, m.k)
        return self._serving

    # -- training --------------------------------------------------------------
    def partial_fit(self, data, y=None, *, cores=1, on_error="skip", max_bad_fraction=None, bad_lines=None,
                    progress=None, progress_every=1.0, feature_names=None, passes=1, holdout_every=None,
                    cache=None, reuse_cache=False, cache_dir=None):
        """Train on ``data`` (in order, ``passes`` times); returns a Report.

        Parameters
        ----------
        data
            Lines ``LABEL NAME:VALUE ...`` (label > 0 is a positive) as bytes, a
            path, a binary or text file object or an iterable of str/bytes lines;
            or a scipy.sparse matrix or 2-D array of feature values, with ``y``.
        y : array-like, optional
            Labels of a matrix's rows (> 0 positive); lines carry their own.
        cores : int
            Worker threads (Hogwild); with 1 a run is deterministic.
        on_error : "skip" or "stop"
            A bad line is skipped (counted and kept in the report) or stops the
            run with BadInputError (whose ``report`` says where).
        max_bad_fraction : float, optional
            BadInputError once more than this fraction of the lines is bad
            (checked from the 1000th line on, and at the end).
        bad_lines : str or path, optional
            Write every bad line to this file as 'LINE<TAB>REASON<TAB>text'
            (replaced atomically; complete even when the call raises).
        progress : callable, optional
            Called with a Report snapshot every ``progress_every`` seconds
            (its ``pass_no`` says which pass).
        feature_names : sequence of str, optional
            A matrix's column names (default: the column indices, "0", "1", ...).
        passes : int
            Passes over the data. The input is read and parsed once: pass 1
            writes the parsed blocks (row ids, values, labels) to a binary
            cache file, passes 2.. train from it (docs/design.md, "Passes and
            the block cache"). Pass 2 is the update sequence of training on
            the same data again: ``passes=2`` equals two calls, bit for bit
            with one core. The report's ``passes`` lists each pass's metrics.
        holdout_every : int, optional
            K >= 2: the samples on input lines K, 2K, 3K, ... (1-based line
            numbers; a matrix's row i is line i + 1) are never trained on, in
            any pass; each pass scores them with the model as it stands when
            the stream reaches them, as fm_predict would (report:
            ``holdout_logloss``, ``holdout_auc``, per pass in ``passes``).
        cache : str or path, optional
            Write the block cache to this file and keep it (default: a
            temporary file in ``cache_dir``, removed at the end). Only a
            regular file (or nothing) is written, atomically.
        reuse_cache : bool
            With ``cache``: when that file exists, is complete and fits (made
            from the same input file, same size and modification time, unless
            the input is a pipe; for a model holding the same features as this
            one now), read it instead of ``data`` (the input is not read; bad
            lines are the cache's counts, their details are not kept);
            CacheError when it does not fit. A missing file is written.
        cache_dir : str or path, optional
            Directory of the temporary cache (default: the system's).

        The model keeps what it learnt before an exception (BadInputError,
        KeyboardInterrupt); ``last_report`` then holds the counts so far.
        """
        opts = run_options(self.k0, self.k1, cores, on_error, max_bad_fraction, bad_lines)
        passes, holdout = _check_passes(passes, holdout_every, cache, reuse_cache)
        if reuse_cache and self._kind == "ffm":
            raise ParameterError("reuse_cache is not offered for a field-aware FM (model='ffm')")
        model = self.training_model()
        bad = _BadLines(opts)
        report = Report("partial_fit")
        self.last_report = report
        self._serving = None
        if passes == 1 and holdout is None and cache is None:
            summary = Summary()
            src = as_stream(data, y, feature_names)
            try:
                with src:
                    train_stream(model, src.stream, opts, logger.warning, bad=bad,
                                 progress=_Progress("partial_fit", progress, progress_every, bad),
                                 summary=summary)
            except BadInputError as e:
                _for_the_api(e, report)
                raise
            finally:
                report._fill(summary, bad, model.n_rows - 1)
                report.hash_collisions = int(model.table.collisions)
            return report
        summaries = []
        try:
            _run_passes(model, (), data, y, feature_names, opts, bad, passes, holdout, cache, reuse_cache,
                        cache_dir, _Progress("partial_fit", progress, progress_every, bad, passes), summaries)
        except BadInputError as e:
            _for_the_api(e, report)
            raise
        finally:
            if summaries:
                report._fill(summaries[0], bad, model.n_rows - 1)
                report._fill_passes(summaries)
            report.hash_collisions = int(model.table.collisions)
        return report

    def grid_fit(self, data, grid, y=None, *, cores=1, on_error="skip", max_bad_fraction=None, bad_lines=None,
                 progress=None, progress_every=1.0, feature_names=None, passes=1, holdout_every=None,
                 cache=None, reuse_cache=False, cache_dir=None):
        """Train one FM per combination of ``grid`` side by side, over one read of ``data``.

        ``grid``: {hyper-parameter: [values]} (names of ``HYPER_PARAMETERS``:
        the FTRL ones and init_stdev); every combination (the cartesian
        product, the first name varying slowest) is an FM with this object's
        other hyper-parameters, starting from this object's model (a copy; this
        object is not trained). Each block is parsed and its names looked up
        once, then trained by each FM on its own state: every FM is bit for bit
        the one ``partial_fit`` with its setting would give (one core, the
        same seed). Returns a GridResult: ``fms``, ``reports`` and
        ``settings`` in grid order, and ``best``, the index of the lowest
        held-out logloss of the last pass with ``holdout_every``, else of the
        lowest progressive logloss of pass 1 (the one honest when passes > 1).
        The other arguments as ``partial_fit``; ``progress`` snapshots are the
        first FM's.

        >>> fm = FM(k=2, seed=1)
        >>> lines = [b"1 a b", b"0 a c", b"1 b d", b"0 c"] * 100
        >>> res = fm.grid_fit(lines, {"w_alpha": [0.05, 0.2], "w_l2": [0, 5]})
        >>> [s["w_alpha"] for s in res.settings], len(res.fms), res.reports[0].samples
        ([0.05, 0.05, 0.2, 0.2], 4, 400)
        >>> one = FM(k=2, seed=1, w_alpha=0.2, w_l2=0)
        >>> _ = one.partial_fit(lines)
        >>> bool((one.embeddings()[1] == res.fms[2].embeddings()[1]).all()), one.bias == res.fms[2].bias
        (True, True)
        >>> res.best == min(range(4), key=lambda i: res.reports[i].logloss)
        True
        """
        if self._kind == "ffm":
            raise ParameterError("grid_fit is not offered for a field-aware FM (model='ffm')")
        settings = expand_grid(grid)
        opts = run_options(self.k0, self.k1, cores, on_error, max_bad_fraction, bad_lines)
        passes, holdout = _check_passes(passes, holdout_every, cache, reuse_cache)
        base = self.training_model()
        table = base.table.copy()
        fms = []
        for st in settings:
            hp = self.hyper_parameters()
            hp.update(st)
            fm = FM(**hp)
            m = fm._model
            m.table = table
            m.params = np.zeros(base.params.shape, dtype=base.params.dtype)  # spare rows stay untouched pages
            m.params[: base.n_rows] = base.params[: base.n_rows]
            m.samples_seen = base.samples_seen
            fm._loaded_info = dict(self._loaded_info)
            fm._shares_table = True
            fms.append(fm)
        models = [f._synced() for f in fms]
        bad = _BadLines(opts)
        result = GridResult(settings, fms, [Report("grid_fit") for _ in fms], holdout is not None)
        for fm, r in zip(fms, result.reports):
            fm.last_report = r
        self.last_grid = result  # the counts so far when the call raises (KeyboardInterrupt)
        self.last_report = result.reports[0]
        summaries = []
        try:
            _run_passes(models[0], models[1:], data, y, feature_names, opts, bad, passes, holdout, cache,
                        reuse_cache, cache_dir, _Progress("grid_fit", progress, progress_every, bad, passes),
                        summaries)
        except BadInputError as e:
            _for_the_api(e, result.reports[0])
            raise
        finally:
            for g, r in enumerate(result.reports):
                if summaries:
                    r._fill(summaries[0], bad, table.n_rows - 1)
                    r._fill_passes(summaries, g)
                r.hash_collisions = int(table.collisions)
        return result

    def learn_one(self, x, y):
        """Train on one sample: ``x`` a dict {feature name: value}, ``y`` its label (> 0 positive).

        The same update as ``partial_fit`` on the line ``y name:value ...``
        (a value of 0 drops its feature). Raises BadInputError for a value
        that is not a finite number or a name with white space.

        >>> fm = FM(k=2)
        >>> fm.learn_one({"user": 1, "item=7": 1.0}, 1)
        >>> fm.samples_seen, fm.n_features
        (1, 2)
        """
        model = self.training_model()
        p, buf = self._parse_one(_one_line(x, y), model.table)
        if p.n_unknown and self._kind == "ffm":
            model.screen(p, buf)
            if len(p.bad_line):
                raise BadInputError("sample %r: %s" % (x, parse.REASONS[int(p.bad_reason[0])]))
        if p.n_unknown:
            model.add_unknown(p, buf)
        if self._acc is None:
            from .metrics import new_accumulators

            self._acc = new_accumulators(ftrl.N_STATS - 4)
        self._serving = None
        if self._kind == "ffm":
            ffm_train_block(p.indptr, p.rows, p.vals, p.ys, p.n_samples, model.params, model.row_field, model.hp,
                            model.field_k, model.fields.capacity, self._k0, self._k1, *self._acc)
        else:
            ftrl.train_block(p.indptr, p.rows, p.vals, p.ys, p.n_samples, model.params, model.table.row_init,
                             model.hp, model.k, self._k0, self._k1, model.fvs, model.seed, *self._acc, None, 0)
        model.samples_seen += p.n_samples

    def _parse_one(self, line, table):
        buf = np.frombuffer(line, dtype=np.uint8)
        p = parse.parse(buf, 2, self._bufs, table)
        if len(p.bad_line):
            raise BadInputError("sample %r: %s" % (line.decode("utf-8", "backslashreplace").strip(),
                                                  parse.REASONS[int(p.bad_reason[0])]))
        return p, buf

    # -- prediction ------------------------------------------------------------
    def predict_proba_one(self, x):
        """The probability that the sample ``x`` ({feature name: value}) is a positive.

        Features the model does not know contribute nothing.

        >>> fm = FM(k=2)
        >>> fm.predict_proba_one({"user": 1})
        0.5
        """
        if self._model is None or self._kind == "ffm":
            sm = self.serving_model()
            p, _ = self._parse_one(_one_line(x), sm.table)
            if self._kind == "ffm":
                raw = np.empty(1)
                sm.scores(p, raw)
                # the kernel's sigmoid, as predict_proba: math.exp here overflowed
                # (OverflowError) for a raw score below about -709
                out = np.empty(1)
                probabilities(raw, 1, out)
                return float(out[0])
            w, rows = sm.weights, p.rows
        else:
            m = self._model
            p, _ = self._parse_one(_one_line(x), m.table)
            # (w, v) of the sample's rows only: the loop learn_one, predict_proba_one
            # must not rebuild the whole model's weights at every step
            known = p.rows >= 0
            idx = np.concatenate(([0], p.rows[known]))
            w = np.empty((idx.shape[0], 1 + m.k), dtype=m.dtype)
            ftrl.serving_weights(np.ascontiguousarray(m.params[idx]), idx.shape[0], m.k, self._hp,
                                 self._fvs, w)
            rows = np.full(p.rows.shape[0], -1, np.int64)
            rows[known] = np.arange(1, idx.shape[0])
        raw = np.empty(1)
        ftrl.score_block(p.indptr, rows, p.vals, 1, w, self._k, raw)
        out = np.empty(1)
        probabilities(raw, 1, out)
        return float(out[0])

    def _score(self, data, cores, on_error, feature_names, kind, on_block=None, out=None, explain=0,
               metrics=None, max_bad_fraction=None, bad_lines=None, progress=None, progress_every=1.0,
               make_on_block=None):
        """Run the predict pipeline over data; (per-line results, Report).

        ``on_block(parsed, raw)``: a result per block, collected by block;
        else the 'label prob' lines (``explain``: with the top features) go to ``out``.
        ``make_on_block``: the pipeline's per-worker block handler factory
        (``predict.predict_stream``), e.g. an Explainer's."""
        opts = run_options(True, True, cores, on_error, max_bad_fraction, bad_lines)
        sm = self.serving_model()
        bad = _BadLines(opts)
        summary = PredictSummary()
        report = Report(kind)
        self.last_report = report
        blocks = {}

        def on_scores(blk, p, raw):
            blocks[blk.seq] = (blk.first_line, p.sample_line.copy(), on_block(p, raw))

        make = make_on_block or (Explainer(sm, topn=explain).on_block_factory if explain else None)
        src = as_stream(data, feature_names=feature_names, need_labels=False)
        try:
            with src:
                predict_stream(sm, src.stream, out, opts, logger.warning,
                               metrics=src.has_labels if metrics is None else metrics, bad=bad,
                               on_scores=on_scores if on_block else None, make_on_block=make,
                               progress=_Progress(kind, progress, progress_every, bad), summary=summary)
        except BadInputError as e:
            _for_the_api(e, report)
            raise
        finally:
            report._fill(summary, bad, sm.n_rows - 1, summary.metrics)
        return blocks, report

    def write_predictions(self, data, out, *, cores=1, on_error="skip", max_bad_fraction=None,
                          bad_lines=None, explain=0, metrics=False, progress=None, progress_every=1.0,
                          feature_names=None):
        r"""Write alphaFM's prediction lines for ``data`` to the binary file ``out``; returns a Report.

        One line per valid input line, in input order: its label as 1 or -1, a
        space and :math:`\sigma(\hat{y})` (the shortest decimal that reads back
        as the same double); a bad line gets no output line and is counted in
        the report. This is fm_predict's output, byte for byte.

        Parameters
        ----------
        data
            Anything ``predict_proba`` takes.
        out
            A binary file object (``write(bytes)``): an open file, a socket file, ``io.BytesIO``.
        cores, on_error, max_bad_fraction, bad_lines, progress, progress_every
            As for ``partial_fit``.
        explain : int
            After the score, a tab and the ``explain`` features with the
            largest \|phi\| as name:phi (see ``explain``).
        metrics : bool
            Fill the report's logloss, AUC, mean prediction and positive rate
            against the input's labels.

        >>> import io
        >>> fm = FM(k=0, w_l1=0, w_l2=0, w_alpha=1)
        >>> _ = fm.partial_fit([b"1 a", b"1 a"])
        >>> out = io.BytesIO()
        >>> fm.write_predictions([b"1 a", b"0 b:2", b"? x"], out).bad
        1
        >>> print(out.getvalue().decode(), end="")   # "b" is unknown: sigmoid(w0)
        1 0.6607563687658172
        -1 0.5825702064623147
        """
        _, report = self._score(data, cores, on_error, feature_names, "write_predictions", out=out,
                                explain=_check_int("explain", explain, 0), metrics=bool(metrics),
                                max_bad_fraction=max_bad_fraction, bad_lines=bad_lines, progress=progress,
                                progress_every=progress_every)
        return report

    def predict_proba(self, data, *, cores=1, on_error="skip", feature_names=None):
        """Probability of a positive for every line (or matrix row) of ``data``.

        Returns a float64 array with one entry per input line, in input order:
        a bad line (and a blank one) gets NaN and is listed in ``last_report``
        (its ``bad_lines``), never dropped. ``data`` is any kind ``partial_fit``
        takes (a matrix needs no ``y``; labels, if any, only feed the report's
        logloss and AUC). ``cores``: worker threads (the order is kept).
        ``on_error="stop"``: the first bad line raises BadInputError.
        """
        def probs(p, raw):
            out = np.empty(p.n_samples)
            probabilities(raw, p.n_samples, out)
            return out

        blocks, report = self._score(data, cores, on_error, feature_names, "predict_proba", probs)
        out = np.full(report.lines, np.nan)
        for first, lines, pr in blocks.values():
            out[first - 1 + lines] = pr
        return out

    def explain(self, data, top=5, *, cores=1, on_error="skip", feature_names=None):
        r"""The ``top`` features with the largest \|contribution\| to each sample's score.

        The contribution of feature i to the score of sample x is

        .. math::

            \phi_i = w_i x_i + \tfrac12 x_i \langle v_i, s - v_i x_i \rangle, \quad
            s = \sum_j v_j x_j,

        and :math:`w_0 + \sum_i \phi_i` is the raw score exactly (each pairwise
        term is split evenly between its two features). Returns a list with one
        entry per input line: a list of (name, phi) pairs, largest \|phi\| first
        (ties in input order), or None for a bad or blank line (see
        ``last_report``). Features the model does not know have phi = 0.

        >>> fm = FM(k=0, w_l1=0, w_l2=0, w_alpha=1)
        >>> for _ in range(2):
        ...     fm.learn_one({"a": 1, "b": 2}, 1)
        >>> fm.explain([b"0 a b:2 zz", b"1 x:?"], top=2)   # w_b x_b = 0.5 * 2; w_a x_a = 1/3
        [[('b', 1.0), ('a', 0.3333333333333333)], None]
        """
        top = _check_int("top", top, 0)
        sm = self.serving_model()

        def pick(p, raw):
            phi = np.empty(max(p.nnz, 1))
            block_phi(sm, p, phi)
            out = []
            for s in range(p.n_samples):
                a, b = int(p.indptr[s]), int(p.indptr[s + 1])
                order = np.argsort(-np.abs(phi[a:b]), kind="stable")[:top]
                out.append([(bytes(p.buf[p.name_start[a + j]:p.name_start[a + j] + p.name_len[a + j]])
                             .decode("utf-8", "backslashreplace"), float(phi[a + j])) for j in order])
            return out

        blocks, report = self._score(data, cores, on_error, feature_names, "explain", pick)
        out = [None] * report.lines
        for first, lines, res in blocks.values():
            for li, r in zip(lines.tolist(), res):
                out[first - 1 + li] = r
        return out

    def importance(self, data, *, by_field=None, top=None, cores=1, on_error="skip", feature_names=None):
        r"""Global importance: each feature's mean phi and mean \|phi\| over the samples of ``data``.

        phi is the feature's exact share of a score (see ``explain``). Returns
        (name, count, mean_phi, mean_abs_phi) tuples, name as bytes, most
        important (largest mean \|phi\|) first, ties by first appearance in the
        model; only features that occur in ``data`` and the model. The report
        (``last_report``) counts the features seen as ``n_features``.

        Parameters
        ----------
        by_field : str, optional
            One byte: aggregate features by the field prefix of their name, up to
            its first ``by_field`` (f7_1234 -> f7 with "_"); a name without it is its own field.
        top : int, optional
            Only the first ``top`` rows.
        cores, on_error, feature_names
            As for ``predict_proba``.

        >>> fm = FM(k=0, w_l1=0, w_l2=0, w_alpha=1)
        >>> _ = fm.partial_fit([b"1 a_1 b_1", b"0 a_2"])
        >>> sorted((n, c) for n, c, _, _ in fm.importance([b"1 a_1", b"0 a_2 b_1"], by_field="_"))
        [(b'a', 2), (b'b', 1)]
        """
        from .explain import field_prefix_hash

        if by_field is not None and (not isinstance(by_field, str) or len(by_field.encode()) != 1):
            raise ParameterError("by_field must be a single byte such as '_', not %r" % (by_field,))
        sm = self.serving_model()
        arena, name_off = sm.table.names_view()
        n = sm.n_rows
        if by_field is not None:
            sep = by_field.encode()
            keys = field_prefix_hash(arena, name_off, n, sep[0], sm.table.key)
            _, first, inv = np.unique(keys[1:], return_index=True, return_inverse=True)
            group = np.empty(n, np.int64)
            group[0] = -1
            group[1:] = inv
            first_row = first + 1  # a field's first feature in the model
        else:
            group = np.arange(n, dtype=np.int64)
            group[0] = -1
            first_row = group
        ex = Explainer(sm, importance=True, group=group, n_groups=first_row.shape[0])
        _, report = self._score(data, cores, on_error, feature_names, "importance", metrics=False,
                                make_on_block=ex.on_block_factory)
        count, sum_phi, sum_abs, report.n_features = ex.totals()
        groups = np.flatnonzero(count > 0)
        rows = first_row[groups]
        g_count, g_phi, g_abs = count[groups], sum_phi[groups], sum_abs[groups]
        mean_phi = g_phi / np.maximum(g_count, 1)
        mean_abs = g_abs / np.maximum(g_count, 1)
        order = np.lexsort((rows, -mean_abs))
        if top is not None:
            order = order[:_check_int("top", top, 0)]
        out = []
        for i in order.tolist():
            name = bytes(arena[name_off[rows[i]]:name_off[rows[i] + 1]])
            if by_field is not None:
                name = name.split(sep, 1)[0]
            out.append((name, int(g_count[i]), float(mean_phi[i]), float(mean_abs[i])))
        return out

    def embeddings(self):
        """(names, V): every feature's name and its factor vector, row i of the (n, k) array V.

        >>> fm = FM(k=3)
        >>> fm.learn_one({"a": 1}, 1)
        >>> names, V = fm.embeddings()
        >>> names, V.shape
        (['a'], (1, 3))
        """
        self.require_fm("embeddings")
        sm = self.serving_model()
        arena, off = sm.table.names_view()
        names = [bytes(arena[off[r]:off[r + 1]]).decode("utf-8", "backslashreplace")
                 for r in range(1, sm.n_rows)]
        return names, np.array(sm.weights[1:, 1:])

    @property
    def bias(self):
        """The bias w0 as predictions use it."""
        return float(self.serving_model().weights[0, 0])

    # -- files -----------------------------------------------------------------
    def save(self, path, format="bin", state=True):
        """Write the model to ``path`` (atomically): ``format`` "bin" (streamfm's
        binary) or "txt" (alphaFM's text); ``state=False`` writes w and v only
        (enough to predict, not to continue training). The files are those of
        fm_train ``-m``; fm_predict, fm_dump and ``FM.load`` read them.
        """
        if format not in ("bin", "txt"):
            raise ParameterError("format must be 'bin' or 'txt', not %r" % (format,))
        src = self._synced() if self._model is not None else self._arrays
        write_model(src, str(path), format, state=bool(state))

    @classmethod
    def load(cls, path, *, k0=True, k1=True, dtype=None, k=None, state=None, mmap=False, reserve_rows=0,
             **hyper):
        """An FM from a model file (txt or bin, streamfm's or alphaFM's).

        A binary model brings its hyper-parameters, ``fvs``, ``seed`` and
        ``samples_seen``; a text model does not hold them (give them as
        keyword arguments, as fm_train's flags with ``-im``). ``k0``/``k1`` are
        not in model files. Raises ModelFormatError.

        Parameters
        ----------
        dtype : str, optional
            Convert the numbers (default: the file's).
        k : int, optional
            The factor count the model must have (ModelFormatError otherwise).
        state : bool, optional
            True: the file must hold the FTRL state (to continue training);
            False: read w and v only (prediction; a model then cannot be
            trained); None: whatever the file holds.
        mmap : bool
            Map a binary model read-only instead of reading it (prediction
            only: its pages are the page cache's, shared by every process).
        reserve_rows : int
            Room for this many new features when training continues, made
            once instead of by growing the arrays.

        >>> import os, tempfile
        >>> fm = FM(k=2, seed=3)
        >>> fm.learn_one({"a": 1}, 1)
        >>> path = os.path.join(tempfile.mkdtemp(), "m.bin")
        >>> fm.save(path)
        >>> again = FM.load(path)
        >>> again.seed, again.n_features, again.info["samples_seen"]
        (3, 1, 1)
        """
        unknown = set(hyper) - set(HYPER_PARAMETERS) - {"fvs", "seed"}
        if unknown:
            raise TypeError("unknown hyper-parameter(s): %s" % ", ".join(sorted(unknown)))
        arrays = read_model(str(path), k=k, state=state, mmap=bool(mmap),
                            dtype=None if dtype is None else _check_dtype(dtype),
                            extra_rows=_check_int("reserve_rows", reserve_rows, 0), ffm=True)
        info = arrays.info
        args = dict(HYPER_PARAMETERS)
        args.update(info.get("hyper") or {})
        args["fvs"] = bool(info.get("fvs", False))
        args["seed"] = int(info.get("seed", 0) or 0)
        args.update(hyper)
        k = arrays.k
        if info.get("model") == "ffm":
            if args["fvs"]:
                raise ParameterError("fvs is not offered for a field-aware FM (model='ffm')")
            k = int(info["field_k"])
            args.update(model="ffm", field_sep=info["field_sep"], max_fields=int(info["max_fields"]))
        fm = cls(k0=k0, k1=k1, k=k, dtype=arrays.dtype, **args)
        fm._model = None
        fm._arrays = arrays
        fm._reserve_rows = int(reserve_rows)
        fm._loaded_info = dict(info)  # what the file said
        if not info.get("hyper") and set(hyper) & set(HYPER_PARAMETERS):
            # a text model's hyper-parameters, given by the caller: saved unchanged
            # as binary, the file says them (not the defaults a reader would assume)
            h = fm.hyper_parameters()
            arrays.info.update(hyper={n: float(h[n]) for n in HYPER_PARAMETERS}, fvs=bool(h["fvs"]))
            if "seed" in hyper:
                arrays.info["seed"] = int(h["seed"])
        return fm

    @property
    def info(self):
        """What the model file said of itself (``FM.load``): k, dtype, and for a
        binary model hyper, fvs, seed, samples_seen; {} for a new model."""
        return dict(self._loaded_info)

    def reserve(self, rows, name_bytes=0):
        """Make room for ``rows`` more features (and ``name_bytes`` more bytes of
        their names) now, so training does not stop to grow the arrays later.

        >>> fm = FM(k=2)
        >>> fm.reserve(100000, 1 << 20)
        >>> fm.n_features
        0
        """
        model = self.training_model()
        model.reserve(_check_int("rows", rows, 0), _check_int("name_bytes", name_bytes, 0))

    def replace_model(self, arrays):
        """Hold the model file content ``arrays`` (``model.ModelArrays``) instead of the model
        (e.g. the pruned model recall training writes); training makes a Model of it again."""
        self._model = None
        self._arrays = arrays
        self._serving = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_serving"] = None
        state["_bufs"] = None
        state["_acc"] = None
        state["last_report"] = None
        state["last_grid"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("_kind", "fm")  # pickled before field-aware FMs
        self.__dict__.update(state)
        self._bufs = parse.ParseBuffers(0)


def _hp_property(i, name):
    def get(self):
        return float(self._hp[i])

    def set(self, value):
        self._hp[i] = _check_hp(name, value)
        self._serving = None

    return property(get, set, doc="FTRL hyper-parameter %s (see the class doc)." % name)


for _i, _name in enumerate(ftrl.HP_NAMES):
    setattr(FM, _name, _hp_property(_i, _name))
del _i, _name
