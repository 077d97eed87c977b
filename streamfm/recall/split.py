"""Exact top-N of few queries on several threads: the index rows split among them.

``index.Searcher`` splits a batch of queries among threads, which leaves one
query (a server's usual request) on one thread. ``SplitSearcher`` gives each
of ``parts`` threads a contiguous share of the rows instead (its own
transposed copy, so each runs the same exact kernel, ``index.topn_range``, on
contiguous memory), and merges the per-share top-N lists: each is exact for
its rows, so the merge (by float64 score, ties to the lower row) is the
answer of one exact search over all rows.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .embed import normalized
from .index import QBLOCK, TILE, search_args, topn_range


class SplitSearcher:
    """Exact top-N over ``index`` with its rows split among ``parts`` threads.

    ``pair`` (u2i, i2u: FM score) or not (i2i, u2u: ``metric`` "cos" or
    "ip"), as ``index.Searcher``; ``search`` has its signature and result.
    """

    def __init__(self, index, pair, metric="ip", parts=2):
        self.index = index
        self.pair = pair
        self.metric = "ip" if pair else metric
        self.use_self = not pair
        self.fallbacks = 0
        x = np.asarray(index.vectors, dtype=np.float32)
        if not pair:
            x = np.array(x, copy=True)
            x[:, index.k] = 0.0
            if self.metric == "cos":
                x[:, :index.k] = normalized(x[:, :index.k])
        n = x.shape[0]
        self.parts = max(1, min(int(parts), max(1, n // TILE)))
        self.bounds = [n * i // self.parts for i in range(self.parts + 1)]
        self.xts = [np.ascontiguousarray(x[a:b].T) for a, b in zip(self.bounds, self.bounds[1:])]
        x64 = x.astype(np.float64) if n else np.zeros((0, x.shape[1]))
        self.maxnorm = float(np.sqrt(np.max(np.einsum("ij,ij->i", x64, x64)))) if n else 0.0
        del x64
        self.key_hash = [np.ascontiguousarray(index.key_hash[a:b]) for a, b in zip(self.bounds, self.bounds[1:])]
        self.pool = ThreadPoolExecutor(max_workers=self.parts, thread_name_prefix="streamfm-split") \
            if self.parts > 1 else None

    def search(self, qs, topn, excl=None, self_hash=None):
        """(rows (nq, topn) int64 with -1 past the end, scores (nq, topn) float64), best first."""
        qs, excl, self_hash = search_args(qs, excl, self_hash)
        nq = qs.shape[0]
        if nq == 0 or topn == 0:
            return np.empty((nq, topn), np.int64), np.empty((nq, topn), np.float64)
        pad = max(8, topn // 8)
        outs = [(np.empty((nq, topn), np.int64), np.empty((nq, topn), np.float64)) for _ in range(self.parts)]

        def run(p):
            a, b = self.bounds[p], self.bounds[p + 1]
            # each share's exclusions, in its own row numbers
            keep = (excl.idx >= a) & (excl.idx < b)
            q_of = np.repeat(np.arange(nq), np.diff(excl.ptr))
            ptr = np.zeros(nq + 1, np.int64)
            np.cumsum(np.bincount(q_of[keep], minlength=nq), out=ptr[1:])
            idx = np.ascontiguousarray(excl.idx[keep] - a, dtype=np.int64)
            oi, osc = outs[p]
            return topn_range(self.xts[p], qs, 0, nq, topn, pad, ptr, idx, self.key_hash[p], self_hash,
                              self.use_self, self.maxnorm, TILE, QBLOCK, oi, osc)

        if self.pool is None:
            self.fallbacks += run(0)
            return outs[0]
        self.fallbacks += sum(self.pool.map(run, range(self.parts)))
        rows = np.concatenate([np.where(oi >= 0, oi + a, -1) for (oi, _), a in zip(outs, self.bounds)], axis=1)
        sc = np.concatenate([np.where(oi >= 0, osc, -np.inf) for oi, osc in outs], axis=1)
        order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -sc), axis=1)[:, :topn]
        out_idx = np.take_along_axis(rows, order, axis=1)
        out_sc = np.take_along_axis(sc, order, axis=1)
        out_idx[~np.isfinite(out_sc)] = -1
        return out_idx, out_sc
