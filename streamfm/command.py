"""The frame every command shares: exit codes, messages on stderr, Ctrl-C and
SIGTERM, checks made before any work, output failures, common flag types.

fm_train, fm_predict and fm_dump (cli.py), fm_recall (recall/cli.py),
fm_sample (sample/cli.py) and fm_serve import these; a command module imports
nothing private of another.
"""

import contextlib
import errno
import functools
import gc
import io
import logging
import math
import signal
import sys
import threading

import click
import numpy as np

from . import ftrl, jit
from .badlines import BadInputStop
from .metrics import Progress, fmt_int, fmt_metric
from .model import MAX_K, ModelError
from .output import OutputError, check_distinct, check_writable, open_output, protect_standard_streams, write_text

EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
# Row capacity reserved up front: zero pages cost address space, not memory,
# and a run that stays within it never copies the model to grow it. Address
# space is not free either (the kernel refuses a 60 GB np.zeros), so wide
# rows (-dim 1,1,1000) reserve fewer and grow by doubling past them.
_SPARE_ROWS = 1 << 22
_SPARE_BYTES = 1 << 31


def spare_rows(k, dtype, rows=_SPARE_ROWS):
    """Rows to reserve for a model of k factors: ``rows``, or fewer when
    they would take more than _SPARE_BYTES of address space."""
    width = ftrl.n_cols(k) * np.dtype(dtype).itemsize
    return int(max(1 << 10, min(rows, _SPARE_BYTES // width)))


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def settle_after_warm_up():
    """A command's process, once its kernels are loaded: LLVM's pages given back, and every
    object alive now (numba's, the imports') moved out of the garbage collector's sight.

    Those objects live until exit; numba and the imports make over 100,000 of them,
    and every full collection walked them all, the one at exit too (0.4-0.5 s
    of every run on the bench machine). Only commands do this: a library
    call must not change how its caller's process collects garbage.
    """
    jit.release_compiler_memory()
    gc.freeze()


def log(msg):
    if sys.stderr is None:  # started with 2>&-: the exit code still tells
        return
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def fail(cmd, msg, code=1):
    log("%s: error: %s" % (cmd, msg))
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the trainer's own handling: unwinds like Ctrl-C, so an
    output being written is discarded (its temporary file removed)."""


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt here even when the parent started the
    command with SIGINT ignored (a background job): a long run can always be
    stopped, and saved with --save-on-interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def interruptible(name):
    """The frame of every command.

    Ctrl-C or SIGTERM outside the trainer's own handling (loading, compiling,
    writing) unwinds the command, so an output in progress removes its
    temporary file, and exits 128+signal with a word, not click's 'Aborted!'
    and status 1; running out of memory exits 1 with one line, not a
    traceback. Descriptors 0-2 closed at start (``>&-``) are kept taken, so no
    file opened later becomes standard output.
    """
    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            protect_standard_streams()
            old = None
            if threading.current_thread() is threading.main_thread():
                old = signal.signal(signal.SIGTERM, _on_sigterm)
            try:
                return f(*args, **kwargs)
            except KeyboardInterrupt as e:
                sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
                log("%s: interrupted (%s); nothing written" % (name, sig.name))
                sys.exit(128 + sig)
            except MemoryError:
                log("%s: error: out of memory; nothing written" % name)
                sys.exit(1)
            finally:
                if old is not None:
                    signal.signal(signal.SIGTERM, old)
        return wrapper
    return deco


def parse_dim(text, cmd="fm_train"):
    """alphaFM's -dim 'k0,k1,k' (bias on, linear on, factors)."""
    parts = text.split(",")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = None
    if not vals or len(vals) != 3 or not 0 <= vals[2] <= MAX_K or any(v not in (0, 1) for v in vals[:2]):
        raise click.BadParameter("expected k0,k1,k such as 1,1,8 (k0, k1 are 0 or 1; 0 <= k <= %d), got %r"
                                 % (MAX_K, text), param_hint="-dim")
    return bool(vals[0]), bool(vals[1]), vals[2]


def check_writable_or_fail(path, cmd):
    """Fail before hours of training, not after, when an output cannot be written."""
    try:
        check_writable(path)
    except OutputError as e:
        fail(cmd, str(e))


def check_distinct_or_fail(cmd, outputs, inputs, allow=()):
    """Exit 2 before anything is opened for writing when an output is an input
    (or two outputs are one file); see output.check_distinct."""
    try:
        check_distinct(outputs, inputs, allow)
    except OutputError as e:
        fail(cmd, str(e), EXIT_USAGE)


def output_failed(cmd, e):
    """End a command whose output failed: one line naming the output, exit 1
    (silently when a reader such as ``head`` closed the pipe: nothing to tell)."""
    if e.errno == errno.EPIPE:
        sys.exit(1)
    fail(cmd, str(e))


def to_output(cmd, out_path, run, reading="input"):
    """``run(out)`` on standard output ('-') or an output file (output.open_output:
    a run that fails leaves no partial file, as with models); its failures end
    the command with a one-line error and the documented exit code."""
    try:
        with open_output(out_path) as out:
            return run(out)
    except BadInputStop as e:
        fail(cmd, flag_message(e), EXIT_BAD_INPUT)
    except OutputError as e:
        output_failed(cmd, e)
    except ModelError as e:
        fail(cmd, str(e))
    except OSError as e:
        fail(cmd, "reading %s: %s" % (reading, e.strerror or e))


def report(cmd):
    """A command whose result is text printed on standard output: what it
    prints is gathered and written at the end, checked, so a full disk or a
    closed stdout ends it with a one-line error and exit 1, not a short report."""
    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                check_writable("-")
            except OutputError as e:
                output_failed(cmd, e)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                result = f(*args, **kwargs)
            try:
                write_text("-", buf.getvalue())
            except OutputError as e:
                output_failed(cmd, e)
            return result
        return wrapper
    return deco


class progress_printer(Progress):
    """The progress line of fm_train and fm_predict, printed from the Report
    snapshots the API's ``progress`` callback receives (the API spaces them):
    lines, samples, bad lines, features, samples/s, and the progressive
    logloss and AUC (``metrics``)."""

    def __init__(self, cmd, quiet=False, features=True, metrics=True):
        Progress.__init__(self, log, cmd, every=0, quiet=quiet)
        self.features = features
        self.metrics = metrics

    def __call__(self, report):
        if self.quiet:
            return
        passes = getattr(report, "passes_total", 1)
        self.say("pass %d/%d" % (report.pass_no, passes) if passes > 1 else "",
                 "%s lines" % fmt_int(report.lines), "%s samples" % fmt_int(report.samples),
                 "%s bad" % fmt_int(report.bad) if report.bad else "",
                 "%s features" % fmt_int(report.n_features) if self.features else "",
                 "%s samples/s" % fmt_int(report.samples / max(report.seconds, 1e-9)),
                 "logloss %s" % fmt_metric(report.logloss) if self.metrics else "",
                 "auc %s" % fmt_metric(report.auc) if self.metrics else "")


class _StderrHandler(logging.Handler):
    def emit(self, record):
        log(record.getMessage())


@contextlib.contextmanager
def library_messages(quiet=False):
    """The library's warnings (the first bad lines of an input) on stderr, as
    the command's own lines; nothing with ``quiet``."""
    if quiet:
        yield
        return
    lg = logging.getLogger("streamfm")
    h = _StderrHandler(logging.WARNING)
    lg.addHandler(h)
    try:
        yield
    finally:
        lg.removeHandler(h)


def flag_message(e):
    """A BadInputError's message in the words of the command-line flags."""
    return getattr(e, "flag_message", None) or str(e)


def fmt_seconds(s):
    return "%.2f s" % s if s < 10 else "%.1f s" % s


_HP_HELP = {
    "w_alpha": "FTRL alpha (learning rate) of w", "w_beta": "FTRL beta of w",
    "w_l1": "L1 regularisation of w", "w_l2": "L2 regularisation of w",
    "v_alpha": "FTRL alpha (learning rate) of v", "v_beta": "FTRL beta of v",
    "v_l1": "L1 regularisation of v", "v_l2": "L2 regularisation of v",
    "init_stdev": "standard deviation of the initial v",
}


class FiniteFloat(click.FloatRange):
    """A float flag within bounds that must also be a finite number: click's
    FloatRange lets 'nan' (every comparison false) and 'inf' through."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail("%r is not a finite number" % rv, param, ctx)
        return rv


class HyperParam(click.ParamType):
    """An FTRL hyper-parameter flag, checked by ftrl.hp_error (finite; alpha > 0, the rest >= 0)."""

    name = "float"

    def __init__(self, hp):
        self.hp = hp

    def convert(self, value, param, ctx):
        why = ftrl.hp_error(self.hp, value)
        if why:
            self.fail(why, param, ctx)
        return float(value)


# --seed: the trainer's kernels take it as a 64-bit integer
SEED = click.IntRange(-(1 << 63), (1 << 63) - 1)


def hp_options(f=None, defaults=None):
    """The FTRL flags (-w_alpha ... -init_stdev), checked by ftrl.hp_error;
    ``defaults`` overrides some of alphaFM's (fm_recall's)."""
    if f is None:
        return lambda g: hp_options(g, defaults)
    given = dict(zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS), **(defaults or {}))
    for name in reversed(ftrl.HP_NAMES):
        f = click.option("-" + name, name, type=HyperParam(name), default=given[name], show_default=True,
                         help=_HP_HELP[name] + ".")(f)
    return f


def continue_seed(cmd, info, seed, fvs, quiet):
    """The seed for continuing a model: a binary model remembers its own.

    New features of the continued run must get the draws they would have
    got in one long run, so the model's seed wins unless --seed says
    otherwise (then say that the runs will not match).
    """
    saved = info.get("seed")
    if seed is None:
        seed = 0 if saved is None else int(saved)
    elif saved is not None and int(saved) != seed and not quiet:
        log("%s: warning: --seed %d differs from the model's seed %d; new features get other "
            "initial factors than one continuous run would give them" % (cmd, seed, int(saved)))
    if "fvs" in info and bool(info["fvs"]) != bool(fvs) and not quiet:
        log("%s: warning: -fvs %d differs from the model's -fvs %d" % (cmd, int(fvs), int(info["fvs"])))
    return seed
