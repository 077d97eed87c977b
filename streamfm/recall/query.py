"""The query pipeline: query lines in, ``QUERY_KEY<TAB>KEY:SCORE ...`` lines out.

Blocks of query lines are parsed (numba, the one grammar, KEYED mode),
embedded with the model, searched (``index.Searcher``: exact top-N over
``-core`` threads, or faiss) and formatted (numba); output follows input
order. A query line without features takes its vector from an index that
holds its key (``--query-index``, or the searched index for i2i and u2u).

Modes (docs/design.md, "Recall"): u2i ranks the items index by the FM score of
(user, item), i2u the users index by the FM score of (user, item) for the
query item; i2i and u2u rank by cosine of V (or inner product with
``--metric ip``). Printed scores: the raw FM score (u2i, i2u), else the
cosine or inner product.
"""

import time

import numpy as np
from numba import njit

from .. import floatfmt, parse
from ..badlines import RunSummary
from .embed import embed, query_vectors
from .index import PairTable
from .records import RecordReader

MODES = {
    # mode: (index kind searched, query kind, pair score)
    "u2i": ("items", "users", True),
    "i2u": ("users", "items", True),
    "i2i": ("items", "items", False),
    "u2u": ("users", "users", False),
}


@njit(cache=True, nogil=True)
def format_results(buf, spans, nq, out_idx, out_sc, add, key_arena, key_off, out):
    """'QUERY_KEY<TAB>KEY:SCORE KEY:SCORE ...' lines; returns bytes written.

    ``spans[q]`` = the query key's bytes in buf; scores get add[q] added and
    are written as the shortest float32 text that reads back to the value.
    """
    pos = 0
    topn = out_idx.shape[1]
    for q in range(nq):
        for t in range(spans[q, 0], spans[q, 1]):
            out[pos] = buf[t]
            pos += 1
        out[pos] = 9
        pos += 1
        first = True
        for a in range(topn):
            j = out_idx[q, a]
            if j < 0:
                break
            if not first:
                out[pos] = 32
                pos += 1
            first = False
            for t in range(key_off[j], key_off[j + 1]):
                out[pos] = key_arena[t]
                pos += 1
            out[pos] = 58
            pos += 1
            pos = floatfmt.write_f32(out_sc[q, a] + add[q], out, pos)
        out[pos] = 10
        pos += 1
    return pos


class QuerySummary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.queries = 0
        self.unresolved = 0      # no features and a key no index holds
        self.no_known = 0        # features given, none known to the model
        self.fallbacks = 0


def load_exclusions(path, mode, index, opts, log):
    """--exclude FILE (click lines 'A ... | B') as (query key hash, index row) pairs.

    u2i: A is the user (query), B the item; i2u: mirrored (B is the query).
    i2i, u2u: A is the query key, B the key to leave out.
    """
    with open(path, "rb") as f:
        recs = RecordReader(f, parse.CLICK, opts, log, path).read_all()
    if mode == "i2u":
        return PairTable(recs.item_hash, index.keys.lookup(recs.key_hash))
    return PairTable(recs.key_hash, index.keys.lookup(recs.item_hash))


class QueryRunner:
    """Embeds and answers blocks of parsed query lines."""

    def __init__(self, model, index, searcher, mode, topn, excl=None, query_index=None):
        self.model = model
        self.index = index
        self.searcher = searcher
        self.mode = mode
        self.pair = MODES[mode][2]
        self.topn = int(topn)
        self.excl = excl
        self.query_index = query_index
        if query_index is None and MODES[mode][0] == MODES[mode][1]:
            self.query_index = index
        self.w0 = float(model.weights[0, 0])

    def vectors(self, recs, summary):
        """Query rows for the kernel, each query's own score part (pair modes), and
        which queries have nothing to rank by (no features, a key no index holds)."""
        k = self.model.k
        vec, own, _ = embed(recs, self.model.weights, k)
        lens = np.diff(recs.indptr)
        rec_of = np.repeat(np.arange(recs.n), lens)
        known = np.bincount(rec_of[recs.rows >= 0], minlength=recs.n)
        bare = np.flatnonzero(lens == 0)
        unresolved = np.zeros(recs.n, np.bool_)
        if bare.shape[0]:
            found = (self.query_index.keys.lookup(recs.key_hash[bare]) if self.query_index is not None
                     else np.full(bare.shape[0], -1, np.int64))
            ok = found >= 0
            if ok.any():  # (no query index at all: nothing to take)
                vec[bare[ok]] = self.query_index.vectors[found[ok]]
                own[bare[ok]] = self.query_index.vectors[found[ok], k]
            summary.unresolved += int((~ok).sum())
            unresolved[bare[~ok]] = True
            vec[bare[~ok]] = 0.0
            own[bare[~ok]] = 0.0
        summary.no_known += int(((lens > 0) & (known == 0)).sum())
        return query_vectors(vec, self.searcher.metric, self.pair), own, unresolved

    def answer(self, recs, summary):
        """(rows, scores to print) for a block of query records.

        A query with nothing to rank by gets an empty result (every row -1),
        never a ranking of zeros or of the candidates' own score parts.
        """
        qs, own, unresolved = self.vectors(recs, summary)
        excl = self.excl.for_queries(recs.key_hash) if self.excl is not None and len(self.excl) else None
        idx, sc = self.searcher.search(qs, self.topn, excl, recs.key_hash)
        idx[unresolved] = -1
        add = (own + self.w0) if self.pair else np.zeros(recs.n)
        return idx, sc, add


def run_queries(runner, stream, out, opts, log, source="queries", progress=None):
    """Answer every valid query line of ``stream``; writes result lines to ``out``."""
    summary = QuerySummary()
    t0 = time.time()
    reader = RecordReader(stream, parse.KEYED, opts, log, source, table=runner.model.table)
    idx_keys = runner.index
    max_key = int(np.diff(idx_keys.key_off).max()) if idx_keys.n else 0
    outbuf = np.empty(0, np.uint8)
    for recs in _with_spans(reader):
        rec, buf, spans = recs
        idx, sc, add = runner.answer(rec, summary)
        need = int((spans[:, 1] - spans[:, 0]).sum()) + rec.n * (2 + runner.topn * (max_key + 34)) + 16
        if outbuf.shape[0] < need:
            outbuf = np.empty(max(need, 2 * outbuf.shape[0]), np.uint8)
        nb = format_results(buf, spans, rec.n, idx, sc, add, idx_keys.key_arena, idx_keys.key_off, outbuf)
        out.write(outbuf[:nb].tobytes())
        summary.queries += rec.n
        summary.lines = reader.lines
        summary.bad = reader.bad.count
        if progress is not None:
            progress(summary)
    summary.lines = reader.lines
    summary.take_bad(reader.bad)
    summary.fallbacks = runner.searcher.fallbacks
    summary.seconds = time.time() - t0
    return summary


def _with_spans(reader):
    """(records, key bytes, key spans) per block; spans index the key arena."""
    for rec in reader:
        spans = np.ascontiguousarray(np.stack([rec.key_off[:-1], rec.key_off[1:]], axis=1))
        yield rec, rec.key_arena, spans

