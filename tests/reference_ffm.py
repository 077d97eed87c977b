"""A slow, obviously-correct FTRL field-aware FM the ffm.py kernels are checked against.

Written from docs/design.md, "Field-aware FM", one sample at a time in plain
Python floats, with tests/reference.py's FTRL formulas (alphaFM's order of
floating-point operations) and initial draws:

- a feature's field is its name up to the first separator (the whole name
  when it has none or starts with it); fields get ids in order of first
  appearance, up to the capacity F; a line whose new names would need field
  F+1 is bad: skipped, nothing of it kept (not even its other new fields);
- a new feature's factors are v[f*k+d] = init_stdev * gauss(init_key(name), f*k+d),
  the first F*k numbers of its stream, as an FM with F*k factors;
- score p = w0; p += w_i x_i for each term; for each pair i < j in order,
  t = sum_d v_{i,f(j),d} v_{j,f(i),d} (d in order) and p += t * (x_i x_j);
- the gradient of v_{i,f,d} is mult * sum over pairs (in pair order) of
  v_{j,f(i),d} x_i x_j for the partners j of field f; only the (i, f) with a
  partner are updated, term by term, fields in order of first appearance in
  the sample, with the v each term's refresh computed.
"""

from collections import OrderedDict

import numpy as np

from reference import Unit, ftrl_step, ftrl_weight, initial_v, logistic_mult


def field_of(name, sep):
    i = name.find(sep, 1)  # as the kernels: a name starting with sep is not cut there
    return name[:i] if i > 0 else name


class ReferenceFFM:
    """Per-feature dicts; ``train(samples)`` with samples (label, [(name bytes, x), ...])."""

    def __init__(self, k, max_fields, hp, sep=b"=", k0=True, k1=True, seed=0):
        self.k = int(k)
        self.F = int(max_fields)
        self.kk = self.k * self.F
        (self.w_alpha, self.w_beta, self.w_l1, self.w_l2,
         self.v_alpha, self.v_beta, self.v_l1, self.v_l2, self.init_stdev) = [float(x) for x in hp]
        self.sep = sep
        self.k0 = bool(k0)
        self.k1 = bool(k1)
        self.seed = int(seed)
        self.bias = Unit(0)
        self.units = OrderedDict()
        self.field_of = {}          # name -> field id
        self.fields = []            # field names in id order
        self.predictions = []
        self.labels = []
        self.bad = []               # 1-based sample numbers of the lines refused (field capacity)
        self.seen = 0

    def v_now(self, u, c):
        """v[c] as the refresh computes it (the drawn value while v_n == 0)."""
        if u.v_n[c] > 0:
            return ftrl_weight(u.v_z[c], u.v_n[c], self.v_alpha, self.v_beta, self.v_l1, self.v_l2)
        return u.v[c]

    def _admit(self, names):
        """Fields for the new names of a line; False (nothing kept) when past the capacity."""
        new = []
        for name in names:
            if name in self.units:
                continue
            f = field_of(name, self.sep)
            if f not in self.fields and f not in new:
                if len(self.fields) + len(new) >= self.F:
                    return False
                new.append(f)
        self.fields.extend(new)
        for name in names:
            if name not in self.units:
                self.units[name] = Unit(self.kk, initial_v(name, self.kk, self.seed, self.init_stdev))
                self.field_of[name] = self.fields.index(field_of(name, self.sep))
        return True

    def train(self, samples):
        for label, feats in samples:
            self.train_one(label, feats)
        return self

    def train_one(self, label, feats):
        k = self.k
        self.seen += 1
        y = 1.0 if label > 0 else -1.0
        feats = [(name, float(x)) for name, x in feats if float(x) != 0.0]
        names = [n for n, _ in feats]
        if not self._admit(names):
            self.bad.append(self.seen)
            return
        xs = [x for _, x in feats]
        us = [self.units[n] for n in names]
        fs = [self.field_of[n] for n in names]
        m = len(us)
        local = list(OrderedDict.fromkeys(fs))
        b = self.bias
        # 1. weights from state
        if self.k0:
            b.w = ftrl_weight(b.w_z, b.w_n, self.w_alpha, self.w_beta, self.w_l1, self.w_l2)
        if self.k1:
            for u in us:
                u.w = 0.0 if abs(u.w_z) <= self.w_l1 else ftrl_weight(u.w_z, u.w_n, self.w_alpha, self.w_beta,
                                                                      self.w_l1, self.w_l2)
        v = [{f: [self.v_now(u, f * k + d) for d in range(k)] for f in local} for u in us]
        # 2. predict
        p = b.w
        for u, x in zip(us, xs):
            p += u.w * x
        for i in range(m):
            for j in range(i + 1, m):
                t = 0.0
                for d in range(k):
                    t += v[i][fs[j]][d] * v[j][fs[i]][d]
                p += t * (xs[i] * xs[j])
        self.predictions.append(p)
        self.labels.append(y)
        # 3. gradient multiplier
        mult = logistic_mult(p, y)
        # 4. w state
        if self.k0:
            b.w_z, b.w_n = ftrl_step(b.w_z, b.w_n, mult, b.w, self.w_alpha)
        if self.k1:
            for u, x in zip(us, xs):
                u.w_z, u.w_n = ftrl_step(u.w_z, u.w_n, mult * x, u.w, self.w_alpha)
        # 5. v state
        grad = [{f: [0.0] * k for f in local} for _ in us]
        for i in range(m):
            for j in range(i + 1, m):
                xx = xs[i] * xs[j]
                for d in range(k):
                    grad[i][fs[j]][d] += v[j][fs[i]][d] * xx
                    grad[j][fs[i]][d] += v[i][fs[j]][d] * xx
        for i, u in enumerate(us):
            for f in local:
                if not any(fs[j] == f for j in range(m) if j != i):
                    continue
                for d in range(k):
                    c = f * k + d
                    z = u.v_z[c] if u.v_n[c] > 0 else 0.0
                    z, n = ftrl_step(z, u.v_n[c], mult * grad[i][f][d], v[i][f][d], self.v_alpha)
                    if n > 0:
                        u.v_z[c], u.v_n[c] = z, n

    # -- results ------------------------------------------------------------
    def export(self):
        """tests/reference.py's export() shape, with F*k factors per feature."""
        feats = OrderedDict()
        for name, u in self.units.items():
            v = np.array([self.v_now(u, c) for c in range(self.kk)], dtype=np.float64)
            vz = np.array([u.v_z[c] if u.v_n[c] > 0 else 0.0 for c in range(self.kk)], dtype=np.float64)
            feats[name.decode()] = (u.w, v, u.w_n, u.w_z, np.array(u.v_n, dtype=np.float64), vz)
        return {"bias": (self.bias.w, self.bias.w_n, self.bias.w_z), "features": feats}

    def serving(self):
        """name -> (w, field id, [v per field]) and w0, as a model file would give them."""
        k = self.k
        out = {}
        for name, u in self.units.items():
            out[name] = (u.w, self.field_of[name],
                         [[self.v_now(u, f * k + d) for d in range(k)] for f in range(self.F)])
        return self.bias.w, out

    def score(self, feats):
        """(raw score, phi per term) of a sample from the serving weights; unknown names add nothing."""
        w0, model = self.serving()
        terms = [(model[n], float(x)) for n, x in feats if n in model and float(x) != 0.0]
        p = w0
        for (w, _, _), x in terms:
            p += w * x
        inter = [0.0] * len(terms)
        for i in range(len(terms)):
            for j in range(i + 1, len(terms)):
                (_, fi, vi), xi = terms[i]
                (_, fj, vj), xj = terms[j]
                t = 0.0
                for d in range(self.k):
                    t += vi[fj][d] * vj[fi][d]
                p += t * (xi * xj)
                h = 0.5 * (t * (xi * xj))
                inter[i] += h
                inter[j] += h
        phi = [w * x + h for ((w, _, _), x), h in zip(terms, inter)]
        return p, phi
