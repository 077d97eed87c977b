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
import struct
import sys
import threading
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from streamfm import container, ftrl
from streamfm.errors import ModelFormatError
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




def _fixture(name):
    with gzip.open(DATA / (name + ".gz"), "rb") as g:
        return g.read()


FIXTURES = sorted(p.name[:-3] for p in DATA.glob("*.gz"))


def test_there_are_fixtures_of_both_kinds():
    assert len(FIXTURES) == 7
    assert {_fixture(n)[:8] for n in FIXTURES} == {b"\x89SFMBIN\n", b"\x89SFMIDX\n"}


@pytest.mark.parametrize("name", FIXTURES)
def test_writers_reproduce_the_fixtures_byte_for_byte(tmp_path, name):
    p = tmp_path / name
    sources(str(tmp_path))[name](str(p))
    assert p.read_bytes() == _fixture(name)


@pytest.mark.parametrize("name", ["model_full.bin", "model_stripped.bin", "model_from_text.bin", "items.idx"])
def test_a_pipe_gets_the_same_bytes_as_a_file(tmp_path, name):
    """A FIFO cannot seek: the checksums come from a first pass (the stripped
    model's weights are produced twice, chunk by chunk), the header first."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        sources(str(tmp_path))[name](str(fifo))
    finally:
        reader.join(60)
    assert got == [_fixture(name)]


@pytest.mark.parametrize("mmap", [False, True])
def test_the_readers_read_the_fixtures(tmp_path, mmap):
    for name in FIXTURES:
        (tmp_path / name).write_bytes(_fixture(name))
    full = _full_arrays()
    m = read_model(str(tmp_path / "model_full.bin"), state=None)
    assert np.array_equal(m.params, full.params) and m.explicit_weights is None
    assert np.array_equal(m.arena, full.arena) and np.array_equal(m.name_off, full.name_off)
    assert m.info["hash_key"] == KEY and m.info["samples_seen"] == 12345 and m.info["seed"] == 11
    s = read_model(str(tmp_path / "model_stripped.bin"), state=False, mmap=mmap)
    assert not s.has_state and np.array_equal(s.weights, full.weights)
    assert (getattr(s, "mapped", None) is not None) == mmap
    t = read_model(str(tmp_path / "model_from_text.bin"), state=None)
    assert np.array_equal(t.params, full.params) and np.array_equal(t.explicit_weights, full.weights)
    f = read_model(str(tmp_path / "model_f32_full.bin"), state=None)
    assert f.dtype == np.float32 and np.array_equal(f.params, _full_arrays(9, 2, np.float32, 2).params)
    idx = read_index(str(tmp_path / "items.idx"))
    rng = np.random.default_rng(3)
    assert np.array_equal(idx.vectors, rng.normal(size=(13, 5)).astype(np.float32))
    assert [idx.key(i) for i in range(idx.n)] == [b"item%d" % i for i in range(13)]
    assert idx.kind == "items" and idx.model_info == model_fingerprint(full.weights)
    one = read_index(str(tmp_path / "users_one.idx"))
    assert one.kind == "users" and one.k == 2 and one.key(0) == b"item0" and one.model_info == {}


@pytest.mark.parametrize("name", ["model_full.bin", "model_stripped.bin", "model_from_text.bin",
                                  "model_f32_stripped.bin"])
def test_a_model_read_and_written_again_is_the_same_file(tmp_path, name):
    src = tmp_path / name
    src.write_bytes(_fixture(name))
    again = tmp_path / ("again_" + name)
    write_bin(read_model(str(src), state=None), str(again), state=None if "stripped" in name else True)
    assert again.read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------
# the container alone

KIND = container.Kind(b"\x89SFMTST\n", "streamfm-test", 2, reserve=512, what="test file", hint=" (a hint)")


def _write(path, arrays, header=None):
    container.write(KIND, str(path), dict(header or {"a": 1}), arrays)


def test_layout_aligns_every_array_after_the_reserve(tmp_path):
    arrays = [container.Array("x", np.uint8, (3,), np.arange(3, dtype=np.uint8)),
              container.Array("y", "<f8", (2, 5), np.ones((2, 5))),
              container.Array("z", "<i8", (0,), np.zeros(0, np.int64)),
              container.Array("w", "<f4", (70,), lambda: (np.full(10, i, np.float32) for i in range(7)))]
    specs = container.layout(KIND, arrays)
    assert [s["offset"] for s in specs] == [512, 576, 576 + 128, 576 + 128]
    assert [s["nbytes"] for s in specs] == [3, 80, 0, 280]
    p = tmp_path / "t.bin"
    _write(p, arrays)
    data = p.read_bytes()
    assert len(data) == 704 + 280
    hlen = struct.unpack("<I", data[8:12])[0]
    assert data[16 + hlen:512] == b"\0" * (512 - 16 - hlen) and data[515:576] == b"\0" * 61
    header, size = container.read_header(KIND, str(p))
    assert size == len(data) and header["a"] == 1 and header["format"] == "streamfm-test"
    assert list(header) == ["a", "format", "version", "arrays"]
    expected = {"x": (np.dtype(np.uint8), (None,)), "y": (np.dtype("<f8"), (2, 5)),
                "z": (np.dtype("<i8"), (None,)), "w": (np.dtype("<f4"), (70,))}
    specs = container.array_specs(KIND, str(p), header, size, expected)
    out = container.read_arrays(KIND, str(p), list(specs.values()))
    assert out["x"].tolist() == [0, 1, 2] and np.array_equal(out["y"], np.ones((2, 5)))
    assert out["z"].shape == (0,) and np.array_equal(out["w"], np.repeat(np.arange(7), 10).astype(np.float32))
    mapped = container.MappedFile(str(p))
    out = container.read_arrays(KIND, str(p), list(specs.values()), mapped=mapped)
    assert np.array_equal(out["w"], np.repeat(np.arange(7), 10)) and not out["w"].flags.writeable


def test_a_header_too_large_for_its_reserve_writes_nothing(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"old")
    with pytest.raises(ModelFormatError, match="test file header too large"):
        _write(p, [container.Array("x", np.uint8, (1,), np.zeros(1, np.uint8))], {"pad": "x" * 500})
    assert p.read_bytes() == b"old"


def test_data_that_is_not_its_stated_shape_leaves_the_old_file(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"old")
    with pytest.raises(ValueError, match="has 16 bytes, its shape says 24"):
        _write(p, [container.Array("x", "<f8", (3,), lambda: [np.zeros(2)])])
    with pytest.raises(ValueError, match="a chunk of float32"):
        _write(p, [container.Array("x", "<f8", (3,), np.zeros(3, np.float32))])
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["t.bin"]


def _header_error(path, data):
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as e:
        container.read_header(KIND, str(path))
    return str(e.value)


def test_read_header_says_what_is_wrong(tmp_path):
    p = tmp_path / "t.bin"
    _write(p, [container.Array("x", np.uint8, (1,), np.zeros(1, np.uint8))])
    good = p.read_bytes()
    bad = tmp_path / "bad.bin"
    assert _header_error(bad, b"") == "%s: empty file, not a streamfm test file" % bad
    assert _header_error(bad, b"PK\3\4 zip") == "%s: not a streamfm test file (a hint)" % bad
    assert _header_error(bad, good[:5]) == "%s: truncated (header cut off)" % bad
    assert _header_error(bad, good[:20]) == "%s: truncated (header cut off)" % bad
    # a crafted length is checked against the file before anything is read
    assert _header_error(bad, good[:8] + struct.pack("<II", 0xFFFFFFFF, 0) + good[16:]) == \
        "%s: truncated (header cut off)" % bad
    flip = bytearray(good)
    flip[20] ^= 1
    assert _header_error(bad, bytes(flip)) == "%s: corrupted header (checksum mismatch)" % bad

    def rewrite(header):
        packed = msgpack.packb(header, use_bin_type=True)
        return good[:8] + struct.pack("<II", len(packed), zlib.crc32(packed)) + packed
    assert _header_error(bad, rewrite({"format": "other", "version": 1})) == \
        "%s: not a streamfm test file (a hint)" % bad
    assert _header_error(bad, rewrite({"format": "streamfm-test", "version": 3})) == \
        "%s: test file version 3: this streamfm reads versions up to 2" % bad
    assert "corrupted header (" in _header_error(bad, rewrite(1)[:16] + b"\xc1")  # 0xc1: never used


def test_array_specs_refuse_what_does_not_fit_the_file(tmp_path):
    p = tmp_path / "t.bin"
    _write(p, [container.Array("x", "<f8", (4,), np.arange(4.0))])
    header, size = container.read_header(KIND, str(p))
    expected = {"x": (np.dtype("<f8"), (4,))}
    with pytest.raises(ModelFormatError, match="truncated: %d bytes, the header says %d" % (size - 1, size)):
        container.array_specs(KIND, str(p), header, size - 1, expected)
    header["arrays"][0]["offset"] = (1 << 64) - 8  # Python ints: no overflow wraps it into the file
    with pytest.raises(ModelFormatError, match="truncated"):
        container.array_specs(KIND, str(p), header, size, expected)
    with pytest.raises(ModelFormatError, match="unexpected array 'x'"):
        container.array_specs(KIND, str(p), header, size, {"y": expected["x"]})


def test_array_specs_refuse_bytes_after_the_last_array(tmp_path):
    """Two files joined (`cat a b > m`) are not read as the first one."""
    p = tmp_path / "t.bin"
    _write(p, [container.Array("x", "<f8", (4,), np.arange(4.0))])
    header, size = container.read_header(KIND, str(p))
    expected = {"x": (np.dtype("<f8"), (4,))}
    assert container.array_specs(KIND, str(p), header, size, expected)["x"].offset + 32 == size
    with pytest.raises(ModelFormatError) as e:
        container.array_specs(KIND, str(p), header, size + 3, expected)
    assert str(e.value) == "%s: 3 bytes after the end the header gives (%d): not one whole %s (two files joined?)" % (
        p, size, KIND.what)


def test_read_arrays_checks_checksums_and_finite_numbers(tmp_path):
    p = tmp_path / "t.bin"
    _write(p, [container.Array("x", "<f8", (4,), np.array([1.0, 2.0, np.inf, 4.0]))])
    header, size = container.read_header(KIND, str(p))
    specs = container.array_specs(KIND, str(p), header, size, {"x": (np.dtype("<f8"), (4,))})
    with pytest.raises(ModelFormatError, match="array 'x' row 2 holds inf, not a finite number"):
        container.read_arrays(KIND, str(p), list(specs.values()))
    data = bytearray(p.read_bytes())
    data[512] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum mismatch in array 'x'"):
        container.read_arrays(KIND, str(p), list(specs.values()))


def test_crc32_combine_equals_zlib_on_the_joined_bytes():
    rng = np.random.default_rng(5)
    for n1, n2 in [(0, 0), (0, 7), (7, 0), (1, 1), (3, 1000), (4096, 12345), (1, 1 << 20)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert container.crc32_combine(zlib.crc32(a), zlib.crc32(b), n2) == zlib.crc32(a + b)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_large_array_is_checked_in_pieces_as_a_whole(tmp_path, mapped):
    """An array large enough to be checked in pieces on threads (jit.over_rows): its
    crc32 is the whole array's, a flipped byte in its last piece is found, and of
    two non-finite numbers in different pieces the first is the one reported."""
    n = 300_001  # rows of 3: several pieces, of unequal lengths
    x = np.random.default_rng(2).normal(size=(n, 3))
    crc, bad = container.checked(x)
    assert (crc, bad) == (zlib.crc32(x.reshape(-1).view(np.uint8)), -1)
    p = tmp_path / "t.bin"

    def read():
        header, size = container.read_header(KIND, str(p))
        specs = container.array_specs(KIND, str(p), header, size, {"x": (np.dtype("<f8"), (n, 3))})
        m = container.MappedFile(str(p)) if mapped else None
        return container.read_arrays(KIND, str(p), list(specs.values()), mapped=m)["x"]

    _write(p, [container.Array("x", "<f8", x.shape, x)])
    assert np.array_equal(read(), x)
    poisoned = x.copy()
    poisoned[250_000, 1] = np.nan
    poisoned[200_000, 2] = -np.inf
    _write(p, [container.Array("x", "<f8", x.shape, poisoned)])
    with pytest.raises(ModelFormatError, match="array 'x' row 200000 holds -inf, not a finite number"):
        read()
    _write(p, [container.Array("x", "<f8", x.shape, x)])
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x10  # inside the last row's last number: still finite
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum mismatch in array 'x'"):
        read()


def test_an_empty_index_round_trips(tmp_path):
    """n = 0 (no memoryview casts of empty arrays in the container)."""
    p = tmp_path / "e.idx"
    write_index(str(p), "users", np.zeros((0, 5), np.float32), np.zeros(0, np.uint8), np.zeros(1, np.int64), None)
    idx = read_index(str(p))
    assert idx.n == 0 and idx.k == 4 and idx.kind == "users"


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixtures"]:
    _write_fixtures()
