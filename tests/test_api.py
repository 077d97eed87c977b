"""The Python API (streamfm.FM): every input kind, the CLI's models bit for bit,
predictions aligned with the input, exceptions, Ctrl-C and silence."""

import io
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import streamfm
from streamfm import FM, BadInputError, ModelFormatError, ParameterError, StreamFMError
from streamfm.model import ModelError, read_model

from helpers import TRAIN, assert_ok, fm_predict, fm_train, predictions, write_lines

N_LINES = 3000
HP = dict(k=4, seed=3, w_alpha=0.1, v_alpha=0.08, v_l1=0.05)


@pytest.fixture(scope="module")
def lines():
    with open(TRAIN, "rb") as f:
        return [next(f).rstrip(b"\n") for _ in range(N_LINES)]


@pytest.fixture(scope="module")
def train_file(lines, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "train.txt"
    write_lines(path, lines)
    return path


def state_of(fm):
    """(names, FTRL rows, samples_seen) of an FM: what must match bit for bit."""
    m = fm.training_model()
    arena, off = m.names()
    return bytes(arena), off.copy(), m.params[: m.n_rows].copy(), m.samples_seen


def assert_same_model(a, b, seen=True):
    na, oa, pa, sa = state_of(a)
    nb, ob, pb, sb = state_of(b)
    assert na == nb and np.array_equal(oa, ob)
    assert pa.dtype == pb.dtype and np.array_equal(pa, pb), "FTRL rows differ"
    assert sa == sb or not seen


@pytest.fixture(scope="module")
def reference(train_file):
    fm = FM(**HP)
    report = fm.partial_fit(str(train_file))
    assert report.lines == N_LINES and report.samples == N_LINES and report.bad == 0
    return fm


def _generator(lines):
    for ln in lines:
        yield ln.decode()


@pytest.mark.parametrize("kind", ["bytes", "path", "pathlike", "binary_file", "text_file", "str_list",
                                  "bytes_list_with_newlines", "generator", "bytesio"])
def test_every_line_input_kind_trains_the_same_model(kind, lines, train_file, reference):
    data = b"".join(ln + b"\n" for ln in lines)
    fm = FM(**HP)
    if kind == "bytes":
        fm.partial_fit(data)
    elif kind == "path":
        fm.partial_fit(str(train_file))
    elif kind == "pathlike":
        fm.partial_fit(train_file)
    elif kind == "binary_file":
        with open(train_file, "rb") as f:
            fm.partial_fit(f)
    elif kind == "text_file":
        with open(train_file, "r") as f:
            fm.partial_fit(f)
    elif kind == "str_list":
        fm.partial_fit([ln.decode() for ln in lines])
    elif kind == "bytes_list_with_newlines":
        fm.partial_fit([ln + b"\n" for ln in lines])
    elif kind == "generator":
        fm.partial_fit(_generator(lines))
    elif kind == "bytesio":
        fm.partial_fit(io.BytesIO(data))
    assert_same_model(fm, reference)


def test_equals_fm_train_bit_for_bit(tmp_path, train_file, reference):
    """The API model saved as text is byte for byte fm_train's; the binary holds the same rows."""
    args = ["-dim", "1,1,4", "--seed", "3", "-w_alpha", "0.1", "-v_alpha", "0.08", "-v_l1", "0.05",
            "--input", train_file, "-q"]
    assert_ok(fm_train("-m", tmp_path / "cli.txt", *args))
    assert_ok(fm_train("-m", tmp_path / "cli.bin", "-mf", "bin", *args))
    reference.save(tmp_path / "api.txt", format="txt")
    reference.save(tmp_path / "api.bin")
    assert (tmp_path / "api.txt").read_bytes() == (tmp_path / "cli.txt").read_bytes()
    a, b = read_model(str(tmp_path / "api.bin")), read_model(str(tmp_path / "cli.bin"))
    assert np.array_equal(a.params, b.params) and bytes(a.arena) == bytes(b.arena)
    for key in ("k", "hyper", "fvs", "seed", "samples_seen", "dtype"):
        assert a.info[key] == b.info[key], key
    # and FM.load of either equals the model it came from
    for path in ("cli.txt", "cli.bin", "api.bin"):
        assert_same_model(FM.load(tmp_path / path, **({} if path.endswith("bin") else
                                                      {"w_alpha": 0.1, "v_alpha": 0.08, "v_l1": 0.05,
                                                       "seed": 3})), reference,
                          seen=path.endswith("bin"))  # a text model does not say


def test_save_load_continue_equals_cli_im(tmp_path, lines):
    """A then (save, load, B) through the API equals fm_train on A then -im on B."""
    a, b = lines[:1500], lines[1500:]
    write_lines(tmp_path / "a.txt", a)
    write_lines(tmp_path / "b.txt", b)
    for fmt in ("txt", "bin"):
        fm = FM(k=4, seed=5)
        fm.partial_fit(a)
        fm.save(tmp_path / ("api." + fmt), format=fmt)
        fm2 = FM.load(tmp_path / ("api." + fmt), seed=5)
        fm2.partial_fit(b)
        fm2.save(tmp_path / "api2.txt", format="txt")
        assert_ok(fm_train("-m", tmp_path / ("cli." + fmt), "-mf", fmt, "-dim", "1,1,4", "--seed", "5",
                           "--input", tmp_path / "a.txt", "-q"))
        assert_ok(fm_train("-m", tmp_path / "cli2.txt", "-im", tmp_path / ("cli." + fmt), "-dim", "1,1,4",
                           "--seed", "5", "--input", tmp_path / "b.txt", "-q"))
        assert (tmp_path / "api2.txt").read_bytes() == (tmp_path / "cli2.txt").read_bytes(), fmt
        assert fm2.samples_seen == (len(lines) if fmt == "bin" else len(b))


def test_predict_proba_equals_fm_predict_and_is_aligned(tmp_path, lines, reference):
    """One value per input line in input order; bad and blank lines are NaN and reported."""
    reference.save(tmp_path / "m.bin")
    test = list(lines[:300])
    test[5] = b"1 f0_2:abc"          # bad value
    test[17] = b""                   # blank line
    test[40] = b"x f0_2:1"           # bad label
    test[299] = b"0 n0:nan"          # non-finite value
    write_lines(tmp_path / "t.txt", test)
    r = fm_predict("-m", tmp_path / "m.bin", "--input", tmp_path / "t.txt", "-q")
    assert_ok(r)
    cli = np.array([p for _, p in predictions(r.stdout.decode())])
    for cores in (1, 2):
        p = reference.predict_proba(test, cores=cores)
        assert p.shape == (300,)
        assert np.flatnonzero(np.isnan(p)).tolist() == [5, 17, 40, 299]
        assert np.array_equal(p[~np.isnan(p)], cli)
        rep = reference.last_report
        assert rep.lines == 300 and rep.samples == 296 and rep.bad == 3
        assert [(b.line, b.reason) for b in rep.bad_lines] == [
            (6, "feature value is not a number"), (41, "label is not a number"),
            (300, "feature value is NaN, infinite or overflows")]
        assert rep.bad_lines[0].text == "1 f0_2:abc" and rep.bad_lines[0].column == 3
    # a loaded model predicts the same
    assert np.array_equal(FM.load(tmp_path / "m.bin").predict_proba(test), p, equal_nan=True)


def test_csr_dense_and_lines_give_identical_models():
    sp = pytest.importorskip("scipy.sparse", reason="scipy is in the test extra")
    rng = np.random.default_rng(7)
    n, d = 2000, 40
    dense = np.where(rng.random((n, d)) < 0.15, rng.choice([1.0, 0.1, 1 / 3, -2.5, 1e-7, 3e5], (n, d)), 0.0)
    mask = rng.random((n, d)) < 0.02
    dense[mask] = rng.normal(size=int(mask.sum()))
    y = (rng.random(n) < 0.3).astype(float)
    X = sp.csr_matrix(dense)
    X.data[::17] = 0.0  # explicit zeros: dropped, as NAME:0 is
    names = ["f%d" % j for j in range(d)]
    names[3] = "a:b"     # the last ':' splits name and value
    names[4] = "é"
    text = []
    for i in range(n):
        a, b = X.indptr[i], X.indptr[i + 1]
        toks = ["1" if y[i] > 0 else "0"] + ["%s:%r" % (names[j], float(v))
                                             for j, v in zip(X.indices[a:b], X.data[a:b])]
        text.append(" ".join(toks))
    by_lines, by_csr, by_dense = FM(k=3, seed=2), FM(k=3, seed=2), FM(k=3, seed=2)
    by_lines.partial_fit(text)
    r = by_csr.partial_fit(X, y, feature_names=names)
    assert r.lines == n and r.samples == n and r.bad == 0
    by_dense.partial_fit(X.toarray(), y, feature_names=names)
    assert_same_model(by_csr, by_lines)
    assert_same_model(by_dense, by_lines)
    # int32 / float32 storage and default names (column indices) read the same values
    a, b = FM(k=3, seed=2), FM(k=3, seed=2)
    a.partial_fit(sp.csr_matrix(dense.astype(np.float32)), y)
    b.partial_fit([("1" if y[i] > 0 else "0") + "".join(" %d:%r" % (j, float(np.float32(dense[i, j])))
                                                         for j in np.flatnonzero(dense[i])) for i in range(n)])
    assert_same_model(a, b)
    assert np.array_equal(by_csr.predict_proba(X, feature_names=names), by_lines.predict_proba(text))


def test_matrix_bad_rows_are_reported_and_nan():
    X = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 2.0], [np.inf, 0.0]])
    y = np.array([1.0, 0.0, np.nan, 1.0])
    fm = FM(k=2)
    r = fm.partial_fit(X, y)
    assert (r.lines, r.samples, r.bad) == (4, 1, 3)
    assert [(b.line, b.reason) for b in r.bad_lines] == [
        (2, "feature value is NaN, infinite or overflows"), (3, "label is NaN or infinite"),
        (4, "feature value is NaN, infinite or overflows")]
    p = fm.predict_proba(X)
    assert np.flatnonzero(np.isnan(p)).tolist() == [1, 3]


def test_learn_one_equals_partial_fit(lines):
    def as_dict(line):
        toks = line.split()
        x = {}
        for t in toks[1:]:
            name, _, v = t.rpartition(b":")
            x[name.decode()] = float(v)
        return x, float(toks[0])

    a, b = FM(**HP), FM(**HP)
    a.partial_fit(lines[:800])
    for ln in lines[:800]:
        x, y = as_dict(ln)
        b.learn_one(x, y)
    assert_same_model(a, b)
    for ln in lines[800:850]:
        x, _ = as_dict(ln)
        assert b.predict_proba_one(x) == a.predict_proba([ln])[0]
    for x in ({"a": float("nan")}, {"a": float("inf")}):
        with pytest.raises(BadInputError, match="NaN, infinite"):
            b.learn_one(x, 1)
    with pytest.raises(BadInputError, match="white space"):
        b.learn_one({"a b": 1}, 1)
    with pytest.raises(BadInputError, match="empty feature name"):
        b.learn_one({"": 1}, 1)
    assert b.samples_seen == 800


def test_errors_are_typed(tmp_path, lines):
    fm = FM(k=2)
    bad = list(lines[:50]) + [b"1 a:zz"] + list(lines[50:100])
    with pytest.raises(BadInputError) as e:
        fm.partial_fit(bad, on_error="stop")
    assert str(e.value) == "input line 51: feature value is not a number (column 3); stopped (on_error='stop')"
    assert e.value.report.bad_lines[0].line == 51 and isinstance(e.value, StreamFMError)
    assert fm.samples_seen == e.value.report.samples  # what was trained (whole blocks) stays
    with pytest.raises(BadInputError, match="max_bad_fraction"):
        FM(k=2).partial_fit([b"1 a:zz"] * 10 + [b"1 a"] * 10, max_bad_fraction=0.2)
    (tmp_path / "junk.txt").write_bytes(b"not a model\n")
    with pytest.raises(ModelFormatError, match="not an FM model"):
        FM.load(tmp_path / "junk.txt")
    with pytest.raises(ModelError):  # the commands' name for the same class
        FM.load(tmp_path / "missing.bin")
    assert ModelError is ModelFormatError and streamfm.badlines.BadInputStop is BadInputError
    for kw in ({"w_alpha": 0}, {"v_alpha": float("nan")}, {"init_stdev": -1}, {"k": -1}, {"k": 2.5},
               {"dtype": "int8"}, {"seed": 1 << 70}):
        with pytest.raises(ParameterError):
            FM(**kw)
    with pytest.raises(ValueError):
        FM(w_l1=float("inf"))
    with pytest.raises(ParameterError, match="on_error"):
        fm.partial_fit(lines[:1], on_error="ignore")
    with pytest.raises(ParameterError, match="labels"):
        fm.partial_fit(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="path"):
        fm.partial_fit("1 a b\n0 c\n")
    with pytest.raises(ParameterError, match="white space"):
        fm.partial_fit(np.ones((1, 2)), [1], feature_names=["a", "b c"])


def test_stripped_model_predicts_but_does_not_train(tmp_path, reference, lines):
    reference.save(tmp_path / "s.txt", format="txt", state=False)
    fm = FM.load(tmp_path / "s.txt")
    assert np.array_equal(fm.predict_proba(lines[:50]), reference.predict_proba(lines[:50]))
    with pytest.raises(ModelFormatError, match="stripped"):
        fm.partial_fit(lines[:5])


def test_explain_matches_fm_predict_explain(tmp_path, reference, lines):
    reference.save(tmp_path / "m.bin")
    test = list(lines[:40]) + [b"1 zz:q"]
    write_lines(tmp_path / "t.txt", test)
    r = fm_predict("-m", tmp_path / "m.bin", "--input", tmp_path / "t.txt", "--explain", "3", "-q")
    assert_ok(r)
    ex = reference.explain(test, top=3)
    assert ex[-1] is None and len(ex) == 41
    for line, mine in zip(r.stdout.decode().splitlines(), ex):
        cli = [(t.rsplit(":", 1)[0], float(t.rsplit(":", 1)[1])) for t in line.split("\t")[1].split()]
        assert cli == mine
    # phi of all features plus the bias is the raw score
    full = reference.explain(test[:5], top=1000)
    p = reference.predict_proba(test[:5])
    for feats, prob in zip(full, p):
        raw = reference.bias + sum(phi for _, phi in feats)
        assert abs(1 / (1 + np.exp(-raw)) - prob) < 1e-12


def test_embeddings_are_the_model_files_v(tmp_path, reference):
    names, V = reference.embeddings()
    reference.save(tmp_path / "m.txt", format="txt", state=False)
    a = read_model(str(tmp_path / "m.txt"), state=False)
    assert names == [a.name(r) for r in range(1, a.n_rows)]
    assert np.array_equal(V, a.weights[1:, 1:]) and V.shape == (reference.n_features, 4)


def test_hyper_parameters_are_attributes_and_pickle(reference, lines):
    fm = FM(k=3, w_alpha=0.2, fvs=True, seed=9)
    assert (fm.k, fm.w_alpha, fm.fvs, fm.seed, fm.dtype) == (3, 0.2, True, 9, "float64")
    fm.v_l2 = 1.5
    assert fm.hyper_parameters()["v_l2"] == 1.5
    with pytest.raises(AttributeError):
        fm.k = 4
    with pytest.raises(ParameterError):
        fm.w_alpha = -1
    again = pickle.loads(pickle.dumps(reference))
    assert_same_model(again, reference)
    assert np.array_equal(again.predict_proba(lines[:20]), reference.predict_proba(lines[:20]))


def test_library_prints_nothing_and_installs_no_handler(capfd, lines):
    seen = []

    def progress(report):
        seen.append((report.lines, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    fm = FM(k=2)

    def slow():
        for i, ln in enumerate(list(lines[:200]) + [b"1 bad:x"] * 20):
            if i % 50 == 0:
                time.sleep(0.15)
            yield ln

    r = fm.partial_fit(slow(), progress=progress, progress_every=0.05)
    fm.predict_proba([b"1 q:x", b"1 a"])
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert r.bad == 20 and seen, "progress was never called"
    assert all(s[1:] == before for s in seen)


def test_keyboard_interrupt_reaches_the_caller(lines):
    """SIGINT during partial_fit on a slow input: KeyboardInterrupt in the caller, after the
    workers left the model; the model keeps what it trained and trains on."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    fm = FM(k=2)

    def slow():
        for ln in lines:
            time.sleep(0.002)
            yield ln

    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        fm.partial_fit(slow())
    timer.join()
    assert time.time() - t0 < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("streamfm-train") and t.is_alive()]
    seen = fm.samples_seen
    assert 0 < seen < len(lines) and fm.last_report.samples == seen
    assert np.all(np.isfinite(fm.predict_proba(lines[:10])))
    fm.partial_fit(lines[:10])
    assert fm.samples_seen == seen + 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_float32_model(lines, tmp_path):
    fm = FM(k=2, dtype="float32")
    fm.partial_fit(lines[:500])
    fm.save(tmp_path / "m.bin")
    again = FM.load(tmp_path / "m.bin")
    assert again.dtype == "float32"
    assert np.array_equal(again.predict_proba(lines[:50]), fm.predict_proba(lines[:50]))
