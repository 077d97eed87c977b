"""fm_sample recall: the catalog, users and clicks files fm_recall reads.

    catalog  ITEM_KEY ITEM_FEATS              one line per item table row
    users    USER_KEY USER_FEATS              one line per user table row (optional)
    clicks   USER_KEY USER_FEATS | ITEM_KEY   one line per clicked impression, in log order

Item vectors are computed offline from the catalog and user vectors online,
so a recall model may not use a feature that reads both user and item
attributes (a user x item cross, an overlap): ``check_recall_spec`` refuses
such a spec. Keys are written escaped as feature values are (``text.py``),
so any key is one token.
"""

import time

import numpy as np

from ..badlines import BadLineLog, RunSummary
from ..metrics import fmt_int
from . import logs
from .featurize import CLICK, KEYED, LineWriter, LogFeaturizer, SideTokens, Tokens, load_profiles, profile_notes
from .spec import SpecError, feature_sides, mixed_features


def check_recall_spec(spec):
    """Raise SpecError naming every emitted feature that mixes user and item attributes."""
    bad = mixed_features(spec.data)
    if not bad:
        return
    parts = []
    for f in bad:
        if f["kind"] == "overlap":
            parts.append("%r (overlap of %s and %s)" % (f["name"], f["user"], f["item"]))
        else:
            srcs = [spec.by_name[o].get("source", o) for o in f["of"]]
            parts.append("%r (cross of %s)" % (f["name"], " x ".join(srcs)))
    raise SpecError("%s: recall needs user and item features apart (item vectors are computed offline, user "
                    "vectors online), but %s read both user and item attributes; set emit = false on them or "
                    "use a spec without them" % (spec.path or "spec", ", ".join(parts)))


class RecallSummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.items = 0
        self.users = 0
        self.records = 0
        self.clicks = 0
        self.not_in_catalog = 0


def _empty_inline(plan):
    return (SideTokens(0, plan.n_local[0]), SideTokens(0, plan.n_local[1])), Tokens(1, 1)


def write_table_lines(plan, profiles, side, writer, out_write):
    """'KEY FEATS' for every row of one side's profile table (side_mask: that side only)."""
    t = profiles.tables[side]
    n = t.n
    if n == 0:
        return 0
    sel = np.arange(n, dtype=np.int64)
    none = np.full(n, -1, np.int64)
    ent = np.arange(n, dtype=np.int64)
    inline, store = _empty_inline(plan)
    ue, ie = (ent, none) if side == 0 else (none, ent)
    writer.run(sel, KEYED, 1 << side, np.zeros(n, np.int8), ue, ie, none, none, inline, store,
               key_text=t.key_arena, k1=(t.key_off[:-1].copy(), np.diff(t.key_off)), emit=out_write)
    return n


def recall_stream(spec, stream, catalog_write, clicks_write, opts, log, fmt, users_write=None, tables=None,
                  bad_file=None, progress_every=5.0, name="fm_sample recall", block_size=1 << 20):
    """Write the catalog (and users) from the tables, the clicks from the log."""
    check_recall_spec(spec)
    t0 = time.time()
    plan = spec.plan()
    profiles = load_profiles(plan, opts, log, tables=tables, bad_file=bad_file)

    profile_notes(profiles, log, opts.quiet, name)
    if profiles.tables[1].n == 0:
        raise SpecError("%s: the catalog comes from the item table, and it %s" % (
            spec.path or "spec", "has no rows" if spec.table_path("item") or tables else "is not given "
            "([item] table = ... in the spec, or --items FILE)"))
    s = RecallSummary()
    writer = LineWriter(plan, profiles)
    s.items = write_table_lines(plan, profiles, 1, writer, catalog_write)
    if users_write is not None:
        s.users = write_table_lines(plan, profiles, 0, writer, users_write)
    src = logs.BlockSource(stream, fmt, block_size=block_size)
    if fmt != "jsonl" and src.header is None:
        src.stop()
        s.seconds = time.time() - t0
        return s
    lf = LogFeaturizer(plan, profiles, fmt, src.header, source="input")
    if fmt != "jsonl":
        missing = lf.check_header("input")
        if not opts.quiet:
            for msg in lf.attribute_warnings(missing):
                log("%s: warning: %s" % (name, msg))
    bad_log = BadLineLog(opts, log, file=bad_file)
    last = time.time()
    for data, first_line in src:
        bt = lf.batch(data, first_line)
        s.bad += lf.report(bt, bad_log)
        s.lines += bt.cols.n_lines
        bad_log.check_fraction(s.lines)
        n = bt.n
        s.records += int(np.count_nonzero(bt.ok[:n]))
        clicked = bt.ok[:n] & (bt.label[:n] > 0)
        sel = np.flatnonzero(clicked).astype(np.int64)
        s.not_in_catalog += int(np.count_nonzero(bt.ie[sel] < 0))
        if len(sel):
            idx = np.arange(n, dtype=np.int64)
            none = np.full(n, -1, np.int64)
            writer.run(sel, CLICK, 1, bt.label, bt.ue, none, idx, none, bt.inline, bt.store,
                       key_text=bt.cols.text, k1=(bt.uk_s, bt.uk_l), k2=(bt.ik_s, bt.ik_l), emit=clicks_write)
            s.clicks += len(sel)
        now = time.time()
        if not opts.quiet and now - last >= progress_every:
            last = now
            log("%s: %s lines, %s clicks" % (name, fmt_int(s.lines), fmt_int(s.clicks)))
    bad_log.check_fraction(s.lines, final=True)
    s.bad_description = bad_log.describe()
    s.seconds = time.time() - t0
    return s


__all__ = ["check_recall_spec", "recall_stream", "feature_sides"]
