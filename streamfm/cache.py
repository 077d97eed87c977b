"""The parsed-block cache of a multi-pass run (``fm_train --passes N``).

Pass 1 parses the text as a one-pass run does; each parsed block (CSR:
indptr, rows, vals, labels, and each sample's input line number) is also
appended to this file. Passes 2..N read the blocks back and hand them to
the FTRL kernel: no parsing, no feature-table lookups (a block's row ids stay
valid because the feature table only ever appends rows). Like Vowpal
Wabbit's cache, it holds the numbers, not the text.

Layout (little-endian; docs/design.md, "Passes and the block cache")::

    "SFMCACHE" | u32 version | u32 header length | msgpack header | pad to 8
    record*:   "BLK1" | u32 crc | i64 n_lines | i64 n_samples | i64 nnz
               | indptr i64[n_samples + 1] | rows i64[nnz] | vals f64[nnz]
               | ys f64[n_samples] | lines i64[n_samples]
    msgpack trailer (counts of pass 1, the names of the rows it created) | pad to 8
    "SFMCEND2" | i64 offset of the trailer | u32 head crc | u32 trailer crc

Each crc is zlib's crc32: a record's of the bytes after its crc field (its
counts and arrays), the head's of everything before the first record, the
trailer's of everything from the trailer's offset up to the head crc.

The file is written with the one atomic writer (``output.open_output``): it
appears under its name only complete, with its trailer; a run that fails or
is interrupted leaves nothing. It is never written over anything but a
regular file. Every block read back is checked (its crc, CSR shape, row ids
within the table, finite numbers) before a kernel indexes with it, and the
header and trailer (crcs, then every field's type and range, the name
offsets' order and bounds) before the reader is made.
"""

import hashlib
import mmap
import os
import stat
import struct
import threading
import zlib

import msgpack
import numpy as np
from numba import njit

from .errors import OutputError, StreamFMError
from .output import open_output

MAGIC = b"SFMCACHE"
VERSION = 2  # 2: crc32 of every record, of the head and of the trailer
_HEAD = struct.Struct("<8sII")
_REC = struct.Struct("<4sIqqq")
_REC_TAG = b"BLK1"
_REC_CRC_FROM = 8  # a record's crc covers its bytes from here (its counts) to its end
_END = struct.Struct("<8sqII")
_END_TAG = b"SFMCEND2"
_END_CRC_AT = 16  # the trailer's crc covers the file from the trailer to here in the end record


class CacheError(StreamFMError):
    """A cache file that cannot be read, or does not fit this run (see the message)."""


def input_fingerprint(source):
    """(size, mtime_ns) of a regular input file (a path or an open file), else None (a pipe)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            st = os.stat(source)
        elif hasattr(source, "fileno"):
            st = os.fstat(source.fileno())
        else:
            return None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def table_fingerprint(table):
    """[rows, digest of their names]: the feature table a cache's row ids continue."""
    arena, off = table.names_view()
    return [int(table.n_rows), hashlib.blake2b(bytes(arena), digest_size=16).hexdigest()]


def check_cache_path(path):
    """OutputError unless ``path`` is a regular file or nothing (a cache never goes to a device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError("%s: cannot write the cache: %s" % (path, e.strerror or e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError("%s: the cache is only written to a regular file, and this is not one" % path)


def _rec_size(n, nnz):
    """Bytes of a record of ``n`` samples and ``nnz`` values: indptr, rows, vals, ys, lines."""
    return _REC.size + 8 * (3 * n + 1 + 2 * nnz)


def _pad(n):
    return b"\0" * (-n % 8)


class CacheWriter:
    """Appends parsed blocks to a new cache file; ``finish`` completes it (atomically).

    ``meta``: the header's dict (what the cache was made from). ``add`` may be
    called from several threads (a lock keeps records whole). ``durable``:
    fsync it (a kept cache); a temporary one skips that.
    """

    def __init__(self, path, meta, durable=True):
        check_cache_path(path)
        self.path = str(path)
        self.out = open_output(self.path, durable=durable)
        self.lock = threading.Lock()
        self.blocks = 0
        head = msgpack.packb(dict(meta, version=VERSION), use_bin_type=True)
        head = _HEAD.pack(MAGIC, VERSION, len(head)) + head + _pad(_HEAD.size + len(head))
        self.head_crc = zlib.crc32(head)
        try:
            self.out.write(head)
        except BaseException:
            self.out.abort()
            raise

    def add(self, n_lines, indptr, rows, vals, ys, lines):
        """One block: ``indptr`` (from 0), ``rows`` (resolved), ``vals``, ``ys`` and each sample's line."""
        n = int(ys.shape[0])
        nnz = int(indptr[n])
        parts = (np.ascontiguousarray(indptr[: n + 1], dtype=np.int64), np.ascontiguousarray(rows[:nnz], np.int64),
                 np.ascontiguousarray(vals[:nnz], np.float64), np.ascontiguousarray(ys, np.float64),
                 np.ascontiguousarray(lines, np.int64))
        head = _REC.pack(_REC_TAG, 0, int(n_lines), n, nnz)[_REC_CRC_FROM:]
        crc = zlib.crc32(head)
        for a in parts:  # zlib.crc32 releases the GIL: the other workers go on
            crc = zlib.crc32(a, crc)
        with self.lock:
            self.out.write(_REC_TAG + struct.pack("<I", crc) + head)
            for a in parts:
                if a.shape[0]:
                    self.out.write(a)
            self.blocks += 1

    def finish(self, trailer):
        """Write the trailer and put the file in place; returns its path."""
        with self.lock:
            off = self.out.tell()
            tr = msgpack.packb(dict(trailer, blocks=self.blocks), use_bin_type=True)
            tail = tr + _pad(len(tr)) + _END.pack(_END_TAG, off, 0, 0)[:_END_CRC_AT]
            self.out.write(tail + struct.pack("<II", self.head_crc, zlib.crc32(tail)))
            self.out.close()
        return self.path

    def abort(self):
        """Discard the file (nothing is put in place)."""
        self.out.abort()


class CachedBlock:
    __slots__ = ("seq", "n_lines", "indptr", "rows", "vals", "ys", "lines", "n_samples")


@njit(cache=True, nogil=True)
def block_ok(indptr, rows, vals, ys, n_rows):
    """True when a block read back is a CSR the kernels may index with:
    indptr from 0, non-decreasing, to nnz; 0 <= rows < n_rows; finite numbers."""
    n = ys.shape[0]
    if indptr[0] != 0 or indptr[n] != rows.shape[0]:
        return False
    for s in range(n):
        if indptr[s + 1] < indptr[s] or not (abs(ys[s]) < np.inf):
            return False
    for j in range(rows.shape[0]):
        if rows[j] < 0 or rows[j] >= n_rows or not (abs(vals[j]) < np.inf):
            return False
    return True


class CacheReader:
    """The blocks of a complete cache file, in file order.

    Has the interface ``pipeline.run_workers`` needs (``get``, ``stop``,
    ``error``): each worker thread takes the next block. ``rewind`` starts a
    new pass over the same file. A block's crc is checked until one pass (or
    ``verify``) has checked them all: later passes read the same mapped pages
    and check only the numbers (``block_ok``), which costs ~1/4 of a crc. ``n_rows``: the table rows the row ids may
    reach (CacheError on a block outside them). ``names`` (uint8) and
    ``name_off`` (int64, from 0, non-decreasing, to ``len(names)``): the names
    of the rows pass 1 created, checked here before any kernel sees them.
    CacheError (naming the file) on a file that is not a whole, undamaged
    cache of this version.
    """

    def __init__(self, path):
        self.path = str(path)
        self.error = None
        self.lock = threading.Lock()
        try:
            self.f = open(self.path, "rb")
        except OSError as e:
            raise CacheError("%s: cannot read the cache: %s" % (self.path, e.strerror or e)) from None
        try:
            self._read_ends()
            self._check_fields()
        except BaseException:
            self.f.close()
            raise
        # the blocks are read in place: views of the mapped file, no copies
        try:
            self.mm = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self.f.close()
            raise CacheError("%s: cannot map the cache: %s" % (self.path, e)) from None
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)
        self.crc_checked = False  # every block's crc matched once (a whole pass, or verify)
        self.rewind()

    def _bad(self, why):
        return CacheError("%s: not a complete streamfm cache (%s)" % (self.path, why))

    def _damaged(self, why):
        return CacheError("%s: the cache is damaged (%s); delete it" % (self.path, why))

    def _read_ends(self):
        f = self.f
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] != MAGIC:
            raise self._bad("no cache header")
        _, version, hlen = _HEAD.unpack(head)
        if version < VERSION:
            raise CacheError("%s: made by an older streamfm (cache format %d, this one reads %d): delete it or "
                             "run without --cache-reuse" % (self.path, version, VERSION))
        if version != VERSION:
            raise self._bad("version %d, this streamfm reads %d" % (version, VERSION))
        self.start = _HEAD.size + hlen + len(_pad(_HEAD.size + hlen))
        if size < self.start + _END.size:
            raise self._bad("truncated")
        f.seek(size - _END.size)
        tag, off, head_crc, tr_crc = _END.unpack(f.read(_END.size))
        if tag != _END_TAG or not (self.start <= off <= size - _END.size) or off % 8:
            raise self._bad("no trailer: the run writing it did not finish")
        f.seek(0)
        head = f.read(self.start)
        if zlib.crc32(head) != head_crc:
            raise self._damaged("its header fails its checksum")
        f.seek(off)
        tail = f.read(size - _END.size + _END_CRC_AT - off)
        if zlib.crc32(tail) != tr_crc:
            raise self._damaged("its trailer fails its checksum")
        try:
            self.meta = msgpack.unpackb(head[_HEAD.size:_HEAD.size + hlen], raw=False)
            un = msgpack.Unpacker(raw=False)
            un.feed(tail[:len(tail) - _END_CRC_AT])
            self.trailer = next(un)
        except Exception as e:  # msgpack raises several types for bad bytes
            raise self._bad("unreadable header or trailer: %s" % e) from None
        self.end = off

    def _check_fields(self):
        """The header's and trailer's fields have the types and ranges a writer gives them."""
        meta, tr = self.meta, self.trailer
        if not isinstance(tr, dict) or not isinstance(meta, dict):
            raise self._bad("header or trailer is not a map")

        def count(d, key):
            v = d.get(key)
            if type(v) is not int or v < 0:
                raise self._bad("its %s is not a count: %r" % (key, v))
            return v

        for key in ("lines", "bad", "clipped", "blocks"):
            count(tr, key)
        start = meta.get("start")
        if not (isinstance(start, list) and len(start) == 2 and type(start[0]) is int and isinstance(start[1], str)):
            raise self._bad("its header's feature table is %r" % (start,))
        inp = meta.get("input")
        if inp is not None and not (isinstance(inp, list) and len(inp) == 2 and all(type(v) is int for v in inp)):
            raise self._bad("its header's input is %r" % (inp,))
        by_reason = tr.get("by_reason")
        if not isinstance(by_reason, dict) or not all(
                isinstance(a, str) and type(b) is int and b >= 0 for a, b in by_reason.items()):
            raise self._bad("its bad lines by reason are not counts")
        r0, r1 = count(tr, "rows_start"), count(tr, "rows_end")
        if r0 != start[0] or r1 < r0:
            raise self._bad("its rows %d..%d do not continue a table of %d rows" % (r0, r1, start[0]))
        names, name_off = tr.get("names"), tr.get("name_off")
        if not isinstance(names, bytes) or not isinstance(name_off, bytes) or len(name_off) != 8 * (r1 - r0 + 1):
            raise self._bad("its names do not fit its %d rows" % (r1 - r0))
        self.names = np.frombuffer(names, dtype=np.uint8)
        self.name_off = np.frombuffer(name_off, dtype="<i8").astype(np.int64)
        off = self.name_off
        if off[0] != 0 or off[-1] != len(names) or (off.shape[0] > 1 and np.diff(off).min() < 0):
            raise self._bad("its name offsets are not in order within its %d bytes of names" % len(names))
        self.n_rows = r1
        self.n_blocks = tr["blocks"]

    def rewind(self):
        """Start again at the first block."""
        with self.lock:
            self.pos = self.start
            self.seq = 0
            self._stopped = False

    def _record(self, pos):
        """(crc, n_lines, n, nnz) of the record at ``pos``; CacheError unless its arrays fit before the trailer."""
        tag, crc, n_lines, n, nnz = _REC.unpack_from(self.mm, pos) if pos + _REC.size <= self.end else (
            b"", 0, 0, -1, -1)
        if tag != _REC_TAG or n < 0 or nnz < 0 or pos + _rec_size(n, nnz) > self.end:
            raise self._bad("bad block at byte %d" % pos)
        return crc, n_lines, n, nnz

    def _block(self, seq, pos, rec, crc_check=True):
        """The CachedBlock of the record at ``pos`` (``rec``: its ``_record``), once its crc
        (unless not ``crc_check``) and numbers are checked; CacheError otherwise. Needs no
        lock: it only reads."""
        crc, n_lines, n, nnz = rec
        stop = pos + _rec_size(n, nnz)
        if crc_check and zlib.crc32(self.buf[pos + _REC_CRC_FROM:stop]) != crc:  # releases the GIL
            raise self._damaged("block %d fails its checksum" % seq)
        b = CachedBlock()
        pos += _REC.size
        b.indptr = self.buf[pos:pos + 8 * (n + 1)].view(np.int64)
        pos += 8 * (n + 1)
        b.rows = self.buf[pos:pos + 8 * nnz].view(np.int64)
        pos += 8 * nnz
        b.vals = self.buf[pos:pos + 8 * nnz].view(np.float64)
        pos += 8 * nnz
        b.ys = self.buf[pos:pos + 8 * n].view(np.float64)
        pos += 8 * n
        b.lines = self.buf[pos:pos + 8 * n].view(np.int64)
        b.n_samples, b.n_lines, b.seq = n, n_lines, seq
        if not block_ok(b.indptr, b.rows, b.vals, b.ys, self.n_rows):
            raise self._bad("block %d holds numbers no parse gives" % seq)
        return b

    def _at_end(self, pos, seq):
        if pos != self.end or seq != self.n_blocks:
            raise self._bad("%d blocks end at byte %d; its trailer says %d blocks ending at byte %d"
                            % (seq, pos, self.n_blocks, self.end))

    def verify(self):
        """Check every block (crc, CSR shape, row ids, finite numbers) without handing any out;
        CacheError on the first that fails. One read of the file: a reused cache is refused
        before a pass trains on any of its blocks (and its passes check only the numbers)."""
        pos, seq = self.start, 0
        while pos < self.end:
            rec = self._record(pos)
            self._block(seq, pos, rec)
            pos += _rec_size(rec[2], rec[3])
            seq += 1
        self._at_end(pos, seq)
        self.crc_checked = True

    def get(self):
        """The next CachedBlock, or None at the end (or after ``stop``, or an error: ``error``)."""
        with self.lock:
            if self._stopped:
                return None
            try:
                if self.pos >= self.end:
                    self._stopped = True
                    self._at_end(self.pos, self.seq)
                    if self.error is None:  # every block of this pass was handed out with its crc to check
                        self.crc_checked = True
                    return None
                pos, seq = self.pos, self.seq
                rec = self._record(pos)
            except CacheError as e:
                self.error = e
                self._stopped = True
                return None
            self.pos = pos + _rec_size(rec[2], rec[3])
            self.seq += 1
            crc_check = not self.crc_checked  # under the lock: the pass setting it handed out every block checked
        try:
            return self._block(seq, pos, rec, crc_check)
        except CacheError as e:
            with self.lock:
                if self.error is None:
                    self.error = e
                self._stopped = True
            return None

    def stop(self):
        with self.lock:
            self._stopped = True

    def close(self):
        """Close the file; the mapping goes when the last block viewing it does."""
        self.buf = None
        try:
            self.mm.close()
        except BufferError:
            pass  # a block still views it (a caller keeps one): unmapped with it
        self.f.close()
