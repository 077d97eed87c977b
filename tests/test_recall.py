"""FM recall: embedding math, pair gradients, sampling, suppression, exact top-N.

Each check compares the numba code with an independent numpy computation:
the FM score of the concatenated user+item sample (ftrl.score_block), finite
differences of the pair losses, the FTRL step written out in numpy, and a
brute-force float64 search.
"""

import io
import math

import numpy as np
import pytest

from streamfm import ftrl, parse
from streamfm.model import Model
from streamfm.predict import ServingModel
from streamfm.recall import sampling
from streamfm.recall.embed import embed, query_vectors
from streamfm.recall.index import Index, PairTable, Searcher, brute_force
from streamfm.recall.records import RecordReader, concat_ranges
from streamfm.recall.trainer import LOSSES, Catalog, Config, Trainer, map_clicks, train
from streamfm.train import Options

HP = [0.05, 1.0, 0.1, 5.0, 0.05, 1.0, 0.1, 5.0, 0.1]


def log(msg):
    pass


def records(text, mode, table=None, model=None):
    return RecordReader(io.BytesIO(text), mode, Options(quiet=True), log, "test", table=table,
                        model=model).read_all()


def random_serving(rng, names, k):
    """A ServingModel over ``names`` with random w, v (row 0 = bias)."""
    from streamfm.model import ModelArrays

    m = Model(k, hp=HP)
    recs = records(b"x " + b" ".join(n.encode() for n in names) + b"\n", parse.KEYED, model=m)
    assert recs.n == 1
    n = m.n_rows
    weights = rng.normal(0, 0.5, (n, 1 + k))
    arena, off = m.names()
    return ServingModel.from_arrays(ModelArrays(arena, off, weights, None, {"k": k}))


# ---------------------------------------------------------------------------
# embedding math == the FM score of the concatenated sample


def fm_scores(model, lines):
    """Raw FM scores of LABELED lines, computed by ftrl.score_block."""
    bufs = parse.ParseBuffers(0)
    buf = np.frombuffer(b"".join(lines), np.uint8)
    p = parse.parse(buf, None, bufs, model.table, parse.LABELED)
    out = np.empty(p.n_samples)
    ftrl.score_block(p.indptr, p.rows, p.vals, p.n_samples, model.weights, model.k, out)
    return out


def test_u2i_and_i2u_rank_by_the_full_fm_score():
    rng = np.random.default_rng(3)
    k = 5
    user_names = ["u%d" % i for i in range(6)] + ["age=%d" % i for i in range(3)] + ["g=%d" % i for i in range(2)]
    item_names = ["i%d" % i for i in range(12)] + ["cat=%d" % i for i in range(4)] + ["price"]
    model = random_serving(rng, user_names + item_names, k)
    users = [b"u%d u%d age=%d g=%d:0.5" % (u, u, u % 3, u % 2) for u in range(6)]
    users.append(b"unew age=1 never_seen:3")  # cold user: only age known
    items = [b"i%d i%d cat=%d price:%.2f" % (i, i, i % 4, 0.5 + i / 7) for i in range(12)]
    items.append(b"inew inew_id cat=2 price:0.25")  # cold item: id unknown
    urec = records(b"\n".join(users) + b"\n", parse.KEYED, table=model.table)
    irec = records(b"\n".join(items) + b"\n", parse.KEYED, table=model.table)
    ivec, iown, _ = embed(irec, model.weights, k)
    uvec, uown, _ = embed(urec, model.weights, k)
    w0 = model.weights[0, 0]
    item_index = Index("items", ivec, irec.key_arena, irec.key_off, {})
    user_index = Index("users", uvec, urec.key_arena, urec.key_off, {})
    # u2i: for every user, the index ranking is the ranking by the FM score
    s = Searcher(item_index, True)
    idx, sc = s.search(query_vectors(uvec, "ip", True), irec.n)
    for u, uline in enumerate(users):
        feats = uline.split(b" ", 1)[1]
        lines = [b"1 " + feats + b" " + it.split(b" ", 1)[1] + b"\n" for it in items]
        full = fm_scores(model, lines)
        order = np.lexsort((np.arange(len(full)), -full))
        got = idx[u]
        # same ranking (scores differ only by float32 rounding of the vectors)
        assert np.all(np.diff(full[got]) <= 1e-5), (u, full[got])
        np.testing.assert_allclose(sc[u] + uown[u] + w0, full[got], rtol=1e-5, atol=1e-5)
        assert set(order[:3]) == set(got[:3]) or np.allclose(full[order[:3]], full[got[:3]], atol=1e-5)
    # i2u: the mirror, for every item
    s2 = Searcher(user_index, True)
    idx2, sc2 = s2.search(query_vectors(ivec, "ip", True), urec.n)
    for i, iline in enumerate(items):
        feats = iline.split(b" ", 1)[1]
        lines = [b"1 " + u.split(b" ", 1)[1] + b" " + feats + b"\n" for u in users]
        full = fm_scores(model, lines)
        assert np.all(np.diff(full[idx2[i]]) <= 1e-5)
        np.testing.assert_allclose(sc2[i] + iown[i] + w0, full[idx2[i]], rtol=1e-5, atol=1e-5)


def test_unknown_features_contribute_nothing():
    rng = np.random.default_rng(4)
    model = random_serving(rng, ["a", "b", "c"], 3)
    recs = records(b"x a b:2 zz:5 c\ny a b:2 c\nz q r\n", parse.KEYED, table=model.table)
    vec, own, empty = embed(recs, model.weights, 3)
    np.testing.assert_array_equal(vec[0], vec[1])
    assert own[0] == own[1]
    assert empty == 1 and not vec[2].any()


# ---------------------------------------------------------------------------
# pair gradients and the FTRL step against numpy


def ftrl_w(z, n, alpha, beta, l1, l2):
    if abs(z) <= l1:
        return 0.0
    sgn = 1.0 if z > 1e-10 else -1.0
    return -(z - sgn * l1) / (l2 + (beta + math.sqrt(n)) / alpha)


def effective(params, rows, k, hp):
    w = {r: ftrl_w(params[r, 2], params[r, 1], *hp[:4]) for r in rows}
    v = {}
    for r in rows:
        for f in range(k):
            n, z = params[r, 3 + f], params[r, 3 + k + f]
            v[r, f] = ftrl_w(z, n, *hp[4:8]) if n > 0 else z
    return w, v


def group_score(w, v, entries, k):
    lin = sum(w[r] * x for r, x in entries)
    s = np.array([sum(v[r, f] * x for r, x in entries) for f in range(k)])
    sq = sum(v[r, f] ** 2 * x * x for r, x in entries for f in range(k))
    return lin + 0.5 * (s @ s - sq)


def softplus(t):
    return math.log1p(math.exp(-abs(t))) + max(t, 0.0)


@pytest.mark.parametrize("loss", ["hinge", "bpr", "logistic"])
def test_pair_gradient_and_update_match_numpy(loss):
    k = 3
    rng = np.random.default_rng(11)
    model = Model(k, hp=HP, seed=5)
    # two items sharing 'genre=a' (and 'dup' twice in P); 'shared' is in the user and in P
    cat = Catalog(records(b"P idP genre=a dup:0.5 dup:1.5 shared:2\nN idN genre=a genre=b:0.7\n",
                          parse.KEYED, model=model))
    clicks = records(b"u uid age=3 shared:0.5 | P\n", parse.CLICK, model=model)
    n = model.n_rows
    p = model.params
    p[1:n, 1] = rng.uniform(0.1, 2.0, n - 1)                # w_n
    p[1:n, 2] = rng.uniform(-3, 3, n - 1)                   # w_z
    p[1:n, 3:3 + k] = rng.uniform(0.0, 2.0, (n - 1, k))     # v_n
    p[1:n, 3 + k:3 + 2 * k] = rng.uniform(-3, 3, (n - 1, k))
    p[2, 3] = 0.0                                           # one v never updated: VZ holds v
    p[0, 1:3] = (0.7, -1.1)                                 # bias state
    before = p[:n].copy()
    hp = HP
    rows_u = [(int(r), x) for r, x in zip(clicks.rows, clicks.vals)]
    it = cat.records

    def entries(i):
        return [(int(r), x) for r, x in zip(it.rows[it.indptr[i]:it.indptr[i + 1]],
                                            it.vals[it.indptr[i]:it.indptr[i + 1]])]

    allrows = sorted({r for r, _ in rows_u + entries(0) + entries(1)})
    w, v = effective(before, allrows, k, hp)
    w0 = ftrl_w(before[0, 2], before[0, 1], *hp[:4])
    margin = 50.0

    def total_loss(w, v, w0):
        gp = group_score(w, v, rows_u + entries(0), k)
        gn = group_score(w, v, rows_u + entries(1), k)
        if loss == "hinge":
            return max(0.0, margin - (gp - gn))
        if loss == "bpr":
            return softplus(-(gp - gn))
        return softplus(-(w0 + gp)) + softplus(w0 + gn)

    eps = 1e-6
    gw, gv = {}, {}
    for r in allrows:
        for sgn in (1, -1):
            w2 = dict(w)
            w2[r] += sgn * eps
            gw[r] = gw.get(r, 0.0) + sgn * total_loss(w2, v, w0) / (2 * eps)
        for f in range(k):
            for sgn in (1, -1):
                v2 = dict(v)
                v2[r, f] += sgn * eps
                gv[r, f] = gv.get((r, f), 0.0) + sgn * total_loss(w, v2, w0) / (2 * eps)
    g0 = (total_loss(w, v, w0 + eps) - total_loss(w, v, w0 - eps)) / (2 * eps)

    cfg = Config(loss=loss, margin=margin, neg=1, epochs=1, seed=1)
    tr = Trainer(model, cat, cfg)
    item = map_clicks(clicks, cat)
    tr.run(clicks, item, np.arange(1, dtype=np.int64), True)
    after = model.params[:n]

    def step(z, nn, g, x, alpha):
        n2 = nn + g * g
        return z + g - (math.sqrt(n2) - math.sqrt(nn)) / alpha * x, n2

    for r in allrows:
        g = gw[r]
        if abs(g) > 1e-9:
            z2, n2 = step(before[r, 2], before[r, 1], g, w[r], hp[0])
            assert after[r, 2] == pytest.approx(z2, rel=1e-6, abs=1e-7)
            assert after[r, 1] == pytest.approx(n2, rel=1e-6, abs=1e-7)
        else:  # a pairwise loss leaves the user's w alone
            assert after[r, 1] == before[r, 1] and after[r, 2] == before[r, 2]
        for f in range(k):
            g = gv[r, f]
            nn = before[r, 3 + f]
            z = before[r, 3 + k + f] if nn > 0 else 0.0
            z2, n2 = step(z, nn, g, v[r, f], hp[4])
            assert after[r, 3 + k + f] == pytest.approx(z2, rel=1e-6, abs=1e-7), (r, f)
            assert after[r, 3 + f] == pytest.approx(n2, rel=1e-6, abs=1e-7)
    if loss == "logistic":
        z2, n2 = step(before[0, 2], before[0, 1], g0, w0, hp[0])
        assert after[0, 2] == pytest.approx(z2, rel=1e-6) and after[0, 1] == pytest.approx(n2, rel=1e-6)
    else:
        assert after[0, 1] == before[0, 1] and after[0, 2] == before[0, 2]
    assert LOSSES[loss] >= 0


def test_satisfied_hinge_pair_changes_nothing():
    model = Model(2, hp=HP, seed=1)
    cat = Catalog(records(b"P a\nN b\n", parse.KEYED, model=model))
    clicks = records(b"u x | P\n", parse.CLICK, model=model)
    model.params[1:4, 3:5] = 1.0
    model.params[1:4, 5:7] = -0.5
    before = model.params.copy()
    tr = Trainer(model, cat, Config(loss="hinge", margin=-100.0, neg=1))  # d > -100: no loss
    tr.run(clicks, map_clicks(clicks, cat), np.arange(1, dtype=np.int64), True)
    np.testing.assert_array_equal(model.params[:, 1:], before[:, 1:])
    assert tr.stat_sum()[1] == 1  # one pair, no violation
    assert tr.stat_sum()[3] == 0


# ---------------------------------------------------------------------------
# sampling distributions and popularity suppression


def chi2(observed, expected):
    keep = expected > 0
    assert observed[~keep].sum() == 0, "drew an item of weight 0"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


def chi2_ok(stat, df):
    # mean df, sd sqrt(2 df): 6 sd is p < 1e-7 for a wrong sampler to pass and
    # a right one to fail
    return stat < df + 6 * math.sqrt(2 * df)


@pytest.mark.parametrize("dist", ["uniform", "pop", "pop0.75"])
def test_negative_distribution_chi_square(dist):
    rng = np.random.default_rng(0)
    n = 50
    counts = rng.zipf(1.6, n).astype(np.int64) % 200
    counts[[3, 17]] = 0
    code, power = sampling.DISTS[dist]
    tree = np.zeros(n + 1)
    if code == sampling.DIST_POP:
        # built click by click, as a streaming run does
        items = np.repeat(np.arange(n), counts)
        rng.shuffle(items)
        cc = np.zeros(n, np.int64)
        sampling.count_many(cc, tree, items, power)
        np.testing.assert_array_equal(cc, counts)
        expect = np.where(counts > 0, counts.astype(float) ** power, 0.0)
    else:
        expect = np.ones(n)
    draws = 200_000
    out = np.empty(draws, np.int64)
    sampling.draw_many(sampling.seed_state(42), code, tree, n, draws, out)
    obs = np.bincount(out, minlength=n).astype(float)
    stat, df = chi2(obs, expect / expect.sum() * draws)
    assert chi2_ok(stat, df), (stat, df)
    # and a wrong distribution is rejected by the same test
    wrong = np.ones(n) if code == sampling.DIST_POP else np.arange(1, n + 1.0)
    if dist == "pop":
        wrong = np.where(counts > 0, counts.astype(float) ** 0.75, 0.0)
    stat_w, _ = chi2(obs, wrong / wrong.sum() * draws)
    assert not chi2_ok(stat_w, df)


def test_fenwick_build_equals_incremental():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 30, 37)
    t1 = np.zeros(38)
    sampling.fenwick_build(sampling.weights_of(counts, 0.75), t1)
    t2 = np.zeros(38)
    sampling.count_many(np.zeros(37, np.int64), t2, np.repeat(np.arange(37), counts), 0.75)
    np.testing.assert_allclose(t1, t2, rtol=1e-12)


def test_pop_suppression_keep_rates():
    counts = np.array([9000, 900, 90, 9, 1], np.int64)
    total = float(counts.sum())
    t = 1e-3
    per_item = 40_000
    items = np.repeat(np.arange(5), per_item)
    kept = np.empty(items.shape[0], np.int64)
    sampling.keep_many(sampling.seed_state(7), counts, total, t, items, kept)
    rates = kept.reshape(5, per_item).mean(axis=1)
    f = counts / total
    want = np.minimum(1.0, np.sqrt(t / f) + t / f)
    sd = np.sqrt(want * (1 - want) / per_item)
    assert np.all(np.abs(rates - want) <= 5 * sd + 1e-12), (rates, want)
    assert want[0] < 0.05 and want[-1] == 1.0
    # too few clicks to judge shares: everything is kept
    sampling.keep_many(sampling.seed_state(7), counts, 100.0, t, items, kept)
    assert kept.all()


def test_trainer_suppresses_popular_positives():
    model = Model(2, hp=HP, seed=1)
    cat = Catalog(records(b"A a\nB b\nC c\n", parse.KEYED, model=model))
    lines = [b"u%d x | A\n" % i for i in range(9000)] + [b"u%d x | B\n" % i for i in range(1000)]
    np.random.default_rng(0).shuffle(lines)
    t = 0.01
    cfg = Config(loss="hinge", neg=1, epochs=2, pop_suppress=t, seed=3)
    s = train(model, cat, io.BytesIO(b"".join(lines)), cfg, Options(quiet=True), log)
    keep_a = math.sqrt(t / 0.9) + t / 0.9
    keep_b = math.sqrt(t / 0.1) + t / 0.1
    expect = 2 * (9000 * (1 - keep_a) + 1000 * (1 - keep_b))
    sd = math.sqrt(2 * (9000 * keep_a * (1 - keep_a) + 1000 * keep_b * (1 - keep_b)))
    assert abs(s.stats[4] - expect) < 5 * sd
    assert s.trained + s.stats[4] + s.stats[7] == 20000   # trained, suppressed, no negative found


# ---------------------------------------------------------------------------
# exact top-N


def make_index(x):
    n = x.shape[0]
    keys = [b"k%d" % i for i in range(n)]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(s) for s in keys])
    return Index("items", x.astype(np.float32), np.frombuffer(b"".join(keys), np.uint8), off, {})


@pytest.mark.parametrize("cores", [1, 2])
def test_topn_identical_to_brute_force(cores):
    rng = np.random.default_rng(5)
    n, k = 9000, 6
    x = rng.standard_normal((n, k + 1)).astype(np.float32)
    x[100] = x[200]  # exact ties: the lower row first
    x[4000:4010] = x[7]
    idx = make_index(x)
    q = rng.standard_normal((150, k + 1)).astype(np.float32)
    q[:, k] = 1.0
    q[5] = x[7]
    s = Searcher(idx, True, cores=cores)
    got_i, got_s = s.search(q, 37)
    want_i, want_s = brute_force(s.x, q, 37)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-12)
    # exclusions and a top-N larger than what is left
    ex_rows = [want_i[j, ::3] for j in range(150)]
    pt = PairTable(np.repeat(np.arange(150, dtype=np.uint64), [len(e) for e in ex_rows]),
                   np.concatenate(ex_rows))
    e = pt.for_queries(np.arange(150, dtype=np.uint64))
    got2, _ = s.search(q, 37, e)
    want2, _ = brute_force(s.x, q, 37, ex_rows)
    np.testing.assert_array_equal(got2, want2)
    small = make_index(x[:20])
    gi, gs = Searcher(small, True).search(q[:3], 30)
    assert (gi[:, 20:] == -1).all() and np.isinf(gs[:, 20:]).all()


def test_cosine_skips_self_and_matches_brute_force():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 5)).astype(np.float32)
    idx = make_index(x)
    s = Searcher(idx, False, "cos")
    q = query_vectors(x[:40], "cos", False)
    gi, _ = s.search(q, 10, None, idx.key_hash[:40])
    wi, _ = brute_force(s.x, q, 10, [[i] for i in range(40)])
    np.testing.assert_array_equal(gi, wi)
    assert not any(i in gi[i] for i in range(40))


def test_ranges_helper():
    starts = np.array([5, 0, 9, 3], np.int64)
    lens = np.array([2, 0, 3, 1], np.int64)
    np.testing.assert_array_equal(concat_ranges(starts, lens), [5, 6, 9, 10, 11, 3])


def test_sample_files_are_what_the_documented_command_makes(tmp_path):
    from streamfm.recall.synth import main

    main(["--out-dir", str(tmp_path)])
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")
    for name in ("items.txt", "new_items.txt", "users.txt", "clicks.txt", "clicks_test.txt"):
        with open(os.path.join(root, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name
