"""Crash safety: SIGKILL while a model is written, SIGINT/SIGTERM while training.

docs/design.md, "File formats" and "Output files": every model file is written to a temporary file beside the
target and renamed over it, so a crash never leaves a half-written model.
fm_train: without --save-on-interrupt an interrupted run writes nothing and
exits 128+signal; with it, it writes the model trained so far and exits 0.
"""

import os
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from helpers import FM_TRAIN, model_names
from streamfm.model import ModelArrays, read_model, write_model
from streamfm.predict import ServingModel

K = 8


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A 300,000-feature text model (~200 MB): loading and writing it take a while."""
    n = 300_000
    names = [b"bias"] + [b"feature_%07d" % i for i in range(1, n)]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in names])
    arena = np.frombuffer(b"".join(names), np.uint8).copy()
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.1, size=(n, 1 + K))
    state = rng.random((n, 2 + 2 * K)) + 0.5
    path = tmp_path_factory.mktemp("big") / "big.txt"
    write_model(ModelArrays(arena, off, weights, state, {"k": K}), str(path), "txt")
    return path


def _small_model(path, fmt):
    n = 4
    names = [b"bias", b"old_a", b"old_b", b"old_c"]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in names])
    arena = np.frombuffer(b"".join(names), np.uint8).copy()
    w = np.arange(n * (1 + K), dtype=np.float64).reshape(n, 1 + K) / 7
    w[0, 1:] = 0
    s = np.zeros((n, 2 + 2 * K))
    write_model(ModelArrays(arena, off, w, s, {"k": K}), str(path), fmt)


def _tmp_files(d, name):
    pat = re.compile(r"^\.%s\..+\.tmp$" % re.escape(name))
    return [f for f in os.listdir(d) if pat.match(f)]


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_sigkill_while_writing_keeps_the_previous_model(tmp_path, big_model, fmt):
    target = tmp_path / ("model." + fmt)
    _small_model(target, fmt)
    before = target.read_bytes()
    proc = subprocess.Popen([FM_TRAIN, "-im", str(big_model), "-m", str(target), "-mf", fmt, "-dim", "1,1,%d" % K,
                             "--quiet", "--allow-empty"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        tmps = []
        while time.time() < deadline and proc.poll() is None:
            tmps = _tmp_files(tmp_path, target.name)
            if tmps:
                break
            time.sleep(0.001)
        assert tmps, "no temporary file seen; exit %s: %s" % (proc.poll(), proc.stderr.read())
        # into the write (txt: some MB out; bin: its first bytes), not at the file's creation:
        # a kill between open and the first write would leave an empty file, which proves nothing
        want = (8 << 20) if fmt == "txt" else 1
        t = time.time()
        while time.time() - t < 5 and os.path.getsize(tmp_path / tmps[0]) < want:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    # the killed writer left its partial temporary file, and the target untouched
    left = _tmp_files(tmp_path, target.name)
    assert left == tmps
    assert 0 < os.path.getsize(tmp_path / left[0]) < big_model.stat().st_size
    assert target.read_bytes() == before
    m = read_model(str(target))
    assert model_names(m) == [b"bias", b"old_a", b"old_b", b"old_c"]
    s = ServingModel.load(str(target), k=K)
    assert s.n_rows == 4
    # the temporary file is not a model anybody picks up: a new run replaces the target cleanly
    proc = subprocess.run([FM_TRAIN, "-im", str(target), "-m", str(target), "-mf", fmt, "-dim", "1,1,%d" % K, "-q"],
                          input=b"1 new_feature old_a\n", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert model_names(read_model(str(target))) == [b"bias", b"old_a", b"old_b", b"old_c", b"new_feature"]


def test_sigkill_while_writing_a_first_model_leaves_no_model(tmp_path, big_model):
    target = tmp_path / "first.txt"
    proc = subprocess.Popen([FM_TRAIN, "-im", str(big_model), "-m", str(target), "-dim", "1,1,%d" % K, "-q",
                             "--allow-empty"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not _tmp_files(tmp_path, target.name):
            time.sleep(0.001)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not target.exists()


# ---------------------------------------------------------------------------
# SIGINT / SIGTERM during training, input from a slow pipe

FAST_BYTES = 2_600_000          # more than two 1 MB reader blocks
SURE_BYTES = 1_000_000          # lines wholly inside this prefix were certainly trained


class SlowFeeder:
    """fm_train reading from a pipe: a fast first part, then a line every 20 ms."""

    def __init__(self, args, tmp_path):
        self.err_path = tmp_path / "stderr.txt"
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([FM_TRAIN] + [str(a) for a in args], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        self.fast_names = []
        self.sure_names = set()
        self.slow_names = []
        self.fast_done = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        lines = []
        size = 0
        i = 0
        while size < FAST_BYTES:
            name = b"pre_%d" % i
            ln = b"%d %s:1 common:0.5\n" % (i % 2, name)
            lines.append(ln)
            self.fast_names.append(name)
            if size + len(ln) <= SURE_BYTES:
                self.sure_names.add(name)
            size += len(ln)
            i += 1
        try:
            self.proc.stdin.write(b"".join(lines))
            self.proc.stdin.flush()
            self.fast_done.set()
            j = 0
            while not self.stop.is_set():
                name = b"slow_%d" % j
                self.slow_names.append(name)
                self.proc.stdin.write(b"1 %s:1\n" % name)
                self.proc.stdin.flush()
                j += 1
                time.sleep(0.02)
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close_input(self):
        self.stop.set()
        self.thread.join(10)
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def stderr(self):
        self.err.flush()
        return self.err_path.read_text(errors="replace")

    def cleanup(self):
        self.stop.set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.err.close()


def _start(tmp_path, target, *extra):
    f = SlowFeeder(["-m", target, "-dim", "1,1,2"] + list(extra), tmp_path)
    assert f.fast_done.wait(60), "fm_train did not read its input"
    time.sleep(0.5)             # let the workers train the blocks read so far
    assert f.proc.poll() is None, f.stderr()
    return f


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_without_save_writes_nothing(tmp_path, sig):
    target = tmp_path / "model.txt"
    f = _start(tmp_path, target)
    try:
        f.proc.send_signal(sig)
        time.sleep(0.3)
        f.close_input()         # (see test_interrupt_stops_a_stalled_input for why)
        rc = f.proc.wait(30)
        err = f.stderr()
        assert rc == 128 + sig, err
        assert "interrupted" in err and "no model written" in err
        assert "Traceback" not in err
        assert not target.exists()
        assert os.listdir(tmp_path) == ["stderr.txt"]
    finally:
        f.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_with_save_writes_what_was_seen(tmp_path, sig):
    target = tmp_path / "model.txt"
    f = _start(tmp_path, target, "--save-on-interrupt")
    try:
        f.proc.send_signal(sig)
        time.sleep(0.3)
        f.close_input()
        rc = f.proc.wait(30)
        err = f.stderr()
        assert rc == 0, err
        assert "interrupted (%s), model saved" % sig.name in err
        m = read_model(str(target))
        names = set(model_names(m)[1:])
        assert f.sure_names <= names
        assert names <= set(f.fast_names) | set(f.slow_names) | {b"common"}
        assert b"common" in names
    finally:
        f.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_a_stalled_input(tmp_path, sig):
    """A signal must end the run while the pipe stays open and nearly idle
    (a retrain fed by `tail -f` or a slow upstream job)."""
    target = tmp_path / "model.txt"
    f = _start(tmp_path, target, "--save-on-interrupt")
    try:
        f.proc.send_signal(sig)
        try:
            rc = f.proc.wait(3)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, "still running 3 s after %s with the input open:\n%s" % (sig.name, f.stderr())
        assert target.exists()
    finally:
        f.cleanup()


def test_sigint_while_loading_the_initial_model(tmp_path):
    """Ctrl-C while -im loads (minutes for a big model): exit 130, no traceback, no model."""
    fifo = tmp_path / "init.fifo"
    os.mkfifo(fifo)
    target = tmp_path / "out.txt"
    proc = subprocess.Popen([FM_TRAIN, "-im", str(fifo), "-m", str(target), "-dim", "1,1,2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        w = open(fifo, "wb")    # returns once fm_train opened the model file: it is loading
        w.write(b"bias 0.1 0.2 0.3\n")
        w.flush()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        w.close()
        err = proc.stderr.read().decode(errors="replace")
        assert "Traceback" not in err
        assert rc in (130, -signal.SIGINT), (rc, err)
        assert not target.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_a_failed_bad_lines_file_keeps_the_trained_model(tmp_path):
    """The --bad-lines file is committed when training ends; if that fails (here
    its temporary file vanished, as when another process swept it) the trained
    model is still written, and the run exits 1 naming the bad-lines file."""
    target = tmp_path / "model.txt"
    bad = tmp_path / "bad.txt"
    f = _start(tmp_path, target, "--bad-lines", bad)
    try:
        temps = [n for n in os.listdir(tmp_path) if n.startswith(".bad.txt.") and n.endswith(".tmp")]
        assert len(temps) == 1, os.listdir(tmp_path)
        os.unlink(tmp_path / temps[0])
        f.close_input()
        rc = f.proc.wait(60)
        err = f.stderr()
        assert rc == 1, err
        assert "Traceback" not in err
        assert str(bad) in err and "the model was written: %s" % target in err
        names = set(model_names(read_model(str(target)))[1:])
        assert f.sure_names <= names and set(f.slow_names[:1]) <= names
        assert not bad.exists()
    finally:
        f.cleanup()
