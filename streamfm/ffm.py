"""Field-aware FM (FFM): its fields and its FTRL-Proximal kernels (docs/design.md, "Field-aware FM").

    y = w0 + sum_i w_i x_i + sum_{i<j} <v_{i,f(j)}, v_{j,f(i)}> x_i x_j

A feature's field f(i) is the part of its name before the first field
separator after its first byte (default ``=``: ``age_b=3`` is in field
``age_b``, ``=a=b`` in ``=a``); a name without one is a field of its own, the
whole name (so a field is never empty). Fields get
dense ids in order of first appearance, up to a capacity F (``max_fields``).

A feature's row is an FM row (``ftrl.py``'s layout) with K = F * k factors:
``W | WN | WZ | VN[0..K) | VZ[0..K)``, its factors for field f at columns
f * k .. f * k + k - 1. Every coordinate takes exactly ftrl.py's scalar FTRL
step (``ftrl.weight_from_sqrt``, ``ftrl.v_state_after``, ``ftrl.refresh_w``,
``ftrl.update_w``), and a new row's factors are ftrl.py's draws (number
f * k + d of the name's stream), so files, -im and the serving weights of an
FFM are those of an FM with K factors plus the field list. The kernels here
are separate from the FM ones: the FM hot loops carry no FFM branch.

Per sample the kernels gather the sample's distinct fields (L of them) and
each term's factors for those fields only (m * L * k numbers), then loop
over the m (m - 1) / 2 pairs: O(m^2 k) per sample. ``-fvs`` is not offered.
"""

import math

import numpy as np
from numba import njit

from . import ftrl
from .metrics import add_prediction
from .table import same_bytes

DEFAULT_SEP = "="
DEFAULT_MAX_FIELDS = 64


def field_of(name, sep):
    """The field of a feature name (bytes): the bytes before the first ``sep`` after
    its first byte (the kernels' ``_field_end``); the whole name when there is none.

    >>> field_of(b"age_b=3", b"="), field_of(b"price", b"="), field_of(b"=x", b"="), field_of(b"=a=b", b"=")
    (b'age_b', b'price', b'=x', b'=a')
    """
    i = name.find(sep, 1)
    return name[:i] if i > 0 else name


def check_sep(sep):
    """The separator as bytes, or ValueError: 1 to 8 bytes, no white space or control byte
    (it must be able to occur inside a feature name)."""
    b = sep.encode("utf-8", "surrogateescape") if isinstance(sep, str) else bytes(sep)
    if not 1 <= len(b) <= 8 or any(c <= 32 or c == 127 for c in b):
        raise ValueError("the field separator must be 1 to 8 bytes without white space or control "
                         "bytes, not %r" % (sep,))
    return b


class Fields:
    """The field list of an FFM: names in id order, the separator, the capacity.

    ``arena``/``off`` hold the names for the kernels; they are replaced (never
    changed in place) when fields are added, under the model's insert lock.
    """

    def __init__(self, sep=DEFAULT_SEP, capacity=DEFAULT_MAX_FIELDS, names=()):
        self.sep = check_sep(sep)
        self.capacity = int(capacity)
        self.names = []
        self.index = {}
        self.sep_arr = np.frombuffer(self.sep, dtype=np.uint8).copy()
        self._arrays()
        names = list(names)
        if len(names) > self.capacity:  # say how many there are, not where adding stopped
            raise ValueError("%d fields, more than the capacity %d" % (len(names), self.capacity))
        for n in names:
            self.add(bytes(n))

    def add(self, name):
        if name in self.index:
            raise ValueError("field %r appears twice" % name)
        if len(self.names) >= self.capacity:
            raise ValueError("%d fields, more than the capacity %d" % (len(self.names) + 1, self.capacity))
        self.index[name] = len(self.names)
        self.names.append(name)
        self._arrays()

    def _arrays(self):
        off = np.zeros(len(self.names) + 1, dtype=np.int64)
        np.cumsum([len(n) for n in self.names], out=off[1:])
        self.off = off
        self.arena = np.frombuffer(b"".join(self.names) or b"\0", dtype=np.uint8).copy()

    def __len__(self):
        return len(self.names)

    def copy(self):
        return Fields(self.sep, self.capacity, self.names)


# ----------------------------------------------------------------------------
# fields of names


@njit(inline="always")
def _field_end(buf, s, e, sep):
    """End of the field part of the name buf[s:e]: the first ``sep`` after its first byte, else e."""
    ls = sep.shape[0]
    for p in range(s + 1, e - ls + 1):
        ok = True
        for t in range(ls):
            if buf[p + t] != sep[t]:
                ok = False
                break
        if ok:
            return p
    return e


@njit(inline="always")
def _find_field(arena, off, n, buf, s, e):
    for f in range(n):
        if same_bytes(arena, off[f], off[f + 1], buf, s, e):
            return f
    return -1


@njit(cache=True, nogil=True)
def screen_block(buf, indptr, rows, name_start, name_len, n_samples, sep, arena, off, n_fields, capacity,
                 tok_field, new_start, new_len, bad_sample, bad_pos):
    """The field of every feature the table does not know yet (rows[j] < 0) into tok_field[j];
    fields not in the list yet get ids n_fields, n_fields + 1, ... in order of appearance
    (their name spans in new_start/new_len). A sample that would need a field beyond
    ``capacity`` is marked bad_sample[s] = 1 (bad_pos[s]: the byte where its name starts) and
    the fields it introduced are dropped. Returns the number of new fields.
    """
    nn = 0
    for s in range(n_samples):
        nn0 = nn
        bad_sample[s] = 0
        for j in range(indptr[s], indptr[s + 1]):
            if rows[j] >= 0:
                continue
            a = name_start[j]
            e = _field_end(buf, a, a + name_len[j], sep)
            f = _find_field(arena, off, n_fields, buf, a, e)
            if f < 0:
                for t in range(nn):
                    if same_bytes(buf, new_start[t], new_start[t] + new_len[t], buf, a, e):
                        f = n_fields + t
                        break
            if f < 0:
                if n_fields + nn >= capacity:
                    bad_sample[s] = 1
                    bad_pos[s] = a
                    nn = nn0
                    break
                new_start[nn] = a
                new_len[nn] = e - a
                f = n_fields + nn
                nn += 1
            tok_field[j] = f
    return nn


@njit(cache=True, nogil=True)
def fields_of_rows(arena, name_off, r0, r1, sep, f_arena, f_off, n_fields, out):
    """out[r] = the field id of row r's name for r in r0..r1-1 (-1: not in the list);
    returns the first row whose field is missing, or -1."""
    for r in range(r0, r1):
        a = name_off[r]
        e = _field_end(arena, a, name_off[r + 1], sep)
        f = _find_field(f_arena, f_off, n_fields, arena, a, e)
        out[r] = f
        if f < 0:
            return r
    return -1


# ----------------------------------------------------------------------------
# the score and the update


@njit(inline="always")
def _local_fields(rows, row_field, a, m, lf, fl):
    """lf[i] = local index of term i's field; fl[l] = global field of local l; returns L."""
    L = 0
    for i in range(m):
        f = row_field[rows[a + i]]
        li = -1
        for t in range(L):
            if fl[t] == f:
                li = t
                break
        if li < 0:
            fl[L] = f
            li = L
            L += 1
        lf[i] = li
    return L


@njit(inline="always")
def ffm_score(w0, wloc, vloc, xs, lf, m, L, k):
    """The raw FFM score: p = w0; p += w_i x_i for each i; then for each pair i < j
    (in order) p += t * (x_i x_j) with t = sum_d v_{i,f(j),d} v_{j,f(i),d} (d in order).
    vloc[(i * L + l) * k + d] holds term i's factor d for local field l."""
    p = 0.0
    p += w0
    for i in range(m):
        p += wloc[i] * xs[i]
    for i in range(m):
        bi = i * L
        for j in range(i + 1, m):
            oi = (bi + lf[j]) * k
            oj = (j * L + lf[i]) * k
            t = 0.0
            for d in range(k):
                t += vloc[oi + d] * vloc[oj + d]
            p += t * (xs[i] * xs[j])
    return p


@njit(cache=True, nogil=True)
def train_block(indptr, rows, vals, ys, n_samples, params, row_field, hp, k, n_fields_cap, k0, k1, stats, hist):
    """ftrl.train_block for an FFM: per sample, weights from state, the score, the
    gradient multiplier, then the w and v states (docs/design.md, "Field-aware FM").

    The gradient of v_{i,f,d} is mult * sum_j v_{j,f(i),d} x_i x_j over the partners j
    (j != i) of field f, summed pair by pair in pair order; only the coordinates
    (i, f) with a partner of field f are updated.
    """
    w_alpha, w_beta, w_l1, w_l2 = hp[0], hp[1], hp[2], hp[3]
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    stdev = hp[ftrl.HP_INIT_STDEV]
    inv_w_alpha = 1.0 / w_alpha
    inv_v_alpha = 1.0 / v_alpha
    big = np.finfo(params.dtype).max
    kk = n_fields_cap * k
    vz0 = ftrl.VN + kk
    max_m = ftrl.block_max_len(indptr, n_samples)
    max_l = min(max_m, n_fields_cap)
    wloc = np.empty(max_m + 1)
    wseen = np.empty((2, max_m + 1))
    xs = np.empty(max_m + 1)
    lf = np.empty(max_m + 1, np.int64)
    fl = np.empty(max_m + 1, np.int64)
    cnt = np.zeros(max_m + 1, np.int64)
    nv = max_m * max_l * k + 1
    vloc = np.empty(nv)
    gloc = np.empty(nv)
    vseen = np.empty((2, nv))
    no_key = np.uint64(0)
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        y = ys[s]
        for i in range(m):
            xs[i] = vals[a + i]
        L = _local_fields(rows, row_field, a, m, lf, fl)
        for t in range(L):
            cnt[t] = 0
        for i in range(m):
            cnt[lf[i]] += 1
        # weights from state
        w0 = ftrl.refresh_w(params, 0, k0, False, 0, no_key, stdev, w_alpha, w_beta, w_l1, w_l2, wseen, m)
        for i in range(m):
            wloc[i] = ftrl.refresh_w(params, rows[a + i], k1, False, 0, no_key, stdev, w_alpha, w_beta,
                                     w_l1, w_l2, wseen, i)
        for i in range(m):
            r = rows[a + i]
            for li in range(L):
                c0 = fl[li] * k
                o = (i * L + li) * k
                for d in range(k):
                    n = params[r, ftrl.VN + c0 + d]
                    z = params[r, vz0 + c0 + d]
                    vseen[0, o + d] = n
                    if n > 0.0:
                        sq = math.sqrt(n)
                        vseen[1, o + d] = sq
                        vloc[o + d] = ftrl.weight_from_sqrt(z, sq, v_alpha, v_beta, v_l1, v_l2)
                    else:
                        vseen[1, o + d] = 0.0
                        vloc[o + d] = z
        p = ffm_score(w0, wloc, vloc, xs, lf, m, L, k)
        if not (math.fabs(p) < np.inf):
            stats[ftrl.ST_SKIPPED_OVERFLOW] += 1
            continue
        add_prediction(stats, hist, y, ftrl.sigmoid(p))
        mult = y * (1.0 / (1.0 + math.exp(-p * y)) - 1.0)
        over = 0
        if k0:
            over += ftrl.update_w(params, 0, mult, w0, wseen[0, m], wseen[1, m], inv_w_alpha, big)
        if k1:
            for i in range(m):
                over += ftrl.update_w(params, rows[a + i], mult * xs[i], wloc[i],
                                      wseen[0, i], wseen[1, i], inv_w_alpha, big)
        for q in range(m * L * k):
            gloc[q] = 0.0
        for i in range(m):
            for j in range(i + 1, m):
                xx = xs[i] * xs[j]
                oi = (i * L + lf[j]) * k
                oj = (j * L + lf[i]) * k
                for d in range(k):
                    gloc[oi + d] += vloc[oj + d] * xx
                    gloc[oj + d] += vloc[oi + d] * xx
        for i in range(m):
            r = rows[a + i]
            for li in range(L):
                if cnt[li] - (1 if lf[i] == li else 0) <= 0:
                    continue  # no partner of this field: no gradient
                c0 = fl[li] * k
                o = (i * L + li) * k
                for d in range(k):
                    col = c0 + d
                    g = mult * gloc[o + d]
                    n, zs, ov = ftrl.v_state_after(params[r, ftrl.VN + col], params[r, vz0 + col], g,
                                                   vloc[o + d], vseen[0, o + d], vseen[1, o + d],
                                                   inv_v_alpha, big)
                    params[r, ftrl.VN + col] = n
                    params[r, vz0 + col] = zs
                    over += ov
        stats[ftrl.ST_COORD_OVERFLOW] += over
    return 0


@njit(inline="always")
def _gather_serving(indptr, rows, vals, s, weights, row_field, k, known, xs, wloc, lf, fl, vloc):
    """Known terms of sample s (rows >= 0) into known/xs/wloc, their factors into vloc;
    returns (m, L)."""
    a = indptr[s]
    m = 0
    for j in range(a, indptr[s + 1]):
        if rows[j] >= 0:
            known[m] = rows[j]
            xs[m] = vals[j]
            wloc[m] = weights[rows[j], 0]
            m += 1
    L = _local_fields(known, row_field, 0, m, lf, fl)
    for i in range(m):
        r = known[i]
        for li in range(L):
            c = 1 + fl[li] * k
            o = (i * L + li) * k
            for d in range(k):
                vloc[o + d] = weights[r, c + d]
    return m, L


@njit(cache=True, nogil=True)
def score_block(indptr, rows, vals, n_samples, weights, row_field, k, n_fields_cap, out):
    """out[s] = raw FFM score of sample s from serving weights (w, v_{f,d} at 1 + f * k + d).
    rows < 0 (features the model does not know) contribute nothing."""
    max_m = ftrl.block_max_len(indptr, n_samples)
    max_l = min(max_m, n_fields_cap)
    known = np.empty(max_m + 1, np.int64)
    xs = np.empty(max_m + 1)
    wloc = np.empty(max_m + 1)
    lf = np.empty(max_m + 1, np.int64)
    fl = np.empty(max_m + 1, np.int64)
    vloc = np.empty(max_m * max_l * k + 1)
    w0 = np.float64(weights[0, 0])
    for s in range(n_samples):
        m, L = _gather_serving(indptr, rows, vals, s, weights, row_field, k, known, xs, wloc, lf, fl, vloc)
        out[s] = ffm_score(w0, wloc, vloc, xs, lf, m, L, k)


@njit(cache=True, nogil=True)
def phi_block(indptr, rows, vals, n_samples, weights, row_field, k, n_fields_cap, phi):
    """phi[j] (CSR order) = w_i x_i + 1/2 sum_{j != i} <v_{i,f(j)}, v_{j,f(i)}> x_i x_j;
    unknown rows get 0. w0 + sum phi = the raw score (each pair split evenly)."""
    max_m = ftrl.block_max_len(indptr, n_samples)
    max_l = min(max_m, n_fields_cap)
    known = np.empty(max_m + 1, np.int64)
    xs = np.empty(max_m + 1)
    wloc = np.empty(max_m + 1)
    lf = np.empty(max_m + 1, np.int64)
    fl = np.empty(max_m + 1, np.int64)
    inter = np.empty(max_m + 1)
    vloc = np.empty(max_m * max_l * k + 1)
    for s in range(n_samples):
        m, L = _gather_serving(indptr, rows, vals, s, weights, row_field, k, known, xs, wloc, lf, fl, vloc)
        for i in range(m):
            inter[i] = 0.0
        for i in range(m):
            for j in range(i + 1, m):
                oi = (i * L + lf[j]) * k
                oj = (j * L + lf[i]) * k
                t = 0.0
                for d in range(k):
                    t += vloc[oi + d] * vloc[oj + d]
                h = 0.5 * (t * (xs[i] * xs[j]))
                inter[i] += h
                inter[j] += h
        i = 0
        for j in range(indptr[s], indptr[s + 1]):
            if rows[j] < 0:
                phi[j] = 0.0
            else:
                phi[j] = wloc[i] * xs[i] + inter[i]
                i += 1
    return 0


@njit(cache=True, nogil=True)
def score_state_block(indptr, rows, vals, ys, n_samples, params, row_field, hp, k, n_fields_cap, stats, hist):
    """ftrl.score_state_block for an FFM: held-out samples scored from the training state
    (w as last computed, v from its state), nothing written."""
    v_alpha, v_beta, v_l1, v_l2 = hp[4], hp[5], hp[6], hp[7]
    kk = n_fields_cap * k
    vz0 = ftrl.VN + kk
    max_m = ftrl.block_max_len(indptr, n_samples)
    max_l = min(max_m, n_fields_cap)
    xs = np.empty(max_m + 1)
    wloc = np.empty(max_m + 1)
    lf = np.empty(max_m + 1, np.int64)
    fl = np.empty(max_m + 1, np.int64)
    vloc = np.empty(max_m * max_l * k + 1)
    w0 = np.float64(params[0, ftrl.W])
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        for i in range(m):
            xs[i] = vals[a + i]
            wloc[i] = params[rows[a + i], ftrl.W]
        L = _local_fields(rows, row_field, a, m, lf, fl)
        for i in range(m):
            r = rows[a + i]
            for li in range(L):
                c0 = fl[li] * k
                o = (i * L + li) * k
                for d in range(k):
                    vloc[o + d] = ftrl.factor_from_state(params[r, vz0 + c0 + d], params[r, ftrl.VN + c0 + d],
                                                         wloc[i], False, v_alpha, v_beta, v_l1, v_l2)
        p = ffm_score(w0, wloc, vloc, xs, lf, m, L, k)
        if not (math.fabs(p) < np.inf):
            continue
        add_prediction(stats, hist, ys[s], ftrl.sigmoid(p))
