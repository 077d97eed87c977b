"""The recall trainer: clicks -> pairs -> the FTRL update of ``ftrl.py``.

For a click (user features U, clicked item P) the trainer draws negatives
N_1..N_n from the catalog and scores the groups ``U+P`` and ``U+N_j`` with
the FM (``G(A) = lin(A) + inter(A)``; for a user/item split this is
``lin(U) + lin(I) + inter(U) + inter(I) + <V_U, V_I>``, docs/design.md, "Recall"):

- hinge:    L = sum_j max(0, margin - (G(U+P) - G(U+N_j)))
- bpr:      L = sum_j log(1 + exp(-(G(U+P) - G(U+N_j))))
- logistic: L = logloss(w0 + G(U+P), +1) + sum_j logloss(w0 + G(U+N_j), -1)
- warp:     L = log(floor((n_items - 1) / t)) * max(0, margin - (G(U+P) - G(U+N)))
            with N the first of at most max_sampled draws that violates the
            margin and t the number of draws it took (LightFM's WARP: t
            estimates the positive's rank; a click without a violator trains
            nothing)

Negatives are never the user's own clicked items (sampling.SeenPairs).
Candidates are scored (warp, --hard-neg) against the catalog's embeddings
(embed_items), which the threads keep fresh as they train.

Every loss is a sum over groups g of a function of G_g, so with
``c_g = dL/dG_g`` the gradient of a feature row is the sum over its
occurrences of ``c_g x`` (w) and ``c_g (x S_g - v x^2)`` (v), S_g being
group g's ``sum v x``: exactly train_block's per-sample gradient, weighted.
A row that occurs several times in one click (the user part is in every
group; a genre shared by the positive and a negative) gets ONE update with
its summed gradient: for a pairwise loss the user rows' w gradients and the
v x^2 terms cancel, and a feature shared by both items moves only through
its interactions, as the loss says. The update itself is ``ftrl.refresh_w``,
``refresh_v``, ``update_w``, ``v_used``, ``v_state_after`` (the code fm_train
runs), so the
model is an ordinary streamfm model: fm_dump, fm_predict and -im work on it.
Pairwise losses leave the bias and the user rows' w untouched (their
gradients are 0); logistic trains them.

Threads update rows without locks (Hogwild), as fm_train does.
"""

import math
import time

import numpy as np
from numba import njit

from ..badlines import RunSummary
from ..ftrl import (VN, W, WN, factor_from_state, init_key, refresh_v, refresh_w, update_w, v_state_after,
                    v_used)
from . import sampling
from .defaults import TRAIN
from .sampling import count_click, keep_probability, next_uniform

LOSS_HINGE, LOSS_BPR, LOSS_LOGISTIC, LOSS_WARP = 0, 1, 2, 3
LOSSES = {"hinge": LOSS_HINGE, "bpr": LOSS_BPR, "logistic": LOSS_LOGISTIC, "warp": LOSS_WARP}
WARP_MAX_WEIGHT = 10.0  # LightFM's MAX_LOSS

DEFAULTS = TRAIN

# stats vector
S_CLICKS, S_PAIRS, S_LOSS, S_VIOLATED, S_DROPPED, S_OVERFLOW, S_NONFINITE, S_NO_NEG, S_SAMPLES = range(9)
N_STATS = 9


@njit(inline="always")
def _softplus(t):
    """log(1 + exp(t)) without overflow."""
    if t > 0.0:
        return t + math.log1p(math.exp(-t))
    return math.log1p(math.exp(t))


@njit(inline="always")
def _sigmoid(t):
    if t >= 0.0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


@njit(inline="always")
def pair_grad(loss, d, margin):
    """(loss, dL/dd) of one pair with d = G(U+P) - G(U+N)."""
    if loss == LOSS_HINGE:
        if d < margin:
            return margin - d, -1.0
        return 0.0, 0.0
    # bpr: -log sigmoid(d)
    return _softplus(-d), -_sigmoid(-d)


@njit(inline="always")
def _read_group(params, hard_w, hard_map, use_hard, rows, vals, a, b, k, fvs, hp, vec):
    """lin and sum (v x)^2 of entries a..b, adding sum v x into vec (read-only).

    From the training state (the current model), or from a fixed model's
    (w, v) through hard_map (our row -> its row, -1 unknown).
    """
    lin = 0.0
    sq = 0.0
    for j in range(a, b):
        r = rows[j]
        x = vals[j]
        if use_hard:
            rr = hard_map[r]
            if rr < 0:
                continue
            lin += hard_w[rr, 0] * x
            for f in range(k):
                d = hard_w[rr, 1 + f] * x
                vec[f] += d
                sq += d * d
        else:
            w = params[r, W]
            lin += w * x
            for f in range(k):
                v = factor_from_state(params[r, VN + k + f], params[r, VN + f], w, fvs,
                                      hp[4], hp[5], hp[6], hp[7])
                d = v * x
                vec[f] += d
                sq += d * d
    return lin, sq


@njit(inline="always")
def _own_click(seen, seen_old, uh, c):
    """(user hash uh, item c) is among the user's own clicks (sampling.SeenPairs)."""
    h = sampling.pair_key(uh, c)
    return sampling.pair_in(seen, h) or sampling.pair_in(seen_old, h)


@njit(inline="always")
def warp_weight(tries, n_items):
    """WARP's rank weight of a positive whose first violator came at draw ``tries``.

    The positive's rank among the n_items is estimated as floor((n_items - 1) /
    tries); the weight is log of that (at least log 1 = 0), capped at
    WARP_MAX_WEIGHT, as LightFM's fit_warp computes it.
    """
    r = math.floor((n_items - 1) / tries)
    wt = math.log(r) if r > 1.0 else 0.0
    return wt if wt < WARP_MAX_WEIGHT else WARP_MAX_WEIGHT


@njit(inline="always")
def _add_rows(ent_row, e0, e1, ent_u, mark, drow, nd, params, row_init, k, k1, fvs, seed, stdev, hp, dw, dv,
              wseen, vseen):
    """Distinct rows of entries e0..e1 (mark[r] = their index); new ones get w, v from state.

    Returns the new number of distinct rows.
    """
    no_key = np.uint64(0)
    for t in range(e0, e1):
        r = ent_row[t]
        u = mark[r]
        if u < 0:
            u = nd
            mark[r] = nd
            drow[nd] = r
            nd += 1
            key = init_key(row_init[r], seed) if fvs else no_key
            dw[u] = refresh_w(params, r, k1, fvs, k, key, stdev, hp[0], hp[1], hp[2], hp[3], wseen, u)
            refresh_v(params, r, k, dw[u], fvs, hp[4], hp[5], hp[6], hp[7], dv, vseen, u * k)
        ent_u[t] = u
    return nd


@njit(inline="always")
def _embed_item(params, it_ptr, it_rows, it_vals, i, k, fvs, hp, out):
    """out[i] = [V_I, lin(I) + inter(I)] of catalog item i from the training state."""
    lin = 0.0
    sq = 0.0
    for f in range(k):
        out[i, f] = 0.0
    for j in range(it_ptr[i], it_ptr[i + 1]):
        r = it_rows[j]
        x = it_vals[j]
        w = params[r, W]
        lin += w * x
        for f in range(k):
            d = factor_from_state(params[r, VN + k + f], params[r, VN + f], w, fvs, hp[4], hp[5], hp[6],
                                  hp[7]) * x
            out[i, f] += d
            sq += d * d
    tot = 0.0
    for f in range(k):
        tot += out[i, f] * out[i, f]
    out[i, k] = lin + 0.5 * (tot - sq)


@njit(cache=True, nogil=True)
def embed_items(params, it_ptr, it_rows, it_vals, i0, i1, k, fvs, hp, out):
    """out[i] = [V_I, lin(I) + inter(I)] of catalog items i0..i1 from the training state.

    The score of (user U, item I) less the user's own part is
    <V_U, out[i, :k]> + out[i, k]. The trainer scores negative candidates
    with these rows; while it trains it keeps them fresh itself (train_clicks).
    """
    for i in range(i0, i1):
        _embed_item(params, it_ptr, it_rows, it_vals, i, k, fvs, hp, out)


@njit(cache=True, nogil=True)
def train_clicks(order, o0, o1, indptr, rows, vals, click_item, it_ptr, it_rows, it_vals, n_items,
                 max_item_len, params, row_init, hp, k, k0, k1, fvs, seed, loss, margin, n_neg,
                 hard_m, max_sampled, pop_t, dist, power, count, counts, tree, totals, state, mark, stats,
                 hard_w, hard_map, hard_k, use_hard, user_hash, seen, seen_old, icache, roll, trace):
    """Train on clicks order[o0:o1] (rows of the click CSR; click_item = catalog item).

    A negative is never the clicked item nor an item whose (user key hash,
    item) pair is in ``seen`` or ``seen_old`` (sampling.SeenPairs; tables of
    one slot: no check). ``icache`` (embed_items) scores candidates for warp
    and for --hard-neg without a fixed model.

    warp: draws until the first candidate c with s(c) > s(P) - margin (by
    icache), at most max_sampled draws (own clicks count as draws, as in
    LightFM); then one hinge pair (P, c) weighted by warp_weight(draws).

    ``roll`` = [first item, end, next item, rate, credit]: the thread keeps
    icache rows first..end fresh, re-embedding ``rate`` of them per click in
    turn (no barrier between threads; a row read while another thread
    rewrites it only blurs one candidate's score).

    ``mark`` (one per thread, -1 everywhere, >= the model's rows) finds the
    rows a click touches more than once; it is left as it was found.
    ``trace`` (tests; no rows: off): trace[o] gets click o's negatives.
    ``state`` (the thread's generator) and ``stats`` are read once and
    written once, so threads share no cache line while they run.
    """
    stdev = hp[8]
    inv_w_alpha = 1.0 / hp[0]
    inv_v_alpha = 1.0 / hp[4]
    big = np.finfo(params.dtype).max
    no_key = np.uint64(0)
    x_rng = state[0]
    st = np.zeros(N_STATS)
    max_u = 0
    for o in range(o0, o1):
        s = order[o]
        m = indptr[s + 1] - indptr[s]
        if m > max_u:
            max_u = m
    is_warp = loss == LOSS_WARP
    n_pick = 1 if is_warp else n_neg
    ng = 1 + n_pick
    cap = max_u + ng * max_item_len + 1
    ent_row = np.empty(cap, np.int64)
    ent_x = np.empty(cap)
    ent_u = np.empty(cap, np.int64)
    gstart = np.empty(ng + 1, np.int64)
    drow = np.empty(cap, np.int64)
    dw = np.empty(cap)
    wseen = np.empty((2, cap))
    dv = np.empty(cap * k + 1)
    vseen = np.empty((2, cap * k + 1))
    gw = np.empty(cap)
    gv = np.empty(cap * k + 1)
    w0seen = np.empty((2, 1))
    vu = np.empty(k + 1)
    vi = np.empty((ng, k + 1))
    G = np.empty(ng)
    cg = np.empty(ng)
    cs = np.empty(k + 1)
    n_cand = max(hard_m, n_neg)
    cand = np.empty(n_cand + 1, np.int64)
    cand_sc = np.empty(n_cand + 1)
    negs = np.empty(ng, np.int64)
    hk = hard_k if use_hard else k
    hvu = np.empty(hk + 1)
    hvi = np.empty(hk + 1)
    is_pair = loss != LOSS_LOGISTIC
    viol_at = margin if (loss == LOSS_HINGE or is_warp) else 0.0
    check_seen = seen.shape[0] > 1 or seen_old.shape[0] > 1
    tracing = trace.shape[0] > 0
    r_lo = np.int64(roll[0])
    r_hi = np.int64(roll[1])
    r_next = np.int64(roll[2])
    r_rate = roll[3]
    r_credit = roll[4]
    rolling = r_hi > r_lo and r_rate > 0.0
    for o in range(o0, o1):
        s = order[o]
        p = click_item[s]
        if p < 0:
            continue
        if count:
            totals[0] += 1.0
            count_click(counts, tree, p, power if dist == sampling.DIST_POP else 0.0)
        if pop_t > 0.0:
            kp = keep_probability(counts[p], totals[0], pop_t)
            x_rng, u01 = next_uniform(x_rng)
            if kp < 1.0 and u01 >= kp:
                st[S_DROPPED] += 1
                continue
        if rolling:
            r_credit += r_rate
            while r_credit >= 1.0:
                r_credit -= 1.0
                _embed_item(params, it_ptr, it_rows, it_vals, r_next, k, fvs, hp, icache)
                r_next += 1
                if r_next >= r_hi:
                    r_next = r_lo
        ua = indptr[s]
        ub = indptr[s + 1]
        uh = user_hash[s]
        # --- the user part: distinct rows, weights from state, V_U
        e = 0
        for j in range(ua, ub):
            ent_row[e] = rows[j]
            ent_x[e] = vals[j]
            e += 1
        n_user = e
        nd = _add_rows(ent_row, 0, n_user, ent_u, mark, drow, 0, params, row_init, k, k1, fvs, seed, stdev,
                       hp, dw, dv, wseen, vseen)
        lin_u = 0.0
        sq_u = 0.0
        for f in range(k):
            vu[f] = 0.0
        for t in range(n_user):
            u = ent_u[t]
            x = ent_x[t]
            lin_u += dw[u] * x
            for f in range(k):
                d = dv[u * k + f] * x
                vu[f] += d
                sq_u += d * d
        # --- negatives: warp draws until its first violator; the others draw nc
        # candidates (n_neg, or hard_m to keep the n_neg best-scored)
        wt = 1.0
        nc = 1 if is_warp else (hard_m if hard_m > n_neg else n_neg)
        limit = max_sampled if is_warp else 16 * nc
        sp = 0.0
        if is_warp:
            sp = icache[p, k]
            for f in range(k):
                sp += vu[f] * icache[p, f]
        got = 0
        tries = 0
        while tries < limit:
            tries += 1
            x_rng, u01 = next_uniform(x_rng)
            if dist == sampling.DIST_POP and tree[0] > 0.0:
                c = sampling.fenwick_find(tree, u01 * tree[0])
            else:
                c = np.int64(u01 * n_items)
                if c >= n_items:
                    c = n_items - 1
            if c == p:
                continue
            if is_warp:
                sc = icache[c, k]
                for f in range(k):
                    sc += vu[f] * icache[c, f]
                st[S_PAIRS] += 1
                # a violator; own clicks are checked only here, as LightFM does (most draws are not)
                if sc > sp - margin and not (check_seen and _own_click(seen, seen_old, uh, c)):
                    negs[0] = c
                    got = 1
                    break
            elif not (check_seen and _own_click(seen, seen_old, uh, c)):
                cand[got] = c
                got += 1
                if got == nc:
                    break
        if got < (1 if is_warp else n_neg):
            if is_warp:
                st[S_CLICKS] += 1   # ranked well enough: nothing to train
            else:
                st[S_NO_NEG] += 1
            for u in range(nd):
                mark[drow[u]] = -1
            continue
        if is_warp:
            st[S_VIOLATED] += 1
            wt = warp_weight(tries, n_items)
        else:
            if hard_m > n_neg:
                if use_hard:
                    for f in range(hk):
                        hvu[f] = 0.0
                    _read_group(params, hard_w, hard_map, use_hard, rows, vals, ua, ub, hk, fvs, hp, hvu)
                for t in range(got):
                    c = cand[t]
                    if use_hard:
                        for f in range(hk):
                            hvi[f] = 0.0
                        li, sqi = _read_group(params, hard_w, hard_map, use_hard, it_rows, it_vals,
                                              it_ptr[c], it_ptr[c + 1], hk, fvs, hp, hvi)
                        sc = li - 0.5 * sqi
                        for f in range(hk):
                            sc += 0.5 * hvi[f] * hvi[f] + hvu[f] * hvi[f]
                    else:
                        sc = icache[c, k]
                        for f in range(k):
                            sc += vu[f] * icache[c, f]
                    cand_sc[t] = sc
                # the n_neg highest scores to the front (partial selection sort)
                for a in range(n_neg):
                    best = a
                    for b in range(a + 1, got):
                        if cand_sc[b] > cand_sc[best]:
                            best = b
                    cs_t = cand_sc[a]
                    cand_sc[a] = cand_sc[best]
                    cand_sc[best] = cs_t
                    ct = cand[a]
                    cand[a] = cand[best]
                    cand[best] = ct
            for j in range(n_neg):
                negs[j] = cand[j]
        if tracing:
            for j in range(n_pick):
                trace[o, j] = negs[j]
        # --- the items: the positive, then each negative
        for g in range(ng):
            gstart[g] = e
            it = p if g == 0 else negs[g - 1]
            for j in range(it_ptr[it], it_ptr[it + 1]):
                ent_row[e] = it_rows[j]
                ent_x[e] = it_vals[j]
                e += 1
        gstart[ng] = e
        nd = _add_rows(ent_row, n_user, e, ent_u, mark, drow, nd, params, row_init, k, k1, fvs, seed, stdev,
                       hp, dw, dv, wseen, vseen)
        w0 = 0.0
        if not is_pair:
            w0 = refresh_w(params, 0, k0, False, 0, no_key, stdev, hp[0], hp[1], hp[2], hp[3], w0seen, 0)
        # --- group scores G = lin(U) + lin(I) + 0.5 (|V_U + V_I|^2 - sq(U) - sq(I))
        finite = True
        for g in range(ng):
            li = 0.0
            sqi = 0.0
            for f in range(k):
                vi[g, f] = 0.0
            for t in range(gstart[g], gstart[g + 1]):
                u = ent_u[t]
                x = ent_x[t]
                li += dw[u] * x
                for f in range(k):
                    d = dv[u * k + f] * x
                    vi[g, f] += d
                    sqi += d * d
            tot = 0.0
            for f in range(k):
                a = vu[f] + vi[g, f]
                tot += a * a
            G[g] = w0 + lin_u + li + 0.5 * (tot - sq_u - sqi)
            if not (math.fabs(G[g]) < np.inf):
                finite = False
        if not finite:
            st[S_NONFINITE] += 1
            for u in range(nd):
                mark[drow[u]] = -1
            continue
        # --- loss and c_g = dL/dG_g
        st[S_CLICKS] += 1
        any_grad = False
        for g in range(ng):
            cg[g] = 0.0
        for j in range(1, ng):
            d = G[0] - G[j]
            if not is_warp:
                st[S_PAIRS] += 1
                if d < viol_at:
                    st[S_VIOLATED] += 1
            if is_pair:
                lv, dl = pair_grad(LOSS_HINGE if is_warp else loss, d, margin)
                st[S_LOSS] += wt * lv
                if dl != 0.0:
                    cg[0] += wt * dl
                    cg[j] -= wt * dl
                    any_grad = wt != 0.0
        if not is_pair:
            # logloss of (U+P, +1) and (U+N_j, -1): dL/dp = y (sigmoid(y p) - 1)
            cg[0] = _sigmoid(G[0]) - 1.0
            st[S_LOSS] += _softplus(-G[0])
            for j in range(1, ng):
                cg[j] = _sigmoid(G[j])
                st[S_LOSS] += _softplus(G[j])
            st[S_SAMPLES] += ng
            any_grad = True
        if any_grad:
            # --- gradients, summed per distinct row
            csum = 0.0
            for f in range(k):
                cs[f] = 0.0
            for g in range(ng):
                csum += cg[g]
                for f in range(k):
                    cs[f] += cg[g] * (vu[f] + vi[g, f])
            for u in range(nd):
                gw[u] = 0.0
                for f in range(k):
                    gv[u * k + f] = 0.0
            for t in range(n_user):
                u = ent_u[t]
                x = ent_x[t]
                gw[u] += csum * x
                for f in range(k):
                    gv[u * k + f] += x * cs[f] - csum * dv[u * k + f] * x * x
            for g in range(ng):
                c = cg[g]
                if c == 0.0:
                    continue
                for t in range(gstart[g], gstart[g + 1]):
                    u = ent_u[t]
                    x = ent_x[t]
                    gw[u] += c * x
                    for f in range(k):
                        gv[u * k + f] += c * (x * (vu[f] + vi[g, f]) - dv[u * k + f] * x * x)
            # --- the FTRL updates (fm_train's code), one per distinct row
            over = 0
            if not is_pair and k0:
                over += update_w(params, 0, csum, w0, w0seen[0, 0], w0seen[1, 0], inv_w_alpha, big)
            vz = VN + k
            for u in range(nd):
                r = drow[u]
                if k1 and gw[u] != 0.0:
                    over += update_w(params, r, gw[u], dw[u], wseen[0, u], wseen[1, u], inv_w_alpha, big)
                for f in range(k):
                    jj = u * k + f
                    gr = gv[jj]
                    if gr != 0.0:
                        n = params[r, VN + f]
                        v = v_used(n, dv[jj], dw[u], fvs)
                        n, zs, o2 = v_state_after(n, params[r, vz + f], gr, v, vseen[0, jj], vseen[1, jj],
                                                  inv_v_alpha, big)
                        params[r, VN + f] = n
                        params[r, vz + f] = zs
                        over += o2
            st[S_OVERFLOW] += over
        for u in range(nd):
            mark[drow[u]] = -1
    state[0] = x_rng
    roll[2] = r_next
    roll[4] = r_credit
    for j in range(N_STATS):
        stats[j] += st[j]
    return 0


@njit(cache=True, nogil=True)
def trained_rows(params, n_rows, k, keep):
    """keep[r] = the row ever got an update (w_n > 0 or some v_n > 0); the bias always."""
    for r in range(n_rows):
        t = params[r, WN] > 0.0
        for f in range(k):
            if params[r, VN + f] > 0.0:
                t = True
        keep[r] = t or r == 0


# ----------------------------------------------------------------------------
# Driver


class Config:
    """What fm_recall train does besides the FTRL hyper-parameters (on the Model).

    The defaults are fm_recall train's (see DEFAULTS and the README's
    evidence): every field is one command-line option.
    """

    def __init__(self, loss=None, margin=None, neg=None, neg_dist=None, pop_suppress=None, hard_neg=None,
                 epochs=None, seed=0, k0=True, k1=True, cores=1, chunk=50000, max_sampled=None,
                 refresh=None, seen_capacity=None):
        d = DEFAULTS
        loss = d["loss"] if loss is None else loss
        self.loss = LOSSES[loss]
        self.loss_name = loss
        self.margin = float(d["margin"] if margin is None else margin)
        self.neg = int(d["neg"] if neg is None else neg)
        neg_dist = d["neg_dist"] if neg_dist is None else neg_dist
        self.dist, self.power = sampling.DISTS[neg_dist]
        self.neg_dist = neg_dist
        self.pop_suppress = float(d["pop_suppress"] if pop_suppress is None else pop_suppress)
        if hard_neg is None:
            # the default ratio of draws to negatives; warp finds its own hard negatives
            hard_neg = 0 if loss == "warp" else max(d["hard_neg"], d["hard_neg"] // d["neg"] * self.neg)
        self.hard_neg = int(hard_neg)
        self.max_sampled = int(d["max_sampled"] if max_sampled is None else max_sampled)
        self.epochs = int(d["epochs"] if epochs is None else epochs)
        self.refresh = int(d["refresh"] if refresh is None else refresh)
        self.seen_capacity = int(d["seen_capacity"] if seen_capacity is None else seen_capacity)
        self.seed = int(seed)
        self.k0 = bool(k0)
        self.k1 = bool(k1)
        self.cores = max(1, int(cores))
        self.chunk = int(chunk)


class Catalog:
    """The items of --items: their features (rows of the model being trained) and keys.

    A key given twice keeps its first line; the later ones are dropped (counted
    in ``duplicates``), so they are neither items nor ever drawn as negatives.
    """

    def __init__(self, records):
        from .keys import KeyIndex

        keys = KeyIndex(records.key_hash)
        self.duplicates = keys.duplicates
        if keys.duplicates:
            records = records.take(np.flatnonzero(keys.first_of == np.arange(records.n)))
            keys = KeyIndex(records.key_hash)
        self.records = records
        self.keys = keys
        self.max_len = max(records.max_len(), 1)

    @property
    def n(self):
        return self.records.n


class HardModel:
    """A fixed model (--hard-neg-model) scoring candidates: (w, v) and a row map."""

    def __init__(self, serving):
        self.serving = serving
        self.weights = serving.weights
        self.k = serving.k
        self.map = np.full(0, -1, np.int64)
        self.filled = 0

    def extend(self, model):
        n = model.n_rows
        if self.map.shape[0] < n:
            m = np.full(max(n, 2 * self.map.shape[0]), -1, np.int64)
            m[: self.filled] = self.map[: self.filled]
            self.map = m
        if n > self.filled:
            # the other model's table has its own hash key: look our names up by name
            arena, name_off = model.table.names_view()
            self.serving.table.lookup_names(arena, name_off, self.filled, n, self.map)
            self.filled = n


class Summary(RunSummary):
    def __init__(self):
        RunSummary.__init__(self)
        self.stats = np.zeros(N_STATS)
        self.clicks = 0
        self.not_in_catalog = 0
        self.interrupted = False
        self.dropped = 0
        self.passes = 0
        self.seen_pairs = 0
        self.seen_rotations = 0

    @property
    def trained(self):
        return int(self.stats[S_CLICKS])

    @property
    def pairs(self):
        return int(self.stats[S_PAIRS])

    @property
    def loss(self):
        """Mean training loss: per pair (hinge, bpr, warp: weighted) or per sample (logistic)."""
        n = self.stats[S_SAMPLES] if self.stats[S_SAMPLES] else self.stats[S_PAIRS]
        return float(self.stats[S_LOSS] / n) if n else float("nan")

    @property
    def violated(self):
        n = self.stats[S_PAIRS]
        return float(self.stats[S_VIOLATED] / n) if n else float("nan")


_NO_PAIRS = np.zeros(1, np.uint64)   # a one-slot empty table: no own-click check
_NO_ROLL = np.zeros(5)               # no icache rows to keep fresh


class Trainer:
    """Runs train_clicks over click arrays with ``cores`` threads (Hogwild).

    ``seen`` (a sampling.SeenPairs, or None) holds the clicks whose items are
    never drawn as the clicking user's negatives. With warp or --hard-neg
    the catalog's embeddings (embed_items) score the candidates: computed
    once, then kept fresh by the threads as they train, each re-embedding
    its share of the catalog once per ``cfg.refresh / cores`` of its clicks
    (so every item about once per ``cfg.refresh`` clicks).
    """

    def __init__(self, model, catalog, cfg, hard=None, seen=None, trace=None):
        self.model = model
        self.cat = catalog
        self.cfg = cfg
        self.hard = hard
        self.seen = seen
        n = catalog.n
        self.counts = np.zeros(n, np.int64)
        self.tree = np.zeros(n + 1, np.float64)
        self.totals = np.zeros(1, np.float64)
        self.marks = [np.full(0, -1, np.int32) for _ in range(cfg.cores)]
        self.stats = [np.zeros(N_STATS) for _ in range(cfg.cores)]
        # candidates scored by the model being trained (not by a --hard-neg-model)
        self.use_cache = cfg.loss == LOSS_WARP or (cfg.hard_neg > cfg.neg and hard is None)
        self.icache = np.zeros((n if self.use_cache else 1, model.k + 1))
        self.calls = 0
        self.pool = None
        self.trace = trace
        self.cached = False
        self.rolls = None

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def set_counts(self, click_item):
        """Click counts of a whole log (multi-pass training counts before it trains)."""
        valid = click_item[click_item >= 0]
        self.counts[:] = np.bincount(valid, minlength=self.cat.n)
        self.totals[0] = float(valid.shape[0])
        if self.cfg.dist == sampling.DIST_POP:
            sampling.fenwick_build(sampling.weights_of(self.counts, self.cfg.power), self.tree)

    def stat_sum(self):
        return sum(self.stats)

    def _parallel(self, fn, parts):
        if parts == 1:
            fn(0)
            return
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.cfg.cores)
        for f in [self.pool.submit(fn, i) for i in range(parts)]:
            f.result()

    def _rolls(self, parts):
        """Per thread: its share of the catalog's icache rows and how many to re-embed a click."""
        n = self.cat.n
        if self.rolls is None or len(self.rolls) != parts:
            b = [n * i // parts for i in range(parts + 1)]
            per_thread = max(1.0, self.cfg.refresh / parts)
            self.rolls = [np.array([b[i], b[i + 1], b[i], (b[i + 1] - b[i]) / per_thread, 0.0])
                          for i in range(parts)]
        return self.rolls

    def refresh_cache(self):
        """Every catalog item's icache row from the model now (on the threads)."""
        m = self.model
        cr = self.cat.records
        n = self.cat.n
        parts = min(self.cfg.cores, max(1, n // 4096))
        b = [n * i // parts for i in range(parts + 1)]
        self._parallel(lambda i: embed_items(m.params, cr.indptr, cr.rows, cr.vals, b[i], b[i + 1], m.k, m.fvs,
                                             m.hp, self.icache), parts)
        self.cached = True

    def run(self, clicks, click_item, order, count):
        """Train on clicks[order], split among the threads (disjoint slices, Hogwild)."""
        m = self.model
        cfg = self.cfg
        cap = m.params.shape[0]
        for i, mk in enumerate(self.marks):
            if mk.shape[0] < cap:
                self.marks[i] = np.full(cap, -1, np.int32)
        if self.hard is not None:
            self.hard.extend(m)
            hard_w, hard_map, hard_k = self.hard.weights, self.hard.map, self.hard.k
        else:
            hard_w, hard_map, hard_k = np.zeros((1, 1)), np.zeros(1, np.int64), 0
        seen, seen_old = (self.seen.tab, self.seen.old) if self.seen is not None else (_NO_PAIRS, _NO_PAIRS)
        cr = self.cat.records
        n = order.shape[0]
        trace = np.full((n if self.trace is not None else 0, 1 if cfg.loss == LOSS_WARP else cfg.neg), -1, np.int64)
        if self.trace is not None:
            self.trace.append((clicks.key_hash[order], click_item[order], trace))
        parts = min(cfg.cores, max(1, n // 256)) if n else 1
        bounds = [n * i // parts for i in range(parts + 1)]
        if self.use_cache and not self.cached:
            self.refresh_cache()
        rolls = self._rolls(parts) if self.use_cache else [_NO_ROLL] * parts
        self.calls += 1
        call = self.calls

        def work(i):
            state = sampling.seed_state(cfg.seed, call, i)
            train_clicks(order, bounds[i], bounds[i + 1], clicks.indptr, clicks.rows, clicks.vals,
                         click_item, cr.indptr, cr.rows, cr.vals, self.cat.n, self.cat.max_len,
                         m.params, m.table.row_init, m.hp, m.k, cfg.k0, cfg.k1, m.fvs, m.seed,
                         cfg.loss, cfg.margin, cfg.neg, cfg.hard_neg, cfg.max_sampled, cfg.pop_suppress,
                         cfg.dist, cfg.power, count, self.counts, self.tree, self.totals, state,
                         self.marks[i], self.stats[i], hard_w, hard_map, hard_k, self.hard is not None,
                         clicks.key_hash, seen, seen_old, self.icache, rolls[i], trace)

        self._parallel(work, parts)


def map_clicks(clicks, catalog):
    """Catalog position of each click's item (-1: not in the catalog)."""
    return catalog.keys.lookup(clicks.item_hash)


def drop_untrained(model):
    """The model as ModelArrays without rows that never got an update.

    A catalog feature no click or negative ever reached still holds its
    random initial v; written out it would add noise to every embedding
    it is part of. Leaving it out makes it unknown (it contributes nothing,
    like a cold-start feature); -im re-creates it with the same initial
    value (the draw depends only on its name and the seed).
    """
    from ..model import ModelArrays

    n = model.n_rows
    keep = np.zeros(n, np.bool_)
    trained_rows(model.params, n, model.k, keep)
    weights = np.empty((n, 1 + model.k), model.dtype)
    state = np.empty((n, 2 + 2 * model.k), model.dtype)
    for r0, r1, w, s in model.chunks():
        weights[r0:r1] = w
        state[r0:r1] = s
    arena, name_off = model.names()
    arrays = ModelArrays(arena, name_off, weights, state, model.meta())
    return arrays.select(keep), int(n - keep.sum())


def train(model, catalog, stream, cfg, opts, log, source="clicks", hard=None, stop=None, progress=None,
          trace=None):
    """Train on the click lines of ``stream``; returns a Summary.

    One pass streams the clicks (counts as seen so far; a user's clicks seen
    so far, up to the last ``cfg.seen_capacity`` distinct pairs, are never
    their negatives); several passes load them first, count the whole log,
    never draw any item a user clicked anywhere in it as their negative, and
    reshuffle every pass. ``trace`` (tests): a list that gets, per call of
    the kernel, (user key hashes, items, negatives drawn) of its clicks.
    """
    summary = Summary()
    t0 = time.time()
    seen = sampling.SeenPairs(cfg.seen_capacity if cfg.epochs <= 1 else None)
    trainer = Trainer(model, catalog, cfg, hard, seen, trace)
    try:
        _train(trainer, summary, model, catalog, stream, cfg, opts, log, source, stop, progress)
    finally:
        trainer.close()
    summary.seconds = time.time() - t0
    summary.seen_pairs = seen.count + (int((seen.old != 0).sum()) if seen.rotations else 0)
    summary.seen_rotations = seen.rotations
    model.samples_seen += summary.trained
    return summary


def _train(trainer, summary, model, catalog, stream, cfg, opts, log, source, stop, progress):
    from .. import parse
    from .records import Records, RecordReader

    def reading(r):
        summary.lines = r.lines
        summary.bad = r.bad.count
        if progress is not None and cfg.epochs > 1:
            progress(summary, 0, model.n_rows - 1)

    reader = RecordReader(stream, parse.CLICK, opts, log, source, model=model, progress=reading,
                          stop=stop)
    missing_shown = [0]

    def note_missing(recs, item):
        miss = np.flatnonzero(item < 0)
        summary.not_in_catalog += len(miss)
        for i in miss[: max(0, opts.max_errors_shown - missing_shown[0])]:
            if not opts.quiet:
                log("%s line %d: clicked item %r is not in --items; click skipped"
                    % (source, recs.line[i], _item_key(recs, i)))
            missing_shown[0] += 1

    def tick(pass_no):
        summary.stats = trainer.stat_sum()
        summary.bad = reader.bad.count
        summary.lines = reader.lines
        if progress is not None:
            progress(summary, pass_no, model.n_rows - 1)

    rng = np.random.default_rng(cfg.seed)
    if cfg.epochs <= 1:
        for recs in reader:
            if stop is not None and stop.is_set():
                break
            item = map_clicks(recs, catalog)
            note_missing(recs, item)
            summary.clicks += int((item >= 0).sum())
            order = np.arange(recs.n, dtype=np.int64)
            trainer.seen.add(recs.key_hash, item)
            trainer.run(recs, item, order, True)
            tick(1)
        summary.passes = 1
    else:
        parts = []
        for recs in reader:
            if stop is not None and stop.is_set():
                break
            parts.append(recs)
            summary.lines = reader.lines
        clicks = Records.concat(parts, click=True)
        del parts
        item = map_clicks(clicks, catalog)
        note_missing(clicks, item)
        valid = np.flatnonzero(item >= 0).astype(np.int64)
        summary.clicks = int(valid.shape[0])
        trainer.set_counts(item)
        trainer.seen.add(clicks.key_hash, item)
        for e in range(cfg.epochs):
            if stop is not None and stop.is_set():
                break
            order = rng.permutation(valid)
            for c0 in range(0, order.shape[0], cfg.chunk):
                if stop is not None and stop.is_set():
                    break
                trainer.run(clicks, item, order[c0:c0 + cfg.chunk], False)
                tick(e + 1)
            summary.passes = e + 1
    summary.stats = trainer.stat_sum()
    summary.take_bad(reader.bad)
    summary.lines = reader.lines


def _item_key(recs, i):
    return recs.item_key(i).decode("utf-8", "backslashreplace")
