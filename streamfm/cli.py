"""Command line: fm_train, fm_predict, fm_dump (click).

alphaFM's flags keep their single-dash names, meanings and defaults, so
existing shell scripts keep working; streamfm's own flags are GNU style.
"""

import contextlib
import errno
import functools
import io
import math
import signal
import sys
import threading
import time

import click
import numpy as np

from . import ftrl, jit
from .badlines import BadInputStop
from .metrics import fmt_int, fmt_metric
from .model import (MAX_K, Model, ModelArrays, ModelError, detect_format, dtype_name, dtype_of, file_dtype,
                    model_has_state, read_model, write_model)
from .output import (OutputError, check_distinct, check_writable, open_output,
                     protect_standard_streams, write_text)
from .parse import VALUE_CLIP

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


def parse_predict_dim(text):
    """fm_predict's -dim: alphaFM takes the factor count (8); 1,1,8 is accepted too."""
    if text is None:
        return None
    try:
        return int(text.split(",")[-1])
    except ValueError:
        raise click.BadParameter("expected the number of factors, such as 8 (or 1,1,8), got %r" % text,
                                 param_hint="-dim")


def _open_input(path):
    if path in (None, "-"):
        if sys.stdin is None:
            raise click.UsageError("no standard input; give --input FILE")
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        raise click.BadParameter("%s: %s" % (path, e.strerror), param_hint="--input")


def _check_writable(path, cmd):
    """Fail before hours of training, not after, when an output cannot be written."""
    try:
        check_writable(path)
    except OutputError as e:
        fail(cmd, str(e))


def _check_distinct(cmd, outputs, inputs, allow=()):
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
        fail(cmd, str(e), EXIT_BAD_INPUT)
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


def _fmt_seconds(s):
    return "%.2f s" % s if s < 10 else "%.1f s" % s


# ---------------------------------------------------------------------------
# fm_train

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


def _hp_options(f):
    for name, default in reversed(list(zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS))):
        f = click.option("-" + name, name, type=HyperParam(name), default=default, show_default=True,
                         help=_HP_HELP[name] + ".")(f)
    return f


@click.command(context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="PATH", help="Where to write the trained model (required).")
@click.option("-mf", "model_format", type=click.Choice(["txt", "bin"]), default="txt", show_default=True,
              help="Format of the model written: alphaFM's text, or streamfm's binary (fast to load).")
@click.option("-dim", "dim", default="1,1,8", show_default=True, metavar="K0,K1,K",
              help="Use the bias (K0), the linear terms (K1), and K factors; 1,1,0 is logistic regression.")
@_hp_options
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker threads (parse and update in parallel; with 1 and a --seed a run is deterministic).")
@click.option("-im", "init_model", metavar="PATH",
              help="Continue training from this model (txt or bin, streamfm's or alphaFM's).")
@click.option("-imf", "init_model_format", type=click.Choice(["txt", "bin"]), default=None,
              help="Format of -im (accepted for alphaFM scripts; the file's bytes decide).")
@click.option("-fvs", "fvs", type=click.IntRange(0, 1), default=0, show_default=True,
              help="Force v to 0 while w is 0 (alphaFM's force_v_sparse).")
@click.option("-mnt", "mnt", type=click.Choice(["double", "float"]), default="double", show_default=True,
              help="Number type of the model in memory and on disk (float halves the memory).")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Read samples from FILE instead of standard input.")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the initial v draws; a feature's draw depends only on its name and the "
                   "seed. Default: the -im binary model's seed, else 0.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="On a bad line: skip it (counted and reported), or stop, write no model and exit 3.")
@click.option("--max-bad-fraction", type=FiniteFloat(0, 1), default=None, metavar="F",
              help="Stop (no model, exit 3) when more than this fraction of lines is bad.")
@click.option("--bad-lines", metavar="FILE", default=None,
              help="Write every bad line to FILE as 'line-number<TAB>reason<TAB>line'.")
@click.option("--save-on-interrupt", is_flag=True,
              help="On SIGINT/SIGTERM, write the model trained so far (default: write nothing, exit non-zero).")
@click.option("--allow-empty", is_flag=True,
              help="Write the model even when the input held no valid sample: the -im model unchanged, "
                   "or one with only the bias (default: write nothing and exit 3).")
@click.option("--progress-every", type=FiniteFloat(0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Seconds between progress lines on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr (errors still show).")
@interruptible("fm_train")
def fm_train(model_path, model_format, dim, w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2,
             init_stdev, cores, init_model, init_model_format, fvs, mnt, input_path, seed, on_error,
             max_bad_fraction, bad_lines, save_on_interrupt, allow_empty, progress_every, quiet):
    """Train an FM with FTRL on libsvm-style lines from standard input.

    Each line is 'LABEL NAME:VALUE NAME:VALUE ...' (label > 0 is a click).
    Progress and progressive (score-before-update) logloss and AUC go to
    stderr. Input without a single valid sample (an empty hour of logs, a
    gzip file fed raw) writes no model and exits 3, unless --allow-empty.

    \b
    Examples:
      cat train.txt | fm_train -m model.txt -dim 1,1,8 -core 2
      cat hour.txt  | fm_train -im model.txt -m model.new.txt
    """
    from .train import Options, train_stream, warm_up

    cmd = "fm_train"
    if not model_path:
        raise click.UsageError("-m PATH (where to write the model) is required")
    k0, k1, k = parse_dim(dim)
    hp = [w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2, init_stdev]
    dtype = dtype_of(mnt)
    # -im X -m X replaces a model by its continuation: it is read whole first
    _check_distinct(cmd, [("-m", model_path), ("--bad-lines", bad_lines)],
                    [("--input", input_path or "-"), ("-im", init_model)], allow={("-m", "-im")})
    _check_writable(model_path, cmd)
    if bad_lines:
        _check_writable(bad_lines, cmd)
    stream = _open_input(input_path)
    try:
        continue_fmt = detect_format(init_model) if init_model else None
    except ModelError as e:
        fail(cmd, str(e))
    # every kernel first: the compiler's memory goes before the model comes
    warm_up(k, dtype, hp, bool(fvs), 0 if seed is None else seed, model_format, log, quiet,
            continue_fmt)
    jit.release_compiler_memory()
    t_load = time.time()
    spare = spare_rows(k, dtype)
    try:
        if init_model:
            arrays = read_model(init_model, k=k, state=True, fmt=init_model_format, dtype=dtype,
                                extra_rows=spare)
            seed = _continue_seed(cmd, arrays.info, seed, fvs, quiet)
            model = Model.from_arrays(arrays, hp, fvs, seed, dtype=dtype, extra_rows=spare)
            del arrays
            if not quiet:
                log("%s: continuing %s: %s features, %s samples seen before (%s)" % (
                    cmd, init_model, fmt_int(model.n_rows - 1), fmt_int(model.samples_seen),
                    _fmt_seconds(time.time() - t_load)))
        else:
            seed = 0 if seed is None else seed
            model = Model(k, dtype, hp=hp, fvs=bool(fvs), seed=seed, row_capacity=spare,
                          arena_capacity=1 << 25)
    except (ModelError, ValueError) as e:
        fail(cmd, str(e))
    opts = Options(k0=k0, k1=k1, cores=cores, on_error=on_error, max_bad_fraction=max_bad_fraction,
                   quiet=quiet, bad_lines=bad_lines, progress_every=progress_every)
    if input_path is None and sys.stdin.isatty() and not quiet:
        log("%s: reading samples from the terminal (pipe a file in, or use --input FILE)" % cmd)
    try:
        summary = train_stream(model, stream, opts, log)
    except BadInputStop as e:
        fail(cmd, str(e), EXIT_BAD_INPUT)
    except OutputError as e:
        output_failed(cmd, e)
    except OSError as e:
        fail(cmd, "reading input: %s" % (e.strerror or e))
    if summary.interrupted and not save_on_interrupt:
        log("%s: interrupted (%s) after %s lines; no model written (--save-on-interrupt writes it)"
            % (cmd, summary.interrupted, fmt_int(summary.lines)))
        sys.exit(128 + getattr(signal, summary.interrupted))
    if summary.samples == 0:
        what = "the input was empty" if summary.lines == 0 else "no valid sample in %s lines of input (%s bad)" % (
            fmt_int(summary.lines), fmt_int(summary.bad))
        if not allow_empty:
            fail(cmd, "%s; no model written (--allow-empty writes it anyway)" % what, EXIT_BAD_INPUT)
        if not quiet:
            log("%s: warning: %s; %s" % (cmd, what, "the model is -im's, unchanged" if init_model
                                          else "the model holds only the bias"))
    t_write = time.time()
    try:
        write_model(model, model_path, model_format)
    except (ModelError, OutputError) as e:
        fail(cmd, str(e))
    t_write = time.time() - t_write
    if not quiet:
        _train_report(cmd, summary, model, model_path, model_format, t_write)


def _continue_seed(cmd, info, seed, fvs, quiet):
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


def _train_report(cmd, s, model, path, fmt, t_write):
    rate = s.samples / max(s.seconds, 1e-9)
    log("%s: %s after %s" % (cmd, "interrupted (%s), model saved" % s.interrupted if s.interrupted else "done",
                              _fmt_seconds(s.seconds)))
    log("  lines read           %s" % fmt_int(s.lines))
    log("  samples trained      %s" % fmt_int(s.samples))
    log("  bad lines skipped    %s%s" % (fmt_int(s.bad), "  (%s)" % s.bad_description if s.bad else ""))
    if s.clipped:
        log("  values clipped       %s  (|value| > %g)" % (fmt_int(s.clipped), VALUE_CLIP))
    if s.overflow_samples or s.overflow_updates:
        log("  overflow guarded     %s samples skipped, %s updates skipped (numbers too large)"
            % (fmt_int(s.overflow_samples), fmt_int(s.overflow_updates)))
    log("  features in model    %s" % fmt_int(model.n_rows - 1))
    if model.table.collisions:
        log("  hash collisions      %s  (new names whose 64-bit hash equals another name's: they "
            "share its row)" % fmt_int(model.table.collisions))
    log("  samples/s            %s" % fmt_int(rate))
    log("  progressive logloss  %s   auc %s" % (fmt_metric(s.logloss), fmt_metric(s.auc)))
    log("  model written        %s (%s, %s)" % (path, fmt, _fmt_seconds(t_write)))


# ---------------------------------------------------------------------------
# fm_predict


@click.command(context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="PATH", help="Model to predict with (txt or bin; required).")
@click.option("-mf", "model_format", type=click.Choice(["txt", "bin"]), default=None,
              help="Format of -m (accepted for alphaFM scripts; the file's bytes decide).")
@click.option("-dim", "dim", default=None, metavar="K",
              help="Number of factors the model must have (8, or 1,1,8); checked against the model.")
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker threads; the output stays in input order.")
@click.option("-out", "out_path", default="-", show_default=True, metavar="PATH",
              help="Where to write 'label score' lines ('-' = standard output).")
@click.option("-mnt", "mnt", type=click.Choice(["double", "float"]), default=None,
              help="Accepted for alphaFM scripts; the model file says its number type.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Read samples from FILE instead of standard input.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="On a bad line: skip it (no output line, reported on stderr), or stop and exit 3.")
@click.option("--bad-lines", metavar="FILE", default=None,
              help="Write every bad line to FILE as 'line-number<TAB>reason<TAB>line'.")
@click.option("--metrics", is_flag=True,
              help="Print logloss, AUC and calibration (mean prediction vs observed rate) to stderr.")
@click.option("--explain", type=click.IntRange(0, (1 << 63) - 1), default=0, metavar="N",
              help="After 'label score', a tab and the N features with the largest |contribution| "
                   "as name:phi (phis of all features + bias = the raw score).")
@click.option("--progress-every", type=FiniteFloat(0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Seconds between progress lines on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr (errors still show).")
@interruptible("fm_predict")
def fm_predict(model_path, model_format, dim, cores, out_path, mnt, input_path, on_error, bad_lines,
               metrics, explain, progress_every, quiet):
    """Score libsvm-style lines with an FM model.

    Writes one 'label score' line per valid input line, in input order:
    the label as 1 or -1 and the score as the predicted probability.
    Features the model does not know contribute nothing.

    \b
    Example:
      cat test.txt | fm_predict -m model.txt -out pred.txt -core 2
    """
    from .explain import Explainer
    from .predict import ServingModel, predict_stream, warm_up
    from .train import Options

    cmd = "fm_predict"
    if not model_path:
        raise click.UsageError("-m PATH (the model) is required")
    k = parse_predict_dim(dim)
    _check_distinct(cmd, [("-out", out_path), ("--bad-lines", bad_lines)],
                    [("--input", input_path or "-"), ("-m", model_path)])
    _check_writable(out_path, cmd)
    if bad_lines:
        _check_writable(bad_lines, cmd)
    stream = _open_input(input_path)
    try:
        fmt = detect_format(model_path)
        warm_up(fmt, file_dtype(model_path), log, quiet, stripped=fmt == "bin" and not model_has_state(model_path))
        # the kernels are loaded: LLVM's pages go before the model's come in
        jit.release_compiler_memory()
        t0 = time.time()
        # a binary model is mapped, not read: its pages are the page cache's
        model = ServingModel.load(model_path, k=k, mmap=True)
    except (ModelError, ValueError) as e:
        fail(cmd, str(e))
    t_load = time.time() - t0
    opts = Options(cores=cores, on_error=on_error, quiet=quiet, bad_lines=bad_lines,
                   progress_every=progress_every)
    make = Explainer(model, topn=explain).on_block_factory if explain else None
    summary = to_output(cmd, out_path, lambda out: predict_stream(
        model, stream, out, opts, log, make_on_block=make, metrics=metrics))
    if not quiet:
        rate = summary.samples / max(summary.seconds, 1e-9)
        log("%s: %s lines, %s scored, %s bad, %s lines/s (model load %s)" % (
            cmd, fmt_int(summary.lines), fmt_int(summary.samples), fmt_int(summary.bad),
            fmt_int(rate), _fmt_seconds(t_load)))
        if summary.bad:
            log("  bad lines: %s" % summary.bad_description)
        if summary.clipped:
            log("  values clipped: %s (|value| > %g)" % (fmt_int(summary.clipped), VALUE_CLIP))
    if metrics:
        m = summary.metrics
        log("%s: samples %s  logloss %s  auc %s  mean prediction %s  observed rate %s" % (
            cmd, fmt_int(m.samples), fmt_metric(m.logloss), fmt_metric(m.auc),
            fmt_metric(m.mean_prediction), fmt_metric(m.positive_rate)))


# ---------------------------------------------------------------------------
# fm_dump


@click.group(context_settings=CONTEXT)
def fm_dump():
    """Inspect and convert FM model files."""


def _load_for_dump(path, state=True):
    try:
        return read_model(path, state=state, table=True)
    except ModelError as e:
        fail("fm_dump", str(e))


@fm_dump.command("info", context_settings=CONTEXT)
@click.argument("model_path", metavar="MODEL")
@interruptible("fm_dump info")
@report("fm_dump")
def dump_info(model_path):
    """Print a model's shape, sparsity and hyper-parameters."""
    try:
        fmt = detect_format(model_path)
        arrays = read_model(model_path, state=None, table=True)
    except ModelError as e:
        fail("fm_dump", str(e))
    w = arrays.weights
    k = arrays.k
    n = arrays.n_rows - 1
    nz_w = int(np.count_nonzero(w[1:, 0]))
    nz_v = int(np.count_nonzero(np.any(w[1:, 1:] != 0, axis=1))) if k else 0
    print("file          %s" % model_path)
    print("format        %s%s" % (fmt, "" if arrays.has_state else " (stripped: w and v only)"))
    print("dim           %d factors" % k)
    print("dtype         %s" % arrays.info.get("dtype"))
    print("features      %s" % fmt_int(n))
    print("non-zero w    %s" % fmt_int(nz_w))
    print("non-zero v    %s rows" % fmt_int(nz_v))
    print("bias          %r" % float(w[0, 0]))
    seen = arrays.info.get("samples_seen")
    print("samples seen  %s" % (fmt_int(seen) if seen is not None else "unknown (text model)"))
    hyper = arrays.info.get("hyper")
    if hyper:
        print("hyper         %s" % " ".join("%s=%g" % kv for kv in hyper.items()))
        print("fvs           %d" % int(arrays.info.get("fvs", 0)))
        print("seed          %s" % arrays.info.get("seed"))
    else:
        print("hyper         unknown (text model)")
    _print_hash_info(arrays)


def _print_hash_info(arrays):
    """The name hash's key, collisions and probe lengths (docs: Feature hash)."""
    from .model import stored_key
    from .table import count_collisions

    key = stored_key(arrays.info)  # read_model has checked it
    if key is None:
        print("hash key      none (text model): a fresh random key is drawn when it is loaded")
        key = arrays.table.key
    else:
        print("hash key      stored in the model (random, 128 bits)")
    _, collisions = count_collisions(arrays.arena, arrays.name_off, arrays.n_rows, key)
    # names whose 64-bit hash under that key equals another name's
    print("hash collisions  %s" % fmt_int(collisions))
    longest, mean = arrays.table.probe_lengths()
    print("index probes  longest %d slots, mean %.2f" % (longest, mean))


def _write_or_fail(src, path, fmt, state=True):
    _check_writable(path, "fm_dump")
    try:
        write_model(src, path, fmt, state=state)
    except (ModelError, OutputError) as e:
        fail("fm_dump", str(e))


def _nonzero_rows(arrays):
    return np.any(arrays.weights != 0, axis=1)


@fm_dump.command("convert", context_settings=CONTEXT)
@click.argument("src_path", metavar="MODEL")
@click.argument("dst_path", metavar="OUT")
@click.option("--to", "to_fmt", type=click.Choice(["txt", "bin"]), default=None,
              help="Output format (default: the other one).")
@click.option("--nonzero", is_flag=True,
              help="Keep only features whose w or v is non-zero (alphaFM model_bin_tool task 3).")
@interruptible("fm_dump convert")
def dump_convert(src_path, dst_path, to_fmt, nonzero):
    """Convert a model between text and binary, keeping everything it holds."""
    _rewrite(src_path, dst_path, nonzero, state=None,
             to_fmt=lambda fmt: to_fmt or ("txt" if fmt == "bin" else "bin"))


def _rewrite(src_path, dst_path, nonzero, state, to_fmt, dtype=None):
    """Read a model, drop all-zero features if asked, write it in to_fmt(its format)
    (``dtype``: w and v converted to it; stripped models only)."""
    _check_distinct("fm_dump", [("OUT", dst_path)], [("MODEL", src_path)])
    try:
        fmt = detect_format(src_path)
    except ModelError as e:
        fail("fm_dump", str(e))
    arrays = _load_for_dump(src_path, state=state)
    if nonzero:
        arrays = arrays.select(_nonzero_rows(arrays))
    if dtype is not None:
        arrays = ModelArrays(arrays.arena, arrays.name_off, arrays.weights.astype(dtype), None,
                             dict(arrays.info, dtype=dtype_name(dtype)))
    _write_or_fail(arrays, dst_path, to_fmt(fmt), state=state is not False)


@fm_dump.command("strip", context_settings=CONTEXT)
@click.argument("src_path", metavar="MODEL")
@click.argument("dst_path", metavar="OUT")
@click.option("--to", "to_fmt", type=click.Choice(["txt", "bin"]), default=None,
              help="Output format (default: the input's).")
@click.option("--nonzero", is_flag=True, help="Also drop features whose w and v are all zero.")
@click.option("--float", "to_float", is_flag=True,
              help="Store w and v as float32: half the size and memory (fm_predict, fm_serve).")
@interruptible("fm_dump strip")
def dump_strip(src_path, dst_path, to_fmt, nonzero, to_float):
    """Keep only w and v (what fm_predict needs): a smaller model for serving."""
    _rewrite(src_path, dst_path, nonzero, state=False, to_fmt=lambda fmt: to_fmt or fmt,
             dtype=np.float32 if to_float else None)


@fm_dump.command("embeddings", context_settings=CONTEXT)
@click.argument("src_path", metavar="MODEL")
@click.argument("dst_path", metavar="OUT")
@click.option("--format", "out_fmt", type=click.Choice(["txt", "npy"]), default="txt", show_default=True,
              help="txt: 'name v_1 .. v_k' lines; npy: an (n, k) matrix in OUT plus the names, "
                   "one a line, in OUT.names.")
@click.option("--nonzero", is_flag=True, help="Skip features whose v is all zero.")
@interruptible("fm_dump embeddings")
def dump_embeddings(src_path, dst_path, out_fmt, nonzero):
    """Write every feature's factor vector v (the bias has none); OUT '-' is standard output."""
    from .model import write_embeddings_txt

    outs = [("OUT", dst_path)]
    if out_fmt == "npy":
        if dst_path == "-":
            fail("fm_dump", "--format npy writes OUT and OUT.names: give a file name, not -", EXIT_USAGE)
        outs.append(("OUT.names", dst_path + ".names"))
    _check_distinct("fm_dump", outs, [("MODEL", src_path)])
    for _, p in outs:
        _check_writable(p, "fm_dump")
    arrays = _load_for_dump(src_path, state=False)
    v = arrays.weights[1:, 1:]
    sub = arrays.select(np.r_[False, np.any(v != 0, axis=1)] if nonzero else np.ones(arrays.n_rows, bool))
    try:
        if out_fmt == "npy":
            with open_output(dst_path) as f:
                np.save(f, np.ascontiguousarray(sub.weights[1:, 1:]))
            with open_output(dst_path + ".names") as f:
                f.write(b"".join(sub.name_bytes(r) + b"\n" for r in range(1, sub.n_rows)))
        else:
            write_embeddings_txt(sub, dst_path)
    except OutputError as e:
        output_failed("fm_dump", e)
    except ModelError as e:
        fail("fm_dump", str(e))


@fm_dump.command("importance", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True, help="Model to explain (txt or bin).")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Samples to average over (default: standard input).")
@click.option("--by-field", "sep", default=None, metavar="SEP",
              help="Aggregate features by the field prefix of their name, up to the first SEP "
                   "(f7_1234 -> f7 with SEP '_').")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N", help="Print only the first N rows.")
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker threads.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="On a bad input line: skip it (reported on stderr), or stop and exit 3.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr.")
@interruptible("fm_dump importance")
def dump_importance(model_path, input_path, sep, top, cores, on_error, quiet):
    """Global feature importance: mean |phi| per feature over a data stream.

    Prints 'name count mean_phi mean_abs_phi' lines, most important first
    (phi: the feature's exact share of each score it takes part in).
    """
    from .explain import Explainer, field_prefix_hash
    from .predict import ServingModel, predict_stream
    from .train import Options

    cmd = "fm_dump importance"
    if sep is not None and len(sep.encode()) != 1:
        raise click.BadParameter("SEP must be a single byte, such as _", param_hint="--by-field")
    _check_distinct(cmd, [("", "-")], [("--input", input_path or "-"), ("-m", model_path)])
    _check_writable("-", cmd)
    stream = _open_input(input_path)
    try:
        model = ServingModel.load(model_path)
    except (ModelError, ValueError) as e:
        fail(cmd, str(e))
    ex = Explainer(model, importance=True)
    opts = Options(cores=cores, on_error=on_error, quiet=quiet)
    try:
        summary = predict_stream(model, stream, None, opts, log, make_on_block=ex.on_block_factory)
    except BadInputStop as e:
        fail(cmd, str(e), EXIT_BAD_INPUT)
    except OSError as e:
        fail(cmd, "reading input: %s" % (e.strerror or e))
    count, sum_phi, sum_abs = ex.totals()
    arena, name_off = model.table.names_view()
    if sep is not None:
        keys = field_prefix_hash(arena, name_off, model.n_rows, sep.encode()[0], model.table.key)
        seen = count > 0
        seen[0] = False
        uniq, first, inv = np.unique(keys[seen], return_index=True, return_inverse=True)
        rows = np.flatnonzero(seen)
        g_count = np.bincount(inv, weights=count[seen]).astype(np.int64)
        g_phi = np.bincount(inv, weights=sum_phi[seen])
        g_abs = np.bincount(inv, weights=sum_abs[seen])
        names = []
        for r in rows[first]:
            name = bytes(arena[name_off[r]:name_off[r + 1]])
            names.append(name.split(sep.encode(), 1)[0])
    else:
        rows = np.flatnonzero(count[1:] > 0) + 1
        g_count, g_phi, g_abs = count[rows], sum_phi[rows], sum_abs[rows]
        names = None
    mean_phi = g_phi / np.maximum(g_count, 1)
    mean_abs = g_abs / np.maximum(g_count, 1)
    order = np.lexsort((np.arange(len(mean_abs)), -mean_abs))
    if top:
        order = order[:top]
    try:
        with open_output("-") as out:
            for i in order:
                name = names[i] if names is not None else bytes(arena[name_off[rows[i]]:name_off[rows[i] + 1]])
                out.write(b"%s %d %s %s\n" % (name, g_count[i], repr(float(mean_phi[i])).encode(),
                                               repr(float(mean_abs[i])).encode()))
    except OutputError as e:
        output_failed(cmd, e)
    if not quiet:
        log("%s: %s samples, %s features seen, %s bad lines" % (
            cmd, fmt_int(summary.samples), fmt_int(int((count[1:] > 0).sum())), fmt_int(summary.bad)))
