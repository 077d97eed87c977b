"""Issue 9, the input side: what reaches the commands is checked before it is trusted.

Empty or all-bad input never replaces a model (exit 3 unless --allow-empty),
float flags refuse NaN, infinities and meaningless signs (exit 2, naming the
flag), a binary model or index whose header disagrees with its arrays is
refused even with recomputed checksums (and its dtypes never reach numpy),
wide rows reserve what they need, recall queries with nothing to rank by get
empty results, repeated catalog keys are neither items nor negatives, a UTF-8
BOM opens a file without making a bad line, and fm_predict counts clipped
values. Crafted files are read by subprocesses: a reader that crashes on one
must not take the test session with it.
"""

import gzip
import os
import resource
import subprocess
import sys
import zlib

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import (TRAIN, assert_ok, assert_one_line_error, fm_dump, fm_predict, fm_train, predictions,
                     run, text)
from streamfm.cli import fm_train as fm_train_cmd
from streamfm.model import read_model
from streamfm.reader import BlockReader
from streamfm.recall.cli import fm_recall as fm_recall_cmd

FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")
LINES = b"1 a:1 b c:0.5\n0 b d\n1 a e:2\n0 d f\n" * 20
BOM = b"\xef\xbb\xbf"


def fm_recall(*args, **kw):
    return run(FM_RECALL, *args, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("valid")


@pytest.fixture(scope="module")
def model_bin(data_dir):
    p = data_dir / "m.bin"
    assert_ok(fm_train("-m", p, "-mf", "bin", "-dim", "1,1,4", "--seed", "3", "-q", input=LINES))
    return p


# ---------------------------------------------------------------------------
# item 4: no valid sample, no model


def test_empty_input_writes_nothing_and_exits_3(tmp_path):
    p = tmp_path / "m.txt"
    proc = fm_train("-m", p, input=b"")
    assert_one_line_error(proc, "the input was empty", "no model written", "--allow-empty", code=3)
    assert not p.exists()


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_all_bad_input_leaves_the_old_model_byte_for_byte(tmp_path, fmt):
    """A gzip fed raw: every line is bad; the production model stays as it was."""
    m = tmp_path / ("m." + fmt)
    assert_ok(fm_train("-m", m, "-mf", fmt, "-dim", "1,1,4", "-q", input=LINES))
    before = m.read_bytes()
    raw = gzip.compress(TRAIN.read_bytes()[:200000])
    proc = fm_train("-im", m, "-m", m, "-mf", fmt, "-dim", "1,1,4", "-q", input=raw)
    assert_one_line_error(proc, "no valid sample", "no model written", code=3)
    assert m.read_bytes() == before
    # not quiet: the bad lines are reported first, the refusal is the last line
    proc = fm_train("-im", m, "-m", m, "-mf", fmt, "-dim", "1,1,4", input=raw)
    assert proc.returncode == 3
    assert "no valid sample" in text(proc.stderr).splitlines()[-1]
    assert m.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f != m.name] == []


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_allow_empty_writes_the_im_model_unchanged(tmp_path, fmt):
    m, out = tmp_path / ("m." + fmt), tmp_path / ("out." + fmt)
    assert_ok(fm_train("-m", m, "-mf", fmt, "-dim", "1,1,4", "-q", input=LINES))
    proc = fm_train("-im", m, "-m", out, "-mf", fmt, "-dim", "1,1,4", "--allow-empty", input=b"garbage\n")
    assert_ok(proc)
    assert "warning" in text(proc.stderr) and "unchanged" in text(proc.stderr)
    assert out.read_bytes() == m.read_bytes()


def test_recall_train_without_a_valid_click_exits_3(tmp_path):
    items = tmp_path / "items.txt"
    items.write_bytes(b"i1 f1\ni2 f2\ni3 f3\n")
    m = tmp_path / "m.txt"
    for clicks in (b"", b"u1 uf | nosuchitem\n", b"not a click line\n"):
        proc = fm_recall("train", "-m", m, "--items", items, "-dim", "1,1,4", "-q", input=clicks)
        assert_one_line_error(proc, "no valid click", "no model written", code=3)
        assert not m.exists()
    proc = fm_recall("train", "-m", m, "--items", items, "-dim", "1,1,4", "-q", "--allow-empty", input=b"")
    assert_ok(proc)
    assert m.read_bytes() == b"bias 0 0 0\n"


# ---------------------------------------------------------------------------
# item 6: float flags


HPS = ["w_alpha", "w_beta", "w_l1", "w_l2", "v_alpha", "v_beta", "v_l1", "v_l2", "init_stdev"]


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args], input=b"1 a\n")


@pytest.mark.parametrize("hp", HPS)
def test_hyper_parameters_must_be_finite_and_in_range(tmp_path, hp):
    bad = ["nan", "inf", "-inf", "-1"] + (["0"] if hp.endswith("alpha") else [])
    for cmd, base in ((fm_train_cmd, []), (fm_recall_cmd, ["train", "--items", "x"])):
        for v in bad:
            r = _invoke(cmd, base + ["-m", tmp_path / "m.txt", "-" + hp, v])
            assert r.exit_code == 2, (hp, v, r.output)
            assert "'-%s'" % hp in r.output, r.output
        assert not (tmp_path / "m.txt").exists()
    # the edge values that mean something still pass (0 for everything but alpha)
    ok = "1e-9" if hp.endswith("alpha") else "0"
    assert_ok(fm_train("-m", tmp_path / "ok.txt", "-" + hp, ok, "-q", input=LINES))


@pytest.mark.parametrize("cmd,sub,flag,value", [
    (fm_train_cmd, [], "--max-bad-fraction", "nan"),
    (fm_train_cmd, [], "--max-bad-fraction", "inf"),
    (fm_train_cmd, [], "--progress-every", "nan"),
    (fm_train_cmd, [], "--progress-every", "inf"),
    (fm_recall_cmd, ["train", "--items", "x"], "--margin", "nan"),
    (fm_recall_cmd, ["train", "--items", "x"], "--margin", "inf"),
    (fm_recall_cmd, ["train", "--items", "x"], "--margin", "-1"),
    (fm_recall_cmd, ["train", "--items", "x"], "--pop-suppress", "nan"),
    (fm_recall_cmd, ["train", "--items", "x"], "--max-bad-fraction", "nan"),
    (fm_recall_cmd, ["index", "--items", "x", "-o", "y"], "--max-bad-fraction", "nan"),
])
def test_other_float_flags_refuse_nan_inf_and_negative(tmp_path, cmd, sub, flag, value):
    r = _invoke(cmd, sub + ["-m", tmp_path / "m.txt", flag, value])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '%s'" % flag in r.output, r.output


def test_init_stdev_nan_no_longer_writes_a_nan_model(tmp_path):
    proc = fm_train("-m", tmp_path / "m.txt", "-init_stdev", "nan", input=LINES)
    assert proc.returncode == 2
    err = text(proc.stderr)
    assert "Traceback" not in err and "'-init_stdev': nan is not a finite number" in err
    assert not (tmp_path / "m.txt").exists()


# ---------------------------------------------------------------------------
# item 6 and 7: binary headers


def craft(src, dst, edit_header=None, edit_array=None):
    """Copy a binary model or index, edit its msgpack header and/or an array's
    bytes, and recompute every checksum so that only the content can tell."""
    data = bytearray(src.read_bytes())
    hlen = int(np.frombuffer(bytes(data[8:12]), "<u4")[0])
    header = msgpack.unpackb(bytes(data[16:16 + hlen]), raw=False)
    if edit_array:
        name, fn = edit_array
        a = next(a for a in header["arrays"] if a["name"] == name)
        arr = np.frombuffer(bytes(data[a["offset"]:a["offset"] + a["nbytes"]]), a["dtype"]).reshape(a["shape"])
        arr = arr.copy()
        fn(arr)
        data[a["offset"]:a["offset"] + a["nbytes"]] = arr.tobytes()
    if edit_header:
        edit_header(header)
    for a in header["arrays"]:
        off, nb = a.get("offset"), a.get("nbytes")
        if isinstance(off, int) and isinstance(nb, int) and 0 <= off and 0 <= nb:
            a["crc32"] = zlib.crc32(bytes(data[off:off + nb]))
    packed = msgpack.packb(header, use_bin_type=True)
    data[16:16 + hlen] = b"\0" * hlen
    data[8:16] = np.array([len(packed), zlib.crc32(packed)], "<u4").tobytes()
    data[16:16 + len(packed)] = packed
    dst.write_bytes(bytes(data))
    return dst


def _array(h, name):
    return next(a for a in h["arrays"] if a["name"] == name)


def _set(h, name, key, value):
    _array(h, name)[key] = value


HEADER_EDITS = {
    "k plus one": (lambda h: h.update(k=h["k"] + 1), "shape"),
    "k = -1": (lambda h: h.update(k=-1), "k = -1"),
    "k not an int": (lambda h: h.update(k="4"), "k = '4'"),
    "header dtype float32 over float64 arrays": (lambda h: h.update(dtype="float32"), "'params'"),
    "header dtype object": (lambda h: h.update(dtype="object"), "dtype 'object'"),
    "array dtype object": (lambda h: _set(h, "params", "dtype", "|O"), "'|O'"),
    "array dtype float32 in a float64 model": (lambda h: _set(h, "params", "dtype", "<f4"), "'<f4'"),
    "array dtype structured": (lambda h: _set(h, "names", "dtype", [["a", "<f8"]]), "'names'"),
    "name offsets as float": (lambda h: _set(h, "name_off", "dtype", "<f8"), "'name_off'"),
    "n_rows plus one": (lambda h: h.update(n_rows=h["n_rows"] + 1), "'name_off'"),
    "params rows less one": (lambda h: (_set(h, "params", "shape", [h["n_rows"] - 1, 11]),
                                        _set(h, "params", "nbytes", (h["n_rows"] - 1) * 11 * 8)), "shape"),
    "params nbytes": (lambda h: _set(h, "params", "nbytes", _array(h, "params")["nbytes"] - 8), "'params'"),
    "negative offset": (lambda h: _set(h, "params", "offset", -64), "'params'"),
    "unknown array": (lambda h: h["arrays"].append(dict(_array(h, "names"), name="evil")), "'evil'"),
    "repeated array": (lambda h: h["arrays"].append(dict(_array(h, "names"))), "repeated"),
    "no arrays": (lambda h: h.update(arrays={}), "array list"),
    "has_state false with params": (lambda h: h.update(has_state=False), "has_state"),
    "hyper w_alpha nan": (lambda h: h["hyper"].update(w_alpha=float("nan")), "w_alpha"),
    "hyper l2 negative": (lambda h: h["hyper"].update(v_l2=-1.0), "v_l2"),
    "seed beyond int64": (lambda h: h.update(seed=1 << 63), "seed"),
    "fvs a string": (lambda h: h.update(fvs="yes"), "fvs"),
    "version a string": (lambda h: h.update(version="2"), "version"),
}


@pytest.mark.parametrize("case", sorted(HEADER_EDITS))
def test_binary_header_that_disagrees_with_its_arrays_is_refused(model_bin, tmp_path, case):
    edit, needle = HEADER_EDITS[case]
    bad = craft(model_bin, tmp_path / "bad.bin", edit_header=edit)
    assert_one_line_error(fm_dump("info", bad), bad, needle, code=1)


@pytest.mark.parametrize("case", ["k = -1", "array dtype object", "hyper w_alpha nan", "params rows less one"])
def test_predict_and_continue_refuse_a_crafted_header(model_bin, tmp_path, case):
    edit, needle = HEADER_EDITS[case]
    bad = craft(model_bin, tmp_path / "bad.bin", edit_header=edit)
    assert_one_line_error(fm_predict("-m", bad, input=b"1 a\n"), bad, needle, code=1)
    proc = fm_train("-im", bad, "-m", tmp_path / "out.txt", "-dim", "1,1,4", "-q", input=LINES)
    assert_one_line_error(proc, bad, needle, code=1)
    assert not (tmp_path / "out.txt").exists()


def test_the_crafting_helper_alone_changes_nothing(model_bin, tmp_path):
    """craft() with no edit gives a model that reads as the original (the
    refusals above come from the edits, not from the helper)."""
    same = craft(model_bin, tmp_path / "same.bin")
    a, b = read_model(str(model_bin)), read_model(str(same))
    assert np.array_equal(a.params, b.params) and a.info == b.info


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("array", ["params", "weights"])
def test_nonfinite_number_in_a_binary_model_is_refused(model_bin, tmp_path, value, array):
    src = model_bin
    if array == "weights":  # a stripped model holds (w, v) outright
        src = tmp_path / "stripped.bin"
        assert_ok(fm_dump("strip", model_bin, src))

    def poison(arr):
        arr[2, 1] = value
    bad = craft(src, tmp_path / "bad.bin", edit_array=(array, poison))
    proc = fm_predict("-m", bad, input=b"1 a\n") if np.isnan(value) else fm_dump("info", bad)
    assert_one_line_error(proc, bad, "array %r row 2" % array, "not a finite number", code=1)


# ---------------------------------------------------------------------------
# item 7: no traceback


def test_wide_rows_reserve_what_they_need(tmp_path):
    """-dim 1,1,1000 used to reserve 4M rows of 16 kB (62 GB) up front; under a
    6 GB address-space limit it trains and writes a model like any other."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    m = tmp_path / "wide.bin"
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fm_train"), "-m", m, "-mf", "bin",
                           "-dim", "1,1,1000", "-q"], input=LINES, capture_output=True, preexec_fn=limit)
    assert_ok(proc)
    arrays = read_model(str(m))
    assert arrays.k == 1000 and arrays.n_rows == 7
    # continuing it (-im reserves spare rows behind the loaded ones) fits too
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fm_train"), "-im", m, "-m",
                           tmp_path / "wide2.bin", "-mf", "bin", "-dim", "1,1,1000", "-q"],
                          input=b"1 g h\n", capture_output=True, preexec_fn=limit)
    assert_ok(proc)
    assert read_model(str(tmp_path / "wide2.bin")).n_rows == 9


@pytest.mark.parametrize("seed", [str(1 << 63), str(-(1 << 63) - 1), "99999999999999999999"])
def test_seed_outside_int64_is_a_usage_error(tmp_path, seed):
    for cmd, base in ((fm_train_cmd, []), (fm_recall_cmd, ["train", "--items", "x"])):
        r = _invoke(cmd, base + ["-m", tmp_path / "m.txt", "--seed", seed])
        assert r.exit_code == 2 and "'--seed'" in r.output, r.output
    proc = fm_train("-m", tmp_path / "m.txt", "--seed", seed, input=LINES)
    assert proc.returncode == 2 and "Traceback" not in text(proc.stderr)
    # the extremes of int64 are seeds like any other
    assert_ok(fm_train("-m", tmp_path / "m.txt", "--seed", str(-(1 << 63)), "-q", input=LINES))
    assert_ok(fm_train("-m", tmp_path / "m.txt", "--seed", str((1 << 63) - 1), "-q", input=LINES))


def test_other_huge_integers_are_usage_errors(tmp_path):
    """--explain N beyond int64 reached a numba kernel (traceback); -dim K beyond
    the factor count a model file may hold would write a model nothing reads."""
    from streamfm.cli import fm_predict as fm_predict_cmd
    from streamfm.model import MAX_K

    r = _invoke(fm_predict_cmd, ["-m", tmp_path / "m.txt", "--explain", str(1 << 63)])
    assert r.exit_code == 2 and "'--explain'" in r.output, r.output
    r = _invoke(fm_train_cmd, ["-m", tmp_path / "m.txt", "-dim", "1,1,%d" % (MAX_K + 1)])
    assert r.exit_code == 2 and "Invalid value for -dim" in r.output, r.output
    assert not (tmp_path / "m.txt").exists()


# ---------------------------------------------------------------------------
# recall: an index to query


@pytest.fixture(scope="module")
def recall(tmp_path_factory):
    d = tmp_path_factory.mktemp("recall")
    items = b"".join(b"i%d item=i%d cat=c%d\n" % (i, i, i % 3) for i in range(12))
    users = b"".join(b"u%d user=u%d\n" % (u, u) for u in range(8))
    clicks = b"".join(b"u%d user=u%d | i%d\n" % (u, u, (u * 5 + j) % 12) for u in range(8) for j in range(4))
    (d / "items.txt").write_bytes(items)
    (d / "users.txt").write_bytes(users)
    assert_ok(fm_recall("train", "-m", d / "m.txt", "--items", d / "items.txt", "-dim", "1,1,4", "--epochs", "3",
                        "-q", input=clicks))
    assert_ok(fm_recall("index", "-m", d / "m.txt", "--items", d / "items.txt", "-o", d / "items.idx", "-q"))
    assert_ok(fm_recall("index", "-m", d / "m.txt", "--users", d / "users.txt", "-o", d / "users.idx", "-q"))
    return d


def _results(stdout):
    out = []
    for line in text(stdout).splitlines():
        key, _, rest = line.partition("\t")
        out.append((key, rest.split()))
    return out


@pytest.mark.parametrize("mode,index,known", [("i2i", "items.idx", "i1"), ("u2i", "items.idx", "u1 user=u1"),
                                              ("i2u", "users.idx", "i1 item=i1"), ("u2u", "users.idx", "u1")])
def test_query_with_nothing_to_rank_by_gets_an_empty_result(recall, mode, index, known):
    queries = b"nosuchkey\n" + known.encode() + b"\nnosuchkey2\n"
    proc = fm_recall("query", "-m", recall / "m.txt", "--index", recall / index, "--mode", mode, "--topn", "5",
                     input=queries)
    assert_ok(proc)
    res = _results(proc.stdout)
    assert [k for k, _ in res] == ["nosuchkey", known.split()[0], "nosuchkey2"]
    assert res[0][1] == [] and res[2][1] == []
    assert len(res[1][1]) == 5  # a key the index holds (or features) still ranks
    assert "3 queries" in text(proc.stderr)
    assert "2 queries had no features and a key no index holds: empty results" in text(proc.stderr)


def test_index_of_an_empty_catalog_is_a_one_line_error(recall, tmp_path):
    for content in (b"", b"\n\n", b"only_a_key_and:bad:value x:\n"):
        items = tmp_path / "empty.txt"
        items.write_bytes(content)
        proc = fm_recall("index", "-m", recall / "m.txt", "--items", items, "-o", tmp_path / "e.idx", "-q")
        assert_one_line_error(proc, items, "no valid record", "no index written", code=3)
        assert not (tmp_path / "e.idx").exists()


INDEX_EDITS = {
    "vectors dtype object": (lambda h: _set(h, "vectors", "dtype", "|O"), "'vectors'"),
    "k = -1": (lambda h: h.update(k=-1), "k = -1"),
    "n plus one": (lambda h: h.update(n=h["n"] + 1), "shape"),
    "kind": (lambda h: h.update(kind="evil"), "kind"),
}


@pytest.mark.parametrize("case", sorted(INDEX_EDITS))
def test_index_header_that_disagrees_with_its_arrays_is_refused(recall, tmp_path, case):
    edit, needle = INDEX_EDITS[case]
    bad = craft(recall / "items.idx", tmp_path / "bad.idx", edit_header=edit)
    proc = fm_recall("query", "-m", recall / "m.txt", "--index", bad, "--mode", "i2i", input=b"i1\n")
    assert_one_line_error(proc, bad, needle, code=1)


def test_nonfinite_vector_in_an_index_is_refused(recall, tmp_path):
    def poison(arr):
        arr[3, 0] = np.nan
    bad = craft(recall / "items.idx", tmp_path / "bad.idx", edit_array=("vectors", poison))
    proc = fm_recall("query", "-m", recall / "m.txt", "--index", bad, "--mode", "i2i", input=b"i1\n")
    assert_one_line_error(proc, bad, "'vectors' row 3", "not a finite number", code=1)


# ---------------------------------------------------------------------------
# item 8: repeated catalog keys


def test_repeated_catalog_keys_are_neither_items_nor_negatives(tmp_path):
    """Later lines of a key are dropped: their features never train (no draw
    reaches them) and the catalog counts each key once. With 2 items, every
    negative of a click on one is the other."""
    items = tmp_path / "items.txt"
    items.write_bytes(b"i1 f1\ni2 f2\ni1 dupa\ni2 dupb\ni1 dupc\n")
    m = tmp_path / "m.txt"
    clicks = b"".join(b"u%d uf%d | i%d\n" % (u, u, 1 + u % 2) for u in range(40))
    proc = fm_recall("train", "-m", m, "--items", items, "-dim", "1,1,4", "--neg", "3", input=clicks)
    assert_ok(proc)
    err = text(proc.stderr)
    assert "3 repeated item keys" in err
    assert "2 items in the catalog" in err
    model = m.read_bytes()
    assert b"\nf1 " in model and b"\nf2 " in model
    for name in (b"dupa", b"dupb", b"dupc"):
        assert b"\n" + name + b" " not in model
    assert "clicks without a negative" not in err


# ---------------------------------------------------------------------------
# item 9: BOM, clipped values


class _OneByte:
    """A stream without a descriptor that hands out one byte per read."""

    def __init__(self, data):
        self.data = data

    def read(self, n):
        b, self.data = self.data[:1], self.data[1:]
        return b


def _blocks(stream):
    r = BlockReader(stream, linger=0.01)
    out = b""
    while True:
        b = r.get()
        if b is None:
            return out
        out += bytes(b.data)


@pytest.mark.parametrize("data,want", [
    (BOM + b"1 a\n0 b\n", b"1 a\n0 b\n"),
    (BOM, b""),
    (b"1 a\n" + BOM + b"0 b\n", b"1 a\n" + BOM + b"0 b\n"),   # only at the very start
    (b"\xef\xbb1 a\n", b"\xef\xbb1 a\n"),                     # not a whole mark: left alone
    (b"\xef", b"\xef"),
])
def test_reader_drops_a_bom_at_the_start_even_byte_by_byte(data, want):
    assert _blocks(_OneByte(data)) == want


def test_bom_is_not_a_bad_line_for_train_predict_and_recall(tmp_path, recall):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    assert_ok(fm_train("-m", a, "-dim", "1,1,4", "-q", input=LINES))
    proc = fm_train("-m", b, "-dim", "1,1,4", input=BOM + LINES)
    assert_ok(proc)
    assert "bad lines skipped    0" in text(proc.stderr)
    assert a.read_bytes() == b.read_bytes()
    plain = fm_predict("-m", a, input=LINES)
    marked = fm_predict("-m", a, input=BOM + LINES)
    assert_ok(marked)
    assert marked.stdout == plain.stdout and len(predictions(marked.stdout)) == 80
    assert ", 0 bad," in text(marked.stderr)
    # a catalog whose first key carries a BOM: the key is 'i0', not '\ufeffi0'
    items = tmp_path / "items.txt"
    items.write_bytes(BOM + (recall / "items.txt").read_bytes())
    assert_ok(fm_recall("index", "-m", recall / "m.txt", "--items", items, "-o", tmp_path / "i.idx", "-q"))
    proc = fm_recall("query", "-m", recall / "m.txt", "--index", tmp_path / "i.idx", "--mode", "i2i",
                     "--topn", "3", input=BOM + b"i0\n")
    assert_ok(proc)
    res = _results(proc.stdout)
    assert res[0][0] == "i0" and len(res[0][1]) == 3  # found by its key, in the index and as a query


def test_predict_counts_clipped_values(model_bin):
    proc = fm_predict("-m", model_bin, input=b"1 a:1e20 b\n0 c:-3e17 d:-1e17\n1 a:1e16\n")
    assert_ok(proc)
    assert "values clipped: 3 (|value| > 1e+16)" in text(proc.stderr)
    proc = fm_predict("-m", model_bin, input=b"1 a:1e16\n")
    assert "clipped" not in text(proc.stderr)
