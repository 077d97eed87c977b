"""Merging FM models trained in parallel: the engine-independent core
(docs/design.md, "Merging models").

Training on several machines runs in rounds. A round starts from one shared
model, the *base*; every partition of the data trains a private copy of it
on its lines (``train_partition``) and keeps only the rows it changed, each
with the base's n of that row: a ``State``. States are merged (``merge``)
and the result is written over the base (``Base.apply``), which starts the
next round. Tasks hold no global state: a task is a function of the base
and its lines, so a failed one is simply run again.

The merge rule, per coordinate (w of each feature, each v_f, the bias), over
the states that hold the coordinate, with ``n0`` the base's n and ``n_p``,
``z_p`` partition p's FTRL state and ``theta_p`` its weight::

    dn_p  = n_p - n0                  (0: the partition never trained it)
    n     = n0 + sum_p dn_p
    theta = sum_p dn_p theta_p / sum_p dn_p
    z     = the z for which FTRL's closed form gives theta at n

so training continues from a merged model (``-im``) as it would from one
that reached ``theta`` with that n. A coordinate trained by one partition
only keeps that partition's numbers exactly; one trained by none keeps the
base's. The sums run as weighted running means over the states in any
order: ``merge`` is commutative and associative up to float rounding, and a
merged State is a State again (a tree of merges equals one merge).

Features are joined by their names' bytes (the unkeyed init hash, checked by
byte comparison), never by the feature-table hashes of the models, so
models under different table hash keys merge as well; the result is indexed
under the base's key (docs/design.md, "Merging models", Hash keys).
"""

import itertools
import math
import os
import threading

import numpy as np
from numba import njit

from . import ftrl, jit
from .errors import BadInputError, ModelFormatError, ParameterError
# the names' index: the table's unkeyed name hash and its probe, names compared byte by byte
from .jit import prefetch1
from .table import EMPTY, home_slot, init_hash_bytes, same_bytes

W, WN, WZ, VN = ftrl.W, ftrl.WN, ftrl.WZ, ftrl.VN


# merge kernels' error codes
_OK, _ERR_BASE_N, _ERR_BELOW_BASE = 0, 1, 2


# ---------------------------------------------------------------------------
# The name index: names (bytes in one arena) -> rows, joined by content
#
# A slot holds a row and, above it, the top bits of its name's hash (a tag): a
# probe passing a slot of another name rejects it on the tag alone, without
# touching that row's name. Names are hashed first, in parallel (hashing is
# most of a join's arithmetic), then the index is probed with the slots (and
# a hit's name) prefetched some rows ahead: the index is far larger than the
# caches, and a probe waits on memory otherwise.

_AHEAD = 16  # rows prefetched ahead: about what a core has in flight


@njit(inline="always")
def _tag(h, bits):
    """The part of a slot above its ``bits`` row bits: h's top bits (the sign bit stays 0, never EMPTY)."""
    return np.int64((h >> np.uint64(bits + 1)) << np.uint64(bits))


@njit(inline="always")
def _home_row(slots, h, mask, bits):
    """The row in h's home slot when its tag is h's (a likely hit), else -1: what a prefetch needs."""
    s = slots[home_slot(h, mask)]
    if s != EMPTY and (s >> bits) << bits == _tag(h, bits):
        return s & ((np.int64(1) << bits) - 1)
    return -1


@njit(inline="always")
def _find(slots, bits, arena, name_off, h, src_arena, a, b):
    """(slot, row): the indexed row named src_arena[a:b] (hash h) and its slot, or
    (the empty slot that ends h's probe, -1) when no indexed row has that name."""
    mask = slots.shape[0] - 1
    rowmask = (np.int64(1) << bits) - 1
    tag = _tag(h, bits)
    i = home_slot(h, mask)
    while True:
        s = slots[i]
        if s == EMPTY:
            return i, np.int64(-1)
        if s & ~rowmask == tag:
            o = s & rowmask
            if same_bytes(arena, name_off[o], name_off[o + 1], src_arena, a, b):
                return i, o
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _hash_names(arena, name_off, r0, r1, lo, out):
    """out[r - lo] = the unkeyed init hash of row r's name, for r0 <= r < r1."""
    for r in range(r0, r1):
        out[r - lo] = init_hash_bytes(arena, name_off[r], name_off[r + 1])


@njit(cache=True, nogil=True)
def _index_rows(slots, bits, arena, name_off, hashes, r0, r1):
    """Put rows r0..r1-1 (their hashes: ``hashes[r - r0]``) in the index; returns a row
    whose name an indexed row holds (-1: none)."""
    mask = slots.shape[0] - 1
    for r in range(r0, r1):
        if r + _AHEAD < r1:
            prefetch1(slots, home_slot(hashes[r + _AHEAD - r0], mask))
        h = hashes[r - r0]
        i, o = _find(slots, bits, arena, name_off, h, arena, name_off[r], name_off[r + 1])
        if o >= 0:
            return r
        slots[i] = _tag(h, bits) | r
    return -1


@njit(cache=True, nogil=True)
def _probe(slots, bits, arena, name_off, src_arena, src_off, hashes, lo, r0, r1, rows):
    """rows[r] = the index's row named as source row r, or -1, for r0 <= r < r1
    (``hashes[r - lo]``: the names' hashes). Reads only: ranges run in parallel."""
    mask = slots.shape[0] - 1
    half = _AHEAD // 2
    for r in range(r0, r1):
        # three stages in flight: the slot of a row _AHEAD on, the name offsets of a
        # likely hit half as far, the name bytes of one a quarter as far
        if r + _AHEAD < r1:
            prefetch1(slots, home_slot(hashes[r + _AHEAD - lo], mask))
        if r + half < r1:
            o = _home_row(slots, hashes[r + half - lo], mask, bits)
            if o >= 0:
                prefetch1(name_off, o)
        if r + half // 2 < r1:
            o = _home_row(slots, hashes[r + half // 2 - lo], mask, bits)
            if o >= 0:
                prefetch1(arena, name_off[o])
        _, o = _find(slots, bits, arena, name_off, hashes[r - lo], src_arena, src_off[r], src_off[r + 1])
        rows[r] = o
    return 0


@njit(cache=True, nogil=True)
def _add_new(slots, bits, arena, name_off, meta, src_arena, src_off, hashes, lo, new, rows):
    """Append and index the source rows ``new`` (ascending; names the index lacked),
    setting their ``rows``; the caller reserved room. Returns the first of them
    whose name an earlier one holds (a name held twice), or -1."""
    mask = slots.shape[0] - 1
    for j in range(new.shape[0]):
        if j + _AHEAD < new.shape[0]:
            prefetch1(slots, home_slot(hashes[new[j + _AHEAD] - lo], mask))
        r = new[j]
        h = hashes[r - lo]
        a = src_off[r]
        b = src_off[r + 1]
        i, o = _find(slots, bits, arena, name_off, h, src_arena, a, b)
        if o >= 0:
            # the probe found no such name among the rows indexed before: a match is one of these
            return r
        found = meta[0]
        pos = meta[1]
        for t in range(b - a):
            arena[pos + t] = src_arena[a + t]
        name_off[found + 1] = pos + b - a
        slots[i] = _tag(h, bits) | found
        meta[0] = found + 1
        meta[1] = pos + b - a
        rows[r] = found
    return -1


@njit(cache=True, nogil=True)
def _same_prefix(arena, name_off, n_rows, src_arena, src_off, src_n):
    """How many leading rows two name lists share byte for byte (row 0, the bias, always)."""
    m = min(n_rows, src_n)
    r = 1
    while r < m and same_bytes(arena, name_off[r], name_off[r + 1], src_arena, src_off[r], src_off[r + 1]):
        r += 1
    return min(r, m)


def _hashes(arena, name_off, r0, r1):
    """The names' hashes of rows r0..r1-1, in parallel."""
    out = np.empty(r1 - r0, np.uint64)
    jit.over_rows(lambda a, b: _hash_names(arena, name_off, r0 + a, r0 + b, r0, out), r1 - r0)
    return out


class _Names:
    """A growable set of names (row 0 = the bias, never looked up) with its index.

    The index (slots) is built only when a join needs it: models
    continued from one base list their shared features in the same order, so
    a join mostly finds the set's names as a prefix of the source's (compared
    byte for byte) and appends the rest, which are new. Names held twice are
    found when the index is built; a merged model's own table checks again.
    """

    def __init__(self, arena, name_off, n_rows, extra_rows=0, extra_bytes=0):
        used = int(name_off[n_rows])
        self.arena = np.zeros(max(used + extra_bytes, 16), np.uint8)
        self.arena[:used] = arena[:used]
        self.name_off = np.zeros(n_rows + extra_rows + 1, np.int64)
        self.name_off[: n_rows + 1] = name_off[: n_rows + 1]
        self.meta = np.array([n_rows, used], np.int64)
        self.slots = None
        self.bits = 0  # a slot's row bits: every row the set has room for fits
        self.index_lo = self.indexed = 1  # rows index_lo..indexed-1 are in the index

    @property
    def n_rows(self):
        return int(self.meta[0])

    @property
    def capacity(self):
        return self.name_off.shape[0] - 1

    def name(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]]).decode("utf-8", "backslashreplace")

    def reserve(self, rows, nbytes):
        n, used = self.n_rows, int(self.meta[1])
        if n + rows > self.capacity:
            self.name_off = _grown(self.name_off, max(n + rows, 2 * self.capacity) + 1, n + 1)
        if used + nbytes > self.arena.shape[0]:
            self.arena = _grown(self.arena, max(used + nbytes, 2 * self.arena.shape[0]), used)

    def _append(self, arena, name_off, r0, r1):
        """Append source rows r0..r1-1, names the set does not hold (the caller reserved
        room): their bytes are one run in the source's arena, copied at once."""
        n, used = self.n_rows, int(self.meta[1])
        a0, a1 = int(name_off[r0]), int(name_off[r1])
        self.arena[used:used + a1 - a0] = arena[a0:a1]
        self.name_off[n + 1:n + 1 + r1 - r0] = name_off[r0 + 1:r1 + 1] - (a0 - used)
        self.meta[0] = n + r1 - r0
        self.meta[1] = used + a1 - a0

    def _index(self, lo):
        """Bring the index up to every row from ``lo`` on, with room for the reserved ones."""
        n = self.n_rows
        lo = max(lo, 1)
        cap = self.capacity
        # sized for the rows from lo on (those it can hold): a smaller table, fewer cache misses
        if (self.slots is None or lo < self.index_lo or 2 * (cap - self.index_lo) > self.slots.shape[0]
                or cap >> self.bits):
            self.slots = np.full(_slots_for(cap - lo), EMPTY, np.int64)
            self.bits = max(cap.bit_length(), 1)
            self.index_lo = self.indexed = lo
        if n > self.indexed:
            dup = _index_rows(self.slots, self.bits, self.arena, self.name_off,
                              _hashes(self.arena, self.name_off, self.indexed, n), self.indexed, n)
            if dup >= 0:
                err = ModelFormatError("feature %r appears twice" % self.name(dup))
                err.row = dup
                raise err
        self.indexed = n

    def join(self, arena, name_off, n_rows, insert):
        """Rows (in this set) of the names ``arena[name_off[r]:name_off[r+1]]``, r < n_rows;
        a name the set lacks is added when ``insert``, else gets row -1."""
        n = self.n_rows
        if insert:
            self.reserve(n_rows, int(name_off[n_rows]))
        rows = np.empty(n_rows, np.int64)
        p = _same_prefix(self.arena, self.name_off, n, arena, name_off, n_rows)
        rows[:p] = np.arange(p)
        if p == n_rows:
            return rows
        if p == n:  # the source continues this set: its other names are new here
            if insert:
                self._append(arena, name_off, p, n_rows)
                rows[p:] = np.arange(n, n + n_rows - p)
            else:
                rows[p:] = -1
            return rows
        # the source's names past the shared prefix differ from its names before it, so
        # they can only be among this set's rows from p on: only those need the index
        self._index(p)
        hashes = _hashes(arena, name_off, p, n_rows)
        jit.over_rows(lambda r0, r1: _probe(self.slots, self.bits, self.arena, self.name_off, arena, name_off,
                                            hashes, p, p + r0, p + r1, rows), n_rows - p)
        if insert:
            new = np.flatnonzero(rows[p:] < 0) + p
            dup = _add_new(self.slots, self.bits, self.arena, self.name_off, self.meta, arena, name_off, hashes,
                           p, new, rows)
            if dup >= 0:
                raise ModelFormatError("feature %r appears twice"
                                       % bytes(arena[name_off[dup]:name_off[dup + 1]]).decode("utf-8", "replace"))
        self.indexed = self.n_rows
        return rows

    def names(self):
        n = self.n_rows
        return self.arena[: self.name_off[n]].copy(), self.name_off[: n + 1].copy()

    def name_bytes(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]])


def _holds_twice(m, name):
    """Whether the Base ``m`` lists ``name`` (bytes) more than once (an error's slow path)."""
    lens = np.diff(m.name_off[: m.n_rows + 1])
    hits = 0
    for r in np.flatnonzero(lens == len(name)):
        if bytes(m.arena[m.name_off[r]:m.name_off[r + 1]]) == name:
            hits += 1
    return hits > 1


def _slots_for(n):
    size = 1024
    while size < 2 * n:
        size *= 2
    return size


def _grown(a, cap, keep):
    out = np.zeros((cap,) + a.shape[1:], a.dtype)
    out[:keep] = a[:keep]
    return out


@njit(cache=True, nogil=True)
def _gather_names(arena, name_off, idx, out_off, out):
    for j in range(idx.shape[0]):
        s = name_off[idx[j]]
        ln = name_off[idx[j] + 1] - s
        out_off[j + 1] = out_off[j] + ln
        for t in range(ln):
            out[out_off[j] + t] = arena[s + t]


def _take_names(arena, name_off, idx):
    lens = name_off[idx + 1] - name_off[idx]
    out = np.empty(int(lens.sum()), np.uint8)
    off = np.zeros(idx.shape[0] + 1, np.int64)
    _gather_names(arena, name_off, idx, off, out)
    return out, off


# ---------------------------------------------------------------------------
# States and the merge rule


KEEP_BAD = 100  # bad lines a State (and a distributed run's report) keeps by place

# the sums a merge keeps per coordinate, over the states that trained it
ACC_DN, ACC_MEAN, ACC_ZSUM, ACC_K, ACC_Z = range(5)
N_ACC = 5
RULES = {"blend": 0, "dn": 1, "sum": 2, "blend-each": 3}
_BLEND, _DN, _SUM, _EACH = 0, 1, 2, 3
COUPLING = 3.0


class State:
    """The rows of a model one or more partitions changed, relative to a base.

    Attributes: ``arena``/``name_off`` (the rows' names; row 0 is the bias),
    ``params`` (FTRL rows in ``ftrl.py``'s layout: w, w_n, w_z, v_n[k],
    v_z[k]), ``n0``/``z0`` (float64, one column per coordinate w, v_1..v_k:
    the base's n and z as its FTRL rows hold them; 0 for a feature the base
    does not hold), ``k``, ``hp`` (the 9 FTRL hyper-parameters,
    ``ftrl.HP_NAMES``), ``fvs``, ``seed``, and the counts of the lines that
    made it: ``lines``, ``samples``, ``bad``, ``loss_sum`` (progressive
    logloss times samples), ``by_reason`` ({reason: bad lines}) and
    ``bad_lines`` (the first ``KEEP_BAD`` bad lines by place: tuples
    (partition, line in the partition from 1, reason, byte column from 1,
    text)).

    A partition's State holds its trained rows. A merged State also holds,
    per coordinate, ``cnt`` (the partitions that trained it) and, where
    cnt >= 2, ``acc`` (their sums, ``ACC_*``; merged by its ``rule``); its
    ``params`` are exact where cnt <= 1 and are computed from the sums by
    ``finished_params`` (``Base.apply``).
    Keeping sums rather than results is what makes merging associative.
    States pickle compactly (numpy arrays and numbers).
    """

    def __init__(self, arena, name_off, params, n0, z0, k, hp, fvs, seed, lines=0, samples=0, bad=0,
                 loss_sum=0.0, cnt=None, acc=None, rule="blend", by_reason=None, bad_lines=()):
        self.arena = arena
        self.name_off = name_off
        self.params = params
        self.n0 = n0
        self.z0 = z0
        self.k = int(k)
        self.hp = np.asarray(hp, np.float64)
        self.fvs = bool(fvs)
        self.seed = int(seed)
        self.lines = int(lines)
        self.samples = int(samples)
        self.bad = int(bad)
        self.loss_sum = float(loss_sum)
        self.cnt = cnt
        self.acc = acc
        self.rule = rule
        self.by_reason = dict(by_reason or {})
        self.bad_lines = sorted(bad_lines)[:KEEP_BAD]

    def __setstate__(self, state):
        state.setdefault("by_reason", {})  # a State pickled before they were kept
        state.setdefault("bad_lines", [])
        self.__dict__.update(state)

    @property
    def n_rows(self):
        return self.params.shape[0]

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def logloss(self):
        """Progressive logloss of the samples that made the state (NaN if none)."""
        return self.loss_sum / self.samples if self.samples else float("nan")

    def name(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]]).decode("utf-8", "backslashreplace")

    def finished_params(self):
        """The FTRL rows of the merged model: the rule applied where two or more partitions trained."""
        if self.acc is None:
            return self.params
        out = self.params.copy()
        jit.over_rows(lambda o0, o1: _finish(o0, o1, self.k, self.hp, RULES[self.rule], COUPLING, out, self.n0,
                                             self.z0, self.cnt, self.acc), self.n_rows)
        return out

    def __repr__(self):
        return "State(%d rows, k=%d, %d samples)" % (self.n_rows - 1, self.k, self.samples)


def _check_same(first, s, what="", first_is="the first"):
    """ParameterError unless ``s`` has ``first``'s k, hyper-parameters and fvs;
    ``what`` starts the message (e.g. the path of the model that differs),
    ``first_is`` names ``first`` in it."""
    pre = what + ": " if what else ""
    if s.k != first.k:
        raise ParameterError("%scannot merge models with %d and %d factors" % (pre, first.k, s.k))
    if not np.array_equal(s.hp, first.hp):
        diff = ["%s %g (%s: %g)" % (n, b, first_is, a) for n, a, b in zip(ftrl.HP_NAMES, first.hp, s.hp) if a != b]
        raise ParameterError("%scannot merge models with different hyper-parameters: %s" % (pre, ", ".join(diff)))
    if s.fvs != first.fvs:
        raise ParameterError("%scannot merge models with different fvs" % pre)


@njit(inline="always")
def _coord(c, k, hp):
    """(n column, z column, alpha, beta, l1, l2) of coordinate c (0: w, 1+f: v_f)."""
    if c == 0:
        return WN, WZ, hp[0], hp[1], hp[2], hp[3]
    return VN + c - 1, VN + k + c - 1, hp[4], hp[5], hp[6], hp[7]


@njit(inline="always")
def contraction(n0, n1, alpha, beta, l2):
    r"""K = \int_{n0}^{n1} dn / D(n), D(n) = l2 + (beta + sqrt(n)) / alpha.

    With g^2 standing for the curvature a gradient comes with, FTRL shrinks
    a persistent error of a coordinate by about exp(-K) while its n goes
    from n0 to n1 (docs/design.md, "Merging models"). With u = sqrt(n), c = alpha l2 + beta:
    K = 2 alpha [u1 - u0 - c ln((u1 + c) / (u0 + c))].
    """
    c = alpha * l2 + beta
    u0 = math.sqrt(n0)
    u1 = math.sqrt(n1)
    return 2.0 * alpha * ((u1 - u0) - c * math.log((u1 + c) / (u0 + c)))


@njit(inline="always")
def z_for_weight(theta, n, z_hint, alpha, beta, l1, l2):
    """The FTRL z whose weight at n is theta (the inverse of ftrl.weight_from_state).

    For theta != 0, from theta = -(z - sgn(z) l1) / (l2 + (beta + sqrt(n)) / alpha):
    z = -theta (l2 + (beta + sqrt(n)) / alpha) - sgn(theta) l1. Every z in
    [-l1, l1] gives theta = 0: then ``z_hint`` clipped to that interval.
    """
    if theta == 0.0:
        return min(max(z_hint, -l1), l1)
    d = l2 + (beta + math.sqrt(n)) / alpha
    return -theta * d - (l1 if theta > 0.0 else -l1)


@njit(inline="always")
def _add_trained(acc, o, c, n, z, bn, bz, alpha, beta, l1, l2, each):
    """Add one partition's training of coordinate c of out row o (its n, z; the base's bn, bz) to the sums."""
    theta = ftrl.weight_from_state(z, n, alpha, beta, l1, l2)
    dn = n - bn
    acc[o, c, ACC_DN] += dn
    acc[o, c, ACC_MEAN] += dn * theta
    acc[o, c, ACC_ZSUM] += z - (bz if bn > 0.0 else 0.0)
    if each:
        acc[o, c, ACC_K] += dn * contraction(bn, n, alpha, beta, l2)
    acc[o, c, ACC_Z] += dn * z


@njit(cache=True, nogil=True)
def _accumulate(r0, r1, rows, params, n0, z0, has_acc, s_cnt, s_acc, k, hp, each, seen, out_params, out_n0,
                out_z0, cnt, acc):
    """Add one state's rows r0..r1-1 (row r goes to out row rows[r]) to a running merge.

    Per coordinate c (0: w, 1+f: v_f) of out row o: cnt (partitions that
    trained it: dn = n - n0 > 0) and, once two have, acc: the sums over them
    of dn, of dn theta, of z - z0, of dn K(n0, n) (``each``: the blend-each
    rule needs it) and of dn z. While one partition has, out_params holds its
    raw (n, z) (and w), so a coordinate one partition trained keeps its
    numbers exactly and costs nothing more; the second one adds both to the
    sums. A merged state (``has_acc``) brings its own counts and sums (raw
    numbers where its count is 1). One no partition trained holds the
    element-wise maximum of the states' values (they are equal but for -fvs
    re-draws of an untrained v). Returns (code, row): _ERR_BASE_N when two
    states disagree on a base (n, z), _ERR_BELOW_BASE when a state's n is
    below the base's.
    """
    for r in range(r0, r1):
        o = rows[r]
        first = not seen[o]
        for c in range(k + 1):
            ncol, zcol, alpha, beta, l1, l2 = _coord(c, k, hp)
            n = np.float64(params[r, ncol])
            z = np.float64(params[r, zcol])
            bn = n0[r, c]
            bz = z0[r, c]
            if first:
                out_n0[o, c] = bn
                out_z0[o, c] = bz
            elif out_n0[o, c] != bn or out_z0[o, c] != bz:
                return _ERR_BASE_N, r
            dn = n - bn
            if has_acc:
                sc = s_cnt[r, c]
            elif dn < 0.0:
                return _ERR_BELOW_BASE, r
            else:
                sc = 1 if dn > 0.0 else 0
            if sc > 0:
                had = cnt[o, c]
                if had == 0 and sc == 1:
                    out_params[o, ncol] = params[r, ncol]
                    out_params[o, zcol] = params[r, zcol]
                    if c == 0:
                        out_params[o, W] = params[r, W]
                else:
                    if had == 1:  # the partition that trained it so far joins the sums first
                        _add_trained(acc, o, c, np.float64(out_params[o, ncol]), np.float64(out_params[o, zcol]),
                                     bn, bz, alpha, beta, l1, l2, each)
                    if sc == 1:
                        _add_trained(acc, o, c, n, z, bn, bz, alpha, beta, l1, l2, each)
                    else:
                        for j in range(N_ACC):
                            acc[o, c, j] += s_acc[r, c, j]
                cnt[o, c] = had + sc
            elif cnt[o, c] == 0:
                if first:
                    out_params[o, ncol] = params[r, ncol]
                    out_params[o, zcol] = params[r, zcol]
                    if c == 0:
                        out_params[o, W] = params[r, W]
                else:
                    out_params[o, zcol] = max(out_params[o, zcol], params[r, zcol])
                    if c == 0:
                        out_params[o, W] = max(out_params[o, W], params[r, W])
        seen[o] = True
    return _OK, -1


@njit(inline="always")
def _merged_coord(rule, coupling, bn, bz, s_dn, s_mean, s_zsum, s_k, s_z, alpha, beta, l1, l2):
    """(n, z, theta) of a coordinate two or more partitions trained, from their sums (``ACC_*``)
    and the base's (bn, bz): n = n0 + sum dn, the rule's weight theta, and the z
    that FTRL's closed form maps to theta.

    blend: theta = (1 - lam) theta_sum + lam theta_mean, lam = 1 - exp(-coupling K),
    K = K(n0, n0 + sum dn), the contraction of one stream of all the increments
    (blend-each: K the dn-weighted mean of the partitions' K(n0, n_p)); dn:
    theta_mean; sum: theta_sum. theta_sum is FTRL's weight at (z0 + sum (z_p - z0), n),
    theta_mean = sum dn_p theta_p / sum dn_p (= theta0 + the mean move; summed
    as weights, not moves, so partitions that all reached 0 give exactly 0).
    """
    n = bn + s_dn
    zs = (bz if bn > 0.0 else 0.0) + s_zsum
    if rule == _SUM:
        return n, zs, ftrl.weight_from_state(zs, n, alpha, beta, l1, l2)
    tm = s_mean / s_dn
    zm = s_z / s_dn
    if rule == _DN:
        theta = tm
        hint = zm
    else:
        if rule == _EACH:  # how far each partition went (diverges at 8 partitions)
            lam = 1.0 - math.exp(-coupling * s_k / s_dn)
        else:  # how far one stream of all the partitions' increments goes
            lam = 1.0 - math.exp(-coupling * contraction(bn, n, alpha, beta, l2))
        theta = (1.0 - lam) * ftrl.weight_from_state(zs, n, alpha, beta, l1, l2) + lam * tm
        hint = (1.0 - lam) * zs + lam * zm
    return n, z_for_weight(theta, n, hint, alpha, beta, l1, l2), theta


@njit(cache=True, nogil=True)
def _finish(o0, o1, k, hp, rule, coupling, out_params, out_n0, out_z0, cnt, acc):
    """The merged coordinates of rows o0..o1-1 (those two or more partitions trained: ``_merged_coord``)."""
    for o in range(o0, o1):
        for c in range(k + 1):
            if cnt[o, c] < 2:
                continue
            ncol, zcol, alpha, beta, l1, l2 = _coord(c, k, hp)
            a = acc[o, c]
            n, z, theta = _merged_coord(rule, coupling, out_n0[o, c], out_z0[o, c], a[ACC_DN], a[ACC_MEAN],
                                        a[ACC_ZSUM], a[ACC_K], a[ACC_Z], alpha, beta, l1, l2)
            out_params[o, ncol] = n
            out_params[o, zcol] = z
            if c == 0:
                out_params[o, W] = theta


class Merger:
    """A running merge: ``add`` States one at a time (each may be freed after), then ``result``.

    ``merge(states)`` is a Merger over the list (the engines' merge of a
    round's States; ``merge_models``, what ``fm_dump merge`` runs, gives the
    same numbers from whole models in one pass). ``rule``: see ``merge``.
    """

    _ARRAYS = ("params", "n0", "z0", "cnt", "acc", "seen")

    def __init__(self, rule="blend"):
        if rule not in RULES:
            raise ParameterError("merge rule must be one of %s, not %r" % (", ".join(RULES), rule))
        self.rule = rule
        self.first = None
        self.names = None
        self.count = 0

    def add(self, state):
        if self.names is None and self.first is None and self.count:
            raise ParameterError("this merge has ended (result() was called): start a new Merger")
        if self.first is None:
            self.first = state
            k = state.k
            self.names = _Names(np.frombuffer(b"bias", np.uint8), np.array([0, 4], np.int64), 1,
                                extra_rows=state.n_rows, extra_bytes=int(state.name_off[-1]))
            # twice the first state's rows: room for the others' new features without a copy
            # (zeros are only address space until a merge writes them)
            cap = max(2 * state.n_rows, 1)
            self.params = np.zeros((cap, ftrl.n_cols(k)), state.dtype)
            self.n0 = np.zeros((cap, k + 1))
            self.z0 = np.zeros((cap, k + 1))
            self.cnt = np.zeros((cap, k + 1), np.int32)
            self.acc = np.zeros((cap, k + 1, N_ACC))
            self.seen = np.zeros(cap, np.bool_)
            self.totals = [0, 0, 0, 0.0]
            self.by_reason = {}
            self.bad_lines = []
        else:
            _check_same(self.first, state)
        rows = self.names.join(state.arena, state.name_off, state.n_rows, insert=True)
        self._fit(self.names.n_rows)
        params = state.params.astype(self.params.dtype, copy=False)
        has_acc = state.acc is not None
        if has_acc and state.rule != self.rule:
            raise ParameterError("a state merged by rule %r cannot join a merge by rule %r" % (state.rule, self.rule))
        s_cnt = state.cnt if has_acc else np.zeros((0, 0), np.int32)
        s_acc = state.acc if has_acc else np.zeros((0, 0, 0))
        each = self.rule == "blend-each"
        # the rows of one state go to distinct merged rows: its row ranges merge in parallel
        done = jit.over_rows(lambda r0, r1: _accumulate(r0, r1, rows, params, state.n0, state.z0, has_acc, s_cnt,
                                                        s_acc, state.k, state.hp, each, self.seen, self.params,
                                                        self.n0, self.z0, self.cnt, self.acc), rows.shape[0])
        code, r = next((d for d in done if d[0] != _OK), (_OK, -1))
        if code == _ERR_BASE_N:
            raise ModelFormatError("cannot merge: the models were not trained from the same base "
                                   "(feature %r starts from different n, z)" % state.name(r))
        if code == _ERR_BELOW_BASE:
            raise ModelFormatError("cannot merge: feature %r has less training (n) than in the base: "
                                   "the model does not continue that base" % state.name(r))
        self.count += 1
        t = self.totals
        t[0] += state.lines
        t[1] += state.samples
        t[2] += state.bad
        t[3] += state.loss_sum
        for r, c in state.by_reason.items():
            self.by_reason[r] = self.by_reason.get(r, 0) + c
        self.bad_lines = sorted(self.bad_lines + list(state.bad_lines))[:KEEP_BAD]

    def _fit(self, n):
        cap = self.params.shape[0]
        if n <= cap:
            return
        cap = max(n, 2 * cap)
        for name in self._ARRAYS:
            a = getattr(self, name)
            setattr(self, name, _grown(a, cap, a.shape[0]))

    def result(self):
        """The merged State (rows: the union of the states' rows, in first-seen order).

        This ends the merge: the State holds the Merger's arrays (no copy of
        the hundreds of MB a million features take), so no State is added after.
        """
        if self.first is None:
            raise ParameterError("nothing to merge")
        s = self.first
        n = self.names.n_rows
        arena, off = self.names.names()
        t = self.totals
        out = State(arena, off, self.params[:n], self.n0[:n], self.z0[:n], s.k, s.hp, s.fvs, s.seed,
                    lines=t[0], samples=t[1], bad=t[2], loss_sum=t[3], cnt=self.cnt[:n], acc=self.acc[:n],
                    rule=self.rule, by_reason=self.by_reason, bad_lines=self.bad_lines)
        self.first = self.names = None
        for name in self._ARRAYS:
            setattr(self, name, None)
        return out


def merge(states, rule="blend"):
    """Merge States of one base into one State: commutative and associative (up to
    the order of float additions), so engines may group the merges as they like.

    Per coordinate (w and each v_f of every feature, the bias), over the
    partitions that trained it (dn_p = n_p - n0 > 0; the others have weight
    0): n = n0 + sum_p dn_p, and the weight (``rule``):

    - ``"blend"`` (default): theta = (1 - lam) theta_sum + lam theta_mean with
      lam = 1 - exp(-3 K): the FTRL sums where the partitions together trained
      the coordinate little (their evidence adds up, as in one stream), the
      increment-weighted mean where one stream of all their increments would
      have trained it to convergence (K = contraction(n0, n), ``contraction``);
    - ``"blend-each"``: the same with K the dn-weighted mean of each
      partition's own contraction (sums more; diverged at 8 partitions);
    - ``"dn"``: theta_mean = sum_p dn_p theta_p / sum_p dn_p;
    - ``"sum"``: theta_sum, FTRL's weight at z = z0 + sum_p (z_p - z0)
      (overshoots where partitions converge; for comparison).

    z is rebuilt from theta with FTRL's closed form (``z_for_weight``), so
    training continues from the merged model as from any (docs/design.md, "Merging models"
    derives the rule). A coordinate one partition trained keeps that
    partition's numbers exactly; one no partition trained keeps the base's.
    ``states``: an iterable of State (same k, hyper-parameters and fvs).
    Raises ModelFormatError when they do not share a base.
    """
    m = Merger(rule)
    for s in states:
        m.add(s)
    return m.result()


def merge_pair(a, b, rule="blend"):
    """merge([a, b]): the reduce function of an engine's tree reduction."""
    return merge([a, b], rule)


# ---------------------------------------------------------------------------
# The base model and one partition's training


@njit(cache=True, nogil=True)
def _changed_rows(params, base_params, n_base, n_rows, out):
    """Rows of a trained copy that differ from the base (row 0 always, new rows all)."""
    m = 0
    out[m] = 0
    m += 1
    ncols = params.shape[1]
    for r in range(1, n_rows):
        changed = r >= n_base
        if not changed:
            for c in range(ncols):
                if params[r, c] != base_params[r, c]:
                    changed = True
                    break
        if changed:
            out[m] = r
            m += 1
    return m


@njit(cache=True, nogil=True)
def _base_n_z(params, rows, k, n0, z0):
    """n0[r], z0[r] = the (n, z) of w, v_1..v_k in base row rows[r] (-1: not in the base, left 0)."""
    for r in range(rows.shape[0]):
        b = rows[r]
        if b < 0:
            continue
        n0[r, 0] = params[b, WN]
        z0[r, 0] = params[b, WZ]
        for f in range(k):
            n0[r, 1 + f] = params[b, VN + f]
            z0[r, 1 + f] = params[b, VN + k + f]


@njit(cache=True, nogil=True)
def _copy_rows(src, rows, dst):
    for i in range(rows.shape[0]):
        for c in range(src.shape[1]):
            dst[rows[i], c] = src[i, c]


class Base:
    """A model to train partitions from: an FM's hyper-parameters and its rows.

    This is what ships to the workers (it pickles as numpy arrays and a
    dict): ``hyper`` (``FM.hyper_parameters()``), ``arena``/``name_off``
    (names, row 0 the bias), ``params`` (FTRL rows), ``info`` (the model's
    header fields, e.g. ``samples_seen``). Its arrays are never written to:
    ``fm()`` trains a copy.
    """

    def __init__(self, hyper, arena, name_off, params, info):
        self.hyper = dict(hyper)
        self.arena = arena
        self.name_off = name_off
        self.params = params
        self.info = dict(info)
        self._clear_caches()

    def _clear_caches(self):
        # built once per Base object, never shipped: the feature table every task's
        # model copies (instead of hashing every name again) and the name index
        # ``apply`` joins with (handed on to the Base it returns)
        self._lock = threading.Lock()
        self._table = None
        self._names = None

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_lock", "_table", "_names"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._clear_caches()

    def _feature_table(self):
        """The FeatureTable of this Base's names (under its hash key), built on first use."""
        from .model import table_for

        with self._lock:
            if self._table is None:
                a = self.arrays()
                self._table = table_for(a, row_capacity=a.n_rows + (1 << 16),
                                        arena_capacity=int(self.name_off[-1]) + (1 << 20))
            return self._table

    @classmethod
    def of(cls, fm, copy=True):
        """The Base of an FM (a copy of its rows; ``fm`` is not changed); a
        field-aware FM is refused (ModelFormatError: the merge is an FM's).
        ``copy=False``: the FM's own arrays, for a caller that only reads them
        while the FM is not trained."""
        fm.require_fm("merging models (and distributed training)")
        m = fm.training_model()
        arena, off = m.names()
        n = m.n_rows
        if not copy:
            return cls(fm.hyper_parameters(), arena, off[: n + 1], m.file_params[:n], m.meta())
        return cls(fm.hyper_parameters(), arena.copy(), off[: n + 1].copy(), m.file_params[:n].copy(), m.meta())

    @property
    def n_rows(self):
        return self.params.shape[0]

    @property
    def k(self):
        return int(self.hyper["k"])

    def arrays(self, params=None):
        """The rows as a ``model.ModelArrays`` (the model-file view)."""
        from .model import ModelArrays

        p = self.params if params is None else params
        # the rows' z were rebuilt (or trained) with these hyper-parameters: the file
        # says so, whatever the first model's file said (a text model says nothing)
        h = self.hyper
        info = dict(self.info, k=self.k, n_rows=p.shape[0], hyper={n: float(h[n]) for n in ftrl.HP_NAMES},
                    fvs=bool(h["fvs"]), seed=int(h.get("seed", 0) or 0))
        return ModelArrays(self.arena, self.name_off, None, None, info, params=p)

    def fm(self, copy=True):
        """A trainable ``streamfm.FM`` on a private copy of the rows (``copy=False``:
        on this Base's own rows, for a Base that is not used again)."""
        from .fm import FM

        fm = FM(**self.hyper)
        # the model must not grow into (or write through to) our rows: training copies
        # rows that own their memory into an array with spare capacity
        # (``ModelArrays.training_params``); a view is copied here first
        own = copy and self.params.base is not None
        arrays = self.arrays(np.array(self.params, copy=True) if own else self.params)
        if copy:
            arrays.train_table = self._feature_table().copy()
        fm.replace_model(arrays)
        return fm

    def _kind(self):
        """k, hyper-parameters and fvs, as ``_check_same`` compares them."""
        from types import SimpleNamespace

        return SimpleNamespace(k=self.k, hp=np.array([float(self.hyper[h]) for h in ftrl.HP_NAMES]),
                               fvs=bool(self.hyper["fvs"]))

    def apply(self, state):
        """The Base with ``state``'s rows written over (by name) and its new features appended.

        ``state`` must come from this Base's model (``train_partition`` of it,
        or ``merge`` of such States): ParameterError when its k,
        hyper-parameters or fvs differ."""
        _check_same(self._kind(), state, "the state to apply")
        if state.params.shape[1] != self.params.shape[1]:
            raise ParameterError("the state to apply has rows of %d numbers, the base %d"
                                 % (state.params.shape[1], self.params.shape[1]))
        info = dict(self.info)
        info["samples_seen"] = int(info.get("samples_seen", 0)) + state.samples
        if self.n_rows == 1:  # an empty base: the state's rows (bias included) are the model
            params = state.finished_params().astype(self.params.dtype, copy=False)
            return Base(self.hyper, state.arena, state.name_off, params, info)
        with self._lock:
            # the index moves on to the Base returned (a round's next base), which is
            # what the driver applies to next; this Base builds a new one if asked again
            names, self._names = self._names, None
        if names is None or names.n_rows != self.n_rows:
            names = _Names(self.arena, self.name_off, self.n_rows)
        names.reserve(state.n_rows, int(state.name_off[-1]))
        rows = names.join(state.arena, state.name_off, state.n_rows, insert=True)
        n = names.n_rows
        params = np.zeros((n, self.params.shape[1]), self.params.dtype)
        params[: self.n_rows] = self.params
        _copy_rows(state.finished_params().astype(params.dtype, copy=False), rows, params)
        # views: the index only appends past them, and a grown buffer leaves them as they are
        out = Base(self.hyper, names.arena[: names.name_off[n]], names.name_off[: n + 1], params, info)
        out._names = names
        return out

    def state_of(self, model, lines=0, samples=0, bad=0, loss_sum=0.0):
        """The State of ``model`` (a ``model.Model`` trained from a copy of this base):
        the rows it changed, with this base's n of each."""
        n, nb, k = model.n_rows, self.n_rows, self.k
        p = model.params
        idx = np.empty(n, np.int64)
        m = _changed_rows(p, self.params, nb, n, idx)
        idx = idx[:m]
        arena, off = model.names()
        sub_arena, sub_off = _take_names(arena, off, idx)
        n0 = np.zeros((m, k + 1))
        z0 = np.zeros((m, k + 1))
        _base_n_z(self.params, np.where(idx < nb, idx, -1), k, n0, z0)
        return State(sub_arena, sub_off, p[idx], n0, z0, k, model.hp, model.fvs, model.seed, lines=lines,
                     samples=samples, bad=bad, loss_sum=loss_sum)

    def state_of_model(self, arrays, hp, fvs):
        """The State of a whole model's content (``model.ModelArrays``) relative to this base:
        its rows (joined by name) but those it holds exactly as the base does (in
        its own precision), each with the base's n of its feature; ``hp`` and
        ``fvs`` are the model's own. Like ``state_of``, the bias is always in."""
        n = arrays.n_rows
        arena, off = arrays.names()
        params = arrays.file_params
        rows = np.full(n, -1, np.int64)
        if self.n_rows > 1:
            rows = _Names(self.arena, self.name_off, self.n_rows).join(arena, off, n, insert=False)
        keep = np.ones(n, np.bool_)
        known = np.flatnonzero(rows > 0)
        keep[known] = (params[known] != self.params[rows[known]].astype(params.dtype)).any(axis=1)
        idx = np.flatnonzero(keep)
        sub_arena, sub_off = _take_names(arena, off, idx)
        n0 = np.zeros((idx.shape[0], self.k + 1))
        z0 = np.zeros((idx.shape[0], self.k + 1))
        if self.n_rows > 1:
            _base_n_z(self.params, rows[idx], self.k, n0, z0)
        samples = int(arrays.info.get("samples_seen", 0)) - int(self.info.get("samples_seen", 0))
        return State(sub_arena, sub_off, params[idx], n0, z0, arrays.k, hp, fvs, self.hyper["seed"],
                     samples=max(samples, 0))


def empty_base(**fm_params):
    """The Base of a new, untrained FM(**fm_params)."""
    from .fm import FM

    return Base.of(FM(**fm_params))


def _lines_of(data, start, stop):
    """Lines start..stop-1 of a partition (a sequence, an iterable or a (matrix, y) pair)."""
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
        return X[start:stop], (None if y is None else y[start:stop])
    if start == 0 and stop is None:
        return data, None
    if hasattr(data, "iloc"):  # a pandas Series of lines
        return data.iloc[start:stop].tolist(), None
    if isinstance(data, (list, tuple)):
        return data[start:stop], None
    return itertools.islice(data, start, stop), None


def head(data, stop):
    """The first ``stop`` lines of a partition as a list (an (X, y) pair of rows for a
    matrix partition): what a warm start brings to the driver."""
    lines, y = _lines_of(data, 0, stop)
    if isinstance(data, tuple) and len(data) == 2:
        return lines, y
    return list(lines)


def train_partition(base, data, start=0, stop=None, *, cores=1, on_error="skip", max_bad_fraction=None,
                    feature_names=None, partition=0):
    """Train a copy of ``base`` on one partition's lines start..stop-1; returns its State.

    ``data``: what ``FM.partial_fit`` takes as lines (a list or any iterable
    of str/bytes lines, a pandas Series of them), or a pair (matrix, y) of a
    CSR matrix (or 2-D array) and its labels, with ``feature_names``.
    ``cores``: threads of this task (1: deterministic). ``partition``: the
    partition's number, which the State's bad lines and a BadInputError's
    message give with each line's place in the partition (-1: the warm
    start, the heads of all partitions in turn). The task reads
    nothing but its arguments, so running it again gives the same State.
    """
    fm = base.fm()
    lines, y = _lines_of(data, start, stop)
    try:
        report = fm.partial_fit(lines, y, cores=cores, on_error=on_error, max_bad_fraction=max_bad_fraction,
                                feature_names=feature_names)
    except BadInputError as e:
        # "input line 3" is the 3rd line of this task's range: say where that is
        read = fm.last_report.lines if fm.last_report else 0
        where = ("the warm start (the partitions' heads in turn), its lines 1-%d" % read if partition < 0 else
                 "partition %d, its lines %d-%d (the task's line N is its line %d+N)" % (partition, start + 1,
                                                                                 start + read, start))
        err = BadInputError("%s: %s" % (where, e))
        err.report = e.report
        raise err from None
    loss = report.logloss * report.samples if report.samples else 0.0
    state = base.state_of(fm.training_model(), lines=report.lines, samples=report.samples, bad=report.bad,
                          loss_sum=loss)
    state.by_reason = dict(report.by_reason)
    state.bad_lines = [(int(partition), start + b.line, b.reason, b.column, b.text)
                       for b in report.bad_lines[:KEEP_BAD]]
    return state


# ---------------------------------------------------------------------------
# Whole models (fm_dump merge, the API)


@njit(inline="always")
def _changed_row(p, r, base, o, nb):
    """Model row r (out row o; -1: the model lacks it) is new or differs from the base's."""
    if r < 0:
        return False
    if o == 0 or o >= nb:  # the bias and new rows always: as a State holds them (``state_of``)
        return True
    for col in range(base.shape[1]):
        if p[r, col] != base[o, col]:
            return True
    return False


@njit(cache=True, nogil=True)
def _merge_whole(o0, o1, inv, models, base, nb, k, hp, rule, coupling, each, out, from_base):
    """Rows o0..o1-1 of the merge of whole models, every model at hand: ``Merger``'s
    rule (``_accumulate`` then ``_finish``) with the sums of a coordinate kept
    only while its row is merged, so no per-coordinate sums are stored.

    ``inv[m, o]``: model m's row of out row o (-1: the model lacks it);
    ``models``: a tuple of their FTRL rows (one dtype, ``out``'s); ``base``: the base's
    rows, out rows 0..nb-1. A row no model holds or changed keeps the base's
    (``from_base[o]`` set). Returns
    (code, model, row): _ERR_BELOW_BASE when a model's n is below the base's.
    """
    acc = np.zeros((1, k + 1, N_ACC))
    cnt = np.zeros(k + 1, np.int64)
    n_models = len(models)
    ncols = out.shape[1]
    for o in range(o0, o1):
        held = False
        for m in range(n_models):
            held = held or _changed_row(models[m], inv[m, o], base, o, nb)
        if not held:
            for col in range(ncols):
                out[o, col] = base[o, col]
            from_base[o] = True
            continue
        acc[:] = 0.0
        cnt[:] = 0
        first = True
        for m in range(n_models):
            r = inv[m, o]
            # a base row a model left as it was is not that model's (as in its State)
            if not _changed_row(models[m], r, base, o, nb):
                continue
            p = models[m]
            for c in range(k + 1):
                ncol, zcol, alpha, beta, l1, l2 = _coord(c, k, hp)
                bn = np.float64(base[o, ncol]) if o < nb else 0.0
                bz = np.float64(base[o, zcol]) if o < nb else 0.0
                n = np.float64(p[r, ncol])
                z = np.float64(p[r, zcol])
                if n < bn:
                    return _ERR_BELOW_BASE, m, r
                if n > bn:
                    if cnt[c] == 0:
                        out[o, ncol] = p[r, ncol]
                        out[o, zcol] = p[r, zcol]
                        if c == 0:
                            out[o, W] = p[r, W]
                    else:
                        if cnt[c] == 1:  # the model that trained it so far joins the sums first
                            _add_trained(acc, 0, c, np.float64(out[o, ncol]), np.float64(out[o, zcol]), bn, bz,
                                         alpha, beta, l1, l2, each)
                        _add_trained(acc, 0, c, n, z, bn, bz, alpha, beta, l1, l2, each)
                    cnt[c] += 1
                elif cnt[c] == 0:
                    if first:
                        out[o, ncol] = p[r, ncol]
                        out[o, zcol] = p[r, zcol]
                        if c == 0:
                            out[o, W] = p[r, W]
                    else:
                        out[o, zcol] = max(out[o, zcol], p[r, zcol])
                        if c == 0:
                            out[o, W] = max(out[o, W], p[r, W])
            first = False
        for c in range(k + 1):
            if cnt[c] < 2:
                continue
            ncol, zcol, alpha, beta, l1, l2 = _coord(c, k, hp)
            bn = np.float64(base[o, ncol]) if o < nb else 0.0
            bz = np.float64(base[o, zcol]) if o < nb else 0.0
            a = acc[0, c]
            n, z, theta = _merged_coord(rule, coupling, bn, bz, a[ACC_DN], a[ACC_MEAN], a[ACC_ZSUM], a[ACC_K],
                                        a[ACC_Z], alpha, beta, l1, l2)
            out[o, ncol] = n
            out[o, zcol] = z
            if c == 0:
                out[o, W] = theta
    return _OK, -1, -1


def _read_only(a):
    """A read-only view: mapped and in-memory rows then have one numba type."""
    v = a.view()
    v.flags.writeable = False
    return v


def merge_models(models, base=None, rule="blend", **hyper):
    """Merge whole models into one ``streamfm.FM`` (what ``fm_dump merge`` runs).

    ``models``: FM objects or model file paths (binary or text, with their
    training state). ``base``: the model they were all
    trained from (an FM or a path): each feature's increments are counted
    from its n there, and the result holds the base's features too. Without
    a base the increments are the models' whole n (models trained from
    nothing, or on disjoint data from scratch). Hyper-parameters, ``fvs``
    and ``seed`` come from the base, else the first model; binary files keep
    theirs, text models take ``hyper`` (``FM`` keyword arguments), else the
    defaults. ``rule``: see ``merge``. Raises ParameterError when the models' factor counts or
    hyper-parameters differ, ModelFormatError when a model is unreadable or
    has less training than the base on some feature.

    The result is ``merge`` of the models' States applied to the base
    (``Base.apply``), number for number, computed in one pass over the rows
    with every model at hand: no sums are stored per coordinate. Binary
    files are memory-mapped (read-only; their pages are the page cache's),
    so the memory it takes is the merged model's, its names, and 4 bytes a
    row per model; text models are read into memory.
    """
    models = list(models)
    if not models:
        raise ParameterError("nothing to merge")
    Merger(rule)  # checks the name
    b = _as_base(base, hyper, copy=False) if base is not None else None
    base_label = os.fsdecode(base) if isinstance(base, (str, bytes, os.PathLike)) else "the base"
    parts = []
    labels = []  # what an error names: a model's path, or its place in the list
    for i, m in enumerate(models):
        label = m if isinstance(m, (str, bytes, os.PathLike)) else "model %d of %d" % (i + 1, len(models))
        mb = _as_base(m, hyper, copy=False)
        if b is None:
            b = Base(mb.hyper, np.frombuffer(b"bias", np.uint8), np.array([0, 4], np.int64),
                     np.zeros((1, mb.params.shape[1]), mb.params.dtype), {"samples_seen": 0})
        else:
            # against the base too: its hyper-parameters are the merged model's, and
            # every coordinate's weight is rebuilt with them
            _check_same(b._kind(), mb._kind(), os.fsdecode(label),
                        "the base" if base is not None else "the first model")
        parts.append((mb, mb._kind()))
        labels.append(os.fsdecode(label))
    nb = b.n_rows
    names = _Names(b.arena, b.name_off, nb, extra_rows=sum(mb.n_rows for mb, _ in parts),
                   extra_bytes=sum(int(mb.name_off[mb.n_rows]) for mb, _ in parts))
    joined = []
    for (mb, _), label in zip(parts, labels):
        try:
            joined.append(names.join(mb.arena, mb.name_off, mb.n_rows, insert=True))
        except ModelFormatError as e:
            raise ModelFormatError("%s: %s" % (label, e)) from None
    n = names.n_rows
    inv = np.full((len(parts), n), -1, np.int32 if n < 2 ** 31 else np.int64)
    for i, rows in enumerate(joined):
        inv[i, rows] = np.arange(rows.shape[0])
        # a name a model holds twice joins one row twice: the later copy took it
        twice = np.flatnonzero(inv[i, rows] != np.arange(rows.shape[0]))
        if twice.size:
            raise ModelFormatError("%s: feature %r appears twice" % (labels[i], names.name(int(rows[twice[0]]))))
    del joined
    try:
        # names appended as new (a model continuing the base) were compared with
        # nothing: the merged model's names must all differ, as a table demands
        names._index(1)
    except ModelFormatError as e:
        dup = getattr(e, "row", None)
        holders = [label for label, m in ([(base_label, b)] if base is not None else []) + list(
            zip(labels, (mb for mb, _ in parts))) if dup is not None and _holds_twice(m, names.name_bytes(dup))]
        raise ModelFormatError("%s: %s" % (" and ".join(holders) or "the models", e)) from None
    dtype = parts[0][0].params.dtype  # as a running merge holds the rows: in the first model's numbers
    # a tuple, not a typed List: a List costs ~0.9 s of compiling in every new process
    rows_of = tuple(_read_only(np.ascontiguousarray(mb.params, dtype)) for mb, _ in parts)
    # in the models' precision: a float32 model continuing a float64 base holds the base's
    # rows it never trained rounded, equal to these (the base's own rows are restored below)
    base_rows = _read_only(np.ascontiguousarray(b.params, dtype))
    out = np.empty((n, b.params.shape[1]), dtype)
    from_base = np.zeros(n, np.bool_)
    first = parts[0][1]
    each = rule == "blend-each"
    done = jit.over_rows(lambda o0, o1: _merge_whole(o0, o1, inv, rows_of, base_rows, nb, first.k, first.hp,
                                                     RULES[rule], COUPLING, each, out, from_base), n)
    code, i, r = next((d for d in done if d[0] != _OK), (_OK, -1, -1))
    if code == _ERR_BELOW_BASE:
        mb = parts[i][0]
        raise ModelFormatError("%s: cannot merge: feature %r has less training (n) than in the base: "
                               "the model does not continue that base"
                               % (labels[i], bytes(mb.arena[mb.name_off[r]:mb.name_off[r + 1]]).decode(
                                   "utf-8", "backslashreplace")))
    if out.dtype != b.params.dtype:
        out = out.astype(b.params.dtype)
        # the base's rows no model changed keep its numbers exactly
        out[:nb][from_base[:nb]] = b.params[from_base[:nb]]
    info = dict(b.info)
    seen = int(info.get("samples_seen", 0))
    info["samples_seen"] = seen + sum(max(int(mb.info.get("samples_seen", 0)) - seen, 0) for mb, _ in parts)
    del parts, rows_of
    arena, off = names.names()
    return Base(b.hyper, arena, off, out, info).fm(copy=False)


def _as_base(m, hyper, copy=True):
    """A Base of an FM or a model file (read with its training state); ``copy=False``
    shares an FM's arrays (for a caller that only reads them)."""
    from .fm import FM, HYPER_PARAMETERS
    from .model import read_model

    if isinstance(m, FM):
        return Base.of(m, copy=copy)
    # without a copy the caller only reads: a binary file's rows can stay in the page cache,
    # and the merge reads every row: the pages the checks read stay mapped
    arrays = read_model(str(m), state=True, mmap=not copy, keep_pages=not copy)
    info = arrays.info
    h = dict(HYPER_PARAMETERS)
    h.update(info.get("hyper") or {})
    h["fvs"] = bool(info.get("fvs", False))
    h["seed"] = int(info.get("seed", 0) or 0)
    if not info.get("hyper"):  # a text model does not hold its own: the caller's
        h.update(hyper)
    h.update(k=arrays.k, dtype=str(arrays.dtype), k0=True, k1=True)
    arena, off = arrays.names()
    return Base(h, arena, off, arrays.file_params, info)
