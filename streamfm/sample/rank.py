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

Under skip-above a request is decided at its end (a later click may be
below), so its records wait: parsed once, as their fixed columns and lines
(``OpenRequest``), however many blocks it spans. A request of more than
``--max-request`` impressions (``MAX_REQUEST``; a request id that never
changes would hold the whole log) is cut: the rest is another request, and
each cut is reported with its line number. Under ``all`` nothing waits.

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

from ..badlines import BadLineLog, RunSummary, printable
from ..metrics import Progress, fmt_int
from ..mix import GOLDEN, splitmix64, unit
from . import logs
from .featurize import LABELED, LineWriter, LogFeaturizer, load_profiles, profile_notes

ALL = 0
SKIP_ABOVE = 1
SKIP_ABOVE_K = 2

# the most impressions a request holds under skip-above (--max-request): a request id that never
# changes would otherwise be held, whole, to the end of the log
MAX_REQUEST = 100_000

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
def select(n, ok, req_hash, pos, label, line_no, final, mode, k_below, neg_rate, seed, max_request, cont, keep,
           stats, cuts):
    """Which records become samples; returns (first record of the unfinished request, cuts).

    Records with ok = False are skipped (they neither start nor end a
    request). The last request is finished only when ``final``; its records
    are left out (the caller holds them and hands them back in front of the
    next block's). Under ``all`` (mode 0) nothing waits: every record is
    decided at once, and ``cont`` = [1 if the last request may go on in the
    next block, its id hash, 1 if it had a click] carries the counts over.
    ``max_request`` > 0: a request's (max_request + 1)-th record starts a new
    request; cuts[:returned cuts] are those records.
    keep[r] = 1 for a sample. stats += [requests, requests with a click,
    positives, negatives kept, negatives skipped (skip-above), negatives
    dropped (down-sampling)].
    """
    for r in range(n):
        keep[r] = 0
    c_open = cont[0] == 1
    c_hash = cont[1]
    c_click = cont[2] == 1
    # start of each run of one request id among the ok records
    tail = n
    ncut = 0
    r = 0
    while r < n and not ok[r]:
        r += 1
    first_ok = r
    order = np.empty(n, np.int64)
    while r < n:
        h = req_hash[r]
        s = r
        e = r + 1
        cnt = 1
        cut = False
        while e < n and (not ok[e] or req_hash[e] == h):
            if ok[e]:
                if cnt == max_request:
                    cut = True
                    break
                cnt += 1
            e += 1
        # [s, e): one request (skipping bad records); unfinished if it reaches the end
        if e >= n and not final and mode != 0:
            tail = s
            break
        if cut:
            cuts[ncut] = e
            ncut += 1
        goes_on = s == first_ok and c_open and c_hash == h  # (mode 0) the previous block's last request
        if not goes_on:
            stats[0] += 1
        has_click = False
        last = -np.inf
        for t in range(s, e):
            if ok[t] and label[t] > 0:
                has_click = True
                if pos[t] > last:
                    last = pos[t]
        if has_click and not (goes_on and c_click):
            stats[1] += 1
        if mode == 0 and not final:  # (a block without a valid record leaves cont as it was)
            cont[0] = 1 if e >= n else 0
            cont[1] = h
            cont[2] = 1 if has_click or (goes_on and c_click) else 0
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
    return tail, ncut


class OpenRequest:
    """The request still open after the blocks read so far (skip-above modes).

    Its records' fixed columns, and their fm_train lines made when their
    block was read: every record is parsed once, however many blocks its
    request spans (carrying the request's bytes to the next block parsed
    them again each block, quadratic in its length). At most --max-request
    records: ``select`` cuts a request there.
    """

    def __init__(self):
        self.n = 0
        self.hash = np.zeros(0, np.uint64)
        self.pos = np.zeros(0, np.float64)
        self.label = np.zeros(0, np.int8)
        self.line_no = np.zeros(0, np.int64)
        self.chunks = []  # (lines as a uint8 array, their ends), one per block

    def add(self, recs, bt, line_no, writer):
        """Hold records ``recs`` (ok, of one request) of Batch bt."""
        ends = np.empty(max(len(recs), 1), np.int64)
        idx = np.arange(bt.n, dtype=np.int64)
        blob = writer.run(recs, LABELED, 3, bt.label, bt.ue, bt.ie, idx, idx, bt.inline, bt.store, line_end=ends)
        self.chunks.append((np.frombuffer(blob, np.uint8), ends[:len(recs)]))
        self.hash = np.concatenate([self.hash, bt.req_hash[recs]])
        self.pos = np.concatenate([self.pos, bt.pos[recs]])
        self.label = np.concatenate([self.label, bt.label[recs]])
        self.line_no = np.concatenate([self.line_no, line_no[recs]])
        self.n += len(recs)

    def lines(self, keep):
        """The held lines whose keep[i] is set, in order (bytes)."""
        out = []
        i = 0
        for blob, ends in self.chunks:
            k = keep[i:i + len(ends)].astype(bool)
            i += len(ends)
            if k.any():
                out.append(blob[np.repeat(k, np.diff(ends, prepend=0))].tobytes())
        return b"".join(out)


class RankSummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.records = 0
        self.samples = 0
        self.bytes = 0
        self.stats = np.zeros(6, np.int64)
        self.cut = 0          # requests cut at --max-request
        self.first_cut = None  # the line of the first cut


def rank_stream(spec, stream, out_write, opts, log, fmt, negatives="all", neg_rate=1.0, seed=0, weights_write=None,
                tables=None, bad_file=None, progress_every=5.0, block_size=1 << 20, name="fm_sample rank",
                max_request=MAX_REQUEST):
    """Stream impression lines from ``stream`` to fm_train lines via ``out_write(bytes)``.

    ``opts``: streamfm.train.Options (on_error, max_bad_fraction, quiet,
    max_errors_shown); ``fmt``: tsv, csv or jsonl. Raises BadInputStop under
    the input policy. ``max_request``: the most impressions a request holds
    under skip-above (0: no limit); a longer one is cut into requests of that
    many, each cut reported with its line. Returns a RankSummary.
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
    seed64 = np.uint64(seed % (1 << 64))
    limit = max_request if mode != ALL else 0  # under all nothing waits for the rest of a request
    cont = np.zeros(3, np.uint64)
    held = OpenRequest()

    def written(labels):
        s.samples += len(labels)
        if weights_write is not None:
            weights_write(b"".join(weight_neg if x else b"1\n" for x in (labels <= 0).tolist()))

    def write_held(keep):
        k = keep[:held.n].astype(bool)
        if k.any():
            blob = held.lines(k)
            out_write(blob)
            s.bytes += len(blob)
            written(held.label[k])

    for data, first_line in src:
        bt = lf.batch(data, first_line)
        n = bt.n
        line_no = (bt.cols.line[:n] + first_line).astype(np.int64)
        s.bad += lf.report(bt, bad_log)
        s.lines += bt.cols.n_lines
        s.records += int(np.count_nonzero(bt.ok[:n]))
        bad_log.check_fraction(s.lines)
        # the open request's records go in front of the block's: select sees the request whole
        m = held.n
        ok, req, pos, label, lno = bt.ok[:n], bt.req_hash[:n], bt.pos[:n], bt.label[:n], line_no
        if m:
            ok = np.concatenate([np.ones(m, np.bool_), ok])
            req = np.concatenate([held.hash, req])
            pos = np.concatenate([held.pos, pos])
            label = np.concatenate([held.label, label])
            lno = np.concatenate([held.line_no, lno])
        keep = np.zeros(max(m + n, 1), np.uint8)
        cuts = np.empty((m + n) // limit + 1 if limit else 1, np.int64)
        tail, ncut = select(m + n, ok, req, pos, label, lno, False, mode, k_below, float(neg_rate), seed64, limit,
                            cont, keep, s.stats, cuts)
        for c in cuts[:ncut].tolist():  # a cut is never in the held part: it holds at most limit records
            _report_cut(s, bt, c - m, line_no, lf.c_req, limit, opts, log, name)
        if tail >= m:  # the open request ended here (or there was none)
            if m:
                write_held(keep)
                held = OpenRequest()
            sel = np.flatnonzero(keep[m:tail])
            if len(sel):
                idx = np.arange(n, dtype=np.int64)
                s.bytes += writer.run(sel, LABELED, 3, bt.label, bt.ue, bt.ie, idx, idx, bt.inline, bt.store,
                                      emit=out_write)
                written(bt.label[sel])
            start = tail - m
        else:  # tail == 0: the open request goes on through the whole block
            start = 0
        recs = start + np.flatnonzero(bt.ok[start:n])
        if len(recs):
            held.add(recs, bt, line_no, writer)
        if progress.due():
            progress.say("%s lines" % fmt_int(s.lines), "%s samples written" % fmt_int(s.samples),
                         "%s bad" % fmt_int(s.bad), "%s impressions/s" % progress.rate(s.lines))
    if held.n:
        keep = np.zeros(held.n, np.uint8)
        select(held.n, np.ones(held.n, np.bool_), held.hash, held.pos, held.label, held.line_no, True, mode,
               k_below, float(neg_rate), seed64, limit, cont, keep, s.stats, np.empty(1, np.int64))
        write_held(keep)
    bad_log.check_fraction(s.lines, final=True)
    s.seconds = time.time() - t0
    s.bad_description = bad_log.describe()
    return s


def _report_cut(s, bt, r, line_no, c_req, limit, opts, log, name):
    """Say that record r of Batch bt starts a new request: its request had ``limit`` records."""
    s.cut += 1
    line = int(line_no[r])
    if s.first_cut is None:
        s.first_cut = line
    if opts.quiet:
        return
    if s.cut <= opts.max_errors_shown:
        rid = printable(b"".join(bt.cols.element_bytes(r, c_req))[:60])
        log("%s: warning: input line %d: request %s has more than %s impressions: cut here, the rest is "
            "another request (--max-request)" % (name, line, rid, fmt_int(limit)))
    elif s.cut == opts.max_errors_shown + 1:
        log("%s: more requests cut; the count follows at the end" % name)


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
