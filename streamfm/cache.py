"""The parsed-block cache of a multi-pass run (``fm_train --passes N``).

Pass 1 parses the text as a one-pass run does; each parsed block (CSR:
indptr, rows, vals, labels, and each sample's input line number) is also
appended to this file. Passes 2..N read the blocks back and hand them to
the FTRL kernel: no parsing, no feature-table lookups (a block's row ids stay
valid because the feature table only ever appends rows). Like Vowpal
Wabbit's cache, it holds the numbers, not the text.

Layout (little-endian; docs/design.md, "Passes and the block cache")::

    "SFMCACHE" | u32 version | u32 header length | msgpack header | pad to 8
    record*:   "BLK1" | u32 0 | i64 n_lines | i64 n_samples | i64 nnz
               | indptr i64[n_samples + 1] | rows i64[nnz] | vals f64[nnz]
               | ys f64[n_samples] | lines i64[n_samples]
    msgpack trailer (counts of pass 1, the names of the rows it created)
    "SFMCEND1" | i64 offset of the trailer

The file is written with the one atomic writer (``output.open_output``): it
appears under its name only complete, with its trailer; a run that fails or
is interrupted leaves nothing. It is never written over anything but a
regular file. Every block read back is checked (CSR shape, row ids within
the table, finite numbers) before a kernel indexes with it.
"""

import hashlib
import mmap
import os
import stat
import struct
import threading

import msgpack
import numpy as np
from numba import njit

from .errors import OutputError, StreamFMError
from .output import open_output

MAGIC = b"SFMCACHE"
VERSION = 1
_HEAD = struct.Struct("<8sII")
_REC = struct.Struct("<4sIqqq")
_REC_TAG = b"BLK1"
_END = struct.Struct("<8sq")
_END_TAG = b"SFMCEND1"


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
        try:
            self.out.write(_HEAD.pack(MAGIC, VERSION, len(head)) + head + _pad(_HEAD.size + len(head)))
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
        with self.lock:
            self.out.write(_REC.pack(_REC_TAG, 0, int(n_lines), n, nnz))
            for a in parts:
                if a.shape[0]:
                    self.out.write(a)
            self.blocks += 1

    def finish(self, trailer):
        """Write the trailer and put the file in place; returns its path."""
        with self.lock:
            off = self.out.tell()
            tr = msgpack.packb(dict(trailer, blocks=self.blocks), use_bin_type=True)
            self.out.write(tr + _pad(len(tr)))
            self.out.write(_END.pack(_END_TAG, off))
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
    new pass over the same file. ``n_rows``: the table rows the row ids may
    reach (CacheError on a block outside them).
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
        except BaseException:
            self.f.close()
            raise
        if not isinstance(self.trailer, dict) or not isinstance(self.meta, dict):
            self.f.close()
            raise self._bad("header or trailer is not a map")
        self.n_rows = int(self.trailer.get("rows_end", 0))
        # the blocks are read in place: views of the mapped file, no copies
        try:
            self.mm = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self.f.close()
            raise CacheError("%s: cannot map the cache: %s" % (self.path, e)) from None
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)
        self.rewind()

    def _bad(self, why):
        return CacheError("%s: not a complete streamfm cache (%s)" % (self.path, why))

    def _read_ends(self):
        f = self.f
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] != MAGIC:
            raise self._bad("no cache header")
        _, version, hlen = _HEAD.unpack(head)
        if version != VERSION:
            raise self._bad("version %d, this streamfm reads %d" % (version, VERSION))
        if size < _HEAD.size + hlen + _END.size:
            raise self._bad("truncated")
        try:
            self.meta = msgpack.unpackb(f.read(hlen), raw=False)
            f.seek(size - _END.size)
            tag, off = _END.unpack(f.read(_END.size))
            if tag != _END_TAG or not (_HEAD.size + hlen <= off < size - _END.size):
                raise self._bad("no trailer: the run writing it did not finish")
            f.seek(off)
            un = msgpack.Unpacker(raw=False)
            un.feed(f.read(size - _END.size - off))
            self.trailer = next(un)
        except CacheError:
            raise
        except Exception as e:  # msgpack raises several types for bad bytes
            raise self._bad("unreadable header or trailer: %s" % e) from None
        self.start = _HEAD.size + hlen + len(_pad(_HEAD.size + hlen))
        self.end = off

    def rewind(self):
        """Start again at the first block."""
        with self.lock:
            self.pos = self.start
            self.seq = 0
            self._stopped = False

    def _array(self, pos, n, dtype):
        return self.buf[pos:pos + 8 * n].view(dtype)

    def get(self):
        """The next CachedBlock, or None at the end (or after ``stop``)."""
        with self.lock:
            if self._stopped or self.pos >= self.end:
                return None
            pos = self.pos
            tag, _, n_lines, n, nnz = _REC.unpack_from(self.mm, pos) if pos + _REC.size <= self.end else (
                b"", 0, 0, -1, -1)
            if tag != _REC_TAG or n < 0 or nnz < 0 or pos + _REC.size + 8 * (2 * n + 1 + 2 * nnz) > self.end:
                self.error = self._bad("bad block at byte %d" % pos)
                self._stopped = True
                return None
            b = CachedBlock()
            pos += _REC.size
            b.indptr = self._array(pos, n + 1, np.int64)
            pos += 8 * (n + 1)
            b.rows = self._array(pos, nnz, np.int64)
            pos += 8 * nnz
            b.vals = self._array(pos, nnz, np.float64)
            pos += 8 * nnz
            b.ys = self._array(pos, n, np.float64)
            pos += 8 * n
            b.lines = self._array(pos, n, np.int64)
            b.n_samples, b.n_lines, b.seq = n, n_lines, self.seq
            self.pos = pos + 8 * n
            self.seq += 1
        if not block_ok(b.indptr, b.rows, b.vals, b.ys, self.n_rows):
            with self.lock:
                self.error = self._bad("block %d holds numbers no parse gives" % b.seq)
                self._stopped = True
            return None
        return b

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
