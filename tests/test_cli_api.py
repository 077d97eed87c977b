"""The commands are thin clients of streamfm.FM: fm_predict's output is
FM.write_predictions', fm_dump importance's is FM.importance', the bad-lines
files are the same, and fm_train's progress lines are the API's reports."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streamfm import FM
from streamfm.metrics import fmt_metric

from helpers import FM_TRAIN, TEST, TRAIN, assert_ok, fm_dump, fm_predict, fm_train, text, write_lines


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("thin") / "m.bin"
    assert_ok(fm_train("-m", path, "-mf", "bin", "-dim", "1,1,4", "--input", TRAIN, "-q"))
    return path


@pytest.fixture(scope="module")
def test_lines():
    with open(TEST, "rb") as f:
        lines = [next(f).rstrip(b"\n") for _ in range(400)]
    # bad lines at known places: the API must skip them exactly as fm_predict does
    lines[7] = b"1 a:oops"
    lines[100] = b"x b:1"
    return lines


@pytest.mark.parametrize("extra", [[], ["-core", "2"], ["--explain", "3"]])
def test_fm_predict_writes_what_write_predictions_writes(tmp_path, model, test_lines, extra):
    inp = tmp_path / "in.txt"
    write_lines(inp, test_lines)
    out = tmp_path / "out.txt"
    r = fm_predict("-m", model, "--input", inp, "-out", out, "--metrics", *extra)
    assert_ok(r)
    import io

    buf = io.BytesIO()
    fm = FM.load(model)
    explain = int(extra[1]) if extra[:1] == ["--explain"] else 0
    rep = fm.write_predictions(test_lines, buf, explain=explain, metrics=True,
                               cores=int(extra[1]) if extra[:1] == ["-core"] else 1)
    assert out.read_bytes() == buf.getvalue()
    assert len(buf.getvalue().splitlines()) == len(test_lines) - 2 == rep.samples
    assert rep.bad == 2 and [b.line for b in rep.bad_lines] == [8, 101]
    err = text(r.stderr)
    assert "logloss %s  auc %s" % (fmt_metric(rep.logloss), fmt_metric(rep.auc)) in err
    assert "mean prediction %s  observed rate %s" % (fmt_metric(rep.mean_prediction),
                                                     fmt_metric(rep.positive_rate)) in err
    assert "  bad lines: %s" % rep.bad_description in err


def test_bad_lines_file_of_the_api_is_the_commands(tmp_path, test_lines):
    inp = tmp_path / "in.txt"
    write_lines(inp, test_lines)
    cli_bad, api_bad = tmp_path / "cli.bad", tmp_path / "api.bad"
    assert_ok(fm_train("-m", tmp_path / "m.txt", "-dim", "1,1,2", "--input", inp, "--bad-lines", cli_bad, "-q"))
    fm = FM(k=2)
    rep = fm.partial_fit(test_lines, bad_lines=api_bad)
    assert api_bad.read_bytes() == cli_bad.read_bytes()
    assert api_bad.read_bytes().splitlines()[0].startswith(b"8\t")
    assert rep.bad == 2 and rep.bad_description == "feature value is not a number: 1, label is not a number: 1"


def test_fm_dump_importance_prints_fm_importance(tmp_path, model, test_lines):
    inp = tmp_path / "in.txt"
    write_lines(inp, test_lines)
    fm = FM.load(model)
    for extra, kw in [([], {}), (["--by-field", "_", "--top", "5"], {"by_field": "_", "top": 5})]:
        r = fm_dump("importance", "-m", model, "--input", inp, "-q", *extra)
        assert_ok(r)
        rows = fm.importance(test_lines, **kw)
        want = b"".join(b"%s %d %s %s\n" % (n, c, repr(p).encode(), repr(a).encode()) for n, c, p, a in rows)
        assert r.stdout == want and rows
        # each row: the mean of |phi| over the samples the feature (field) takes part in
        assert all(c > 0 and a >= abs(p) for _, c, p, a in rows)
    assert fm.last_report.bad == 2


def test_importance_is_the_mean_of_explains_phis(model, test_lines):
    fm = FM.load(model)
    rows = {n.decode(): (c, p, a) for n, c, p, a in fm.importance(test_lines)}
    phis = {}
    for ex in fm.explain(test_lines, top=1 << 30):
        for name, phi in ex or []:
            phis.setdefault(name, []).append(phi)
    known = {n: v for n, v in phis.items() if n in rows}
    assert set(known) == set(rows)
    for name, vals in known.items():
        c, p, a = rows[name]
        assert c == len(vals)
        assert p == pytest.approx(np.mean(vals), rel=1e-12, abs=1e-15)
        assert a == pytest.approx(np.mean(np.abs(vals)), rel=1e-12, abs=1e-15)


def test_fm_train_progress_lines_and_sigint_when_the_parent_ignores_it(tmp_path):
    """fm_train prints the API's progress reports as its progress lines; Ctrl-C
    stops it even when it was started with SIGINT ignored (a background job)."""
    err_path = tmp_path / "stderr.txt"
    target = tmp_path / "m.txt"
    with open(err_path, "wb") as err, open(TRAIN, "rb") as f:
        lines = [next(f) for _ in range(300)]
        proc = subprocess.Popen([FM_TRAIN, "-m", target, "-dim", "1,1,2", "--progress-every", "0.1"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            proc.stdin.write(b"".join(lines))
            proc.stdin.flush()
            deadline = time.time() + 60
            progress = None
            while time.time() < deadline and progress is None:
                time.sleep(0.1)
                progress = re.search(r"fm_train: 300 lines  300 samples  ([\d,]+) features  [\d,]+ samples/s"
                                     r"  logloss (\d\.\d{6})  auc (\d\.\d{6})", err_path.read_text())
            assert progress, err_path.read_text()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdin.close()
    err_text = err_path.read_text()
    assert rc == 128 + signal.SIGINT, err_text
    assert "fm_train: interrupted (SIGINT) after 300 lines; no model written" in err_text
    assert not target.exists()
    # the progress line is the API's report of the same samples
    fm = FM(k=2)
    rep = fm.partial_fit([ln.rstrip(b"\n") for ln in lines])
    assert int(progress.group(1).replace(",", "")) == rep.n_features
    assert progress.group(2) == fmt_metric(rep.logloss) and progress.group(3) == fmt_metric(rep.auc)


def test_library_warnings_go_to_logging_only(tmp_path, caplog):
    """A bad line is a WARNING of the 'streamfm' logger; with no logging set up
    nothing reaches stderr (no last-resort handler)."""
    code = "import streamfm; streamfm.FM(k=2).partial_fit([b'1 a', b'1 a:x'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r.stderr
    with caplog.at_level(logging.WARNING, logger="streamfm"):
        FM(k=2).partial_fit([b"1 a", b"1 a:x"])
    assert [r.getMessage() for r in caplog.records] == [
        "input line 2: feature value is not a number (column 3): 1 a:x"]
