"""The binary container every streamfm binary file is: models (model.py) and
recall indexes (recall/index.py). This module is the only one that knows its
layout; the two kinds differ only in their ``Kind`` and in what their header
says.

Layout (all integers little-endian)::

    bytes 0..8          MAGIC, one per kind ("\\x89SFMBIN\\n" models, "\\x89SFMIDX\\n" indexes)
    bytes 8..12         H, the header's length (u32)
    bytes 12..16        crc32 of the header's H bytes (u32)
    bytes 16..16+H      the header: a msgpack map
    bytes 16+H..R       zeros, up to the kind's reserve R (models 65536, indexes 4096)
    bytes o_i..o_i+b_i  array i (its raw C-order bytes), zeros between arrays

The header holds the kind's own entries, its ``format`` name and
``version``, and last ``arrays``: per array, in file order, its ``name``,
``dtype`` (numpy's ``dtype.str``, e.g. "<f8", "|u1"), ``shape``, ``offset``,
``nbytes`` and ``crc32``. The offsets follow from the reserve and the sizes::

    b_i = itemsize_i * prod(shape_i)
    o_0 = R,   o_{i+1} = align(o_i + b_i),   align(x) = ceil(x / 64) * 64

so every array starts on a 64-byte boundary (a cache line; a memory map
gives aligned, SIMD-friendly views) and the file ends at o_last + b_last.
The writer needs 16 + H <= R: the header is written last, over its reserve,
once the arrays' checksums are known (on a pipe or device, which cannot seek,
the checksums come from a first pass over the arrays instead).

A reader trusts no number it has not checked: the magic, the header's length
and crc32, its format and version; then each array's dtype and shape against
what the kind expects (a dtype string is compared, never handed to numpy: a
crafted "|O" would make numpy read pointers from the file), nbytes against
itemsize * prod(shape), offset >= 0, and that the last array ends where the
file does;
on reading, each array's crc32 and, for float arrays, that every number is
finite (nothing trained can be NaN or infinite).
"""

import functools
import os
import struct
import zlib

import msgpack
import numpy as np
from numba import njit

from .errors import ModelFormatError
from .output import open_output

ALIGN = 64
PREFIX = 16  # magic, header length, header crc32
_CRC_MAX = 0xFFFFFFFF  # packs to the widest msgpack int a crc32 can take


class Kind:
    """One kind of container file.

    ``magic``: its 8 first bytes; ``format_name`` and ``version``: the
    header's ``format`` and the newest ``version`` this streamfm reads and
    writes; ``reserve``: the offset of the first array (room for the header);
    ``what``: its name in messages ("binary model"); ``error``: the exception
    class its errors raise; ``hint``: appended to "not a streamfm <what>".
    """

    def __init__(self, magic, format_name, version, reserve, what, error=ModelFormatError, hint=""):
        assert len(magic) == 8 and reserve % ALIGN == 0
        self.magic = magic
        self.format_name = format_name
        self.version = version
        self.reserve = reserve
        self.what = what
        self.error = error
        self.hint = hint


class Array:
    """An array to write: ``name``, ``dtype``, ``shape`` and its ``data``.

    ``data`` is an ndarray, or a callable returning an iterable of ndarrays
    whose bytes, one after the other, are the array's (so a large array is
    produced a chunk at a time, never copied whole). A callable may be called
    twice (a pipe or device output takes the checksums first).
    """

    def __init__(self, name, dtype, shape, data):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.data = data
        self.nbytes = self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))

    def parts(self):
        """The data as 1-D uint8 views of contiguous chunks."""
        for part in (self.data() if callable(self.data) else [self.data]):
            part = np.ascontiguousarray(part)
            if part.dtype != self.dtype:
                raise ValueError("array %r: a chunk of %s, expected %s" % (self.name, part.dtype, self.dtype))
            yield part.reshape(-1).view(np.uint8)


def align(x):
    """The next multiple of ALIGN at or after x."""
    return (x + ALIGN - 1) // ALIGN * ALIGN


def layout(kind, arrays):
    """The header's ``arrays`` entries (without crc32) for ``arrays`` (Array) in file order."""
    specs = []
    off = kind.reserve
    for a in arrays:
        specs.append({"name": a.name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": off,
                      "nbytes": a.nbytes})
        off = align(off + a.nbytes)
    return specs


def _crc(a):
    crc = 0
    for b in a.parts():
        crc = zlib.crc32(b, crc)
    return crc


def _packed_header(kind, path, header):
    packed = msgpack.packb(header, use_bin_type=True)
    if PREFIX + len(packed) > kind.reserve:
        raise kind.error("%s: %s header too large" % (path, kind.what))
    return kind.magic + struct.pack("<II", len(packed), zlib.crc32(packed)) + packed


def write(kind, path, header, arrays):
    """Write a container file of ``kind`` through ``output.open_output``.

    ``header``: the kind's entries (a dict, msgpack-able). Its ``format`` and
    ``version`` are set to the kind's (in place where the dict has them, else
    appended) and ``arrays`` is appended last, so a header's bytes depend on
    the order the caller gives its entries in. ``arrays``: Array objects, in
    file order. A header that does not fit the reserve raises ``kind.error``
    before anything is written; data whose bytes are not the stated shape
    raises ValueError (and, as any failed write, leaves no file).
    """
    specs = layout(kind, arrays)
    head = dict(header)
    head["format"] = kind.format_name
    head["version"] = kind.version
    head.pop("arrays", None)
    head["arrays"] = [dict(s, crc32=_CRC_MAX) for s in specs]
    _packed_header(kind, path, head)  # too large? say so before writing anything
    head["arrays"] = specs
    with open_output(path) as f:
        seekable = f.seekable()
        if seekable:
            # one pass: the header, whose checksums come last, is written over its reserve
            f.write(b"\0" * kind.reserve)
        else:
            # a device or pipe is written in order: checksums first, then the bytes
            for spec, a in zip(specs, arrays):
                spec["crc32"] = _crc(a)
            f.write(_packed_header(kind, path, head))
        pos = f.tell()
        for spec, a in zip(specs, arrays):
            if spec["offset"] > pos:
                f.write(b"\0" * (spec["offset"] - pos))
            crc = 0
            pos = spec["offset"]
            for b in a.parts():
                crc = zlib.crc32(b, crc)
                f.write(b)
                pos += b.shape[0]
            if pos != spec["offset"] + spec["nbytes"]:
                raise ValueError("%s: array %r has %d bytes, its shape says %d"
                                 % (path, a.name, pos - spec["offset"], spec["nbytes"]))
            spec["crc32"] = crc
        if seekable:
            packed = _packed_header(kind, path, head)
            f.seek(0)
            f.write(packed)


def is_int(x):
    """An integer read from a header (msgpack gives bools as True/False, which Python counts as ints)."""
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(kind, path):
    """(header, file size) of a container file of ``kind``: checked magic,
    length, crc32, msgpack, format and version (``kind.error`` otherwise).
    The arrays are not checked here: that is ``array_specs``."""
    err = kind.error
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(PREFIX)
        if not head:
            raise err("%s: empty file, not a streamfm %s" % (path, kind.what))
        # a file cut inside its magic number is a truncated file of this kind
        if head[:8] != kind.magic[: len(head[:8])]:
            raise err("%s: not a streamfm %s%s" % (path, kind.what, kind.hint))
        if len(head) < PREFIX:
            raise err("%s: truncated (header cut off)" % path)
        hlen, hcrc = struct.unpack("<II", head[8:PREFIX])
        if PREFIX + hlen > size:  # before reading: a crafted length could ask for 4 GB
            raise err("%s: truncated (header cut off)" % path)
        packed = f.read(hlen)
    if len(packed) != hlen:
        raise err("%s: truncated (header cut off)" % path)
    if zlib.crc32(packed) != hcrc:
        raise err("%s: corrupted header (checksum mismatch)" % path)
    try:
        header = msgpack.unpackb(packed, raw=False)
    except Exception as e:  # msgpack raises several types for bad bytes
        raise err("%s: corrupted header (%s)" % (path, e)) from None
    if not isinstance(header, dict) or header.get("format") != kind.format_name:
        raise err("%s: not a streamfm %s%s" % (path, kind.what, kind.hint))
    version = header.get("version", 0)
    if not is_int(version) or version > kind.version:
        raise err("%s: %s version %r: this streamfm reads versions up to %d"
                  % (path, kind.what, version, kind.version))
    return header, size


class Spec:
    """A checked array entry: name, dtype (the expected np.dtype), shape (tuple), offset, nbytes, crc32."""

    __slots__ = ("name", "dtype", "shape", "offset", "nbytes", "crc32")

    def __init__(self, name, dtype, shape, offset, nbytes, crc32):
        self.name, self.dtype, self.shape = name, dtype, shape
        self.offset, self.nbytes, self.crc32 = offset, nbytes, crc32


def array_specs(kind, path, header, size, expected):
    """The header's array list checked against ``expected``: {name: (np.dtype, shape)}.

    A shape entry of None is any size; every name must be expected and appear
    at most once, with exactly the dtype, shape and byte count given, inside
    the file's ``size`` bytes. Returns {name: Spec} for the arrays present
    (the caller says which must be); ``kind.error`` otherwise.
    """
    err = kind.error
    arrays = header.get("arrays")
    if not isinstance(arrays, list):
        raise err("%s: corrupted header: no array list" % path)
    specs = {}
    end = 0
    for a in arrays:
        name = a.get("name") if isinstance(a, dict) else None
        if name not in expected or name in specs:
            raise err("%s: corrupted header: %s array %r" % (
                path, "repeated" if name in specs else "unexpected", name))
        dt, shape = expected[name]
        got = a.get("shape")
        if a.get("dtype") != dt.str:
            raise err("%s: header says array %r is %r, expected %r" % (path, name, a.get("dtype"), dt.str))
        if (not isinstance(got, list) or len(got) != len(shape)
                or not all(is_int(g) and g >= 0 and (e is None or g == e) for g, e in zip(got, shape))):
            raise err("%s: header says array %r has shape %r, expected %r" % (
                path, name, got, [("any" if e is None else e) for e in shape]))
        nbytes = dt.itemsize
        for g in got:
            nbytes *= g  # Python ints: no overflow
        if not (is_int(a.get("offset")) and is_int(a.get("nbytes")) and is_int(a.get("crc32"))) or (
                a["nbytes"] != nbytes or a["offset"] < 0):
            raise err("%s: header disagrees with array %r (offset, size or checksum)" % (path, name))
        end = max(end, a["offset"] + nbytes)
        specs[name] = Spec(name, dt, tuple(got), a["offset"], nbytes, a["crc32"])
    if size < end:
        raise err("%s: truncated: %d bytes, the header says %d" % (path, size, end))
    if specs and size > end:
        # the writer stops at the last array's end: more is another file
        # joined on (`cat a b > m`) or bytes written into it since, never ours
        raise err("%s: %d bytes after the end the header gives (%d): not one whole %s (two files joined?)"
                  % (path, size - end, end, kind.what))
    return specs


def read_arrays(kind, path, specs, verify=True, mapped=None, spare_rows=None, keep_pages=False):
    """{name: ndarray} for the checked ``specs`` (Spec, from ``array_specs``).

    Arrays are read into memory, or with ``mapped`` (a MappedFile of path)
    viewed read-only in the mapping. ``verify``: compare each crc32 (a
    mapped array is then read once). Float arrays must hold finite numbers.
    ``spare_rows``: {name: rows}, zero rows to allocate behind a read array
    (its ``.base`` then holds them; not with ``mapped``).
    ``keep_pages``: leave the mapped pages the checks read in this process
    (for a caller that reads every row next, e.g. the merge: it would fault
    them all in again); by default they are given back.
    """
    out = {}
    spare_rows = spare_rows or {}
    with open(path, "rb") as f:
        for s in specs:
            if mapped is not None:
                arr = mapped.array(s.offset, s.dtype, s.shape)
                if arr is None:  # cut after the header was read
                    raise kind.error("%s: truncated in array %r" % (path, s.name))
            else:
                extra = spare_rows.get(s.name, 0)
                if extra:
                    arr = np.zeros((s.shape[0] + extra,) + s.shape[1:], dtype=s.dtype)[: s.shape[0]]
                else:
                    arr = np.empty(s.shape, dtype=s.dtype)
                f.seek(s.offset)
                view = arr.reshape(-1).view(np.uint8)
                got = f.readinto(view) if s.nbytes else 0
                if got != s.nbytes:
                    raise kind.error("%s: truncated in array %r" % (path, s.name))
            crc, bad = checked(arr, verify, s.dtype.kind == "f")
            if verify and crc != s.crc32:
                raise kind.error("%s: corrupted: checksum mismatch in array %r" % (path, s.name))
            if bad >= 0:
                nonfinite_error(kind, path, s.name, arr, bad)
            if mapped is not None and verify and not keep_pages:
                # the checks touched every page; give them back, so only what
                # the caller then uses becomes resident (from the page cache)
                mapped.drop(arr)
            out[s.name] = arr
    return out


@njit(cache=True, nogil=True)
def first_nonfinite(a):
    """Position of the first NaN or infinity in the 1-D array a, or -1."""
    for i in range(a.shape[0]):
        x = a[i]
        if not (x - x == 0.0):
            return i
    return -1


def nonfinite_error(kind, path, name, arr, i):
    """``kind.error`` for the number at flat position i of a float array read from a
    file, NaN or an infinity (``checked`` finds it; the text reader refuses them
    too): nothing trained could be one."""
    row = i // max(arr.shape[1], 1) if arr.ndim == 2 else i
    raise kind.error("%s: corrupted: array %r row %d holds %r, not a finite number"
                     % (path, name, row, float(arr.reshape(-1)[i])))


_CHECK_CHUNK = 1 << 17  # numbers checked at a time: their crc32, then (still in cache) their finiteness


def checked(arr, crc=True, finite=True):
    """(crc32 of arr's bytes (0 unless ``crc``), flat position of its first NaN or
    infinity (-1: none, or not ``finite``)) of a C-contiguous array.

    A large array is checked in pieces on several threads (zlib and the
    finiteness kernel release the GIL), the pieces' checksums combined
    (``crc32_combine``); each piece a chunk at a time, both checks of a chunk
    while it is in cache, so the array is read from memory once.
    """
    if not (crc or finite):
        return 0, -1
    flat = arr.reshape(-1)
    raw = flat.view(np.uint8) if flat.size else np.zeros(0, np.uint8)
    size = arr.dtype.itemsize

    def piece(i0, i1):
        c, bad = 0, -1
        for j in range(i0, i1, _CHECK_CHUNK):
            e = min(i1, j + _CHECK_CHUNK)
            if crc:
                c = zlib.crc32(raw[j * size:e * size], c)
            if finite and bad < 0:
                k = first_nonfinite(flat[j:e])
                if k >= 0:
                    bad = j + k
        return c, bad, (i1 - i0) * size

    from .jit import over_rows

    total, first = 0, -1
    for c, bad, nbytes in over_rows(piece, flat.shape[0]):
        total = crc32_combine(total, c, nbytes)
        if first < 0:
            first = bad
    return total, first


# crc32_combine as zlib computes it (zlib's Python module does not offer it): the
# crc of two byte strings one after the other from their own crcs, by polynomial
# arithmetic modulo the crc's polynomial (bit-reflected, as the crc is)
_CRC_POLY = 0xEDB88320


def _mult_mod_p(a, b):
    """a(x) b(x) modulo p(x), bit-reflected."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo p(x), n = 0..31
for _ in range(31):
    _X2N.append(_mult_mod_p(_X2N[-1], _X2N[-1]))


@functools.lru_cache(maxsize=64)  # an array's pieces have one or two lengths
def _shift(len2):
    """x^(8 len2) modulo p(x): a product of x^(2^k) over the bits of 8 len2."""
    p = 1 << 31  # x^0
    n, k = len2, 3
    while n:
        if n & 1:
            p = _mult_mod_p(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1, crc2, len2):
    """The crc32 of A + B from crc1 = crc32(A), crc2 = crc32(B) and len2 = len(B)."""
    return _mult_mod_p(_shift(len2), crc1) ^ crc2


class MappedFile:
    """A file mapped read-only; ``array`` views a part of it as a numpy array.

    The mapping lives as long as any array made from it. Its pages are the
    page cache's, shared by every process mapping the file; ``drop`` gives
    an array's pages back (they are read again from the file if touched).
    The file must be replaced by renaming a new one over it (as every
    streamfm writer does), never rewritten in place.
    """

    def __init__(self, path):
        import mmap

        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else None

    def array(self, offset, dtype, shape):
        """A read-only view of ``shape`` ``dtype`` numbers at ``offset``; None past the end."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if count == 0:
            a = np.zeros(shape, dtype=dtype)
            a.flags.writeable = False
            return a
        if self.mm is None or offset + count * dtype.itemsize > len(self.mm):
            return None
        return np.frombuffer(self.mm, dtype=dtype, count=count, offset=int(offset)).reshape(shape)

    def drop(self, arr):
        """Release the resident pages under ``arr`` (a view of this file) from this process."""
        import mmap

        if self.mm is None or arr.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = np.frombuffer(self.mm, dtype=np.uint8).ctypes.data
        start = arr.ctypes.data - base
        page = mmap.PAGESIZE
        lo = (start + page - 1) // page * page  # whole pages only: neighbours stay
        hi = (start + arr.nbytes) // page * page
        if hi > lo:
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass
