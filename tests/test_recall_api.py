"""streamfm.Recall: the same models, indexes and rankings as fm_recall train / index / query."""

import os
import subprocess
import sys

import numpy as np
import pytest

from streamfm import FM, ParameterError, Recall
from streamfm.recall.index import read_index

from helpers import SAMPLE

FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")


def cli(*args, stdin=None):
    p = subprocess.run([FM_RECALL] + [str(a) for a in args], input=stdin, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return p.stdout.decode()


def results(text):
    out = []
    for line in text.splitlines():
        key, _, rest = line.partition("\t")
        out.append((key, [(t.rsplit(":", 1)[0], float(t.rsplit(":", 1)[1])) for t in rest.split()]))
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    d = tmp_path_factory.mktemp("recall_api")
    cli("train", "-m", d / "cli.txt", "--items", SAMPLE / "items.txt", "-dim", "1,1,8", "--epochs", "3",
        "--seed", "1", "--neg", "4", "--input", SAMPLE / "clicks.txt", "-q")
    cli("index", "-m", d / "cli.txt", "--items", SAMPLE / "items.txt", "-o", d / "items.idx", "-q")
    rec = Recall.train(SAMPLE / "clicks.txt", SAMPLE / "items.txt", k=8, epochs=3, seed=1, neg=4)
    return d, rec


def test_train_equals_fm_recall_train(both):
    d, rec = both
    assert rec.report.clicks == 9093 and rec.report.passes == 3
    rec.fm.save(d / "api.txt", format="txt")
    assert (d / "api.txt").read_bytes() == (d / "cli.txt").read_bytes()


def test_index_and_search_equal_the_commands(both, tmp_path):
    d, rec = both
    index = rec.index(SAMPLE / "items.txt")
    theirs = read_index(str(d / "items.idx"))
    assert np.array_equal(index.vectors, theirs.vectors) and bytes(index.key_arena) == bytes(theirs.key_arena)
    Recall.save_index(index, tmp_path / "api.idx")
    again = Recall.load_index(tmp_path / "api.idx")
    assert np.array_equal(again.vectors, index.vectors) and again.kind == "items"
    users = (SAMPLE / "users.txt").read_bytes()
    for mode, extra in (("u2i", []), ("i2i", ["--metric", "cos"])):
        queries = users if mode == "u2i" else (SAMPLE / "items.txt").read_bytes()[:20000]
        text = cli("query", "-m", d / "cli.txt", "--index", d / "items.idx", "--mode", mode, "--topn", "10",
                   *extra, stdin=queries)
        mine = rec.search(queries, index, mode=mode, topn=10)
        theirs = results(text)
        assert [k for k, _ in mine] == [k for k, _ in theirs]
        for (_, a), (_, b) in zip(mine, theirs):
            assert [key for key, _ in a] == [key for key, _ in b]
            # the command prints float32 text of the same numbers
            assert [np.float32(s) for _, s in a] == [np.float32(s) for _, s in b]


def test_exclude_and_faiss_backend(both):
    import faiss  # noqa: F401  (faiss-cpu is in the test extra: this runs)
    d, rec = both
    index = rec.index(SAMPLE / "items.txt")
    users = (SAMPLE / "users.txt").read_bytes().splitlines()[:100]
    exact = rec.search(users, index, mode="u2i", topn=10)
    fa = rec.search(users, index, mode="u2i", topn=10, backend="faiss")
    same = np.mean([[k for k, _ in a] == [k for k, _ in b] for (_, a), (_, b) in zip(exact, fa)])
    assert same > 0.95
    first = {u: hits[0][0] for u, hits in exact}
    excl = ["%s | %s" % (u, item) for u, item in first.items()]
    again = rec.search(users, index, mode="u2i", topn=10, exclude=excl)
    for u, hits in again:
        assert first[u] not in [k for k, _ in hits]


def test_recall_errors(both):
    d, rec = both
    index = rec.index(SAMPLE / "items.txt")
    with pytest.raises(ParameterError, match="searches users"):
        rec.search([b"u1 user=u1"], index, mode="u2u")
    with pytest.raises(ParameterError, match="k >= 1"):
        Recall.train([b"u1 a | i1"], [b"i1 x", b"i2 y"], k=0)
    with pytest.raises(ParameterError, match="at least 2"):
        Recall.train([b"u1 a | i1"], [b"i1 x"], k=2)
    for bad in (0, -1, 2.5, True):  # 0 rotated an empty memory for ever
        with pytest.raises(ParameterError, match="seen_pairs must be a whole number >= 1"):
            Recall.train([b"u1 a | i1"], [b"i1 x", b"i2 y"], k=2, seen_pairs=bad)
    with pytest.raises(TypeError):
        Recall(object())
    assert isinstance(rec.fm, FM)


def test_write_results_is_fm_recall_query_byte_for_byte(both, tmp_path):
    """fm_recall query is a client of Recall.write_results: the same bytes, the same counts."""
    import io

    d, rec = both
    queries = (SAMPLE / "users.txt").read_bytes().splitlines()[:300]
    queries[5] = b"u_bad age:x"
    (tmp_path / "q.txt").write_bytes(b"\n".join(queries) + b"\n")
    out = tmp_path / "cli.out"
    cli("query", "-m", d / "cli.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "7",
        "--exclude", SAMPLE / "clicks.txt", "--input", tmp_path / "q.txt", "-out", out,
        "--bad-lines", tmp_path / "cli.bad", "-q")
    buf = io.BytesIO()
    mine = Recall(FM.load(d / "cli.txt"))
    s = mine.write_results(queries, read_index(str(d / "items.idx")), buf, "u2i", 7, exclude=SAMPLE / "clicks.txt",
                           bad_lines=tmp_path / "api.bad", source=str(tmp_path / "q.txt"))
    assert buf.getvalue() == out.read_bytes()
    assert s.queries == len(queries) - 1 and s.bad == 1 and mine.report is s
    assert (tmp_path / "api.bad").read_bytes() == (tmp_path / "cli.bad").read_bytes()
    assert b"q.txt:6\tfeature value is not a number\tu_bad age:x" in (tmp_path / "api.bad").read_bytes()


def test_index_report_counts_what_the_command_prints(both, tmp_path):
    d, rec = both
    items = (SAMPLE / "items.txt").read_bytes().splitlines()[:200]
    lines = items + [items[3], b"zz_new brand_new:1", b"bad x:y"]
    r = Recall(FM.load(d / "cli.txt"))
    index = r.index(lines)
    rep = r.report
    assert (rep.lines, rep.bad, rep.records, rep.duplicates, rep.empty) == (203, 1, 201, 1, 1)
    assert index.n == 201 and rep.unknown_features >= 1 and rep.features > rep.unknown_features
    (tmp_path / "items.txt").write_bytes(b"\n".join(lines) + b"\n")
    p = subprocess.run([FM_RECALL, "index", "-m", d / "cli.txt", "--items", tmp_path / "items.txt",
                        "-o", tmp_path / "x.idx"], capture_output=True, timeout=600)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert "fm_recall index: 201 items" in err and "repeated keys dropped   1" in err
    assert "features unknown to the model  %d of %d" % (rep.unknown_features, rep.features) in err
    assert "1 with no known feature" in err
    assert np.array_equal(read_index(str(tmp_path / "x.idx")).vectors, index.vectors)


def test_train_from_a_read_catalog_with_stop_and_bad_lines(tmp_path):
    """read_catalog + train(stop=...) as fm_recall train runs them: a set stop event ends the
    run with what was trained; both inputs' bad lines go to one file, the catalog's prefixed."""
    import threading

    items = (SAMPLE / "items.txt").read_bytes().splitlines() + [b"bad_item q:w"]
    fm = FM(k=4, seed=2)
    catalog = Recall.read_catalog(items, fm, bad_lines=tmp_path / "bad.txt", source="items.txt")
    assert catalog.n == len(items) - 1
    stop = threading.Event()
    seen = []

    def progress(summary, pass_no, n_features):
        seen.append(summary.trained)
        stop.set()

    clicks = (SAMPLE / "clicks.txt").read_bytes().splitlines() * 3 + [b"u1 x:? | i1"]
    rec = Recall.train(clicks, catalog, fm=fm, epochs=1, bad_lines=tmp_path / "bad.txt", stop=stop,
                       progress=progress)
    r = rec.report
    assert r.interrupted and 0 < r.trained < len(clicks) - 1
    assert rec.fm.samples_seen == r.trained
    bad = (tmp_path / "bad.txt").read_bytes().splitlines()
    assert bad[0].startswith(b"items.txt:%d\t" % len(items))
