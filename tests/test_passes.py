"""Passes over a parsed-block cache, held-out samples and the one-read grid (issue 15, items 2 and 3).

Exact comparisons: a second pass from the cache is the update sequence of
training on the text again (against the slow reference and against -im);
each grid member is the model of its own run; held-out samples never update
the model; the cache file is only ever a regular file and is only reused
when it fits.
"""

import io
import os
import re
import struct
import sys
import zlib

import numpy as np
import pytest

from helpers import TEST, TRAIN, assert_ok, assert_one_line_error, fm_train, text
from streamfm import FM, ftrl, parse
from streamfm.cache import CacheError, CacheReader
from streamfm.errors import OutputError, ParameterError
from streamfm.metrics import new_accumulators

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import ReferenceFM, assert_same_state, parse_text, random_lines, trainer_export  # noqa: E402

HP = [0.1, 1.0, 0.05, 1.0, 0.08, 1.0, 0.02, 1.0, 0.2]


@pytest.fixture(scope="module")
def small():
    return TRAIN.read_bytes().splitlines(keepends=True)[:6000]


def _data(seed=5, n=400):
    return random_lines(np.random.default_rng(seed), n, 120, labels="-11")


# ---------------------------------------------------------------------------
# passes


@pytest.mark.parametrize("fvs", [False, True], ids=["fvs0", "fvs1"])
def test_passes_match_the_reference_trained_on_the_text_again(fvs):
    text_ = _data()
    fm = FM(k=3, seed=7, fvs=fvs, **dict(zip(ftrl.HP_NAMES, HP)))
    rep = fm.partial_fit(text_, passes=3)
    ref = ReferenceFM(3, HP, True, True, fvs, seed=7).train(parse_text(text_ * 3))
    assert_same_state(trainer_export(fm.training_model()), ref.export(), 3, rtol=0, atol=0)
    n = len(ref.predictions) // 3
    assert [p.samples for p in rep.passes] == [n, n, n]
    assert rep.samples == 3 * n and fm.samples_seen == 3 * n
    # each pass's progressive logloss is the reference's over that pass's predictions
    y = np.array(ref.labels) > 0
    pr = np.clip(ref.probabilities(), 1e-15, 1 - 1e-15)
    for i, p in enumerate(rep.passes):
        sl = slice(i * n, (i + 1) * n)
        want = -np.mean(np.where(y[sl], np.log(pr[sl]), np.log(1 - pr[sl])))
        assert p.logloss == pytest.approx(want, rel=1e-12)
    assert rep.logloss == rep.passes[-1].logloss


def test_passes_2_equals_two_calls_and_small_blocks(small):
    data = b"".join(small)
    a = FM(k=4, seed=2)
    a.partial_fit(data)
    a.partial_fit(data)
    b = FM(k=4, seed=2)
    rb = b.partial_fit(data, passes=2)
    assert rb.lines == len(small) and rb.samples == 2 * len(small)
    pa, pb = a.training_model(), b.training_model()
    assert pa.n_rows == pb.n_rows
    assert np.array_equal(pa.params[:pa.n_rows], pb.params[:pb.n_rows])
    assert a.samples_seen == b.samples_seen == 2 * len(small)


def test_cli_passes_2_equals_a_run_and_an_im_run(tmp_path, small):
    data = b"".join(small)
    one, im, two = tmp_path / "one.bin", tmp_path / "im.txt", tmp_path / "two.txt"
    assert_ok(fm_train("-m", one, "-mf", "bin", "-dim", "1,1,4", "--seed", "3", "-q", input=data))
    assert_ok(fm_train("-im", one, "-m", im, "-dim", "1,1,4", "--seed", "3", "-q", input=data))
    proc = fm_train("-m", two, "-dim", "1,1,4", "--seed", "3", "--passes", "2", input=data)
    assert_ok(proc)
    assert two.read_bytes() == im.read_bytes()
    err = text(proc.stderr)
    assert re.search(r"pass 1 +6,000 samples +progressive logloss", err), err
    assert re.search(r"pass 2 +6,000 samples", err), err
    assert re.search(r"samples trained +12,000", err), err
    # the temporary cache beside the model is gone
    assert sorted(os.listdir(tmp_path)) == ["im.txt", "one.bin", "two.txt"]


def test_bad_lines_are_counted_once(tmp_path, small):
    data = b"".join(small[:1000]) + b"1 a:x\n" + b"".join(small[1000:2000]) + b"zz\n"
    proc = fm_train("-m", tmp_path / "m.txt", "--passes", "3", "--input", _write(tmp_path / "in.txt", data))
    assert_ok(proc)
    err = text(proc.stderr)
    assert re.search(r"lines read +2,002\n", err), err
    assert re.search(r"bad lines skipped +2 ", err), err
    assert re.search(r"samples trained +6,000\n", err), err


def _write(path, data):
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------
# held-out samples


def test_held_out_samples_never_update_the_model(small):
    data = b"".join(small)
    k = 7
    held = FM(k=4, seed=4)
    rep = held.partial_fit(data, passes=3, holdout_every=k, cores=1)
    # the same model trains on the text without lines k, 2k, ...: the held-out
    # samples took no part in any update of any pass
    kept = b"".join(ln for i, ln in enumerate(small, 1) if i % k)
    plain = FM(k=4, seed=4)
    plain.partial_fit(kept, passes=3)
    e1, e2 = trainer_export(held.training_model()), trainer_export(plain.training_model())
    assert e1["bias"] == e2["bias"]
    extra = set(e1["features"]) - set(e2["features"])
    assert extra and set(e2["features"]) <= set(e1["features"])
    for name, (w, v, wn, wz, vn, vz) in e2["features"].items():
        w1, v1, wn1, wz1, vn1, vz1 = e1["features"][name]
        assert (w1, wn1, wz1) == (w, wn, wz) and np.array_equal(v1, v) and np.array_equal(vn1, vn), name
        assert np.array_equal(vz1, vz), name
    # a feature seen only in held-out samples has its row, in its initial state: never updated
    for name in extra:
        w1, v1, wn1, wz1, vn1, vz1 = e1["features"][name]
        assert (w1, wn1, wz1) == (0.0, 0.0, 0.0) and not vn1.any(), name
    n_held = len(small) // k
    assert [p.holdout_samples for p in rep.passes] == [n_held] * 3
    assert [p.samples for p in rep.passes] == [len(small) - n_held] * 3
    assert rep.holdout_logloss == rep.passes[-1].holdout_logloss
    assert all(np.isfinite(p.holdout_logloss) and 0.5 < p.holdout_auc < 1 for p in rep.passes)


def test_held_out_samples_are_scored_after_their_block_trains():
    """On input of one block, pass p's held-out metric is exactly what the model
    after pass p predicts for those lines (they were scored once their block's
    training samples were trained; never trained on themselves)."""
    data = _data(n=400)
    lines = data.splitlines(keepends=True)
    held = b"".join(lines[4::5])  # input lines 5, 10, ...: --holdout-every 5
    fm = FM(k=4, seed=1)
    for p in (1, 2):
        rep = fm.partial_fit(data, holdout_every=5)
        want = fm.write_predictions(held, io.BytesIO(), metrics=True)
        assert rep.holdout_samples == want.samples == 80
        assert rep.holdout_logloss == pytest.approx(want.logloss, rel=1e-12), p


def test_held_out_score_is_fm_predicts(small):
    """score_state_block scores from the training state as fm_predict scores the model file."""
    test = TEST.read_bytes()
    fm = FM(k=4, seed=1, fvs=True, w_l1=1.0)
    fm.partial_fit(b"".join(small) + test)  # every test feature known, many w at 0 (-fvs matters)
    want = fm.write_predictions(test, io.BytesIO(), metrics=True)
    m = fm.training_model()
    p = parse.parse(np.frombuffer(test, np.uint8), None, parse.ParseBuffers(0), m.table)
    assert p.n_unknown == 0 and p.n_samples == want.samples
    before = m.params[:m.n_rows].copy()
    stats, hist = new_accumulators()
    ftrl.score_state_block(p.indptr, p.rows, p.vals, p.ys, p.n_samples, m.params, m.hp, m.k, m.fvs,
                           stats, hist)
    assert np.array_equal(m.params[:m.n_rows], before)  # scoring wrote nothing
    assert stats[0] == want.samples
    assert stats[1] / stats[0] == pytest.approx(want.logloss, rel=1e-12)


# ---------------------------------------------------------------------------
# the cache file


def test_cache_is_kept_reused_and_refused_when_it_does_not_fit(tmp_path, small):
    inp = _write(tmp_path / "in.txt", b"".join(small))
    cache = tmp_path / "c.sfmcache"
    m1, m2, m3 = tmp_path / "m1.txt", tmp_path / "m2.txt", tmp_path / "m3.txt"
    assert_ok(fm_train("-m", m1, "--passes", "2", "--cache", cache, "--input", inp, "-q"))
    r = CacheReader(cache)
    assert r.trailer["lines"] == len(small) and r.meta["input"] == [inp.stat().st_size, inp.stat().st_mtime_ns]
    r.close()
    # reused: the input is not read (a pipe of garbage here: the user vouches for a pipe)
    proc = fm_train("-m", m2, "--passes", "2", "--cache", cache, "--cache-reuse", input=b"garbage\n" * 10)
    assert_ok(proc)
    assert m2.read_bytes() == m1.read_bytes()
    assert re.search(r"lines read +6,000\n", text(proc.stderr))
    # the same file, reused by --input: fits
    assert_ok(fm_train("-m", m3, "--passes", "2", "--cache", cache, "--cache-reuse", "--input", inp, "-q"))
    assert m3.read_bytes() == m1.read_bytes()
    # the input changed: refused, nothing written
    os.utime(inp, ns=(inp.stat().st_atime_ns, inp.stat().st_mtime_ns + 10 ** 9))
    m4 = tmp_path / "m4.txt"
    assert_one_line_error(fm_train("-m", m4, "--cache", cache, "--cache-reuse", "--input", inp),
                          cache, "cannot reuse", "input file changed")
    # a cache made for a new model does not fit an -im model
    assert_one_line_error(fm_train("-m", m4, "-im", m1, "--cache", cache, "--cache-reuse", "-q", input=b""),
                          cache, "cannot reuse", "another model")
    assert not m4.exists()
    # a cut cache is no cache
    cut = tmp_path / "cut.sfmcache"
    cut.write_bytes(cache.read_bytes()[:-20])
    assert_one_line_error(fm_train("-m", m4, "--cache", cut, "--cache-reuse", input=b""),
                          cut, "not a complete streamfm cache")
    with pytest.raises(CacheError):
        CacheReader(cut)


# damaged caches: every damage is refused with one line naming the file, before
# any training (no model written), never a crash. The layout is docs/design.md's:
# a record is "BLK1" | u32 crc | i64 lines, samples, nnz | arrays; the file ends
# with "SFMCEND2" | i64 trailer offset | u32 head crc | u32 trailer crc.


def _kept_cache(tmp_path, small, n=2000):
    inp = _write(tmp_path / "in.txt", b"".join(small[:n]))
    cache, ref = tmp_path / "c.sfmcache", tmp_path / "ref.txt"
    assert_ok(fm_train("-m", ref, "--passes", "2", "--cache", cache, "--input", inp, "-q"))
    return inp, cache, ref


def _reuse(tmp_path, inp, cache, data, name="m.txt"):
    """fm_train --cache-reuse on ``data`` written as a cache beside ``cache`` (same mtime as the input)."""
    bad = tmp_path / ("bad-" + cache.name)
    bad.write_bytes(bytes(data))
    m = tmp_path / name
    proc = fm_train("-m", m, "--passes", "2", "--cache", bad, "--cache-reuse", "--input", inp, "-q")
    return proc, bad, m


def _trailer_at(data):
    """(offset, the trailer's map) of a cache's bytes."""
    import msgpack
    off = struct.unpack_from("<q", data, len(data) - 16)[0]
    un = msgpack.Unpacker(raw=False)
    un.feed(bytes(data[off:len(data) - 24]))
    return off, next(un)


def _reseal(data):
    """The trailer's crc made right again: damage that only the field checks can find."""
    off = struct.unpack_from("<q", data, len(data) - 16)[0]
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[off:len(data) - 8])))
    return data


def _block0(data, start):
    """{array name: byte offset} of the first record's counts and arrays."""
    tag, crc, n_lines, n, nnz = struct.unpack_from("<4sIqqq", data, start)
    at, pos = {"n_lines": start + 8}, start + 32
    for name, size in (("indptr", n + 1), ("rows", nnz), ("vals", nnz), ("ys", n), ("lines", n)):
        at[name] = pos
        pos += 8 * size
    return at


def test_undamaged_cache_gives_the_same_model_and_a_damaged_name_offset_is_refused(tmp_path, small):
    inp, cache, ref = _kept_cache(tmp_path, small)
    data = bytearray(cache.read_bytes())
    proc, _, m = _reuse(tmp_path, inp, cache, data, "same.txt")
    assert_ok(proc)
    assert m.read_bytes() == ref.read_bytes()
    off, tr = _trailer_at(data)
    name_off = bytes(data).find(tr["name_off"], off)
    n_names = len(tr["name_off"]) // 8 - 1
    assert n_names > 200
    # entry 100 becomes ~2^54 (this segfaulted in the name hashing kernel): the checksum finds it
    bad = bytearray(data)
    bad[name_off + 8 * 100 + 6] ^= 0x40
    proc, path, m = _reuse(tmp_path, inp, cache, bad)
    assert_one_line_error(proc, path, "damaged", "trailer", "checksum")
    assert not m.exists()
    # the same damage with a matching checksum, and offsets out of order, not from 0, past the names:
    # the trailer's checks find them before a kernel sees them
    for entry, value in ((100, 1 << 54), (100, -5), (0, 3), (n_names, len(tr["names"]) + 1), (7, 0)):
        bad = bytearray(data)
        struct.pack_into("<q", bad, name_off + 8 * entry, value)
        proc, path, m = _reuse(tmp_path, inp, cache, _reseal(bad))
        assert_one_line_error(proc, path, "not a complete streamfm cache", "name offsets")
        assert not m.exists()


def test_flipped_bit_in_a_feature_name_is_refused(tmp_path, small):
    inp, cache, _ = _kept_cache(tmp_path, small)
    data = bytearray(cache.read_bytes())
    off, tr = _trailer_at(data)
    at = bytes(data).find(tr["names"], off)
    data[at] ^= 0x20  # 'f0_2' -> 'F0_2': trained silently as another feature before
    proc, path, m = _reuse(tmp_path, inp, cache, data)
    assert_one_line_error(proc, path, "damaged", "trailer", "checksum")
    assert not m.exists()


def test_flipped_bit_in_a_block_is_refused(tmp_path, small):
    inp, cache, _ = _kept_cache(tmp_path, small)
    data = bytearray(cache.read_bytes())
    r = CacheReader(cache)
    start = r.start
    r.close()
    data[_block0(data, start)["vals"] + 3] ^= 0x01  # still a finite value: trained silently before
    proc, path, m = _reuse(tmp_path, inp, cache, data)
    assert_one_line_error(proc, path, "damaged", "block 0", "checksum")
    assert not m.exists()


@pytest.mark.parametrize("where", ["n_lines", "indptr", "rows", "vals", "ys", "lines", "header", "end"])
def test_api_refuses_every_flipped_bit_before_training(tmp_path, small, where):
    data = b"".join(small[:1500])
    cache = tmp_path / "c"
    a = FM(k=2, seed=1)
    a.partial_fit(data, passes=2, cache=cache)
    raw = bytearray(cache.read_bytes())
    r = CacheReader(cache)
    start = r.start
    r.close()
    at = {"header": 20, "end": len(raw) - 6}.get(where) or _block0(raw, start)[where] + 8 * (where != "n_lines")
    raw[at] ^= 0x02
    bad = _write(tmp_path / "bad", bytes(raw))
    b = FM(k=2, seed=1)
    with pytest.raises(CacheError, match="damaged") as e:
        b.partial_fit(None, passes=2, cache=bad, reuse_cache=True)
    assert str(bad) in str(e.value)
    assert b.n_features == 0 and b.training_model().samples_seen == 0  # refused before anything changed


def test_reader_checks_crcs_until_a_pass_has_checked_them_all(tmp_path, small):
    cache = tmp_path / "c"
    FM(k=2, seed=1).partial_fit(b"".join(small[:3000]), passes=2, cache=cache)
    raw = bytearray(cache.read_bytes())
    r = CacheReader(cache)
    start, blocks = r.start, r.trailer["blocks"]

    def one_pass(reader):
        reader.rewind()
        seen = []
        while True:
            b = reader.get()
            if b is None:
                return seen
            seen.append(b.seq)

    assert blocks >= 1 and not r.crc_checked
    assert one_pass(r) == list(range(blocks)) and r.error is None and r.crc_checked
    r.close()
    raw[_block0(raw, start)["lines"]] ^= 0x04  # a line number: no other check sees it
    bad = _write(tmp_path / "bad", bytes(raw))
    r = CacheReader(bad)
    assert one_pass(r) == [] and not r.crc_checked
    assert isinstance(r.error, CacheError) and str(r.error) == (
        "%s: the cache is damaged (block 0 fails its checksum); delete it" % bad)
    with pytest.raises(CacheError, match="block 0 fails its checksum"):
        r.verify()
    r.close()
    # the numbers are checked on every pass, the crcs no more once all matched
    raw[_block0(raw, start)["lines"]] ^= 0x04
    raw[_block0(raw, start)["rows"]:_block0(raw, start)["rows"] + 8] = struct.pack("<q", 1 << 40)
    r = CacheReader(_write(tmp_path / "rows", bytes(raw)))
    r.crc_checked = True
    assert one_pass(r) == [] and "block 0 holds numbers no parse gives" in str(r.error)
    r.close()


def test_cache_of_an_older_streamfm_is_refused(tmp_path, small):
    inp, cache, _ = _kept_cache(tmp_path, small, 200)
    data = bytearray(cache.read_bytes())
    struct.pack_into("<I", data, 8, 1)  # format 1: no checksums
    proc, path, m = _reuse(tmp_path, inp, cache, data)
    assert_one_line_error(proc, path, "older streamfm", "delete it", "without --cache-reuse")
    assert not m.exists()


def test_api_reuse_without_data_and_errors(tmp_path, small):
    data = b"".join(small[:2000])
    cache = tmp_path / "c"
    a = FM(k=2, seed=1)
    a.partial_fit(data, passes=2, cache=cache)
    b = FM(k=2, seed=1)
    rep = b.partial_fit(None, passes=2, cache=cache, reuse_cache=True)
    assert rep.lines == 2000 and rep.samples == 4000
    assert np.array_equal(a.training_model().params[:a.n_features + 1], b.training_model().params[:b.n_features + 1])
    with pytest.raises(ParameterError, match="reuse_cache needs cache"):
        FM().partial_fit(data, reuse_cache=True)
    with pytest.raises(ParameterError, match="holdout_every"):
        FM().partial_fit(data, holdout_every=1)
    with pytest.raises(ParameterError, match="passes"):
        FM().partial_fit(data, passes=0)


def test_cache_is_never_written_over_a_fifo_or_a_directory(tmp_path, small):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    m = tmp_path / "m.txt"
    assert_one_line_error(fm_train("-m", m, "--passes", "2", "--cache", fifo, input=b"".join(small[:10])),
                          fifo, "regular file")
    assert not m.exists()
    with pytest.raises(OutputError, match="regular file"):
        FM().partial_fit(b"1 a\n", passes=2, cache=tmp_path)


def test_failed_run_leaves_no_cache(tmp_path, small):
    cache = tmp_path / "c"
    proc = fm_train("-m", tmp_path / "m.txt", "--passes", "2", "--cache", cache, "--on-error", "stop",
                    input=b"".join(small[:100]) + b"1 a:x\n")
    assert proc.returncode == 3
    assert sorted(os.listdir(tmp_path)) == []


# ---------------------------------------------------------------------------
# the grid


def test_grid_members_are_the_separate_runs_bit_for_bit(tmp_path, small):
    inp = _write(tmp_path / "in.txt", b"".join(small))
    out = tmp_path / "grid"
    best = tmp_path / "best.txt"
    proc = fm_train("-m", best, "-dim", "1,1,4", "--seed", "11", "-core", "1", "--passes", "2",
                    "--holdout-every", "5", "--grid", "v_alpha=0.02,0.1 w_l2=1,5 init_stdev=0.05,0.2",
                    "--grid-out", out, "--input", inp)
    assert_ok(proc)
    names = sorted(os.listdir(out))
    assert len(names) == 8
    for name in names:
        setting = dict(kv.split("=") for kv in name[:-len(".txt")].split(","))
        flags = sum((["-" + k, v] for k, v in setting.items()), [])
        one = tmp_path / "one.txt"
        assert_ok(fm_train("-m", one, "-dim", "1,1,4", "--seed", "11", "--passes", "2", "--holdout-every", "5",
                           "--input", inp, "-q", *flags))
        assert (out / name).read_bytes() == one.read_bytes(), name
    # the table marks the lowest held-out logloss, and -m holds that model
    err = text(proc.stderr)
    rows = re.findall(r"^  ([* ]) (\S+=\S+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)$",
                      err, re.M)
    assert len(rows) == 8, err
    starred = [r[1] for r in rows if r[0] == "*"]
    lowest = min(rows, key=lambda r: float(r[6]))[1]
    assert starred == [lowest]
    assert best.read_bytes() == (out / (lowest + ".txt")).read_bytes()


def test_grid_api_members_stay_independent(small):
    data = b"".join(small[:1500])
    res = FM(k=2, seed=3).grid_fit(data, {"w_alpha": [0.05, 0.1]})
    a, b = res.fms
    before = b.training_model().params[:b.n_features + 1].copy()
    a.partial_fit(b"1 brand_new_feature other_new\n")  # a grows its own table now
    assert a.n_features == b.n_features + 2
    assert np.array_equal(b.training_model().params[:b.n_features + 1], before)
    assert b.predict_proba([b"1 brand_new_feature"])[0] == pytest.approx(
        b.predict_proba([b"1 unknown_here"])[0])
    with pytest.raises(ParameterError, match="not a hyper-parameter"):
        FM().grid_fit(data, {"k": [2, 4]})
    with pytest.raises(ParameterError, match="twice"):
        FM().grid_fit(data, {"w_l2": [1, 1.0]})
    with pytest.raises(ParameterError, match="> 0"):
        FM().grid_fit(data, {"v_alpha": [0]})


@pytest.mark.parametrize("spec,needle", [
    ("v_alpha", "NAME=V1,V2"),
    ("v_alpha=", "NAME=V1,V2"),
    ("k=4", "not a hyper-parameter"),
    ("w_l2=1 w_l2=2", "given twice"),
    ("w_l2=-1", ">= 0"),
    ("w_alpha=nan", "finite"),
])
def test_grid_usage_errors_exit_2(tmp_path, spec, needle):
    proc = fm_train("-m", tmp_path / "m.txt", "--grid", spec, input=b"1 a\n")
    assert proc.returncode == 2, text(proc.stderr)
    assert needle in text(proc.stderr) and "Traceback" not in text(proc.stderr)
    assert not (tmp_path / "m.txt").exists()


def test_grid_out_and_cache_reuse_need_their_partner(tmp_path):
    for args, needle in ((["--grid-out", tmp_path / "d"], "--grid-out goes with --grid"),
                         (["--cache-reuse"], "--cache-reuse needs --cache")):
        proc = fm_train("-m", tmp_path / "m.txt", *args, input=b"1 a\n")
        assert proc.returncode == 2 and needle in text(proc.stderr), text(proc.stderr)


def test_grid_without_held_out_lines_chooses_by_progressive_logloss(tmp_path, small):
    """--holdout-every K on an input shorter than K holds nothing out: every held-out
    logloss is NaN, so the best is chosen by pass 1's progressive logloss, and said so."""
    data = b"".join(small[:300])
    res = FM(k=2, seed=3).grid_fit(data, {"w_alpha": [0.01, 0.3]}, passes=2, holdout_every=1000)
    assert res.reports[0].holdout_samples == 0 and res.by == "logloss of pass 1"
    assert res.best == min(range(2), key=lambda i: res.reports[i].passes[0].logloss)
    held = FM(k=2, seed=3).grid_fit(data, {"w_alpha": [0.01, 0.3]}, passes=2, holdout_every=10)
    assert held.by == "holdout_logloss" and held.reports[0].holdout_samples > 0
    inp = _write(tmp_path / "in.txt", data)
    proc = fm_train("-m", tmp_path / "m.txt", "--grid", "w_alpha=0.01,0.3", "--passes", "2", "--holdout-every",
                    "1000", "--input", inp)
    assert_ok(proc)
    assert "best (*) by progressive logloss of pass 1 (no line was held out" in text(proc.stderr)


def test_grid_out_files_are_checked_before_the_run(tmp_path, small):
    """Every setting's --grid-out file is an output like -m: one of them may not be
    -m or an input (the loop once renamed a setting's model over the best one at
    -m), and one that cannot be written stops the run before it trains."""
    inp = _write(tmp_path / "in.txt", b"".join(small[:500]))
    out = tmp_path / "g"
    out.mkdir()
    for m, needle in ((out / "w_l2=5.0.txt", "-m"), (out / "w_l2=1.0.txt", "-m")):
        proc = fm_train("-m", m, "--grid", "w_l2=1,5", "--grid-out", out, "--input", inp)
        assert_one_line_error(proc, needle, str(m), "--grid-out", "same file", code=2)
    inp5 = _write(tmp_path / "w_l2=5.0.txt", b"".join(small[:500]))
    proc = fm_train("-m", tmp_path / "m.txt", "--grid", "w_l2=1,5", "--grid-out", tmp_path, "--input", inp5)
    assert_one_line_error(proc, "--grid-out", "--input", str(inp5), code=2)
    assert inp5.read_bytes() == b"".join(small[:500])
    (out / "w_l2=1.0.txt").mkdir()
    proc = fm_train("-m", tmp_path / "m.txt", "--grid", "w_l2=1,5", "--grid-out", out, "--input", inp)
    assert_one_line_error(proc, "w_l2=1.0.txt", "directory")
    assert not (tmp_path / "m.txt").exists() and sorted(os.listdir(out)) == ["w_l2=1.0.txt"]


def test_two_cores_passes_and_grid_run_the_same_pipeline(tmp_path, small):
    """-core 2: Hogwild, so not bit for bit; the counts are exact and the models close to -core 1's."""
    data = b"".join(small)
    one, two = FM(k=4, seed=1), FM(k=4, seed=1)
    r1 = one.partial_fit(data, passes=3, holdout_every=4, cores=1)
    r2 = two.partial_fit(data, passes=3, holdout_every=4, cores=2)
    assert [(p.samples, p.holdout_samples) for p in r2.passes] == [(p.samples, p.holdout_samples) for p in r1.passes]
    assert two.n_features == one.n_features and two.samples_seen == one.samples_seen
    assert abs(r2.holdout_logloss - r1.holdout_logloss) < 0.06  # Hogwild: blocks in another order
    res = FM(k=4, seed=1).grid_fit(data, {"v_alpha": [0.05, 0.1]}, passes=2, holdout_every=4, cores=2)
    assert res.settings[0] == {"v_alpha": 0.05}
    assert abs(res.reports[0].holdout_logloss - FM(k=4, seed=1).partial_fit(
        data, passes=2, holdout_every=4).holdout_logloss) < 0.06
    assert all(f.n_features == one.n_features for f in res.fms)


def test_progress_lines_say_the_pass(tmp_path, small):
    # enough lines that a pass read from the cache (~10x faster than text) still
    # outlasts a few progress ticks on a fast machine
    proc = fm_train("-m", tmp_path / "m.txt", "--passes", "2", "--progress-every", "0.1",
                    input=b"".join(small) * 50)
    assert_ok(proc)
    err = text(proc.stderr)
    assert re.search(r"^fm_train: pass 1/2  [0-9,]+ lines", err, re.M), err
    assert re.search(r"^fm_train: pass 2/2  [0-9,]+ lines", err, re.M), err


def test_cache_never_replaces_the_input(tmp_path, small):
    inp = _write(tmp_path / "in.txt", b"".join(small[:50]))
    proc = fm_train("-m", tmp_path / "m.txt", "--passes", "2", "--cache", inp, "--input", inp)
    assert proc.returncode != 0 and "Traceback" not in text(proc.stderr)
    assert inp.read_bytes() == b"".join(small[:50])
    assert not (tmp_path / "m.txt").exists()
