"""Model files (docs/design.md, "File formats"): alphaFM text, streamfm text and binary,
stripped models, fm_dump, and clean one-line errors for every broken file."""

import io
import math
import os

import msgpack
import numpy as np
import pytest

from helpers import (TEST, TRAIN, assert_ok, assert_one_line_error, check_message, fm_dump, fm_predict, fm_train,
                     model_names, predictions, text)
from streamfm.model import MAGIC, Model, ModelArrays, ModelError, read_model, write_model
from streamfm.predict import ServingModel
from streamfm.train import Options, train_stream


def train_model(data, k=3, dtype=np.float64, seed=0):
    m = Model(k, dtype, seed=seed)
    train_stream(m, io.BytesIO(data), Options(quiet=True), lambda s: None)
    return m


def model_arrays(m):
    w = np.concatenate([c[2] for c in m.chunks()])
    s = np.concatenate([c[3] for c in m.chunks()])
    return w, s


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def train_bytes():
    with open(TRAIN, "rb") as f:
        return b"".join(f.readlines()[:3000])


@pytest.fixture(scope="module")
def tbytes():
    with open(TEST, "rb") as f:
        return b"".join(f.readlines()[:400])


@pytest.fixture(scope="module")
def trained(train_bytes):
    return train_model(train_bytes, k=3, seed=5)


@pytest.fixture(scope="module")
def full_txt(trained, tmp_path_factory):
    p = tmp_path_factory.mktemp("full") / "model.txt"
    write_model(trained, str(p), "txt")
    return p


@pytest.fixture(scope="module")
def full_bin(trained, tmp_path_factory):
    p = tmp_path_factory.mktemp("fullbin") / "model.bin"
    write_model(trained, str(p), "bin")
    return p


# ---------------------------------------------------------------------------
# alphaFM's text model, by hand

ALPHA_K = 3
# bias w w_n w_z / name w v1 v2 v3 w_n w_z v_n1..3 v_z1..3, six significant digits as alphaFM writes
ALPHA_MODEL = b"""bias -0.412345 12.3457 4.56789
a 0.123457 0.0123457 -0.234568 0.345679 3.21 -1.5 0.5 0.25 0 -0.1 0.2 0
b -0.0987654 -1.23457e-05 0.456789 -0.0567891 2 0.75 1.25 1 0.5 0.3 -0.4 0.05
c 0 0.111111 0.222222 -0.333333 0 0 0 0 0 0 0 0
http://x.com/y 1.5e-07 0.5 -0.5 1 1 2 3 4 5 6 7 8
"""
ALPHA_INPUT = b"""1 a:1 b:0.5 unknown:3
0 a c:2
-1 b
1
1 c:1.5 a:2 http://x.com/y:1 nothere
1 a:1 a:1
"""


def _alpha_table():
    rows = {}
    for ln in ALPHA_MODEL.splitlines():
        f = ln.split()
        rows[f[0].decode()] = [float(x) for x in f[1:]]
    return rows


def fm_prob_exact(w0, feats, table, k):
    """sigmoid(w0 + sum w x + 0.5 sum_f ((sum v x)^2 - sum (v x)^2)), alphaFM's order of operations."""
    p = 0.0
    p += w0
    known = [(table.get(n), x) for n, x in feats]
    for row, x in known:
        p += (row[0] if row else 0.0) * x
    vsum = [0.0] * k
    vsq = [0.0] * k
    for row, x in known:
        for f in range(k):
            d = (row[1 + f] if row else 0.0) * x
            vsum[f] += d
            vsq[f] += d * d
    for f in range(k):
        p += 0.5 * (vsum[f] * vsum[f] - vsq[f])
    return 1.0 / (1.0 + math.exp(-p))


def fm_prob_naive(w0, feats, table, k):
    """The same formula written the obvious way (numpy), unknown features skipped."""
    known = [(np.array(table[n]), x) for n, x in feats if n in table]
    s = w0 + sum(r[0] * x for r, x in known)
    if known:
        vx = np.array([r[1:1 + k] * x for r, x in known])
        s += 0.5 * float(np.sum(vx.sum(axis=0) ** 2 - (vx ** 2).sum(axis=0)))
    return 1.0 / (1.0 + math.exp(-s))


def _samples(data):
    out = []
    for ln in data.splitlines():
        toks = ln.split()
        feats = []
        for t in toks[1:]:
            name, _, val = t.rpartition(b":")
            feats.append((name, float(val)) if name else (t, 1.0))
        out.append((1 if float(toks[0]) > 0 else -1, [(n.decode(), x) for n, x in feats]))
    return out


def test_alphafm_text_model_loads(tmp_path):
    path = tmp_path / "alpha.txt"
    path.write_bytes(ALPHA_MODEL)
    a = read_model(str(path), state=True)
    table = _alpha_table()
    assert a.k == ALPHA_K and a.n_rows == 5
    assert model_names(a) == [b"bias", b"a", b"b", b"c", b"http://x.com/y"]
    for r, name in enumerate(model_names(a)):
        vals = table[name.decode()]
        if r == 0:
            assert a.weights[0].tolist() == [vals[0], 0.0, 0.0, 0.0]
            assert a.state[0].tolist() == [vals[1], vals[2]] + [0.0] * (2 * ALPHA_K)
        else:
            assert a.weights[r].tolist() == vals[:1 + ALPHA_K]
            assert a.state[r].tolist() == vals[1 + ALPHA_K:]


def test_alphafm_text_model_predicts_by_the_formula(tmp_path):
    path = tmp_path / "alpha.txt"
    path.write_bytes(ALPHA_MODEL)
    proc = fm_predict("-m", path, "-dim", ALPHA_K, input=ALPHA_INPUT)
    assert_ok(proc)
    got = predictions(proc.stdout)
    table = _alpha_table()
    w0 = table.pop("bias")[0]
    want = _samples(ALPHA_INPUT)
    assert [g[0] for g in got] == [y for y, _ in want]
    for (y, prob), (_, feats) in zip(got, want):
        exact = fm_prob_exact(w0, feats, table, ALPHA_K)
        assert prob == pytest.approx(fm_prob_naive(w0, feats, table, ALPHA_K), rel=1e-12, abs=1e-15)
        assert prob == exact, (feats, prob, exact)
    # the label-only line scores the bias alone
    assert got[3][1] == 1.0 / (1.0 + math.exp(-w0))


def test_alphafm_model_continues_with_its_state(tmp_path):
    """-im of an alphaFM model with no new samples keeps w and every FTRL number."""
    src = tmp_path / "alpha.txt"
    src.write_bytes(ALPHA_MODEL)
    out = tmp_path / "out.txt"
    proc = fm_train("-im", src, "-m", out, "-dim", "1,1,%d" % ALPHA_K, "--quiet", "--allow-empty", input=b"")
    assert_ok(proc)
    a = read_model(str(src))
    b = read_model(str(out))
    assert model_names(a) == model_names(b)
    assert bits_equal(a.state, b.state)
    assert bits_equal(a.weights[:, 0], b.weights[:, 0])
    vn0 = a.state[:, 2:2 + ALPHA_K] == 0
    assert np.array_equal(a.weights[:, 1:][vn0], b.weights[:, 1:][vn0])


# ---------------------------------------------------------------------------
# exact round trips


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_text_model_round_trips_exactly(tmp_path, train_bytes, dtype):
    m = train_model(train_bytes[:300000], k=4, dtype=dtype, seed=3)
    w, s = model_arrays(m)
    p1, p2 = tmp_path / "a.txt", tmp_path / "b.txt"
    write_model(m, str(p1), "txt")
    a = read_model(str(p1), dtype=dtype)
    assert bits_equal(a.weights, w) and bits_equal(a.state, s)
    assert model_names(a) == [m.table.name_bytes(r) for r in range(m.n_rows)]
    write_model(a, str(p2), "txt")
    assert p1.read_bytes() == p2.read_bytes()
    b = read_model(str(p2), dtype=dtype)
    assert bits_equal(a.weights, b.weights) and bits_equal(a.state, b.state)
    # the numbers really carry more than alphaFM's 6 digits
    assert any(len(t) > 9 for t in p1.read_bytes().split()[:200])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bin_model_round_trips_exactly(tmp_path, train_bytes, dtype):
    m = train_model(train_bytes[:300000], k=4, dtype=dtype, seed=3)
    w, s = model_arrays(m)
    p1, p2 = tmp_path / "a.bin", tmp_path / "b.bin"
    write_model(m, str(p1), "bin")
    a = read_model(str(p1))
    assert a.dtype == np.dtype(dtype)
    # a full binary model keeps the trainer's FTRL rows; w, v and alphaFM's
    # state columns are derived from them exactly as the writers derive them
    assert bits_equal(a.params, m.params[: m.n_rows])
    assert bits_equal(a.weights, w) and bits_equal(np.concatenate([c[3] for c in a.chunks()]), s)
    write_model(a, str(p2), "bin")
    assert p1.read_bytes() == p2.read_bytes()


def test_txt_bin_txt_is_identical(tmp_path, full_txt):
    b = tmp_path / "m.bin"
    t = tmp_path / "m2.txt"
    assert_ok(fm_dump("convert", full_txt, b))
    assert b.read_bytes()[:8] == MAGIC
    assert_ok(fm_dump("convert", b, t))
    assert t.read_bytes() == full_txt.read_bytes()


# ---------------------------------------------------------------------------
# stripped models


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_stripped_model_predicts_like_the_full_one(tmp_path, full_txt, full_bin, tbytes, fmt):
    full = full_txt if fmt == "txt" else full_bin
    stripped = tmp_path / ("s." + fmt)
    assert_ok(fm_dump("strip", full, stripped))
    assert stripped.stat().st_size < 0.6 * full.stat().st_size
    s = read_model(str(stripped), state=None)
    f = read_model(str(full), state=None)
    assert not s.has_state and f.has_state
    assert bits_equal(s.weights, f.weights)
    assert model_names(s) == model_names(f)
    if fmt == "txt":
        lines = stripped.read_bytes().splitlines()
        assert len(lines[0].split()) == 2 and all(len(ln.split()) == 2 + 3 for ln in lines[1:])
    a = fm_predict("-m", full, input=tbytes)
    b = fm_predict("-m", stripped, input=tbytes)
    assert_ok(a)
    assert_ok(b)
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 400
    # ... but it cannot be trained further
    out = tmp_path / "cont.txt"
    proc = fm_train("-im", stripped, "-m", out, "-dim", "1,1,3", input=b"1 a\n")
    assert_one_line_error(proc, stripped, "stripped", "-im")
    assert not out.exists()
    with pytest.raises(ModelError, match="stripped"):
        read_model(str(stripped), state=True)


# ---------------------------------------------------------------------------
# --nonzero, embeddings, info


def _arrays(names, weights, state=None, k=2):
    lens = [len(n) for n in names]
    off = np.zeros(len(names) + 1, np.int64)
    off[1:] = np.cumsum(lens)
    arena = np.frombuffer(b"".join(names), np.uint8).copy()
    w = np.array(weights, np.float64)
    s = None if state is None else np.array(state, np.float64)
    return ModelArrays(arena, off, w, s, {"k": k})


NZ_NAMES = [b"bias", b"zero1", b"w_only", b"v_only", b"zero2", b"both", b"negzero", b"state_only"]
NZ_W = [[0.0, 0, 0], [0, 0, 0], [0.5, 0, 0], [0, 0, -0.25], [0, 0, 0], [1, 2, 3], [-0.0, -0.0, 0.0],
        [0, 0, 0]]
NZ_S = [[1, 2, 0, 0, 0, 0], [0] * 6, [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0.5], [0] * 6, [1] * 6, [0] * 6,
        [3, -0.2, 1, 1, 0.1, 0.1]]
NZ_KEEP = [b"bias", b"w_only", b"v_only", b"both"]


@pytest.fixture
def nz_model(tmp_path):
    p = tmp_path / "nz.txt"
    write_model(_arrays(NZ_NAMES, NZ_W, NZ_S), str(p), "txt")
    return p


@pytest.mark.parametrize("cmd", ["convert", "strip"])
def test_nonzero_drops_exactly_the_all_zero_features(tmp_path, nz_model, cmd):
    out = tmp_path / ("out." + ("bin" if cmd == "convert" else "txt"))
    assert_ok(fm_dump(cmd, nz_model, out, "--nonzero"))
    a = read_model(str(out), state=None)
    assert model_names(a) == NZ_KEEP
    idx = [NZ_NAMES.index(n) for n in NZ_KEEP]
    assert a.weights.tolist() == [NZ_W[i] for i in idx]
    if cmd == "convert":
        state = np.concatenate([c[3] for c in a.chunks(weights=False)])
        assert state.tolist() == [NZ_S[i] for i in idx]
    else:
        assert not a.has_state


def test_embeddings_txt(tmp_path, full_txt):
    out = tmp_path / "emb.txt"
    assert_ok(fm_dump("embeddings", full_txt, out))
    a = read_model(str(full_txt), state=False)
    lines = out.read_bytes().splitlines()
    assert len(lines) == a.n_rows - 1
    for r, ln in enumerate(lines, start=1):
        f = ln.split()
        assert f[0] == a.name_bytes(r)
        assert [float(x) for x in f[1:]] == a.weights[r, 1:].tolist()


def test_embeddings_npy(tmp_path, full_txt):
    out = tmp_path / "emb.npy"
    assert_ok(fm_dump("embeddings", full_txt, out, "--format", "npy"))
    a = read_model(str(full_txt), state=False)
    v = np.load(str(out))
    assert v.shape == (a.n_rows - 1, 3)
    assert bits_equal(v, np.ascontiguousarray(a.weights[1:, 1:]))
    names = (tmp_path / "emb.npy.names").read_bytes().split(b"\n")
    assert names[-1] == b""
    assert names[:-1] == model_names(a)[1:]


def test_embeddings_nonzero(tmp_path, nz_model):
    out = tmp_path / "emb.txt"
    assert_ok(fm_dump("embeddings", nz_model, out, "--nonzero"))
    lines = [ln.split() for ln in out.read_bytes().splitlines()]
    assert [ln[0] for ln in lines] == [b"v_only", b"both"]
    assert [[float(x) for x in ln[1:]] for ln in lines] == [[0.0, -0.25], [2.0, 3.0]]


def _info(proc):
    assert_ok(proc)
    out = {}
    for ln in text(proc.stdout).splitlines():
        key, _, val = ln.partition("  ")
        out[key.strip()] = val.strip()
    return out


def test_info_counts(tmp_path, nz_model, full_bin):
    i = _info(fm_dump("info", nz_model))
    assert i["features"] == "7"
    assert i["non-zero w"] == "2"          # w_only, both (negzero's w is -0.0)
    assert i["non-zero v"] == "2 rows"     # v_only, both
    assert i["dim"].startswith("2 ")
    assert i["format"] == "txt"
    assert float(i["bias"]) == 0.0
    a = read_model(str(full_bin))
    i = _info(fm_dump("info", full_bin))
    assert i["format"] == "bin"
    assert i["features"] == "{:,}".format(a.n_rows - 1)
    assert i["non-zero w"] == "{:,}".format(int(np.count_nonzero(a.weights[1:, 0])))
    assert i["non-zero v"] == "{:,} rows".format(int(np.count_nonzero(np.any(a.weights[1:, 1:] != 0, axis=1))))
    assert float(i["bias"]) == a.weights[0, 0]
    assert i["samples seen"] == "3,000"
    assert "w_alpha=0.05" in i["hyper"]
    stripped = tmp_path / "s.bin"
    assert_ok(fm_dump("strip", full_bin, stripped))
    assert "stripped" in _info(fm_dump("info", stripped))["format"]
    # a binary model converted from text knows no more than the text did, and says why
    conv = tmp_path / "conv.bin"
    assert_ok(fm_dump("convert", nz_model, conv))
    i = _info(fm_dump("info", conv))
    assert i["format"] == "bin"
    assert i["samples seen"] == i["hyper"] == "unknown (not in the file: a text model, or one converted from text)"


def test_info_of_a_corrupt_full_model_is_not_called_stripped(tmp_path):
    """A full model whose state columns are damaged is an error, not a 'stripped' model."""
    p = tmp_path / "bad.txt"
    p.write_bytes(b"bias 0.1 0.2 0.3\na 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9\nb 0.1 0.2 0.3 0.4 0.5 0.6 0.7 x 0.9\n")
    proc = fm_dump("info", p)
    assert "stripped" not in text(proc.stdout)
    assert_one_line_error(proc, p, "line 3", "not a number")


def test_two_binary_models_joined_are_refused(tmp_path, full_bin):
    joined = tmp_path / "joined.bin"
    joined.write_bytes(full_bin.read_bytes() * 2)
    for proc in (fm_dump("info", joined), fm_predict("-m", joined, input=b"1 a\n")):
        assert_one_line_error(proc, joined, "bytes after the end the header gives", "two files joined?")


def test_feature_named_bias_is_a_normal_feature(tmp_path):
    m = train_model(b"1 bias:2 x\n0 bias x:3\n1 y bias\n" * 20, k=2, seed=1)
    assert m.table.lookup("bias") > 0
    p = tmp_path / "m.txt"
    write_model(m, str(p), "txt")
    lines = p.read_bytes().splitlines()
    assert sum(ln.startswith(b"bias ") for ln in lines) == 2
    a = read_model(str(p))
    r = model_names(a).index(b"bias", 1)
    assert r > 0
    s = ServingModel.load(str(p))
    assert s.table.lookup("bias") == r
    w0, wb = a.weights[0, 0], a.weights[r, 0]
    assert wb != w0
    proc = fm_predict("-m", p, input=b"1 bias:2\n1 \n")
    assert_ok(proc)
    got = predictions(proc.stdout)
    p1 = 0.0
    p1 += w0
    p1 += wb * 2.0
    assert got == [(1, 1.0 / (1.0 + math.exp(-p1))), (1, 1.0 / (1.0 + math.exp(-w0)))]
    # and a continued run keeps both rows apart
    out = tmp_path / "m2.txt"
    assert_ok(fm_train("-im", p, "-m", out, "-dim", "1,1,2", "-q", input=b"1 bias\n"))
    assert model_names(read_model(str(out))) == model_names(a)


# ---------------------------------------------------------------------------
# broken files: one-line errors naming the file, exit 1, no traceback

GOOD_K2 = (b"bias 0.1 0.2 0.3\n"
           b"a 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9\n"
           b"b -0.5 0.25 0.125 1 2 3 4 5 6\n")


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _check_api(path, needles, **kw):
    with pytest.raises(ModelError) as ei:
        read_model(str(path), **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    check_message(msg, [path] + list(needles))


def _check_cli(path, needles, cmd="predict", k=2):
    """The same failure through a command (None: the API check is enough)."""
    if cmd is None:
        return
    if cmd == "predict":
        proc = fm_predict("-m", path, input=b"1 a b\n")
    elif cmd == "train":
        proc = fm_train("-im", path, "-m", str(path) + ".out", "-dim", "1,1,%d" % k, "-q", input=b"1 a b\n")
        assert not os.path.exists(str(path) + ".out")
    else:
        proc = fm_dump("info", path)
    assert proc.stdout == b"" or cmd == "info"
    assert_one_line_error(proc, path, *needles)


@pytest.mark.parametrize("cmd", ["predict", "train", "info"])
def test_missing_file(tmp_path, cmd):
    p = tmp_path / "nope.txt"
    _check_api(p, ["no such"])
    _check_cli(p, ["no such"], cmd)


@pytest.mark.parametrize("cmd", ["predict", "train"])
def test_empty_file(tmp_path, cmd):
    p = _write(tmp_path, "empty.txt", b"")
    _check_api(p, ["empty"])
    _check_cli(p, ["empty"], cmd)


def test_directory(tmp_path):
    p = tmp_path / "adir"
    p.mkdir()
    _check_api(p, ["directory"])
    _check_cli(p, ["directory"], "train")


@pytest.mark.parametrize("data,cmd", [(b"hello world\n", "predict"), (b"1 a:1 b:2\n0 c:1\n", "train"),
                                      (b"\x00\x01\x02binary\xff" * 10, None), (b"bias\n", None),
                                      (b"bias 1 2 3 4 5\n", None)])
def test_not_a_model(tmp_path, data, cmd):
    p = _write(tmp_path, "notmodel.txt", data)
    _check_api(p, ["not an FM model"], state=None)
    _check_cli(p, ["not an FM model"], cmd)


@pytest.mark.parametrize("cut,cmd", [(1, None), (6, "predict"), (19, None), (27, None)])
def test_truncated_text_model_fewer_fields(tmp_path, cut, cmd):
    # the last line loses its end: fewer fields than the model's other lines
    last = GOOD_K2.rstrip(b"\n").rsplit(b"\n", 1)[1]
    p = _write(tmp_path, "trunc.txt", GOOD_K2[:len(GOOD_K2) - 1 - len(last) + cut])
    _check_api(p, ["line 3", "truncated"], state=None)
    _check_cli(p, ["line 3", "truncated"], cmd)


@pytest.mark.parametrize("where", ["sign", "last_w", "last_state"])
def test_truncated_text_model_inside_the_last_number(tmp_path, where):
    """Cut inside the last number: the file lost bytes (and its final newline)."""
    if where == "sign":
        cut = GOOD_K2[:GOOD_K2.rindex(b"\n", 0, -1) + 4]               # 'b -'
        assert cut.endswith(b"\nb -")
    elif where == "last_w":
        data = b"bias 0.1\na 0.1 0.2 0.3\nb -0.5 0.25 0.125\n"      # stripped, k=2
        cut = data[:-3]                                                # '0.125' -> '0.1'
    else:
        data = GOOD_K2[:-1] + b"25\n"                                  # last number 625
        cut = data[:-3]                                                # '625' -> '6'
    p = _write(tmp_path, "trunc.txt", cut)
    _check_api(p, ["truncated"], state=None)
    _check_cli(p, ["truncated"], "train" if where == "last_state" else "predict")


@pytest.mark.parametrize("field,cmd", [(1, "predict"), (3, None), (6, "train"), (9, None)])
def test_non_numeric_field(tmp_path, field, cmd):
    lines = GOOD_K2.splitlines()
    f = lines[2].split()
    f[field] = b"x1"
    lines[2] = b" ".join(f)
    p = _write(tmp_path, "nonnum.txt", b"\n".join(lines) + b"\n")
    _check_api(p, ["line 3", "field %d" % (field + 1), "not a number"])
    _check_cli(p, ["line 3", "not a number"], cmd)


@pytest.mark.parametrize("bad,cmd", [(b"inf", "predict"), (b"nan", None), (b"-Infinity", None), (b"1e999", None),
                                     (b"1797693134862315807938e287", "predict")])
def test_non_finite_field(tmp_path, bad, cmd):
    lines = GOOD_K2.splitlines()
    f = lines[1].split()
    f[2] = bad          # v_1 of 'a': prediction needs it
    lines[1] = b" ".join(f)
    p = _write(tmp_path, "nonfinite.txt", b"\n".join(lines) + b"\n")
    _check_api(p, ["line 2", "finite"])
    _check_cli(p, ["line 2", "finite"], cmd)


@pytest.mark.parametrize("line,cmd", [(b"c 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0", "train"), (b"c 0.1 0.2", None),
                                      (b"c 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8", None)])
def test_wrong_field_count(tmp_path, line, cmd):
    p = _write(tmp_path, "fields.txt", GOOD_K2 + line + b"\nd 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9\n")
    _check_api(p, ["line 4", "fields", "expected 10"])
    _check_cli(p, ["line 4", "fields"], cmd)


def test_wrong_field_count_on_the_bias_line(tmp_path):
    p = _write(tmp_path, "fields.txt", b"bias 0.1 0.2\n" + GOOD_K2.split(b"\n", 1)[1])
    _check_api(p, ["bias"], state=None)
    _check_cli(p, ["bias"], "predict")


@pytest.mark.parametrize("cmd", ["predict", "train"])
def test_duplicate_feature_names(tmp_path, cmd):
    p = _write(tmp_path, "dup.txt", GOOD_K2 + b"a 1 2 3 4 5 6 7 8 9\n")
    _check_cli(p, ["'a'", "twice"], cmd)


def test_duplicate_feature_names_are_not_converted(tmp_path):
    p = _write(tmp_path, "dup.txt", GOOD_K2 + b"a 1 2 3 4 5 6 7 8 9\n")
    out = tmp_path / "dup.bin"
    proc = fm_dump("convert", p, out)
    assert_one_line_error(proc, p, "twice")
    assert not out.exists()


def test_duplicate_feature_names_through_the_api(tmp_path):
    p = _write(tmp_path, "dup.txt", GOOD_K2 + b"a 1 2 3 4 5 6 7 8 9\n")
    with pytest.raises(ModelError) as ei:
        ServingModel.load(str(p))
    assert str(p) in str(ei.value) and "twice" in str(ei.value)


# binary files

def _bin_layout(path):
    data = path.read_bytes()
    hlen = int(np.frombuffer(data[8:12], "<u4")[0])
    header = msgpack.unpackb(data[16:16 + hlen], raw=False)
    return data, hlen, {a["name"]: a for a in header["arrays"]}


def _cuts(path):
    data, hlen, arrays = _bin_layout(path)
    cuts = {"magic": 4, "length": 12, "header": 16 + hlen // 2, "padding": 16 + hlen + 8}
    for name in ("names", "name_off", "params"):
        a = arrays[name]
        cuts[name] = a["offset"] + a["nbytes"] // 2
        cuts[name + "_end"] = a["offset"] + a["nbytes"] - 1
    return cuts


@pytest.mark.parametrize("where,cmd", [("header", "predict"), ("padding", None), ("names", None),
                                       ("name_off", None), ("params", "predict"), ("params_end", "train")])
def test_truncated_bin_model(tmp_path, full_bin, where, cmd):
    cut = _cuts(full_bin)[where]
    p = _write(tmp_path, "cut.bin", full_bin.read_bytes()[:cut])
    _check_api(p, ["truncated"], state=None)
    _check_api(p, ["truncated"], state=False)
    _check_cli(p, ["truncated"], cmd, k=3)


@pytest.mark.parametrize("where", ["magic", "length"])
def test_bin_model_cut_in_its_first_16_bytes_is_called_truncated(tmp_path, full_bin, where):
    p = _write(tmp_path, "cut.bin", full_bin.read_bytes()[:_cuts(full_bin)[where]])
    _check_api(p, ["truncated"], state=None)


@pytest.mark.parametrize("name,cmd", [("names", None), ("name_off", None), ("params", "predict"),
                                      ("params", "train")])
def test_flipped_byte_in_each_bin_array(tmp_path, full_bin, name, cmd):
    data, hlen, arrays = _bin_layout(full_bin)
    a = arrays[name]
    b = bytearray(data)
    b[a["offset"] + a["nbytes"] // 3] ^= 0x04
    p = _write(tmp_path, "flip.bin", bytes(b))
    _check_api(p, ["checksum", name])
    _check_cli(p, ["checksum", repr(name)], cmd, k=3)


def test_flipped_byte_in_bin_header(tmp_path, full_bin):
    data, hlen, arrays = _bin_layout(full_bin)
    b = bytearray(data)
    b[16 + hlen // 2] ^= 0x01
    p = _write(tmp_path, "flip.bin", bytes(b))
    _check_api(p, ["checksum"], state=None)
    _check_cli(p, ["header"], "info")


# -dim against the model

@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_wrong_dim_for_predict_and_im(tmp_path, full_txt, full_bin, fmt):
    path = full_txt if fmt == "txt" else full_bin
    proc = fm_predict("-m", path, "-dim", "4", input=b"1 a\n")
    assert_one_line_error(proc, path, "3 factors", "4")
    proc = fm_predict("-m", path, "-dim", "1,1,2", input=b"1 a\n")
    assert_one_line_error(proc, path, "3 factors", "2")
    out = tmp_path / "out.txt"
    proc = fm_train("-im", path, "-m", out, "-dim", "1,1,8", input=b"1 a\n")
    assert_one_line_error(proc, path, "3 factors", "8")
    assert not out.exists()
    with pytest.raises(ModelError, match="3 factors"):
        read_model(str(path), k=5)
    # the right -dim works
    assert_ok(fm_predict("-m", path, "-dim", "3", input=b"1 a\n"))
