"""Field-aware FM (--model ffm, FM(model="ffm")): exact against tests/reference_ffm.py,
model files that say ffm, -im, explain, the field capacity, and the commands that refuse it."""

import io
import os
import random

import numpy as np
import pytest

import streamfm
from streamfm import ffm, ftrl, parse
from streamfm.errors import ModelFormatError, ParameterError
from streamfm.metrics import logloss
from streamfm.model import read_bin_header

from helpers import assert_ok, fm_dump, fm_predict, fm_train, predictions, run, text, BIN_DIR
from reference import assert_same_state, trainer_export
from reference_ffm import ReferenceFFM

HP = [0.1, 1.0, 0.01, 0.5, 0.08, 1.0, 0.01, 0.5, 0.2]
HP_KW = dict(zip(ftrl.HP_NAMES, HP))
HP_FLAGS = ["-w_alpha", "0.1", "-w_beta", "1", "-w_l1", "0.01", "-w_l2", "0.5", "-v_alpha", "0.08",
            "-v_beta", "1", "-v_l1", "0.01", "-v_l2", "0.5", "-init_stdev", "0.2"]


def synth(n, seed=0, unknown=False):
    """Lines with several fields, numeric features without a separator, values other
    than 1, a repeated feature now and then, a name starting with the separator."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        u, it, c = r.randrange(12), r.randrange(15), r.randrange(4)
        y = 1 if ((u % 3) == (it % 3)) ^ (r.random() < 0.15) else 0
        feats = ["user=%d" % u, "item=%d:%g" % (it, r.choice([1, 0.5, 2])), "ctx=%d" % c]
        if r.random() < 0.5:
            feats.append("price:%.3f" % r.random())
        if r.random() < 0.1:
            feats.append(feats[0])  # the same feature twice: two terms
        if r.random() < 0.05:
            feats.append("=odd")
        if unknown and r.random() < 0.3:
            feats.append(r.choice(["user=999", "newfield=1", "item=77"]))
        r.shuffle(feats)
        out.append("%d %s" % (y, " ".join(feats)))
    return ("\n".join(out) + "\n").encode()


def samples(data):
    out = []
    for line in data.decode().splitlines():
        parts = line.split()
        feats = []
        for tok in parts[1:]:
            name, _, x = tok.rpartition(":")
            if not name:
                name, x = tok, "1"
            feats.append((name.encode(), float(x)))
        out.append((float(parts[0]), feats))
    return out


def train_ref(data, k=3, max_fields=6, **kw):
    return ReferenceFFM(k, max_fields, HP, **kw).train(samples(data))


def train_ffm(data, k=3, max_fields=6, cores=1, **kw):
    fm = streamfm.FM(k=k, model="ffm", max_fields=max_fields, **HP_KW, **kw)
    rep = fm.partial_fit(data, cores=cores)
    return fm, rep


@pytest.mark.parametrize("k0,k1", [(True, True), (False, True), (True, False)])
def test_one_core_training_is_the_reference_bit_for_bit(k0, k1):
    data = synth(600, seed=1)
    ref = train_ref(data, k0=k0, k1=k1)
    fm, rep = train_ffm(data, k0=k0, k1=k1)
    assert rep.samples == 600 and rep.bad == 0
    m = fm.training_model()
    assert [f.decode() for f in ref.fields] == fm.fields
    assert_same_state(trainer_export(m), ref.export(), m.k, rtol=0, atol=0)
    # the progressive logloss is the reference's predictions'
    probs = 1.0 / (1.0 + np.exp(-np.array(ref.predictions)))
    assert rep.logloss == pytest.approx(logloss(np.array(ref.labels) > 0, probs), rel=1e-12)


def test_capacity_overflow_lines_are_refused_like_the_reference():
    data = synth(200, seed=2) + b"1 a=1 b=2 c=3 d=4\n" + synth(50, seed=3) + b"0 user=1 zz=3 item=2\n"
    ref = train_ref(data, max_fields=5)
    fm, rep = train_ffm(data, max_fields=5)
    assert rep.bad == len(ref.bad) and rep.bad >= 1
    assert [b.line for b in rep.bad_lines] == ref.bad
    assert all("--max-fields" in b.reason for b in rep.bad_lines)
    assert_same_state(trainer_export(fm.training_model()), ref.export(), 15, rtol=0, atol=0)


def test_predictions_and_phi_equal_the_reference_with_unknown_features():
    data = synth(500, seed=4)
    ref = train_ref(data)
    fm, _ = train_ffm(data)
    test = synth(200, seed=5, unknown=True)
    sm = fm.serving_model()
    buf = np.frombuffer(test, np.uint8)
    p = parse.parse(buf, None, parse.ParseBuffers(0), sm.table)
    raw = np.empty(p.n_samples)
    sm.scores(p, raw)
    phi = np.empty(p.nnz)
    sm.phi(p, phi)
    n_unknown = 0
    for s, (label, feats) in enumerate(samples(test)):
        want, want_phi = ref.score(feats)
        assert raw[s] == want
        a, b = p.indptr[s], p.indptr[s + 1]
        known = p.rows[a:b] >= 0
        n_unknown += int((~known).sum())
        assert phi[a:b][known].tolist() == want_phi
        assert (phi[a:b][~known] == 0).all()
        assert sm.weights[0, 0] + phi[a:b].sum() == pytest.approx(raw[s], abs=1e-12)
    assert n_unknown > 0
    got = fm.predict_proba(test)
    assert np.array_equal(got, 1.0 / (1.0 + np.exp(-raw)))
    assert fm.predict_proba_one({"user=1": 1, "item=2": 1}) == fm.predict_proba([b"1 user=1 item=2"])[0]


def test_explain_phis_add_up_to_the_raw_score():
    data = synth(300, seed=6)
    fm, _ = train_ffm(data)
    line = b"1 user=1 item=2:0.5 ctx=3 price:0.25 user=1 nothere=1"
    (res,) = fm.explain([line], top=10)
    ref = train_ref(data)
    raw, phi = ref.score(samples(line + b"\n")[0][1])
    assert fm.bias + sum(x for _, x in res) == pytest.approx(raw, abs=1e-12)
    assert sorted(x for _, x in res if x != 0) == sorted(x for x in phi if x != 0)


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_files_say_ffm_and_round_trip(tmp_path, fmt):
    data = synth(300, seed=7)
    fm, _ = train_ffm(data, field_sep="=")
    path = tmp_path / ("m." + fmt)
    fm.save(path, fmt)
    if fmt == "txt":
        first = path.read_bytes().split(b"\n", 1)[0]
        assert first == b"ffm k=3 max_fields=6 field_sep== fields " + " ".join(fm.fields).encode()
    else:
        head = read_bin_header(str(path))
        assert head["model"] == "ffm" and head["version"] == 2
        assert head["field_k"] == 3 and head["max_fields"] == 6 and head["field_sep"] == b"="
        assert head["fields"] == [f.encode() for f in fm.fields] and head["k"] == 18
    test = synth(100, seed=8, unknown=True)
    again = streamfm.FM.load(path, **HP_KW)  # a text model holds no hyper-parameters
    assert (again.model, again.k, again.max_fields, again.field_sep, again.fields) == (
        "ffm", 3, 6, "=", fm.fields)
    assert np.array_equal(again.predict_proba(test), fm.predict_proba(test))
    # continue from the file == continue in memory
    more = synth(200, seed=9)
    again.partial_fit(more)
    fm.partial_fit(more)
    assert np.array_equal(again.predict_proba(test), fm.predict_proba(test))
    out = tmp_path / ("n." + fmt)
    stripped = tmp_path / ("s." + fmt)
    again.save(out, fmt)
    fm.save(stripped, fmt, state=False)
    assert np.array_equal(streamfm.FM.load(stripped).predict_proba(test), fm.predict_proba(test))


def test_fm_files_do_not_change(tmp_path):
    fm = streamfm.FM(k=2)
    fm.partial_fit(synth(50))
    fm.save(tmp_path / "m.txt", "txt")
    fm.save(tmp_path / "m.bin", "bin")
    assert (tmp_path / "m.txt").read_bytes().startswith(b"bias ")
    head = read_bin_header(str(tmp_path / "m.bin"))
    assert "model" not in head and head["version"] == 1 and "fields" not in head


def test_cli_train_im_equals_one_run_and_predict(tmp_path):
    a, b = synth(400, seed=10), synth(300, seed=11)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    (tmp_path / "ab").write_bytes(a + b)
    flags = ["--model", "ffm", "-dim", "1,1,3", "--max-fields", "6"] + HP_FLAGS
    assert_ok(fm_train(*flags, "-m", tmp_path / "ab.txt", "--input", tmp_path / "ab", "-q"))
    assert_ok(fm_train(*flags, "-m", tmp_path / "a.bin", "-mf", "bin", "--input", tmp_path / "a", "-q"))
    # -im takes the kind and the fields from the model (no --model needed)
    assert_ok(fm_train("-dim", "1,1,3", *HP_FLAGS, "-im", tmp_path / "a.bin", "-m", tmp_path / "a+b.txt",
                       "--input", tmp_path / "b", "-q"))
    assert (tmp_path / "a+b.txt").read_bytes() == (tmp_path / "ab.txt").read_bytes()
    # and equals the reference
    ref = train_ref(a + b)
    got = streamfm.FM.load(tmp_path / "ab.txt", **HP_KW)
    assert_same_state(trainer_export(got.training_model()), ref.export(), 18, rtol=0, atol=0)
    test = synth(50, seed=12, unknown=True)
    (tmp_path / "t").write_bytes(test)
    p = fm_predict("-m", tmp_path / "ab.txt", "--input", tmp_path / "t", "-q")
    assert_ok(p)
    want = [1.0 / (1.0 + np.exp(-ref.score(f)[0])) for _, f in samples(test)]
    assert [x for _, x in predictions(p.stdout)] == pytest.approx(want, rel=1e-15, abs=0)
    ex = fm_predict("-m", tmp_path / "ab.txt", "--input", tmp_path / "t", "--explain", "2", "-q")
    assert_ok(ex)
    assert len(ex.stdout.splitlines()) == 50 and b"\t" in ex.stdout.splitlines()[0]
    bad = fm_train("--model", "fm", "-dim", "1,1,3", "-im", tmp_path / "a.bin", "-m", tmp_path / "x.txt",
                   "--input", tmp_path / "b")
    assert bad.returncode == 2 and b"ffm" in bad.stderr


def test_cli_passes_equal_im_on_the_same_input(tmp_path):
    a = synth(300, seed=13)
    (tmp_path / "a").write_bytes(a)
    flags = ["--model", "ffm", "-dim", "1,1,2", "--max-fields", "5"]
    assert_ok(fm_train(*flags, "-m", tmp_path / "p2.txt", "--input", tmp_path / "a", "--passes", "2", "-q"))
    assert_ok(fm_train(*flags, "-m", tmp_path / "p1.txt", "--input", tmp_path / "a", "-q"))
    assert_ok(fm_train("-dim", "1,1,2", "-im", tmp_path / "p1.txt", "-m", tmp_path / "i2.txt",
                       "--input", tmp_path / "a", "-q"))
    assert (tmp_path / "p2.txt").read_bytes() == (tmp_path / "i2.txt").read_bytes()
    ho = fm_train(*flags, "-m", tmp_path / "h.txt", "--input", tmp_path / "a", "--holdout-every", "5")
    assert_ok(ho)
    assert b"held-out" in ho.stderr


def test_cli_field_capacity_is_a_bad_line_with_its_number(tmp_path):
    data = b"1 a=1 b=1\n0 a=2 c=1\n1 a=1 b=2\n0 d=1 a=1\n"
    (tmp_path / "d").write_bytes(data)
    p = fm_train("--model", "ffm", "--max-fields", "2", "-m", tmp_path / "m.txt", "--input", tmp_path / "d",
                 "--bad-lines", tmp_path / "bad")
    assert_ok(p)
    err = text(p.stderr)
    assert "input line 2:" in err and "input line 4:" in err and "--max-fields" in err
    lines = (tmp_path / "bad").read_bytes().splitlines()
    assert [ln.split(b"\t")[0] for ln in lines] == [b"2", b"4"]
    assert "bad lines skipped    2" in err
    assert (tmp_path / "m.txt").read_bytes().split(b"\n", 1)[0].endswith(b"fields a b")
    stop = fm_train("--model", "ffm", "--max-fields", "2", "-m", tmp_path / "n.txt", "--input", tmp_path / "d",
                    "--on-error", "stop")
    assert stop.returncode == 3 and b"input line 2" in stop.stderr and b"--max-fields" in stop.stderr
    assert not (tmp_path / "n.txt").exists()


def test_commands_that_need_an_fm_refuse_an_ffm_model(tmp_path):
    data = synth(100, seed=14)
    fm, _ = train_ffm(data)
    for fmt in ("txt", "bin"):
        path = tmp_path / ("m." + fmt)
        fm.save(path, fmt)
        (tmp_path / "items").write_bytes(b"i1 item=1\ni2 item=2\n")
        (tmp_path / "clicks").write_bytes(b"u1 user=1 | i1\n")
        recall = os.path.join(BIN_DIR, "fm_recall")
        for proc in (run(recall, "index", "-m", path, "--items", tmp_path / "items", "-o", tmp_path / "idx"),
                     run(recall, "train", "-dim", "1,1,3", "-im", path, "-m", tmp_path / "r.bin",
                         "--items", tmp_path / "items", "--input", tmp_path / "clicks"),
                     fm_dump("merge", path, path, "-o", tmp_path / "x.bin"),
                     fm_dump("embeddings", path, tmp_path / "e.txt")):
            assert proc.returncode == 1, text(proc.stderr)
            assert "holds a field-aware FM (ffm) model" in text(proc.stderr) and str(path) in text(proc.stderr)
        with pytest.raises(ModelFormatError, match="field-aware FM"):
            streamfm.Recall(streamfm.FM.load(path))
        from streamfm.predict import ServingModel  # fm_serve and fm_sample load through it
        with pytest.raises(ModelFormatError, match="ffm"):
            ServingModel.load(str(path))
        # the dump subcommands that only rewrite the file keep it an FFM
        assert_ok(fm_dump("convert", path, tmp_path / ("c." + fmt)))
        assert_ok(fm_dump("strip", "--float", path, tmp_path / ("s." + fmt)))
        info = fm_dump("info", path)
        assert_ok(info) and b"ffm" in info.stdout
        test = synth(30, seed=15)
        for p in (tmp_path / ("c." + fmt), tmp_path / ("s." + fmt)):
            got = streamfm.FM.load(p).predict_proba(test)
            assert np.allclose(got, fm.predict_proba(test), rtol=1e-6)
    with pytest.raises(ModelFormatError, match="field-aware FM"):
        fm.embeddings()
    with pytest.raises(ParameterError, match="ffm"):
        fm.grid_fit(data, {"w_alpha": [0.1, 0.2]})
    with pytest.raises(ParameterError, match="fvs"):
        streamfm.FM(model="ffm", fvs=True)
    grid = fm_train("--model", "ffm", "-m", tmp_path / "g.txt", "--grid", "w_alpha=0.1,0.2", input=data)
    assert grid.returncode == 2 and b"--grid" in grid.stderr


def test_learn_one_equals_partial_fit():
    data = synth(80, seed=16)
    a, _ = train_ffm(data)
    b = streamfm.FM(k=3, model="ffm", max_fields=6, **HP_KW)
    for label, feats in samples(data):
        if len({n for n, _ in feats}) < len(feats):  # a repeated feature: not a dict
            b.partial_fit([b"%d %s" % (int(label), b" ".join(n + b":" + repr(v).encode() for n, v in feats))])
        else:
            b.learn_one({n.decode(): v for n, v in feats}, label)
    assert_same_state(trainer_export(b.training_model()), trainer_export(a.training_model()), 18, rtol=0, atol=0)


def test_two_cores_give_about_the_logloss_of_one():
    from streamfm.model import FFMModel
    from streamfm.train import Options, train_stream

    data = synth(4000, seed=17)
    res, models = [], []
    for cores in (1, 2):
        # tiny arrays: they grow while the workers train (row_field with them)
        m = FFMModel(3, hp=HP, fields=ffm.Fields("=", 6), row_capacity=8, arena_capacity=32)
        s = train_stream(m, io.BytesIO(data), Options(cores=cores, quiet=True, block_size=4096), print)
        res.append((s.samples, s.logloss))
        models.append(m)
    assert res[0][0] == res[1][0] == 4000
    assert abs(res[0][1] - res[1][1]) < 0.01, res
    one, two = models
    assert one.n_rows == two.n_rows and sorted(one.fields.names) == sorted(two.fields.names)
    for r in range(1, two.n_rows):  # every row's field is its name's, whichever thread made it
        name = two.table.name_bytes(r)
        assert two.fields.names[two.row_field[r]] == ffm.field_of(name, b"=")


def test_importance_and_the_merge_api_with_an_ffm(tmp_path):
    data = synth(200, seed=18)
    fm, _ = train_ffm(data)
    path = tmp_path / "m.bin"
    fm.save(path)
    (tmp_path / "d").write_bytes(data)
    p = fm_dump("importance", "-m", path, "--input", tmp_path / "d", "--by-field", "=", "-q")
    assert_ok(p)
    fields = {ln.split(b" ")[0] for ln in p.stdout.splitlines()}
    assert {b"user", b"item", b"ctx", b"price"} <= fields
    rows = fm.importance(data)
    # the mean phi of a feature over the data is the mean of its explain() phis
    ex = fm.explain(data, top=100)
    phis = [x for r in ex for n, x in r if n == rows[0][0].decode()]
    assert rows[0][2] == pytest.approx(np.mean(phis), rel=1e-12)
    from streamfm.merge import merge_models
    with pytest.raises(ModelFormatError, match="field-aware FM"):
        merge_models([fm, fm])


def test_a_model_file_whose_fields_disagree_with_its_names_is_refused(tmp_path):
    fm, _ = train_ffm(synth(100, seed=19))
    path = tmp_path / "m.txt"
    fm.save(path, "txt")
    head, rest = path.read_bytes().split(b"\n", 1)
    (tmp_path / "bad.txt").write_bytes(head.replace(b" user", b" usr") + b"\n" + rest)
    with pytest.raises(ModelFormatError, match="field of feature 'user=.*' is not in the model's field list"):
        streamfm.FM.load(tmp_path / "bad.txt").predict_proba([b"1 user=1"])
    (tmp_path / "k.txt").write_bytes(head.replace(b"k=3", b"k=2") + b"\n" + rest)
    with pytest.raises(ModelFormatError, match="k=2 x max_fields=6"):
        streamfm.FM.load(tmp_path / "k.txt")
    with pytest.raises(ModelFormatError, match="3 factors per field"):
        streamfm.FM.load(path, k=4)
    p = fm_train("-dim", "1,1,3", "-im", path, "--max-fields", "7", "-m", tmp_path / "x.txt", input=b"1 a=1\n")
    assert p.returncode == 2 and b"--max-fields 7 differs from the -im model's 6" in p.stderr
    # a separator that is no UTF-8 (a byte from the command line) is compared, not a traceback
    for sep, shown in ((b"\xff", b"--field-sep \\xff differs from the -im model's ="),
                       (b":", b"--field-sep : differs from the -im model's =")):
        p = fm_train("-dim", "1,1,3", "-im", path, "--field-sep", os.fsdecode(sep), "-m", tmp_path / "x.txt",
                     input=b"1 a=1\n")
        assert p.returncode == 2 and shown in p.stderr and b"Traceback" not in p.stderr, p.stderr


def test_too_many_fields_are_counted_whole():
    """A field list longer than the capacity says how many fields it has (a model
    header 'fields user item hour price' against --max-fields 2: 4, not 3)."""
    with pytest.raises(ValueError, match="^4 fields, more than the capacity 2$"):
        ffm.Fields("=", 2, names=[b"user", b"item", b"hour", b"price"])
    assert ffm.Fields("=", 4, names=[b"user", b"item", b"hour", b"price"]).names[-1] == b"price"


def test_predict_proba_one_of_a_very_negative_score_is_zero_not_an_overflow():
    # w_a > 0 and a value of -1e5: a raw score near -3e4, whose exp(-raw) overflows a
    # Python float; predict_proba_one said OverflowError where predict_proba says 0.0
    fm = streamfm.FM(k=2, model="ffm", w_l1=0, w_l2=0, w_alpha=1)
    for _ in range(2):
        fm.learn_one({"a": 1, "b=1": 1}, 1)
    assert fm.predict_proba([b"0 a:-1e5"]).tolist() == [0.0]
    assert fm.predict_proba_one({"a": -1e5}) == 0.0
    assert fm.predict_proba_one({"a": 1, "b=1": 1}) == fm.predict_proba([b"1 a b=1"])[0]


def test_field_of_is_the_kernels_field_for_names_that_start_with_the_separator():
    """ffm.field_of (and the reference) cut at the first separator after the
    name's first byte, as the kernels do: "=a=b" is in field "=a" (field_of said
    "=a=b", the whole name)."""
    from streamfm import FM

    names = [b"=a=b", b"=x", b"a=b=c", b"==", b"===", b"price", b"=a=c"]
    fm = FM(model="ffm", k=2, seed=1)
    fm.partial_fit([b"1 " + b" ".join(names), b"0 =x =a=c price"])
    m = fm.training_model()
    got = {m.table.name_bytes(r): m.fields.names[m.row_field[r]] for r in range(1, m.n_rows)}
    assert got == {n: ffm.field_of(n, b"=") for n in names}
    assert got[b"=a=b"] == got[b"=a=c"] == b"=a" and got[b"=="] == got[b"==="] == b"="
