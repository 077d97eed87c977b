"""/v1/recall: one query (features and/or a key) -> the top-N keys and scores.

The query is made into the line ``fm_recall query`` reads (``KEY NAME:VALUE ...``),
parsed with the one grammar (KEYED), embedded by the recall ``QueryRunner`` and
searched by the state's searcher (exact by default, faiss HNSW/IVF when the
server built one), so the answer is the one ``fm_recall query`` gives: the
same keys in the same order, and the same scores (the raw FM score for u2i and
i2u, cosine or inner product for i2i and u2u) before they are printed as float32.
"""

import types

import numpy as np

from .. import parse
from ..recall.index import Exclusions
from ..recall.keys import hash_spans
from ..recall.query import MODES, QueryRunner, QuerySummary
from ..recall.records import block_records
from .errors import RequestError
from .scoring import parse_buffers, dict_line, json_type

NO_KEY = b"-"  # the key token of a query given by features alone (never looked up)


def key_hashes(keys):
    """Hashes of keys (str) as the index computes them for its own keys."""
    raw = [k.encode("utf-8") for k in keys]
    arena = np.frombuffer(b"".join(raw), dtype=np.uint8) if raw else np.zeros(0, np.uint8)
    off = np.zeros(len(raw) + 1, np.int64)
    np.cumsum([len(b) for b in raw], out=off[1:])
    spans = np.ascontiguousarray(np.stack([off[:-1], off[1:]], axis=1))
    out = np.empty(len(raw), np.uint64)
    hash_spans(arena, spans, 0, len(raw), out)
    return out


class RecallQuery:
    """A checked /v1/recall request: ``mode``, ``key`` (str or None), ``features``
    (text of ``NAME:VALUE`` tokens), ``topn``, ``exclude`` (list of str), ``metric``, ``exact``."""

    __slots__ = ("mode", "key", "features", "topn", "exclude", "metric", "exact")


def check_query(doc, max_topn):
    """A RecallQuery from the request's JSON object; RequestError (400) if anything is off."""
    if type(doc) is not dict:
        raise RequestError(400, "wrong_type", "the request must be a JSON object, not %s" % json_type(doc))
    allowed = {"mode", "key", "features", "topn", "exclude", "metric", "exact"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RequestError(400, "unknown_field", "unknown field(s) %s (known: %s)"
                           % (", ".join(map(repr, unknown)), ", ".join(sorted(allowed))))
    q = RecallQuery()
    mode = doc.get("mode")
    if type(mode) is not str:
        raise RequestError(400, "wrong_type" if "mode" in doc else "missing_field",
                           "mode must be one of %s" % ", ".join(MODES))
    if mode not in MODES:
        raise RequestError(400, "unknown_mode", "unknown mode %r: one of %s" % (mode[:40], ", ".join(MODES)))
    q.mode = mode
    key = doc.get("key")
    if key is not None and (type(key) is not str or not key or any(c in key for c in " \t\r\n")):
        raise RequestError(400, "wrong_type" if type(key) is not str else "bad_query",
                           "key must be a non-empty string without white space")
    q.key = key
    feats = doc.get("features")
    if feats is None:
        q.features = ""
    elif type(feats) is str:
        if "\n" in feats or "\r" in feats:
            raise RequestError(400, "bad_query", "features must be one line")
        q.features = feats
    elif type(feats) is dict:
        q.features = dict_line(feats, 0)
    else:
        raise RequestError(400, "wrong_type", "features must be a string or an object, not %s" % json_type(feats))
    if key is None and not q.features.strip():
        raise RequestError(400, "bad_query", "a query needs a key, features, or both")
    topn = doc.get("topn", 10)
    if type(topn) is not int:
        raise RequestError(400, "wrong_type", "topn must be an integer, not %s" % json_type(topn))
    if not 1 <= topn <= max_topn:
        raise RequestError(400, "bad_topn", "topn must be in [1, %d], not %d" % (max_topn, topn))
    q.topn = topn
    excl = doc.get("exclude", [])
    if type(excl) is not list or any(type(x) is not str for x in excl):
        raise RequestError(400, "wrong_type", "exclude must be an array of key strings")
    q.exclude = excl
    metric = doc.get("metric")
    if metric is not None and metric not in ("cos", "ip"):
        raise RequestError(400, "bad_metric", "metric must be 'cos' or 'ip'")
    if metric == "cos" and MODES[mode][2]:
        raise RequestError(400, "bad_metric", "%s ranks by the FM score; metric is for i2i and u2u" % mode)
    q.metric = metric or ("ip" if MODES[mode][2] else "cos")
    exact = doc.get("exact", False)
    if type(exact) is not bool:
        raise RequestError(400, "wrong_type", "exact must be true or false")
    q.exact = exact
    return q


def prepare(state, q):
    """(searcher, query rows, exclusions, self hashes, score offsets) for a query, or RequestError."""
    kind, qkind, pair = MODES[q.mode]
    index = state.index(kind)
    if index is None:
        raise RequestError(400, "index_missing", "mode %s searches the %s index, which this server does not "
                           "have (fm_serve --%s-index)" % (q.mode, kind, kind))
    model = state.model.obj
    line = (q.key.encode("utf-8") if q.key is not None else NO_KEY) + b" " + q.features.encode("utf-8") + b"\n"
    buf = np.frombuffer(line, dtype=np.uint8)
    p = parse.parse(buf, 2, parse_buffers(), model.table, parse.KEYED)
    if len(p.bad_line) or p.n_samples != 1:
        why = parse.REASONS[int(p.bad_reason[0])] if len(p.bad_line) else "no query"
        raise RequestError(400, "bad_query", "query: %s" % why)
    recs = block_records(types.SimpleNamespace(data=buf, first_line=1), p, parse.KEYED)
    query_index = state.index(qkind)
    bare = recs.indptr[1] == 0
    if bare and q.key is None:
        raise RequestError(400, "bad_query", "a query needs a key, features, or both")
    if bare and query_index is None and qkind != kind:
        raise RequestError(400, "index_missing", "a %s query by key alone takes its vector from the %s index, "
                           "which this server does not have: give the features" % (q.mode, qkind))
    searcher = state.searcher(q.mode, q.metric, q.exact)
    runner = QueryRunner(model, index, searcher, q.mode, q.topn, None, query_index)
    summary = QuerySummary()
    qs, own, _unresolved = runner.vectors(recs, summary)
    if summary.unresolved:
        raise RequestError(404, "unknown_key", "key %r is not in the %s index (give its features)"
                           % (q.key, qkind if qkind != kind or query_index is not None else kind))
    excl = None
    if q.exclude:
        rows = index.keys.lookup(key_hashes(q.exclude))
        rows = np.unique(rows[rows >= 0])
        excl = Exclusions(np.array([0, rows.shape[0]], np.int64), np.ascontiguousarray(rows, dtype=np.int64))
    self_hash = recs.key_hash if q.key is not None else np.zeros(1, np.uint64)
    add = (own + runner.w0) if pair else np.zeros(1)
    return searcher, index, qs, excl, self_hash, add


def run(state, q):
    """Answer a RecallQuery on a state: {"mode", "key", "keys", "scores"}."""
    searcher, index, qs, excl, self_hash, add = prepare(state, q)
    idx, sc = searcher.search(qs, q.topn, excl, self_hash)
    row = idx[0]
    m = int((row >= 0).sum())
    keys = [index.key(int(j)).decode("utf-8", "backslashreplace") for j in row[:m]]
    scores = (sc[0, :m] + add[0]).tolist()
    return {"mode": q.mode, "key": q.key, "keys": keys, "scores": scores}
