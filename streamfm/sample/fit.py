"""fm_sample fit: learn quantile edges and min-count vocabularies from a log.

One pass over the impression log, every valid impression counted once (no
request grouping or sampling: fit learns the distribution the impressions
have). For each impression, each learnable feature sees the value the
featurizer would use (the record's own attribute, else its profile row's):

- ``bins = N`` (bucket features and overlaps): the values go into a
  ``sketch.QuantileSketch``; the edges are its N-quantiles, with the
  sketch's rank error eps recorded beside them;
- ``min_count = m``: every id (each tag, each history id) is counted in a
  ``sketch.CountTable``; the ids counted at least m times are kept, the
  others become the spec's ``rare`` value.

The frozen spec holds the normalised spec, the learned state and the
fingerprint of both.
"""

import time

import numpy as np
from numba import njit

from .. import __version__
from ..badlines import BadLineLog, RunSummary
from ..metrics import Progress, fmt_int
from . import logs
from .featurize import LogFeaturizer, load_profiles, overlap_value, profile_notes, resolve_tokens
from .sketch import DEFAULT_K, CountTable, QuantileSketches, count_add, sketch_add


@njit(cache=True, nogil=True)
def learn(start, sel, ue, ie, ui, ii, up_a, up_b, ip_a, ip_b, p_off, p_len, p_hash, p_val, p_arena,
          ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, i_off, i_len, i_hash, i_val, i_arena, nlu, nli,
          n_base, base_side, base_local, base_sketch, base_count, out_kind, out_comp, out_measure, out_sketch,
          sk_buf, sk_fill, sk_parity, sk_err, sk_count,
          slots, ehash, efeat, ecount, eoff, elen, carena, used, distinct, cap, away,
          room_entries, room_bytes, r_src, r_a, r_b):
    """Feed impressions sel[start:] to the sketches and counts.

    Stops before an impression whose ids might not fit the count table
    (room_entries, room_bytes); returns the next position in sel.
    """
    for j in range(start, sel.shape[0]):
        i = sel[j]
        resolve_tokens(i, ue, ie, ui, ii, up_a, up_b, ip_a, ip_b, ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, nlu, nli,
                 n_base, base_side, base_local, r_src, r_a, r_b)
        ne = 0
        nbytes = 0
        for b in range(n_base):
            if base_count[b]:
                ne += r_b[b] - r_a[b]
                for t in range(r_a[b], r_b[b]):
                    nbytes += p_len[t] if r_src[b] == 0 else i_len[t]
        if ne > room_entries or nbytes > room_bytes:
            return j
        room_entries -= ne
        room_bytes -= nbytes
        for b in range(n_base):
            s = base_sketch[b]
            if s >= 0:
                for t in range(r_a[b], r_b[b]):
                    sketch_add(sk_buf, sk_fill, sk_parity, sk_err, sk_count, s,
                               p_val[t] if r_src[b] == 0 else i_val[t])
            if base_count[b]:
                for t in range(r_a[b], r_b[b]):
                    if r_src[b] == 0:
                        count_add(slots, ehash, efeat, ecount, eoff, elen, carena, used, distinct, cap, away, b,
                                  p_hash[t], p_arena, p_off[t], p_len[t])
                    else:
                        count_add(slots, ehash, efeat, ecount, eoff, elen, carena, used, distinct, cap, away, b,
                                  i_hash[t], i_arena, i_off[t], i_len[t])
        for o in range(out_kind.shape[0]):
            s = out_sketch[o]
            if s >= 0:
                has, v = overlap_value(out_comp[o, 0], out_comp[o, 1], r_src, r_a, r_b, p_hash, i_hash, out_measure[o])
                if has:
                    sketch_add(sk_buf, sk_fill, sk_parity, sk_err, sk_count, s, v)
    return sel.shape[0]


class FitSummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.records = 0


def fit_stream(spec, stream, opts, log, fmt, tables=None, bad_file=None, k=DEFAULT_K, progress_every=5.0,
               source_name="-", name="fm_sample fit", block_size=1 << 20):
    """Learn a spec's edges and vocabularies from a log; returns (frozen object, FitSummary)."""
    t0 = time.time()
    plan = spec.plan(raw=True)
    profiles = load_profiles(plan, opts, log, tables=tables, bad_file=bad_file)

    profile_notes(profiles, log, opts.quiet, name)
    src = logs.BlockSource(stream, fmt, block_size=block_size)
    lf = LogFeaturizer(plan, profiles, fmt, src.header, source="input")
    s = FitSummary()
    if fmt != "jsonl" and src.header is None:
        src.stop()
    elif fmt != "jsonl":
        missing = lf.check_header("input")
        if not opts.quiet:
            for msg in lf.attribute_warnings(missing):
                log("%s: warning: %s" % (name, msg))
    bad_log = BadLineLog(opts, log, file=bad_file)
    sketches = QuantileSketches(len(plan.sketch_names), k=k)
    caps = np.zeros(plan.n_base, np.int64)
    for b, x in enumerate(plan.bases):
        if x["mc"]:
            caps[b] = x["feature"]["max_vocab"]
    counts = CountTable(plan.n_base, caps)
    base_count = plan.base_mc.copy()
    nb = max(plan.n_base, 1)
    r_src, r_a, r_b = (np.zeros(nb, np.int64) for _ in range(3))
    progress = Progress(log, name, progress_every, opts.quiet)
    pr = profiles
    for data, first_line in src:
        bt = lf.batch(data, first_line)
        s.bad += lf.report(bt, bad_log)
        s.lines += bt.cols.n_lines
        bad_log.check_fraction(s.lines)
        sel = np.flatnonzero(bt.ok[: bt.n]).astype(np.int64)
        s.records += len(sel)
        su, si = bt.inline
        st = bt.store
        idx = np.arange(bt.n, dtype=np.int64)
        j = 0
        while j < len(sel):
            room_e, room_b = counts.room()
            j2 = learn(j, sel, bt.ue, bt.ie, idx, idx, pr.up_a, pr.up_b, pr.ip_a, pr.ip_b, pr.off, pr.len, pr.hash,
                       pr.val, pr.arena, su.ptr[:-1], su.ptr[1:], su.pres, si.ptr[:-1], si.ptr[1:], si.pres,
                       st.off, st.len, st.hash, st.val, st.arena, plan.n_local[0], plan.n_local[1], plan.n_base,
                       plan.base_side, plan.base_local, plan.base_sketch, base_count, plan.out_kind, plan.out_comp,
                       plan.out_measure, plan.out_sketch, *sketches.arrays(), *counts.arrays(), room_e, room_b,
                       r_src, r_a, r_b)
            if j2 < len(sel):
                counts.reserve(max(1024, counts.ehash.shape[0]), max(1 << 16, counts.arena.shape[0]))
            j = j2
        if progress.due():
            progress.say("%s lines" % fmt_int(s.lines), "%s impressions" % fmt_int(s.records),
                         "%s bad" % fmt_int(s.bad))
    bad_log.check_fraction(s.lines, final=True)
    s.bad_description = bad_log.describe()
    learned = {}
    for si_, fname in enumerate(plan.sketch_names):
        f = spec.by_name[fname]
        learned[fname] = {"edges": sketches.edges(si_, f["bins"]), "values": sketches.n(si_),
                          "rank_error": round(sketches.rank_error(si_), 12), "sketch_k": k}
    for b in plan.count_b:
        x = plan.bases[b]
        f = x["feature"]
        kept = counts.kept(b, f["min_count"])
        learned[f["name"]] = {
            "kept": [v.decode("utf-8", "surrogateescape") for v in kept],
            "min_count": f["min_count"], "distinct": int(counts.distinct[b]), "occurrences": counts.total(b),
            "turned_away": int(counts.away[b]), "max_vocab": f["max_vocab"]}
    s.seconds = time.time() - t0
    info = {"input": source_name, "lines": s.lines, "impressions": s.records, "bad": s.bad,
            "streamfm": __version__}
    frozen = spec.to_frozen(learned, info)
    return frozen, s, learned
