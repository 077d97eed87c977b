"""Offline evaluation of u2i recall on held-out clicks.

Held-out click lines are grouped by user key; each user is queried once
(with the features of their first held-out line) for the top max(K) items,
leaving out the items they clicked in ``--train``. Per K:

- HitRate@K: share of users with at least one held-out item in their top K
- Recall@K:  mean over users of (held-out items in the top K) / (held-out items)
- NDCG@K:    mean over users of DCG / ideal DCG, binary relevance
- Coverage@K: distinct items recommended in some top K / items in the index

A held-out item the index does not hold counts as a miss.
"""

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def rank_metrics(out_idx, rel_ptr, rel_idx, ks, n_index, res):
    """res[t] = (hit rate, recall, ndcg, coverage) at K = ks[t], averaged over users."""
    nu = out_idx.shape[0]
    nk = ks.shape[0]
    for t in range(nk):
        for c in range(4):
            res[t, c] = 0.0
    seen = np.zeros((nk, max(n_index, 1)), np.bool_)
    for u in range(nu):
        a = rel_ptr[u]
        b = rel_ptr[u + 1]
        n_rel = b - a
        for t in range(nk):
            kk = min(ks[t], out_idx.shape[1])
            hits = 0
            dcg = 0.0
            for r in range(kk):
                j = out_idx[u, r]
                if j < 0:
                    break
                seen[t, j] = True
                for x in range(a, b):
                    if rel_idx[x] == j:
                        hits += 1
                        dcg += 1.0 / math.log2(r + 2.0)
                        break
            idcg = 0.0
            for r in range(min(n_rel, kk)):
                idcg += 1.0 / math.log2(r + 2.0)
            if hits > 0:
                res[t, 0] += 1.0
            if n_rel > 0:
                res[t, 1] += hits / n_rel
            if idcg > 0.0:
                res[t, 2] += dcg / idcg
    for t in range(nk):
        if nu > 0:
            res[t, 0] /= nu
            res[t, 1] /= nu
            res[t, 2] /= nu
        cov = 0
        for j in range(n_index):
            if seen[t, j]:
                cov += 1
        res[t, 3] = cov / max(n_index, 1)


def group_users(key_hash):
    """(first line of each user, user of each line) by key hash, in first-seen order."""
    uniq, first, inv = np.unique(key_hash, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return first[order], rank[inv.ravel()]


def relevant_csr(user_of, item_rows, n_users, item_hash):
    """Held-out index rows per user (CSR), each held-out item once.

    A user who clicked an item twice in the held-out log has one held-out
    item, not two: counted twice, Recall@K and NDCG@K could never reach 1
    (a hit is counted once). Items are told apart by their key hash, so
    distinct items missing from the index (row -1) stay distinct misses.
    """
    by = np.lexsort((item_hash, user_of))
    first = np.ones(by.shape[0], np.bool_)
    first[1:] = (user_of[by][1:] != user_of[by][:-1]) | (item_hash[by][1:] != item_hash[by][:-1])
    user_of, item_rows = user_of[by[first]], item_rows[by[first]]
    order = np.argsort(user_of, kind="stable")
    counts = np.bincount(user_of, minlength=n_users)
    ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, np.ascontiguousarray(item_rows[order].astype(np.int64))


def evaluate(out_idx, rel_ptr, rel_idx, ks, n_index):
    ks = np.asarray(sorted(set(int(k) for k in ks)), np.int64)
    res = np.zeros((ks.shape[0], 4))
    rank_metrics(out_idx, rel_ptr, rel_idx, ks, n_index, res)
    return {int(k): {"hit_rate": float(r[0]), "recall": float(r[1]), "ndcg": float(r[2]),
                     "coverage": float(r[3])} for k, r in zip(ks, res)}
