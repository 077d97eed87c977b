"""The numba FTRL-FM trainer against the slow reference (tests/reference.py).

Every case trains streamfm (train_stream on a text stream, one core) and the
reference on the same lines, then compares every feature's w, v, w_n, w_z,
v_n, v_z, the bias and the progressive logloss to 1e-9.
"""

import math
import os
import sys

import numpy as np
import pytest

from streamfm.metrics import auc_exact
from streamfm.model import Model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import (  # noqa: E402
    ReferenceFM, assert_same_state, initial_v, parse_text, random_lines,
    run_trainer, trainer_export)

TOL = 1e-9
HP_DEFAULT = [0.05, 1.0, 0.1, 5.0, 0.05, 1.0, 0.1, 5.0, 0.1]
HP_SETS = {
    # l1 = 0 (and l2 = 0) on both w and v, larger steps and init_stdev
    "l1_zero": [0.1, 0.5, 0.0, 0.0, 0.2, 2.0, 0.0, 0.0, 0.3],
    # a large w_l1 keeps many w at 0, so -fvs zeroes and re-draws v often
    "big_l1": [0.3, 1.0, 0.8, 1.0, 0.1, 0.5, 0.05, 0.5, 0.5],
    # every hyper-parameter away from its default
    "odd": [0.02, 0.3, 0.01, 0.7, 0.08, 3.0, 0.2, 2.0, 0.05],
}
SEED = 7


def data(seed, n_lines=300, n_names=100, **kw):
    return random_lines(np.random.default_rng(seed), n_lines, n_names, **kw)


def train_both(text, k, hp, k0=True, k1=True, fvs=False, seed=SEED, **kw):
    m, summary = run_trainer(text, k, hp, k0, k1, fvs, seed=seed, **kw)
    ref = ReferenceFM(k, hp, k0, k1, fvs, seed=seed).train(parse_text(text))
    return m, summary, ref


def check_same(m, summary, ref, k):
    assert summary.samples == len(ref.predictions)
    assert_same_state(trainer_export(m), ref.export(), k, rtol=TOL, atol=TOL)
    assert summary.logloss == pytest.approx(ref.logloss(), rel=TOL, abs=TOL)
    # AUC is read off a 2^16-bin histogram: close to the exact one, not equal
    # (on a handful of samples one pair tied in a bin moves it by a lot)
    if len(ref.predictions) >= 200:
        assert abs(summary.auc - auc_exact(ref.labels, ref.probabilities())) < 2e-3


# ---------------------------------------------------------------------------
# hand-checked numbers (independent of the reference)


def test_first_samples_by_hand():
    """-dim 1,1,0, default hyper-parameters: two samples worked out on paper."""
    hp = HP_DEFAULT
    m, s = run_trainer(b"1 a:2\n0 a:1 b\n", 0, hp, seed=SEED)
    got = trainer_export(m)
    # sample 1: every w is 0, p = 0, mult = 1 * (1/2 - 1) = -0.5
    #   bias: g = -0.5, n = 0.25, z = -0.5;  a: g = -1, n = 1, z = -1
    # sample 2 (y = -1): w from state (alpha .05, beta 1, l1 .1, l2 5):
    #   w0 = -(-0.5 + 0.1) / (5 + (1 + 0.5) / 0.05) = 0.4 / 35
    #   wa = -(-1 + 0.1) / (5 + (1 + 1) / 0.05) = 0.9 / 45 = 0.02
    w0 = 0.4 / 35
    wa = 0.9 / 45
    p = w0 + wa
    mult = -1 * (1 / (1 + math.exp(p)) - 1)
    bias_z = -0.5 + mult - (math.sqrt(0.25 + mult ** 2) - 0.5) / 0.05 * w0
    a_z = -1 + mult - (math.sqrt(1 + mult ** 2) - 1) / 0.05 * wa
    b_z = mult  # b: w was 0
    assert got["bias"] == pytest.approx((w0, 0.25 + mult ** 2, bias_z), rel=1e-12)
    wa_, _, wna, wza, _, _ = got["features"]["a"]
    assert (wa_, wna, wza) == pytest.approx((wa, 1 + mult ** 2, a_z), rel=1e-12)
    wb_, _, wnb, wzb, _, _ = got["features"]["b"]
    assert (wb_, wnb, wzb) == pytest.approx((0.0, mult ** 2, b_z), rel=1e-12, abs=1e-15)
    want_loss = (-math.log(0.5) - math.log(1 - 1 / (1 + math.exp(-p)))) / 2
    assert s.logloss == pytest.approx(want_loss, rel=1e-12)
    # and the reference agrees with the same hand numbers
    ref = ReferenceFM(0, hp, seed=SEED).train(parse_text(b"1 a:2\n0 a:1 b\n"))
    assert ref.export()["bias"] == pytest.approx((w0, 0.25 + mult ** 2, bias_z), rel=1e-12)
    assert ref.predictions == pytest.approx([0.0, p], rel=1e-12)


def test_initial_v_is_the_keyed_draw():
    """A feature alone on its line gets a zero v gradient: v stays its initial draw, v_n = 0."""
    k = 4
    text = b"1 solo:1.5\n0 other\n1 x:2 y:-1\n1 name_of_23_bytes_length\n0 eight_b8\n"
    m, _ = run_trainer(text, k, HP_DEFAULT, seed=SEED)
    got = trainer_export(m)["features"]
    for name in ("solo", "other", "name_of_23_bytes_length", "eight_b8"):
        w, v, w_n, w_z, v_n, v_z = got[name]
        assert np.array_equal(v, np.array(initial_v(name, k, SEED, HP_DEFAULT[8])))
        assert np.all(v_n == 0) and np.all(v_z == 0)
        assert w_n > 0
    # a different seed draws different numbers; the order of arrival does not matter
    m2, _ = run_trainer(b"0 other\n1 solo:1.5\n", k, HP_DEFAULT, seed=SEED)
    assert np.array_equal(trainer_export(m2)["features"]["solo"][1], got["solo"][1])
    m3, _ = run_trainer(b"1 solo:1.5\n", k, HP_DEFAULT, seed=SEED + 1)
    assert not np.array_equal(trainer_export(m3)["features"]["solo"][1], got["solo"][1])


def test_zero_value_drops_feature_and_empty_sample_trains_bias():
    text = b"1 z:0\n0 a:0 b:1\n"
    m, s, ref = train_both(text, 2, HP_DEFAULT)
    assert s.samples == 2
    assert [m.table.name(r) for r in range(1, m.n_rows)] == ["b"]
    assert m.table.lookup("z") == -1 and m.table.lookup("a") == -1
    check_same(m, s, ref, 2)


def test_input_grammar_edge_cases():
    """Labels and values in the forms the grammar allows (docs/design.md, "Input lines")
    train as the numbers they denote."""
    text = (b"1 a:2 b c\n0 b:1 c:-1 d\n"
            b"1\n"                                  # no features: trains the bias
            b"0.5 a:.5 b:5.\n-0.5 a:+2 c:1E3\n"    # label > 0 is positive
            b"+1 a:2.5e+2 d:00001.5\n"
            b"1e-400 a b\n"                          # label underflows to 0: negative
            b"1 a:1e-400 z1:-0 z2:0.000 z3:0e10 b\n"  # all zero: dropped, no rows
            b"1 a:12345678901234567890 b:0.1234567890123456789\n"
            b"0 a:4.9e-324 b:2.2250738585072011e-308 c:1.0000000000000002\n"
            b"\n \t\n 1 a b \n1\ta\t\tb\r\n0 c:3\r\n"
            b"1 a:1 a:-1 k:v:2\n0 d")                # no final newline; name 'k:v'
    for fvs in (False, True):
        m, s, ref = train_both(text, 2, HP_DEFAULT, fvs=fvs)
        check_same(m, s, ref, 2)
        assert s.samples == 15
        assert sorted(m.table.name(r) for r in range(1, m.n_rows)) == ["a", "b", "c", "d", "k:v"]


def test_comparison_can_fail():
    """The comparison notices a one-flag difference (so a pass means something)."""
    text = data(3, n_lines=120, n_names=40)
    m, s = run_trainer(text, 4, HP_DEFAULT, fvs=True, seed=SEED)
    for ref in (ReferenceFM(4, HP_DEFAULT, fvs=False, seed=SEED),
                ReferenceFM(4, HP_DEFAULT, fvs=True, seed=SEED + 1),
                ReferenceFM(4, HP_DEFAULT[:2] + [0.11] + HP_DEFAULT[3:], fvs=True, seed=SEED)):
        ref.train(parse_text(text))
        with pytest.raises(AssertionError):
            assert_same_state(trainer_export(m), ref.export(), 4)


# ---------------------------------------------------------------------------
# random data against the reference


@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
@pytest.mark.parametrize("dim", [(1, 1, 0), (1, 1, 4), (0, 1, 4), (1, 0, 4)],
                         ids=lambda d: "dim%d,%d,%d" % d)
def test_matches_reference(dim, fvs):
    k0, k1, k = dim
    text = data(11 + k0 + 2 * k1 + k, labels="01" if k0 else "-11")
    m, s, ref = train_both(text, k, HP_DEFAULT, k0, k1, fvs)
    check_same(m, s, ref, k)
    c = ref.counts
    assert c["repeat"] > 20
    if k:
        assert c["zero_grad_v"] > 0
    if fvs and k1:
        assert c["redraw"] > 10
    if fvs and k:
        assert c["fvs_zeroed"] > 10 and c["fvs_zero_used_by_repeat"] > 0


@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
@pytest.mark.parametrize("hp_name", sorted(HP_SETS))
def test_hyper_parameters(hp_name, fvs):
    text = data(21, n_lines=400, n_names=150, labels="-11")
    m, s, ref = train_both(text, 3, HP_SETS[hp_name], fvs=fvs, seed=3)
    check_same(m, s, ref, 3)
    if fvs:
        assert ref.counts["redraw"] > 10


@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
def test_bit_exact_alphafm_arithmetic(fvs):
    """float64 keeps alphaFM's order of operations: the reference (written in that
    order) and the trainer agree bit for bit, not only to 1e-9. -fvs depends on it:
    its re-draw is keyed by the exact bits of w_n."""
    text = data(25, n_lines=300, n_names=120, labels="-11")
    m, s, ref = train_both(text, 4, HP_SETS["big_l1"], fvs=fvs)
    check_same(m, s, ref, 4)
    assert_same_state(trainer_export(m), ref.export(), 4, rtol=0, atol=0)
    if fvs:
        assert ref.counts["redraw"] > 50


def test_lr_l1_zero():
    text = data(22, n_lines=300, n_names=60)
    m, s, ref = train_both(text, 0, HP_SETS["l1_zero"], fvs=True)
    check_same(m, s, ref, 0)


def test_unit_values_few_names():
    text = data(23, n_lines=300, n_names=30, values="unit", extras=False, max_feats=8)
    m, s, ref = train_both(text, 4, HP_DEFAULT)
    check_same(m, s, ref, 4)


def test_many_names_rare_features():
    text = data(24, n_lines=300, n_names=200, zipf=0.8, repeat_prob=0.05)
    m, s, ref = train_both(text, 4, HP_SETS["big_l1"], fvs=True)
    check_same(m, s, ref, 4)


def test_repeated_feature_within_line():
    """Repeats, including a new feature twice in one line under -fvs (the second sees v = 0)."""
    text = (b"1 a a:2 b\n0 b:0.5 c b:-1\n1 a:3 d:1 a:-2 d\n0 e e e:0.5\n1 a b c d e\n"
            b"0 c:2 c:2 f\n1 f:1 g f:-1\n")
    for fvs in (False, True):
        for hp in (HP_DEFAULT, HP_SETS["l1_zero"]):
            m, s, ref = train_both(text, 3, hp, fvs=fvs)
            check_same(m, s, ref, 3)
    assert ref.counts["fvs_zero_used_by_repeat"] > 0


def test_fvs_redraw_when_w_leaves_zero():
    """-fvs: a w that was 0 with w_n > 0 becomes non-zero: v is drawn afresh where v_n == 0."""
    hp = HP_SETS["big_l1"]
    text = b"".join([b"1 a b:0.5\n", b"1 a:2 solo\n"] * 6 + [b"0 solo:3 a\n"] * 3 + [b"1 b:2 a\n"] * 6)
    m, s, ref = train_both(text, 2, hp, fvs=True)
    assert ref.counts["redraw"] > 0
    check_same(m, s, ref, 2)


def test_block_boundaries_crlf_and_growth():
    """Tiny read blocks, CRLF line ends, no final newline and table growth change nothing."""
    text = data(25, n_lines=300, n_names=120, labels="-11")
    k, hp = 4, HP_SETS["big_l1"]
    ref = ReferenceFM(k, hp, fvs=True, seed=SEED).train(parse_text(text))
    crlf = text.replace(b"\n", b"\r\n")[:-2]
    small = Model(k, np.float64, hp=hp, fvs=True, seed=SEED, row_capacity=2, arena_capacity=8)
    for t, kw in ((text, {"block_size": 97}), (crlf, {}), (text, {"model": small})):
        m, s = run_trainer(t, k, hp, fvs=True, seed=SEED, **kw)
        check_same(m, s, ref, k)


def test_large_feature_values_not_clipped():
    """x is used as given (alphaFM and the grammar in docs/design.md, "Input lines", have no limit on |x|).

    Fails today: streamfm.parse clips |x| > 1e9 (VALUE_CLIP) to +-1e9, so a
    value such as a Unix time stamp (1.7e9) trains as 1e9.
    """
    text = b"1 q:2e9\n0 t:1700000000 r\n1 q:-1.5e9 r:3\n"
    m, s, ref = train_both(text, 2, HP_DEFAULT)
    check_same(m, s, ref, 2)


# ---------------------------------------------------------------------------
# threads and float32


def test_two_cores_close_to_one():
    text = data(31, n_lines=20000, n_names=200, labels="01", planted=True)
    m1, s1 = run_trainer(text, 4, HP_DEFAULT, seed=SEED, cores=1, block_size=1 << 14)
    m2, s2 = run_trainer(text, 4, HP_DEFAULT, seed=SEED, cores=2, block_size=1 << 14)
    assert s2.samples == s1.samples == 20000
    assert m2.n_rows == m1.n_rows
    names1 = {m1.table.name(r) for r in range(m1.n_rows)}
    assert {m2.table.name(r) for r in range(m2.n_rows)} == names1
    assert abs(s2.logloss - s1.logloss) < 0.02
    # it learned more than the base rate, so the comparison is not between two constants
    q = s1.positive_rate
    assert s1.logloss < -(q * math.log(q) + (1 - q) * math.log(1 - q)) - 0.02


@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
def test_float32_close_to_float64(fvs):
    text = data(32, n_lines=3000, n_names=150, planted=True)
    m64, s64 = run_trainer(text, 4, HP_DEFAULT, fvs=fvs, seed=SEED)
    m32, s32 = run_trainer(text, 4, HP_DEFAULT, fvs=fvs, seed=SEED, dtype=np.float32)
    assert m32.params.dtype == np.float32
    assert s32.samples == s64.samples
    assert abs(s32.logloss - s64.logloss) < 1e-3
    assert s64.logloss < 0.6  # learned: the 1e-3 is not between two base rates
    assert m32.n_rows == m64.n_rows


# ---------------------------------------------------------------------------
# Hogwild's private hot rows (train.hot_rows, ftrl.hot_copy / hot_merge)


@pytest.mark.parametrize("k", [4, 0])
def test_hot_rows_alone_are_plain_training(monkeypatch, k):
    """One thread training its first rows in a private copy, merged every block,
    gets the reference's numbers exactly: a coordinate no other thread moved
    takes the copy's value as it is (ftrl._plus_change)."""
    from streamfm import train

    monkeypatch.setattr(train, "hot_rows", lambda model, cores: 6)
    text = data(41, n_lines=3000, n_names=40)
    m, s, ref = train_both(text, k, HP_SETS["l1_zero"], block_size=1 << 11)
    assert m.n_rows > 6 and s.samples == 3000
    check_same(m, s, ref, k)
    monkeypatch.setattr(train, "hot_rows", lambda model, cores: 0)
    plain, _ = run_trainer(text, k, HP_SETS["l1_zero"], seed=SEED, block_size=1 << 11)
    np.testing.assert_array_equal(m.params[: m.n_rows], plain.params[: plain.n_rows])


def _true_z(n, zs):
    return np.where(n > 0, zs, 0.0)


def _merge_reference(shared, hot, base, k):
    """ftrl.hot_merge by the rule in its docstring, column by column in numpy."""
    out = shared.copy()
    W_, WN_, WZ_, VN_ = 0, 1, 2, 3

    def plus(s, h, b):
        return np.where(s == b, h, s + (h - b))

    moved_w = (hot[:, WN_] != base[:, WN_]) | (hot[:, WZ_] != base[:, WZ_])
    out[:, W_] = np.where(hot[:, W_] != base[:, W_], hot[:, W_], shared[:, W_])
    out[:, WN_] = np.where(moved_w, plus(shared[:, WN_], hot[:, WN_], base[:, WN_]), shared[:, WN_])
    out[:, WZ_] = np.where(moved_w, plus(shared[:, WZ_], hot[:, WZ_], base[:, WZ_]), shared[:, WZ_])
    for f in range(k):
        cn, cz = VN_ + f, VN_ + k + f
        moved = (hot[:, cn] != base[:, cn]) | (hot[:, cz] != base[:, cz])
        n = plus(shared[:, cn], hot[:, cn], base[:, cn])
        z = plus(_true_z(shared[:, cn], shared[:, cz]), _true_z(hot[:, cn], hot[:, cz]),
                 _true_z(base[:, cn], base[:, cz]))
        take = moved & (n > 0)
        out[:, cn] = np.where(take, n, shared[:, cn])
        out[:, cz] = np.where(take, z, shared[:, cz])
    return out


def test_hot_merge_adds_both_threads_changes():
    """Two threads' changes to the same rows both land: n and z as sums of
    each thread's increments, z taken as 0 where the column still holds the
    initial v (n = 0), rows and factors nobody touched left alone."""
    from streamfm import ftrl

    rng = np.random.default_rng(5)
    k, n_rows = 3, 40
    base = rng.normal(size=(n_rows, ftrl.n_cols(k)))
    base[:, ftrl.WN] = rng.uniform(0, 2, n_rows)
    base[:, ftrl.VN:ftrl.VN + k] = np.where(rng.random((n_rows, k)) < 0.4, 0.0, rng.uniform(0, 2, (n_rows, k)))
    mine, other = base.copy(), base.copy()

    def move(a, p):
        """A thread's block: n grows, z changes (a fresh factor's column turns from v into z)."""
        rows = rng.random(n_rows) < p
        a[rows, ftrl.W] = rng.normal(size=rows.sum())
        a[rows, ftrl.WN] += rng.uniform(0.1, 1, rows.sum())
        a[rows, ftrl.WZ] += rng.normal(size=rows.sum())
        for f in range(k):
            cols = rows & (rng.random(n_rows) < 0.7)
            fresh = cols & (a[:, ftrl.VN + f] == 0)
            a[fresh, ftrl.VN + k + f] = 0.0  # z starts from 0 where v sat
            a[cols, ftrl.VN + f] += rng.uniform(0.1, 1, cols.sum())
            a[cols, ftrl.VN + k + f] += rng.normal(size=cols.sum())
        return rows

    mine_rows, other_rows = move(mine, 0.6), move(other, 0.6)
    assert (mine_rows & other_rows).any() and (mine_rows & ~other_rows).any() and (~mine_rows & ~other_rows).any()
    shared = other.copy()  # the other thread merged first
    got = shared.copy()
    assert ftrl.hot_merge(got, mine, base, n_rows, k) == 0
    np.testing.assert_array_equal(got, _merge_reference(shared, mine, base, k))
    # the rule's meaning, on a factor both threads took from n = 0: z is the sum of their z
    both = np.flatnonzero(mine_rows & other_rows)
    r, f = next((r, f) for r in both for f in range(k) if base[r, ftrl.VN + f] == 0
                and mine[r, ftrl.VN + f] > 0 and other[r, ftrl.VN + f] > 0)
    assert got[r, ftrl.VN + k + f] == pytest.approx(mine[r, ftrl.VN + k + f] + other[r, ftrl.VN + k + f])
    assert got[r, ftrl.VN + f] == pytest.approx(mine[r, ftrl.VN + f] + other[r, ftrl.VN + f] - 0.0)
    # rows past n_hot are not the merge's
    got2 = shared.copy()
    ftrl.hot_merge(got2, mine, base, 10, k)
    np.testing.assert_array_equal(got2[10:], shared[10:])


def test_hot_merge_refuses_overflow():
    from streamfm import ftrl

    k = 1
    base = np.zeros((2, ftrl.n_cols(k)), dtype=np.float32)
    shared, hot = base.copy(), base.copy()
    shared[1, ftrl.WN] = 3e38  # another thread's n, near float32's largest
    hot[1, ftrl.WN] = 3e38
    hot[1, ftrl.WZ] = 1.0
    assert ftrl.hot_merge(shared, hot, base, 2, k) == 1
    assert shared[1, ftrl.WN] == np.float32(3e38) and shared[1, ftrl.WZ] == 0.0


def test_hot_rows_rule():
    from streamfm.train import HOT_BYTES, HOT_ROWS, hot_rows

    assert hot_rows(Model(8), 1) == 0  # one thread: alphaFM's run, untouched
    assert hot_rows(Model(8), 2) == HOT_ROWS
    assert hot_rows(Model(8, fvs=True), 2) == 0
    big = Model(200)  # 403 columns of 8 bytes: as many rows as HOT_BYTES holds
    assert hot_rows(big, 4) == HOT_BYTES // (403 * 8) < HOT_ROWS
