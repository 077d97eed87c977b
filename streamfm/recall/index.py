"""The recall index file and exact top-N search.

File: the container of ``container.py`` (MAGIC ``"\\x89SFMIDX\\n"``, a 4 KiB
header reserve), written atomically like the model files. Header: ``kind``
(items or users), ``k``, ``n`` and ``model``, the fingerprint of the model
the vectors came from. Arrays: ``vectors`` float32 (n, k + 1), one row
``[V, lin + inter]`` per record (see ``embed``); ``key_off`` int64 (n + 1)
and ``keys`` (the records' keys, concatenated bytes).

Search is exact: a numba kernel scores a block of queries against a tile of
index rows at a time (float32, the tile stays in cache while every query of
the block uses it), keeps the best ``topn + pad`` per query in a heap, then
re-scores those in float64 and checks that no row outside the heap can
beat the N-th (a bound on float32 rounding). A query that fails the check
(never seen in practice) is answered by an exhaustive float64 pass. The
result is the float64 ranking, ties broken by the lower row: what a
brute-force float64 search returns.
"""

import math
import threading
import zlib

import numpy as np
from numba import njit

from .. import container
from ..model import MAX_K, ModelError

MAGIC = b"\x89SFMIDX\n"
FORMAT_NAME = "streamfm-recall-index"
FORMAT_VERSION = 1
KINDS = ("items", "users")

TILE = 4096       # index rows per tile (17 float32 columns: ~280 KB, stays in L2)
QBLOCK = 64       # queries sharing one tile
_U32 = 2.0 ** -24


class IndexError_(ModelError):
    """An index file that cannot be used (str() is a one-line explanation)."""


FILE_KIND = container.Kind(MAGIC, FORMAT_NAME, FORMAT_VERSION, reserve=1 << 12, what="recall index",
                           error=IndexError_, hint=" (make one with fm_recall index)")


def array_crc32(w, dtype=None, rows=1 << 16):
    """crc32 of the bytes of ``w`` (as ``dtype``), converted a chunk of rows at a time.

    The crc of the whole C-ordered array, as ``zlib.crc32`` of its bytes,
    without a contiguous (or converted) copy of all of it:

    >>> import zlib
    >>> w = np.arange(12.0).reshape(4, 3)
    >>> array_crc32(w, rows=3) == zlib.crc32(w.tobytes())
    True
    >>> array_crc32(w, np.float32) == zlib.crc32(w.astype(np.float32).tobytes())
    True
    """
    crc = 0
    for r0 in range(0, w.shape[0], rows):
        part = w[r0:r0 + rows]
        part = np.ascontiguousarray(part if dtype is None else part.astype(dtype))
        crc = zlib.crc32(memoryview(part).cast("B"), crc)
    return crc


def model_fingerprint(weights):
    """crc32 of a model's (w, v) array: tells whether an index matches a model.

    ``crc32_f32`` is the crc32 of the same numbers as float32, which a
    float32 serving copy of a float64 model (``fm_dump strip --float``) has.
    """
    w = np.asarray(weights)
    out = {"crc32": array_crc32(w), "n_rows": int(w.shape[0]), "k": int(w.shape[1]) - 1, "dtype": str(w.dtype)}
    out["crc32_f32"] = out["crc32"] if w.dtype == np.float32 else array_crc32(w, np.float32)
    return out


def fingerprint_matches(info, weights, fingerprint=None):
    """Whether an index whose header says ``info`` (its ``model`` entry) was
    built from the model with these (w, v) weights, or a float32 copy of it.

    ``fingerprint``: ``model_fingerprint(weights)`` if the caller has it.
    An index without a fingerprint matches nothing.
    """
    if not info or info.get("crc32") is None:
        return False
    fp = fingerprint or model_fingerprint(weights)
    if info.get("n_rows") != fp["n_rows"] or info.get("k") != fp["k"]:
        return False
    if info.get("dtype") == fp["dtype"]:
        return info["crc32"] == fp["crc32"]
    theirs = info["crc32"] if info.get("dtype") == "float32" else info.get("crc32_f32")
    return theirs is not None and theirs == fp["crc32_f32"]


# ----------------------------------------------------------------------------
# File


def write_index(path, kind, vectors, key_arena, key_off, model_info):
    """Write an index file (container.py): ``vectors`` (n, k + 1) as float32,
    the keys (``key_arena`` bytes, ``key_off`` n + 1 offsets), ``kind``
    (items or users) and ``model_info`` (``model_fingerprint`` of the model
    the vectors came from, or None)."""
    if kind not in KINDS:
        raise ValueError("index kind must be items or users")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    key_off = np.ascontiguousarray(key_off, dtype=np.int64)
    key_arena = np.ascontiguousarray(key_arena, dtype=np.uint8)
    n, d = vectors.shape
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "k": d - 1, "n": n,
              "model": model_info}
    container.write(FILE_KIND, path, header, [container.Array(name, a.dtype, a.shape, a) for name, a in (
        ("vectors", vectors), ("key_off", key_off), ("keys", key_arena))])


class Index:
    """An index file in memory: vectors, keys and their hash index."""

    def __init__(self, kind, vectors, key_arena, key_off, model_info, path=None):
        from .keys import KeyIndex, hash_spans

        self.kind = kind
        self.vectors = vectors
        self.key_arena = key_arena
        self.key_off = key_off
        self.model_info = model_info or {}
        self.path = path
        n = vectors.shape[0]
        spans = np.stack([key_off[:-1], key_off[1:]], axis=1) if n else np.zeros((0, 2), np.int64)
        self.key_hash = np.empty(n, np.uint64)
        hash_spans(key_arena, np.ascontiguousarray(spans), 0, n, self.key_hash)
        self.keys = KeyIndex(self.key_hash)
        self._prepared = {}

    @property
    def n(self):
        return self.vectors.shape[0]

    @property
    def k(self):
        return self.vectors.shape[1] - 1

    def key(self, i):
        return bytes(self.key_arena[self.key_off[i]:self.key_off[i + 1]])

    def prepared(self, pair, metric):
        """(rows as the kernel scores them, transposed float32 (d, n), max row norm)."""
        key = (bool(pair), metric if not pair else "ip")
        if key not in self._prepared:
            x = self.vectors
            if not pair:
                from .embed import normalized

                x = np.array(x, copy=True)
                x[:, self.k] = 0.0
                if metric == "cos":
                    x[:, :self.k] = normalized(x[:, :self.k])
            xt = np.ascontiguousarray(x.T)
            maxnorm = float(np.sqrt(np.max(np.einsum("ij,ij->i", x.astype(np.float64),
                                                     x.astype(np.float64))))) if self.n else 0.0
            self._prepared[key] = (x, xt, maxnorm)
        return self._prepared[key]


# the arrays' types; a header's dtype strings are compared with these, never given to numpy
_DTYPES = {"vectors": np.dtype("<f4"), "key_off": np.dtype("<i8"), "keys": np.dtype(np.uint8)}


def _index_specs(path, header, size):
    """The header's arrays, checked against its kind, k and n (IndexError_ when they disagree)."""
    k, n = header.get("k"), header.get("n")
    if header.get("model") is not None and not isinstance(header["model"], dict):  # None: no fingerprint
        raise IndexError_("%s: corrupted header: model fingerprint %r" % (path, header.get("model")))
    if header.get("kind") not in KINDS:
        raise IndexError_("%s: corrupted header: kind %r (items or users)" % (path, header.get("kind")))
    if not (container.is_int(k) and container.is_int(n)) or not 0 <= k <= MAX_K or n < 0:
        raise IndexError_("%s: corrupted header: k = %r, n = %r" % (path, k, n))
    specs = container.array_specs(FILE_KIND, path, header, size, {
        "vectors": (_DTYPES["vectors"], (n, k + 1)), "key_off": (_DTYPES["key_off"], (n + 1,)),
        "keys": (_DTYPES["keys"], (None,))})
    if len(specs) != 3:
        raise IndexError_("%s: corrupted header: arrays %s missing" % (
            path, ", ".join(sorted(set(_DTYPES) - set(specs)))))
    return specs


def read_index(path):
    """The Index in an index file (IndexError_, one line, when it cannot be used)."""
    try:
        header, size = container.read_header(FILE_KIND, path)
        specs = _index_specs(path, header, size)
        out = container.read_arrays(FILE_KIND, path, [specs[name] for name in _DTYPES])
        off = out["key_off"]
        if off[0] != 0 or off[-1] != out["keys"].shape[0] or np.any(np.diff(off) < 0):
            raise IndexError_("%s: corrupted: inconsistent key offsets" % path)
    except FileNotFoundError:
        raise IndexError_("%s: no such index file" % path) from None
    except IsADirectoryError:
        raise IndexError_("%s: is a directory, not an index file" % path) from None
    except (OSError, ValueError, KeyError) as e:
        raise IndexError_("%s: cannot read index: %s" % (path, getattr(e, "strerror", None) or e)) from None
    return Index(header["kind"], out["vectors"], out["keys"], out["key_off"], header.get("model"), path)


# ----------------------------------------------------------------------------
# Exact top-N kernel


@njit(cache=True, nogil=True)
def _tile_scores(xt, j0, j1, q, s):
    """s[j - j0] = <q, row j> for rows j0..j1 (float32, four columns per pass)."""
    d = xt.shape[0]
    n = j1 - j0
    s[:n] = 0.0
    f = 0
    while f + 4 <= d:
        a = q[f]
        b = q[f + 1]
        c = q[f + 2]
        e = q[f + 3]
        x0 = xt[f, j0:j1]
        x1 = xt[f + 1, j0:j1]
        x2 = xt[f + 2, j0:j1]
        x3 = xt[f + 3, j0:j1]
        for j in range(n):
            s[j] += a * x0[j] + b * x1[j] + c * x2[j] + e * x3[j]
        f += 4
    while f < d:
        a = q[f]
        x0 = xt[f, j0:j1]
        for j in range(n):
            s[j] += a * x0[j]
        f += 1


_SUB = 128  # scores counted against the threshold at once (64..256 is best)


@njit(inline="always")
def _count_above(s, c0, c1, thr):
    """Scores above thr in s[c0:c1]: a vectorized pass (a slice and a loop from
    0 leave LLVM nothing to prove), so that the scalar pass that pushes to the
    heap runs only over the few runs of scores that hold a candidate."""
    x = s[c0:c1]
    c = 0
    for j in range(x.shape[0]):
        if x[j] > thr:
            c += 1
    return c


@njit(inline="always")
def _lower(hs, hi, a, b):
    """Entry a ranks below entry b: a lower score, or the same score and a later row."""
    return hs[a] < hs[b] or (hs[a] == hs[b] and hi[a] > hi[b])


@njit(inline="always")
def _swap(hs, hi, a, b):
    t = hs[a]
    hs[a] = hs[b]
    hs[b] = t
    u = hi[a]
    hi[a] = hi[b]
    hi[b] = u


@njit(inline="always")
def _push(hs, hi, size, cap, score, idx):
    """Keep the cap best (score, row) in a min-heap (root = worst kept); returns the size."""
    if size < cap:
        i = size
        hs[i] = score
        hi[i] = idx
        size += 1
        while i > 0:
            p = (i - 1) // 2
            if _lower(hs, hi, i, p):
                _swap(hs, hi, i, p)
                i = p
            else:
                break
        return size
    hs[0] = score
    hi[0] = idx
    i = 0
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        m = l
        if l + 1 < size and _lower(hs, hi, l + 1, l):
            m = l + 1
        if _lower(hs, hi, m, i):
            _swap(hs, hi, m, i)
            i = m
        else:
            break
    return size


@njit(inline="always")
def _excluded(j, ex_idx, e0, e1, key_hash, self_hash, use_self):
    if use_self and key_hash[j] == self_hash:
        return True
    lo = e0
    hi = e1
    while lo < hi:
        mid = (lo + hi) // 2
        if ex_idx[mid] < j:
            lo = mid + 1
        else:
            hi = mid
    return lo < e1 and ex_idx[lo] == j


@njit(inline="always")
def _score64(xt, q, j):
    s = 0.0
    for f in range(xt.shape[0]):
        s += np.float64(q[f]) * np.float64(xt[f, j])
    return s


@njit(inline="always")
def _better(s1, j1, s2, j2):
    return s1 > s2 or (s1 == s2 and j1 < j2)


@njit(cache=True, nogil=True)
def _sort_desc(sc, ix, m):
    """Insertion sort of (sc, ix)[:m] by score descending, then row ascending."""
    for a in range(1, m):
        s = sc[a]
        j = ix[a]
        b = a - 1
        while b >= 0 and _better(s, j, sc[b], ix[b]):
            sc[b + 1] = sc[b]
            ix[b + 1] = ix[b]
            b -= 1
        sc[b + 1] = s
        ix[b + 1] = j


@njit(cache=True, nogil=True)
def _exhaustive(xt, q, topn, ex_idx, e0, e1, key_hash, self_hash, use_self, out_idx, out_sc):
    """Exact float64 top-N of one query by a full pass (the fallback)."""
    n = xt.shape[1]
    hs = np.empty(topn + 1)
    hi = np.empty(topn + 1, np.int64)
    size = 0
    for j in range(n):
        if _excluded(j, ex_idx, e0, e1, key_hash, self_hash, use_self):
            continue
        s = _score64(xt, q, j)
        if size < topn or s > hs[0]:
            size = _push(hs, hi, size, topn, s, j)
    _sort_desc(hs, hi, size)
    for t in range(topn):
        if t < size:
            out_idx[t] = hi[t]
            out_sc[t] = hs[t]
        else:
            out_idx[t] = -1
            out_sc[t] = -np.inf


@njit(cache=True, nogil=True)
def topn_range(xt, qs, q0, q1, topn, pad, ex_ptr, ex_idx, key_hash, self_hash, use_self,
               maxnorm, tile, qblock, out_idx, out_sc):
    """Exact top-N for queries q0..q1-1 (rows of qs) over the rows of xt (d, n).

    ex_idx[ex_ptr[q]:ex_ptr[q + 1]] (sorted) are rows query q must not get;
    with use_self, rows whose key hash equals self_hash[q] are skipped too.
    out_idx[q, :] gets rows (-1 past the end), out_sc[q, :] float64 scores.
    Returns the number of queries answered by the exhaustive fallback.
    """
    d = xt.shape[0]
    n = xt.shape[1]
    cap = topn + pad
    s = np.empty(tile, np.float32)
    hs = np.empty((qblock, cap), np.float32)
    hi = np.empty((qblock, cap), np.int64)
    hsize = np.zeros(qblock, np.int64)
    sc64 = np.empty(cap)
    ix64 = np.empty(cap, np.int64)
    fallbacks = 0
    for b0 in range(q0, q1, qblock):
        b1 = min(q1, b0 + qblock)
        for t in range(b1 - b0):
            hsize[t] = 0
        for j0 in range(0, n, tile):
            j1 = min(n, j0 + tile)
            for qi in range(b0, b1):
                t = qi - b0
                _tile_scores(xt, j0, j1, qs[qi], s)
                size = hsize[t]
                thr = hs[t, 0] if size == cap else np.float32(-np.inf)
                e0 = ex_ptr[qi]
                e1 = ex_ptr[qi + 1]
                sh = self_hash[qi]
                us = use_self
                for c0 in range(0, j1 - j0, _SUB):
                    c1 = min(j1 - j0, c0 + _SUB)
                    # a vectorized count first: most runs of scores hold nothing to keep
                    if _count_above(s, c0, c1, thr) == 0:
                        continue
                    for j in range(c0, c1):
                        v = s[j]
                        if v > thr:
                            jj = j0 + j
                            if (e1 > e0 or us) and _excluded(jj, ex_idx, e0, e1, key_hash, sh, us):
                                continue
                            size = _push(hs[t], hi[t], size, cap, v, jj)
                            if size == cap:
                                thr = hs[t, 0]
                hsize[t] = size
        for qi in range(b0, b1):
            t = qi - b0
            size = hsize[t]
            q = qs[qi]
            for a in range(size):
                sc64[a] = _score64(xt, q, hi[t, a])
                ix64[a] = hi[t, a]
            _sort_desc(sc64, ix64, size)
            ok = True
            if size == cap and topn > 0:
                qn = 0.0
                for f in range(d):
                    qn += np.float64(q[f]) * np.float64(q[f])
                eps = 2.0 * (d + 2) * 5.960464477539063e-08 * math.sqrt(qn) * maxnorm + 1e-300
                ok = sc64[topn - 1] > np.float64(hs[t, 0]) + eps
            if ok:
                for a in range(topn):
                    if a < size:
                        out_idx[qi, a] = ix64[a]
                        out_sc[qi, a] = sc64[a]
                    else:
                        out_idx[qi, a] = -1
                        out_sc[qi, a] = -np.inf
            else:
                fallbacks += 1
                _exhaustive(xt, q, topn, ex_idx, ex_ptr[qi], ex_ptr[qi + 1], key_hash, self_hash[qi],
                            use_self, out_idx[qi], out_sc[qi])
    return fallbacks


class Exclusions:
    """Rows each query must not get: CSR (ptr, sorted rows) over the queries."""

    def __init__(self, ptr, idx):
        self.ptr = ptr
        self.idx = idx

    @classmethod
    def none(cls, nq):
        return cls(np.zeros(nq + 1, np.int64), np.zeros(0, np.int64))

    @property
    def max_per_query(self):
        return int(np.diff(self.ptr).max()) if self.ptr.shape[0] > 1 else 0


def search_args(qs, excl=None, self_hash=None):
    """What every searcher (exact, row-split, faiss) takes from a search call:
    the queries as contiguous float32, the exclusions (none by default) and
    each query's own key hash (0: none) as contiguous uint64."""
    qs = np.ascontiguousarray(qs, dtype=np.float32)
    nq = qs.shape[0]
    if excl is None:
        excl = Exclusions.none(nq)
    self_hash = (np.zeros(nq, np.uint64) if self_hash is None
                 else np.ascontiguousarray(self_hash, dtype=np.uint64))
    return qs, excl, self_hash


class PairTable:
    """(query key hash, index row) pairs, sorted, for per-query exclusions."""

    def __init__(self, qhash, rows):
        qhash = np.asarray(qhash, dtype=np.uint64)
        rows = np.asarray(rows, dtype=np.int64)
        keep = rows >= 0
        qhash, rows = qhash[keep], rows[keep]
        order = np.lexsort((rows, qhash))
        self.qhash = np.ascontiguousarray(qhash[order])
        self.rows = np.ascontiguousarray(rows[order])

    def __len__(self):
        return self.qhash.shape[0]

    def for_queries(self, query_hash):
        """Exclusions for queries with these key hashes (duplicates removed)."""
        query_hash = np.asarray(query_hash, dtype=np.uint64)
        lo = np.searchsorted(self.qhash, query_hash, side="left")
        hi = np.searchsorted(self.qhash, query_hash, side="right")
        lens = hi - lo
        ptr = np.zeros(len(query_hash) + 1, np.int64)
        np.cumsum(lens, out=ptr[1:])
        from .records import concat_ranges

        idx = self.rows[concat_ranges(lo.astype(np.int64), lens.astype(np.int64))]
        return Exclusions(ptr, np.ascontiguousarray(idx))


class Searcher:
    """Exact top-N over an index with ``cores`` threads (queries split among them)."""

    def __init__(self, index, pair, metric="ip", cores=1, backend="exact"):
        self.index = index
        self.pair = pair
        self.metric = metric
        self.cores = max(1, int(cores))
        self.x, self.xt, self.maxnorm = index.prepared(pair, metric)
        self.use_self = not pair
        self.backend = backend
        self.fallbacks = 0
        self._faiss = None
        if backend == "faiss":
            self._faiss = faiss_index(self.x, self.cores)

    def search(self, qs, topn, excl=None, self_hash=None):
        """(rows (nq, topn) int64 with -1 past the end, scores (nq, topn) float64)."""
        qs, excl, self_hash = search_args(qs, excl, self_hash)
        nq = qs.shape[0]
        out_idx = np.empty((nq, topn), np.int64)
        out_sc = np.empty((nq, topn), np.float64)
        if nq == 0 or topn == 0:
            return out_idx, out_sc
        if self._faiss is not None:
            return self._search_faiss(qs, topn, excl, self_hash)
        pad = max(8, topn // 8)
        parts = min(self.cores, max(1, (nq + QBLOCK // 4 - 1) // (QBLOCK // 4)))
        bounds = [nq * i // parts for i in range(parts + 1)]
        results = [0] * parts

        def run(i):
            results[i] = topn_range(self.xt, qs, bounds[i], bounds[i + 1], topn, pad, excl.ptr, excl.idx,
                                    self.index.key_hash, self_hash, self.use_self, self.maxnorm,
                                    TILE, QBLOCK, out_idx, out_sc)

        if parts == 1:
            run(0)
        else:
            ths = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(parts)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
        self.fallbacks += sum(results)
        return out_idx, out_sc

    def _search_faiss(self, qs, topn, excl, self_hash):
        extra = excl.max_per_query + (1 if self.use_self else 0)
        kk = min(self.index.n, topn + extra)
        D, I = self._faiss.search(qs, kk)
        out_idx = np.empty((qs.shape[0], topn), np.int64)
        out_sc = np.empty((qs.shape[0], topn), np.float64)
        filter_results(I.astype(np.int64), D.astype(np.float64), excl.ptr, excl.idx, self.index.key_hash,
                       self_hash, self.use_self, out_idx, out_sc)
        return out_idx, out_sc


@njit(cache=True, nogil=True)
def filter_results(I, D, ex_ptr, ex_idx, key_hash, self_hash, use_self, out_idx, out_sc):
    """Drop excluded rows from ranked lists (the faiss backend asks for extra rows)."""
    nq, kk = I.shape
    topn = out_idx.shape[1]
    for q in range(nq):
        t = 0
        for a in range(kk):
            j = I[q, a]
            if j < 0 or t >= topn:
                continue
            if _excluded(j, ex_idx, ex_ptr[q], ex_ptr[q + 1], key_hash, self_hash[q], use_self):
                continue
            out_idx[q, t] = j
            out_sc[q, t] = D[q, a]
            t += 1
        while t < topn:
            out_idx[q, t] = -1
            out_sc[q, t] = -np.inf
            t += 1


class FaissMissing(Exception):
    pass


def faiss_index(x, cores):
    try:
        import faiss
    except ImportError:
        raise FaissMissing("--backend faiss needs faiss, which is not installed: "
                           "pip install 'streamfm[faiss]' (or faiss-cpu), or use --backend exact") from None
    faiss.omp_set_num_threads(int(cores))
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(np.ascontiguousarray(x, dtype=np.float32))
    return idx


def brute_force(x, qs, topn, excluded=None):
    """Reference answer in numpy float64 (tests and the bench): rows and scores.

    ``excluded``: a list (one per query) of rows to leave out.
    """
    s = np.asarray(qs, np.float64) @ np.asarray(x, np.float64).T
    idx = np.empty((s.shape[0], topn), np.int64)
    sc = np.empty((s.shape[0], topn))
    for q in range(s.shape[0]):
        row = s[q].copy()
        if excluded is not None and len(excluded[q]):
            row[np.asarray(excluded[q], np.int64)] = -np.inf
        order = np.lexsort((np.arange(row.shape[0]), -row))[:topn]
        order = order[np.isfinite(row[order])]
        idx[q, :] = -1
        sc[q, :] = -np.inf
        idx[q, :len(order)] = order
        sc[q, :len(order)] = row[order]
    return idx, sc
