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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)

DIST_UNIFORM = 0
DIST_POP = 1
DISTS = {"uniform": (DIST_UNIFORM, 0.0), "pop": (DIST_POP, 1.0), "pop0.75": (DIST_POP, 0.75)}
SUPPRESS_WARMUP = 10.0  # suppression starts after SUPPRESS_WARMUP / t clicks


@njit(inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always")
def next_u64(state):
    state[0] += _GOLDEN
    return _mix(state[0])


@njit(inline="always")
def uniform(state):
    """A double in [0, 1)."""
    return np.float64(next_u64(state) >> _S11) * (1.0 / 9007199254740992.0)


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
        h = _mix_py(h)
    return np.array([h], dtype=np.uint64)


def _mix_py(z):
    m = 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


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
