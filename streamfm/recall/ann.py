"""Approximate top-N search with faiss (HNSW or IVF on inner product) for big catalogs.

Exact search (``index.Searcher``) stays the default; an ``AnnSearcher`` answers
the same calls (``search(qs, topn, excl, self_hash)``, ``metric``) from a faiss
index built over the same rows the exact kernel scores: ``[V_I, b_I]`` for u2i
and i2u (inner product = FM score less the query's own part), unit ``[V, 0]``
for i2i and u2u with cosine. The rows faiss returns are re-scored in float64
(the exact kernel's scores for the same rows) and ranked again; excluded rows
(``exclude`` keys, the query itself) are asked for in addition and dropped.

- ``hnsw``: ``IndexHNSWFlat`` (``M`` links a node, ``ef_construction``,
  ``ef_search``): no training, the best recall per query time, memory about
  ``n * (4 d + 8 M)`` bytes.
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` k-means cells (trained on at most
  256 rows a cell) and ``nprobe`` cells searched: faster to build, ``4 d`` bytes
  a row. A set too small for the cells asked gets fewer (``ivf_cells``: at
  least 39 rows a cell), so faiss neither warns on stderr nor trains poor cells.

faiss is the optional extra ``streamfm[faiss]``.
"""

import time

import numpy as np

from .embed import normalized
from .index import FaissMissing, filter_results, search_args

KINDS = ("hnsw", "ivf")
MIN_ROWS_A_CELL = 39  # faiss's min_points_per_centroid: with fewer it prints a warning on stderr


def ivf_cells(n, asked=None):
    """IVF cells for ``n`` rows: ``asked`` (None: about sqrt(n)), but no more
    than one a MIN_ROWS_A_CELL rows, and at least one.

    >>> ivf_cells(200, 64), ivf_cells(20, 30), ivf_cells(10 ** 6), ivf_cells(10 ** 6, 64)
    (5, 1, 1000, 64)
    """
    if asked is None:
        asked = int(round(np.sqrt(max(n, 1))))
    return max(1, min(int(asked), n // MIN_ROWS_A_CELL))


def _faiss():
    try:
        import faiss
    except ImportError:
        raise FaissMissing("an ANN backend needs faiss, which is not installed: pip install 'streamfm[faiss]' "
                           "(or faiss-cpu)") from None
    return faiss


def ann_rows(index, pair, metric):
    """The rows (float32 (n, d)) the exact kernel scores queries against, as ``Index.prepared``."""
    x = np.asarray(index.vectors, dtype=np.float32)
    if pair:
        return np.ascontiguousarray(x)
    x = np.array(x, copy=True)
    x[:, index.k] = 0.0
    if metric == "cos":
        x[:, :index.k] = normalized(x[:, :index.k])
    return x


class AnnSearcher:
    """Top-N over an index with a faiss HNSW or IVF index on inner product.

    Parameters: ``index`` (recall ``Index``), ``pair`` (u2i/i2u: FM score;
    else similarity), ``metric`` ("ip" or "cos"; pair modes are always "ip"),
    ``kind`` ("hnsw" or "ivf"), ``cores`` (faiss threads), ``m``,
    ``ef_construction``, ``ef_search`` (HNSW), ``nlist``, ``nprobe`` (IVF;
    ``nlist`` default: about sqrt(n)), ``seed`` (IVF training sample).
    ``build_seconds`` says how long the build took; ``nlist`` is the IVF cells
    built (``ivf_cells``: fewer than ``nlist_asked`` for a small set, which the
    caller reports; both None for HNSW). faiss raises RuntimeError for IVF
    over no rows.
    """

    def __init__(self, index, pair, metric="ip", kind="hnsw", cores=1, m=32, ef_construction=80, ef_search=128,
                 nlist=None, nprobe=32, seed=0):
        if kind not in KINDS:
            raise ValueError("ANN kind must be one of %s, not %r" % (", ".join(KINDS), kind))
        faiss = _faiss()
        t0 = time.time()
        self.index = index
        self.pair = pair
        self.metric = "ip" if pair else metric
        self.use_self = not pair
        self.kind = kind
        self.fallbacks = 0
        self.nlist_asked = nlist if kind == "ivf" else None
        self.nlist = None
        self.x = ann_rows(index, pair, self.metric)
        n, d = self.x.shape
        faiss.omp_set_num_threads(max(1, int(cores)))
        if kind == "hnsw":
            ix = faiss.IndexHNSWFlat(d, int(m), faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = int(ef_construction)
            ix.hnsw.efSearch = int(ef_search)
            ix.add(self.x)
        else:
            self.nlist = nlist = ivf_cells(n, nlist)
            quantizer = faiss.IndexFlatIP(d)
            ix = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            if nlist == 1:
                # one cell holds every row, whatever its centroid: under 39 rows is
                # no worse training, and faiss must not warn about it
                ix.cp.min_points_per_centroid = 1
            sample = self.x
            if n > 256 * nlist:
                rng = np.random.default_rng(seed)
                sample = self.x[np.sort(rng.choice(n, 256 * nlist, replace=False))]
            ix.train(np.ascontiguousarray(sample))
            ix.add(self.x)
            ix.nprobe = int(min(nprobe, nlist))
            self._quantizer = quantizer  # the IVF index refers to it
        self.faiss_index = ix
        self.build_seconds = time.time() - t0

    def search(self, qs, topn, excl=None, self_hash=None):
        """(rows (nq, topn) int64, -1 past the end; float64 scores), best first."""
        qs, excl, self_hash = search_args(qs, excl, self_hash)
        nq = qs.shape[0]
        out_idx = np.empty((nq, topn), np.int64)
        out_sc = np.empty((nq, topn), np.float64)
        if nq == 0 or topn == 0 or self.index.n == 0:
            out_idx[:] = -1
            out_sc[:] = -np.inf
            return out_idx, out_sc
        kk = min(self.index.n, topn + excl.max_per_query + (1 if self.use_self else 0))
        _D, found = self.faiss_index.search(qs, kk)
        found = found.astype(np.int64)
        # float64 scores of the rows found, as the exact search computes them
        rows = np.where(found >= 0, found, 0)
        sc = np.einsum("qkd,qd->qk", self.x[rows].astype(np.float64), qs.astype(np.float64))
        sc[found < 0] = -np.inf
        order = np.lexsort((found, -sc), axis=1)
        found = np.take_along_axis(found, order, axis=1)
        sc = np.take_along_axis(sc, order, axis=1)
        filter_results(np.ascontiguousarray(found), np.ascontiguousarray(sc), excl.ptr, excl.idx,
                       self.index.key_hash, self_hash, self.use_self, out_idx, out_sc)
        return out_idx, out_sc

    def memory_bytes(self):
        """Bytes the faiss index holds (its serialised size: vectors, links, lists)."""
        return int(_faiss().serialize_index(self.faiss_index).nbytes)
