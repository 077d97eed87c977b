"""One input policy and one pipeline for every reading command (issue 10).

The bad-line policy (streamfm.badlines.BadLineLog) and the reader -> workers
pipeline (streamfm.pipeline.run_workers) are shared by fm_train, fm_predict,
fm_recall and the Python API: the same input gives the same counts, the same
messages and the same stop under --max-bad-fraction, whichever reads it.
"""

import io
import os
import sys
import threading

import pytest

from helpers import fm_predict, fm_train, run, text
from streamfm.badlines import BadInputStop, BadLineLog
from streamfm.pipeline import run_workers
from streamfm.reader import BlockReader
from streamfm.train import Options

FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")

# 1200 lines, every third one bad (400 bad: a third)
GOOD = [b"1 a:1 b c:0.5", b"0 b d", b"1 a e:2", b"0 d f"]
LINES = b"".join((b"1 a:zz\n" if i % 3 == 2 else GOOD[i % 4] + b"\n") for i in range(1200))
N_BAD = 400


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    path = d / "m.txt"
    good = b"".join(g + b"\n" for g in GOOD) * 50
    r = fm_train("-m", path, "-dim", "1,1,2", "-q", input=good)
    assert r.returncode == 0, text(r.stderr)
    return path


def test_train_and_predict_stop_past_the_same_fraction(model, tmp_path):
    msg = "input: %d of 1200 lines were bad (more than --max-bad-fraction 0.3)" % N_BAD
    out = tmp_path / "new.txt"
    r = fm_train("-m", out, "-dim", "1,1,2", "--max-bad-fraction", "0.3", input=LINES)
    assert r.returncode == 3 and msg + ", no model written" in text(r.stderr), text(r.stderr)
    assert not out.exists()
    pred = tmp_path / "pred.txt"
    pred.write_bytes(b"kept\n")
    r = fm_predict("-m", model, "-out", pred, "--max-bad-fraction", "0.3", input=LINES)
    assert r.returncode == 3 and msg in text(r.stderr), text(r.stderr)
    assert pred.read_bytes() == b"kept\n"  # the old output is not replaced by a partial one


def test_under_the_fraction_every_command_counts_the_same(model, tmp_path):
    r = fm_train("-m", tmp_path / "m2.txt", "-dim", "1,1,2", "--max-bad-fraction", "0.34", input=LINES)
    assert r.returncode == 0, text(r.stderr)
    assert "bad lines skipped    %d" % N_BAD in text(r.stderr)
    r = fm_predict("-m", model, "--max-bad-fraction", "0.34", input=LINES)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1200 - N_BAD
    assert "%d bad" % N_BAD in text(r.stderr)


def test_recall_index_applies_the_fraction_on_every_block(tmp_path):
    """Recall reads records through the same policy: the fraction stops it too."""
    items = b"".join((b"i%d bad:zz\n" % i if i % 3 == 2 else b"i%d item=i%d cat=c%d\n" % (i, i, i % 5))
                     for i in range(1200))
    (tmp_path / "items.txt").write_bytes(items)
    clicks = b"".join(b"u%d user=u%d | i%d\n" % (i % 50, i % 50, (7 * i) % 1200) for i in range(3000))
    r = run(FM_RECALL, "train", "-m", tmp_path / "r.txt", "--items", tmp_path / "items.txt", "-dim", "1,1,4",
            "--epochs", "1", "-q", input=clicks)
    assert r.returncode == 0, text(r.stderr)
    r = run(FM_RECALL, "index", "-m", tmp_path / "r.txt", "--items", tmp_path / "items.txt", "-o",
            tmp_path / "i.idx", "--max-bad-fraction", "0.3")
    assert r.returncode == 3, text(r.stderr)
    assert "of 1200 lines were bad (more than --max-bad-fraction 0.3)" in text(r.stderr)
    assert not (tmp_path / "i.idx").exists()


def test_bad_line_log_stop_and_fraction_messages():
    bad = BadLineLog(Options(on_error="skip", max_bad_fraction=0.5, quiet=True), lambda m: None, "clicks")
    for i in range(3):
        bad.add_record(10 + i, "bad thing", 4, b"raw")
    bad.check_fraction(5)  # under 1000 lines: no trend yet
    with pytest.raises(BadInputStop) as e:
        bad.check_fraction(5, final=True, what=", nothing written")
    assert str(e.value) == "clicks: 3 of 5 lines were bad (more than --max-bad-fraction 0.5), nothing written"
    assert bad.describe() == "bad thing: 3"
    stop = BadLineLog(Options(on_error="stop", quiet=True), lambda m: None)
    with pytest.raises(BadInputStop) as e:
        stop.add_record(7, "bad thing", 0, b"raw")
    assert str(e.value) == "input line 7: bad thing (column 1); stopped (--on-error stop)"


def test_stop_tells_only_the_line_that_stopped(model, tmp_path):
    """--on-error stop ends the run at its first bad line: the later bad lines of
    its block are neither warned about nor kept, and no counts are promised."""
    data = b"1 a:1 b\n" * 5 + b"x bad\n" * 15 + b"0 a\n"
    for cmd, args in ((fm_train, ("-m", tmp_path / "new.txt")), (fm_predict, ("-m", model))):
        bad = tmp_path / "bad.txt"
        r = cmd(*args, "--on-error", "stop", "--bad-lines", bad, input=data)
        err = text(r.stderr)
        assert r.returncode == 3, err
        assert err.count("label is not a number") == 2, err  # the warning and the error
        assert "input line 6: label is not a number (column 1); stopped (--on-error stop)" in err
        assert "more bad lines" not in err and "line 7" not in err
        assert bad.read_bytes() == b"6\tlabel is not a number\tx bad\n"
    assert not (tmp_path / "new.txt").exists()


def test_run_workers_raises_the_first_worker_error_after_all_stopped():
    data = b"".join(b"1 a%d\n" % i for i in range(20000))
    done = []
    lock = threading.Lock()

    def failing(blk):
        raise ValueError("worker broke")

    def slow(blk):
        with lock:
            done.append(blk.n_lines)

    reader = BlockReader(io.BytesIO(data), block_size=4096)
    with pytest.raises(ValueError, match="worker broke"):
        run_workers(reader, [failing, slow])
    # the healthy worker stopped early: not every block was handled
    assert sum(done) < 20000
    assert not any(t.name in ("streamfm-0", "streamfm-1") for t in threading.enumerate())


def test_run_workers_hands_every_block_once():
    data = b"".join(b"1 a%d\n" % i for i in range(50000))
    seen = []
    lock = threading.Lock()

    def handle(blk):
        with lock:
            seen.append((blk.first_line, blk.n_lines))

    ticks = []
    run_workers(BlockReader(io.BytesIO(data), block_size=8192), [handle, handle, handle], lambda: ticks.append(1))
    seen.sort()
    assert sum(n for _, n in seen) == 50000
    assert all(a + n == b for (a, n), (b, _) in zip(seen, seen[1:]))
