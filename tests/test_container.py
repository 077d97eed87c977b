"""The one binary container (streamfm/container.py) that models and recall
indexes share: byte-exact against files the pre-container writers made,
the same bytes on a pipe as in a regular file, and the reader's checks.

The fixtures in tests/data/container/ (gzipped: most of a model file is the
zeros of its header reserve) were written by model.write_bin and
recall.index.write_index as they stood at commit bae3d46, before the format
moved to container.py, from exactly the sources ``sources()`` builds; the
writers now must reproduce them byte for byte and the readers read them.
"""

import gzip
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from streamfm import ftrl
from streamfm.model import Model, ModelArrays, read_model, read_txt, write_bin, write_txt
from streamfm.recall.index import model_fingerprint, read_index, write_index

DATA = Path(__file__).resolve().parent / "data" / "container"
KEY = bytes(range(3, 19))  # a fixed table hash key: the file bytes must not depend on a random one


def _names(n):
    names = [b"bias"] + [b"f%d:c%d" % (i % 5, i) for i in range(1, n)]
    off = np.zeros(n + 1, np.int64)
    np.cumsum([len(x) for x in names], out=off[1:])
    return np.frombuffer(b"".join(names), np.uint8).copy(), off


def _full_arrays(n=37, k=3, dtype=np.float64, seed=1):
    """A full model's arrays: FTRL rows of made-up but valid numbers (n columns >= 0)."""
    rng = np.random.default_rng(seed)
    params = rng.normal(size=(n, ftrl.n_cols(k))).astype(dtype)
    params[:, 1] = np.abs(params[:, 1])          # w_n
    params[:, 3:3 + k] = np.abs(params[:, 3:3 + k])  # v_n
    params[0, 3:] = 0.0
    arena, off = _names(n)
    info = {"k": k, "dtype": np.dtype(dtype).name, "n_rows": n,
            "hyper": dict(zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS)), "fvs": False, "seed": 11,
            "samples_seen": 12345, "hash_key": KEY}
    return ModelArrays(arena, off, None, None, info, params=params)


def sources(tmp):
    """{fixture name: callable(path) that writes it}, deterministic."""
    full = _full_arrays()
    model = Model.from_arrays(full, np.array(ftrl.HP_DEFAULTS), fvs=False, seed=11)
    f32 = Model.from_arrays(_full_arrays(n=9, k=2, dtype=np.float32, seed=2), np.array(ftrl.HP_DEFAULTS),
                            fvs=True, seed=5)
    txt = os.path.join(tmp, "from.txt")
    write_txt(model, txt)
    from_text = read_txt(txt, state=None)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(13, 5)).astype(np.float32)
    keys = [b"item%d" % i for i in range(13)]
    key_off = np.zeros(14, np.int64)
    np.cumsum([len(x) for x in keys], out=key_off[1:])
    key_arena = np.frombuffer(b"".join(keys), np.uint8)
    fp = model_fingerprint(full.weights)
    return {
        "model_full.bin": lambda p: write_bin(model, p),
        "model_stripped.bin": lambda p: write_bin(model, p, state=False),
        "model_f32_full.bin": lambda p: write_bin(f32, p),
        "model_f32_stripped.bin": lambda p: write_bin(f32, p, state=False),
        "model_from_text.bin": lambda p: write_bin(from_text, p),
        "items.idx": lambda p: write_index(p, "items", vectors, key_arena, key_off, fp),
        "users_one.idx": lambda p: write_index(p, "users", vectors[:1, :3], key_arena[:5], key_off[:2], None),
    }


def _write_fixtures():
    import tempfile

    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in sources(tmp).items():
            p = os.path.join(tmp, name)
            write(p)
            with open(p, "rb") as f, gzip.GzipFile(DATA / (name + ".gz"), "wb", mtime=0) as g:
                g.write(f.read())


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixtures"]:
    _write_fixtures()
