"""fm_train / fm_predict / fm_dump end to end, through subprocesses."""

import os
import re

import numpy as np
import pytest

from helpers import (FM_DUMP, FM_PREDICT, FM_TRAIN, TEST, TRAIN, assert_ok, assert_one_line_error,
                     fm_predict, fm_train, predictions, run, text)
from streamfm.model import MAGIC, read_model


@pytest.fixture(scope="module")
def train_data():
    return TRAIN.read_bytes()


@pytest.fixture(scope="module")
def tlines():
    return TEST.read_bytes().splitlines()


@pytest.fixture(scope="module")
def model_txt(tmp_path_factory, train_data):
    p = tmp_path_factory.mktemp("cli") / "model.txt"
    proc = fm_train("-m", p, "-dim", "1,1,4", "--seed", "1", input=train_data)
    assert_ok(proc)
    return p, proc


def _labels(lines):
    return [1 if float(ln.split()[0]) > 0 else -1 for ln in lines if ln.strip()]


def _summary(stderr):
    """{'lines read': '25,000', ...} from fm_train's closing report."""
    out = {}
    for ln in text(stderr).splitlines():
        m = re.match(r"^  (\S.*?)\s{2,}(\S.*)$", ln)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _int(s):
    return int(s.split()[0].replace(",", ""))


# ---------------------------------------------------------------------------
# the basic pipeline


def test_train_from_a_pipe_then_predict(tmp_path, model_txt, tlines):
    path, proc = model_txt
    assert proc.stdout == b""
    s = _summary(proc.stderr)
    assert _int(s["lines read"]) == 25000
    assert _int(s["samples trained"]) == 25000
    assert _int(s["bad lines skipped"]) == 0
    m = read_model(str(path))
    assert m.k == 4
    assert _int(s["features in model"]) == m.n_rows - 1 > 1000
    assert _int(s["samples/s"]) > 0
    ll, auc = re.match(r"(\S+)\s+auc (\S+)", s["progressive logloss"]).groups()
    assert 0.2 < float(ll) < 0.69 and 0.6 < float(auc) < 1.0
    assert str(path) in s["model written"]
    # predict to a file, with metrics
    out = tmp_path / "pred.txt"
    pr = fm_predict("-m", path, "-out", out, "--metrics", "-core", "2", input=b"\n".join(tlines) + b"\n")
    assert_ok(pr)
    assert pr.stdout == b""
    got = predictions(out.read_bytes())
    assert [y for y, _ in got] == _labels(tlines)
    probs = np.array([p for _, p in got])
    assert np.all((probs > 0) & (probs < 1))
    err = text(pr.stderr)
    m = re.search(r"logloss (\S+)\s+auc (\S+)", err)
    assert m and 0.6 < float(m.group(2)) < 1.0, err
    assert "6,000 scored" in err


def test_input_file_option_and_quiet(tmp_path, model_txt):
    p = tmp_path / "f.txt"
    proc = fm_train("-m", p, "-dim", "1,1,4", "--seed", "1", "--quiet", "--input", TRAIN)
    assert_ok(proc)
    assert proc.stderr == b"" and proc.stdout == b""
    # same seed, same data, one core: the same model as from the pipe
    assert p.read_bytes() == model_txt[0].read_bytes()
    pr = fm_predict("-m", p, "--input", TEST, "-q")
    assert_ok(pr)
    assert pr.stderr == b""
    assert len(pr.stdout.splitlines()) == 6000


def test_incremental_run_equals_one_run(tmp_path, train_data):
    lines = train_data.splitlines(keepends=True)
    a, b = b"".join(lines[:12000]), b"".join(lines[12000:])
    m_all, m_a, m_ab = tmp_path / "all.txt", tmp_path / "a.bin", tmp_path / "ab.txt"
    assert_ok(fm_train("-m", m_all, "-dim", "1,1,4", "--seed", "9", "-q", input=a + b))
    assert_ok(fm_train("-m", m_a, "-mf", "bin", "-dim", "1,1,4", "--seed", "9", "-q", input=a))
    assert_ok(fm_train("-im", m_a, "-m", m_ab, "-dim", "1,1,4", "--seed", "9", "-q", input=b))
    assert m_ab.read_bytes() == m_all.read_bytes()


# ---------------------------------------------------------------------------
# --help

TRAIN_FLAGS = ["-m", "-mf", "-dim", "-init_stdev", "-w_alpha", "-w_beta", "-w_l1", "-w_l2", "-v_alpha", "-v_beta",
               "-v_l1", "-v_l2", "-core", "-im", "-imf", "-fvs", "-mnt", "--input", "--seed", "--on-error",
               "--max-bad-fraction", "--bad-lines", "--save-on-interrupt", "--passes", "--holdout-every", "--cache",
               "--cache-reuse", "--grid", "--grid-out", "--quiet"]
PREDICT_FLAGS = ["-m", "-mf", "-dim", "-core", "-out", "-mnt", "--input", "--on-error", "--bad-lines", "--metrics",
                 "--quiet"]


@pytest.mark.parametrize("cmd,flags", [
    ([FM_TRAIN], TRAIN_FLAGS),
    ([FM_PREDICT], PREDICT_FLAGS),
    ([FM_DUMP], ["info", "convert", "strip", "embeddings"]),
    ([FM_DUMP, "info"], ["MODEL"]),
    ([FM_DUMP, "convert"], ["--to", "--nonzero", "MODEL", "OUT"]),
    ([FM_DUMP, "strip"], ["--to", "--nonzero", "MODEL", "OUT"]),
    ([FM_DUMP, "embeddings"], ["--format", "--nonzero", "npy", "txt"]),
])
def test_help_mentions_every_flag(cmd, flags):
    for h in (["-h"],) if cmd == [FM_PREDICT] else (["--help"],):
        proc = run(cmd[0], *(cmd[1:] + h))
        assert_ok(proc)
        out = text(proc.stdout)
        assert out.startswith("Usage:")
        for f in flags:
            assert re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(f), out), (f, out)


def test_usage_errors_exit_2(tmp_path):
    for args, needle in [(["-dim", "1,1,4"], "-m"), (["-m", tmp_path / "x.txt", "-dim", "1,1"], "k0,k1,k"),
                         (["-m", tmp_path / "x.txt", "--bogus"], "--bogus")]:
        proc = fm_train(*args, input=b"1 a\n")
        assert proc.returncode == 2, (args, text(proc.stderr))
        assert needle in text(proc.stderr) and "Traceback" not in text(proc.stderr)
        assert not (tmp_path / "x.txt").exists()
    proc = fm_predict(input=b"1 a\n")
    assert proc.returncode == 2 and "-m" in text(proc.stderr)


def test_unwritable_model_path_fails_before_training(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "m.txt"
    proc = fm_train("-m", target, input=b"1 a\n")
    assert_one_line_error(proc, target, "does not exist")


# ---------------------------------------------------------------------------
# prediction keeps input order


def test_predict_output_order_with_several_cores(tmp_path, model_txt, tlines):
    # 30,000 lines (~7 MB, several blocks); labels re-drawn so every copy differs
    rng = np.random.default_rng(3)
    lines = []
    for rep in range(5):
        for ln in tlines:
            lines.append(b"%d" % rng.integers(0, 2) + ln[ln.index(b" "):])
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 5_000_000
    path = model_txt[0]
    outs = {}
    for core in (1, 2, 3):
        pr = fm_predict("-m", path, "-core", core, "-q", input=data)
        assert_ok(pr)
        outs[core] = pr.stdout
    got = predictions(outs[1])
    assert [y for y, _ in got] == _labels(lines)
    # the same features give the same score in every copy
    probs = np.array([p for _, p in got]).reshape(5, -1)
    assert np.all(probs == probs[0])
    assert outs[2] == outs[1]
    assert outs[3] == outs[1]


# ---------------------------------------------------------------------------
# bad input

BAD_MIX = [
    b"1 a:1 b:2",
    b"abc x:1",               # 2 label
    b"0 c:1",
    b"",
    b"1 d:xyz",               # 5 value
    b"1 e:inf",               # 6 non-finite
    b"-1 f g h",
    b"1 :3",                  # 8 empty name
    b"0 k:",                  # 9 empty value
    b"1 bin\x00ary",          # 10 control byte
    b"1 ok:0.5\r",
]
BAD_LINES = {2: "label is not a number", 5: "feature value is not a number", 6: "NaN, infinite",
             8: "empty feature name", 9: "empty feature value", 10: "control byte"}


def test_predict_skips_and_reports_bad_lines(model_txt):
    data = b"\n".join(BAD_MIX) + b"\n"
    pr = fm_predict("-m", model_txt[0], input=data)
    assert_ok(pr)
    got = predictions(pr.stdout)
    assert [y for y, _ in got] == [1, -1, -1, 1]
    err = text(pr.stderr)
    for line_no, reason in BAD_LINES.items():
        assert re.search(r"line %d: [^\n]*%s" % (line_no, re.escape(reason)), err), (line_no, err)
    assert "11 lines, 4 scored, 6 bad" in err


def test_train_skips_bad_lines(tmp_path):
    data = b"\n".join(BAD_MIX) + b"\n"
    p = tmp_path / "m.txt"
    proc = fm_train("-m", p, "-dim", "1,1,2", input=data)
    assert_ok(proc)
    s = _summary(proc.stderr)
    assert _int(s["lines read"]) == 11
    assert _int(s["samples trained"]) == 4
    assert _int(s["bad lines skipped"]) == 6
    names = {read_model(str(p)).name_bytes(r) for r in range(1, read_model(str(p)).n_rows)}
    assert names == {b"a", b"b", b"c", b"f", b"g", b"h", b"ok"}
    for line_no in BAD_LINES:
        assert "line %d:" % line_no in text(proc.stderr)


def test_on_error_stop_writes_no_model_and_keeps_the_old_one(tmp_path, train_data):
    lines = train_data.splitlines()
    data = b"\n".join(lines[:20000] + [b"1 a:oops"] + lines[20000:]) + b"\n"
    target = tmp_path / "model.txt"
    old = b"bias 0.5 1 2\n"
    target.write_bytes(old)
    proc = fm_train("-m", target, "-dim", "1,1,2", "--on-error", "stop", input=data)
    assert proc.returncode == 3, text(proc.stderr)
    err = text(proc.stderr)
    assert "line 20001" in err and "Traceback" not in err
    assert target.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["model.txt"]
    fresh = tmp_path / "fresh.txt"
    proc = fm_train("-m", fresh, "--on-error", "stop", "-q", input=b"1 a\nbad\n1 b\n")
    assert proc.returncode == 3
    assert not fresh.exists()
    assert "line 2" in text(proc.stderr)


def test_predict_on_error_stop_exits_3(model_txt):
    pr = fm_predict("-m", model_txt[0], "--on-error", "stop", input=b"1 a\n1 b:x\n1 c\n")
    assert pr.returncode == 3
    assert "line 2" in text(pr.stderr) and "Traceback" not in text(pr.stderr)


def _with_bad(train_data, n_lines, every):
    lines = train_data.splitlines()[:n_lines]
    for i in range(0, n_lines, every):
        lines[i] = b"x" + lines[i]
    return b"\n".join(lines) + b"\n"


def test_max_bad_fraction(tmp_path, train_data):
    data = _with_bad(train_data, 3000, 10)          # 300 bad lines of 3000: 10%
    p = tmp_path / "m.txt"
    proc = fm_train("-m", p, "-dim", "1,1,2", "--max-bad-fraction", "0.05", "-q", input=data)
    assert proc.returncode == 3, text(proc.stderr)
    assert "max-bad-fraction" in text(proc.stderr)
    assert not p.exists()
    proc = fm_train("-m", p, "-dim", "1,1,2", "--max-bad-fraction", "0.2", "-q", input=data)
    assert_ok(proc)
    assert p.exists()


def test_max_bad_fraction_on_a_small_input(tmp_path):
    """A short file that is mostly bad must stop as well (no minimum line count is documented)."""
    data = b"1 a\nbad\nbad\nbad\n0 b\nbad\n"        # 4 of 6 lines bad
    p = tmp_path / "m.txt"
    proc = fm_train("-m", p, "-dim", "1,1,2", "--max-bad-fraction", "0.1", "-q", input=data)
    assert proc.returncode == 3, text(proc.stderr)
    assert not p.exists()


def test_bad_lines_file_holds_every_bad_line(tmp_path, train_data):
    lines = train_data.splitlines()[:5000]
    bad_at = list(range(7, 5000, 157))      # 32 bad lines, more than stderr shows
    for i in bad_at:
        lines[i] = b"1 broken:value " + lines[i]
    p = tmp_path / "m.txt"
    bl = tmp_path / "bad.txt"
    proc = fm_train("-m", p, "-dim", "1,1,2", "--bad-lines", bl, "-core", "2", input=b"\n".join(lines) + b"\n")
    assert_ok(proc)
    rows = [r.split(b"\t", 2) for r in bl.read_bytes().splitlines()]
    assert len(rows) == len(bad_at)
    rows.sort(key=lambda r: int(r[0]))
    assert [int(r[0]) for r in rows] == [i + 1 for i in bad_at]
    assert all(r[1] == b"feature value is not a number" for r in rows)
    assert [r[2] for r in rows] == [lines[i] for i in bad_at]
    err = text(proc.stderr)
    assert len(re.findall(r"input line \d+:", err)) == 10
    assert _int(_summary(proc.stderr)["bad lines skipped"]) == len(bad_at)
    # the same file from fm_predict
    bl2 = tmp_path / "bad2.txt"
    pr = fm_predict("-m", p, "--bad-lines", bl2, "-q", input=b"\n".join(lines) + b"\n")
    assert_ok(pr)
    assert len(pr.stdout.splitlines()) == 5000 - len(bad_at)
    assert sorted(bl2.read_bytes().splitlines()) == sorted(bl.read_bytes().splitlines())


def test_empty_input_with_allow_empty_writes_a_bias_only_model(tmp_path):
    p = tmp_path / "empty.txt"
    # without --allow-empty nothing is written (tests/test_validation.py)
    assert_one_line_error(fm_train("-m", p, input=b""), "--allow-empty", code=3)
    assert not p.exists()
    proc = fm_train("-m", p, "--allow-empty", input=b"")
    assert_ok(proc)
    assert "warning" in text(proc.stderr) and "empty" in text(proc.stderr)
    assert p.read_bytes() == b"bias 0 0 0\n"
    pr = fm_predict("-m", p, "-dim", "8", input=b"1 a b\n0\n")
    assert_ok(pr)
    assert predictions(pr.stdout) == [(1, 0.5), (-1, 0.5)]
    # and training can continue from it
    p2 = tmp_path / "next.txt"
    assert_ok(fm_train("-im", p, "-m", p2, "-dim", "1,1,8", "-q", input=b"1 a\n"))
    assert read_model(str(p2)).n_rows == 2


# ---------------------------------------------------------------------------
# binary models


def test_bin_model_is_detected_by_predict_and_im(tmp_path, train_data, model_txt, tlines):
    b = tmp_path / "model.bin"
    assert_ok(fm_train("-m", b, "-mf", "bin", "-dim", "1,1,4", "--seed", "1", "-q", input=train_data))
    assert b.read_bytes()[:8] == MAGIC
    data = b"\n".join(tlines[:300]) + b"\n"
    from_txt = fm_predict("-m", model_txt[0], "-q", input=data)
    from_bin = fm_predict("-m", b, "-q", input=data)
    lying = fm_predict("-m", b, "-mf", "txt", "-q", input=data)      # the file's bytes decide
    for pr in (from_txt, from_bin, lying):
        assert_ok(pr)
    assert from_bin.stdout == from_txt.stdout == lying.stdout
    more = b"1 brand_new_feature f0_2\n" * 3
    c1, c2 = tmp_path / "c1.txt", tmp_path / "c2.txt"
    assert_ok(fm_train("-im", b, "-m", c1, "-dim", "1,1,4", "--seed", "1", "-q", input=more))
    assert_ok(fm_train("-im", model_txt[0], "-imf", "bin", "-m", c2, "-dim", "1,1,4", "--seed", "1", "-q",
                       input=more))
    assert c1.read_bytes() == c2.read_bytes()
    assert b"\nbrand_new_feature " in c1.read_bytes()


def test_line_longer_than_a_reader_block(model_txt, tlines):
    """A 3 MB line spans several 1 MB reader blocks and still is one sample."""
    base = tlines[7]
    unknown = b" ".join(b"zz_unknown_%d:%d" % (i, i % 5 + 1) for i in range(250_000))
    long_line = base + b" " + unknown
    assert len(long_line) > 3_000_000
    data = b"\n".join(tlines[:5] + [long_line] + tlines[5:10] + [long_line]) + b"\n"
    pr = fm_predict("-m", model_txt[0], "-core", "2", "-q", input=data)
    assert_ok(pr)
    got = predictions(pr.stdout)
    assert len(got) == 12
    ref = predictions(fm_predict("-m", model_txt[0], "-q", input=base + b"\n").stdout)[0]
    # features the model does not know contribute nothing
    assert got[5] == ref and got[11] == ref
    assert got[:5] + got[6:11] == predictions(
        fm_predict("-m", model_txt[0], "-q", input=b"\n".join(tlines[:10]) + b"\n").stdout)
