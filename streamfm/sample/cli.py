"""fm_sample: exposure logs -> fm_train / fm_recall files, with one featurizer offline and online.

Errors print one line ``fm_sample <command>: error: ...``; bad input under
``--on-error stop`` or ``--max-bad-fraction`` exits 3, other failures 1;
output files are written atomically (a failed run leaves none). A failed
output goes through ``command.output_failed``, as for every command: a reader
that closed the pipe (``| head``) ends the run with exit 1 and no message.
"""

import contextlib
import os
import sys

import click

from .. import command
from ..badlines import BadInputStop
from ..command import (CONTEXT, EXIT_BAD_INPUT, check_distinct_or_fail, check_writable_or_fail, interruptible,
                       log)
from ..metrics import fmt_int
from ..model import ModelError
from ..output import OutputError, open_output
from .rank import MAX_REQUEST
from .spec import SpecError

_FORMAT = click.option("--format", "fmt", type=click.Choice(["tsv", "csv", "jsonl"]), default=None,
                       help="Log format (default: [log] format in the spec, else the --input file's "
                            "extension, else tsv).")
_INPUT = click.option("--input", "input_path", metavar="FILE", default=None,
                      help="Read the impression log from FILE instead of standard input.")
_SPEC = click.option("--spec", "spec_path", metavar="FILE", required=True,
                     help="The feature spec: a frozen spec from 'fm_sample fit' (or a TOML spec that "
                          "learns nothing).")
_TABLES = [
    click.option("--users", "users_path", metavar="FILE", default=None,
                 help="User profile table to use instead of the spec's [user] table."),
    click.option("--items", "items_path", metavar="FILE", default=None,
                 help="Item profile table to use instead of the spec's [item] table."),
]
_POLICY = [
    click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
                 help="On a bad record: skip it (counted and reported with its line number), or stop, "
                      "write nothing and exit 3."),
    click.option("--max-bad-fraction", type=click.FloatRange(0, 1), default=None, metavar="F",
                 help="Stop (nothing written, exit 3) when more than this fraction of lines is bad."),
    click.option("--bad-lines", metavar="FILE", default=None,
                 help="Write every bad record to FILE as 'line-number<TAB>reason<TAB>line' "
                      "('TABLE:line-number' for profile tables)."),
    click.option("--progress-every", type=click.FloatRange(0.1), default=5.0, show_default=True,
                 metavar="SECONDS", help="Seconds between progress lines on stderr."),
    click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr (errors still show)."),
]


def _options(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def fail(cmd, msg, code=1):
    command.fail("fm_sample " + cmd, msg, code)


def _load(cmd, path, ready=True):
    from .spec import load_spec

    try:
        spec = load_spec(path)
        if ready:
            spec.require_ready()
    except SpecError as e:
        fail(cmd, str(e))
    return spec


def _compile_notice(quiet, fit=False):
    """Say before a first run that the kernels compile (cached afterwards)."""
    from .. import jit
    from . import featurize, logs

    kernels = [logs.tokenize_delimited, logs.tokenize_jsonl, logs.impressions, featurize.encode,
               featurize.render]
    if fit:
        from .fit import learn

        kernels.append(learn)
    else:
        kernels.append(featurize.assemble)
    jit.compile_notice(kernels, log, quiet)


def _fmt(spec, fmt, input_path):
    from .spec import format_of

    if fmt:
        return fmt
    if spec.data["log"]["format"]:
        return spec.data["log"]["format"]
    if input_path not in (None, "-"):
        return format_of(input_path)
    return "tsv"


def _input(cmd, path):
    if path in (None, "-"):
        if sys.stdin is None:
            fail(cmd, "no standard input; give --input FILE")
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        fail(cmd, "--input %s: %s" % (path, e.strerror or e))


def _check_outputs(cmd, outputs, inputs):
    """Before the run (streamfm.command): exit 2 when an output is an input or
    another output (the same file, by device and inode), 1 when one cannot be
    written. ``outputs``, ``inputs``: (flag, path) pairs, path None if not given."""
    check_distinct_or_fail("fm_sample " + cmd, outputs, inputs)
    for _, p in outputs:
        if p not in (None, "-"):
            check_writable_or_fail(p, "fm_sample " + cmd)


def _output(path):
    """A checked binary writer (streamfm.output: '-' is stdout, a device or FIFO
    is written in place, a regular file replaced atomically)."""
    return open_output("-" if path is None else path)


def _inputs_of(spec, input_path, users_path, items_path):
    return [("--input", input_path or "-"), ("--spec", spec.path),
            ("--users", users_path or spec.table_path("user")), ("--items", items_path or spec.table_path("item"))]


def _tables(users_path, items_path):
    t = {}
    if users_path:
        t["user"] = users_path
    if items_path:
        t["item"] = items_path
    return t or None


def _policy(on_error, max_bad_fraction, bad_lines, progress_every, quiet):
    from ..train import Options

    return Options(on_error=on_error, max_bad_fraction=max_bad_fraction, quiet=quiet, bad_lines=bad_lines,
                   progress_every=progress_every)


def _bad_file(path):
    return open_output(path) if path else contextlib.nullcontext()


def _run(cmd, body):
    try:
        return body()
    except BadInputStop as e:
        fail(cmd, str(e), EXIT_BAD_INPUT)
    except SpecError as e:
        fail(cmd, str(e))
    except ModelError as e:
        fail(cmd, str(e))
    except (OutputError, BrokenPipeError) as e:
        command.output_failed("fm_sample " + cmd, e)
    except OSError as e:
        fail(cmd, "%s" % (e.strerror and "%s: %s" % (getattr(e, "filename", "") or "I/O", e.strerror) or e))


def _report_bad(prefix, s):
    if s.bad:
        log("  bad records skipped  %s  (%s)" % (fmt_int(s.bad), s.bad_description))
    else:
        log("  bad records skipped  0")


@click.group(context_settings=CONTEXT)
def fm_sample():
    """Build FM samples from exposure logs: fit a spec, write ranking or recall files, audit fields.

    \b
    A TOML spec names each feature (its source attribute, kind, prefix),
    the profile tables (users, items) joined by key, and the log's columns.
    The same featurizer writes training lines here and features online
    (streamfm.sample.Featurizer), so the two never drift.

    \b
    Example:
      fm_sample fit    --spec spec.toml -o spec.frozen.json --input train_log.tsv
      fm_sample rank   --spec spec.frozen.json --negatives skip-above < log.tsv > train.txt
      fm_sample recall --spec recall.frozen.json --catalog items.txt --clicks clicks.txt < log.tsv
      fm_sample audit  -m model.txt --spec spec.frozen.json --input test.txt
    """


# ---------------------------------------------------------------------------
# fit


@fm_sample.command("fit", context_settings=CONTEXT)
@_SPEC
@click.option("-o", "--output", "out_path", metavar="FILE", required=True,
              help="Where to write the frozen spec (JSON; written atomically).")
@_INPUT
@_FORMAT
@_options(_TABLES)
@click.option("--sketch-k", type=click.IntRange(16, 1 << 20), default=8192, show_default=True, metavar="K",
              help="Values per level of the quantile sketch (even); rank error <= levels / K, "
                   "memory 8 K bytes per level and bucket feature.")
@_options(_POLICY)
@interruptible("fm_sample fit")
def fit_cmd(spec_path, out_path, input_path, fmt, users_path, items_path, sketch_k, on_error, max_bad_fraction,
            bad_lines, progress_every, quiet):
    """Learn quantile edges and min-count vocabularies; write the frozen spec.

    Reads the impression log once (every valid impression counts once).
    Bucket features with bins = N get N-quantile edges from a streaming
    sketch (its rank error is written beside them); ids with min_count = M
    are counted exactly (up to max_vocab distinct values per feature) and
    those seen fewer than M times become the spec's 'rare' value. The frozen
    spec carries a fingerprint of everything that decides the features.
    """
    from .fit import fit_stream
    from .spec import write_frozen

    cmd = "fit"
    spec = _load(cmd, spec_path, ready=False)
    if sketch_k % 2:
        raise click.BadParameter("K must be even", param_hint="--sketch-k")
    _check_outputs(cmd, [("-o", out_path or "-"), ("--bad-lines", bad_lines)],
                   _inputs_of(spec, input_path, users_path, items_path))
    stream = _input(cmd, input_path)
    fmt = _fmt(spec, fmt, input_path)
    opts = _policy(on_error, max_bad_fraction, bad_lines, progress_every, quiet)
    _compile_notice(quiet, fit=True)

    def body():
        with _bad_file(bad_lines) as bf:
            frozen, s, learned = fit_stream(spec, stream, opts, log, fmt, tables=_tables(users_path, items_path),
                                            bad_file=bf, k=sketch_k, progress_every=progress_every,
                                            source_name=input_path or "-")
        write_frozen(frozen, out_path)
        return frozen, s, learned

    frozen, s, learned = _run(cmd, body)
    if not quiet:
        log("fm_sample fit: done in %.1f s" % s.seconds)
        log("  lines read           %s" % fmt_int(s.lines))
        log("  impressions          %s" % fmt_int(s.records))
        _report_bad("fit", s)
        for name, st in learned.items():
            if "edges" in st:
                log("  %-20s %d edges from %s values (rank error <= %.3g%%)" % (
                    name, len(st["edges"]), fmt_int(st["values"]), 100 * st["rank_error"]))
                if not st["values"]:
                    log("  warning: %s saw no value: every value falls in bucket 0" % name)
            else:
                log("  %-20s %s of %s ids kept (min_count %d)%s" % (
                    name, fmt_int(len(st["kept"])), fmt_int(st["distinct"]), st["min_count"],
                    "; %s occurrences of ids beyond max_vocab %s not counted (they are rare)" % (
                        fmt_int(st["turned_away"]), fmt_int(st["max_vocab"])) if st["turned_away"] else ""))
        log("  frozen spec          %s (fingerprint %s)" % (out_path, frozen["fingerprint"]))


# ---------------------------------------------------------------------------
# rank


@fm_sample.command("rank", context_settings=CONTEXT)
@_SPEC
@_INPUT
@click.option("-o", "--output", "out_path", metavar="FILE", default="-", show_default=True,
              help="Where to write the fm_train lines ('-' = standard output).")
@_FORMAT
@click.option("--negatives", default="all", show_default=True, metavar="all|skip-above|skip-above+K",
              help="Negatives per request: every unclicked impression; those above the last click "
                   "(requests without a click give nothing); or those and the K right below it.")
@click.option("--neg-rate", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              metavar="R", help="Keep each negative with probability R (a hash of --seed and its line). "
                                "Correct predictions with p' = p / (p + (1 - p) / R) "
                                "(fm_sample correct).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the negative down-sampling.")
@click.option("--weights", "weights_path", metavar="FILE", default=None,
              help="Also write each line's sample weight (1, or 1/R for a down-sampled negative), one a line.")
@click.option("--max-request", type=click.IntRange(0), default=MAX_REQUEST, show_default=True, metavar="N",
              help="Under skip-above a request is held until its last impression: one of more than N "
                   "impressions (a request id that never changes) is cut into requests of N, each cut "
                   "reported with its line. 0: no limit (memory grows with the request).")
@_options(_TABLES)
@_options(_POLICY)
@interruptible("fm_sample rank")
def rank_cmd(spec_path, input_path, out_path, fmt, negatives, neg_rate, seed, weights_path, max_request, users_path,
             items_path, on_error, max_bad_fraction, bad_lines, progress_every, quiet):
    """Write fm_train lines ('1 FEATS' / '0 FEATS') from an impression log.

    Each record is one impression: request id, position (optional),
    item key, user key, clicked, and any columns [log] fields maps to
    attributes. A request is a run of records with one request id. Lines
    keep the input order.
    """
    from .rank import parse_negatives, rank_stream

    cmd = "rank"
    try:
        parse_negatives(negatives)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--negatives")
    spec = _load(cmd, spec_path)
    inputs = _inputs_of(spec, input_path, users_path, items_path)
    _check_outputs(cmd, [("-o", out_path or "-"), ("--weights", weights_path), ("--bad-lines", bad_lines)], inputs)
    stream = _input(cmd, input_path)
    fmt = _fmt(spec, fmt, input_path)
    opts = _policy(on_error, max_bad_fraction, bad_lines, progress_every, quiet)
    if input_path is None and sys.stdin.isatty() and not quiet:
        log("fm_sample rank: reading the log from the terminal (pipe a file in, or use --input FILE)")
    _compile_notice(quiet)

    def body():
        with _bad_file(bad_lines) as bf, _output(out_path) as out, \
                (_output(weights_path) if weights_path else contextlib.nullcontext()) as wf:
            return rank_stream(spec, stream, out.write, opts, log, fmt, negatives=negatives, neg_rate=neg_rate,
                               seed=seed, weights_write=wf.write if wf is not None else None,
                               tables=_tables(users_path, items_path), bad_file=bf, progress_every=progress_every,
                               max_request=max_request)

    s = _run(cmd, body)
    if not quiet:
        st = s.stats
        log("fm_sample rank: done in %.1f s (%s impressions/s)" % (s.seconds, fmt_int(s.lines / max(s.seconds, 1e-9))))
        log("  lines read           %s" % fmt_int(s.lines))
        log("  impressions          %s" % fmt_int(s.records))
        _report_bad("rank", s)
        log("  requests             %s (%s with a click)" % (fmt_int(st[0]), fmt_int(st[1])))
        if s.cut:
            log("  requests cut         %s (more than %s impressions, --max-request; the first at line %d)"
                % (fmt_int(s.cut), fmt_int(max_request), s.first_cut))
        log("  positives            %s" % fmt_int(st[2]))
        log("  negatives written    %s" % fmt_int(st[3]))
        if st[4]:
            log("  negatives skipped    %s (--negatives %s)" % (fmt_int(st[4]), negatives))
        if st[5]:
            log("  negatives sampled out %s (--neg-rate %g)" % (fmt_int(st[5]), neg_rate))
        log("  lines written        %s (spec fingerprint %s)" % (fmt_int(s.samples), spec.fingerprint))


# ---------------------------------------------------------------------------
# recall


@fm_sample.command("recall", context_settings=CONTEXT)
@_SPEC
@_INPUT
@click.option("--catalog", "catalog_path", metavar="FILE", required=True,
              help="Where to write the catalog: 'ITEM_KEY FEATS' per item table row (fm_recall --items).")
@click.option("--clicks", "clicks_path", metavar="FILE", required=True,
              help="Where to write the clicks: 'USER_KEY FEATS | ITEM_KEY' per clicked impression.")
@click.option("--users-out", "users_out", metavar="FILE", default=None,
              help="Also write 'USER_KEY FEATS' per user table row (fm_recall query / index --users).")
@_FORMAT
@_options(_TABLES)
@_options(_POLICY)
@interruptible("fm_sample recall")
def recall_cmd(spec_path, input_path, catalog_path, clicks_path, users_out, fmt, users_path, items_path, on_error,
               max_bad_fraction, bad_lines, progress_every, quiet):
    """Write fm_recall's catalog and clicks files from the same spec.

    \b
      catalog  ITEM_KEY ITEM_FEATS             one line per item table row
      users    USER_KEY USER_FEATS             one line per user table row (--users-out)
      clicks   USER_KEY USER_FEATS | ITEM_KEY  one line per clicked impression

    Clicked impressions are positives (fm_recall draws negatives from the
    catalog). A spec with a user x item cross or an overlap is refused:
    item vectors are computed offline, user vectors online.
    """
    from .recall import recall_stream

    cmd = "recall"
    spec = _load(cmd, spec_path)
    inputs = _inputs_of(spec, input_path, users_path, items_path)
    _check_outputs(cmd, [("--catalog", catalog_path), ("--clicks", clicks_path), ("--users-out", users_out),
                         ("--bad-lines", bad_lines)], inputs)
    stream = _input(cmd, input_path)
    fmt = _fmt(spec, fmt, input_path)
    opts = _policy(on_error, max_bad_fraction, bad_lines, progress_every, quiet)
    _compile_notice(quiet)

    def body():
        with _bad_file(bad_lines) as bf, _output(catalog_path) as cat, _output(clicks_path) as clk, \
                (_output(users_out) if users_out else contextlib.nullcontext()) as uf:
            return recall_stream(spec, stream, cat.write, clk.write, opts, log, fmt,
                                 users_write=uf.write if uf is not None else None,
                                 tables=_tables(users_path, items_path), bad_file=bf, progress_every=progress_every)

    s = _run(cmd, body)
    if not quiet:
        log("fm_sample recall: done in %.1f s" % s.seconds)
        log("  catalog items        %s -> %s" % (fmt_int(s.items), catalog_path))
        if users_out:
            log("  users                %s -> %s" % (fmt_int(s.users), users_out))
        log("  lines read           %s" % fmt_int(s.lines))
        _report_bad("recall", s)
        log("  clicks               %s -> %s" % (fmt_int(s.clicks), clicks_path))
        if s.not_in_catalog:
            log("  warning: %s clicks are on items not in the catalog (fm_recall skips them)"
                % fmt_int(s.not_in_catalog))


# ---------------------------------------------------------------------------
# audit


@fm_sample.command("audit", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True, help="The model to audit (txt or bin).")
@click.option("--compare", "model_b", metavar="MODEL", default=None,
              help="A second model (another day, another pipeline): list the fields whose share moved most.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="fm_train lines to average over (default: standard input), e.g. fm_sample rank's output.")
@click.option("--spec", "spec_path", metavar="FILE", default=None,
              help="The spec the lines were made with: its separator, and the spec fields that never appear.")
@click.option("--sep", default=None, metavar="SEP",
              help="The byte between a field and its value (default: the spec's separator, else '=').")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, metavar="N",
              help="How many moved fields to list with --compare.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="On a bad input line: skip it (reported on stderr), or stop and exit 3.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@interruptible("fm_sample audit")
def audit_cmd(model_path, model_b, input_path, spec_path, sep, top, on_error, quiet):
    """Per field: coverage, distinct values, mean |phi|, share of the score.

    phi is each feature's exact share of a score (fm_predict --explain);
    a field is a name's prefix before the separator. The table goes to
    standard output, most important field first.
    """
    from ..predict import ServingModel
    from ..train import Options
    from .audit import audit_stream, format_report

    cmd = "audit"
    prefixes = None
    if spec_path:
        spec = _load(cmd, spec_path, ready=False)
        if sep is None:
            sep = spec.data["separator"]
        prefixes = [f["prefix"] for f in spec.features if f["emit"]]
    sep = "=" if sep is None else sep
    if len(sep.encode()) != 1:
        raise click.BadParameter("SEP must be a single byte, such as =", param_hint="--sep")
    models = []
    for p in [model_path] + ([model_b] if model_b else []):
        try:
            models.append(ServingModel.load(p))
        except (ModelError, ValueError) as e:
            fail(cmd, str(e))
    stream = _input(cmd, input_path)
    opts = Options(on_error=on_error, quiet=quiet)
    stats, lines, bad = _run(cmd, lambda: audit_stream(models, stream, sep.encode()[0], opts, log))
    report = "".join(line + "\n" for line in format_report(
        stats, prefixes, top=top, labels=(os.path.basename(model_path), os.path.basename(model_b or ""))))

    def write():
        with open_output("-") as out:
            out.write(report.encode("utf-8", "surrogateescape"))

    _run(cmd, write)
    if not quiet:
        log("fm_sample audit: %s lines, %s samples, %s fields, %s bad lines" % (
            fmt_int(lines), fmt_int(stats.samples), fmt_int(len(stats.names)), fmt_int(bad.count)))


# ---------------------------------------------------------------------------
# correct


@fm_sample.command("correct", context_settings=CONTEXT)
@click.option("--neg-rate", type=click.FloatRange(0, 1, min_open=True), required=True, metavar="R",
              help="The --neg-rate the training lines were made with.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="fm_predict output ('LABEL P' lines; default: standard input).")
@click.option("-o", "--output", "out_path", metavar="FILE", default="-", show_default=True,
              help="Where to write the corrected lines ('-' = standard output).")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@interruptible("fm_sample correct")
def correct_cmd(neg_rate, input_path, out_path, quiet):
    """Correct fm_predict probabilities for negative down-sampling.

    A model trained on lines whose negatives were kept at rate R predicts
    odds 1/R times too high; each 'LABEL P' line becomes (the rest of the
    line is kept):

    \b
      LABEL P / (P + (1 - P) / R)
    """
    from .rank import correct_stream

    cmd = "correct"
    _check_outputs(cmd, [("-o", out_path or "-")], [("--input", input_path or "-")])
    stream = _input(cmd, input_path)

    def body():
        with _output(out_path) as out:
            return correct_stream(stream, out.write, neg_rate)

    n, odd = _run(cmd, body)
    if not quiet:
        log("fm_sample correct: %s lines%s" % (fmt_int(n), ", %s not 'LABEL P' (copied unchanged)" % fmt_int(odd)
                                                if odd else ""))
