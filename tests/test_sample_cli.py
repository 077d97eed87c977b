"""fm_sample's commands: --help, the checkout launcher, outputs that must not clobber inputs."""

import os

import pytest

from helpers import REPO, run
from sample_helpers import FM_SAMPLE, fm_sample, make_dir


@pytest.mark.parametrize("cmd, words", [
    ([], [b"fit", b"rank", b"recall", b"audit", b"correct", b"Build FM samples from exposure logs"]),
    (["fit"], [b"--spec", b"--sketch-k", b"quantile", b"min_count", b"--on-error", b"--bad-lines"]),
    (["rank"], [b"--negatives", b"skip-above+K", b"--neg-rate", b"p' = p / (p + (1 - p) / R)", b"--weights",
                b"--max-bad-fraction", b"--quiet"]),
    (["recall"], [b"--catalog", b"--clicks", b"--users-out", b"USER_KEY USER_FEATS | ITEM_KEY"]),
    (["audit"], [b"--compare", b"coverage", b"mean |phi|", b"--sep"]),
    (["correct"], [b"--neg-rate", b"P / (P + (1 - P) / R)"]),
])
def test_help(cmd, words):
    r = fm_sample(*(cmd + ["--help"]))
    assert r.returncode == 0, r.stderr
    for w in words:
        assert w in r.stdout, (cmd, w)


def test_checkout_launcher():
    r = run(str(REPO / "bin" / "fm_sample"), "rank", "-h")
    assert r.returncode == 0 and b"--negatives" in r.stdout


def test_output_may_not_be_an_input(tmp_path):
    path = make_dir(tmp_path)
    log = tmp_path / "log.tsv"
    log.write_text("req\tpos\tuid\tiid\tclick\n")
    before = log.read_bytes()
    r = fm_sample("rank", "--spec", path, "--input", log, "-o", log)
    assert r.returncode == 2 and b"-o %s is the same file as --input %s" % (bytes(log), bytes(log)) in r.stderr
    r = fm_sample("rank", "--spec", path, "--input", log, "-o", tmp_path / "users.tsv")
    assert r.returncode == 2 and b"is the same file as --users" in r.stderr
    assert log.read_bytes() == before
    r = fm_sample("rank", "--spec", path, "--input", log, "-o", tmp_path / "no" / "such" / "dir.txt")
    assert r.returncode == 1 and b"does not exist" in r.stderr


def test_fifo_output_is_written_not_replaced(tmp_path):
    path = make_dir(tmp_path)
    log = tmp_path / "log.tsv"
    log.write_text("req\tpos\tuid\tiid\tclick\nr\t0\tu1\ti1\t1\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    got = []
    t = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    t.start()
    r = fm_sample("rank", "--spec", path, "--input", log, "-o", fifo, "-q")
    t.join(60)
    assert r.returncode == 0, r.stderr
    assert got and got[0].startswith(b"1 uid=u1 age=1 hist=i2 hist=i3 iid=i1")
    assert os.path.exists(fifo) and not os.path.isfile(fifo)


def test_empty_log(tmp_path):
    path = make_dir(tmp_path)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    r = fm_sample("rank", "--spec", path, "--input", empty, "-o", tmp_path / "out.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_bytes() == b""
    (tmp_path / "empty.jsonl").write_text("")
    r = fm_sample("fit", "--spec", path, "--input", tmp_path / "empty.jsonl", "-o", tmp_path / "f.json")
    assert r.returncode == 0, r.stderr


def _reader_leaves_early(*cmd):
    """Run a command whose standard output is read for one line and closed (``| head -1``):
    (exit status, stderr)."""
    import subprocess

    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read()
        return p.wait(120), err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_reader_that_leaves_early_ends_it_quietly_as_fm_predict(tmp_path):
    # both outputs are far beyond a pipe's 64 KiB, so each command is still writing when the reader leaves
    from helpers import FM_PREDICT, FM_TRAIN, assert_ok
    from sample_helpers import random_rows, write_log

    path = make_dir(tmp_path)
    log = tmp_path / "log.tsv"
    write_log(log, random_rows(4000), "tsv")
    lines = tmp_path / "lines.txt"
    assert_ok(fm_sample("rank", "--spec", path, "--input", log, "-o", lines, "-q"))
    assert lines.stat().st_size > 1 << 19
    model = tmp_path / "model.txt"
    assert_ok(run(FM_TRAIN, "-m", model, "-dim", "1,1,2", "-core", "1", "--input", lines, "-q"))
    want, predict_err = _reader_leaves_early(FM_PREDICT, "-m", model, "-core", "1", "--input", lines, "-q")
    assert predict_err == b"" and want == 1
    for args in (["rank", "--spec", path, "--input", log], ["rank", "--spec", path, "--input", log, "-q"],
                 ["correct", "--neg-rate", "0.5", "--input", lines]):
        status, err = _reader_leaves_early(FM_SAMPLE, *args)
        assert status == want, (args, err)
        assert b"Broken pipe" not in err and b"Traceback" not in err and b"error" not in err, (args, err)
