"""Shared helpers of the parser, model-file, CLI and fault tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
TRAIN = SAMPLE / "train.txt"
TEST = SAMPLE / "test.txt"

BIN_DIR = os.path.dirname(sys.executable)
FM_TRAIN = os.path.join(BIN_DIR, "fm_train")
FM_PREDICT = os.path.join(BIN_DIR, "fm_predict")
FM_DUMP = os.path.join(BIN_DIR, "fm_dump")


def run(cmd, *args, input=None, timeout=120, cwd=None):
    """Run a console script; returns CompletedProcess with bytes stdout/stderr."""
    return subprocess.run([cmd] + [str(a) for a in args], input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)


def fm_train(*args, **kw):
    return run(FM_TRAIN, *args, **kw)


def fm_predict(*args, **kw):
    return run(FM_PREDICT, *args, **kw)


def fm_dump(*args, **kw):
    return run(FM_DUMP, *args, **kw)


def text(b):
    return b.decode("utf-8", "replace")


def assert_ok(proc, what=""):
    assert proc.returncode == 0, "%s exit %d\nstderr:\n%s" % (what, proc.returncode, text(proc.stderr))


def assert_one_line_error(proc, *needles, code=1):
    """A clean failure: exit ``code``, no traceback, one non-empty stderr line
    containing every needle (case-insensitive)."""
    err = text(proc.stderr)
    assert proc.returncode == code, "exit %d (want %d)\nstderr:\n%s" % (proc.returncode, code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, "want a one-line error, got:\n%s" % err
    check_message(lines[0], needles)
    return lines[0]


def check_message(msg, needles):
    """Every needle is in msg (case-insensitive); path needles (os.PathLike) are
    looked for first and blanked out, so a word in a path never counts."""
    rest = msg
    for n in needles:
        if isinstance(n, os.PathLike):
            assert str(n) in msg, "%s not in %r" % (n, msg)
            rest = rest.replace(str(n), "<path>")
    for n in needles:
        if not isinstance(n, os.PathLike):
            assert str(n).lower() in rest.lower(), "%r not in %r" % (n, msg)


def parse_bytes(data):
    """streamfm.parse.parse over a bytes object (a fresh buffer set)."""
    from streamfm import parse

    buf = np.frombuffer(data, dtype=np.uint8)
    return parse.parse(buf, data.count(b"\n") + 1, parse.ParseBuffers(0))


def samples_of(p):
    """[(y, [(name bytes, value), ...]), ...] of a Parsed."""
    data = bytes(p.buf)
    out = []
    for s in range(p.n_samples):
        feats = []
        for j in range(p.indptr[s], p.indptr[s + 1]):
            a = int(p.name_start[j])
            feats.append((data[a:a + int(p.name_len[j])], float(p.vals[j])))
        out.append((float(p.ys[s]), feats))
    return out


def bad_of(p):
    """[(line index, reason, column), ...] of a Parsed."""
    return list(zip(p.bad_line.tolist(), p.bad_reason.tolist(), p.bad_col.tolist()))


def predictions(stdout):
    """[(label int, probability float), ...] of fm_predict output."""
    out = []
    for ln in stdout.splitlines():
        a, b = ln.split()
        out.append((int(a), float(b)))
    return out


def model_names(arrays):
    return [arrays.name_bytes(r) for r in range(arrays.n_rows)]


def write_lines(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(ln + b"\n" for ln in lines))


def without_hash_key(data):
    """A binary model's bytes with its random hash key (and the header crc) zeroed.

    Each model draws its own key (docs: Feature hash), so two runs that
    compute the same model differ in those 20 bytes and nowhere else; text
    models carry no key and pass through unchanged.
    """
    import msgpack

    if not data.startswith(b"\x89SFMBIN\n"):
        return data
    hlen = int.from_bytes(data[8:12], "little")
    key = msgpack.unpackb(data[16:16 + hlen], raw=False)["hash_key"]
    assert isinstance(key, bytes) and len(key) == 16
    i = data.index(b"\xa8hash_key\xc4\x10" + key, 16, 16 + hlen) + 11
    return data[:12] + bytes(4) + data[16:i] + bytes(16) + data[i + 16:]
