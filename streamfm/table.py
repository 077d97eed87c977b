"""Feature table: a feature name's keyed 64-bit hash -> dense row id.

Rows are numbered in first-seen order; row 0 is the bias and is never in the
hash index (a feature literally named ``bias`` gets a row of its own, as in
alphaFM). The index is open addressing with linear probing over ``slots``
(int32 row ids, -1 = empty) and compares the full 64-bit hash kept per row in
``row_hash``; every name's bytes live in one arena so the text model can be
written with the original names.

Two hashes per name (docs/design.md, "Feature hash"):

- the *table hash* (``hash_bytes``): SipHash-1-3 under the table's random
  128-bit ``key`` (``new_key``: os.urandom, never --seed), so names crafted
  without the key can neither land on another name's row nor pile up on one
  probe chain. The parser computes it while it scans a token.
- the *init hash* (``init_hash_bytes``): unkeyed, a function of the name
  only, kept per row in ``row_init``. A row's initial factors are drawn from
  it and --seed, so they do not depend on the key: A then -im B equals A+B.
  It is computed when a row is created, so only new names pay for it.

Concurrency: lookups run lock-free from several trainer threads while one
thread inserts. An insert writes ``row_hash[r]`` before ``slots[i] = r``; a
reader that races it either finds the row or falls through to an empty slot
and reports a miss, and misses are re-checked under the insert lock, so a
race can only cost a re-check, never a wrong row. Growth (a bigger index or
row capacity) replaces arrays and therefore runs while trainers are paused.
"""

import os

import numpy as np
from numba import njit

from .jit import prefetch1

EMPTY = -1
MAX_LOAD = 0.7
KEY_BYTES = 16
# A model file whose names collide under every one of this many fresh keys is
# not a run of bad luck (each try fails with probability ~n^2 / 2^65).
_KEY_TRIES = 8

_U8 = np.uint64(8)
_S56 = np.uint64(56)


# ---------------------------------------------------------------------------
# The table hash: SipHash-1-3 (Aumasson & Bernstein) over the parser's words.
#
# Why SipHash: it is a keyed PRF designed for exactly this job (hash-table
# flooding; Python's and Rust's hash tables use SipHash-1-3). A keyed
# multiply-xorshift is cheaper but not enough: a difference in the top bit
# of a word passes through x*K and x^(x>>s) with probability 1, whatever the
# key, so an attacker can cancel it with the next word and build colliding
# names without knowing the key. SipHash's add-rotate-xor rounds have no
# such key-independent path. One round per 8-byte word and three to finish;
# names of CTR logs are short (f13_6062: one final block), so a name costs
# four rounds, ~60 simple integer operations that overlap with the scan.
#
# The words are the ones the parser accumulates (first byte highest, a
# partial last word in the low bytes, the length mod 256 in the top byte of
# the last block), i.e. SipHash-1-3 of the name with each 8-byte chunk
# byte-reversed; tests/test_hash.py checks that against a plain SipHash.

_C0 = np.uint64(0x736F6D6570736575)
_C1 = np.uint64(0x646F72616E646F6D)
_C2 = np.uint64(0x6C7967656E657261)
_C3 = np.uint64(0x7465646279746573)
_FF = np.uint64(0xFF)
_R13, _R51 = np.uint64(13), np.uint64(51)
_R16, _R48 = np.uint64(16), np.uint64(48)
_R17, _R47 = np.uint64(17), np.uint64(47)
_R21, _R43 = np.uint64(21), np.uint64(43)
_R32 = np.uint64(32)


@njit(inline="always")
def _sipround(v0, v1, v2, v3):
    v0 += v1
    v1 = (v1 << _R13) | (v1 >> _R51)
    v1 ^= v0
    v0 = (v0 << _R32) | (v0 >> _R32)
    v2 += v3
    v3 = (v3 << _R16) | (v3 >> _R48)
    v3 ^= v2
    v0 += v3
    v3 = (v3 << _R21) | (v3 >> _R43)
    v3 ^= v0
    v2 += v1
    v1 = (v1 << _R17) | (v1 >> _R47)
    v1 ^= v2
    v2 = (v2 << _R32) | (v2 >> _R32)
    return v0, v1, v2, v3


@njit(inline="always")
def hash_start(key):
    """The hash state before a name's first byte, for a table ``key`` (uint64[2])."""
    k0 = key[0]
    k1 = key[1]
    return k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3


@njit(inline="always")
def hash_word(s, acc):
    """State after one full 8-byte word ``acc``."""
    v0, v1, v2, v3 = s
    v3 ^= acc
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ acc, v1, v2, v3


@njit(inline="always")
def hash_final(s, acc, length):
    """The hash of a name of ``length`` bytes whose last length % 8 are in ``acc``."""
    v0, v1, v2, v3 = hash_word(s, acc | (np.uint64(length) << _S56))
    v2 ^= _FF
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@njit(cache=True, nogil=True)
def hash_bytes(buf, start, end, key):
    """Table hash of the name ``buf[start:end]`` under ``key``; equals what the parser computes."""
    s = hash_start(key)
    acc = np.uint64(0)
    cnt = 0
    for p in range(start, end):
        acc = (acc << _U8) | np.uint64(buf[p])
        cnt += 1
        if cnt == 8:
            s = hash_word(s, acc)
            acc = np.uint64(0)
            cnt = 0
    return hash_final(s, acc, end - start)


def _as_buf(name):
    if isinstance(name, str):
        name = name.encode("utf-8")
    return np.frombuffer(name, dtype=np.uint8)


def hash_name(name, key):
    """Table hash of a name given as bytes or str (UTF-8) under ``key``."""
    buf = _as_buf(name)
    return np.uint64(hash_bytes(buf, 0, len(buf), np.asarray(key, dtype=np.uint64)))


def new_key():
    """A fresh random table key: 128 bits from os.urandom, as uint64[2].

    Never derived from --seed: a key that can be guessed protects nothing.
    """
    return key_from_bytes(os.urandom(KEY_BYTES))


def key_from_bytes(b):
    """The key stored as 16 bytes (model headers) as uint64[2]."""
    if not isinstance(b, (bytes, bytearray)) or len(b) != KEY_BYTES:
        raise ValueError("a hash key is %d bytes" % KEY_BYTES)
    return np.frombuffer(bytes(b), dtype="<u8").astype(np.uint64)


def key_to_bytes(key):
    return np.asarray(key, dtype="<u8").tobytes()


# ---------------------------------------------------------------------------
# The init hash: unkeyed, seeds a row's initial factors (ftrl.init_row).
#
# A function of the name alone, so a feature's initial v is the same in every
# run with the same --seed, whatever the table key. It is the 64-bit hash
# streamfm used for the table before the key existed (one multiply per 8-byte
# word, the splitmix64 finalizer), so initial factors are unchanged. Being
# unkeyed it can be inverted; that only lets two names start from equal
# random factors, it gives neither the other's row.

_INIT_SEED = np.uint64(0x6A09E667F3BCC908)
_K_STEP = np.uint64(0x9E3779B97F4A7C15)
_K_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_K_MIX2 = np.uint64(0x94D049BB133111EB)
_S29 = np.uint64(29)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@njit(inline="always")
def _init_word(h, acc):
    h = (h ^ acc) * _K_STEP
    return h ^ (h >> _S29)


@njit(cache=True, nogil=True)
def init_hash_bytes(buf, start, end):
    """Init hash of the name ``buf[start:end]`` (unkeyed)."""
    h = _INIT_SEED
    acc = np.uint64(0)
    cnt = 0
    for p in range(start, end):
        acc = (acc << _U8) | np.uint64(buf[p])
        cnt += 1
        if cnt == 8:
            h = _init_word(h, acc)
            acc = np.uint64(0)
            cnt = 0
    z = _init_word(h, acc ^ (np.uint64(end - start) << _S56))
    z = (z ^ (z >> _S30)) * _K_MIX1
    z = (z ^ (z >> _S27)) * _K_MIX2
    return z ^ (z >> _S31)


def init_hash(name):
    """Init hash of a name given as bytes or str (UTF-8)."""
    buf = _as_buf(name)
    return np.uint64(init_hash_bytes(buf, 0, len(buf)))


# ---------------------------------------------------------------------------
# The probe: linear, from the slot the hash's low bits name.
#
# With a keyed hash the home slots of names an attacker writes are as random
# as any others, and linear probing at load <= MAX_LOAD then costs ~2 slots
# per hit and ~6 per miss on average (Knuth); the longest chain grows only
# like log(slots). Linear probing is kept because the index is read lock-free
# while one thread inserts, which needs entries that never move (Robin Hood
# or cuckoo schemes move them) and no deletions.


@njit(inline="always")
def home_slot(h, mask):
    """The first slot probed for hash h in an index of mask + 1 slots."""
    return np.int64(h & np.uint64(mask))


@njit(inline="always")
def lookup_from(slots, row_hash, h, i, mask):
    """Row of hash h, probing from slot i on, or -1."""
    while True:
        r = slots[i]
        if r == EMPTY:
            return -1
        if row_hash[r] == h:
            return r
        i = (i + 1) & mask


@njit(inline="always")
def lookup_span(slots, row_hash, hashes, rows, j0, j1):
    """rows[j] = the row of hashes[j] (-1: none) for j0 <= j < j1; returns the misses.

    The same probe as ``lookup_from``, in two passes so that the hash of each
    candidate row loads while the next home slot is read (the parser calls
    it on a line's features, whose home slots it prefetched as it went by).
    """
    mask = slots.shape[0] - 1
    for j in range(j0, j1):
        sl = slots[home_slot(hashes[j], mask)]
        rows[j] = sl
        if sl >= 0:
            prefetch1(row_hash, sl)
    misses = 0
    for j in range(j0, j1):
        h = hashes[j]
        r = rows[j]
        if r >= 0 and row_hash[r] != h:
            r = lookup_from(slots, row_hash, h, (home_slot(h, mask) + 1) & mask, mask)
        rows[j] = r
        if r < 0:
            misses += 1
    return misses


@njit(cache=True, nogil=True)
def lookup_one(slots, row_hash, h):
    """Row of hash h, or -1."""
    mask = slots.shape[0] - 1
    return lookup_from(slots, row_hash, h, home_slot(h, mask), mask)


@njit(inline="always")
def find_or_place(slots, row_hash, r):
    """The row already indexed under row r's hash, or r after indexing it."""
    mask = slots.shape[0] - 1
    h = row_hash[r]
    i = home_slot(h, mask)
    while True:
        s = slots[i]
        if s == EMPTY:
            slots[i] = r
            return r
        if row_hash[s] == h:
            return s
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def place(slots, row_hash, r):
    """Index row r (whose hash is not indexed yet)."""
    mask = slots.shape[0] - 1
    i = home_slot(row_hash[r], mask)
    while slots[i] != EMPTY:
        i = (i + 1) & mask
    slots[i] = r


@njit(cache=True, nogil=True)
def rebuild_index(slots, row_hash, n_rows):
    """Fill an empty index with rows 1..n_rows-1 (row 0, the bias, stays out)."""
    for r in range(1, n_rows):
        place(slots, row_hash, r)


@njit(cache=True, nogil=True)
def max_probe(slots, row_hash):
    """(longest, total) distance of an indexed row from its home slot, in slots."""
    mask = slots.shape[0] - 1
    longest = 0
    total = 0
    for i in range(slots.shape[0]):
        r = slots[i]
        if r != EMPTY:
            d = (i - home_slot(row_hash[r], mask)) & mask
            total += d
            if d > longest:
                longest = d
    return longest, total


@njit(inline="always")
def same_bytes(a, a0, a1, b, b0, b1):
    if a1 - a0 != b1 - b0:
        return False
    for t in range(a1 - a0):
        if a[a0 + t] != b[b0 + t]:
            return False
    return True


@njit(cache=True, nogil=True)
def hash_arena(name_off, arena, row_hash, row_init, first, last, key):
    """Table and init hashes of the names of rows first..last-1."""
    for r in range(first, last):
        row_hash[r] = hash_bytes(arena, name_off[r], name_off[r + 1], key)
        row_init[r] = init_hash_bytes(arena, name_off[r], name_off[r + 1])


@njit(cache=True, nogil=True)
def hash_table_names(name_off, arena, row_hash, first, last, key):
    """Table hashes of the names of rows first..last-1 (no init hashes: lookup-only tables)."""
    for r in range(first, last):
        row_hash[r] = hash_bytes(arena, name_off[r], name_off[r + 1], key)


@njit(cache=True, nogil=True)
def index_names(slots, row_hash, name_off, arena, first, last):
    """Index rows first..last-1 of a model file's names (the rows before are indexed).

    Returns (the first row whose name an earlier row already has, or -1;
    collisions: rows before it whose distinct name has an earlier row's
    hash, left out of the index).
    """
    collisions = 0
    for r in range(first, last):
        s = find_or_place(slots, row_hash, r)
        if s != r:
            if same_bytes(arena, name_off[s], name_off[s + 1], arena, name_off[r], name_off[r + 1]):
                return r, collisions
            collisions += 1
    return -1, collisions


def name_hashes(arena, name_off, n_rows, key):
    """Table hashes under ``key`` of the names of rows 1..n_rows-1 (row 0: 0)."""
    row_hash = np.zeros(max(n_rows, 1), np.uint64)
    row_init = np.zeros(max(n_rows, 1), np.uint64)
    hash_arena(name_off, arena, row_hash, row_init, 1, n_rows, np.asarray(key, np.uint64))
    return row_hash


def count_collisions(arena, name_off, n_rows, key):
    """(duplicate names, hash collisions) among rows 1..n_rows-1 under ``key``.

    A collision is a name whose table hash equals an earlier, different
    name's: in training it would share that name's row.
    """
    row_hash = name_hashes(arena, name_off, n_rows, key)
    slots = np.full(index_size(n_rows), EMPTY, dtype=np.int32)
    dups = collisions = 0
    first = 1
    while True:
        dup, c = index_names(slots, row_hash, name_off, arena, first, n_rows)
        collisions += c
        if dup < 0:
            return dups, collisions
        dups += 1
        first = dup + 1


class DuplicateName(ValueError):
    """A name given twice to FeatureTable.from_names; ``row`` is the second."""

    def __init__(self, row, message):
        ValueError.__init__(self, message)
        self.row = row


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

    ``key``: the table hash's key (uint64[2]); a fresh random one if None.
    Capacity grows by replacing arrays; callers that run kernels on the
    arrays from other threads must pause them around ``reserve``.
    """

    def __init__(self, row_capacity=1 << 16, arena_capacity=1 << 20, key=None):
        self.key = new_key() if key is None else np.array(key, dtype=np.uint64)
        self._allocate(row_capacity, arena_capacity)
        name = b"bias"
        self.arena[: len(name)] = np.frombuffer(name, np.uint8)
        self.name_off[1] = len(name)
        self.meta[:2] = (1, len(name))
        self.slots = np.full(index_size(1), EMPTY, dtype=np.int32)

    def _allocate(self, row_capacity, arena_capacity):
        row_capacity = max(int(row_capacity), 2)
        self.row_hash = _zeros(row_capacity, np.uint64)
        self.row_init = _zeros(row_capacity, np.uint64)
        self.name_off = _zeros(row_capacity + 1, np.int64)
        self.arena = _zeros(max(int(arena_capacity), 64), np.uint8)
        # meta: rows, arena bytes used, hash collisions met while inserting
        self.meta = np.zeros(3, dtype=np.int64)

    @classmethod
    def from_names(cls, arena, name_off, n_rows, row_capacity=0, arena_capacity=0, key=None, share=False):
        """Table over given names (row 0 must be the bias); raises on a duplicate.

        ``key``: the key the names were trained under (a binary model's); None
        draws a fresh one. Distinct names that share a hash under it (only a
        file not trained with this key can hold such a pair) get a fresh key,
        so every name keeps its own row.
        ``share``: keep ``arena`` and ``name_off`` themselves (e.g. read-only
        views of a memory-mapped model) instead of copies with spare capacity,
        and no init hashes: a table for lookups only, which can never grow.
        """
        t = cls.__new__(cls)
        used = int(name_off[n_rows])
        if share:
            t.arena, t.name_off = arena[:used], name_off[: n_rows + 1]
            t.row_hash = np.empty(max(n_rows, 2), dtype=np.uint64)
            t.row_init = None  # no row is ever created in a lookup-only table
            t.meta = np.zeros(3, dtype=np.int64)
        else:
            t._allocate(max(row_capacity, n_rows), max(arena_capacity, used))
            t.arena[:used] = arena[:used]
            t.name_off[: n_rows + 1] = name_off[: n_rows + 1]
        t.meta[:2] = (n_rows, used)
        for _ in range(_KEY_TRIES):
            t.key = new_key() if key is None else np.array(key, dtype=np.uint64)
            key = None
            if share:
                hash_table_names(t.name_off, t.arena, t.row_hash, 1, n_rows, t.key)
            else:
                hash_arena(t.name_off, t.arena, t.row_hash, t.row_init, 1, n_rows, t.key)
            t.slots = np.full(index_size(n_rows), EMPTY, dtype=np.int32)
            dup, collisions = index_names(t.slots, t.row_hash, t.name_off, t.arena, 1, n_rows)
            if dup >= 0:
                raise DuplicateName(dup, "feature %r appears twice" % t.name(dup))
            if collisions == 0:
                return t
        raise ValueError("feature names collide under %d random hash keys" % _KEY_TRIES)

    @property
    def n_rows(self):
        return int(self.meta[0])

    @property
    def collisions(self):
        """Names that met an earlier name's hash while inserting (they share its row)."""
        return int(self.meta[2])

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
            row_init = _zeros(cap, np.uint64)
            row_init[:n] = self.row_init[:n]
            name_off = _zeros(cap + 1, np.int64)
            name_off[: n + 1] = self.name_off[: n + 1]
            self.row_hash, self.row_init, self.name_off = row_hash, row_init, name_off
        need = int(self.meta[1]) + new_bytes
        if need > self.arena.shape[0]:
            arena = _zeros(max(need, 2 * self.arena.shape[0]), np.uint8)
            arena[: self.meta[1]] = self.arena[: self.meta[1]]
            self.arena = arena
        if rows > self.slots.shape[0] * MAX_LOAD:
            self.slots = np.full(index_size(max(rows, 2 * n)), EMPTY, dtype=np.int32)
            rebuild_index(self.slots, self.row_hash, n)

    def hash(self, name):
        """Table hash of a name (str or bytes) under this table's key."""
        return hash_name(name, self.key)

    def lookup(self, name):
        """Row of a feature name (str or bytes), or -1."""
        return self.lookup_hash(self.hash(name))

    def lookup_hash(self, h):
        """Row of a table hash ``h`` (under this table's key), or -1.

        Hashes are uint64 throughout: one at or above 2**63 given as a
        Python int would reach numba as an int64 and overflow.
        """
        return int(lookup_one(self.slots, self.row_hash, np.uint64(h)))

    def lookup_names(self, arena, name_off, first, last, out):
        """out[r] = the row of name r of (arena, name_off) in this table (or -1), r in first..last-1."""
        lookup_arena(self.slots, self.row_hash, self.key, arena, name_off, first, last, out)

    def probe_lengths(self):
        """(longest, mean) distance in slots of a row from its home slot."""
        longest, total = max_probe(self.slots, self.row_hash)
        return int(longest), float(total) / max(self.n_rows - 1, 1)

    def key_bytes(self):
        return key_to_bytes(self.key)

    def copy(self):
        """An independent table with the same rows, key and capacity (spare room not touched)."""
        t = FeatureTable.__new__(FeatureTable)
        t.key = self.key.copy()
        t._allocate(self.row_capacity, self.arena.shape[0])
        n, used = self.n_rows, int(self.meta[1])
        t.row_hash[:n] = self.row_hash[:n]
        t.row_init[:n] = self.row_init[:n]
        t.name_off[: n + 1] = self.name_off[: n + 1]
        t.arena[:used] = self.arena[:used]
        t.meta[:] = self.meta
        t.slots = self.slots.copy()
        return t

    def names_view(self):
        """(arena, offsets) trimmed to the rows in use."""
        n = self.n_rows
        return self.arena[: self.name_off[n]], self.name_off[: n + 1]


@njit(cache=True, nogil=True)
def lookup_arena(slots, row_hash, key, arena, name_off, first, last, out):
    for r in range(first, last):
        out[r] = lookup_one(slots, row_hash, hash_bytes(arena, name_off[r], name_off[r + 1], key))
