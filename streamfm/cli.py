"""Command line: fm_train, fm_predict, fm_dump (click).

alphaFM's flags keep their single-dash names, meanings and defaults, so
existing shell scripts keep working; streamfm's own flags are GNU style.
"""

import functools
import os
import signal
import sys
import time

import click
import numpy as np

from .badlines import BadInputStop
from .command import (CONTEXT, EXIT_BAD_INPUT, EXIT_USAGE, SEED, FiniteFloat, Terminated, check_distinct_or_fail,
                      check_writable_or_fail, continue_seed, fail, flag_message, fmt_seconds, hp_options,
                      interruptible, library_messages, log, output_failed, parse_dim, progress_printer, report,
                      settle_after_warm_up, sigint_raises, spare_rows, to_output)
from .errors import ParameterError, StreamFMError
from .ftrl import HP_NAMES
from .metrics import fmt_int, fmt_metric
from .model import (ModelArrays, ModelError, detect_format, dtype_name, dtype_of, file_dtype,
                    model_has_state, read_ffm_header, read_model, write_model)
from .output import OutputError, open_output
from .parse import VALUE_CLIP

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


# ---------------------------------------------------------------------------
# fm_train

@click.command(context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="PATH", help="Where to write the trained model (required).")
@click.option("-mf", "model_format", type=click.Choice(["txt", "bin"]), default="txt", show_default=True,
              help="Format of the model written: alphaFM's text, or streamfm's binary (fast to load).")
@click.option("-dim", "dim", default="1,1,8", show_default=True, metavar="K0,K1,K",
              help="Use the bias (K0), the linear terms (K1), and K factors; 1,1,0 is logistic regression.")
@hp_options
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
@click.option("--passes", type=click.IntRange(1, 1 << 20), default=1, show_default=True, metavar="N",
              help="Train N passes over the input. It is read and parsed once: pass 1 also writes the "
                   "parsed blocks to a binary cache file (a temporary one beside -m unless --cache), "
                   "passes 2..N train from it. Progressive (and held-out) metrics per pass on stderr.")
@click.option("--holdout-every", type=click.IntRange(2, None), default=None, metavar="K",
              help="Never train on the samples of input lines K, 2K, 3K, ...; score them in every pass as "
                   "fm_predict would (a held-out logloss and AUC per pass, honest in later passes too).")
@click.option("--cache", "cache_path", metavar="FILE", default=None,
              help="Write the block cache of --passes to FILE and keep it (only a regular file is "
                   "written, atomically; default: a temporary file beside -m, removed at the end).")
@click.option("--cache-reuse", is_flag=True,
              help="With --cache FILE: if FILE exists, train from it instead of reading the input. It "
                   "must be complete, undamaged (its checksums) and fit: made by this streamfm's cache format "
                   "for the same -im model (or none) and, when both are files, from an input of the "
                   "same size and modification time; else exit 1, no model written. A pipe "
                   "is not checked: you vouch for it. Bad lines are the cache's counts.")
@click.option("--grid", "grid_spec", metavar="'NAME=V1,V2 NAME=V3,...'", default=None,
              help="Train every combination of these hyper-parameter values (the FTRL ones and "
                   "init_stdev; they override the flags of the same name) side by side over one read "
                   "of the input, print each one's metrics, and write the best to -m: lowest held-out "
                   "logloss of the last pass with --holdout-every, else lowest progressive logloss of "
                   "pass 1.")
@click.option("--grid-out", "grid_out", metavar="DIR", default=None,
              help="With --grid: also write every setting's model to DIR (made if missing), named by "
                   "its setting, e.g. DIR/v_alpha=0.02,w_l2=1.0.txt.")
@click.option("--model", "model_kind", type=click.Choice(["fm", "ffm"]), default=None,
              help="fm: y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j (the default, or the -im "
                   "model's kind). ffm: a field-aware FM, y = w0 + sum_i w_i x_i + sum_{i<j} "
                   "<v_{i,f(j)}, v_{j,f(i)}> x_i x_j: each feature has one K-vector per field, f(i) the "
                   "field of feature i (see --field-sep); the same FTRL step on every coordinate, "
                   "O(n^2 K) per line. Not with -fvs, --grid or --cache-reuse.")
@click.option("--field-sep", "field_sep", default=None, metavar="SEP",
              help="ffm: a feature's field is its name up to the first SEP (1 to 8 bytes); a name "
                   "without SEP is a field of its own (price:3.5). Default '=' (age_b=3 -> age_b, "
                   "city=sh -> city); with -im, the model's.")
@click.option("--max-fields", "max_fields", type=click.IntRange(1, 1 << 12), default=None, metavar="F",
              help="ffm: the field capacity F; each feature holds F x K factors, so memory and model "
                   "size grow with F (float64: 8 (3 + 2 F K) bytes a feature). A line that would "
                   "bring field F+1 is a bad line (skipped and counted). Default 64; with -im, the "
                   "model's.")
@click.option("--progress-every", type=FiniteFloat(0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Seconds between progress lines on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr (errors still show).")
@interruptible("fm_train")
def fm_train(model_path, model_format, dim, w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2,
             init_stdev, cores, init_model, init_model_format, fvs, mnt, input_path, seed, on_error,
             max_bad_fraction, bad_lines, save_on_interrupt, allow_empty, passes, holdout_every, cache_path,
             cache_reuse, grid_spec, grid_out, model_kind, field_sep, max_fields, progress_every, quiet):
    """Train an FM with FTRL on libsvm-style lines from standard input.

    Each line is 'LABEL NAME:VALUE NAME:VALUE ...' (label > 0 is a click).
    Progress and progressive (score-before-update) logloss and AUC go to
    stderr. Input without a single valid sample (an empty hour of logs, a
    gzip file fed raw) writes no model and exits 3, unless --allow-empty.

    \b
    Examples:
      cat train.txt | fm_train -m model.txt -dim 1,1,8 -core 2
      cat hour.txt  | fm_train -im model.txt -m model.new.txt
      fm_train --input train.txt -m model.txt --passes 3 --holdout-every 10
      fm_train --input train.txt -m best.txt --grid 'v_alpha=0.02,0.05,0.1 w_l2=1,5'
      fm_train --input train.txt -m ffm.txt --model ffm --max-fields 8 -dim 1,1,4
    """
    from .cache import check_cache_path
    from .fm import FM, expand_grid, setting_name
    from .train import warm_up

    cmd = "fm_train"
    if not model_path:
        raise click.UsageError("-m PATH (where to write the model) is required")
    k0, k1, k = parse_dim(dim)
    hp = [w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2, init_stdev]
    dtype = dtype_of(mnt)
    grid = parse_grid(grid_spec)
    if grid_out and grid is None:
        raise click.UsageError("--grid-out goes with --grid")
    if cache_reuse and not cache_path:
        raise click.UsageError("--cache-reuse needs --cache FILE (the cache to reuse)")
    # -im X -m X replaces a model by its continuation: it is read whole first
    outputs = [("-m", model_path), ("--bad-lines", bad_lines)]
    # every setting's file is known now: it must be no other output or input either
    grid_paths = [os.path.join(grid_out, "%s.%s" % (setting_name(st), model_format))
                  for st in expand_grid(grid)] if grid_out else []
    outputs += [("--grid-out", g) for g in grid_paths]
    inputs = [("--input", input_path or "-"), ("-im", init_model)]
    if cache_path:
        (inputs if cache_reuse and os.path.exists(cache_path) else outputs).append(("--cache", cache_path))
    check_distinct_or_fail(cmd, outputs, inputs, allow={("-m", "-im")})
    check_writable_or_fail(model_path, cmd)
    if bad_lines:
        check_writable_or_fail(bad_lines, cmd)
    if cache_path:
        try:
            check_cache_path(cache_path)
        except OutputError as e:
            fail(cmd, str(e))
        check_writable_or_fail(cache_path, cmd)
    if grid_out:
        try:
            os.makedirs(grid_out, exist_ok=True)
        except OSError as e:
            fail(cmd, "--grid-out %s: %s" % (grid_out, e.strerror or e))
        for g in grid_paths:  # before the run, not after it
            check_writable_or_fail(g, cmd)
    stream = _open_input(input_path)
    try:
        continue_fmt = detect_format(init_model) if init_model else None
        fields = _ffm_fields(cmd, init_model, model_kind, field_sep, max_fields, k)
    except ModelError as e:
        fail(cmd, str(e))
    if fields is not None:
        for flag, given in (("-fvs 1", fvs), ("--grid", grid), ("--cache-reuse", cache_reuse)):
            if given:
                raise click.UsageError("%s is not offered with --model ffm" % flag)
    # every kernel first: the compiler's memory goes before the model comes
    warm_up(k, dtype, hp, bool(fvs), 0 if seed is None else seed, model_format, log, quiet,
            continue_fmt, many=bool(grid or passes > 1 or holdout_every or cache_path), fields=fields)
    settle_after_warm_up()
    t_load = time.time()
    spare = spare_rows(k if fields is None else k * fields.capacity, dtype)
    hyper = dict(zip(HP_NAMES, hp), fvs=bool(fvs))
    try:
        if init_model:
            fm = FM.load(init_model, k=k, state=True, dtype=dtype, reserve_rows=spare, k0=k0, k1=k1, **hyper)
            fm.seed = continue_seed(cmd, fm.info, seed, fvs, quiet)
            fm.training_model()  # the file's arrays become the model's now: load errors before training
            if not quiet:
                log("%s: continuing %s: %s features, %s samples seen before (%s)" % (
                    cmd, init_model, fmt_int(fm.n_features), fmt_int(fm.samples_seen),
                    fmt_seconds(time.time() - t_load)))
        else:
            ffm_args = {} if fields is None else dict(model="ffm", field_sep=fields.sep,
                                                      max_fields=fields.capacity)
            fm = FM(k0=k0, k1=k1, k=k, dtype=dtype_name(dtype), seed=0 if seed is None else seed, **hyper,
                    **ffm_args)
            fm.reserve(spare, 1 << 25)
    except StreamFMError as e:
        fail(cmd, str(e))
    if input_path is None and sys.stdin.isatty() and not quiet:
        log("%s: reading samples from the terminal (pipe a file in, or use --input FILE)" % cmd)
    interrupted = None
    side_failed = None  # an output beside the model (--bad-lines) that failed after training
    many = dict(passes=passes, holdout_every=holdout_every, cache=cache_path, reuse_cache=cache_reuse,
                cache_dir=_cache_dir(model_path))
    if grid is None and passes == 1 and holdout_every is None and cache_path is None:
        many = {}  # one plain pass: the call fm_train always made
    try:
        with library_messages(quiet), sigint_raises():
            train = fm.partial_fit if grid is None else functools.partial(fm.grid_fit, grid=grid)
            train(stream, cores=cores, on_error=on_error, max_bad_fraction=max_bad_fraction,
                  bad_lines=bad_lines, progress=progress_printer(cmd, quiet), progress_every=progress_every,
                  **many)
    except KeyboardInterrupt as e:
        # the workers finished their blocks: the model holds every sample counted
        interrupted = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    except BadInputStop as e:
        fail(cmd, flag_message(e), EXIT_BAD_INPUT)
    except OutputError as e:
        if not getattr(e, "model_trained", False):
            output_failed(cmd, e)
        side_failed = e  # the model is whole: it is written first, then the run fails
    except OSError as e:
        fail(cmd, "reading input: %s" % (e.strerror or e))
    except StreamFMError as e:  # a cache that cannot be written, read or reused
        fail(cmd, str(e))
    res = None
    if grid is not None:
        res = fm.last_grid
        fm = res.fms[res.best]
    rep = fm.last_report
    if interrupted and not save_on_interrupt:
        log("%s: interrupted (%s) after %s lines; no model written (--save-on-interrupt writes it)"
            % (cmd, interrupted, fmt_int(rep.lines)))
        sys.exit(128 + getattr(signal, interrupted))
    if rep.samples == 0:
        what = "the input was empty" if rep.lines == 0 else "no valid sample in %s lines of input (%s bad)" % (
            fmt_int(rep.lines), fmt_int(rep.bad))
        if not allow_empty:
            fail(cmd, "%s; no model written (--allow-empty writes it anyway)" % what, EXIT_BAD_INPUT)
        if not quiet:
            log("%s: warning: %s; %s" % (cmd, what, "the model is -im's, unchanged" if init_model
                                          else "the model holds only the bias"))
    t_write = time.time()
    try:
        fm.save(model_path, model_format)
        if grid_out:
            for g, f in zip(grid_paths, res.fms):
                f.save(g, model_format)
    except StreamFMError as e:
        fail(cmd, str(e))
    t_write = time.time() - t_write
    if not quiet:
        _train_report(cmd, rep, interrupted, model_path, model_format, t_write)
        if res is not None:
            _grid_report(cmd, res, grid_out)
    if side_failed is not None:
        fail(cmd, "%s (the model was written: %s)" % (side_failed, model_path))


def _ffm_fields(cmd, init_model, model_kind, field_sep, max_fields, k):
    """The ffm.Fields of a field-aware run (None: an FM): from the flags, or the -im model's
    (whose kind wins unless --model says otherwise; the flags must then agree with it)."""
    from .ffm import Fields
    from .model import MAX_K, read_ffm_header

    head = read_ffm_header(init_model) if init_model else None
    if init_model:
        kind = "ffm" if head is not None else "fm"
        if model_kind is not None and model_kind != kind:
            fail(cmd, "-im %s holds an %s model, not --model %s" % (init_model, kind, model_kind), EXIT_USAGE)
        model_kind = kind
    if model_kind != "ffm":
        for flag, given in (("--field-sep", field_sep), ("--max-fields", max_fields)):
            if given is not None:
                raise click.UsageError("%s goes with --model ffm" % flag)
        return None
    if head is not None:
        for flag, given, have in (("--field-sep", field_sep, head["field_sep"]),
                                  ("--max-fields", max_fields, head["max_fields"])):
            if given is not None and (given.encode("utf-8", "surrogateescape") if isinstance(given, str)
                                      else given) != have:
                shown = have.decode("utf-8", "backslashreplace") if isinstance(have, bytes) else have
                fail(cmd, "%s %s differs from the -im model's %s" % (
                    flag, given.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    if isinstance(given, str) else given, shown), EXIT_USAGE)
        field_sep, max_fields = head["field_sep"], head["max_fields"]
    try:
        fields = Fields("=" if field_sep is None else field_sep, 64 if max_fields is None else max_fields)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--field-sep")
    if k * fields.capacity > MAX_K:
        raise click.UsageError("-dim K x --max-fields must be at most %d, not %d" % (MAX_K, k * fields.capacity))
    return fields


def _cache_dir(model_path):
    """Where a temporary block cache goes: beside -m when -m is (or will be) a regular file,
    else (-m /dev/stdout, a FIFO) the system's temporary directory."""
    real = os.path.realpath(model_path)
    if os.path.exists(real) and not os.path.isfile(real):
        return None
    return os.path.dirname(real)


def parse_grid(spec):
    """--grid 'v_alpha=0.02,0.05 w_l2=1,5' as {name: [values]}, checked (click.BadParameter: exit 2)."""
    from .fm import expand_grid

    if spec is None:
        return None
    grid = {}
    for part in spec.split():
        name, eq, values = part.partition("=")
        name = name.lstrip("-")
        if not eq or not values:
            raise click.BadParameter("expected NAME=V1,V2,... items separated by spaces, got %r" % part,
                                     param_hint="--grid")
        if name in grid:
            raise click.BadParameter("%s is given twice" % name, param_hint="--grid")
        grid[name] = [v for v in values.split(",")]
    if not grid:
        raise click.BadParameter("no hyper-parameter given", param_hint="--grid")
    try:
        settings = expand_grid(grid)
    except ParameterError as e:
        raise click.BadParameter(str(e), param_hint="--grid")
    return {n: list(dict.fromkeys(st[n] for st in settings)) for n in grid}


def _grid_report(cmd, res, grid_out):
    from .fm import setting_name

    holdout = res.by == "holdout_logloss"
    n_pass = len(res.reports[0].passes)
    log("%s: grid of %d settings; best (*) by %s%s" % (
        cmd, len(res.fms), "held-out logloss of pass %d" % n_pass if holdout else "progressive logloss of pass 1"
        + (" (no line was held out: the input is shorter than --holdout-every)" if res.holdout else ""),
        ", every model in %s" % grid_out if grid_out else ""))
    width = max(len(setting_name(s)) for s in res.settings)
    head = "    %-*s  %-12s %-9s" % (width, "setting", "p1 logloss", "p1 auc")
    if n_pass > 1:
        head += " %-12s %-9s" % ("p%d logloss" % n_pass, "p%d auc" % n_pass)
    if holdout:
        head += " %-12s %-9s" % ("held-out ll", "held-out auc")
    log(head.rstrip())
    for i, (st, r) in enumerate(zip(res.settings, res.reports)):
        first = r.passes[0] if r.passes else None
        row = "  %s %-*s  %-12s %-9s" % ("*" if i == res.best else " ", width, setting_name(st),
                                         fmt_metric(first.logloss if first else r.logloss),
                                         fmt_metric(first.auc if first else r.auc))
        if n_pass > 1:
            row += " %-12s %-9s" % (fmt_metric(r.logloss), fmt_metric(r.auc))
        if holdout:
            row += " %-12s %-9s" % (fmt_metric(r.holdout_logloss), fmt_metric(r.holdout_auc))
        log(row.rstrip())


def _train_report(cmd, s, interrupted, path, fmt, t_write):
    rate = s.samples / max(s.seconds, 1e-9)
    log("%s: %s after %s" % (cmd, "interrupted (%s), model saved" % interrupted if interrupted else "done",
                              fmt_seconds(s.seconds)))
    log("  lines read           %s" % fmt_int(s.lines))
    log("  samples trained      %s" % fmt_int(s.samples))
    log("  bad lines skipped    %s%s" % (fmt_int(s.bad), "  (%s)" % s.bad_description if s.bad else ""))
    if s.clipped:
        log("  values clipped       %s  (|value| > %g)" % (fmt_int(s.clipped), VALUE_CLIP))
    if s.overflow_samples or s.overflow_updates:
        log("  overflow guarded     %s samples skipped, %s updates skipped (numbers too large)"
            % (fmt_int(s.overflow_samples), fmt_int(s.overflow_updates)))
    log("  features in model    %s" % fmt_int(s.n_features))
    if s.hash_collisions:
        log("  hash collisions      %s  (new names whose 64-bit hash equals another name's: they "
            "share its row)" % fmt_int(s.hash_collisions))
    log("  samples/s            %s" % fmt_int(rate))
    if len(s.passes) > 1 or s.holdout_samples:
        for p in s.passes:
            log("  pass %-3d %s samples  progressive logloss %s  auc %s%s  (%s)" % (
                p.pass_no, fmt_int(p.samples), fmt_metric(p.logloss), fmt_metric(p.auc),
                "  held-out (%s) logloss %s  auc %s" % (fmt_int(p.holdout_samples), fmt_metric(p.holdout_logloss),
                                                       fmt_metric(p.holdout_auc)) if p.holdout_samples else "",
                fmt_seconds(p.seconds)))
    log("  progressive logloss  %s   auc %s%s" % (fmt_metric(s.logloss), fmt_metric(s.auc),
                                                 "  (pass %d)" % len(s.passes) if len(s.passes) > 1 else ""))
    if s.holdout_samples:
        log("  held-out logloss     %s   auc %s  (%s samples)" % (
            fmt_metric(s.holdout_logloss), fmt_metric(s.holdout_auc), fmt_int(s.holdout_samples)))
    log("  model written        %s (%s, %s)" % (path, fmt, fmt_seconds(t_write)))


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
@click.option("--max-bad-fraction", type=FiniteFloat(0, 1), default=None, metavar="F",
              help="Stop (exit 3) when more than this fraction of lines is bad, checked from the "
                   "1000th line on and at the end; with -out FILE nothing is written.")
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
def fm_predict(model_path, model_format, dim, cores, out_path, mnt, input_path, on_error, max_bad_fraction,
               bad_lines, metrics, explain, progress_every, quiet):
    """Score libsvm-style lines with an FM model.

    Writes one 'label score' line per valid input line, in input order:
    the label as 1 or -1 and the score as the predicted probability.
    Features the model does not know contribute nothing.

    \b
    Example:
      cat test.txt | fm_predict -m model.txt -out pred.txt -core 2
    """
    from .fm import FM
    from .predict import warm_up

    cmd = "fm_predict"
    if not model_path:
        raise click.UsageError("-m PATH (the model) is required")
    k = parse_predict_dim(dim)
    check_distinct_or_fail(cmd, [("-out", out_path), ("--bad-lines", bad_lines)],
                           [("--input", input_path or "-"), ("-m", model_path)])
    check_writable_or_fail(out_path, cmd)
    if bad_lines:
        check_writable_or_fail(bad_lines, cmd)
    stream = _open_input(input_path)
    try:
        fmt = detect_format(model_path)
        warm_up(fmt, file_dtype(model_path), log, quiet, stripped=fmt == "bin" and not model_has_state(model_path),
                field_aware=read_ffm_header(model_path) is not None)
        # the kernels are loaded: LLVM's pages go before the model's come in
        settle_after_warm_up()
        t0 = time.time()
        # a binary model is mapped, not read: its pages are the page cache's
        fm = FM.load(model_path, k=k, state=False, mmap=True)
        fm.serving_model()
    except StreamFMError as e:
        fail(cmd, str(e))
    t_load = time.time() - t0

    def run(out):
        with library_messages(quiet):
            return fm.write_predictions(stream, out, cores=cores, on_error=on_error,
                                        max_bad_fraction=max_bad_fraction, bad_lines=bad_lines, explain=explain,
                                        metrics=metrics, progress_every=progress_every,
                                        progress=progress_printer(cmd, quiet, features=False, metrics=False))

    rep = to_output(cmd, out_path, run)
    if not quiet:
        rate = rep.samples / max(rep.seconds, 1e-9)
        log("%s: %s lines, %s scored, %s bad, %s lines/s (model load %s)" % (
            cmd, fmt_int(rep.lines), fmt_int(rep.samples), fmt_int(rep.bad),
            fmt_int(rate), fmt_seconds(t_load)))
        if rep.bad:
            log("  bad lines: %s" % rep.bad_description)
        if rep.clipped:
            log("  values clipped: %s (|value| > %g)" % (fmt_int(rep.clipped), VALUE_CLIP))
    if metrics:
        log("%s: samples %s  logloss %s  auc %s  mean prediction %s  observed rate %s" % (
            cmd, fmt_int(rep.samples), fmt_metric(rep.logloss), fmt_metric(rep.auc),
            fmt_metric(rep.mean_prediction), fmt_metric(rep.positive_rate)))


# ---------------------------------------------------------------------------
# fm_dump


@click.group(context_settings=CONTEXT)
def fm_dump():
    """Inspect and convert FM model files."""


def _load_for_dump(path, state=True, ffm=False):
    """The model for a dump subcommand; ``ffm``: a field-aware FM's file is
    fine (else it is refused: the subcommand needs an FM)."""
    try:
        return read_model(path, state=state, table=True, ffm=ffm)
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
        arrays = read_model(model_path, state=None, table=True, ffm=True)
    except ModelError as e:
        fail("fm_dump", str(e))
    w = arrays.weights
    k = arrays.k
    n = arrays.n_rows - 1
    nz_w = int(np.count_nonzero(w[1:, 0]))
    nz_v = int(np.count_nonzero(np.any(w[1:, 1:] != 0, axis=1))) if k else 0
    info = arrays.info
    print("file          %s" % model_path)
    print("format        %s%s" % (fmt, "" if arrays.has_state else " (stripped: w and v only)"))
    if info.get("model") == "ffm":
        print("model         ffm (field-aware FM)")
        print("dim           %d factors per field, %d fields of %d (field separator %r)" % (
            info["field_k"], len(info["fields"]), info["max_fields"],
            info["field_sep"].decode("utf-8", "backslashreplace")))
        print("fields        %s" % " ".join(f.decode("utf-8", "backslashreplace") for f in info["fields"]))
    else:
        print("dim           %d factors" % k)
    print("dtype         %s" % arrays.info.get("dtype"))
    print("features      %s" % fmt_int(n))
    print("non-zero w    %s" % fmt_int(nz_w))
    print("non-zero v    %s rows" % fmt_int(nz_v))
    print("bias          %r" % float(w[0, 0]))
    seen = arrays.info.get("samples_seen")
    print("samples seen  %s" % (fmt_int(seen) if seen is not None
                                else "unknown (not in the file: a text model, or one converted from text)"))
    hyper = arrays.info.get("hyper")
    if hyper:
        print("hyper         %s" % " ".join("%s=%g" % kv for kv in hyper.items()))
        print("fvs           %d" % int(arrays.info.get("fvs", 0)))
        print("seed          %s" % arrays.info.get("seed"))
    else:
        print("hyper         unknown (not in the file: a text model, or one converted from text)")
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
    check_writable_or_fail(path, "fm_dump")
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
    check_distinct_or_fail("fm_dump", [("OUT", dst_path)], [("MODEL", src_path)])
    try:
        fmt = detect_format(src_path)
    except ModelError as e:
        fail("fm_dump", str(e))
    arrays = _load_for_dump(src_path, state=state, ffm=True)
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
    check_distinct_or_fail("fm_dump", outs, [("MODEL", src_path)])
    for _, p in outs:
        check_writable_or_fail(p, "fm_dump")
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
    from .fm import FM

    cmd = "fm_dump importance"
    if sep is not None and len(sep.encode()) != 1:
        raise click.BadParameter("SEP must be a single byte, such as _", param_hint="--by-field")
    check_distinct_or_fail(cmd, [("", "-")], [("--input", input_path or "-"), ("-m", model_path)])
    check_writable_or_fail("-", cmd)
    stream = _open_input(input_path)
    try:
        fm = FM.load(model_path, state=False)
    except StreamFMError as e:
        fail(cmd, str(e))
    try:
        with library_messages(quiet):
            rows = fm.importance(stream, by_field=sep, top=top, cores=cores, on_error=on_error)
    except BadInputStop as e:
        fail(cmd, flag_message(e), EXIT_BAD_INPUT)
    except OSError as e:
        fail(cmd, "reading input: %s" % (e.strerror or e))
    try:
        with open_output("-") as out:
            for name, count, mean_phi, mean_abs in rows:
                out.write(b"%s %d %s %s\n" % (name, count, repr(mean_phi).encode(), repr(mean_abs).encode()))
    except OutputError as e:
        output_failed(cmd, e)
    if not quiet:
        rep = fm.last_report
        log("%s: %s samples, %s features seen, %s bad lines" % (
            cmd, fmt_int(rep.samples), fmt_int(rep.n_features), fmt_int(rep.bad)))


@fm_dump.command("merge", context_settings=CONTEXT)
@click.argument("model_paths", metavar="MODEL...", nargs=-1, required=True)
@click.option("-o", "out_path", metavar="OUT", required=True, help="Where to write the merged model.")
@click.option("--base", "base_path", metavar="BASE", default=None,
              help="The model the inputs were all trained from (e.g. yesterday's, continued with -im "
                   "on each part): increments are counted from its n, and the result keeps its features. "
                   "Without it, the models count as trained from nothing.")
@click.option("--to", "to_fmt", type=click.Choice(["bin", "txt"]), default="bin", show_default=True,
              help="Format of OUT.")
@click.option("--rule", type=click.Choice(["blend", "blend-each", "dn", "sum"]), default="blend", show_default=True,
              help="How the weights combine (docs/design.md, Merging models): blend: FTRL's sums where the models "
                   "together trained a weight little, their n-increment-weighted mean where that much "
                   "training converges; blend-each: the blend by each model's own training (sums more); "
                   "dn: always that mean; sum: always the sums (overshoots).")
@hp_options
@click.option("-fvs", "fvs", type=click.IntRange(0, 1), default=0, show_default=True,
              help="alphaFM's force_v_sparse of a text model.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@interruptible("fm_dump merge")
def dump_merge(model_paths, out_path, base_path, to_fmt, rule, w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta,
               v_l1, v_l2, init_stdev, fvs, quiet):
    """Merge models trained in parallel on parts of the data into one.

    Every MODEL (txt or bin, with its training state) must hold the same
    factor count and hyper-parameters. A binary model holds its own; a
    text model (alphaFM's format) does not, and takes the -w_alpha ...
    -init_stdev and -fvs given here, which must be those it was trained
    with: the merge rebuilds z from them, and fm_train -im goes on from z.
    Features are matched by name; per coordinate the weights are averaged
    with the models' FTRL n as weights, n adds up, and z is rebuilt so that
    fm_train -im continues the merged model consistently.

    \b
    Examples:
      fm_dump merge part0.bin part1.bin part2.bin -o day.bin
      fm_dump merge --base yesterday.bin h0.bin h1.bin -o today.bin
    """
    from .merge import merge_models

    cmd = "fm_dump merge"
    inputs = [("MODEL", p) for p in model_paths] + ([("--base", base_path)] if base_path else [])
    check_distinct_or_fail(cmd, [("-o", out_path)], inputs)
    check_writable_or_fail(out_path, cmd)
    t0 = time.time()
    try:
        hp = [w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2, init_stdev]
        fm = merge_models(model_paths, base=base_path, rule=rule, **dict(zip(HP_NAMES, hp), fvs=bool(fvs)))
        t_merge = time.time() - t0
        fm.save(out_path, format=to_fmt)
    except (StreamFMError, ValueError) as e:
        fail(cmd, str(e))
    if not quiet:
        log("%s: %d models%s -> %s: %s features, %s samples seen (merge %s, total %s)" % (
            cmd, len(model_paths), " onto %s" % base_path if base_path else "", out_path,
            fmt_int(fm.n_features), fmt_int(fm.samples_seen), fmt_seconds(t_merge),
            fmt_seconds(time.time() - t0)))
