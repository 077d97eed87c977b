"""fm_sample audit: per-field coverage, distinct values, mean |phi| and share, checked
against a plain numpy computation of phi; and the fields that moved between two models."""

import collections
import io

import numpy as np

from helpers import fm_train
from sample_helpers import SPEC, fm_sample, make_dir, random_rows, write_log
from streamfm.model import read_model
from streamfm.predict import ServingModel
from streamfm.sample.audit import audit_stream
from streamfm.train import Options


def reference(model_path, samples):
    """Per field: (coverage, distinct, mean |field phi|, share), phi from the FM formula."""
    a = read_model(str(model_path), state=False)
    rows = {a.name(r): a.weights[r] for r in range(1, a.n_rows)}
    k = a.weights.shape[1] - 1
    present = collections.Counter()
    names = collections.defaultdict(set)
    abs_sum = collections.Counter()
    n = 0
    for line in samples.splitlines():
        toks = line.split()[1:]
        n += 1
        feats = []
        for t in toks:
            name, _, val = t.rpartition(":") if ":" in t else (t, "", "1")
            feats.append((name, float(val)))
        s = np.zeros(k)
        for name, x in feats:
            if name in rows:
                s += rows[name][1:] * x
        field_phi = collections.Counter()
        for name, x in feats:
            f = name.split("=", 1)[0]
            names[f].add(name)
            field_phi[f] += 0.0
            if name in rows:
                w, v = rows[name][0], rows[name][1:]
                field_phi[f] += w * x + 0.5 * x * float(np.sum(v * (s - v * x)))
        for f, p in field_phi.items():
            present[f] += 1
            abs_sum[f] += abs(p)
    total = sum(abs_sum.values())
    return {f: (present[f] / n, len(names[f]), abs_sum[f] / present[f], abs_sum[f] / total) for f in present}


def test_audit_matches_the_phi_formula_and_finds_the_moved_field(tmp_path):
    make_dir(tmp_path)
    write_log(tmp_path / "log.tsv", random_rows(600, seed=5), "tsv")
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "-o",
                  tmp_path / "train.txt", "-q")
    assert r.returncode == 0, r.stderr
    r = fm_train("-m", tmp_path / "a.txt", "-dim", "1,1,3", "--seed", "2", "-q", "--input", tmp_path / "train.txt",
                 "-v_l2", "0", "-w_l1", "0")
    assert r.returncode == 0, r.stderr
    samples = (tmp_path / "train.txt").read_text()
    ref = reference(tmp_path / "a.txt", samples)
    stats, lines, bad = audit_stream([ServingModel.load(str(tmp_path / "a.txt"))], io.BytesIO(samples.encode()),
                                     ord("="), Options(quiet=True), lambda m: None)
    got = {r["field"]: (r["coverage"], r["distinct"], r["mean_abs_phi_0"], r["share_0"]) for r in stats.table()}
    assert set(got) == set(ref) == {"uid", "age", "hour", "hist", "iid", "genre", "price", "promo", "age_x_genre",
                                    "ov"}
    for f in ref:
        assert got[f][:2] == ref[f][:2], f
        assert np.allclose(got[f][2:], ref[f][2:], rtol=1e-9, atol=1e-15), (f, got[f], ref[f])
    assert abs(sum(g[3] for g in got.values()) - 1) < 1e-12
    # model B: the most important field of A zeroed (as a bug in its generation would)
    top = max(got, key=lambda f: got[f][3])
    out = []
    for line in (tmp_path / "a.txt").read_text().splitlines():
        if line.split(" ", 1)[0].split("=", 1)[0].split(":")[0] == top:
            parts = line.split(" ")
            line = " ".join([parts[0]] + ["0"] * (len(parts) - 1))
        out.append(line)
    (tmp_path / "b.txt").write_text("\n".join(out) + "\n")
    with open(tmp_path / "audit.toml", "w") as f:
        f.write(SPEC + '\n[[feature]]\nname = "never"\nsource = "user.never"\nkind = "categorical"\n')
    r = fm_sample("audit", "-m", tmp_path / "a.txt", "--compare", tmp_path / "b.txt", "--input",
                  tmp_path / "train.txt", "--spec", tmp_path / "audit.toml", "--top", "3")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode().splitlines()
    assert text[0].split() == ["field", "coverage", "distinct", "mean|phi|", "share", "mean|phi|B", "shareB",
                               "change"]
    first = text[1].split()
    assert first[0] == top and float(first[4]) == round(got[top][3], 4) and float(first[6]) == 0.0
    # B (its own hash key) is looked up by name: its shares are B's real ones, summing to 1
    rows = text[1:1 + len(ref)]
    assert abs(sum(float(r.split()[6]) for r in rows) - 1) < 1e-3
    moved = text.index("moved most (share a.txt -> b.txt):")
    assert text[moved + 1].split()[0] == top and len(text[moved + 1:]) >= 3
    assert text[-1] == "spec fields never present in the samples: never"
