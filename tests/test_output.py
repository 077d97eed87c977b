"""Outputs (issue 9): what an output path is decides how it is written, every
write is checked, an output never destroys an input, an interrupted write
leaves no temporary file (streamfm.output owns every write).

Device nodes and tmpfs mounts are made inside tmp_path and need root; those
tests skip with the reason otherwise. Nothing here touches /dev.
"""

import errno
import os
import re
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import (BIN_DIR, FM_DUMP, FM_PREDICT, FM_TRAIN, REPO, SAMPLE, TEST, TRAIN, assert_ok,
                     assert_one_line_error, model_names, text)
from streamfm import output
from streamfm.model import ModelArrays, read_model, write_model

FM_RECALL = os.path.join(BIN_DIR, "fm_recall")
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod / mount tmpfs inside tmp_path)")
TMP_RE = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\..+\.tmp$")


def call(exe, *args, stdin=None, stdout=subprocess.PIPE, timeout=180, env=None):
    """Run a console script; stdin: bytes, a path, or None (no input)."""
    kw = {}
    if isinstance(stdin, bytes):
        kw["input"] = stdin
    elif stdin is not None:
        kw["stdin"] = open(stdin, "rb")
    else:
        kw["stdin"] = subprocess.DEVNULL
    try:
        return subprocess.run([exe] + [str(a) for a in args], stdout=stdout, stderr=subprocess.PIPE,
                              timeout=timeout, env=env, **kw)
    finally:
        if "stdin" in kw and kw["stdin"] is not subprocess.DEVNULL:
            kw["stdin"].close()


def call_stdout_closed(exe, *args, stdin=None):
    """Run with descriptor 1 closed, as `cmd >&-` does."""
    return call("sh", "-c", 'exec "$0" "$@" >&-', exe, *args, stdin=stdin, stdout=None)


def temp_files(d):
    return [n for n in os.listdir(d) if TMP_RE.match(n)]


def snapshot(path):
    st = os.stat(path)
    return Path(path).read_bytes(), st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------------------
# fixtures: small models, a recall model and index, reference outputs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    data = d / "train.txt"
    data.write_bytes(b"".join(TRAIN.read_bytes().splitlines(keepends=True)[:3000]))
    bad = d / "bad.txt"
    bad.write_bytes(data.read_bytes()[:20000].rsplit(b"\n", 1)[0] + b"\nnot-a-label a:1\n1 b:x\n")
    model = d / "model.txt"
    assert_ok(call(FM_TRAIN, "-m", model, "-dim", "1,1,4", "-q", "--input", data))
    r = call(FM_RECALL, "train", "-m", d / "rm.txt", "--items", SAMPLE / "items.txt", "-dim", "1,1,8",
             "-q", "--input", SAMPLE / "clicks.txt")
    assert_ok(r)
    r = call(FM_RECALL, "index", "-m", d / "rm.txt", "--items", SAMPLE / "items.txt", "-o", d / "items.idx",
             "-q")
    assert_ok(r)

    class W:
        pass
    w = W()
    w.dir, w.data, w.bad, w.model = d, data, bad, model
    w.rmodel, w.index = d / "rm.txt", d / "items.idx"
    w.pred = call(FM_PREDICT, "-m", model, "-q", "--input", TEST).stdout
    w.query = call(FM_RECALL, "query", "-m", w.rmodel, "--index", w.index, "--mode", "u2i", "--topn", "50",
                   "-q", "--input", SAMPLE / "users.txt").stdout
    assert len(w.pred) > 100_000 and len(w.query) > 100_000
    return w


def writer_commands(w, out):
    """(name, executable, args) of every command that writes ``out`` (a path)."""
    if w is None:  # the names only
        class _W:
            dir = data = bad = model = rmodel = index = Path("x")
        w = _W()
    return [
        ("fm_train -m", FM_TRAIN, ["-m", out, "-dim", "1,1,2", "-q", "--input", w.data]),
        ("fm_train --bad-lines", FM_TRAIN, ["-m", w.dir / "scratch.txt", "-dim", "1,1,2", "-q",
                                            "--bad-lines", out, "--input", w.bad]),
        ("fm_predict -out", FM_PREDICT, ["-m", w.model, "-out", out, "-q", "--input", w.data]),
        ("fm_predict --bad-lines", FM_PREDICT, ["-m", w.model, "--bad-lines", out, "-q", "--input", w.bad]),
        ("fm_dump convert", FM_DUMP, ["convert", w.model, out]),
        ("fm_dump strip", FM_DUMP, ["strip", w.model, out]),
        ("fm_dump embeddings", FM_DUMP, ["embeddings", w.model, out]),
        ("fm_recall train -m", FM_RECALL, ["train", "-m", out, "--items", SAMPLE / "items.txt", "-dim", "1,1,4",
                                           "-q", "--input", SAMPLE / "clicks_test.txt"]),
        ("fm_recall index -o", FM_RECALL, ["index", "-m", w.rmodel, "--items", SAMPLE / "items.txt", "-o", out,
                                           "-q"]),
        ("fm_recall query -out", FM_RECALL, ["query", "-m", w.rmodel, "--index", w.index, "--mode", "i2i",
                                             "-out", out, "-q", "--input", SAMPLE / "items.txt"]),
    ]


WRITERS = [name for name, _, _ in writer_commands(None, Path("out"))]


def writer(w, name, out):
    for n, exe, args in writer_commands(w, out):
        if n == name:
            return exe, args
    raise KeyError(name)


# ---------------------------------------------------------------------------
# 1. an output is written as what it is: device and FIFO in place, symlink
#    followed, regular file replaced atomically keeping its mode


@needs_root
@pytest.mark.parametrize("name", WRITERS)
def test_device_node_is_written_in_place_never_replaced(work, tmp_path, name):
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        os.close(os.open(dev, os.O_WRONLY))
    except OSError as e:
        pytest.skip("device nodes cannot be opened in tmp_path (%s)" % e.strerror)
    before = os.lstat(dev)
    exe, args = writer(work, name, dev)
    proc = call(exe, *args)
    assert_ok(proc, name)
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode), "%s replaced the device node by a regular file" % name
    assert (st.st_ino, st.st_rdev, st.st_mode) == (before.st_ino, os.makedev(1, 3), before.st_mode)
    assert temp_files(tmp_path) == []


def _read_fifo(path, box):
    with open(path, "rb") as f:
        box.append(f.read())


@pytest.mark.parametrize("name,fmt", [("fm_dump convert", "bin"), ("fm_dump convert", "txt"),
                                      ("fm_predict -out", None), ("fm_recall index -o", None),
                                      ("fm_recall query -out", None), ("fm_dump embeddings", None)])
def test_fifo_gets_exactly_what_a_file_gets(work, tmp_path, name, fmt):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    exe, args = writer(work, name, fifo)
    args = args + (["--to", fmt] if fmt else [])
    box = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, box), daemon=True)
    reader.start()
    proc = call(exe, *args)
    reader.join(30)
    if reader.is_alive() and stat.S_ISFIFO(os.lstat(fifo).st_mode):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the reader
    assert_ok(proc, name)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "%s replaced the FIFO" % name
    ref = tmp_path / "ref"
    exe, args = writer(work, name, ref)
    assert_ok(call(exe, *args + (["--to", fmt] if fmt else [])))
    assert box and box[0] == ref.read_bytes()
    if fmt == "bin":
        m = read_model(str(ref))
        assert m.n_rows > 100
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("name", ["fm_train -m", "fm_predict -out", "fm_dump convert", "fm_train --bad-lines"])
def test_symlink_stays_a_link_and_its_target_is_replaced(work, tmp_path, name):
    real_dir = tmp_path / "real"
    link_dir = tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "out.dat"
    target.write_bytes(b"old\n")
    link = link_dir / "out.dat"
    os.symlink(os.path.join("..", "real", "out.dat"), link)
    exe, args = writer(work, name, link)
    assert_ok(call(exe, *args), name)
    assert os.path.islink(link) and os.readlink(link) == os.path.join("..", "real", "out.dat")
    ref = tmp_path / "ref.dat"
    assert_ok(call(exe, *writer(work, name, ref)[1]))
    assert target.read_bytes() == ref.read_bytes() != b"old\n"
    assert temp_files(real_dir) == [] and temp_files(link_dir) == []
    # a dangling link: the file is created where it points
    target.unlink()
    assert_ok(call(exe, *args), name)
    assert os.path.islink(link) and target.read_bytes() == ref.read_bytes()


def test_descriptor_path_is_written_in_place(work, tmp_path):
    # /proc/self/fd/1 is the command's own standard output: a pipe here ...
    proc = call(FM_PREDICT, "-m", work.model, "-q", "--input", TEST, "-out", "/proc/self/fd/1")
    assert_ok(proc)
    assert proc.stdout == work.pred
    # ... and a regular file there: written in place, the same inode, not renamed over
    out = tmp_path / "pred.txt"
    out.write_bytes(b"")
    ino = os.stat(out).st_ino
    with open(out, "wb") as f:
        proc = call(FM_PREDICT, "-m", work.model, "-q", "--input", TEST, "-out", "/proc/self/fd/1", stdout=f)
    assert_ok(proc)
    assert os.stat(out).st_ino == ino and out.read_bytes() == work.pred
    # ... opened for appending (>>): the descriptor is shared, the output goes after what was there
    out.write_bytes(b"earlier\n")
    with open(out, "ab") as f:
        proc = call(FM_PREDICT, "-m", work.model, "-q", "--input", TEST, "-out", "/proc/self/fd/1", stdout=f)
    assert_ok(proc)
    assert out.read_bytes() == b"earlier\n" + work.pred
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("name", ["fm_train -m", "fm_predict -out", "fm_dump embeddings", "fm_recall index -o",
                                  "fm_train --bad-lines"])
def test_replaced_file_keeps_its_mode_a_new_one_gets_0644(work, tmp_path, name):
    out = tmp_path / "out.dat"
    out.write_bytes(b"old\n")
    os.chmod(out, 0o640)
    exe, args = writer(work, name, out)
    assert_ok(call(exe, *args), name)
    assert out.read_bytes() != b"old\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    new = tmp_path / "new.dat"
    old_umask = os.umask(0o077)  # the child inherits it: 0644 is set, not left to the umask
    try:
        assert_ok(call(exe, *writer(work, name, new)[1]), name)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o644


def test_incremental_training_keeps_the_model_mode(work, tmp_path):
    m = tmp_path / "m.txt"
    m.write_bytes(work.model.read_bytes())
    os.chmod(m, 0o600)
    assert_ok(call(FM_TRAIN, "-im", m, "-m", m, "-dim", "1,1,4", "-q", "--input", SAMPLE / "test.txt"))
    assert stat.S_IMODE(os.stat(m).st_mode) == 0o600
    assert read_model(str(m)).n_rows > read_model(str(work.model)).n_rows


def test_embeddings_dash_is_standard_output(work, tmp_path):
    proc = call(FM_DUMP, "embeddings", work.model, "-")
    assert_ok(proc)
    ref = tmp_path / "emb.txt"
    assert_ok(call(FM_DUMP, "embeddings", work.model, ref))
    assert proc.stdout == ref.read_bytes() and len(proc.stdout) > 1000
    assert not Path("-").exists()
    proc = call(FM_DUMP, "embeddings", work.model, "-", "--format", "npy")
    assert_one_line_error(proc, "npy", code=2)


def test_every_write_of_the_package_goes_through_output():
    """One writer: no module but streamfm/output.py opens files for writing,
    renames temporaries, calls os.write or writes sys.stdout."""
    pattern = re.compile(r"""open\([^)]*["'][wax]b?\+?["']|os\.write\(|os\.replace\(|os\.rename\(|mkstemp"""
                         r"""|sys\.stdout|\.tofile\(|AtomicFile""")
    found = []
    for path in sorted((REPO / "streamfm").rglob("*.py")):
        if path.name == "output.py" and path.parent.name == "streamfm":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append("%s:%d: %s" % (path.relative_to(REPO), no, line.strip()))
    assert found == []


# ---------------------------------------------------------------------------
# 2. short writes are continued, failures name the output


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def stingy(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(memoryview(data)[:7]))

    monkeypatch.setattr(output.os, "write", stingy)
    payload = np.arange(100_000, dtype=np.float64)
    path = tmp_path / "f.bin"
    with output.open_output(str(path)) as out:
        out.write(b"head")
        out.write(payload)                       # a large write, straight through
        out.write(memoryview(b"x" * 5000))       # a small one, buffered
    assert path.read_bytes() == b"head" + payload.tobytes() + b"x" * 5000
    assert len(calls) > 100_000 // 7


def test_a_full_nonblocking_pipe_is_waited_on():
    r, wfd = os.pipe()
    os.set_blocking(wfd, False)
    data = bytes(range(256)) * 20_000            # 5 MB, far more than a pipe holds
    got = bytearray()

    def drain():
        while True:
            time.sleep(0.001)
            b = os.read(r, 1 << 16)
            if not b:
                return
            got.extend(b)

    t = threading.Thread(target=drain)
    t.start()
    try:
        output.write_all(wfd, data, "pipe")
    finally:
        os.close(wfd)
        t.join(30)
        os.close(r)
    assert bytes(got) == data


def test_a_write_error_names_the_output_and_replaces_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.txt"
    path.write_bytes(b"old model\n")
    real_write = os.write
    budget = [50_000]

    def filling(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), budget[0], 4096)
        budget[0] -= n
        return real_write(fd, bytes(memoryview(data)[:n]))

    monkeypatch.setattr(output.os, "write", filling)
    with pytest.raises(output.OutputError) as ei:
        with output.open_output(str(path)) as out:
            for _ in range(100):
                out.write(b"y" * 10_000)
    assert str(path) in str(ei.value) and "No space left" in str(ei.value)
    assert path.read_bytes() == b"old model\n"
    assert temp_files(tmp_path) == []


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs inside tmp_path (root only), unmounted afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root to mount a tmpfs inside tmp_path")
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(d)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % text(r.stderr).strip())
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", str(d)])


def fill(fs, free):
    """Leave ``free`` bytes (a multiple of 4 KB) free in the tmpfs."""
    st = os.statvfs(fs)
    avail = st.f_bavail * st.f_frsize
    size = avail - free
    assert size >= 0, (avail, free)
    with open(fs / "fill", "wb") as f:
        f.write(b"\0" * size)
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize == free


def levels(size):
    """Free space: nothing, a few KB, most of an output of ``size`` bytes."""
    return {"full": 0, "few_kb": 8192, "most": (size - 8192) // 4096 * 4096}


LEVELS = ["full", "few_kb", "most"]


@pytest.mark.parametrize("level", LEVELS)
def test_predict_to_stdout_on_a_full_disk(work, small_fs, level):
    fill(small_fs, levels(len(work.pred))[level])
    out = small_fs / "pred.txt"
    with open(out, "wb") as f:
        proc = call(FM_PREDICT, "-m", work.model, "-q", "--input", TEST, stdout=f)
    assert_one_line_error(proc, "standard output", "no space left")
    got = out.read_bytes()
    assert len(got) < len(work.pred) and work.pred.startswith(got)


@pytest.mark.parametrize("level", LEVELS)
def test_predict_out_file_on_a_full_disk_keeps_the_old_file(work, small_fs, level):
    out = small_fs / "pred.txt"
    out.write_bytes(b"1 0.5\n")
    fill(small_fs, levels(len(work.pred))[level])
    proc = call(FM_PREDICT, "-m", work.model, "-q", "--input", TEST, "-out", out)
    assert_one_line_error(proc, out, "no space left")
    assert out.read_bytes() == b"1 0.5\n"
    assert temp_files(small_fs) == []


@pytest.mark.parametrize("level", LEVELS)
def test_recall_query_to_stdout_on_a_full_disk(work, small_fs, level):
    fill(small_fs, levels(len(work.query))[level])
    out = small_fs / "res.txt"
    with open(out, "wb") as f:
        proc = call(FM_RECALL, "query", "-m", work.rmodel, "--index", work.index, "--mode", "u2i", "--topn", "50",
                    "-q", "--input", SAMPLE / "users.txt", stdout=f)
    assert_one_line_error(proc, "standard output", "no space left")
    got = out.read_bytes()
    assert len(got) < len(work.query) and work.query.startswith(got)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("cmd", ["fm_dump convert", "fm_train -m", "fm_recall index -o", "fm_dump embeddings"])
def test_model_writers_on_a_full_disk_keep_the_old_file(work, small_fs, tmp_path, cmd, level):
    ref = tmp_path / "ref.dat"
    exe, args = writer(work, cmd, ref)
    assert_ok(call(exe, *args))
    size = ref.stat().st_size
    if size < 3 * 8192 and level != "full":
        pytest.skip("%s writes %d bytes: no room between the fill levels" % (cmd, size))
    out = small_fs / "out.dat"
    out.write_bytes(b"old\n")
    fill(small_fs, levels(size)[level])
    proc = call(exe, *writer(work, cmd, out)[1])
    assert_one_line_error(proc, out, "no space left")
    assert out.read_bytes() == b"old\n"
    assert temp_files(small_fs) == []


@pytest.mark.parametrize("cmd", ["fm_recall eval", "fm_recall eval --json", "fm_dump info", "fm_dump importance"])
def test_reports_to_stdout_on_a_full_disk(work, small_fs, cmd):
    fill(small_fs, 0)
    args = {
        "fm_recall eval": [FM_RECALL, "eval", "-m", work.rmodel, "--index", work.index, "-q",
                           "--input", SAMPLE / "clicks_test.txt"],
        "fm_recall eval --json": [FM_RECALL, "eval", "-m", work.rmodel, "--index", work.index, "-q", "--json",
                                  "--input", SAMPLE / "clicks_test.txt"],
        "fm_dump info": [FM_DUMP, "info", work.model],
        "fm_dump importance": [FM_DUMP, "importance", "-m", work.model, "-q", "--input", work.data],
    }[cmd]
    with open(small_fs / "report.txt", "wb") as f:
        proc = call(*args, stdout=f)
    assert_one_line_error(proc, "standard output", "no space left")


STDOUT_WRITERS = {
    "fm_predict": lambda w: [FM_PREDICT, "-m", w.model, "-q", "--input", w.data],
    "fm_recall query": lambda w: [FM_RECALL, "query", "-m", w.rmodel, "--index", w.index, "--mode", "i2i", "-q",
                                  "--input", SAMPLE / "items.txt"],
    "fm_recall eval": lambda w: [FM_RECALL, "eval", "-m", w.rmodel, "--index", w.index, "-q",
                                 "--input", SAMPLE / "clicks_test.txt"],
    "fm_dump info": lambda w: [FM_DUMP, "info", w.model],
    "fm_dump embeddings -": lambda w: [FM_DUMP, "embeddings", w.model, "-"],
    "fm_dump importance": lambda w: [FM_DUMP, "importance", "-m", w.model, "-q", "--input", w.data],
}


@pytest.mark.parametrize("name", sorted(STDOUT_WRITERS))
def test_closed_stdout_is_a_one_line_error(work, name):
    proc = call_stdout_closed(*STDOUT_WRITERS[name](work))
    assert_one_line_error(proc, "standard output is closed")


def test_closed_stdout_does_not_capture_file_outputs(work, tmp_path):
    """With descriptor 1 closed, a file the command opens must not become its
    standard output: fm_train and fm_predict -out still write their files."""
    m = tmp_path / "m.txt"
    proc = call_stdout_closed(FM_TRAIN, "-m", m, "-dim", "1,1,4", "--input", work.data)
    assert proc.returncode == 0, text(proc.stderr)
    assert m.read_bytes() == work.model.read_bytes()
    out = tmp_path / "p.txt"
    proc = call_stdout_closed(FM_PREDICT, "-m", m, "-q", "--input", TEST, "-out", out)
    assert proc.returncode == 0, text(proc.stderr)
    assert out.read_bytes() == work.pred


# ---------------------------------------------------------------------------
# 3. an output never destroys an input


def _same_file_cases(w, d):
    data, model = d / "data.txt", d / "model.txt"
    return {
        "train --bad-lines = --input": ([FM_TRAIN, "-m", d / "m.txt", "--bad-lines", data, "--input", data],
                                        None, [data]),
        "train -m = --input": ([FM_TRAIN, "-m", data, "--input", data], None, [data]),
        "train -m = stdin": ([FM_TRAIN, "-m", data], data, [data]),
        "train -m hard link of --input": ([FM_TRAIN, "-m", d / "hard.txt", "--input", data], None, [data]),
        "train -m symlink to --input": ([FM_TRAIN, "-m", d / "sym.txt", "--input", data], None, [data]),
        "train --bad-lines = -im": ([FM_TRAIN, "-im", model, "-m", d / "m.txt", "-dim", "1,1,4",
                                     "--bad-lines", model, "--input", data], None, [model]),
        "predict -out = --input": ([FM_PREDICT, "-m", model, "-out", data, "--input", data], None, [data]),
        "predict -out = -m": ([FM_PREDICT, "-m", model, "-out", model, "--input", data], None, [model]),
        "predict -out symlink to -m": ([FM_PREDICT, "-m", model, "-out", d / "msym.txt", "--input", data], None,
                                       [model]),
        "predict --bad-lines = stdin": ([FM_PREDICT, "-m", model, "--bad-lines", data, "-out", d / "p.txt"],
                                        data, [data]),
        "predict -out = --bad-lines": ([FM_PREDICT, "-m", model, "-out", d / "p.txt", "--bad-lines",
                                        d / "p.txt", "--input", data], None, [data, model]),
        "dump convert MODEL MODEL": ([FM_DUMP, "convert", model, model], None, [model]),
        "dump strip to a hard link": ([FM_DUMP, "strip", model, d / "mhard.txt"], None, [model]),
        "dump embeddings MODEL MODEL": ([FM_DUMP, "embeddings", model, model], None, [model]),
        "recall train -m = --items": ([FM_RECALL, "train", "-m", d / "items.txt", "--items", d / "items.txt",
                                       "--input", d / "clicks.txt"], None, [d / "items.txt"]),
        "recall train --bad-lines = --input": ([FM_RECALL, "train", "-m", d / "rm2.txt", "--items",
                                                d / "items.txt", "--bad-lines", d / "clicks.txt",
                                                "--input", d / "clicks.txt"], None, [d / "clicks.txt"]),
        "recall train -m = stdin": ([FM_RECALL, "train", "-m", d / "clicks.txt", "--items", d / "items.txt"],
                                    d / "clicks.txt", [d / "clicks.txt"]),
        "recall index -o = --items": ([FM_RECALL, "index", "-m", d / "rm.txt", "--items", d / "items.txt",
                                       "-o", d / "items.txt"], None, [d / "items.txt"]),
        "recall index -o = -m": ([FM_RECALL, "index", "-m", d / "rm.txt", "--items", d / "items.txt",
                                  "-o", d / "rm.txt"], None, [d / "rm.txt"]),
        "recall query -out = --index": ([FM_RECALL, "query", "-m", d / "rm.txt", "--index", d / "items.idx",
                                         "--mode", "i2i", "-out", d / "items.idx", "--input", d / "items.txt"],
                                        None, [d / "items.idx"]),
        "recall query -out = --input": ([FM_RECALL, "query", "-m", d / "rm.txt", "--index", d / "items.idx",
                                         "--mode", "i2i", "-out", d / "items.txt", "--input", d / "items.txt"],
                                        None, [d / "items.txt"]),
        "recall query --bad-lines = --input": ([FM_RECALL, "query", "-m", d / "rm.txt", "--index",
                                                d / "items.idx", "--mode", "i2i", "--bad-lines", d / "items.txt",
                                                "--input", d / "items.txt"], None, [d / "items.txt"]),
    }


SAME_FILE = sorted(_same_file_cases(None, Path("/x")))


@pytest.mark.parametrize("case", SAME_FILE)
def test_an_output_never_overwrites_an_input(work, tmp_path, case):
    d = tmp_path
    (d / "data.txt").write_bytes(work.bad.read_bytes())
    (d / "model.txt").write_bytes(work.model.read_bytes())
    os.link(d / "data.txt", d / "hard.txt")
    os.link(d / "model.txt", d / "mhard.txt")
    os.symlink("data.txt", d / "sym.txt")
    os.symlink(str(d / "model.txt"), d / "msym.txt")
    for name in ("items.txt", "clicks.txt"):
        (d / name).write_bytes((SAMPLE / name).read_bytes())
    (d / "rm.txt").write_bytes(work.rmodel.read_bytes())
    (d / "items.idx").write_bytes(work.index.read_bytes())
    args, stdin, protected = _same_file_cases(work, d)[case]
    before = {p: snapshot(p) for p in protected}
    proc = call(*args, stdin=stdin)
    assert_one_line_error(proc, "same file", code=2)
    for p in protected:
        assert snapshot(p) == before[p], "%s changed" % p
    assert temp_files(d) == []


def test_predict_refuses_stdout_appending_to_its_input(work, tmp_path):
    data = tmp_path / "data.txt"
    data.write_bytes(work.data.read_bytes())
    before = snapshot(data)
    with open(data, "ab") as f:
        proc = call(FM_PREDICT, "-m", work.model, "--input", data, stdout=f)
    assert_one_line_error(proc, "standard output", "same file", code=2)
    assert snapshot(data) == before


def test_continuing_a_model_in_place_is_allowed(work, tmp_path):
    """-im X -m X is the one output that may be an input: it is read whole first."""
    m = tmp_path / "m.txt"
    m.write_bytes(work.model.read_bytes())
    link = tmp_path / "link.txt"
    os.symlink("m.txt", link)
    assert_ok(call(FM_TRAIN, "-im", link, "-m", m, "-dim", "1,1,4", "-q", "--input", TEST))
    ref = tmp_path / "ref.txt"
    assert_ok(call(FM_TRAIN, "-im", work.model, "-m", ref, "-dim", "1,1,4", "-q", "--input", TEST))
    assert m.read_bytes() == ref.read_bytes()
    rm = tmp_path / "rm.txt"
    rm.write_bytes(work.rmodel.read_bytes())
    assert_ok(call(FM_RECALL, "train", "-im", rm, "-m", rm, "-dim", "1,1,8", "--items", SAMPLE / "items.txt",
                   "-q", "--input", SAMPLE / "clicks_test.txt"))
    assert model_names(read_model(str(rm)))[:3] == model_names(read_model(str(work.rmodel)))[:3]


def _dead_pid():
    """A pid no process has (the highest ones are free on any test machine)."""
    for pid in range(4_194_303, 4_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    pytest.skip("no free pid found")


def test_orphans_are_only_this_targets_temporaries_of_dead_writers(tmp_path):
    """Opening pred.txt removes .pred.txt.<dead pid>-<space>.<random>.tmp and nothing else:
    not a live writer's, and not those of a target whose name extends this one's
    (pred.txt.20261201's temporaries, ``.pred.txt.20261201.<pid>-<space>.<random>.tmp``,
    once read as pid 20261201's and deleted under a running fm_predict)."""
    dead = _dead_pid()
    sp = output.pid_space()
    orphan = tmp_path / (".pred.txt.%d-%s.ab_c12xy.tmp" % (dead, sp))
    keep = [tmp_path / (".pred.txt.%d-%s.ab_c12xy.tmp" % (os.getpid(), sp)),     # alive
            tmp_path / (".pred.txt.20261201.%d-%s.q1w2e3r4.tmp" % (dead, sp)),  # another target's
            tmp_path / (".pred.txt.%d-%s.tmp" % (dead, sp)),                    # not mkstemp's form
            tmp_path / (".pred.txt.x%d-%s.ab_c12xy.tmp" % (dead, sp)),
            tmp_path / (".pred.txt.%d-%s.ab.c12xy.tmp" % (dead, sp))]
    for f in [orphan] + keep:
        f.write_bytes(b"partial")
    with output.open_output(str(tmp_path / "pred.txt")) as out:
        out.write(b"1\n")
    assert not orphan.exists()
    assert all(f.read_bytes() == b"partial" for f in keep)
    assert (tmp_path / "pred.txt").read_bytes() == b"1\n"
    # the other target's own writer still finds its temporary gone only if it is dead
    with output.open_output(str(tmp_path / "pred.txt.20261201")) as out:
        out.write(b"2\n")
    assert not keep[1].exists() and keep[0].exists()


def test_a_temporary_of_another_pid_space_is_never_taken_for_an_orphan(tmp_path):
    """A directory shared with another container or machine (a volume, NFS): its
    writer's pid means nothing here, so its temporary model stays while it writes
    (the sweep used to delete it when that pid was free in this namespace, and
    its rename then failed: a trained model lost). Ours are named with our pid
    space, and the writer's own file is renamed into place as before."""
    dead = _dead_pid()
    sp = output.pid_space()
    assert re.fullmatch(r"[0-9a-f]{8}", sp) and output.pid_space() == sp
    other = "%08x" % ((int(sp, 16) + 1) % (1 << 32))
    theirs = tmp_path / (".model.bin.%d-%s.Zx_9k2.tmp" % (dead, other))
    legacy = tmp_path / (".model.bin.%d.Zx_9k2.tmp" % dead)  # an older version's name: its space unknown
    for f in (theirs, legacy):
        f.write_bytes(b"half a model")
    seen = []
    with output.open_output(str(tmp_path / "model.bin")) as out:
        seen = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        out.write(b"model")
    assert theirs.read_bytes() == legacy.read_bytes() == b"half a model"
    ours = [n for n in seen if n not in (theirs.name, legacy.name)]
    assert len(ours) == 1 and re.fullmatch(r"\.model\.bin\.%d-%s\.[A-Za-z0-9_]+\.tmp" % (os.getpid(), sp), ours[0])
    assert (tmp_path / "model.bin").read_bytes() == b"model" and not (tmp_path / ours[0]).exists()


def test_check_distinct_compares_files_not_names(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b")
    os.symlink("a", tmp_path / "c")
    for alias in ("b", "c", "./a", "sub/../a"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(output.SameFileError):
            output.check_distinct([("-o", str(tmp_path / alias))], [("-i", str(a))])
    output.check_distinct([("-m", str(a))], [("-im", str(tmp_path / "c"))], allow={("-m", "-im")})
    output.check_distinct([("-o", str(tmp_path / "new"))], [("-i", str(a))])
    with pytest.raises(output.SameFileError):  # two outputs, one new file
        output.check_distinct([("-o", str(tmp_path / "new")), ("-p", str(tmp_path / "sub/../new"))], [])


# ---------------------------------------------------------------------------
# 4. SIGTERM / SIGINT while an output is written: no temporary file, old file intact


K = 8


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A 300,000-feature text model (~160 MB): writing it takes seconds."""
    n = 300_000
    names = [b"bias"] + [b"feature_%07d" % i for i in range(1, n)]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in names])
    arena = np.frombuffer(b"".join(names), np.uint8).copy()
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("bigout") / "big.txt"
    write_model(ModelArrays(arena, off, rng.normal(0, 0.1, size=(n, 1 + K)),
                            rng.random((n, 2 + 2 * K)) + 0.5, {"k": K}), str(path), "txt")
    return path


def _signal_while_writing(argv, d, target, sig):
    before = target.read_bytes()
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        tmps = []
        while time.time() < deadline and proc.poll() is None and not tmps:
            tmps = temp_files(d)
            time.sleep(0.002)
        assert tmps, "no temporary file seen; exit %s: %s" % (proc.poll(), proc.stderr.read())
        t = time.time()
        while time.time() - t < 10 and os.path.exists(d / tmps[0]) and os.path.getsize(d / tmps[0]) < (4 << 20):
            time.sleep(0.002)
        assert proc.poll() is None, "finished before the signal"
        proc.send_signal(sig)
        rc = proc.wait(60)
        err = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert rc == 128 + sig, (rc, err)
    assert "Traceback" not in err and "interrupted (%s)" % sig.name in err, err
    assert temp_files(d) == [], "the interrupted writer left its temporary file"
    assert target.read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_the_model_write_removes_the_temporary(tmp_path, big_model, sig):
    target = tmp_path / "model.txt"
    target.write_bytes(b"bias 0.5 0 0\n")
    # no input (--allow-empty: the model is still written), so the write is all the run does
    _signal_while_writing([FM_TRAIN, "-im", big_model, "-m", target, "-dim", "1,1,%d" % K, "-q", "--allow-empty"],
                          tmp_path, target, sig)


def test_sigterm_during_fm_dump_convert_removes_the_temporary(tmp_path, big_model):
    src = tmp_path / "big.bin"
    assert_ok(call(FM_DUMP, "convert", big_model, src))
    target = tmp_path / "out.txt"
    target.write_bytes(b"bias 0.5\n")
    _signal_while_writing([FM_DUMP, "convert", src, target], tmp_path, target, signal.SIGTERM)


def test_sigterm_during_predict_out_removes_the_temporary(work, tmp_path):
    """fm_predict -out FILE fed by a slow pipe: SIGTERM mid-run leaves the old file."""
    out = tmp_path / "pred.txt"
    out.write_bytes(b"1 0.5\n")
    proc = subprocess.Popen([FM_PREDICT, "-m", str(work.model), "-out", str(out), "-q"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(work.data.read_bytes())
        proc.stdin.flush()
        deadline = time.time() + 60
        while time.time() < deadline and not temp_files(tmp_path):
            time.sleep(0.01)
        time.sleep(1.0)     # some blocks scored and written to the temporary file
        assert temp_files(tmp_path) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert temp_files(tmp_path) == []
    assert out.read_bytes() == b"1 0.5\n"
