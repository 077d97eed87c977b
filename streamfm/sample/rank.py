"""fm_sample rank: impressions -> fm_train lines, per request.

A request is a run of consecutive impression records with the same request
id (logs written per request are; a request id that comes back later, after
another request, starts a new request). In each request, a clicked impression
is a positive; which unclicked ones become negatives:

- ``all``: every unclicked impression;
- ``skip-above``: the unclicked impressions shown above the last click
  (position < the largest clicked position): the user looked at them and
  passed. A request without a click gives no sample;
- ``skip-above+K``: those, and the K unclicked impressions right below the
  last click (smallest positions first; equal positions in input order).

Negative down-sampling (``--neg-rate r``, 0 < r <= 1) then keeps each
negative with probability r, decided by a hash of the seed and the record's
line number (the same run gives the same lines, whatever the block size).
A kept negative stands for 1/r negatives. fm_train lines carry no weight:
the sampled data hold r times fewer negatives, so a model trained on them
learns odds p/(1-p) that are 1/r times the true odds. Correct a predicted
probability p with

    p' = p / (p + (1 - p) / r)          (``correct_probability``; the same as
                                          adding ln r to the model's bias)

``fm_sample correct --neg-rate r`` applies it to fm_predict's output, and
``--weights FILE`` writes each line's weight (1, or 1/r for a sampled
negative) for trainers that take sample weights. Output lines keep the
input order.
"""

import math
import time

import numpy as np
from numba import njit

from ..badlines import BadLineLog, RunSummary
from ..metrics import Progress, fmt_int
from ..mix import GOLDEN, splitmix64, unit
from . import logs
from .featurize import LABELED, LineWriter, LogFeaturizer, load_profiles, profile_notes

ALL = 0
SKIP_ABOVE = 1
SKIP_ABOVE_K = 2

_M2 = np.uint64(0x94D049BB133111EB)  # the line's multiplier (an odd constant of splitmix64's)


def parse_negatives(text):
    """(mode, K) of --negatives all | skip-above | skip-above+K."""
    if text == "all":
        return ALL, 0
    if text == "skip-above":
        return SKIP_ABOVE, 0
    if text.startswith("skip-above+"):
        try:
            k = int(text[len("skip-above+"):])
        except ValueError:
            k = -1
        if k >= 0:
            return SKIP_ABOVE_K, k
    raise ValueError("expected all, skip-above or skip-above+K (K a whole number), got %r" % text)


def correct_probability(p, neg_rate):
    """The click probability of a model trained with negatives kept at rate r.

        p' = p / (p + (1 - p) / r)

    ``p``: a probability or numpy array of them; ``neg_rate``: r in (0, 1].
    """
    if not 0 < neg_rate <= 1:
        raise ValueError("neg_rate must be in (0, 1], got %r" % (neg_rate,))
    p = np.asarray(p, dtype=np.float64) if not isinstance(p, float) else p
    return p / (p + (1.0 - p) / neg_rate)


@njit(inline="always")
def _unit(seed, line):
    """A uniform number in [0, 1) from (seed, line): splitmix64."""
    return unit(splitmix64(np.uint64(seed) * GOLDEN + np.uint64(line) * _M2))


@njit(cache=True, nogil=True)
def select(n, ok, req_hash, pos, label, line_no, final, mode, k_below, neg_rate, seed, keep, stats):
    """Which records become samples; returns the first record of the unfinished request.

    Records with ok = False are skipped (they neither start nor end a
    request). The last request is finished only when ``final``; its records
    are left out (the caller processes them with the next block).
    keep[r] = 1 for a sample. stats += [requests, requests with a click,
    positives, negatives kept, negatives skipped (skip-above), negatives
    dropped (down-sampling)].
    """
    for r in range(n):
        keep[r] = 0
    # start of each run of one request id among the ok records
    tail = n
    r = 0
    while r < n and not ok[r]:
        r += 1
    order = np.empty(n, np.int64)
    while r < n:
        h = req_hash[r]
        s = r
        e = r + 1
        while e < n and (not ok[e] or req_hash[e] == h):
            e += 1
        # [s, e): one request (skipping bad records); unfinished if it reaches the end
        if e >= n and not final:
            tail = s
            break
        stats[0] += 1
        has_click = False
        last = -np.inf
        for t in range(s, e):
            if ok[t] and label[t] > 0:
                has_click = True
                if pos[t] > last:
                    last = pos[t]
        if has_click:
            stats[1] += 1
        nb = 0
        for t in range(s, e):
            if not ok[t]:
                continue
            if label[t] > 0:
                keep[t] = 1
                stats[2] += 1
                continue
            if mode == 0 or (has_click and pos[t] < last):
                keep[t] = 1
            elif mode == 2 and has_click and pos[t] > last:
                order[nb] = t
                nb += 1
                stats[4] += 1
            else:
                stats[4] += 1
        if mode == 2 and nb > 0:
            # the k_below below the last click with the smallest positions (stable)
            take = min(k_below, nb)
            for a in range(take):
                best = a
                for c in range(a + 1, nb):
                    if pos[order[c]] < pos[order[best]]:
                        best = c
                tmp = order[best]
                for c in range(best, a, -1):
                    order[c] = order[c - 1]
                order[a] = tmp
                keep[order[a]] = 1
                stats[4] -= 1
        for t in range(s, e):
            if keep[t] and label[t] <= 0:
                if neg_rate < 1.0 and _unit(seed, line_no[t]) >= neg_rate:
                    keep[t] = 0
                    stats[5] += 1
                else:
                    stats[3] += 1
        r = e
        while r < n and not ok[r]:
            r += 1
    return tail


class RankSummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.records = 0
        self.samples = 0
        self.bytes = 0
        self.stats = np.zeros(6, np.int64)


def rank_stream(spec, stream, out_write, opts, log, fmt, negatives="all", neg_rate=1.0, seed=0, weights_write=None,
                tables=None, bad_file=None, progress_every=5.0, block_size=1 << 20, name="fm_sample rank"):
    """Stream impression lines from ``stream`` to fm_train lines via ``out_write(bytes)``.

    ``opts``: streamfm.train.Options (on_error, max_bad_fraction, quiet,
    max_errors_shown); ``fmt``: tsv, csv or jsonl. Raises BadInputStop under
    the input policy. Returns a RankSummary.
    """
    mode, k_below = parse_negatives(negatives)
    t0 = time.time()
    plan = spec.plan()
    profiles = load_profiles(plan, opts, log, tables=tables, bad_file=bad_file)
    profile_notes(profiles, log, opts.quiet, name)
    src = logs.BlockSource(stream, fmt, block_size=block_size)
    if fmt != "jsonl" and src.header is None:
        src.stop()
        return RankSummary()
    lf = LogFeaturizer(plan, profiles, fmt, src.header, source="input")
    if fmt != "jsonl":
        missing = lf.check_header("input")
        if not opts.quiet:
            for msg in lf.attribute_warnings(missing):
                log("%s: warning: %s" % (name, msg))
    bad_log = BadLineLog(opts, log, file=bad_file)
    writer = LineWriter(plan, profiles)
    s = RankSummary()
    weight_neg = b"%s\n" % repr(1.0 / neg_rate).encode() if neg_rate < 1 else b"1\n"
    progress = Progress(log, name, progress_every, opts.quiet)
    for data, first_line, final in src:
        bt = lf.batch(data, first_line)
        n = bt.n
        line_no = (bt.cols.line[:n] + first_line).astype(np.int64)
        keep = np.zeros(max(n, 1), np.uint8)
        tail = select(n, bt.ok, bt.req_hash, bt.pos, bt.label, line_no, final, mode, k_below, float(neg_rate),
                      np.uint64(seed % (1 << 64)), keep, s.stats)
        if tail < n:
            cut_line = int(bt.cols.line[tail])
            src.carry(data[int(bt.cols.line_start[tail]):], first_line + cut_line)
            lines_done = cut_line
        else:
            cut_line = None
            lines_done = bt.cols.n_lines
        s.bad += lf.report(bt, bad_log, upto_line=cut_line)
        s.lines += lines_done
        s.records += int(np.count_nonzero(bt.ok[:tail]))
        bad_log.check_fraction(s.lines)
        sel = np.flatnonzero(keep[:tail])
        if len(sel):
            idx = np.arange(n, dtype=np.int64)
            s.bytes += writer.run(sel, LABELED, 3, bt.label, bt.ue, bt.ie, idx, idx, bt.inline, bt.store,
                                  emit=out_write)
            s.samples += len(sel)
            if weights_write is not None:
                neg = bt.label[sel] <= 0
                weights_write(b"".join(weight_neg if x else b"1\n" for x in neg.tolist()))
        if progress.due():
            progress.say("%s lines" % fmt_int(s.lines), "%s samples written" % fmt_int(s.samples),
                         "%s bad" % fmt_int(s.bad), "%s impressions/s" % progress.rate(s.lines))
    bad_log.check_fraction(s.lines, final=True)
    s.seconds = time.time() - t0
    s.bad_description = bad_log.describe()
    return s


def correct_stream(inp, out_write, neg_rate):
    """Rewrite fm_predict lines 'LABEL P[<TAB>...]' with p corrected for down-sampling.

    Returns (lines, lines that were not 'LABEL P' and were copied unchanged).
    """
    n = 0
    odd = 0
    chunk = []
    for line in inp:
        n += 1
        parts = line.split(b" ", 1)
        ok = False
        if len(parts) == 2:
            rest = parts[1]
            cut = len(rest)
            for sepc in (b"\t", b"\n", b"\r"):
                i = rest.find(sepc)
                if 0 <= i < cut:
                    cut = i
            try:
                p = float(rest[:cut])
                ok = 0.0 <= p <= 1.0 and not math.isnan(p)
            except ValueError:
                ok = False
        if ok:
            q = p / (p + (1.0 - p) / neg_rate) if p > 0 else 0.0
            chunk.append(parts[0] + b" " + repr(q).encode() + rest[cut:])
        else:
            odd += 1
            chunk.append(line)
        if len(chunk) >= 8192:
            out_write(b"".join(chunk))
            chunk = []
    if chunk:
        out_write(b"".join(chunk))
    return n, odd
