"""What fm_sample fit learns, in bounded memory: quantiles and id counts.

QuantileSketch: a deterministic mergeable-summary sketch (Munro-Paterson /
Manku-Rajagopalan-Lindsay compactors, as in KLL with equal capacities).
Level h holds up to k values of weight 2**h. A full level is sorted and
every other value (alternately the odd and the even ones) moves up a
level with twice the weight; total weight stays n. One compaction at level
h moves the estimated rank of any point by at most 2**h, so with
``err = sum of 2**h over all compactions``, every estimated rank is within
``err`` of the true rank: the sketch's rank error is eps = err / n, tracked
exactly and reported. Level h is compacted at most n / (k 2**h) times, so
eps <= L / k for L levels in use (L = ceil(log2(n / k)) + 1): with the
default k = 8192, eps <= 0.13% at 10 million values and <= 0.17% at a
billion. Memory: 8 k bytes a level, L levels (about 1 MB at n = 1e9).
An edge for quantile q is the smallest kept value whose estimated rank
reaches q n; its true rank R satisfies #{x < edge} < q n + err and
#{x <= edge} >= q n - err. The same stream gives the same edges.

CountTable: exact occurrence counts of the values of the min-count
features, keyed by (feature, 64-bit hash of the value's bytes), in an open
addressing table. Each feature admits at most ``max_vocab`` distinct values;
occurrences of values arriving after its table is full are not counted
(they are reported, and those values end up rare). Counts of admitted
values are exact (a 64-bit hash collision between two values of one
feature, probability ~ d**2 / 2**65 for d values, would merge them).
Memory: ~40 bytes plus the value's bytes per admitted value.
"""

import numpy as np
from numba import njit

DEFAULT_K = 8192
MAX_LEVELS = 48
_EMPTY = -1
_MIX = np.uint64(0x9E3779B97F4A7C15)


# ---------------------------------------------------------------------------
# quantile sketch


@njit(cache=True, nogil=True)
def _compact(buf, fill, parity, err, s):
    k = buf.shape[2]
    levels = buf.shape[1]
    h = 0
    while h < levels - 1 and fill[s, h] >= k:
        row = np.sort(buf[s, h, :k])
        off = parity[s, h]
        parity[s, h] = 1 - off
        err[s] += 2.0 ** h
        fill[s, h] = 0
        f = fill[s, h + 1]
        for j in range(off, k, 2):
            buf[s, h + 1, f] = row[j]
            f += 1
        fill[s, h + 1] = f
        h += 1


@njit(inline="always")
def sketch_add(buf, fill, parity, err, count, s, x):
    """Add value x to sketch s (the arrays of a QuantileSketches)."""
    f = fill[s, 0]
    buf[s, 0, f] = x
    fill[s, 0] = f + 1
    count[s] += 1
    if f + 1 == buf.shape[2]:
        _compact(buf, fill, parity, err, s)


@njit(cache=True, nogil=True)
def sketch_add_many(buf, fill, parity, err, count, s, xs):
    for i in range(xs.shape[0]):
        sketch_add(buf, fill, parity, err, count, s, xs[i])


class QuantileSketches:
    """``n`` independent quantile sketches of capacity k per level (see the module doc)."""

    def __init__(self, n, k=DEFAULT_K):
        if k < 2 or k % 2:
            raise ValueError("k must be an even number >= 2")
        self.k = k
        # zero pages: levels never reached cost address space, not memory
        self.buf = np.zeros((max(n, 1), MAX_LEVELS, k), np.float64)
        self.fill = np.zeros((max(n, 1), MAX_LEVELS), np.int64)
        self.parity = np.zeros((max(n, 1), MAX_LEVELS), np.int64)
        self.err = np.zeros(max(n, 1), np.float64)
        self.count = np.zeros(max(n, 1), np.int64)

    def arrays(self):
        return self.buf, self.fill, self.parity, self.err, self.count

    def add(self, s, values):
        """Add an array of finite values to sketch s."""
        sketch_add_many(*self.arrays(), s, np.ascontiguousarray(values, dtype=np.float64))

    def n(self, s):
        return int(self.count[s])

    def rank_error(self, s):
        """eps: every estimated rank is within eps * n of the true rank."""
        n = self.count[s]
        return float(self.err[s] / n) if n else 0.0

    def summary(self, s):
        """(sorted values, their weights) held by sketch s."""
        vals = []
        wts = []
        for h in range(MAX_LEVELS):
            f = int(self.fill[s, h])
            if f:
                vals.append(self.buf[s, h, :f])
                wts.append(np.full(f, 2 ** h, np.int64))
        if not vals:
            return np.zeros(0), np.zeros(0, np.int64)
        v = np.concatenate(vals)
        w = np.concatenate(wts)
        order = np.argsort(v, kind="stable")
        return v[order], w[order]

    def quantiles(self, s, qs):
        """For each q: the smallest held value whose estimated rank reaches q n."""
        v, w = self.summary(s)
        if not len(v):
            return []
        cum = np.cumsum(w)
        n = int(cum[-1])
        out = []
        for q in qs:
            i = int(np.searchsorted(cum, q * n, side="left"))
            out.append(float(v[min(i, len(v) - 1)]))
        return out

    def edges(self, s, bins):
        """Strictly increasing edges of ``bins`` quantile buckets (ties merge buckets)."""
        qs = [j / bins for j in range(1, bins)]
        out = []
        for x in self.quantiles(s, qs):
            if not out or x > out[-1]:
                out.append(x)
        return out


# ---------------------------------------------------------------------------
# exact counts with a cap


@njit(inline="always")
def pair_home(h, b, mask):
    """The first slot of (value hash h, feature b) in a table of mask + 1
    slots: fm_sample's dictionaries of (feature, value) pairs all probe from here."""
    return np.int64((h ^ (np.uint64(b + 1) * _MIX)) & np.uint64(mask))


@njit(inline="always")
def count_add(slots, ehash, efeat, ecount, eoff, elen, arena, used, distinct, cap, away, b, h,
              src, a, ln):
    """Count one occurrence of value src[a:a+ln] (hash h) of feature b.

    used = [entries, arena bytes]; the caller guarantees room for one more
    entry and ln more bytes.
    """
    mask = slots.shape[0] - 1
    i = pair_home(h, b, mask)
    while True:
        e = slots[i]
        if e == _EMPTY:
            break
        if ehash[e] == h and efeat[e] == b:
            ecount[e] += 1
            return
        i = (i + 1) & mask
    if distinct[b] >= cap[b]:
        away[b] += 1
        return
    e = used[0]
    used[0] = e + 1
    slots[i] = e
    ehash[e] = h
    efeat[e] = b
    ecount[e] = 1
    p = used[1]
    eoff[e] = p
    elen[e] = ln
    for t in range(ln):
        arena[p + t] = src[a + t]
    used[1] = p + ln
    distinct[b] += 1


@njit(cache=True, nogil=True)
def _reindex(slots, ehash, efeat, n):
    mask = slots.shape[0] - 1
    for e in range(n):
        i = pair_home(ehash[e], efeat[e], mask)
        while slots[i] != _EMPTY:
            i = (i + 1) & mask
        slots[i] = e


class CountTable:
    """Exact counts of (feature, value) for the min-count features (module doc)."""

    def __init__(self, n_features, caps):
        self.cap = np.asarray(caps, dtype=np.int64).reshape(max(n_features, 1))
        self.distinct = np.zeros(max(n_features, 1), np.int64)
        self.away = np.zeros(max(n_features, 1), np.int64)
        self.used = np.zeros(2, np.int64)
        self._alloc(1024, 1 << 16)

    def _alloc(self, entries, nbytes):
        self.slots = np.full(_pow2(int(entries / 0.7) + 1), _EMPTY, np.int64)
        self.ehash = np.zeros(entries, np.uint64)
        self.efeat = np.zeros(entries, np.int32)
        self.ecount = np.zeros(entries, np.int64)
        self.eoff = np.zeros(entries, np.int64)
        self.elen = np.zeros(entries, np.int32)
        self.arena = np.zeros(nbytes, np.uint8)

    def reserve(self, entries, nbytes):
        """Room for ``entries`` more values and ``nbytes`` more value bytes."""
        n, used_b = int(self.used[0]), int(self.used[1])
        if n + entries > self.ehash.shape[0]:
            cap = max(n + entries, 2 * self.ehash.shape[0])
            old = (self.ehash, self.efeat, self.ecount, self.eoff, self.elen)
            self.slots = np.full(_pow2(int(cap / 0.7) + 1), _EMPTY, np.int64)
            self.ehash, self.efeat, self.ecount, self.eoff, self.elen = (
                _grow(a, cap) for a in old)
            _reindex(self.slots, self.ehash, self.efeat, n)
        if used_b + nbytes > self.arena.shape[0]:
            self.arena = _grow(self.arena, max(used_b + nbytes, 2 * self.arena.shape[0]))

    def room(self):
        """(entries, bytes) that fit before the next reserve."""
        return (int(self.ehash.shape[0] - self.used[0]), int(self.arena.shape[0] - self.used[1]))

    def arrays(self):
        return (self.slots, self.ehash, self.efeat, self.ecount, self.eoff, self.elen, self.arena,
                self.used, self.distinct, self.cap, self.away)

    def kept(self, b, min_count):
        """Values (bytes) of feature b counted at least min_count times, sorted."""
        n = int(self.used[0])
        sel = np.flatnonzero((self.efeat[:n] == b) & (self.ecount[:n] >= min_count))
        vals = [bytes(self.arena[self.eoff[e]:self.eoff[e] + self.elen[e]]) for e in sel]
        return sorted(vals)

    def total(self, b):
        n = int(self.used[0])
        return int(self.ecount[:n][self.efeat[:n] == b].sum())


def _pow2(n):
    p = 1024
    while p < n:
        p *= 2
    return p


def _grow(a, n):
    out = np.zeros(n, a.dtype)
    out[: a.shape[0]] = a
    return out
