"""Incremental training: A, write, load, then B equals A+B in one run, exactly.

Through the Python API (txt and bin, -fvs 0/1, k 0/4), through the fm_train
command (-im), and from a model file written by alphaFM (6 significant
digits), which must continue exactly as the reference does from that state.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from streamfm.model import Model, read_model, write_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import without_hash_key  # noqa: E402
from reference import (  # noqa: E402
    ReferenceFM, assert_same_state, initial_v, parse_text, random_lines,
    read_alphafm_text, run_trainer, trainer_export)

HP = [0.05, 1.0, 0.1, 5.0, 0.05, 1.0, 0.1, 5.0, 0.1]
HP_BIG_L1 = [0.3, 1.0, 0.8, 1.0, 0.1, 0.5, 0.05, 0.5, 0.5]
SEED = 5
BIN_DIR = os.path.dirname(sys.executable)
FM_TRAIN = os.path.join(BIN_DIR, "fm_train")


def two_parts(seed, n_a=250, n_b=200):
    """A and B: B has A's names and new ones (more names, fresh solo lines)."""
    rng = np.random.default_rng(seed)
    a = random_lines(rng, n_a, 80)
    b = random_lines(rng, n_b, 140).replace(b"solo", b"solo_b")
    return a, b


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


def assert_arrays_identical(x, y):
    assert x.n_rows == y.n_rows and x.k == y.k
    assert x.dtype == y.dtype
    assert np.array_equal(x.name_off, y.name_off)
    assert bytes(x.arena[: x.name_off[-1]]) == bytes(y.arena[: y.name_off[-1]])
    assert np.array_equal(bits(x.weights), bits(y.weights)), "weights (w, v) differ"
    assert np.array_equal(bits(state_of(x)), bits(state_of(y))), "state (w_n, w_z, v_n, v_z) differ"


def state_of(arrays):
    """alphaFM's state columns, whether the file kept them or the FTRL rows."""
    return np.concatenate([c[3] for c in arrays.chunks(weights=False, state=True)])


def assert_models_identical(m1, m2):
    n = m1.n_rows
    assert m2.n_rows == n
    assert [m1.table.name_bytes(r) for r in range(n)] == [m2.table.name_bytes(r) for r in range(n)]
    assert np.array_equal(bits(m1.params[:n]), bits(m2.params[:n])), "internal FTRL rows differ"


def continue_from(path, hp, fvs, seed, dtype=None):
    arrays = read_model(path, dtype=dtype)
    return Model.from_arrays(arrays, hp, fvs, seed, dtype=dtype)


# ---------------------------------------------------------------------------
# Python API


@pytest.mark.parametrize("k", [0, 4])
@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_a_then_b_equals_ab(tmp_path, fmt, fvs, k):
    hp = HP_BIG_L1 if fvs else HP
    a, b = two_parts(40 + k + fvs)
    m_a, s_a = run_trainer(a, k, hp, fvs=fvs, seed=SEED)
    pa = str(tmp_path / ("a." + fmt))
    write_model(m_a, pa, fmt)
    m_b = continue_from(pa, hp, fvs, SEED)
    _, s_b = run_trainer(b, k, hp, fvs=fvs, seed=SEED, model=m_b)
    m_ab, s_ab = run_trainer(a + b, k, hp, fvs=fvs, seed=SEED)
    assert s_a.samples + s_b.samples == s_ab.samples
    assert m_b.n_rows > m_a.n_rows  # B brought new features
    assert_models_identical(m_b, m_ab)
    p1, p2 = str(tmp_path / ("ab." + fmt)), str(tmp_path / ("ab2." + fmt))
    write_model(m_b, p1, fmt)
    write_model(m_ab, p2, fmt)
    with open(p1, "rb") as f1, open(p2, "rb") as f2:
        assert without_hash_key(f1.read()) == without_hash_key(f2.read())
    assert_arrays_identical(read_model(p1), read_model(p2))
    # and both equal the reference's A+B (so "identical" is not "identically wrong")
    ref = ReferenceFM(k, hp, fvs=fvs, seed=SEED).train(parse_text(a + b))
    assert_same_state(trainer_export(m_ab), ref.export(), k)
    if fvs:
        assert ref.counts["redraw"] > 0


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_empty_continuation_rewrites_same_file(tmp_path, fmt):
    a, _ = two_parts(45)
    m_a, _ = run_trainer(a, 4, HP_BIG_L1, fvs=True, seed=SEED)
    pa, pb = str(tmp_path / ("a." + fmt)), str(tmp_path / ("b." + fmt))
    write_model(m_a, pa, fmt)
    m_b = continue_from(pa, HP_BIG_L1, True, SEED)
    run_trainer(b"", 4, HP_BIG_L1, fvs=True, seed=SEED, model=m_b)
    write_model(m_b, pb, fmt)
    # byte for byte, hash key included: a continued binary model keeps its key
    with open(pa, "rb") as f1, open(pb, "rb") as f2:
        assert f1.read() == f2.read()


def test_three_runs_through_txt_then_bin(tmp_path):
    a, b = two_parts(50)
    c = random_lines(np.random.default_rng(51), 150, 160).replace(b"solo", b"solo_c")
    k, hp = 3, HP_BIG_L1
    m, _ = run_trainer(a, k, hp, fvs=True, seed=SEED)
    write_model(m, str(tmp_path / "a.txt"), "txt")
    m = continue_from(str(tmp_path / "a.txt"), hp, True, SEED)
    run_trainer(b, k, hp, fvs=True, seed=SEED, model=m)
    write_model(m, str(tmp_path / "ab.bin"), "bin")
    m = continue_from(str(tmp_path / "ab.bin"), hp, True, SEED)
    run_trainer(c, k, hp, fvs=True, seed=SEED, model=m)
    m_all, _ = run_trainer(a + b + c, k, hp, fvs=True, seed=SEED)
    assert_models_identical(m, m_all)


def test_float32_through_txt(tmp_path):
    a, b = two_parts(52)
    k, hp = 4, HP_BIG_L1
    m_a, _ = run_trainer(a, k, hp, fvs=True, seed=SEED, dtype=np.float32)
    write_model(m_a, str(tmp_path / "a.txt"), "txt")
    m_b = continue_from(str(tmp_path / "a.txt"), hp, True, SEED, dtype=np.float32)
    assert m_b.params.dtype == np.float32
    run_trainer(b, k, hp, fvs=True, seed=SEED, model=m_b)
    m_ab, _ = run_trainer(a + b, k, hp, fvs=True, seed=SEED, dtype=np.float32)
    assert_models_identical(m_b, m_ab)


def test_feature_named_bias_survives_reload(tmp_path):
    a = b"1 bias:2 x\n0 x bias\n"
    b = b"1 bias y\n0 y:3 x:-1\n"
    m_a, _ = run_trainer(a, 2, HP, seed=SEED)
    write_model(m_a, str(tmp_path / "a.txt"), "txt")
    m_b = continue_from(str(tmp_path / "a.txt"), HP, False, SEED)
    assert m_b.n_rows == 3 and m_b.table.name(1) == "bias"
    run_trainer(b, 2, HP, seed=SEED, model=m_b)
    m_ab, _ = run_trainer(a + b, 2, HP, seed=SEED)
    assert_models_identical(m_b, m_ab)


# ---------------------------------------------------------------------------
# fm_train -im


def fm_train(*args, stdin=None):
    proc = subprocess.run([FM_TRAIN] + [str(x) for x in args], input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


@pytest.mark.parametrize("fmt,extra", [
    ("txt", ["-dim", "1,1,4", "-fvs", "1", "-w_l1", "0.8", "-v_alpha", "0.1", "-init_stdev", "0.5"]),
    ("bin", ["-dim", "1,1,0", "-mnt", "float"]),
], ids=["txt-fvs1", "bin-lr-float"])
def test_cli_incremental(tmp_path, fmt, extra):
    a, b = two_parts(60)
    (tmp_path / "A").write_bytes(a)
    (tmp_path / "B").write_bytes(b)
    common = ["-core", "1", "--seed", "9", "--quiet", "-mf", fmt] + extra
    ma, mab, mab2 = (tmp_path / ("a." + fmt), tmp_path / ("ab." + fmt), tmp_path / ("ab2." + fmt))
    fm_train("-m", ma, "--input", tmp_path / "A", *common)
    fm_train("-im", ma, "-m", mab, *common, stdin=b)
    fm_train("-m", mab2, *common, stdin=a + b)
    assert without_hash_key(mab.read_bytes()) == without_hash_key(mab2.read_bytes())
    assert_arrays_identical(read_model(str(mab)), read_model(str(mab2)))
    assert read_model(str(mab)).n_rows > read_model(str(ma)).n_rows


# ---------------------------------------------------------------------------
# a model written by alphaFM (6 significant digits, v_z = 0 where v_n = 0)

ALPHAFM_MODEL = """\
bias -0.0345679 41.2346 2.30864
f0 0.0123457 0.0234568 -0.0345679 0.0456789 8.76543 -0.432198 1.23457 2.34568 3.45679 -0.0567891 0.0678912 -0.0789123
f1 0 0 0 0 2.5 0.0512346 0.5 0.25 0.125 -0.01 0.02 -0.03
f2 0 0.0876543 0 -0.123457 3.2 -0.912346 0 1.2e-05 0 0 -0.000123457 0
f3 -0.0456789 0.11 -0.05 0.02 1.5 0.987654 0 0 0 0 0 0
keep_me 0.00123457 0.0987654 -0.0765432 0.0543210 0.75 -0.345678 0 0 0 0 0 0
f5 1e-06 -1.2e-05 3.4e-06 0 0.000123457 -1.2e-05 1e-06 2e-06 0 -1.2e-05 3e-06 0
f6 0 -0.0111111 0.0222222 -0.0333333 0 0 0 0 0 0 0 0
f7 0.234568 -0.345679 0.456789 -0.567891 12.3457 -5.67891 4.56789 3.45678 2.34567 1.23457 -2.34568 0.345679
"""
K_ALPHAFM = 3


def alphafm_b_lines():
    rng = np.random.default_rng(70)
    b = random_lines(rng, 250, 16, extras=False, max_feats=8)
    assert b"keep_me" not in b
    # a few lines that make sure the special rows are used
    return b + b"1 f2:1.5 f3 f6:-2\n0 f3:0.5 g_new\n1 f2 f1 f5:3\n0 f6 f3:2 f2\n"


@pytest.mark.parametrize("dim", [(1, 1), (0, 1), (1, 0)], ids=["dim1,1,3", "dim0,1,3", "dim1,0,3"])
@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
def test_continue_alphafm_model(tmp_path, fvs, dim):
    k0, k1 = dim
    k = K_ALPHAFM
    path = tmp_path / "alpha.txt"
    path.write_text(ALPHAFM_MODEL)
    bias, feats = read_alphafm_text(ALPHAFM_MODEL, k)
    m = continue_from(str(path), HP, fvs, SEED)
    ref = ReferenceFM(k, HP, k0=k0, k1=k1, fvs=fvs, seed=SEED).load(bias, feats)
    # loaded as-is: v with v_n == 0 is the file's value, not a fresh draw
    assert_same_state(trainer_export(m), ref.export(), k, rtol=0, atol=0)
    got = trainer_export(m)["features"]
    for name in ("f3", "keep_me", "f6"):
        assert np.array_equal(got[name][1], np.array(feats[name][1]))
        assert not np.allclose(got[name][1], initial_v(name, k, SEED, HP[8]))
    b = alphafm_b_lines()
    _, s = run_trainer(b, k, HP, k0=k0, k1=k1, fvs=fvs, seed=SEED, model=m)
    ref.train(parse_text(b))
    assert_same_state(trainer_export(m), ref.export(), k)
    assert s.logloss == pytest.approx(ref.logloss(), rel=1e-9, abs=1e-9)
    got = trainer_export(m)["features"]
    # keep_me was not in B: its v (v_n == 0) is still the file's value
    assert np.array_equal(got["keep_me"][1], np.array(feats["keep_me"][1]))
    assert got["keep_me"][0] == feats["keep_me"][0]
    if fvs and k1:
        assert ref.counts["redraw"] > 0  # f2: w 0 in the file, |w_z| > l1


def test_cli_continue_alphafm_model(tmp_path):
    k = K_ALPHAFM
    (tmp_path / "alpha.txt").write_text(ALPHAFM_MODEL)
    b = alphafm_b_lines()
    out = tmp_path / "out.txt"
    fm_train("-im", tmp_path / "alpha.txt", "-m", out, "-dim", "1,1,3", "-fvs", "1", "-core", "1",
             "--seed", SEED, "--quiet", stdin=b)
    bias, feats = read_alphafm_text(ALPHAFM_MODEL, k)
    ref = ReferenceFM(k, HP, fvs=True, seed=SEED).load(bias, feats).train(parse_text(b))
    obias, ofeats = read_alphafm_text(out.read_text(), k)
    got = {"bias": obias, "features": {n: (w, np.array(v), wn, wz, np.array(vn), np.array(vz))
                                       for n, (w, v, wn, wz, vn, vz) in ofeats.items()}}
    assert_same_state(got, ref.export(), k)
