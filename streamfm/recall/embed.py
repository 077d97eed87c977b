"""Record vectors from an FM (docs/design.md, "Recall").

With a sample's features split into a user part U and an item part I::

    score = w0 + lin(U) + lin(I) + inter(U) + inter(I) + <V_U, V_I>
    V_S = sum_{f in S} v_f x_f,  lin(S) = sum w_f x_f,
    inter(S) = 0.5 (|V_S|^2 - sum |v_f|^2 x_f^2)

so a record is stored as the row ``[V_S, lin(S) + inter(S)]`` (k + 1 numbers,
float32) and a query as ``[V_Q, 1]``: their inner product is the FM score
less the query's own part ``w0 + lin(Q) + inter(Q)``, which is the same for
every candidate (``self_score`` returns it, to print the full score).
Features the model does not know (row -1) contribute nothing.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def embed_records(indptr, rows, vals, n, weights, k, out, own):
    """out[s] = [V_s, lin_s + inter_s] (float32); own[s] = lin_s + inter_s (float64).

    ``weights`` holds (w, v_1..v_k) per feature row, as in a model file.
    Returns the number of records without any known feature.
    """
    vs = np.zeros(k + 1)
    empty = 0
    for s in range(n):
        lin = 0.0
        sq = 0.0
        for f in range(k):
            vs[f] = 0.0
        known = 0
        for j in range(indptr[s], indptr[s + 1]):
            r = rows[j]
            if r < 0:
                continue
            known += 1
            x = vals[j]
            lin += weights[r, 0] * x
            for f in range(k):
                d = weights[r, 1 + f] * x
                vs[f] += d
                sq += d * d
        inter = 0.0
        for f in range(k):
            inter += vs[f] * vs[f]
            out[s, f] = vs[f]
        b = lin + 0.5 * (inter - sq)
        out[s, k] = b
        own[s] = b
        if known == 0:
            empty += 1
    return empty


def embed(records, weights, k):
    """(vectors float32 (n, k+1), own float64 (n,), records without known features)."""
    n = records.n
    out = np.empty((n, k + 1), np.float32)
    own = np.empty(n, np.float64)
    empty = embed_records(records.indptr, records.rows, records.vals, n, weights, k, out, own)
    return out, own, int(empty)


def query_vectors(vectors, metric, pair):
    """Query rows for the top-N kernel from embedded records.

    ``pair`` (u2i, i2u): [V, 1], so the inner product with an index row is
    the FM score less the query's own part. Otherwise (i2i, u2u): [V, 0],
    normalised to unit length for ``metric == 'cos'``.
    """
    q = np.array(vectors, dtype=np.float32, copy=True)
    k = q.shape[1] - 1
    if pair:
        q[:, k] = 1.0
        return q
    q[:, k] = 0.0
    if metric == "cos":
        q[:, :k] = normalized(q[:, :k])
    return q


def normalized(v):
    """Rows scaled to unit length (float64 norms; zero rows stay zero)."""
    norm = np.sqrt(np.einsum("ij,ij->i", v.astype(np.float64), v.astype(np.float64)))
    scale = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
    return (v * scale[:, None]).astype(np.float32)
