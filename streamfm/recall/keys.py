"""Record keys (item or user ids) -> positions, and key bytes kept in an arena.

A key is any token; it is identified by the keyed 64-bit hash the feature
table uses for names (``table.hash_bytes``), and looked up in the table's
open addressing index (``table.find_or_place`` / ``table.lookup_one``).

Keys come from users' files, so their hash is keyed too: with ``KEY``, one
random key per process (``table.new_key``). Every record set, index and
query of a process hashes with it; nothing stores these hashes (an index
file keeps the key bytes and they are hashed again when it is read).
"""

import numpy as np
from numba import njit

from ..table import EMPTY, find_or_place, hash_bytes, index_size, lookup_one, new_key

KEY = new_key()


def hash_spans(buf, spans, col, n, out):
    """out[s] = hash of buf[spans[s, col]:spans[s, col + 1]] for s < n (under KEY)."""
    hash_spans_with(buf, spans, col, n, out, KEY)


@njit(cache=True, nogil=True)
def hash_spans_with(buf, spans, col, n, out, key):
    for s in range(n):
        out[s] = hash_bytes(buf, spans[s, col], spans[s, col + 1], key)


@njit(cache=True, nogil=True)
def gather_spans(buf, spans, col, n, arena, a0, off, o0):
    """Append the n spans to arena[a0:], offsets to off[o0 + 1:]; returns the new end."""
    a = a0
    for s in range(n):
        for t in range(spans[s, col], spans[s, col + 1]):
            arena[a] = buf[t]
            a += 1
        off[o0 + s + 1] = a
    return a


@njit(cache=True, nogil=True)
def build_index(slots, key_hash, n, first_of):
    """Index keys 0..n-1; a repeated key keeps its first position.

    first_of[i] = the position whose key is indexed for key i (i itself,
    or the earlier duplicate). Returns the number of duplicates.
    """
    dups = 0
    for r in range(n):
        first_of[r] = find_or_place(slots, key_hash, r)
        if first_of[r] != r:
            dups += 1
    return dups


@njit(cache=True, nogil=True)
def lookup_hashes(slots, key_hash, hashes, n, out):
    """out[j] = position of hashes[j] or -1; returns the number of misses."""
    miss = 0
    for j in range(n):
        r = lookup_one(slots, key_hash, hashes[j])
        out[j] = r
        if r < 0:
            miss += 1
    return miss


class KeyIndex:
    """Position of each key among n keys given by their hashes."""

    def __init__(self, key_hash):
        self.key_hash = np.ascontiguousarray(key_hash, dtype=np.uint64)
        n = self.key_hash.shape[0]
        self.slots = np.full(index_size(n), EMPTY, dtype=np.int32)
        self.first_of = np.empty(n, dtype=np.int64)
        self.duplicates = int(build_index(self.slots, self.key_hash, n, self.first_of))

    def __len__(self):
        return self.key_hash.shape[0]

    def lookup(self, hashes):
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        out = np.empty(hashes.shape[0], dtype=np.int64)
        lookup_hashes(self.slots, self.key_hash, hashes, hashes.shape[0], out)
        return out
