"""What the Python API accepts as samples, turned into a byte stream of lines.

Everything the API reads goes through the one line grammar (``parse.py``)
and the one pipeline (``reader.BlockReader`` -> workers): a matrix is
written as lines by a numba kernel, in the reader thread, a block at a time,
so a CSR matrix and the same samples as text lines give identical models.

Accepted (``as_stream``):

- ``bytes``/``bytearray``/``memoryview``: the lines themselves;
- ``str`` or ``os.PathLike``: a path to a file of lines;
- a binary file object (``read`` returns bytes);
- a text file object, or any iterable of ``str``/``bytes`` lines (one
  element is one line; its trailing newline is optional);
- a scipy.sparse matrix (any format with ``tocsr``) or a 2-D numeric array
  (numpy, or anything with ``__array__`` and ``shape``, such as a pandas
  DataFrame) with labels ``y`` and ``feature_names``.

Row i of a matrix is line i + 1: ``LABEL NAME:VALUE ...`` with the row's
stored entries in stored order (explicit zeros are dropped by the grammar
as a ``NAME:0`` token is; NaN or infinite values make the line bad). The
label is 1 where y > 0, 0 where y <= 0, and ``nan`` where y is not finite
(a bad line); without ``y`` (prediction) every label is 0.
"""

import io
import os
import time

import numpy as np
from numba import njit

from . import floatfmt
from .errors import ParameterError

# bytes per entry beyond its name: ' ' ':' and at most 24 of a number
_ENTRY = 26


@njit(cache=True, nogil=True)
def format_csr_lines(indptr, indices, data, y, y0, has_y, start, n, names, name_off, plain, out):
    """Rows start..n-1 of a CSR block as lines in ``out``; returns (next row, bytes).

    ``indptr`` may be a slice of a larger matrix's (entries are counted from
    indptr[0]); row r's label is y[y0 + r]. ``plain[j]``: column j's name has
    no ':', so a value of 1 may be written as the bare name. Stops before a
    row that might not fit.
    """
    pos = 0
    cap = out.shape[0]
    base = indptr[0]
    r = start
    while r < n:
        a = indptr[r] - base
        b = indptr[r + 1] - base
        need = 5
        for j in range(a, b):
            c = indices[j]
            need += name_off[c + 1] - name_off[c] + _ENTRY
        if pos + need > cap:
            break
        if has_y:
            t = y[y0 + r]
            if not (abs(t) < np.inf):
                out[pos] = 110  # nan: a bad label, reported as such
                out[pos + 1] = 97
                out[pos + 2] = 110
                pos += 3
            else:
                out[pos] = 49 if t > 0.0 else 48
                pos += 1
        else:
            out[pos] = 48
            pos += 1
        for j in range(a, b):
            c = indices[j]
            out[pos] = 32
            pos += 1
            for t in range(name_off[c], name_off[c + 1]):
                out[pos] = names[t]
                pos += 1
            x = data[j]
            if not (plain[c] and x == 1.0):
                out[pos] = 58
                pos += 1
                pos = floatfmt.write_f64(x, out, pos)
        out[pos] = 10
        pos += 1
        r += 1
    return r, pos


@njit(cache=True, nogil=True)
def dense_to_csr(sub, indptr, indices, data):
    """The non-zero entries of a dense block (NaN included: it makes its line bad)."""
    nnz = 0
    for i in range(sub.shape[0]):
        for j in range(sub.shape[1]):
            x = sub[i, j]
            if x != 0.0:
                indices[nnz] = j
                data[nnz] = x
                nnz += 1
        indptr[i + 1] = nnz
    return nnz


def encode_names(feature_names, n_cols):
    """(name bytes, offsets, plain) of the columns' names; checks each name.

    ``feature_names`` None names column j by its index (``"0"``, ``"1"``...).
    """
    if feature_names is None:
        feature_names = [str(j) for j in range(n_cols)]
    else:
        feature_names = list(feature_names)
    if len(feature_names) != n_cols:
        raise ParameterError("%d feature names for %d columns" % (len(feature_names), n_cols))
    encoded = []
    for j, name in enumerate(feature_names):
        b = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        if not b:
            raise ParameterError("feature name of column %d is empty" % j)
        if any(c <= 32 or c == 127 for c in b):
            raise ParameterError("feature name %r (column %d) holds white space or a control byte"
                                 % (name, j))
        encoded.append(b)
    off = np.zeros(n_cols + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=off[1:])
    names = np.frombuffer(b"".join(encoded), np.uint8) if n_cols else np.zeros(0, np.uint8)
    plain = np.array([b":" not in b for b in encoded], dtype=np.bool_)
    return names, off, plain


class MatrixLines(io.RawIOBase):
    """A read-only binary stream of the lines of a CSR or dense matrix."""

    def __init__(self, X, y=None, feature_names=None, rows_per_chunk=1 << 14):
        self.sparse = hasattr(X, "tocsr")
        if self.sparse:
            X = X.tocsr()
            self.indptr = np.asarray(X.indptr, dtype=np.int64)
            self.indices = X.indices
            self.data = X.data
        else:
            X = np.asarray(X)
            if X.ndim != 2:
                raise ParameterError("a matrix of samples must be 2-D, not of shape %s" % (X.shape,))
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_) or np.iscomplexobj(X):
            raise TypeError("matrix values must be real numbers, not %s" % X.dtype)
        self.X = X
        self.n_rows, self.n_cols = X.shape
        if y is not None:
            y = np.asarray(y, dtype=np.float64).reshape(-1)
            if y.shape[0] != self.n_rows:
                raise ParameterError("%d labels for %d rows" % (y.shape[0], self.n_rows))
        self.y = y if y is not None else np.zeros(0)
        self.names, self.name_off, self.plain = encode_names(feature_names, self.n_cols)
        # a dense chunk is converted whole: keep it near a million cells
        self.rows_per_chunk = rows_per_chunk if self.sparse else max(1, min(rows_per_chunk,
                                                                            (1 << 20) // max(self.n_cols, 1)))
        self.row = 0          # the next row to cut a chunk at
        self.chunk = None     # (indptr, indices, data) of rows chunk_r0.. being written
        self.chunk_r0 = self.chunk_row = self.chunk_rows = 0
        self.out = np.empty(0, np.uint8)

    def readable(self):
        return True

    def _chunk(self, r0, r1):
        """(indptr, indices, data) of rows r0..r1-1 (indptr counted from indptr[0])."""
        if self.sparse:
            indptr = self.indptr[r0:r1 + 1]
            a, b = indptr[0], indptr[-1]
            return (indptr, np.asarray(self.indices[a:b], dtype=np.int64),
                    np.asarray(self.data[a:b], dtype=np.float64))
        sub = np.ascontiguousarray(self.X[r0:r1], dtype=np.float64)
        indptr = np.zeros(r1 - r0 + 1, np.int64)
        indices = np.empty(sub.size, np.int64)
        data = np.empty(sub.size, np.float64)
        nnz = dense_to_csr(sub, indptr, indices, data)
        return indptr, indices[:nnz], data[:nnz]

    def read(self, n=-1):
        want = max(int(n), 1 << 16) if n is not None and n >= 0 else float("inf")
        size = int(min(want, 1 << 22))  # the kernel's buffer; a large read loops
        parts = []
        got = 0
        while got < want:
            if self.chunk is None or self.chunk_row >= self.chunk_rows:
                if self.row >= self.n_rows:
                    break
                r0 = self.row
                r1 = min(self.n_rows, r0 + self.rows_per_chunk)
                self.chunk = self._chunk(r0, r1)
                self.chunk_r0, self.chunk_row, self.chunk_rows = r0, 0, r1 - r0
                self.row = r1
            indptr, indices, data = self.chunk
            if self.out.shape[0] < size:
                self.out = np.empty(size, np.uint8)
            r, nb = format_csr_lines(indptr, indices, data, self.y, self.chunk_r0, self.y.shape[0] > 0,
                                     self.chunk_row, self.chunk_rows, self.names, self.name_off,
                                     self.plain, self.out)
            if r == self.chunk_row:
                if parts:
                    break  # the next row goes into the next read
                # one row larger than the buffer: make room for it
                a, b = indptr[r] - indptr[0], indptr[r + 1] - indptr[0]
                lens = np.diff(self.name_off)[indices[a:b]]
                size = int(lens.sum()) + _ENTRY * (b - a) + 16
                self.out = np.empty(size, np.uint8)
                continue
            parts.append(self.out[:nb].tobytes())
            got += nb
            self.chunk_row = r
        return b"".join(parts)


class LineIterator(io.RawIOBase):
    """A read-only binary stream over an iterable of str/bytes lines.

    Each element is one line: a newline is added where it has none, and a
    newline inside an element is replaced by a NUL byte, which makes that
    line bad (with its own line number) instead of splitting it in two.
    A read returns after ``linger`` seconds with what it has, so the lines
    of a slow source (a queue, a socket) are trained on as they come.
    """

    def __init__(self, lines, linger=0.2):
        self.linger = linger
        self.it = iter(lines)
        self.done = False
        self.lines = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if self.done:
            return b""
        want = n if n is not None and n > 0 else 1 << 20
        parts = []
        got = 0
        until = time.monotonic() + self.linger
        for line in self.it:
            if isinstance(line, str):
                line = line.encode("utf-8", "surrogateescape")
            elif not isinstance(line, (bytes, bytearray, memoryview)):
                raise TypeError("line %d is a %s, not str or bytes" % (self.lines + 1, type(line).__name__))
            line = bytes(line)
            if line.endswith(b"\n"):
                line = line[:-1]
            if b"\n" in line:
                line = line.replace(b"\n", b"\0")
            parts.append(line)
            parts.append(b"\n")
            self.lines += 1
            got += len(line) + 1
            if got >= want or time.monotonic() >= until:
                break
        else:
            self.done = True
        return b"".join(parts)


def is_matrix(data):
    """A scipy.sparse matrix or a 2-D array (not a list of lines)."""
    if hasattr(data, "tocsr") and hasattr(data, "shape"):
        return True
    if isinstance(data, np.ndarray):
        return data.ndim == 2
    return hasattr(data, "__array__") and hasattr(data, "shape") and len(getattr(data, "shape", ())) == 2


class Source:
    """``stream`` (a binary file object) for the data; ``close()`` what was opened.

    ``has_labels``: the lines carry real labels (False for a matrix without y).
    """

    def __init__(self, stream, opened=False, has_labels=True, n_rows=None):
        self.stream = stream
        self.opened = opened
        self.has_labels = has_labels
        self.n_rows = n_rows

    def close(self):
        if self.opened:
            self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def as_stream(data, y=None, feature_names=None, need_labels=True):
    """A Source of lines for any accepted kind of data (see the module doc)."""
    if is_matrix(data):
        if y is None and need_labels:
            raise ParameterError("training on a matrix needs labels: give y")
        if feature_names is None and hasattr(data, "columns"):
            feature_names = [str(c) for c in data.columns]
        m = MatrixLines(data, y, feature_names)
        return Source(m, has_labels=y is not None, n_rows=m.n_rows)
    if y is not None or feature_names is not None:
        raise ParameterError("y and feature_names go with a matrix; lines carry their own labels "
                             "and names")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Source(io.BytesIO(bytes(data)))
    if isinstance(data, str) and ("\n" in data or not data):
        raise TypeError("a str is a path; give lines as bytes or as a list of lines")
    if isinstance(data, (str, os.PathLike)):
        return Source(open(data, "rb"), opened=True)
    if isinstance(data, io.TextIOBase):
        return Source(LineIterator(data))
    if hasattr(data, "read"):
        return Source(data)
    if hasattr(data, "__iter__"):
        return Source(LineIterator(data))
    raise TypeError("cannot read samples from a %s: give a path, bytes, a binary file, an iterable "
                    "of lines, or a matrix with y and feature_names" % type(data).__name__)
