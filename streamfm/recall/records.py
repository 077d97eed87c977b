"""Recall files (items, users, clicks, queries) parsed into CSR arrays.

Every line goes through the one grammar in ``parse.py`` (modes KEYED and
CLICK); bad lines follow the shared policy of ``badlines.BadLineLog``
(counted, reported with their line numbers, skipped or stopping the run).
A block of records holds its features' rows in a feature table (-1 for a
name the table does not know, unless a trainable model is given: then new
names get rows), their values, and each record's key (hash and bytes), the
clicked item's key hash for click lines, and its line number.
"""

import numpy as np
from numba import njit

from .. import parse
from ..badlines import BadLineLog
from ..metrics import Progress, fmt_int
from ..reader import BlockReader
from .keys import gather_spans, hash_spans


@njit(cache=True, nogil=True)
def lines_of_spans(buf, spans, n, first_line, out):
    """out[s] = line number (first_line-based) of the span starting at spans[s, 0]."""
    line = first_line
    pos = 0
    for s in range(n):
        end = spans[s, 0]
        while pos < end:
            if buf[pos] == 10:
                line += 1
            pos += 1
        out[s] = line


class Records:
    """n records: CSR features (rows, vals), keys, optional clicked-item hashes."""

    def __init__(self, indptr, rows, vals, key_hash, key_arena, key_off, line, item_hash=None,
                 item_arena=None, item_off=None):
        self.item_arena = item_arena
        self.item_off = item_off
        self.indptr = indptr
        self.rows = rows
        self.vals = vals
        self.key_hash = key_hash
        self.key_arena = key_arena
        self.key_off = key_off
        self.line = line
        self.item_hash = item_hash

    @property
    def n(self):
        return self.key_hash.shape[0]

    def key(self, i):
        return bytes(self.key_arena[self.key_off[i]:self.key_off[i + 1]])

    def item_key(self, i):
        return bytes(self.item_arena[self.item_off[i]:self.item_off[i + 1]])

    def max_len(self):
        return int(np.diff(self.indptr).max()) if self.n else 0

    @classmethod
    def empty(cls, click=False):
        z = np.zeros(0, np.int64)
        return cls(np.zeros(1, np.int64), z, np.zeros(0), np.zeros(0, np.uint64),
                   np.zeros(0, np.uint8), np.zeros(1, np.int64), z,
                   np.zeros(0, np.uint64) if click else None,
                   np.zeros(0, np.uint8) if click else None, np.zeros(1, np.int64) if click else None)

    @classmethod
    def concat(cls, parts, click=False):
        if not parts:
            return cls.empty(click)
        if len(parts) == 1:
            return parts[0]
        nnz = np.cumsum([0] + [p.rows.shape[0] for p in parts])
        nkb = np.cumsum([0] + [p.key_arena.shape[0] for p in parts])
        indptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + nnz[i] for i, p in enumerate(parts)])
        key_off = np.concatenate([parts[0].key_off[:1]] + [p.key_off[1:] + nkb[i] for i, p in enumerate(parts)])
        item_arena = item_off = item_hash = None
        if click:
            nib = np.cumsum([0] + [p.item_arena.shape[0] for p in parts])
            item_off = np.concatenate([parts[0].item_off[:1]]
                                      + [p.item_off[1:] + nib[i] for i, p in enumerate(parts)])
            item_arena = np.concatenate([p.item_arena for p in parts])
            item_hash = np.concatenate([p.item_hash for p in parts])
        return cls(indptr, np.concatenate([p.rows for p in parts]), np.concatenate([p.vals for p in parts]),
                   np.concatenate([p.key_hash for p in parts]), np.concatenate([p.key_arena for p in parts]),
                   key_off, np.concatenate([p.line for p in parts]), item_hash, item_arena, item_off)

    def take(self, idx):
        """The records at positions idx (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = np.diff(self.indptr)[idx]
        indptr = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        src = concat_ranges(self.indptr[idx], lens)
        klens = np.diff(self.key_off)[idx]
        key_off = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(klens, out=key_off[1:])
        ksrc = concat_ranges(self.key_off[idx], klens)
        item_arena = item_off = item_hash = None
        if self.item_hash is not None:
            item_hash = self.item_hash[idx]
            ilens = np.diff(self.item_off)[idx]
            item_off = np.zeros(len(idx) + 1, np.int64)
            np.cumsum(ilens, out=item_off[1:])
            item_arena = self.item_arena[concat_ranges(self.item_off[idx], ilens)]
        return Records(indptr, self.rows[src], self.vals[src], self.key_hash[idx], self.key_arena[ksrc],
                       key_off, self.line[idx], item_hash, item_arena, item_off)


def concat_ranges(starts, lens):
    """Concatenation of arange(s, s + l) for each (s, l), vectorized."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lens)
    out = np.ones(total, np.int64)
    nz = lens > 0
    st, ln, en = starts[nz], lens[nz], ends[nz]
    out[0] = st[0]
    out[en[:-1]] = st[1:] - (st[:-1] + ln[:-1] - 1)
    return np.cumsum(out)


def block_records(blk, p, mode):
    """Records of one parsed block (copies: the parse buffers are reused)."""
    n = p.n_samples
    key_hash = np.empty(n, np.uint64)
    hash_spans(blk.data, p.keys, 0, n, key_hash)
    item_hash = item_arena = item_off = None
    if mode == parse.CLICK:
        item_hash = np.empty(n, np.uint64)
        hash_spans(blk.data, p.keys, 2, n, item_hash)
        ilen = int((p.keys[:, 3] - p.keys[:, 2]).sum()) if n else 0
        item_arena = np.empty(ilen, np.uint8)
        item_off = np.zeros(n + 1, np.int64)
        gather_spans(blk.data, p.keys, 2, n, item_arena, 0, item_off, 0)
    klen = int((p.keys[:, 1] - p.keys[:, 0]).sum()) if n else 0
    arena = np.empty(klen, np.uint8)
    key_off = np.zeros(n + 1, np.int64)
    gather_spans(blk.data, p.keys, 0, n, arena, 0, key_off, 0)
    line = np.empty(n, np.int64)
    lines_of_spans(blk.data, p.keys, n, blk.first_line, line)
    return Records(p.indptr.copy(), p.rows.copy(), p.vals.copy(), key_hash, arena, key_off, line, item_hash,
                   item_arena, item_off)


class RecordReader:
    """Blocks of records from a binary stream, with the bad-line policy applied.

    With ``model`` (a trainable Model), names the table does not know get
    rows (initialised as fm_train does); with only ``table``, they stay -1.
    """

    def __init__(self, stream, mode, opts, log, source, table=None, model=None, block_size=None,
                 progress=None, stop=None):
        self.progress = progress
        self.mode = mode
        self.opts = opts
        self.table = table if model is None else model.table
        self.model = model
        self.bad = BadLineLog(opts, log, source=source)
        self.source = source
        self.lines = 0
        self.clipped = 0
        self.bufs = parse.ParseBuffers(0)
        self.reader = BlockReader(stream, stop=stop,
                                  **({"block_size": block_size} if block_size else {}))

    def __iter__(self):
        try:
            while True:
                blk = self.reader.get()
                if blk is None:
                    break
                p = parse.parse(blk.data, blk.n_lines, self.bufs, self.table, self.mode)
                self.lines += p.n_lines
                self.clipped += p.n_clipped
                self.bad.check(blk, p, self.lines)
                if p.n_unknown and self.model is not None:
                    self.model.add_unknown(p, blk.data)
                if self.progress is not None:
                    self.progress(self)
                yield block_records(blk, p, self.mode)
            if self.reader.error is not None:
                raise self.reader.error
            self.bad.check_fraction(self.lines, final=True)
        finally:
            self.reader.stop()
            self.bad.close()

    def read_all(self):
        return Records.concat(list(self), click=self.mode == parse.CLICK)


class ReadProgress(Progress):
    """'<name>: reading <source>: N lines' on stderr every few seconds (not when quiet)."""

    def __init__(self, log, name, quiet, every=5.0):
        Progress.__init__(self, log, name, every, quiet)

    def __call__(self, reader):
        if self.due():
            self.say("reading %s: %s lines%s" % (reader.source, fmt_int(reader.lines),
                                                  ", %d bad" % reader.bad.count if reader.bad.count else ""))
