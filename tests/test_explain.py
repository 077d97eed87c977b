"""Per-sample attributions (fm_predict --explain), importance and --metrics."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from streamfm import parse
from streamfm.explain import phi_block
from streamfm.metrics import auc_exact, logloss
from streamfm.predict import ServingModel
from streamfm.synth import write_ctr
from streamfm.table import FeatureTable

BIN = os.path.dirname(sys.executable)


def run(cmd, *args, input=None):
    return subprocess.run([os.path.join(BIN, cmd)] + [str(a) for a in args], input=input,
                          capture_output=True)


def serving(names, weights):
    """A ServingModel over rows (bias first) with the given (w, v...) rows."""
    names = [b"bias"] + names
    off = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(n) for n in names], out=off[1:])
    arena = np.frombuffer(b"".join(names), dtype=np.uint8).copy()
    w = np.array(weights, dtype=np.float64)
    table = FeatureTable.from_names(arena, off, len(names))
    return ServingModel(table, w, w.shape[1] - 1)


def phis(model, text):
    buf = np.frombuffer(text, dtype=np.uint8)
    p = parse.parse(buf, None, parse.ParseBuffers(0), model.table)
    phi = np.empty(max(p.nnz, 1))
    phi_block(p.indptr, p.rows, p.vals, p.n_samples, model.weights, model.k, phi)
    raw = np.empty(max(p.n_samples, 1))
    model.scores(p, raw)
    return p, phi[: p.nnz], raw[: p.n_samples]


def test_hand_computed_attributions():
    # w0 = 0.5; a: w=1, v=(1, 0); b: w=-2, v=(2, 1); c: w=0, v=(0, 3)
    m = serving([b"a", b"b", b"c"], [[0.5, 0, 0], [1, 1, 0], [-2, 2, 1], [0, 0, 3]])
    p, phi, raw = phis(m, b"1 a:2 b:0.5 c:1\n")
    # s = v_a*2 + v_b*0.5 + v_c*1 = (2+1+0, 0+0.5+3) = (3, 3.5)
    # phi_a = 1*2 + 0.5*2*<(1,0), (3,3.5)-(2,0)> = 2 + 1*(1) = 3
    # phi_b = -2*0.5 + 0.5*0.5*<(2,1), (3,3.5)-(1,0.5)> = -1 + 0.25*(4+3) = 0.75
    # phi_c = 0 + 0.5*1*<(0,3), (3,3.5)-(0,3)> = 0.5*(1.5) = 0.75
    assert phi.tolist() == [3.0, 0.75, 0.75]
    # score = 0.5 + (2 - 1) + <v_a,v_b>*1 + <v_a,v_c>*2 + <v_b,v_c>*0.5 = 1.5 + 2 + 0 + 1.5 = 5
    assert raw[0] == 5.0
    assert raw[0] - 0.5 == pytest.approx(phi.sum(), abs=1e-15)


def test_unknown_features_get_zero():
    m = serving([b"a"], [[0.1, 0.0], [0.7, 0.2]])
    p, phi, raw = phis(m, b"0 a:1 nope:3\n")
    assert p.rows.tolist()[1] == -1
    assert phi.tolist() == [0.7, 0.0]


@pytest.mark.parametrize("k", [0, 1, 5, 16])
def test_attributions_sum_to_the_score_on_random_models(k):
    rng = np.random.default_rng(k)
    n = 60
    names = [b"f%d" % i for i in range(n)]
    weights = rng.normal(0, 0.7, size=(n + 1, 1 + k))
    m = serving(names, weights)
    lines = []
    for _ in range(300):
        feats = rng.choice(n + 10, size=rng.integers(1, 25), replace=True)  # repeats and unknowns
        vals = rng.uniform(-3, 3, size=len(feats))
        lines.append(b"1 " + b" ".join(b"f%d:%r" % (f, float(v)) for f, v in zip(feats, vals)))
    p, phi, raw = phis(m, b"\n".join(lines) + b"\n")
    sums = np.add.reduceat(phi, p.indptr[:-1])
    assert np.allclose(sums + weights[0, 0], raw, rtol=0, atol=1e-9)
    # and each phi against the formula in numpy
    for s in range(0, p.n_samples, 37):
        a, b = p.indptr[s], p.indptr[s + 1]
        rows, x = p.rows[a:b], p.vals[a:b]
        known = rows >= 0
        W = np.where(known, weights[np.maximum(rows, 0), 0], 0.0)
        V = np.where(known[:, None], weights[np.maximum(rows, 0), 1:], 0.0)
        svec = (V * x[:, None]).sum(axis=0)
        want = W * x + 0.5 * x * ((V * (svec[None, :] - V * x[:, None])).sum(axis=1))
        assert np.allclose(phi[a:b], want, rtol=1e-12, atol=1e-12)


def _trained_model(tmp_path, informative=None, lines=30000, scale=0.01):
    train = tmp_path / "train.txt"
    write_ctr(str(train), n_lines=lines, seed=1, scale=scale, informative_fields=informative)
    model = tmp_path / "model.txt"
    r = run("fm_train", "-m", model, "-dim", "1,1,4", "--input", train, "-q")
    assert r.returncode == 0, r.stderr
    return train, model


def test_explain_output_and_exactness_through_the_cli(tmp_path):
    train, model = _trained_model(tmp_path, lines=5000)
    data = b"".join(open(train, "rb").readlines()[:200])
    plain = run("fm_predict", "-m", model, "-q", input=data)
    expl = run("fm_predict", "-m", model, "-q", "--explain", "3", input=data)
    assert plain.returncode == expl.returncode == 0
    plain_lines = plain.stdout.decode().splitlines()
    expl_lines = expl.stdout.decode().splitlines()
    assert len(plain_lines) == len(expl_lines) == 200
    for pl, el, src in zip(plain_lines, expl_lines, data.decode().splitlines()):
        head, tail = el.split("\t")
        assert head == pl  # same 'label score' as without --explain
        items = tail.split(" ")
        assert len(items) == 3
        names = [it.rsplit(":", 1)[0] for it in items]
        vals = [float(it.rsplit(":", 1)[1]) for it in items]
        assert all(nm in src for nm in names)
        assert [abs(v) for v in vals] == sorted((abs(v) for v in vals), reverse=True)
    # all features: the phis + bias give the raw score
    m = ServingModel.load(str(model))
    full = run("fm_predict", "-m", model, "-q", "--explain", "1000", input=data)
    w0 = float(m.weights[0, 0])
    for line in full.stdout.decode().splitlines():
        head, tail = line.split("\t")
        prob = float(head.split(" ")[1])
        total = w0 + sum(float(it.rsplit(":", 1)[1]) for it in tail.split(" "))
        assert 1.0 / (1.0 + math.exp(-total)) == pytest.approx(prob, rel=1e-12, abs=1e-15)


def test_importance_recovers_the_informative_fields(tmp_path):
    informative = ["f0", "f3", "f5", "n1"]
    train, model = _trained_model(tmp_path, informative=",".join(informative))
    r = run("fm_dump", "importance", "-m", model, "--input", train, "--by-field", "_", "-q")
    assert r.returncode == 0, r.stderr
    rows = [ln.split(" ") for ln in r.stdout.decode().splitlines()]
    fields = [row[0] for row in rows]
    assert len(fields) == 26
    assert set(fields[:4]) == set(informative), fields[:8]
    mean_abs = [float(row[3]) for row in rows]
    assert mean_abs == sorted(mean_abs, reverse=True)
    # every field occurs once per line
    assert all(int(row[1]) == 30000 for row in rows if row[0].startswith("f0"))
    # per-feature mode: names with counts, most important first
    r2 = run("fm_dump", "importance", "-m", model, "--input", train, "--top", "5", "-q")
    top = [ln.split(" ")[0] for ln in r2.stdout.decode().splitlines()]
    assert len(top) == 5
    assert all(t.split("_")[0] in informative for t in top)


def test_metrics_flag(tmp_path):
    train, model = _trained_model(tmp_path, lines=5000)
    data = b"".join(open(train, "rb").readlines()[:3000])
    r = run("fm_predict", "-m", model, "-out", tmp_path / "p.txt", "--metrics", "-q", input=data)
    assert r.returncode == 0
    err = r.stderr.decode()
    got = dict(kv.split(" ", 1) for kv in
               err.strip().split(": ", 1)[1].replace("mean prediction", "mean_prediction")
               .replace("observed rate", "observed_rate").split("  "))
    pred = np.loadtxt(tmp_path / "p.txt")
    labels, probs = pred[:, 0], pred[:, 1]
    assert int(got["samples"].replace(",", "")) == 3000
    assert float(got["logloss"]) == pytest.approx(logloss(labels, probs), abs=1e-6)
    # the histogram AUC agrees with the exact one closely
    assert float(got["auc"]) == pytest.approx(auc_exact(labels, probs), abs=2e-4)
    assert float(got["mean_prediction"]) == pytest.approx(probs.mean(), abs=1e-6)
    assert float(got["observed_rate"]) == pytest.approx((labels > 0).mean(), abs=1e-6)


def test_phi_block_on_empty_and_label_only_lines():
    m = serving([b"a"], [[0.3, 1.0], [0.2, 0.5]])
    p, phi, raw = phis(m, b"1\n0 a\n")
    assert p.n_samples == 2
    assert raw.tolist()[0] == 0.3
    assert phi.tolist() == [0.2]


def _importance_reference(fm, lines, sep=None):
    """FM.importance from FM.explain: per sample, each feature's (or field's) share
    is the sum of its terms' phis; count = samples it takes part in; ties by
    the first row of the feature (field) in the model; features the model does
    not hold are left out."""
    order = {}
    sm = fm.serving_model()
    arena, off = sm.table.names_view()
    for r in range(1, sm.n_rows):
        name = bytes(arena[off[r]:off[r + 1]])
        key = name.split(sep, 1)[0] if sep else name
        order.setdefault(key, r)
    acc = {}
    for ex in fm.explain(lines, top=1 << 30):
        share = {}
        for name, phi in ex or []:
            if (name.encode().split(sep, 1)[0] if sep else name.encode()) not in order:
                continue
            key = name.encode().split(sep, 1)[0] if sep else name.encode()
            share[key] = share.get(key, 0.0) + phi
        for key, phi in share.items():
            c, p, a = acc.get(key, (0, 0.0, 0.0))
            acc[key] = (c + 1, p + phi, a + abs(phi))
    rows = [(key, c, p / c, a / c) for key, (c, p, a) in acc.items()]
    rows.sort(key=lambda t: (-t[3], order[t[0]]))
    return rows


@pytest.mark.parametrize("sep", [None, "_"])
def test_importance_counts_a_feature_once_a_sample_with_its_whole_share(sep):
    """A feature written twice in a sample, or a field with several values, takes
    part once, with the sum of its terms' phis (it was counted once a term: a
    sample "a_1 a_1" made a_1 count 2 with half its share each); equal mean
    |phi| are ordered by first appearance in the model (they were by hash)."""
    from streamfm import FM

    rng = np.random.default_rng(5)
    train = [b"%d a_%d b_%d c_%d" % (rng.integers(2), rng.integers(4), rng.integers(3), rng.integers(3))
             for _ in range(400)]
    fm = FM(k=3, seed=2)
    fm.partial_fit(train)
    data = [b"1 a_1 a_1 b_2", b"0 a_2 a_3 c_1 c_1 c_1", b"1 b_1 b_2 a_0", b"0 c_2", b"1 zz a_1"]
    sep_b = sep.encode() if sep else None
    got = fm.importance(data, by_field=sep)
    # features seen (zz is not in the model): a_0..a_3, b_1, b_2, c_1, c_2
    assert fm.last_report.n_features == 8
    want = _importance_reference(fm, data, sep_b)
    assert [(n, c) for n, c, _, _ in got] == [(n, c) for n, c, _, _ in want]
    for (_, _, p, a), (_, _, wp, wa) in zip(got, want):
        assert p == pytest.approx(wp, rel=1e-12, abs=1e-15) and a == pytest.approx(wa, rel=1e-12, abs=1e-15)
    counts = dict((n, c) for n, c, _, _ in got)
    if sep:
        assert counts == {b"a": 4, b"b": 2, b"c": 2}
    else:
        assert counts[b"a_1"] == 2 and counts[b"c_1"] == 1


def test_importance_ties_follow_the_model_order():
    from streamfm import FM

    # k = 0, no regularisation: every feature of one weight has the same |phi|
    fm = FM(k=0, w_l1=0, w_l2=0, w_alpha=1)
    fm.partial_fit([b"1 m_1 z_1 a_1"])
    got = fm.importance([b"1 m_1 z_1 a_1"])
    assert [n for n, _, _, _ in got] == [b"m_1", b"z_1", b"a_1"]
    assert fm.importance([b"1 m_1 z_1 a_1"], by_field="_")[0][0] == b"m"
    assert [n for n, *_ in fm.importance([b"1 m_1 z_1 a_1"], by_field="_")] == [b"m", b"z", b"a"]
