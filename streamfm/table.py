"""Feature table: the 64-bit hash of a feature name's bytes -> dense row id.

Rows are numbered in first-seen order; row 0 is the bias and is never in the
hash index (a feature literally named ``bias`` gets a row of its own, as in
alphaFM). The index is open addressing with linear probing over ``slots``
(int32 row ids, -1 = empty) and compares the full 64-bit hash kept per row in
``row_hash``; every name's bytes live in one arena so the text model can be
written with the original names.

Concurrency: lookups run lock-free from several trainer threads while one
thread inserts. An insert writes ``row_hash[r]`` before ``slots[i] = r``; a
reader that races it either finds the row or falls through to an empty slot
and reports a miss, and misses are re-checked under the insert lock, so a
race can only cost a re-check, never a wrong row. Growth (a bigger index or
row capacity) replaces arrays and therefore runs while trainers are paused.
"""

import numpy as np
from numba import njit

EMPTY = -1
MAX_LOAD = 0.7

_U8 = np.uint64(8)
_K_STEP = np.uint64(0x9E3779B97F4A7C15)
_K_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_K_MIX2 = np.uint64(0x94D049BB133111EB)
_S29 = np.uint64(29)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S56 = np.uint64(56)
HASH_SEED = np.uint64(0x6A09E667F3BCC908)


# The name hash consumes bytes into a 64-bit word and mixes one word per
# 8 bytes, so the per-byte dependency chain is a shift-or instead of a
# multiply (FNV); the parser runs these same steps while it scans a token.
@njit(inline="always")
def hash_word(h, acc):
    h = (h ^ acc) * _K_STEP
    return h ^ (h >> _S29)


@njit(inline="always")
def hash_final(h, acc, length):
    z = hash_word(h, acc ^ (np.uint64(length) << _S56))
    z = (z ^ (z >> _S30)) * _K_MIX1
    z = (z ^ (z >> _S27)) * _K_MIX2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def hash_bytes(buf, start, end):
    """Hash of the name ``buf[start:end]``; equals what the parser computes."""
    h = HASH_SEED
    acc = np.uint64(0)
    cnt = 0
    for p in range(start, end):
        acc = (acc << _U8) | np.uint64(buf[p])
        cnt += 1
        if cnt == 8:
            h = hash_word(h, acc)
            acc = np.uint64(0)
            cnt = 0
    return hash_final(h, acc, end - start)


def hash_name(name):
    """Hash of a name given as bytes or str (UTF-8)."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    buf = np.frombuffer(name, dtype=np.uint8)
    return hash_bytes(buf, 0, len(buf))


@njit(inline="always")
def _home(h, mask):
    return np.int64(h & np.uint64(mask))


@njit(cache=True, nogil=True)
def lookup_one(slots, row_hash, h):
    mask = slots.shape[0] - 1
    i = _home(h, mask)
    while True:
        r = slots[i]
        if r == EMPTY:
            return -1
        if row_hash[r] == h:
            return r
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def place(slots, row_hash, r):
    mask = slots.shape[0] - 1
    i = _home(row_hash[r], mask)
    while slots[i] != EMPTY:
        i = (i + 1) & mask
    slots[i] = r


@njit(cache=True, nogil=True)
def rebuild_index(slots, row_hash, n_rows):
    """Fill an empty index with rows 1..n_rows-1 (row 0, the bias, stays out)."""
    for r in range(1, n_rows):
        place(slots, row_hash, r)


@njit(cache=True, nogil=True)
def hash_arena(name_off, arena, row_hash, first, last):
    for r in range(first, last):
        row_hash[r] = hash_bytes(arena, name_off[r], name_off[r + 1])


@njit(cache=True, nogil=True)
def find_duplicate(slots, row_hash, n_rows):
    """First row whose hash is already indexed by an earlier row, or -1.

    Used when an index is built from a model file: two lines with one name
    would silently shadow each other.
    """
    mask = slots.shape[0] - 1
    for r in range(1, n_rows):
        h = row_hash[r]
        i = _home(h, mask)
        while True:
            s = slots[i]
            if s == EMPTY:
                slots[i] = r
                break
            if row_hash[s] == h:
                return r
            i = (i + 1) & mask
    return -1


def index_size(n_rows):
    """Smallest power of two that keeps n_rows under the maximum load."""
    size = 1024
    while size * MAX_LOAD < n_rows:
        size *= 2
    return size


def _zeros(shape, dtype):
    # np.zeros of a large array maps untouched zero pages, so a generous
    # capacity costs address space, not resident memory.
    return np.zeros(shape, dtype=dtype)


class FeatureTable:
    """Names, hashes and the hash index for ``n_rows`` rows (row 0 = bias).

    Capacity grows by replacing arrays; callers that run kernels on the arrays
    from other threads must pause them around ``reserve``.
    """

    def __init__(self, row_capacity=1 << 16, arena_capacity=1 << 20):
        self._allocate(row_capacity, arena_capacity)
        name = b"bias"
        self.arena[: len(name)] = np.frombuffer(name, np.uint8)
        self.name_off[1] = len(name)
        self.meta[:] = (1, len(name))
        self.slots = np.full(index_size(1), EMPTY, dtype=np.int32)

    def _allocate(self, row_capacity, arena_capacity):
        row_capacity = max(int(row_capacity), 2)
        self.row_hash = _zeros(row_capacity, np.uint64)
        self.name_off = _zeros(row_capacity + 1, np.int64)
        self.arena = _zeros(max(int(arena_capacity), 64), np.uint8)
        self.meta = np.zeros(2, dtype=np.int64)

    @classmethod
    def from_names(cls, arena, name_off, n_rows, row_capacity=0, arena_capacity=0, share=False):
        """Table over given names (row 0 must be the bias); raises on a duplicate.

        ``share``: keep ``arena`` and ``name_off`` themselves (e.g. read-only
        views of a memory-mapped model) instead of copies with spare capacity:
        a table for lookups only, which can never grow.
        """
        t = cls.__new__(cls)
        used = int(name_off[n_rows])
        if share:
            t.arena, t.name_off = arena[:used], name_off[: n_rows + 1]
            t.row_hash = np.empty(max(n_rows, 2), dtype=np.uint64)
            t.meta = np.zeros(2, dtype=np.int64)
        else:
            t._allocate(max(row_capacity, n_rows), max(arena_capacity, used))
            t.arena[:used] = arena[:used]
            t.name_off[: n_rows + 1] = name_off[: n_rows + 1]
        hash_arena(t.name_off, t.arena, t.row_hash, 1, n_rows)
        t.meta[:] = (n_rows, used)
        t.slots = np.full(index_size(n_rows), EMPTY, dtype=np.int32)
        dup = find_duplicate(t.slots, t.row_hash, n_rows)
        if dup >= 0:
            raise ValueError("feature %r appears twice" % t.name(dup))
        return t

    @property
    def n_rows(self):
        return int(self.meta[0])

    @property
    def row_capacity(self):
        return self.row_hash.shape[0]

    def name(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]]).decode("utf-8", "backslashreplace")

    def name_bytes(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]])

    def needs_growth(self, new_rows, new_bytes):
        rows = self.n_rows + new_rows
        return (rows > self.row_capacity
                or self.meta[1] + new_bytes > self.arena.shape[0]
                or rows > self.slots.shape[0] * MAX_LOAD)

    def reserve(self, new_rows, new_bytes):
        """Make room for new_rows more rows holding new_bytes more name bytes."""
        n = self.n_rows
        rows = n + new_rows
        if rows > self.row_capacity:
            cap = max(rows, 2 * self.row_capacity)
            row_hash = _zeros(cap, np.uint64)
            row_hash[:n] = self.row_hash[:n]
            name_off = _zeros(cap + 1, np.int64)
            name_off[: n + 1] = self.name_off[: n + 1]
            self.row_hash, self.name_off = row_hash, name_off
        need = int(self.meta[1]) + new_bytes
        if need > self.arena.shape[0]:
            arena = _zeros(max(need, 2 * self.arena.shape[0]), np.uint8)
            arena[: self.meta[1]] = self.arena[: self.meta[1]]
            self.arena = arena
        if rows > self.slots.shape[0] * MAX_LOAD:
            self.slots = np.full(index_size(max(rows, 2 * n)), EMPTY, dtype=np.int32)
            rebuild_index(self.slots, self.row_hash, n)

    def lookup(self, name):
        """Row of a feature name (str or bytes), or -1."""
        return int(lookup_one(self.slots, self.row_hash, hash_name(name)))

    def names_view(self):
        """(arena, offsets) trimmed to the rows in use."""
        n = self.n_rows
        return self.arena[: self.name_off[n]], self.name_off[: n + 1]
