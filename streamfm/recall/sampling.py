"""Negative sampling and popularity suppression (docs/design.md, "Recall").

- Random numbers: a counter-based generator (splitmix64) whose state is one
  uint64 per thread, so runs are reproducible from ``--seed`` and threads
  never share a generator.
- ``--neg-dist pop`` / ``pop0.75``: items are drawn with probability
  proportional to ``clicks(item) ** power``, counts as seen so far. The
  weights live in a Fenwick tree: adding a click and drawing an item are
  both O(log n), so the distribution follows the stream click by click.
  Until any click has been counted, draws are uniform.
- ``--pop-suppress t``: a positive on an item with click share f is kept
  with probability ``min(1, sqrt(t / f) + t / f)`` (word2vec's subsampling).
  While fewer than ``10 / t`` clicks have been counted, shares are too coarse
  to judge and every positive is kept.
"""

import math

import numpy as np
from numba import njit

from ..mix import GOLDEN, mix64, mix64_py, splitmix64, unit


DIST_UNIFORM = 0
DIST_POP = 1
DISTS = {"uniform": (DIST_UNIFORM, 0.0), "pop": (DIST_POP, 1.0), "pop0.75": (DIST_POP, 0.75)}
SUPPRESS_WARMUP = 10.0  # suppression starts after SUPPRESS_WARMUP / t clicks


@njit(inline="always")
def next_u64(state):
    state[0] += GOLDEN
    return mix64(state[0])


@njit(inline="always")
def uniform(state):
    """A double in [0, 1)."""
    return unit(next_u64(state))


@njit(inline="always")
def next_uniform(x):
    """(the next state, a double in [0, 1)) of a generator state x: ``uniform`` on a scalar.

    Kernels keep their generator in a local variable with this: an array
    passed to an inlined function costs reference counting on every call.
    """
    x = x + GOLDEN
    return x, unit(mix64(x))


@njit(inline="always")
def below(state, n):
    """An integer in [0, n)."""
    i = np.int64(uniform(state) * n)
    return i if i < n else n - 1


def seed_state(*parts):
    """A generator state from integers (seed, pass, thread, ...)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        h = mix64_py(h)
    return np.array([h], dtype=np.uint64)


# ----------------------------------------------------------------------------
# Fenwick tree of item weights (tree[0] holds the total)


@njit(inline="always")
def fenwick_add(tree, i, delta):
    n = tree.shape[0] - 1
    tree[0] += delta
    j = i + 1
    while j <= n:
        tree[j] += delta
        j += j & (-j)


@njit(inline="always")
def fenwick_find(tree, u):
    """The item i with prefix(i) <= u < prefix(i + 1), for 0 <= u < total."""
    n = tree.shape[0] - 1
    pos = 0
    step = 1
    while step * 2 <= n:
        step *= 2
    while step > 0:
        nxt = pos + step
        if nxt <= n and tree[nxt] <= u:
            pos = nxt
            u -= tree[nxt]
        step //= 2
    return pos if pos < n else n - 1


@njit(cache=True, nogil=True)
def fenwick_build(weights, tree):
    """tree = Fenwick tree of weights (len(tree) = len(weights) + 1), O(n)."""
    n = weights.shape[0]
    total = 0.0
    for i in range(n):
        tree[i + 1] = weights[i]
        total += weights[i]
    for j in range(1, n + 1):
        p = j + (j & (-j))
        if p <= n:
            tree[p] += tree[j]
    tree[0] = total


@njit(inline="always")
def count_click(counts, tree, item, power):
    """Count one click on item (and its weight in the tree when power > 0)."""
    c = counts[item]
    counts[item] = c + 1
    if power > 0.0:
        fenwick_add(tree, item, (c + 1.0) ** power - (c ** power if c > 0 else 0.0))


@njit(inline="always")
def draw_item(state, dist, tree, n_items):
    """One item from the negative distribution."""
    if dist == DIST_POP:
        total = tree[0]
        if total > 0.0:
            return fenwick_find(tree, uniform(state) * total)
    return below(state, n_items)


@njit(inline="always")
def keep_probability(count, total, t):
    """min(1, sqrt(t / f) + t / f) with f = count / total (1 while counts are too few)."""
    if t <= 0.0 or count <= 0 or total * t < SUPPRESS_WARMUP:
        return 1.0
    r = t / (count / total)
    return min(1.0, math.sqrt(r) + r)


# ----------------------------------------------------------------------------
# Wrappers for checking the distributions (tests)


@njit(cache=True, nogil=True)
def draw_many(state, dist, tree, n_items, n, out):
    for i in range(n):
        out[i] = draw_item(state, dist, tree, n_items)


@njit(cache=True, nogil=True)
def keep_many(state, counts, total, t, items, kept):
    """kept[j] = 1 if a positive on items[j] survives suppression (as the trainer draws it)."""
    for j in range(items.shape[0]):
        p = keep_probability(counts[items[j]], total, t)
        kept[j] = 1 if (p >= 1.0 or uniform(state) < p) else 0


@njit(cache=True, nogil=True)
def count_many(counts, tree, items, power):
    for j in range(items.shape[0]):
        count_click(counts, tree, items[j], power)


def weights_of(counts, power):
    return np.where(counts > 0, counts.astype(np.float64) ** power, 0.0)


# ----------------------------------------------------------------------------
# A user's own clicks: a set of (user, item) pairs that negatives must avoid
#
# Open addressing over 64-bit fingerprints of (user key hash, catalog item),
# linear probing, load at most 1/2, 0 = empty slot. A fingerprint collision
# (about 2^-64 per pair) can only make the trainer skip an item as a negative.


@njit(inline="always")
def pair_key(user_hash, item):
    """The nonzero fingerprint of (user key hash, catalog position)."""
    h = mix64(user_hash ^ splitmix64(np.uint64(item)))
    return h if h != np.uint64(0) else np.uint64(1)


@njit(inline="always")
def pair_in(tab, h):
    """h is in the table ``tab`` (a power-of-two number of slots)."""
    mask = tab.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while True:
        s = tab[i]
        if s == h:
            return True
        if s == np.uint64(0):
            return False
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def pairs_add(tab, user_hash, item, n, room):
    """Insert pairs j < n (item[j] >= 0) until ``room`` of them were new;
    returns (how many were new, the first j not inserted)."""
    mask = tab.shape[0] - 1
    new = 0
    for j in range(n):
        if new >= room:
            return new, j
        if item[j] < 0:
            continue
        h = pair_key(user_hash[j], item[j])
        i = np.int64(h & np.uint64(mask))
        while True:
            s = tab[i]
            if s == h:
                break
            if s == np.uint64(0):
                tab[i] = h
                new += 1
                break
            i = (i + 1) & mask
    return new, n


@njit(cache=True, nogil=True)
def pairs_rehash(src, dst):
    """Move every fingerprint of src into the (larger, empty) dst."""
    mask = dst.shape[0] - 1
    for j in range(src.shape[0]):
        h = src[j]
        if h == np.uint64(0):
            continue
        i = np.int64(h & np.uint64(mask))
        while dst[i] != np.uint64(0):
            i = (i + 1) & mask
        dst[i] = h


@njit(cache=True, nogil=True)
def pairs_contain(tab, old, user_hash, item, out):
    """out[j] = (user_hash[j], item[j]) is in tab or old (tests)."""
    for j in range(item.shape[0]):
        h = pair_key(user_hash[j], item[j])
        out[j] = pair_in(tab, h) or pair_in(old, h)


class SeenPairs:
    """The (user, item) clicks whose items are never drawn as that user's negatives.

    ``capacity`` (None: unbounded) bounds the memory: the set keeps at least
    the last ``capacity`` distinct pairs added. It holds two generations;
    when the current one has ``capacity`` pairs it becomes the old one (the
    older is dropped) and a new one starts, so memory stays below two tables
    of at most 2 * capacity 8-byte slots (32 bytes per pair of capacity).
    Tables start small and double as pairs arrive. ``tab`` and ``old`` are
    what the trainer's kernel reads (only between ``add`` calls).
    """

    def __init__(self, capacity=None):
        self.capacity = capacity
        self.tab = np.zeros(1024, np.uint64)
        self.old = np.zeros(1, np.uint64)   # one empty slot: nothing
        self.count = 0
        self.rotations = 0

    def _ensure(self, need):
        """Room for ``need`` pairs in the current table (load at most 1/2)."""
        size = self.tab.shape[0]
        while 2 * need > size:
            size *= 2
        if size > self.tab.shape[0]:
            t = np.zeros(size, np.uint64)
            pairs_rehash(self.tab, t)
            self.tab = t

    def add(self, user_hash, item):
        """Add the pairs (user_hash[j], item[j]) whose item is >= 0.

        The current table rotates only once it holds ``capacity`` distinct
        pairs, so the old one alone holds the last ``capacity`` before the
        current one's. (Rotating when a block's clicks, repeats and items
        outside the catalog included, would not fit dropped pairs that were
        still among the last ``capacity`` distinct: a user's own item could
        then be drawn as their negative.)
        """
        u = np.ascontiguousarray(user_hash, np.uint64)
        it = np.ascontiguousarray(item, np.int64)
        a = 0
        while a < it.shape[0]:
            if self.capacity is not None and self.count >= self.capacity:
                self.old = self.tab
                self.tab = np.zeros(1024, np.uint64)
                self.count = 0
                self.rotations += 1
            m = it.shape[0] - a
            room = m if self.capacity is None else min(m, self.capacity - self.count)
            self._ensure(self.count + room)
            new, done = pairs_add(self.tab, u[a:], it[a:], m, room)
            self.count += int(new)
            a += int(done)

    def contains(self, user_hash, item):
        out = np.zeros(len(item), np.bool_)
        pairs_contain(self.tab, self.old, np.ascontiguousarray(user_hash, np.uint64),
                      np.ascontiguousarray(item, np.int64), out)
        return out

    @property
    def nbytes(self):
        return self.tab.nbytes + self.old.nbytes
