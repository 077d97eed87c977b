"""Why a score: exact per-feature attribution of FM scores (docs/design.md, "Explanations").

    phi_i = w_i x_i + 0.5 x_i <v_i, s - v_i x_i>,   s = sum_j v_j x_j

sums to score - w0 exactly: each pairwise term <v_i, v_j> x_i x_j is split
evenly between its two features. Computed in O(kn) per sample.
"""

import numpy as np
from numba import njit

from . import floatfmt, ftrl
from .predict import write_label_prob
from .table import hash_bytes


@njit(cache=True, nogil=True)
def phi_block(indptr, rows, vals, n_samples, weights, k, phi):
    """phi[j] = attribution of feature j (CSR order); unknown rows get 0."""
    s = np.zeros(k + 1)
    for smp in range(n_samples):
        a = indptr[smp]
        m = indptr[smp + 1] - a
        for f in range(k):
            s[f] = 0.0
        for i in range(m):
            r = rows[a + i]
            if r >= 0:
                x = vals[a + i]
                for f in range(k):
                    s[f] += weights[r, 1 + f] * x
        for i in range(m):
            r = rows[a + i]
            if r < 0:
                phi[a + i] = 0.0
                continue
            x = vals[a + i]
            inter = 0.0
            for f in range(k):
                v = weights[r, 1 + f]
                inter += v * (s[f] - v * x)
            phi[a + i] = weights[r, 0] * x + 0.5 * x * inter
    return 0


def block_phi(model, parsed, phi):
    """phi[j] = the attribution of feature j of a parsed block under ``model``
    (a ServingModel: an FM's phi_block, an FFM's own)."""
    if getattr(model, "kind", "fm") == "ffm":
        model.phi(parsed, phi)
    else:
        phi_block(parsed.indptr, parsed.rows, parsed.vals, parsed.n_samples, model.weights, model.k, phi)


@njit(cache=True, nogil=True)
def format_explained(ys, raw, indptr, phi, src, name_start, name_len, n_samples, topn, out):
    """'label prob<TAB>name:phi ...' lines with each sample's top-N |phi|."""
    pos = 0
    max_m = ftrl.block_max_len(indptr, n_samples)
    order = np.empty(max_m + 1, dtype=np.int64)
    for smp in range(n_samples):
        pos = write_label_prob(ys[smp], raw[smp], out, pos)
        out[pos] = 9
        pos += 1
        a = indptr[smp]
        m = indptr[smp + 1] - a
        # partial selection sort: the top N by |phi|, ties in input order
        for i in range(m):
            order[i] = a + i
        t = min(topn, m)
        for i in range(t):
            best = i
            for j in range(i + 1, m):
                if abs(phi[order[j]]) > abs(phi[order[best]]):
                    best = j
            tmp = order[i]
            order[i] = order[best]
            order[best] = tmp
            if i:
                out[pos] = 32
                pos += 1
            j = order[i]
            for c in range(name_len[j]):
                out[pos] = src[name_start[j] + c]
                pos += 1
            out[pos] = 58
            pos += 1
            pos = floatfmt.write_f64(phi[j], out, pos)
        out[pos] = 10
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def accumulate_importance(rows, phi, indptr, n_samples, group, clock, last, cur, seen, hit, count, sum_phi,
                          sum_abs):
    """Add a block's phis to per-group sums: a group (a feature, or a field with
    ``--by-field``) counts once per sample it takes part in, with its share of
    that sample's score, the sum of its occurrences' phis (a feature written
    twice, or a field with several values, is one share, not two).

    ``group[row]``: the row's group (< 0: not counted, e.g. the bias).
    ``clock[0]``: samples seen so far by this accumulator; ``last[g]``: the
    clock of the last sample group g took part in; ``cur``: its share so far
    in that sample; ``seen``: scratch of at least a sample's terms; ``hit[row]``
    is set for every row that occurs.
    """
    t = clock[0]
    for i in range(n_samples):
        m = 0
        for j in range(indptr[i], indptr[i + 1]):
            r = rows[j]
            if r < 0:
                continue
            hit[r] = True
            g = group[r]
            if g < 0:
                continue
            if last[g] != t:
                last[g] = t
                cur[g] = 0.0
                seen[m] = g
                m += 1
            cur[g] += phi[j]
        for q in range(m):
            g = seen[q]
            count[g] += 1
            sum_phi[g] += cur[g]
            sum_abs[g] += abs(cur[g])
        t += 1
    clock[0] = t


@njit(cache=True, nogil=True)
def field_prefix_hash(arena, name_off, n_rows, sep, key):
    """Hash under ``key`` of each row's name up to its first ``sep`` byte (the whole name if none)."""
    out = np.empty(n_rows, dtype=np.uint64)
    for r in range(n_rows):
        a = name_off[r]
        b = name_off[r + 1]
        e = b
        for p in range(a, b):
            if arena[p] == sep:
                e = p
                break
        out[r] = hash_bytes(arena, a, e, key)
    return out


class Explainer:
    """Per-block attribution for fm_predict --explain and fm_dump importance."""

    def __init__(self, model, topn=0, importance=False, group=None, n_groups=None):
        self.model = model
        self.topn = topn
        self.importance = importance
        if importance and group is None:  # one group a feature, the bias none
            group = np.arange(model.n_rows, dtype=np.int64)
            group[0] = -1
            n_groups = model.n_rows
        self.group = group
        self.n_groups = n_groups
        self._acc = []

    def accumulators(self):
        n = self.n_groups
        # count, sum of phi, sum of |phi|; then the per-sample bookkeeping (clock, last, cur)
        acc = (np.zeros(n, np.int64), np.zeros(n), np.zeros(n), np.zeros(1, np.int64),
               np.full(n, -1, np.int64), np.zeros(n), np.zeros(self.model.n_rows, np.bool_))
        self._acc.append(acc)
        return acc

    def on_block_factory(self):
        """A per-thread on_block callback for predict_stream."""
        state = {"phi": np.empty(0), "out": np.empty(0, np.uint8), "acc": None, "seen": np.empty(0, np.int64)}
        m = self.model

        def on_block(p, raw):
            if state["phi"].shape[0] < p.nnz:
                state["phi"] = np.empty(max(p.nnz, 2 * state["phi"].shape[0]))
            phi = state["phi"]
            block_phi(m, p, phi)
            if self.importance:
                if state["acc"] is None:
                    state["acc"] = self.accumulators()
                if state["seen"].shape[0] < p.nnz:
                    state["seen"] = np.empty(max(p.nnz, 2 * state["seen"].shape[0]), np.int64)
                c, sp, sa, clock, last, cur, hit = state["acc"]
                accumulate_importance(p.rows, phi, p.indptr, p.n_samples, self.group, clock, last, cur,
                                      state["seen"], hit, c, sp, sa)
                return b""
            need = p.n_samples * 40 + p.nnz * 30 + p.buf.shape[0]
            if state["out"].shape[0] < need:
                state["out"] = np.empty(max(need, 2 * state["out"].shape[0]), np.uint8)
            nb = format_explained(p.ys, raw, p.indptr, phi, p.buf, p.name_start, p.name_len,
                                  p.n_samples, self.topn, state["out"])
            return state["out"][:nb].tobytes()

        return on_block

    def totals(self):
        """(count, sum of phi, sum of |phi|) per group, all threads' accumulators added,
        and the number of features (rows but the bias) that occurred."""
        n = self.n_groups
        c = np.zeros(n, np.int64)
        sp = np.zeros(n)
        sa = np.zeros(n)
        hit = np.zeros(self.model.n_rows, np.bool_)
        for a, b, d, _, _, _, h in self._acc:
            hit |= h
            c += a
            sp += b
            sa += d
        return c, sp, sa, int(hit[1:].sum())
