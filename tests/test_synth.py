"""Tests of the synthetic CTR generator (streamfm.synth)."""

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamfm import synth

SCALE = synth.SAMPLE_SCALE
REPO = Path(__file__).resolve().parents[1]

CAT_TOKEN = re.compile(rb"^f(\d+)_(\d+)(:1)?$")
NUM_TOKEN = re.compile(rb"^n([01]):(\d+\.\d+)$")


def gen(n, **kw):
    kw.setdefault("scale", SCALE)
    return b"".join(synth.generate_ctr(n, **kw))


def test_same_args_same_bytes():
    a = gen(3000, seed=5, model_seed=2)
    b = gen(3000, seed=5, model_seed=2)
    assert a == b
    assert hashlib.sha256(a).digest() == hashlib.sha256(gen(3000, seed=5, model_seed=2)).digest()


def test_different_seeds_different_bytes():
    base = gen(2000, seed=1)
    assert gen(2000, seed=2) != base
    other_model = gen(2000, seed=1, model_seed=1)
    assert other_model != base


def test_block_size_and_prefix_do_not_change_output():
    whole = gen(2500, seed=3, block_lines=100_000)
    blocks = list(synth.generate_ctr(2500, seed=3, scale=SCALE, block_lines=777))
    assert len(blocks) == 4
    assert all(b.endswith(b"\n") for b in blocks)  # complete lines in every block
    assert b"".join(blocks) == whole
    assert gen(1000, seed=3) == b"".join(whole.splitlines(keepends=True)[:1000])


def test_seed_moves_samples_not_model():
    # same model_seed: a value id means the same thing in train and test
    m1 = synth.hidden_model(0, SCALE)
    assert synth.hidden_model(0, SCALE) is m1  # cached
    r1, i1, _, _, _ = synth.draw_samples(500, seed=1, scale=SCALE)
    r2, i2, _, _, _ = synth.draw_samples(500, seed=2, scale=SCALE)
    assert not np.array_equal(r1, r2)
    for f in range(synth.N_CAT):
        assert np.array_equal(i1[:, f], m1.ids[f][r1[:, f]])
        assert np.array_equal(i2[:, f], m1.ids[f][r2[:, f]])
    m2 = synth.hidden_model(1, SCALE)
    assert not np.array_equal(m1.w[0], m2.w[0])


def check_grammar(data, explicit_one):
    assert data.endswith(b"\n") and b"\r" not in data and b"\t" not in data
    lines = data.split(b"\n")[:-1]
    vocab = synth.scaled_vocab(SCALE)
    for line in lines:
        assert b"  " not in line and not line.startswith(b" ") and not line.endswith(b" ")
        toks = line.split(b" ")
        assert toks[0] in (b"0", b"1")
        assert len(toks) == 1 + 26
        for k, tok in enumerate(toks[1:25]):
            m = CAT_TOKEN.match(tok)
            assert m, tok
            assert int(m.group(1)) == k
            assert 0 <= int(m.group(2)) < vocab[k]
            assert m.group(2) == b"0" or not m.group(2).startswith(b"0")
            assert (m.group(3) is not None) == explicit_one
        for j, tok in enumerate(toks[25:]):
            m = NUM_TOKEN.match(tok)
            assert m and int(m.group(1)) == j, tok
            value = float(m.group(2))
            assert value != 0.0 and np.isfinite(value)
            decimals = len(m.group(2).split(b".")[1])
            if j == 0:
                assert 0.0 < value < 1.0 and 1 <= decimals <= 4
                assert not m.group(2).endswith(b"0")
            else:
                assert value > 0 and decimals == 1
    return lines


def test_line_grammar_explicit_one():
    lines = check_grammar(gen(1500, seed=9), explicit_one=True)
    assert len(lines) == 1500


def test_line_grammar_implicit_one_and_full_scale():
    data = gen(300, seed=9, explicit_one=False)
    check_grammar(data, explicit_one=False)
    # the same samples as the explicit form, minus the ':1'
    assert data == gen(300, seed=9).replace(b":1 ", b" ")
    full = gen(300, seed=4, scale=1.0)
    toks = [t for line in full.split(b"\n")[:-1] for t in line.split(b" ")[1:25]]
    assert len(toks) == 300 * 24
    assert all(CAT_TOKEN.match(t) for t in toks)


def test_text_matches_arrays():
    n = 400
    data = gen(n, seed=11, model_seed=3)
    ranks, ids, num, labels, model = synth.draw_samples(n, seed=11, model_seed=3, scale=SCALE)
    for i, line in enumerate(data.split(b"\n")[:-1]):
        toks = line.split(b" ")
        assert int(toks[0]) == labels[i]
        assert [int(t.split(b"_")[1].split(b":")[0]) for t in toks[1:25]] == ids[i].tolist()
        assert float(toks[25].split(b":")[1]) == num[i, 0]
        assert float(toks[26].split(b":")[1]) == num[i, 1]


def test_numeric_values_never_zero():
    _, _, num, _, _ = synth.draw_samples(200_000, seed=21, scale=SCALE)
    assert np.all(num > 0)
    assert np.all(num[:, 0] < 1)
    assert np.median(num[:, 1]) > 2 and num[:, 1].max() > 50  # heavy tail


@pytest.mark.parametrize("model_seed", [0, 1, 2])
def test_positive_rate_in_range(model_seed):
    _, _, _, labels, _ = synth.draw_samples(40_000, seed=7, model_seed=model_seed, scale=SCALE)
    assert 0.15 <= labels.mean() <= 0.25


def test_positive_rate_in_range_informative_subset():
    _, _, _, labels, _ = synth.draw_samples(40_000, seed=7, scale=SCALE, informative_fields=["f2", "n0"])
    assert 0.15 <= labels.mean() <= 0.25


def test_informative_fields_zero_the_others():
    informative = ["f0", "f3", "f14", "n1"]
    model = synth.hidden_model(0, SCALE, informative_fields="f0,f3,f14,n1")
    assert model is synth.hidden_model(0, SCALE, informative_fields=[14, "n1", "f3", "f0"])
    for k, name in enumerate(synth.CAT_FIELDS):
        if name in informative:
            assert np.abs(model.w[k]).max() > 0 and np.abs(model.v[k]).max() > 0
        else:
            assert not model.w[k].any() and not model.v[k].any()
    assert model.w_num[0] == 0 and model.w_num[1] != 0
    for name in synth.FIELD_NAMES:
        dep = model.field_dependence(name)
        if name in informative:
            assert dep > 0.05, name
        else:
            assert dep == 0.0, name
    # every field matters in the full model
    full = synth.hidden_model(0, SCALE)
    assert all(full.field_dependence(name) > 0.05 for name in synth.FIELD_NAMES)
    # the informative fields keep their parameters; ids never change
    assert np.array_equal(full.w[3], model.w[3]) and np.array_equal(full.v[3], model.v[3])
    assert all(np.array_equal(a, b) for a, b in zip(full.ids, model.ids))


def test_label_rate_independent_of_non_informative_field():
    # f1 is not informative: the label rate is the same for each of its values (within
    # sampling error), while it differs between the values of the informative f0
    ranks, _, num, labels, model = synth.draw_samples(
        60_000, seed=3, scale=SCALE, informative_fields=["f0", "f2", "f3"])

    def chi2(k):  # Pearson chi-square of label rate by value of field k
        V = model.vocab[k]
        count = np.bincount(ranks[:, k], minlength=V)
        pos = np.bincount(ranks[:, k], weights=labels.astype(float), minlength=V)
        m = labels.mean()
        return float(((pos - count * m) ** 2 / (count * m * (1 - m))).sum())

    # f1 has 12 values (11 degrees of freedom): chi2 > 40 has probability ~3e-5
    assert chi2(1) < 40
    assert chi2(0) > 80 and chi2(2) > 80 and chi2(3) > 80
    # the noise-free probability does not depend on f1 at all
    p = model.label_probability(ranks, num)
    other = ranks.copy()
    other[:, 1] = (other[:, 1] + 1) % model.vocab[1]
    assert np.array_equal(model.label_probability(other, num), p)
    other[:, 0] = (other[:, 0] + 1) % model.vocab[0]
    assert not np.array_equal(model.label_probability(other, num), p)


def test_bad_arguments():
    with pytest.raises(ValueError):
        synth.hidden_model(0, SCALE, informative_fields=["f99"])
    with pytest.raises(ValueError):
        synth.hidden_model(0, 0.0)
    with pytest.raises(ValueError):
        list(synth.generate_ctr(10, seed=-1))


def test_scaled_vocab():
    assert synth.scaled_vocab(1.0) == synth.FIELD_VOCAB
    small = synth.scaled_vocab(SCALE)
    assert min(small) == 10 and max(small) == 4000
    assert len(synth.FIELD_VOCAB) == 24 and max(synth.FIELD_VOCAB) == 400_000


def test_write_ctr(tmp_path):
    path = tmp_path / "x.txt"
    lines, nbytes = synth.write_ctr(path, 700, seed=4, scale=SCALE)
    assert lines == 700 and path.stat().st_size == nbytes
    buf = io.BytesIO()
    synth.write_ctr(buf, 700, seed=4, scale=SCALE)
    assert buf.getvalue() == path.read_bytes() == gen(700, seed=4)


def test_cli(tmp_path):
    out = tmp_path / "cli.txt"
    cmd = [sys.executable, "-m", "streamfm.synth", "ctr", "--lines", "500", "--seed", "4",
           "--scale", str(SCALE), "--informative", "f0,f3"]
    subprocess.run(cmd + ["--out", str(out)], check=True, cwd=REPO)
    stdout = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True).stdout
    assert out.read_bytes() == stdout == gen(500, seed=4, informative_fields=["f0", "f3"])
    help_text = subprocess.run([sys.executable, "-m", "streamfm.synth", "ctr", "--help"],
                               check=True, cwd=REPO, capture_output=True, text=True).stdout
    for opt in ("--lines", "--seed", "--model-seed", "--scale", "--informative", "--out"):
        assert opt in help_text
