"""The recall trainer: clicks -> pairs -> the FTRL update of ``ftrl.py``.

For a click (user features U, clicked item P) the trainer draws negatives
N_1..N_n from the catalog and scores the groups ``U+P`` and ``U+N_j`` with
the FM (``G(A) = lin(A) + inter(A)``; for a user/item split this is
``lin(U) + lin(I) + inter(U) + inter(I) + <V_U, V_I>``, docs/design.md, "Recall"):

- hinge:    L = sum_j max(0, margin - (G(U+P) - G(U+N_j)))
- bpr:      L = sum_j log(1 + exp(-(G(U+P) - G(U+N_j))))
- logistic: L = logloss(w0 + G(U+P), +1) + sum_j logloss(w0 + G(U+N_j), -1)

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
import threading
import time

import numpy as np
from numba import njit

from ..ftrl import (VN, W, WN, factor_from_state, init_key, refresh_v, refresh_w, update_w, v_state_after,
                    v_used)
from . import sampling
from .sampling import count_click, draw_item, keep_probability, uniform

LOSS_HINGE, LOSS_BPR, LOSS_LOGISTIC = 0, 1, 2
LOSSES = {"hinge": LOSS_HINGE, "bpr": LOSS_BPR, "logistic": LOSS_LOGISTIC}

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
def _clicked(seen_user, seen_item, uh, c):
    """(uh, c) is among the sorted (user hash, item) pairs."""
    lo = 0
    hi = seen_user.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if seen_user[mid] < uh or (seen_user[mid] == uh and seen_item[mid] < c):
            lo = mid + 1
        else:
            hi = mid
    return lo < seen_user.shape[0] and seen_user[lo] == uh and seen_item[lo] == c


@njit(cache=True, nogil=True)
def train_clicks(order, o0, o1, indptr, rows, vals, click_item, it_ptr, it_rows, it_vals, n_items,
                 max_item_len, params, row_init, hp, k, k0, k1, fvs, seed, loss, margin, n_neg,
                 hard_m, pop_t, dist, power, count, counts, tree, totals, state, mark, stats,
                 hard_w, hard_map, hard_k, use_hard, user_hash, seen_user, seen_item):
    """Train on clicks order[o0:o1] (rows of the click CSR; click_item = catalog item).

    (seen_user, seen_item), sorted, are the (user key hash, item) pairs of the
    clicks: a negative is never an item the user clicked (empty: no check).

    ``mark`` (one per thread, -1 everywhere, >= the model's rows) finds the
    rows a click touches more than once; it is left as it was found.
    """
    w_alpha, w_beta, w_l1, w_l2 = hp[0], hp[1], hp[2], hp[3]
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    stdev = hp[8]
    inv_w_alpha = 1.0 / w_alpha
    inv_v_alpha = 1.0 / v_alpha
    big = np.finfo(params.dtype).max
    no_key = np.uint64(0)
    max_u = 0
    for o in range(o0, o1):
        s = order[o]
        m = indptr[s + 1] - indptr[s]
        if m > max_u:
            max_u = m
    ng = 1 + n_neg
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
    lin_i = np.empty(ng)
    sq_i = np.empty(ng)
    G = np.empty(ng)
    cg = np.empty(ng)
    cs = np.empty(k + 1)
    n_cand = max(hard_m, n_neg)
    cand = np.empty(n_cand + 1, np.int64)
    cand_sc = np.empty(n_cand + 1)
    negs = np.empty(n_neg + 1, np.int64)
    hk = hard_k if use_hard else k
    hvu = np.empty(hk + 1)
    hvi = np.empty(hk + 1)
    is_pair = loss != LOSS_LOGISTIC
    viol_at = margin if loss == LOSS_HINGE else 0.0
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
            if kp < 1.0 and uniform(state) >= kp:
                stats[S_DROPPED] += 1
                continue
        ua = indptr[s]
        ub = indptr[s + 1]
        # --- negatives: n_neg draws, or the n_neg best-scored of hard_m draws
        nc = hard_m if hard_m > n_neg else n_neg
        got = 0
        tries = 0
        uh = user_hash[s] if seen_user.shape[0] else np.uint64(0)
        while got < nc and tries < 16 * nc:
            tries += 1
            c = draw_item(state, dist, tree, n_items)
            if c != p and not (seen_user.shape[0] and _clicked(seen_user, seen_item, uh, c)):
                cand[got] = c
                got += 1
        if got < n_neg:
            stats[S_NO_NEG] += 1
            continue
        if hard_m > n_neg:
            for f in range(hk):
                hvu[f] = 0.0
            _read_group(params, hard_w, hard_map, use_hard, rows, vals, ua, ub, hk, fvs, hp, hvu)
            for t in range(got):
                c = cand[t]
                for f in range(hk):
                    hvi[f] = 0.0
                li, sqi = _read_group(params, hard_w, hard_map, use_hard, it_rows, it_vals,
                                      it_ptr[c], it_ptr[c + 1], hk, fvs, hp, hvi)
                sc = li - 0.5 * sqi
                for f in range(hk):
                    sc += 0.5 * hvi[f] * hvi[f] + hvu[f] * hvi[f]
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
        # --- entries: user part, then the positive, then each negative
        e = 0
        for j in range(ua, ub):
            ent_row[e] = rows[j]
            ent_x[e] = vals[j]
            e += 1
        n_user = e
        for g in range(ng):
            gstart[g] = e
            it = p if g == 0 else negs[g - 1]
            for j in range(it_ptr[it], it_ptr[it + 1]):
                ent_row[e] = it_rows[j]
                ent_x[e] = it_vals[j]
                e += 1
        gstart[ng] = e
        # --- distinct rows, weights from state (once per row)
        nd = 0
        for t in range(e):
            r = ent_row[t]
            u = mark[r]
            if u < 0:
                u = nd
                mark[r] = nd
                drow[nd] = r
                nd += 1
            ent_u[t] = u
        w0 = 0.0
        if not is_pair:
            w0 = refresh_w(params, 0, k0, False, 0, no_key, stdev, w_alpha, w_beta, w_l1, w_l2, w0seen, 0)
        for u in range(nd):
            r = drow[u]
            key = init_key(row_init[r], seed) if fvs else no_key
            dw[u] = refresh_w(params, r, k1, fvs, k, key, stdev, w_alpha, w_beta, w_l1, w_l2, wseen, u)
        for u in range(nd):
            refresh_v(params, drow[u], k, dw[u], fvs, v_alpha, v_beta, v_l1, v_l2, dv, vseen, u * k)
        # --- group scores G = lin(U) + lin(I) + 0.5 (|V_U + V_I|^2 - sq(U) - sq(I))
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
            lin_i[g] = li
            sq_i[g] = sqi
            tot = 0.0
            for f in range(k):
                a = vu[f] + vi[g, f]
                tot += a * a
            G[g] = w0 + lin_u + li + 0.5 * (tot - sq_u - sqi)
            if not (math.fabs(G[g]) < np.inf):
                finite = False
        if not finite:
            stats[S_NONFINITE] += 1
            for u in range(nd):
                mark[drow[u]] = -1
            continue
        # --- loss and c_g = dL/dG_g
        stats[S_CLICKS] += 1
        any_grad = False
        for g in range(ng):
            cg[g] = 0.0
        for j in range(1, ng):
            d = G[0] - G[j]
            stats[S_PAIRS] += 1
            if d < viol_at:
                stats[S_VIOLATED] += 1
            if is_pair:
                lv, dl = pair_grad(loss, d, margin)
                stats[S_LOSS] += lv
                if dl != 0.0:
                    cg[0] += dl
                    cg[j] -= dl
                    any_grad = True
        if not is_pair:
            # logloss of (U+P, +1) and (U+N_j, -1): dL/dp = y (sigmoid(y p) - 1)
            cg[0] = _sigmoid(G[0]) - 1.0
            stats[S_LOSS] += _softplus(-G[0])
            for j in range(1, ng):
                cg[j] = _sigmoid(G[j])
                stats[S_LOSS] += _softplus(G[j])
            stats[S_SAMPLES] += ng
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
                        n, zs, o = v_state_after(n, params[r, vz + f], gr, v, vseen[0, jj], vseen[1, jj],
                                                 inv_v_alpha, big)
                        params[r, VN + f] = n
                        params[r, vz + f] = zs
                        over += o
            stats[S_OVERFLOW] += over
        for u in range(nd):
            mark[drow[u]] = -1
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
    """What fm_recall train does besides the FTRL hyper-parameters (on the Model)."""

    def __init__(self, loss="hinge", margin=1.0, neg=4, neg_dist="uniform", pop_suppress=0.0,
                 hard_neg=0, epochs=1, seed=0, k0=True, k1=True, cores=1, chunk=50000):
        self.loss = LOSSES[loss]
        self.loss_name = loss
        self.margin = float(margin)
        self.neg = int(neg)
        self.dist, self.power = sampling.DISTS[neg_dist]
        self.neg_dist = neg_dist
        self.pop_suppress = float(pop_suppress)
        self.hard_neg = int(hard_neg)
        self.epochs = int(epochs)
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


class Summary:
    def __init__(self):
        self.stats = np.zeros(N_STATS)
        self.lines = 0
        self.clicks = 0
        self.bad = 0
        self.bad_description = ""
        self.not_in_catalog = 0
        self.seconds = 0.0
        self.interrupted = False
        self.passes = 0

    @property
    def trained(self):
        return int(self.stats[S_CLICKS])

    @property
    def pairs(self):
        return int(self.stats[S_PAIRS])

    @property
    def loss(self):
        """Mean training loss: per pair (hinge, bpr) or per sample (logistic)."""
        n = self.stats[S_SAMPLES] if self.stats[S_SAMPLES] else self.stats[S_PAIRS]
        return float(self.stats[S_LOSS] / n) if n else float("nan")

    @property
    def violated(self):
        n = self.stats[S_PAIRS]
        return float(self.stats[S_VIOLATED] / n) if n else float("nan")


class Trainer:
    """Runs train_clicks over click arrays with ``cores`` threads (Hogwild)."""

    def __init__(self, model, catalog, cfg, hard=None):
        self.model = model
        self.cat = catalog
        self.cfg = cfg
        self.hard = hard
        n = catalog.n
        self.counts = np.zeros(n, np.int64)
        self.tree = np.zeros(n + 1, np.float64)
        self.totals = np.zeros(1, np.float64)
        self.marks = [np.full(0, -1, np.int32) for _ in range(cfg.cores)]
        self.stats = [np.zeros(N_STATS) for _ in range(cfg.cores)]
        self.calls = 0
        self.seen_user = np.zeros(0, np.uint64)
        self.seen_item = np.zeros(0, np.int64)

    def set_seen(self, clicks, click_item):
        """Never draw a user's own clicked items (of this log) as their negatives."""
        ok = click_item >= 0
        u, i = clicks.key_hash[ok], click_item[ok]
        order = np.lexsort((i, u))
        self.seen_user = np.ascontiguousarray(u[order])
        self.seen_item = np.ascontiguousarray(i[order].astype(np.int64))

    def set_counts(self, click_item):
        """Click counts of a whole log (multi-pass training counts before it trains)."""
        valid = click_item[click_item >= 0]
        self.counts[:] = np.bincount(valid, minlength=self.cat.n)
        self.totals[0] = float(valid.shape[0])
        if self.cfg.dist == sampling.DIST_POP:
            sampling.fenwick_build(sampling.weights_of(self.counts, self.cfg.power), self.tree)

    def stat_sum(self):
        return sum(self.stats)

    def run(self, clicks, click_item, order, count):
        """Train on clicks[order] split among the threads."""
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
        cr = self.cat.records
        n = order.shape[0]
        parts = min(cfg.cores, max(1, n // 256)) if n else 1
        bounds = [n * i // parts for i in range(parts + 1)]
        self.calls += 1
        call = self.calls
        errors = []

        def work(i):
            try:
                state = sampling.seed_state(cfg.seed, call, i)
                train_clicks(order, bounds[i], bounds[i + 1], clicks.indptr, clicks.rows, clicks.vals,
                             click_item, cr.indptr, cr.rows, cr.vals, self.cat.n, self.cat.max_len,
                             m.params, m.table.row_init, m.hp, m.k, cfg.k0, cfg.k1, m.fvs, m.seed,
                             cfg.loss, cfg.margin, cfg.neg, cfg.hard_neg, cfg.pop_suppress, cfg.dist,
                             cfg.power, count, self.counts, self.tree, self.totals, state, self.marks[i],
                             self.stats[i], hard_w, hard_map, hard_k, self.hard is not None,
                             clicks.key_hash, self.seen_user, self.seen_item)
            except BaseException as e:
                errors.append(e)

        if parts == 1:
            work(0)
        else:
            ths = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(parts)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
        if errors:
            raise errors[0]


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


def train(model, catalog, stream, cfg, opts, log, source="clicks", hard=None, stop=None, progress=None):
    """Train on the click lines of ``stream``; returns a Summary.

    One pass streams the clicks (counts as seen so far); several passes load
    them first, count the whole log, never draw a user's clicked items as their
    negatives, and reshuffle every pass.
    """
    from .. import parse
    from .records import Records, RecordReader

    summary = Summary()
    t0 = time.time()
    trainer = Trainer(model, catalog, cfg, hard)
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
        trainer.set_seen(clicks, item)
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
    summary.bad = reader.bad.count
    summary.bad_description = reader.bad.describe()
    summary.lines = reader.lines
    summary.seconds = time.time() - t0
    model.samples_seen += summary.trained
    return summary


def _item_key(recs, i):
    return recs.item_key(i).decode("utf-8", "backslashreplace")
