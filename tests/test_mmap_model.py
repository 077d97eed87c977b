"""Memory-mapped binary models (fm_predict, fm_serve) and float32 serving copies (fm_dump strip --float)."""

import numpy as np
import pytest

from helpers import TEST, TRAIN, assert_ok, fm_dump, fm_predict, fm_train
from streamfm import FM, Recall, parse
from streamfm.errors import ModelFormatError
from streamfm.model import read_bin, read_model
from streamfm.predict import ServingModel
from streamfm.recall.index import fingerprint_matches, model_fingerprint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmap")
    full = d / "full.bin"
    # generous timeouts: the first run of a command on a fresh checkout compiles its kernels
    assert_ok(fm_train("-m", full, "-mf", "bin", "-dim", "1,1,4", "--input", TRAIN, "-q", timeout=900))
    strip = d / "strip.bin"
    f32 = d / "f32.bin"
    assert_ok(fm_dump("strip", full, strip, timeout=900))
    assert_ok(fm_dump("strip", "--float", full, f32, timeout=900))
    return {"full": full, "strip": strip, "f32": f32, "dir": d}


@pytest.mark.parametrize("which", ["full", "strip"])
def test_mapped_arrays_equal_read_arrays_and_are_read_only(models, which):
    path = str(models[which])
    a = read_bin(path, state=False)
    b = read_bin(path, state=False, mmap=True)
    assert b.mapped is not None
    for name in ("arena", "name_off", "explicit_weights", "params"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x, y) and not y.flags.writeable
    with pytest.raises(ValueError):
        b.name_off[0] = 1


def test_mapped_serving_model_scores_as_the_read_one(models):
    lines = TEST.read_bytes().splitlines()[:300]
    for which in ("full", "strip"):
        path = str(models[which])
        read = ServingModel.load(path)
        mapped = ServingModel.load(path, mmap=True)
        assert np.array_equal(read.weights, mapped.weights)
        if which == "strip":
            assert not mapped.weights.flags.writeable  # (w, v) straight from the file's pages
        names = [b"bias", b"nope"] + [read.table.name_bytes(r) for r in range(1, read.n_rows)]
        line = np.frombuffer(b"0 " + b" ".join(names) + b"\n", np.uint8)
        rows = [parse.parse(line, 2, parse.ParseBuffers(0), t.table).rows.tolist() for t in (read, mapped)]
        assert rows[0] == rows[1] == [-1, -1] + list(range(1, read.n_rows))
    p_full = FM.load(models["full"]).predict_proba(lines)
    p_strip = FM.load(models["strip"]).predict_proba(lines)
    assert np.array_equal(p_full, p_strip)


def test_mmap_is_read_only(models):
    """Mapped FTRL rows (what the merge reads) equal the rows read into memory and
    cannot be written; a model that would keep training (spare rows) is refused."""
    mapped = read_bin(str(models["full"]), state=True, mmap=True)
    read = read_bin(str(models["full"]), state=True)
    assert np.array_equal(mapped.file_params, read.file_params)
    with pytest.raises(ValueError, match="read-only"):
        mapped.file_params[1, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        read_bin(str(models["full"]), state=False, extra_rows=10, mmap=True)


def test_mapped_corrupt_and_truncated_models_fail_cleanly(models, tmp_path):
    data = models["strip"].read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) - 50])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_model(str(cut), state=False, mmap=True)
    flip = bytearray(data)
    flip[len(data) - 50] ^= 0x20
    bad = tmp_path / "flip.bin"
    bad.write_bytes(bytes(flip))
    with pytest.raises(ModelFormatError, match="checksum"):
        read_model(str(bad), state=False, mmap=True)


def test_fm_predict_output_is_the_same_for_every_copy(models):
    outs = {}
    for which in ("full", "strip"):
        proc = fm_predict("-m", models[which], "--input", TEST, "-core", "2", timeout=900)
        assert_ok(proc)
        outs[which] = proc.stdout
    assert outs["full"] == outs["strip"] and outs["full"].count(b"\n") > 100
    proc = fm_predict("-m", models["f32"], "--input", TEST, timeout=900)
    assert_ok(proc)
    p64 = np.array([float(x.split()[1]) for x in outs["full"].splitlines()])
    p32 = np.array([float(x.split()[1]) for x in proc.stdout.splitlines()])
    assert np.allclose(p32, p64, rtol=0, atol=2e-6) and not np.array_equal(p32, p64)


def test_strip_float_writes_float32_w_and_v(models):
    a = read_model(str(models["f32"]), state=False)
    b = read_model(str(models["strip"]), state=False)
    assert a.dtype == np.float32 and not a.has_state
    assert np.array_equal(a.weights, b.weights.astype(np.float32))
    saved = models["strip"].stat().st_size - models["f32"].stat().st_size
    assert abs(saved - a.weights.size * 4) < 64 + 1024  # half the (w, v) bytes (alignment, header aside)
    proc = fm_dump("info", models["f32"], timeout=900)
    assert_ok(proc)
    assert b"float32" in proc.stdout


def test_an_index_matches_the_float32_copy_of_its_model(models, tmp_path):
    from helpers import SAMPLE

    items = (SAMPLE / "items.txt").read_bytes().splitlines()
    clicks = (SAMPLE / "clicks.txt").read_bytes().splitlines()[:2000]
    rec = Recall.train(clicks, items, k=4, epochs=1, seed=3)
    path = tmp_path / "r.bin"
    rec.fm.save(path)
    index = rec.index(items)
    assert_ok(fm_dump("strip", "--float", path, tmp_path / "r32.bin", timeout=900))
    w64 = ServingModel.load(str(path)).weights
    w32 = ServingModel.load(str(tmp_path / "r32.bin")).weights
    assert fingerprint_matches(index.model_info, w64)
    assert fingerprint_matches(index.model_info, w32)
    other = w64.copy()
    other[1, 1] += 1e-9
    assert not fingerprint_matches(index.model_info, other)
    assert not fingerprint_matches(index.model_info, other.astype(np.float32) * 2)
    # an index made from the float32 copy matches it, and the float64 model it came from
    fp32 = model_fingerprint(w32)
    assert fingerprint_matches(fp32, w32) and fingerprint_matches(fp32, w64)
    assert not fingerprint_matches({}, w64)


@pytest.mark.parametrize("case", ["header dtype object", "array dtype object", "array dtype float32 in a float64 model",
                                  "hyper w_alpha nan", "k = -1", "name offsets as float"])
def test_mapped_load_keeps_the_header_checks(models, tmp_path, case):
    """A crafted header is refused by a mapped load (fm_predict, fm_serve) as by a read one."""
    from streamfm.serve.state import load_model
    from test_validation import HEADER_EDITS, craft

    edit, needle = HEADER_EDITS[case]
    bad = craft(models["full"], tmp_path / "bad.bin", edit_header=edit)
    for load in (lambda: read_model(str(bad), state=False, mmap=True), lambda: load_model(str(bad), mmap=True)):
        with pytest.raises(ModelFormatError, match="bad.bin") as e:
            load()
        assert needle in str(e.value)


@pytest.mark.parametrize("which,array", [("full", "params"), ("strip", "weights"), ("f32", "weights")])
def test_mapped_load_refuses_a_nonfinite_number(models, tmp_path, which, array):
    from streamfm.serve.state import load_model
    from test_validation import craft

    def poison(arr):
        arr[2, 1] = np.nan
    bad = craft(models[which], tmp_path / "bad.bin", edit_array=(array, poison))
    for load in (lambda: read_model(str(bad), state=False, mmap=True), lambda: load_model(str(bad), mmap=True)):
        with pytest.raises(ModelFormatError, match="array %r row 2 holds nan" % array):
            load()


def test_mapped_model_carries_the_hash_key(models):
    """A mapped model looks names up under the key its file stores (the keyed table hash)."""
    from streamfm.model import read_bin_header
    from streamfm.table import key_from_bytes

    for which in ("full", "strip", "f32"):
        key = read_bin_header(str(models[which]))["hash_key"]
        m = ServingModel.load(str(models[which]), mmap=True)
        assert np.array_equal(m.table.key, key_from_bytes(key))
        assert m.table.row_init is None  # lookup-only: no init hashes kept
        read = ServingModel.load(str(models[which]))
        assert np.array_equal(m.table.row_hash[1:m.n_rows], read.table.row_hash[1:read.n_rows])


def _resident_bytes(path):
    """Bytes of ``path``'s mappings resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_a_mapped_model_keeps_only_the_pages_it_uses_resident(tmp_path):
    # the load checks every page (crc32, finite numbers) and builds the table from
    # the names; none of that may stay resident, or every serving process would
    # hold the whole model privately counted instead of sharing the page cache
    from streamfm.model import ModelArrays, write_model

    n, k = 200_000, 4
    each = [b"bias"] + [b"f%d" % i for i in range(1, n)]
    names = b"".join(each)
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in each])
    weights = np.random.default_rng(0).normal(size=(n, k + 1))
    path = tmp_path / "big.bin"
    write_model(ModelArrays(np.frombuffer(names, np.uint8), off, weights, None, {"k": k}), str(path), "bin",
                state=False)
    size = path.stat().st_size
    fm = FM.load(path, mmap=True)
    assert _resident_bytes(path) < size // 20
    p = fm.predict_proba(["0 f1:1 f2:1 f199999:1"])
    assert p[0] == pytest.approx(1 / (1 + np.exp(-fm_raw(weights, [0, 1, 2, 199999], k))))
    assert _resident_bytes(path) < size // 20


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_keep_pages_keeps_the_checked_pages_and_every_check(tmp_path):
    """``keep_pages`` (the merge, which reads every row next) leaves the pages the
    checks read resident, where the default gives them back; it skips no check:
    a flipped byte and a NaN are refused as without it."""
    from streamfm.model import ModelArrays, write_model
    from test_validation import craft

    n, k = 100_000, 4
    each = [b"bias"] + [b"f%d" % i for i in range(1, n)]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in each])
    params = np.abs(np.random.default_rng(1).normal(size=(n, 3 + 2 * k)))
    path = tmp_path / "big.bin"
    write_model(ModelArrays(np.frombuffer(b"".join(each), np.uint8), off, None, None, {"k": k}, params=params),
                str(path), "bin")
    size = path.stat().st_size
    kept = read_model(str(path), state=True, mmap=True, keep_pages=True)
    assert _resident_bytes(path) > size // 2
    assert np.array_equal(kept.file_params, params)
    del kept
    dropped = read_model(str(path), state=True, mmap=True)
    assert _resident_bytes(path) < size // 20
    del dropped
    flip = bytearray(path.read_bytes())
    flip[len(flip) - 50] ^= 0x20
    bad = tmp_path / "flip.bin"
    bad.write_bytes(bytes(flip))
    with pytest.raises(ModelFormatError, match="checksum"):
        read_model(str(bad), state=True, mmap=True, keep_pages=True)

    def poison(arr):
        arr[2, 1] = np.nan
    nan = craft(path, tmp_path / "nan.bin", edit_array=("params", poison))
    with pytest.raises(ModelFormatError, match="array 'params' row 2 holds nan"):
        read_model(str(nan), state=True, mmap=True, keep_pages=True)


def fm_raw(weights, rows, k):
    """The FM score of features rows[1:] at value 1 (rows[0] the bias), from (w, v) rows."""
    s = weights[rows[0], 0] + sum(weights[r, 0] for r in rows[1:])
    v = weights[rows[1:], 1:]
    return s + 0.5 * float(np.sum(v.sum(axis=0) ** 2 - (v ** 2).sum(axis=0)))
