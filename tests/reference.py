"""A slow, obviously-correct FTRL-FM trainer the numba kernels are checked against.

Written from the update rule of alphaFM's ftrl_trainer.h (docs/design.md, "The FTRL-Proximal update"),
one sample at a time, in plain Python floats. Only the random numbers (the
initial v draws and -fvs re-draws) come from streamfm, because they are the
generator's definition rather than the update:

- a new feature's v[f] = init_stdev * gauss(init_key(init_hash(name), seed), f)
- the -fvs re-draw uses key = mix64(init_key(init_hash(name), seed) ^ bits(w_n)),
  bits(w_n) being the uint64 bit pattern of the float64 w_n at that moment,
  and replaces only the v[f] whose v_n[f] is still 0.

State per feature, as alphaFM keeps it: w, w_n, w_z, v[k] (the *stored* v,
the value the trainer last computed or drew), v_n[k], v_z[k]; the bias has
w, w_n, w_z.
"""

import math
from collections import OrderedDict

import numpy as np

from streamfm import ftrl
from streamfm.mix import splitmix64
from streamfm.table import init_hash

SGN_EPS = 1e-10


def sgn(z):
    return 1.0 if z > SGN_EPS else -1.0


# The two FTRL formulas are written in alphaFM's order of floating-point
# operations (ftrl_trainer.h: ``(-1) * (1 / (l2 + (beta + sqrt(n)) / alpha))
# * (z - sgn(z) * l1)`` and ``1 / alpha * (sqrt(n + g * g) - sqrt(n))``), not
# as the algebraically equal ``-(z - ...) / (...)``: the -fvs re-draw is keyed
# by the exact bits of w_n, so a one-ulp difference anywhere upstream turns
# into completely different v values (a reference written with the plain
# division diverged from the trainer after ~40 lines of -fvs data). With
# alphaFM's order a float64 run agrees bit for bit (test_ftrl.py checks it).


def ftrl_weight(z, n, alpha, beta, l1, l2):
    """w from the FTRL state (z, n)."""
    if abs(z) <= l1:
        return 0.0
    return (-1.0) * (1.0 / (l2 + (beta + math.sqrt(n)) / alpha)) * (z - sgn(z) * l1)


def ftrl_step(z, n, g, w, alpha):
    """(z, n) after a gradient g at weight w."""
    sigma = 1.0 / alpha * (math.sqrt(n + g * g) - math.sqrt(n))
    return z + (g - sigma * w), n + g * g


def sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def logistic_mult(p, y):
    """y * (1 / (1 + exp(-p y)) - 1)."""
    try:
        d = 1.0 + math.exp(-p * y)
    except OverflowError:
        d = math.inf
    return y * (1.0 / d - 1.0)


def f64_bits(x):
    return np.array([x], dtype=np.float64).view(np.uint64)[0]


def initial_v(name, k, seed, stdev):
    key = np.uint64(ftrl.init_key(np.uint64(init_hash(name)), seed))
    return [stdev * float(ftrl.gauss(key, f)) for f in range(k)]


def redraw_v(name, w_n, k, seed, stdev):
    base = np.uint64(ftrl.init_key(np.uint64(init_hash(name)), seed))
    key = np.uint64(splitmix64(np.uint64(base ^ f64_bits(w_n))))
    return [stdev * float(ftrl.gauss(key, f)) for f in range(k)]


class Unit:
    __slots__ = ("w", "w_n", "w_z", "v", "v_n", "v_z")

    def __init__(self, k, v=None):
        self.w = 0.0
        self.w_n = 0.0
        self.w_z = 0.0
        self.v = list(v) if v is not None else [0.0] * k
        self.v_n = [0.0] * k
        self.v_z = [0.0] * k


class ReferenceFM:
    """Per-feature dicts; ``train(samples)`` with samples (label, [(name, x), ...])."""

    def __init__(self, k, hp, k0=True, k1=True, fvs=False, seed=0):
        self.k = int(k)
        (self.w_alpha, self.w_beta, self.w_l1, self.w_l2,
         self.v_alpha, self.v_beta, self.v_l1, self.v_l2, self.init_stdev) = [float(x) for x in hp]
        self.k0 = bool(k0)
        self.k1 = bool(k1)
        self.fvs = bool(fvs)
        self.seed = int(seed)
        self.bias = Unit(0)
        self.units = OrderedDict()  # name -> Unit, in first-seen order
        self.predictions = []        # progressive raw scores p, before each update
        self.labels = []             # +1 / -1
        # how often the rarer paths ran (so tests can check they were exercised)
        self.counts = {"redraw": 0, "fvs_zeroed": 0, "repeat": 0, "zero_grad_v": 0,
                       "fvs_zero_used_by_repeat": 0}

    # -- state --------------------------------------------------------------
    def load(self, bias, features):
        """Start from a model's state: bias (w, w_n, w_z), features name -> (w, v, w_n, w_z, v_n, v_z)."""
        self.bias = Unit(0)
        self.bias.w, self.bias.w_n, self.bias.w_z = (float(x) for x in bias)
        self.units = OrderedDict()
        for name, (w, v, w_n, w_z, v_n, v_z) in features.items():
            u = Unit(self.k, [float(x) for x in v])
            u.w, u.w_n, u.w_z = float(w), float(w_n), float(w_z)
            u.v_n = [float(x) for x in v_n]
            u.v_z = [float(x) for x in v_z]
            self.units[name] = u
        return self

    def unit(self, name):
        u = self.units.get(name)
        if u is None:
            u = Unit(self.k, initial_v(name, self.k, self.seed, self.init_stdev))
            self.units[name] = u
        return u

    def v_factor(self, u, f):
        """v[f] as step 1 computes it (or the stored draw while v_n == 0)."""
        if u.v_n[f] > 0:
            if self.fvs and u.w == 0.0:
                return 0.0
            return ftrl_weight(u.v_z[f], u.v_n[f], self.v_alpha, self.v_beta, self.v_l1, self.v_l2)
        return u.v[f]

    # -- training -----------------------------------------------------------
    def train(self, samples):
        for label, feats in samples:
            self.train_one(label, feats)
        return self

    def train_one(self, label, feats):
        k = self.k
        y = 1.0 if label > 0 else -1.0
        feats = [(name, float(x)) for name, x in feats if float(x) != 0.0]
        names = [name for name, _ in feats]
        if len(set(names)) < len(names):
            self.counts["repeat"] += 1
        xs = [x for _, x in feats]
        us = [self.unit(name) for name in names]
        b = self.bias

        # 1. weights from state
        if self.k0:
            b.w = ftrl_weight(b.w_z, b.w_n, self.w_alpha, self.w_beta, self.w_l1, self.w_l2)
        if self.k1:
            for name, u in zip(names, us):
                if abs(u.w_z) <= self.w_l1:
                    u.w = 0.0
                else:
                    if self.fvs and u.w_n > 0 and u.w == 0.0:
                        fresh = redraw_v(name, u.w_n, k, self.seed, self.init_stdev)
                        for f in range(k):
                            if u.v_n[f] == 0.0:
                                u.v[f] = fresh[f]
                        self.counts["redraw"] += 1
                    u.w = ftrl_weight(u.w_z, u.w_n, self.w_alpha, self.w_beta, self.w_l1, self.w_l2)
        for u in us:
            for f in range(k):
                if u.v_n[f] > 0:
                    u.v[f] = self.v_factor(u, f)

        # 2. predict
        p = b.w
        for u, x in zip(us, xs):
            p += u.w * x
        s = [0.0] * k
        sq = [0.0] * k
        for u, x in zip(us, xs):
            for f in range(k):
                d = u.v[f] * x
                s[f] += d
                sq[f] += d * d
        for f in range(k):
            p += 0.5 * (s[f] * s[f] - sq[f])
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
        zeroed = set()  # (unit, f) whose stored v this sample's update set to 0
        for u, x in zip(us, xs):
            for f in range(k):
                v = u.v[f]
                if (id(u), f) in zeroed:
                    self.counts["fvs_zero_used_by_repeat"] += 1
                g = mult * (s[f] * x - v * x * x)
                if g == 0.0:
                    self.counts["zero_grad_v"] += 1
                u.v_z[f], u.v_n[f] = ftrl_step(u.v_z[f], u.v_n[f], g, v, self.v_alpha)
                if self.fvs and u.v_n[f] > 0 and u.w == 0.0:
                    if u.v[f] != 0.0:
                        self.counts["fvs_zeroed"] += 1
                        zeroed.add((id(u), f))
                    u.v[f] = 0.0

    # -- results ------------------------------------------------------------
    def export(self):
        """{"bias": (w, w_n, w_z), "features": name -> (w, v, w_n, w_z, v_n, v_z)}.

        v is what the trainer would use next: recomputed from (v_z, v_n) by
        step 1's rule with the stored w, or the stored value while v_n == 0.
        """
        feats = OrderedDict()
        for name, u in self.units.items():
            v = np.array([self.v_factor(u, f) for f in range(self.k)], dtype=np.float64)
            feats[name] = (u.w, v, u.w_n, u.w_z, np.array(u.v_n, dtype=np.float64),
                           np.array(u.v_z, dtype=np.float64))
        return {"bias": (self.bias.w, self.bias.w_n, self.bias.w_z), "features": feats}

    def logloss(self):
        """Mean progressive logloss, probabilities clamped at 1e-15 as the trainer does."""
        total = 0.0
        for p, y in zip(self.predictions, self.labels):
            prob = sigmoid(p)
            if y > 0:
                total -= math.log(max(prob, 1e-15))
            else:
                total -= math.log(max(1.0 - prob, 1e-15))
        return total / len(self.predictions)

    def probabilities(self):
        return np.array([sigmoid(p) for p in self.predictions])


def parse_line(line):
    """(label, [(name, x), ...]) of one input line, by the grammar of docs/design.md, "Input lines"."""
    tokens = line.split()
    if not tokens:
        return None
    label = float(tokens[0])
    feats = []
    for t in tokens[1:]:
        if ":" in t:
            name, _, val = t.rpartition(":")
            x = float(val)
        else:
            name, x = t, 1.0
        if x != 0.0:
            feats.append((name, x))
    return label, feats


def parse_text(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    out = []
    for line in text.splitlines():
        s = parse_line(line)
        if s is not None:
            out.append(s)
    return out


def read_alphafm_text(text, k):
    """(bias, features) of a full text model in alphaFM's layout, parsed with float()."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = lines[0].split()
    assert first[0] == "bias"
    bias = tuple(float(x) for x in first[1:4])
    feats = OrderedDict()
    for ln in lines[1:]:
        t = ln.split()
        name, nums = t[0], [float(x) for x in t[1:]]
        assert len(nums) == 3 + 3 * k
        w, v = nums[0], nums[1:1 + k]
        w_n, w_z = nums[1 + k], nums[2 + k]
        v_n, v_z = nums[3 + k:3 + 2 * k], nums[3 + 2 * k:3 + 3 * k]
        feats[name] = (w, v, w_n, w_z, v_n, v_z)
    return bias, feats


# ---------------------------------------------------------------------------
# Test harness shared by the test modules: random data, running the numba
# trainer, and comparing its state with the reference's.

# ':' inside a name, a feature called "bias", UTF-8, punctuation, and names
# of 8, 16 and 29 bytes (the name hash works on 8-byte words)
SPECIAL_NAMES = ["a:b", "bias", "\u00fc1", "x=1|y", "exactly8", "sixteen_bytes_ab",
                 "a_rather_long_feature_name_29"]


def random_lines(rng, n_lines, n_names, max_feats=15, labels="01", values="mixed",
                 repeat_prob=0.2, extras=True, zipf=1.1, planted=False):
    """Random input lines (bytes, '\\n'-terminated) with Zipf-skewed feature names.

    ``values``: "unit" (x = 1, written 'name' or 'name:1') or "mixed" (also
    uniform in [-3, 3], tiny magnitudes and zeros, which drop the feature).
    ``extras`` adds names with ':' / non-ASCII bytes, tabs and double spaces,
    single-feature lines of fresh names (their v gradient is exactly 0) and a
    line whose only feature has value 0. ``planted``: labels drawn from a
    hidden logistic model of the features (learnable) instead of coin flips.
    """
    names = ["f%d" % i for i in range(n_names)]
    if extras:
        names[1:1 + len(SPECIAL_NAMES)] = SPECIAL_NAMES
    p = 1.0 / np.arange(1, n_names + 1) ** zipf
    p /= p.sum()
    pos, neg = {"01": ("1", "0"), "-11": ("1", "-1")}[labels]
    hidden = rng.normal(0.0, 1.0, n_names)
    out = []
    solo = 0
    for li in range(n_lines):
        label = pos if rng.random() < 0.4 else neg
        if extras and li % 37 == 5:
            out.append("%s solo%d:%r\n" % (label, solo, float(rng.uniform(0.5, 2.0))))
            solo += 1
            continue
        if extras and li == 17:
            out.append("%s gone:0\n" % label)
            continue
        m = int(rng.integers(1, max_feats + 1))
        idx = list(rng.choice(n_names, size=m, p=p))
        if rng.random() < repeat_prob:
            idx.insert(int(rng.integers(0, len(idx) + 1)), idx[int(rng.integers(0, len(idx)))])
        toks = []
        score = -0.5
        for i in idx:
            name = names[i]
            r = rng.random()
            if values == "unit" or r < 0.35:
                toks.append(name + ":1" if (":" in name or rng.random() < 0.5) else name)
                x = 1.0
            elif r < 0.85:
                x = float(rng.uniform(-3, 3))
                toks.append("%s:%r" % (name, x))
            elif r < 0.95:
                x = float(rng.choice([-1, 1]) * 10.0 ** rng.uniform(-9, -5))
                toks.append("%s:%r" % (name, x))
            else:
                toks.append(name + ":0")
                x = 0.0
            score += hidden[i] * x
        if planted:
            label = pos if rng.random() < 1.0 / (1.0 + math.exp(-2.0 * score)) else neg
        seps = [" "] * len(toks)
        if extras:
            seps = [("\t" if rng.random() < 0.1 else "  " if rng.random() < 0.1 else " ") for _ in toks]
        out.append(label + "".join(s + t for s, t in zip(seps, toks)) + "\n")
    return "".join(out).encode("utf-8")


def run_trainer(text, k, hp, k0=True, k1=True, fvs=False, seed=0, dtype=np.float64, cores=1,
                block_size=None, model=None):
    """Train streamfm on ``text``; returns (model, summary)."""
    import io

    from streamfm.model import Model
    from streamfm.train import Options, train_stream

    m = model if model is not None else Model(k, dtype, hp=hp, fvs=fvs, seed=seed)
    msgs = []
    opts = Options(k0=k0, k1=k1, cores=cores, quiet=True, block_size=block_size)
    summary = train_stream(m, io.BytesIO(text), opts, log=msgs.append)
    return m, summary


def trainer_export(m):
    """The trainer's state in the reference's export() shape (via Model.chunks)."""
    k = m.k
    bias = None
    feats = OrderedDict()
    for r0, r1, w, s in m.chunks():
        for i in range(r1 - r0):
            r = r0 + i
            if r == 0:
                bias = (float(w[i, 0]), float(s[i, 0]), float(s[i, 1]))
                continue
            feats[m.table.name(r)] = (float(w[i, 0]), w[i, 1:].astype(np.float64),
                                      float(s[i, 0]), float(s[i, 1]),
                                      s[i, 2:2 + k].astype(np.float64), s[i, 2 + k:].astype(np.float64))
    return {"bias": bias, "features": feats}


COLUMNS_DOC = "w, v_1..v_k, w_n, w_z, v_n_1..v_n_k, v_z_1..v_z_k"


def state_matrix(export, k):
    """(names, rows in model-file column order) of an export() dict."""
    names = list(export["features"])
    rows = np.zeros((len(names), 3 + 3 * k))
    for j, name in enumerate(names):
        w, v, w_n, w_z, v_n, v_z = export["features"][name]
        rows[j] = np.concatenate([[w], v, [w_n, w_z], v_n, v_z])
    return names, rows


def column_names(k):
    return (["w"] + ["v%d" % f for f in range(k)] + ["w_n", "w_z"]
            + ["v_n%d" % f for f in range(k)] + ["v_z%d" % f for f in range(k)])


def assert_same_state(got, want, k, rtol=1e-9, atol=1e-9):
    """Trainer export ``got`` equals reference export ``want`` (same rows, same order)."""
    gb, wb = np.array(got["bias"]), np.array(want["bias"])
    assert np.allclose(gb, wb, rtol=rtol, atol=atol), "bias (w, w_n, w_z): got %r, want %r" % (gb, wb)
    gn, g = state_matrix(got, k)
    wn, w = state_matrix(want, k)
    assert gn == wn, "feature rows differ (names in row order):\n got  %r\n want %r" % (gn[:50], wn[:50])
    bad = ~np.isclose(g, w, rtol=rtol, atol=atol)
    if bad.any():
        cols = column_names(k)
        lines = []
        for j, c in zip(*np.nonzero(bad)):
            if len(lines) >= 12:
                break
            lines.append("  %r %s: got %.17g want %.17g" % (gn[j], cols[c], g[j, c], w[j, c]))
        raise AssertionError("%d of %d numbers differ:\n%s" % (bad.sum(), bad.size, "\n".join(lines)))
