"""fm_recall: train, index, query, eval (docs/design.md, "Recall").

Flags follow fm_train's: alphaFM's single-dash names for what alphaFM has
(-m -mf -dim -w_alpha ... -core -im -imf -fvs -mnt), GNU style for the rest.
Errors print one line ``fm_recall <command>: error: ...``; bad input exits 3
(``--on-error stop``, ``--max-bad-fraction``, no valid click for train, no
valid record for index), other failures 1; no model or index file is
written by a failed run. train, index and query are clients of
``streamfm.Recall`` (recall/api.py): what they add is flags, checks before
work, progress and summaries on stderr, and exit codes.
"""

import json
import signal
import sys
import threading
import time

import click
from .. import command
from ..badlines import BadInputStop
from ..command import (CONTEXT, EXIT_BAD_INPUT, SEED, FiniteFloat, check_distinct_or_fail, check_writable_or_fail,
                       continue_seed, flag_message, fmt_seconds, hp_options, interruptible, library_messages, log,
                       output_failed, parse_dim, report, spare_rows, to_output)
from ..errors import ParameterError, StreamFMError
from ..ftrl import HP_NAMES
from ..metrics import Progress, fmt_int
from ..model import ModelError, dtype_name, dtype_of
from .defaults import RECALL_HP, TRAIN
from ..output import OutputError

_ON_ERROR = click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
                         help="On a bad line: skip it (counted and reported with its line number), "
                              "or stop, write nothing and exit 3.")
_BAD_LINES = click.option("--bad-lines", metavar="FILE", default=None,
                          help="Write every bad line to FILE as 'line-number<TAB>reason<TAB>line'.")
_MAX_BAD = click.option("--max-bad-fraction", type=FiniteFloat(0, 1), default=None, metavar="F",
                        help="Stop (nothing written, exit 3) when more than this fraction of lines is bad.")
_QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr (errors still show).")


def fail(cmd, msg, code=1):
    command.fail("fm_recall " + cmd, msg, code)


def _opts(cores=1, on_error="skip", max_bad_fraction=None, quiet=False, bad_lines=None):
    from ..train import Options

    return Options(cores=cores, on_error=on_error, max_bad_fraction=max_bad_fraction, quiet=quiet,
                   bad_lines=bad_lines)


def _open(path, cmd, what):
    try:
        return open(path, "rb")
    except OSError as e:
        fail(cmd, "%s %s: %s" % (what, path, e.strerror or e))


def _input(path, cmd):
    if path in (None, "-"):
        if sys.stdin is None:
            fail(cmd, "no standard input; give --input FILE")
        return sys.stdin.buffer
    return _open(path, cmd, "--input")


def _load(path, cmd):
    """The model of -m as a streamfm.FM that predicts (w and v only)."""
    from ..fm import FM

    try:
        fm = FM.load(path, state=False)
        fm.require_fm(cmd)
        return fm
    except StreamFMError as e:
        fail(cmd, str(e))


def _load_index(path, cmd):
    from .index import read_index

    try:
        return read_index(path)
    except ModelError as e:
        fail(cmd, str(e))


def _check_match(index, model, cmd, quiet):
    from .index import fingerprint_matches

    if index.k != model.k:
        fail(cmd, "%s has %d factors but the model %d: build the index from this model (fm_recall index)"
             % (index.path, index.k, model.k))
    # fingerprint_matches: a float32 copy of the model (fm_dump strip --float) is the same model
    if not quiet and index.model_info.get("crc32") is not None and not fingerprint_matches(index.model_info,
                                                                                           model.weights):
        log("fm_recall %s: warning: %s was built from another model (or another version of it); "
            "scores mix two models" % (cmd, index.path))


class _Stop:
    """SIGINT/SIGTERM set a flag the trainer checks between chunks."""

    def __init__(self):
        self.event = threading.Event()
        self.signal = None
        self.old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *a):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False


@click.group(context_settings=CONTEXT)
def fm_recall():
    """FM recall: train on clicks, index items or users, query u2i / i2i / u2u / i2u, evaluate.

    \b
    Files (one record a line, features as in fm_train: NAME:VALUE or NAME):
      items   ITEM_KEY NAME:VALUE ...            (the item's own features, its id included)
      users   USER_KEY NAME:VALUE ...
      clicks  USER_KEY NAME:VALUE ... | ITEM_KEY (the user's features at click time)

    \b
    Example:
      fm_recall train -m model.txt --items items.txt --epochs 10 < clicks.txt
      fm_recall index -m model.txt --items items.txt -o items.idx
      fm_recall query -m model.txt --index items.idx --mode u2i --topn 50 < users.txt
      fm_recall eval  -m model.txt --index items.idx --train clicks.txt < clicks_test.txt
    """


# ---------------------------------------------------------------------------
# train


@fm_recall.command("train", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="PATH", help="Where to write the trained model (required).")
@click.option("-mf", "model_format", type=click.Choice(["txt", "bin"]), default="txt", show_default=True,
              help="Format of the model written: alphaFM's text, or streamfm's binary.")
@click.option("-dim", "dim", default="1,1,8", show_default=True, metavar="K0,K1,K",
              help="Use the bias (K0), the linear terms (K1), and K factors (the embedding size).")
@hp_options(defaults=RECALL_HP)
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Trainer threads: Hogwild, on disjoint slices of the clicks (with 1 and a --seed a run "
                   "is deterministic).")
@click.option("-im", "init_model", metavar="PATH", help="Continue training from this model (txt or bin).")
@click.option("-imf", "init_model_format", type=click.Choice(["txt", "bin"]), default=None,
              help="Format of -im (accepted for alphaFM scripts; the file's bytes decide).")
@click.option("-fvs", "fvs", type=click.IntRange(0, 1), default=0, show_default=True,
              help="Force v to 0 while w is 0 (alphaFM's force_v_sparse).")
@click.option("-mnt", "mnt", type=click.Choice(["double", "float"]), default="double", show_default=True,
              help="Number type of the model in memory and on disk.")
@click.option("--items", "items_path", metavar="FILE", required=True,
              help="The item catalog: 'ITEM_KEY NAME:VALUE ...' lines; negatives are drawn from it.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Read click lines from FILE instead of standard input.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=TRAIN["epochs"], show_default=True,
              help="Passes over the clicks. With more than 1 the clicks are held in memory and "
                   "reshuffled every pass; 1 streams them in input order.")
@click.option("--neg", type=click.IntRange(1, 1000), default=TRAIN["neg"], show_default=True,
              help="Negatives per click (hinge, bpr, logistic; warp draws until its first violator).")
@click.option("--neg-dist", type=click.Choice(["uniform", "pop", "pop0.75"]), default=TRAIN["neg_dist"],
              show_default=True,
              help="Draw negatives uniformly from the catalog, or by click count (to the power 1 or "
                   "0.75; counts as seen so far, the whole log with --epochs > 1).")
@click.option("--pop-suppress", type=FiniteFloat(0, 1), default=TRAIN["pop_suppress"], show_default=True,
              metavar="T",
              help="Keep a click on an item with click share f with probability "
                   "min(1, sqrt(T/f) + T/f), as word2vec does; 0 keeps every click. Try 1e-3.")
@click.option("--hard-neg", type=click.IntRange(0, 100000), default=TRAIN["hard_neg"], show_default=True,
              metavar="M",
              help="Draw M candidates per click and keep the --neg the model scores highest (0: off; "
                   "not with warp, which finds its own hard negatives). Default: 4 x --neg, at least 16; "
                   "0 with warp.")
@click.option("--hard-neg-model", metavar="FILE", default=None,
              help="Score --hard-neg candidates with this fixed model instead of the one being trained.")
@click.option("--loss", type=click.Choice(["warp", "hinge", "bpr", "logistic"]), default=TRAIN["loss"],
              show_default=True,
              help="warp: draw items until the first whose score is within the margin of the clicked "
                   "one's (at most --max-sampled draws), then a hinge step weighted by the log of the "
                   "rank that estimates, log((items - 1) / draws) (LightFM's WARP); pairwise hinge "
                   "max(0, margin - s(u,i+) + s(u,i-)); pairwise BPR -log sigmoid(s(u,i+) - s(u,i-)); "
                   "or pointwise logistic (clicks 1, negatives 0).")
@click.option("--max-sampled", type=click.IntRange(1, 1000000), default=TRAIN["max_sampled"], show_default=True,
              metavar="N", help="warp: draws per click at most (a click with no violator in N draws "
                                "is ranked well enough and trains nothing).")
@click.option("--margin", type=FiniteFloat(0), default=TRAIN["margin"], show_default=True,
              help="Margin of the hinge and warp losses.")
@click.option("--refresh", type=click.IntRange(1, 1 << 40), default=TRAIN["refresh"], show_default=True,
              metavar="N",
              help="warp and --hard-neg score candidates with the catalog's embeddings, recomputed from "
                   "the model every N clicks.")
@click.option("--seen-pairs", type=click.IntRange(1, 1 << 40), default=TRAIN["seen_capacity"],
              show_default=True, metavar="N",
              help="A user's own clicked items are never drawn as their negatives. With --epochs 1 the "
                   "last N distinct (user, item) clicks of the stream are remembered (at most 2 tables "
                   "of the power of two >= 2N 8-byte slots: 32 MB for the default); with more passes, "
                   "all of the log's (8 to 16 bytes a pair).")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the initial v and of sampling and shuffling (default: the -im binary "
                   "model's seed, else 0).")
@click.option("--keep-untrained", is_flag=True,
              help="Also write catalog features no click or negative ever reached (they hold only their "
                   "random initial v); by default they are left out, so they count as unknown.")
@_ON_ERROR
@_MAX_BAD
@_BAD_LINES
@click.option("--save-on-interrupt", is_flag=True,
              help="On SIGINT/SIGTERM, write the model trained so far (default: write nothing).")
@click.option("--allow-empty", is_flag=True,
              help="Write the model even when no valid click (one whose item is in --items) was read: "
                   "the -im model's trained features, or only the bias (default: write nothing, exit 3).")
@_QUIET
@interruptible("fm_recall train")
def train_cmd(model_path, model_format, dim, w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2,
              init_stdev, cores, init_model, init_model_format, fvs, mnt, items_path, input_path, epochs, neg,
              neg_dist, pop_suppress, hard_neg, hard_neg_model, loss, max_sampled, margin, refresh, seen_pairs,
              seed, keep_untrained, on_error,
              max_bad_fraction, bad_lines, save_on_interrupt, allow_empty, quiet):
    """Train an FM for recall on click lines from standard input.

    Each click 'USER_KEY NAME:VALUE ... | ITEM_KEY' is a positive; negatives
    come from the --items catalog, never among the user's own clicked items.
    The model is an ordinary streamfm model (fm_dump, fm_predict and -im work
    on it). Progress, the training loss and the share of violated pairs
    (s(u,i+) - s(u,i-) below the margin; below 0 for bpr and logistic) go to
    stderr.

    The defaults differ from fm_train's (alphaFM's): they are the best
    settings found on a validation split carved from MovieLens-100k's
    training clicks (README, "Recall defaults"; bench/bench_recall.py --part
    tune; the users' last 10 clicks among their features): BPR on the 4
    best-scored of 16 draws, 6 passes, -v_alpha 0.1. A click log whose users
    carry only profile features wants more passes (--epochs 15: HR@50 0.420
    against 0.379 there). WARP (--loss warp) is no better with history
    features (HR@50 0.495 at 10 passes, against 0.506; HR@100 lower).

    \b
    Example:
      fm_recall train -m model.txt --items items.txt -dim 1,1,16 < clicks.txt
    """
    from .. import jit, parse
    from ..fm import FM
    from .api import Recall
    from .records import ReadProgress
    from .trainer import train_clicks

    cmd = "train"
    if not model_path:
        raise click.UsageError("-m PATH (where to write the model) is required")
    k0, k1, k = parse_dim(dim)
    if k < 1:
        raise click.BadParameter("recall needs factors: K >= 1 (e.g. 1,1,16)", param_hint="-dim")
    if click.get_current_context().get_parameter_source("hard_neg") == click.core.ParameterSource.DEFAULT:
        hard_neg = None   # Config: the default ratio to --neg, none with warp
    if hard_neg and hard_neg <= neg:
        raise click.BadParameter("--hard-neg M draws M candidates and keeps the --neg (%d) best: M must be "
                                 "larger than --neg" % neg, param_hint="--hard-neg")
    if hard_neg_model and hard_neg is None and loss != "warp":
        hard_neg = max(TRAIN["hard_neg"], TRAIN["hard_neg"] // TRAIN["neg"] * neg)
    if hard_neg_model and not hard_neg:
        raise click.UsageError("--hard-neg-model needs --hard-neg M")
    if hard_neg and loss == "warp":
        raise click.UsageError("--hard-neg is for hinge, bpr and logistic; warp draws its own hard negatives "
                               "(--max-sampled)")
    hyper = dict(zip(HP_NAMES, [w_alpha, w_beta, w_l1, w_l2, v_alpha, v_beta, v_l1, v_l2, init_stdev]),
                 fvs=bool(fvs))
    dtype = dtype_of(mnt)
    check_distinct_or_fail("fm_recall train", [("-m", model_path), ("--bad-lines", bad_lines)],
                           [("--items", items_path), ("--input", input_path or "-"), ("-im", init_model),
                            ("--hard-neg-model", hard_neg_model)], allow={("-m", "-im")})
    check_writable_or_fail(model_path, "fm_recall train")
    if bad_lines:
        check_writable_or_fail(bad_lines, "fm_recall train")
    items_file = _open(items_path, cmd, "--items")
    stream = _input(input_path, cmd)
    jit.compile_notice([parse.parse_block, train_clicks], log, quiet)
    t0 = time.time()
    try:
        if init_model:
            fm = FM.load(init_model, k=k, state=True, dtype=dtype, reserve_rows=spare_rows(k, dtype, 1 << 16),
                         k0=k0, k1=k1, **hyper)
            fm.require_fm(cmd)
            fm.seed = continue_seed(cmd, fm.info, seed, fvs, quiet)
            fm.training_model()
            if not quiet:
                log("fm_recall train: continuing %s: %s features" % (init_model, fmt_int(fm.n_features)))
        else:
            fm = FM(k0=k0, k1=k1, k=k, dtype=dtype_name(dtype), seed=0 if seed is None else seed, **hyper)
            fm.reserve(spare_rows(k, dtype, 1 << 18), 1 << 22)
        hard = FM.load(hard_neg_model, state=False) if hard_neg_model else None
        if hard is not None:
            hard.require_fm(cmd)
    except StreamFMError as e:
        fail(cmd, str(e))
    try:
        with items_file, library_messages(quiet):
            catalog = Recall.read_catalog(items_file, fm, on_error=on_error, max_bad_fraction=max_bad_fraction,
                                          bad_lines=bad_lines, source=items_path,
                                          progress=ReadProgress(log, "fm_recall train", quiet))
    except BadInputStop as e:
        fail(cmd, flag_message(e), EXIT_BAD_INPUT)
    except OutputError as e:
        output_failed("fm_recall " + cmd, e)
    if catalog.n < 2:
        fail(cmd, "%s holds %d item(s); negatives need a catalog of at least 2" % (items_path, catalog.n))
    if catalog.duplicates and not quiet:
        log("fm_recall train: warning: %d repeated item keys in %s; the first line of each is used"
            % (catalog.duplicates, items_path))
    if not quiet:
        log("fm_recall train: %s items in the catalog (%s), %s features" % (
            fmt_int(catalog.n), fmt_seconds(time.time() - t0), fmt_int(fm.n_features)))
    if input_path is None and sys.stdin.isatty() and not quiet:
        log("fm_recall train: reading clicks from the terminal (pipe a file in, or use --input FILE)")
    with _Stop() as stop:
        try:
            with library_messages(quiet):
                rec = Recall.train(stream, catalog, fm=fm, epochs=epochs, neg=neg, neg_dist=neg_dist,
                                   pop_suppress=pop_suppress, hard_neg=hard_neg, loss=loss, margin=margin,
                                   max_sampled=max_sampled, refresh=refresh, seen_pairs=seen_pairs,
                                   hard_neg_model=hard, cores=cores, on_error=on_error,
                                   max_bad_fraction=max_bad_fraction, bad_lines=bad_lines,
                                   source=input_path or "stdin", progress=_TrainProgress(epochs, quiet),
                                   stop=stop.event, keep_untrained=keep_untrained)
        except BadInputStop as e:
            fail(cmd, flag_message(e) + ", no model written", EXIT_BAD_INPUT)
        except OutputError as e:
            output_failed("fm_recall " + cmd, e)
        except OSError as e:
            fail(cmd, "reading clicks: %s" % (e.strerror or e))
    s = rec.report
    if stop.signal and not save_on_interrupt:
        log("fm_recall train: interrupted (%s); no model written (--save-on-interrupt writes it)" % stop.signal)
        sys.exit(128 + getattr(signal, stop.signal))
    if s.clicks == 0 and not allow_empty:
        fail(cmd, "no valid click in %s lines of input (%s bad, %s not in --items); no model written "
             "(--allow-empty writes it anyway)" % (fmt_int(s.lines), fmt_int(s.bad),
                                                   fmt_int(s.not_in_catalog)), EXIT_BAD_INPUT)
    if s.trained == 0 and not quiet:
        log("fm_recall train: warning: no click was trained on")
    t_write = time.time()
    try:
        rec.fm.save(model_path, model_format)
    except StreamFMError as e:
        fail(cmd, str(e))
    if not quiet:
        log("fm_recall train: %s after %s" % ("interrupted (%s), model saved" % stop.signal if stop.signal
                                              else "done", fmt_seconds(s.seconds)))
        log("  lines read            %s" % fmt_int(s.lines))
        log("  bad lines skipped     %s%s" % (fmt_int(s.bad), "  (%s)" % s.bad_description if s.bad else ""))
        if s.not_in_catalog:
            log("  clicks not in --items %s (skipped)" % fmt_int(s.not_in_catalog))
        log("  clicks x passes       %s x %d" % (fmt_int(s.clicks), s.passes))
        log("  clicks trained        %s" % fmt_int(s.trained))
        if pop_suppress:
            log("  clicks suppressed     %s  (--pop-suppress %g)" % (fmt_int(s.stats[4]), pop_suppress))
        if s.stats[5] or s.stats[6]:
            log("  overflow guarded      %s clicks skipped, %s updates skipped" % (
                fmt_int(s.stats[6]), fmt_int(s.stats[5])))
        if s.stats[7]:
            log("  clicks without a negative %s (every item drawn was the user's own click)" % fmt_int(s.stats[7]))
        if loss == "warp":
            log("  candidates scored     %s  (%.1f a click)" % (fmt_int(s.pairs), s.pairs / max(s.trained, 1)))
            log("  clicks/s              %s" % fmt_int(s.trained / max(s.seconds, 1e-9)))
            log("  warp loss           %.6f   violated pairs %.2f%%  (clicks with a violator %.2f%%)" % (
                s.loss, 100 * s.violated, 100 * s.stats[3] / max(s.trained, 1)))
        else:
            log("  pairs                 %s" % fmt_int(s.pairs))
            log("  clicks/s              %s" % fmt_int(s.trained / max(s.seconds, 1e-9)))
            log("  %s loss%s %.6f   violated pairs %.2f%%" % (
                loss, " " * (14 - len(loss)), s.loss, 100 * s.violated))
        if s.seen_rotations:
            log("  own clicks remembered %s pairs (--seen-pairs %s reached %d times: older ones forgotten)"
                % (fmt_int(s.seen_pairs), fmt_int(seen_pairs), s.seen_rotations))
        log("  features in model     %s%s" % (fmt_int(rec.fm.n_features), "  (%s never reached, left out)"
                                              % fmt_int(s.dropped) if s.dropped else ""))
        log("  model written         %s (%s, %s)" % (model_path, model_format,
                                                    fmt_seconds(time.time() - t_write)))


class _TrainProgress(Progress):
    def __init__(self, epochs, quiet, every=5.0):
        Progress.__init__(self, log, "fm_recall train", every, quiet)
        self.epochs = epochs

    def __call__(self, s, pass_no, features):
        if not self.due():
            return
        if pass_no == 0:
            self.say("loading clicks", "%s lines" % fmt_int(s.lines), "%s bad" % fmt_int(s.bad) if s.bad else "",
                     "%s features" % fmt_int(features))
            return
        self.say("pass %d/%d" % (pass_no, self.epochs), "%s lines" % fmt_int(s.lines),
                 "%s clicks trained" % fmt_int(s.trained), "%s bad" % fmt_int(s.bad) if s.bad else "",
                 "%s features" % fmt_int(features), "%s clicks/s" % self.rate(s.trained), "loss %.6f" % s.loss,
                 "violated %.2f%%" % (100 * s.violated))


# ---------------------------------------------------------------------------
# index


@fm_recall.command("index", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True, help="The model (txt or bin, full or stripped).")
@click.option("--items", "items_path", metavar="FILE", default=None,
              help="Index these items ('ITEM_KEY NAME:VALUE ...'): for u2i and i2i.")
@click.option("--users", "users_path", metavar="FILE", default=None,
              help="Index these users ('USER_KEY NAME:VALUE ...'): for i2u and u2u.")
@click.option("-o", "out_path", metavar="INDEX", required=True, help="The index file to write.")
@_ON_ERROR
@_MAX_BAD
@_BAD_LINES
@_QUIET
@interruptible("fm_recall index")
def index_cmd(model_path, items_path, users_path, out_path, on_error, max_bad_fraction, bad_lines, quiet):
    """Embed every item (or user) record with the model into an index file.

    A record's row is [V, lin + inter] (docs/design.md, "Recall"), computed from
    whatever of its features the model knows: a new item or user (cold
    start) is embedded from its other features. Repeated keys keep their
    first line. A file without a single valid record writes no index and
    exits 3.
    """
    from .. import jit, parse
    from .api import Recall
    from .embed import embed_records
    from .records import ReadProgress

    cmd = "index"
    if (items_path is None) == (users_path is None):
        raise click.UsageError("give exactly one of --items FILE or --users FILE")
    path = items_path or users_path
    kind = "items" if items_path else "users"
    check_distinct_or_fail("fm_recall index", [("-o", out_path), ("--bad-lines", bad_lines)],
                           [("-m", model_path), ("--" + kind, path)])
    check_writable_or_fail(out_path, "fm_recall index")
    if bad_lines:
        check_writable_or_fail(bad_lines, "fm_recall index")
    jit.compile_notice([parse.parse_block, embed_records], log, quiet)
    t0 = time.time()
    rec = Recall(_load(model_path, cmd))
    f = _open(path, cmd, "--" + kind)
    try:
        with f, library_messages(quiet):
            index = rec.index(f, kind, on_error=on_error, max_bad_fraction=max_bad_fraction, bad_lines=bad_lines,
                              source=path, progress=ReadProgress(log, "fm_recall index", quiet))
    except BadInputStop as e:
        fail(cmd, flag_message(e) + ", no index written", EXIT_BAD_INPUT)
    except OutputError as e:
        output_failed("fm_recall " + cmd, e)
    r = rec.report
    if r.records == 0:
        fail(cmd, "%s holds no valid record (%s lines, %s bad); no index written"
             % (path, fmt_int(r.lines), fmt_int(r.bad)), EXIT_BAD_INPUT)
    try:
        Recall.save_index(index, out_path)
    except StreamFMError as e:
        fail(cmd, str(e))
    if not quiet:
        log("fm_recall index: %s %s, %d factors, written to %s (%s)" % (
            fmt_int(r.records), kind, index.k, out_path, fmt_seconds(time.time() - t0)))
        if r.duplicates:
            log("  repeated keys dropped   %s (the first line of each is kept)" % fmt_int(r.duplicates))
        log("  features unknown to the model  %s of %s (they contribute nothing)" % (
            fmt_int(r.unknown_features), fmt_int(r.features)))
        if r.empty:
            log("  %s with no known feature (vector 0)" % fmt_int(r.empty))


# ---------------------------------------------------------------------------
# query


@fm_recall.command("query", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True, help="The model the index was built from.")
@click.option("--index", "index_path", metavar="INDEX", required=True, help="The index to search (fm_recall index).")
@click.option("--mode", type=click.Choice(["u2i", "i2i", "u2u", "i2u"]), required=True,
              help="u2i: items for users; i2i: similar items; u2u: similar users; i2u: users for items. "
                   "u2i and i2i search an items index, u2u and i2u a users index.")
@click.option("--topn", type=click.IntRange(1, 100000), default=10, show_default=True, help="Results per query.")
@click.option("--metric", type=click.Choice(["ip", "cos"]), default=None,
              help="i2i and u2u: cosine (default) or inner product of V. u2i and i2u always rank by the "
                   "FM score.")
@click.option("--exclude", "exclude_path", metavar="FILE", default=None,
              help="Click lines 'A ... | B' to leave out: for u2i the user A never gets item B, for i2u "
                   "item B never gets user A (a click log works for both); for i2i and u2u query A never "
                   "gets B. i2i and u2u never return the query itself.")
@click.option("--query-index", "query_index_path", metavar="INDEX", default=None,
              help="Take the vector of a query line that has only a key from this index (e.g. the users "
                   "index for u2i); i2i and u2u look such keys up in --index.")
@click.option("--backend", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: the numba top-N kernel; faiss: faiss IndexFlatIP (pip install 'streamfm[faiss]').")
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Search threads.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Read query lines from FILE instead of standard input.")
@click.option("-out", "out_path", metavar="PATH", default="-", show_default=True,
              help="Where to write result lines ('-' = standard output).")
@_ON_ERROR
@_BAD_LINES
@_QUIET
@interruptible("fm_recall query")
def query_cmd(model_path, index_path, mode, topn, metric, exclude_path, query_index_path, backend, cores,
              input_path, out_path, on_error, bad_lines, quiet):
    """Answer query lines: 'QUERY_KEY<TAB>KEY:SCORE KEY:SCORE ...', best first, in input order.

    \b
    Query lines:
      u2i, u2u   USER_KEY NAME:VALUE ...      (the user's features now)
      i2i, i2u   ITEM_KEY [NAME:VALUE ...]    (features may be left out when the key
                                              is in the index, or in --query-index)
    Scores: the raw FM score for u2i and i2u (exact: the ranking is the FM's),
    cosine or inner product for i2i and u2u.
    """
    from .. import jit, parse
    from .api import Recall
    from .index import topn_range
    from .query import MODES, format_results

    cmd = "query"
    want_kind, query_kind, pair = MODES[mode]
    if pair and metric == "cos":
        raise click.BadParameter("%s ranks by the FM score; --metric is for i2i and u2u" % mode,
                                 param_hint="--metric")
    check_distinct_or_fail("fm_recall query", [("-out", out_path), ("--bad-lines", bad_lines)],
                           [("--input", input_path or "-"), ("-m", model_path), ("--index", index_path),
                            ("--exclude", exclude_path), ("--query-index", query_index_path)])
    check_writable_or_fail(out_path, "fm_recall query")
    if bad_lines:
        check_writable_or_fail(bad_lines, "fm_recall query")
    jit.compile_notice([parse.parse_block, topn_range, format_results], log, quiet)
    rec = Recall(_load(model_path, cmd))
    model = rec.fm.serving_model()
    index = _load_index(index_path, cmd)
    if index.kind != want_kind:
        fail(cmd, "--mode %s searches %s, but %s indexes %s (fm_recall index --%s)"
             % (mode, want_kind, index_path, index.kind, want_kind))
    _check_match(index, model, cmd, quiet)
    qindex = None
    if query_index_path:
        qindex = _load_index(query_index_path, cmd)
        if qindex.kind != query_kind:
            fail(cmd, "--mode %s queries with %s, but --query-index %s indexes %s"
                 % (mode, query_kind, query_index_path, qindex.kind))
        _check_match(qindex, model, cmd, quiet)
    if exclude_path:
        try:
            open(exclude_path, "rb").close()
        except OSError as e:
            fail(cmd, "--exclude %s: %s" % (exclude_path, e.strerror or e))
    stream = _input(input_path, cmd)

    def run(out):
        with library_messages(quiet):
            return rec.write_results(stream, index, out, mode, topn, metric=metric, exclude=exclude_path,
                                     query_index=qindex, backend=backend, cores=cores, on_error=on_error,
                                     bad_lines=bad_lines, source=input_path or "stdin",
                                     progress=_QueryProgress(quiet))

    try:
        s = to_output("fm_recall " + cmd, out_path, run, reading="queries")
    except ParameterError as e:   # faiss missing
        fail(cmd, flag_message(e))
    if not quiet:
        log("fm_recall query: %s queries (%s), %s bad lines, %s queries/s" % (
            fmt_int(s.queries), mode, fmt_int(s.bad), fmt_int(s.queries / max(s.seconds, 1e-9))))
        if s.bad:
            log("  bad lines: %s" % s.bad_description)
        if s.unresolved:
            log("  %s queries had no features and a key no index holds: empty results" % fmt_int(s.unresolved))
        if s.no_known:
            log("  %s queries had no feature the model knows (ranked by the %s alone)" % (
                fmt_int(s.no_known), "items' own scores" if pair else "index order"))


class _QueryProgress(Progress):
    def __init__(self, quiet, every=5.0):
        Progress.__init__(self, log, "fm_recall query", every, quiet)

    def __call__(self, s):
        if self.due():
            self.say("%s lines" % fmt_int(s.lines), "%s queries" % fmt_int(s.queries),
                     "%s bad" % fmt_int(s.bad) if s.bad else "", "%s queries/s" % self.rate(s.queries))


# ---------------------------------------------------------------------------
# eval


@fm_recall.command("eval", context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True, help="The model the index was built from.")
@click.option("--index", "index_path", metavar="INDEX", required=True, help="An items index (fm_recall index --items).")
@click.option("--train", "train_path", metavar="FILE", default=None,
              help="Training clicks: each user's are left out of their ranking.")
@click.option("-k", "--k", "ks", default="10,50,100", show_default=True, metavar="K,K,...",
              help="Cut-offs to report.")
@click.option("-core", "cores", type=click.IntRange(1, 256), default=1, show_default=True, help="Search threads.")
@click.option("--input", "input_path", metavar="FILE", default=None,
              help="Read held-out click lines from FILE instead of standard input.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout instead of a table.")
@_ON_ERROR
@_QUIET
@interruptible("fm_recall eval")
@report("fm_recall eval")
def eval_cmd(model_path, index_path, train_path, ks, cores, input_path, as_json, on_error, quiet):
    """HitRate@K, Recall@K, NDCG@K and catalog coverage of u2i on held-out clicks.

    Held-out click lines ('USER_KEY NAME:VALUE ... | ITEM_KEY') are grouped by
    user; each user is ranked once, with the features of their first line.
    """
    from .. import parse
    from .embed import embed, query_vectors
    from .evaluate import evaluate, group_users, relevant_csr
    from .index import PairTable, Searcher
    from .records import RecordReader

    cmd = "eval"
    try:
        klist = sorted(set(int(x) for x in ks.split(",") if x.strip()))
    except ValueError:
        klist = []
    if not klist or klist[0] < 1:
        raise click.BadParameter("expected positive integers such as 10,50,100, got %r" % ks, param_hint="-k")
    check_distinct_or_fail("fm_recall eval", [("", "-")], [("--input", input_path or "-"), ("-m", model_path),
                                                          ("--index", index_path), ("--train", train_path)])
    model = _load(model_path, cmd).serving_model()
    index = _load_index(index_path, cmd)
    if index.kind != "items":
        fail(cmd, "%s indexes %s; eval ranks items for users (fm_recall index --items)" % (index_path, index.kind))
    _check_match(index, model, cmd, quiet)
    opts = _opts(1, on_error, None, quiet, None)
    try:
        reader = RecordReader(_input(input_path, cmd), parse.CLICK, opts, log, input_path or "stdin",
                              table=model.table)
        held = reader.read_all()
        pairs = None
        if train_path:
            with _open(train_path, cmd, "--train") as f:
                tr = RecordReader(f, parse.CLICK, opts, log, train_path).read_all()
            pairs = PairTable(tr.key_hash, index.keys.lookup(tr.item_hash))
    except BadInputStop as e:
        fail(cmd, str(e), EXIT_BAD_INPUT)
    if held.n == 0:
        # rates over no user are not 0: say so instead of printing a table of zeros
        fail(cmd, "no held-out click to evaluate in %s (%s lines, %s bad)" % (
            input_path or "stdin", fmt_int(reader.lines), fmt_int(reader.bad.count)),
            EXIT_BAD_INPUT if reader.bad.count else 1)
    first, user_of = group_users(held.key_hash)
    users = held.take(first)
    item_rows = index.keys.lookup(held.item_hash)
    rel_ptr, rel_idx = relevant_csr(user_of, item_rows, users.n, held.item_hash)
    vec, own, _ = embed(users, model.weights, model.k)
    searcher = Searcher(index, True, "ip", cores)
    excl = pairs.for_queries(users.key_hash) if pairs is not None else None
    t0 = time.time()
    out_idx, _sc = searcher.search(query_vectors(vec, "ip", True), min(klist[-1], max(index.n, 1)), excl)
    res = evaluate(out_idx, rel_ptr, rel_idx, klist, index.n)
    info = {"users": int(users.n), "held_out": int(held.n), "bad_lines": int(reader.bad.count),
            "not_in_index": int((item_rows < 0).sum()),
            "items": int(index.n), "seconds": time.time() - t0, "metrics": {str(k): v for k, v in res.items()}}
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print("users %s   held-out clicks %s%s   items in index %s%s" % (
        fmt_int(info["users"]), fmt_int(info["held_out"]),
        "   bad lines skipped %s" % fmt_int(info["bad_lines"]) if info["bad_lines"] else "", fmt_int(info["items"]),
        "   held-out items not in the index %s (misses)" % fmt_int(info["not_in_index"])
        if info["not_in_index"] else ""))
    print("%-6s %9s %9s %9s %9s" % ("K", "HitRate", "Recall", "NDCG", "Coverage"))
    for k, v in res.items():
        print("%-6d %9.4f %9.4f %9.4f %9.4f" % (k, v["hit_rate"], v["recall"], v["ndcg"], v["coverage"]))


def main():
    fm_recall()


if __name__ == "__main__":
    main()
