"""FTRL-Proximal for FM, exactly as alphaFM applies it (docs/design.md, "The FTRL-Proximal update").

State layout, one row per feature (row 0 = bias), columns::

    W | WN | WZ | VN[0..k) | VZ[0..k)

W is the weight the trainer last computed (alphaFM keeps it and -fvs needs
"was w zero last time"); WN/WZ and VN/VZ are the FTRL accumulators n and z.
v is not stored: before each use it is recomputed from (VZ, VN), as alphaFM
does whenever v_n > 0. While v_n is 0, alphaFM's v_z is 0 too and v holds
the initial (or -fvs re-drawn) random value, so that value is kept in the VZ
column. A row thus needs 3 + 2k numbers instead of alphaFM's 3 + 3k.

Every expression keeps alphaFM's order of floating-point operations, so a
float64 run reproduces alphaFM's arithmetic. This module is the one place the
update lives; training, recall and the model writers all call it.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .jit import prefetch
from .metrics import N_METRICS, add_prediction
from .mix import splitmix64

W, WN, WZ, VN = 0, 1, 2, 3

# hp vector: the FTRL hyper-parameters, in this order.
HP_NAMES = ("w_alpha", "w_beta", "w_l1", "w_l2", "v_alpha", "v_beta", "v_l1", "v_l2", "init_stdev")
HP_DEFAULTS = (0.05, 1.0, 0.1, 5.0, 0.05, 1.0, 0.1, 5.0, 0.1)
HP_INIT_STDEV = HP_NAMES.index("init_stdev")


def hp_error(name, x):
    """Why ``x`` cannot be the hyper-parameter ``name`` (None when it can).

    Every one is a finite number; alpha divides (> 0), beta, l1, l2 and
    init_stdev are magnitudes (>= 0). A NaN would pass every comparison the
    update makes and turn the model into NaNs.
    """
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "%r is not a number" % (x,)
    if not math.isfinite(x):
        return "%r is not a finite number" % x
    if name.endswith("alpha"):
        return None if x > 0 else "%r is not > 0" % x
    return None if x >= 0 else "%r is not >= 0" % x


# train_block's stats vector: the metrics' counters, then its own.
ST_SKIPPED_OVERFLOW = N_METRICS
ST_COORD_OVERFLOW = N_METRICS + 1
N_STATS = N_METRICS + 2

_SGN_EPS = 1e-10  # alphaFM's utils::sgn threshold


def n_cols(k):
    return 3 + 2 * k


@njit(inline="always")
def _sgn(x):
    return 1.0 if x > _SGN_EPS else -1.0


@njit(inline="always")
def weight_from_sqrt(z, sqrt_n, alpha, beta, l1, l2):
    """FTRL-Proximal weight from z and sqrt(n)."""
    if math.fabs(z) <= l1:
        return 0.0
    return (-1.0) * (1.0 / (l2 + (beta + sqrt_n) / alpha)) * (z - _sgn(z) * l1)


@njit(inline="always")
def weight_from_state(z, n, alpha, beta, l1, l2):
    return weight_from_sqrt(z, math.sqrt(n), alpha, beta, l1, l2)


@njit(inline="always")
def factor_from_state(z, n, w, fvs, alpha, beta, l1, l2):
    """v_f of a row from its (v_z, v_n); while v_n == 0 the VZ column holds v."""
    if n > 0.0:
        if fvs and w == 0.0:
            return 0.0
        return weight_from_state(z, n, alpha, beta, l1, l2)
    return z


@njit(inline="always")
def init_key(h, seed):
    return splitmix64(h ^ splitmix64(np.uint64(seed)))


@njit(inline="always")
def _gauss_pair(key, j):
    """Normal numbers 2j and 2j+1 of the stream ``key`` (Box-Muller)."""
    a = splitmix64(key + np.uint64(2 * j))
    b = splitmix64(key + np.uint64(2 * j + 1))
    u1 = (np.float64(a >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)
    u2 = np.float64(b >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    r = math.sqrt(-2.0 * math.log(u1))
    t = 2.0 * math.pi * u2
    return r * math.cos(t), r * math.sin(t)


@njit(cache=True, nogil=True)
def gauss(key, i):
    """Standard normal number i of the stream ``key`` (counter-based)."""
    c, s = _gauss_pair(key, i // 2)
    return c if i % 2 == 0 else s


@njit(inline="always")
def _draw_v(params, r, key, k, stdev, only_unused):
    vz = VN + k
    for j in range((k + 1) // 2):
        c, s = _gauss_pair(key, j)
        for f, g in ((2 * j, c), (2 * j + 1, s)):
            if f >= k or (only_unused and params[r, VN + f] > 0.0):
                continue
            params[r, vz + f] = stdev * g if stdev != 0.0 else 0.0


@njit(inline="always")
def init_row(params, r, h, k, seed, stdev):
    """Fresh state for row r (h: the name's init hash): zeros and v drawn from N(0, stdev).

    The draw depends only on the feature's name (its unkeyed init hash,
    table.py) and the seed, never on arrival order, threads or the table's
    hash key, so A then -im B equals A+B in one run.
    """
    for c in range(params.shape[1]):
        params[r, c] = 0.0
    _draw_v(params, r, init_key(h, seed), k, stdev, False)


@njit(inline="always")
def _f64_bits(x):
    return np.array([np.float64(x)]).view(np.uint64)[0]


@njit(inline="always")
def fm_score(w0, wloc, vloc, vals, a, m, k, vsum, vsq):
    """The raw FM score of one sample (alphaFM's order of operations).

    wloc[i] and vloc[i*k+f] hold w and v of the sample's i-th feature, whose
    value is vals[a+i]; vsum[f] is left holding s_f = sum_i v_if x_i, which
    the v gradient needs.
    """
    p = 0.0
    p += w0
    for i in range(m):
        p += wloc[i] * vals[a + i]
    for f in range(k):
        vsum[f] = 0.0
        vsq[f] = 0.0
    for i in range(m):
        x = vals[a + i]
        for f in range(k):
            d = vloc[i * k + f] * x
            vsum[f] += d
            vsq[f] += d * d
    for f in range(k):
        p += 0.5 * (vsum[f] * vsum[f] - vsq[f])
    return p


@njit(inline="always")
def sigmoid(p):
    return 1.0 / (1.0 + math.exp(-p))


@njit(inline="always")
def block_max_len(indptr, n_samples):
    max_m = 0
    for s in range(n_samples):
        m = indptr[s + 1] - indptr[s]
        if m > max_m:
            max_m = m
    return max_m


@njit(cache=True, nogil=True)
def score_block(indptr, rows, vals, n_samples, weights, k, out):
    """out[s] = raw FM score of sample s from serving weights (w, v_1..v_k).

    rows < 0 (features the model does not know) contribute nothing.
    """
    max_m = block_max_len(indptr, n_samples)
    wloc = np.empty(max_m)
    vloc = np.empty(max_m * k + 1)
    vsum = np.zeros(k + 1)
    vsq = np.zeros(k + 1)
    w0 = np.float64(weights[0, 0])
    ncols = weights.shape[1]
    line = 64 // weights.itemsize
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        if s + 1 < n_samples:
            for i in range(indptr[s + 1], indptr[s + 2]):
                r = rows[i]
                if r >= 0:
                    for c in range(0, ncols, line):
                        prefetch(weights, r, c)
        for i in range(m):
            r = rows[a + i]
            if r < 0:
                wloc[i] = 0.0
                for f in range(k):
                    vloc[i * k + f] = 0.0
            else:
                wloc[i] = weights[r, 0]
                for f in range(k):
                    vloc[i * k + f] = weights[r, 1 + f]
        out[s] = fm_score(w0, wloc, vloc, vals, a, m, k, vsum, vsq)


# --- the steps of one FTRL-FM update, shared by every trainer -------------
#
# A trainer (train_block here, the pairwise recall trainer) calls, per
# sample: refresh_w and refresh_v on each of the sample's rows (weights from
# state), scores with the returned values, then update_w per row and, per
# factor, v_used and v_state_after with the gradients. The *_seen values
# carry n and sqrt(n) from the refresh to the update, so sqrt(n) is computed
# once unless n moved in between (a feature repeated in the sample, or
# another thread's update): then it is recomputed, and the result is what
# alphaFM computes either way.
#
# The per-factor steps take and return scalars only: numba handles an array
# passed to an inlined function with reference counting that costs, in a
# loop over factors, more than the update itself.


@njit(inline="always")
def refresh_w(params, r, on, fvs, k, key, stdev, w_alpha, w_beta, w_l1, w_l2, seen, i):
    """alphaFM's "update w via FTRL" for row r; returns w.

    ``on`` is k1 (k0 for the bias). seen[0, i], seen[1, i] get n, sqrt(n).
    ``key`` is the row's init key (only used by -fvs re-draws).
    """
    n = params[r, WN]
    sq = math.sqrt(n)
    seen[0, i] = n
    seen[1, i] = sq
    if on:
        z = params[r, WZ]
        if math.fabs(z) <= w_l1:
            params[r, W] = 0.0
        else:
            if fvs and n > 0.0 and params[r, W] == 0.0:
                # w leaves 0: alphaFM draws v afresh (it only shows where v_n
                # is still 0); keyed by the state reached, so runs agree.
                _draw_v(params, r, splitmix64(key ^ _f64_bits(n)), k, stdev, True)
            params[r, W] = weight_from_sqrt(z, sq, w_alpha, w_beta, w_l1, w_l2)
    return params[r, W]


@njit(inline="always")
def refresh_v(params, r, k, w, fvs, v_alpha, v_beta, v_l1, v_l2, vloc, vseen, j0):
    """v of row r into vloc[j0:j0+k] (and n, sqrt(n) into vseen[:, j0+f])."""
    vz = VN + k
    for f in range(k):
        n = params[r, VN + f]
        z = params[r, vz + f]
        j = j0 + f
        vseen[0, j] = n
        if n > 0.0:
            sq = math.sqrt(n)
            vseen[1, j] = sq
            if fvs and w == 0.0:
                vloc[j] = 0.0
            else:
                vloc[j] = weight_from_sqrt(z, sq, v_alpha, v_beta, v_l1, v_l2)
        else:
            # v_n == 0: the VZ column holds v itself (see the module doc)
            vseen[1, j] = 0.0
            vloc[j] = z


@njit(inline="always")
def _step(n, z, g, v, n_seen, sq_seen, inv_alpha):
    n_new = n + g * g
    sq = sq_seen if n == n_seen else math.sqrt(n)
    sigma = inv_alpha * (math.sqrt(n_new) - sq)
    return n_new, z + (g - sigma * v)


@njit(inline="always")
def update_w(params, r, g, w, n_seen, sq_seen, inv_alpha, big):
    """FTRL state update of w for gradient g; returns 1 if it would overflow."""
    n_new, z_new = _step(params[r, WN], params[r, WZ], g, w, n_seen, sq_seen, inv_alpha)
    if n_new <= big and math.fabs(z_new) <= big:
        params[r, WZ] = z_new
        params[r, WN] = n_new
        return 0
    return 1


@njit(inline="always")
def v_used(n, v_start, w, fvs):
    """The v alphaFM's update reads for a factor whose state now has ``n``:
    the value from the refresh, unless -fvs zeroed it after an earlier
    update of this row in the sample while w is 0."""
    if fvs and w == 0.0 and n > 0.0:
        return 0.0
    return v_start


@njit(inline="always")
def v_state_after(n, zs, g, v, n_seen, sq_seen, inv_alpha, big):
    """New (VN, VZ) column values of a factor after gradient g, and 1 if the
    update would overflow (then the state is kept as it was).

    ``zs`` is the VZ column as stored: z, or v itself while n is 0 (alphaFM's
    z is 0 there), which a zero gradient leaves in place.
    """
    z = zs if n > 0.0 else 0.0
    n_new, z_new = _step(n, z, g, v, n_seen, sq_seen, inv_alpha)
    if not (n_new <= big and math.fabs(z_new) <= big):
        return n, zs, 1
    if n_new > 0.0:
        return n_new, z_new, 0
    return n, zs, 0


def rows_of(params, hot, n_hot, r):
    """The array holding row r's state in train_block: ``hot`` (a thread's private
    copy) for r < n_hot, else ``params``. Compiled per type: with hot = None it
    is params itself, so -core 1's kernel is the one without private rows."""
    return hot if hot is not None and r < n_hot else params


@overload(rows_of)
def _rows_of_typed(params, hot, n_hot, r):
    if isinstance(hot, types.NoneType):
        return lambda params, hot, n_hot, r: params
    return lambda params, hot, n_hot, r: hot if r < n_hot else params


@njit(cache=True, nogil=True)
def train_block(indptr, rows, vals, ys, n_samples, params, row_init, hp, k,
                k0, k1, fvs, seed, stats, hist, hot, n_hot):
    """Progressive-validate then update on samples 0..n_samples-1 (CSR rows).

    ``row_init``: each row's init hash (FeatureTable.row_init), which keys
    the -fvs re-draws. Rows r < ``n_hot`` are read and written in ``hot``
    (a thread's private copy of the hottest rows, see ``hot_copy``), the
    others in ``params``; with hot = None every row is in ``params``.

    For each sample, in alphaFM's order: weights from state, predict, the
    gradient multiplier, then the w and v states. ``stats`` and ``hist``
    (see metrics.add_prediction) accumulate the progressive metrics of the
    score each sample gets before its own update.
    """
    w_alpha, w_beta, w_l1, w_l2 = hp[0], hp[1], hp[2], hp[3]
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    stdev = hp[HP_INIT_STDEV]
    inv_w_alpha = 1.0 / w_alpha
    inv_v_alpha = 1.0 / v_alpha
    big = np.finfo(params.dtype).max
    max_m = block_max_len(indptr, n_samples)
    wloc = np.empty(max_m + 1)
    wseen = np.empty((2, max_m + 1))
    vloc = np.empty(max_m * k + 1)
    vseen = np.empty((2, max_m * k + 1))
    vsum = np.zeros(k + 1)
    vsq = np.zeros(k + 1)
    no_key = np.uint64(0)
    ncols = params.shape[1]
    line = 64 // params.itemsize
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        y = ys[s]
        if s + 1 < n_samples:
            # the next sample's rows load while this one computes
            for i in range(indptr[s + 1], indptr[s + 2]):
                r = rows[i]
                if hot is None or r >= n_hot:
                    for c in range(0, ncols, line):
                        prefetch(params, r, c)
        # weights from state (the bias's n, sqrt(n) go to slot m)
        w0 = refresh_w(rows_of(params, hot, n_hot, 0), 0, k0, False, 0, no_key, stdev, w_alpha, w_beta, w_l1, w_l2,
                       wseen, m)
        for i in range(m):
            r = rows[a + i]
            key = init_key(row_init[r], seed) if fvs else no_key
            wloc[i] = refresh_w(rows_of(params, hot, n_hot, r), r, k1, fvs, k, key, stdev, w_alpha, w_beta, w_l1, w_l2,
                                wseen, i)
        for i in range(m):
            r = rows[a + i]
            refresh_v(rows_of(params, hot, n_hot, r), r, k, wloc[i], fvs, v_alpha, v_beta, v_l1, v_l2, vloc, vseen,
                      i * k)
        p = fm_score(w0, wloc, vloc, vals, a, m, k, vsum, vsq)
        if not (math.fabs(p) < np.inf):
            stats[ST_SKIPPED_OVERFLOW] += 1
            continue
        add_prediction(stats, hist, y, sigmoid(p))
        mult = y * (1.0 / (1.0 + math.exp(-p * y)) - 1.0)
        over = 0
        if k0:
            over += update_w(rows_of(params, hot, n_hot, 0), 0, mult, w0, wseen[0, m], wseen[1, m], inv_w_alpha, big)
        if k1:
            for i in range(m):
                r = rows[a + i]
                over += update_w(rows_of(params, hot, n_hot, r), r, mult * vals[a + i], wloc[i],
                                 wseen[0, i], wseen[1, i], inv_w_alpha, big)
        vz = VN + k
        for i in range(m):
            r = rows[a + i]
            x = vals[a + i]
            w = wloc[i]
            st = rows_of(params, hot, n_hot, r)
            for f in range(k):
                j = i * k + f
                n = st[r, VN + f]
                v = v_used(n, vloc[j], w, fvs)
                g = mult * (vsum[f] * x - v * x * x)
                n, zs, o = v_state_after(n, st[r, vz + f], g, v, vseen[0, j], vseen[1, j],
                                         inv_v_alpha, big)
                st[r, VN + f] = n
                st[r, vz + f] = zs
                over += o
        stats[ST_COORD_OVERFLOW] += over
    return 0


# --- Hogwild's hottest rows, private to each thread -------------------------
#
# With several trainer threads, the rows every block touches (the bias, a
# field's few common values) are written by all of them, sample after
# sample: each write takes the cache line from the other cores (bench/README.md,
# "Hogwild across cache domains": 4-10% more CPU at -core 2 on the bench VM,
# up to 20-30% in its bad placements). So each thread trains rows
# r < n_hot in a copy of its own (hot_copy, when a block starts) and adds
# what it changed to the shared rows when the block ends (hot_merge, one
# thread at a time): FTRL's n and z are sums of per-sample terms, so the
# change of each is the sum of the thread's terms, computed on a state at
# most one block behind the other threads' (as Hogwild's reads may be).
# Row ids follow first appearance, so the low ones are the frequent ones.


@njit(cache=True, nogil=True)
def hot_copy(params, hot, base, n_hot):
    """hot[:n_hot] = base[:n_hot] = params[:n_hot] (rows' FTRL state, every column)."""
    for r in range(n_hot):
        for c in range(params.shape[1]):
            x = params[r, c]
            hot[r, c] = x
            base[r, c] = x


@njit(inline="always")
def _true_z(n, zs):
    # the VZ column holds v, not z, while n == 0 (module doc); z is 0 there
    return zs if n > 0.0 else 0.0


@njit(inline="always")
def _plus_change(shared, now, was):
    # a coordinate no other thread moved takes the thread's value as it is,
    # so one thread alone gets plain training's numbers, bit for bit
    if shared == was:
        return now
    return shared + (now - was)


@njit(cache=True, nogil=True)
def hot_merge(params, hot, base, n_hot, k):
    """Add what a thread's block changed in its copies (hot - base) to params' rows 0..n_hot-1.

    n and z of w and of each factor become params + (hot - base), z as
    FTRL's z (0 while the VZ column holds v); where params still equals
    base, no other thread moved it and it becomes hot as it is. W (the w
    last computed) is taken from hot where the thread changed it. A sum
    that would overflow the dtype is not applied; returns how many were not
    (the trainer's overflow count).
    """
    big = np.finfo(params.dtype).max
    vz = VN + k
    over = 0
    for r in range(n_hot):
        if hot[r, W] != base[r, W]:
            params[r, W] = hot[r, W]
        if hot[r, WN] != base[r, WN] or hot[r, WZ] != base[r, WZ]:
            n = _plus_change(params[r, WN], hot[r, WN], base[r, WN])
            z = _plus_change(params[r, WZ], hot[r, WZ], base[r, WZ])
            if n <= big and math.fabs(z) <= big:
                params[r, WN] = n
                params[r, WZ] = z
            else:
                over += 1
        for f in range(k):
            hn = hot[r, VN + f]
            bn = base[r, VN + f]
            if hn == bn and hot[r, vz + f] == base[r, vz + f]:
                continue
            sn = params[r, VN + f]
            n = _plus_change(sn, hn, bn)
            z = _plus_change(_true_z(sn, params[r, vz + f]), _true_z(hn, hot[r, vz + f]),
                             _true_z(bn, base[r, vz + f]))
            if not (n <= big and math.fabs(z) <= big):
                over += 1
            elif n > 0.0:
                params[r, VN + f] = n
                params[r, vz + f] = z
    return over


@njit(cache=True, nogil=True)
def serving_weights(params, n_rows, k, hp, fvs, out):
    """out[r] = (w, v_1..v_k) as the trainer would use them next."""
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    vz = VN + k
    for r in range(n_rows):
        w = params[r, W]
        out[r, 0] = w
        for f in range(k):
            out[r, 1 + f] = factor_from_state(params[r, vz + f], params[r, VN + f], w,
                                              fvs, v_alpha, v_beta, v_l1, v_l2)


@njit(cache=True, nogil=True)
def state_from_file(weights, state, n_rows, k, params):
    """Internal rows from a model file's (w, v) and (w_n, w_z, v_n, v_z) columns."""
    vz = VN + k
    for r in range(n_rows):
        params[r, W] = weights[r, 0]
        params[r, WN] = state[r, 0]
        params[r, WZ] = state[r, 1]
        for f in range(k):
            n = state[r, 2 + f]
            params[r, VN + f] = n
            # v_n == 0: alphaFM's v_z is 0 there and v is the drawn value
            params[r, vz + f] = state[r, 2 + k + f] if n > 0.0 else weights[r, 1 + f]


@njit(cache=True, nogil=True)
def file_state(params, n_rows, k, out):
    """out[r] = (w_n, w_z, v_n_1..k, v_z_1..k) in alphaFM's column order."""
    vz = VN + k
    for r in range(n_rows):
        out[r, 0] = params[r, WN]
        out[r, 1] = params[r, WZ]
        for f in range(k):
            n = params[r, VN + f]
            out[r, 2 + f] = n
            out[r, 2 + k + f] = params[r, vz + f] if n > 0.0 else 0.0


@njit(cache=True, nogil=True)
def score_state_block(indptr, rows, vals, ys, n_samples, params, hp, k, fvs, stats, hist):
    """Score samples 0..n_samples-1 from the training state, without updating it.

    The score is fm_predict's on the model as it would be written now: w
    as the trainer last computed it (the W column), v from (VZ, VN) as
    ``serving_weights`` gives it. ``stats`` and ``hist`` accumulate the
    metrics (a held-out sample's, see train.py); ``params`` is only read.
    """
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    max_m = block_max_len(indptr, n_samples)
    wloc = np.empty(max_m + 1)
    vloc = np.empty(max_m * k + 1)
    vsum = np.zeros(k + 1)
    vsq = np.zeros(k + 1)
    vz = VN + k
    w0 = np.float64(params[0, W])
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        for i in range(m):
            r = rows[a + i]
            w = params[r, W]
            wloc[i] = w
            for f in range(k):
                vloc[i * k + f] = factor_from_state(params[r, vz + f], params[r, VN + f], w, fvs,
                                                    v_alpha, v_beta, v_l1, v_l2)
        p = fm_score(w0, wloc, vloc, vals, a, m, k, vsum, vsq)
        if not (math.fabs(p) < np.inf):
            continue
        add_prediction(stats, hist, ys[s], sigmoid(p))


@njit(cache=True, nogil=True)
def init_rows(params, row_init, r0, r1, k, seed, stdev):
    """Fresh state (init_row) for rows r0..r1-1 of another params array over the same table
    (the grid's models: the table made the rows and initialised the first model's)."""
    for r in range(r0, r1):
        init_row(params, r, row_init[r], k, seed, stdev)
