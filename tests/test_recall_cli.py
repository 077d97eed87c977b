"""fm_recall end to end through its console script, on data/sample."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")
FM_DUMP = os.path.join(os.path.dirname(sys.executable), "fm_dump")


def sample(name):
    return os.path.join(SAMPLE, name)


def run(args, stdin=None, code=0, env=None, exe=FM_RECALL):
    if isinstance(stdin, str) and os.path.exists(stdin):
        with open(stdin, "rb") as f:
            stdin = f.read()
    p = subprocess.run([exe] + [str(a) for a in args], input=stdin, capture_output=True, env=env)
    assert p.returncode == code, (p.returncode, p.stderr.decode()[-2000:])
    return p.stdout.decode(), p.stderr.decode()


def parse_results(text):
    out = []
    for line in text.splitlines():
        key, _, rest = line.partition("\t")
        out.append((key, [(t.rsplit(":", 1)[0], float(t.rsplit(":", 1)[1])) for t in rest.split()]))
    return out


def categories():
    cat = {}
    for name in ("items.txt", "new_items.txt"):
        with open(sample(name)) as f:
            for line in f:
                parts = line.split()
                cat[parts[0]] = parts[2]
    return cat


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("recall")
    model = d / "model.txt"
    _, err = run(["train", "-m", model, "--items", sample("items.txt"), "-dim", "1,1,8", "--epochs", "8",
                  "--seed", "1", "-core", "1"], stdin=sample("clicks.txt"))
    assert "violated pairs" in err and "clicks trained" in err
    with open(sample("items.txt"), "rb") as a, open(sample("new_items.txt"), "rb") as b, \
            open(d / "all_items.txt", "wb") as out:
        out.write(a.read() + b.read())
    run(["index", "-m", model, "--items", d / "all_items.txt", "-o", d / "items.idx"])
    run(["index", "-m", model, "--users", sample("users.txt"), "-o", d / "users.idx"])
    return d


def test_u2i_output_order_exclusions_and_scores(trained):
    d = trained
    with open(sample("users.txt"), "rb") as f:
        users = f.read().splitlines()[:40]
    queries = b"\n".join(users[::-1]) + b"\n"
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "20",
                  "--exclude", sample("clicks.txt"), "-core", "2"], stdin=queries)
    res = parse_results(out)
    assert [k for k, _ in res] == [u.split()[0].decode() for u in users[::-1]]  # input order
    clicked = {}
    with open(sample("clicks.txt")) as f:
        for line in f:
            clicked.setdefault(line.split()[0], set()).add(line.split("|")[1].strip())
    for key, items in res:
        assert len(items) == 20
        scores = [s for _, s in items]
        assert scores == sorted(scores, reverse=True)
        assert not clicked.get(key, set()) & {i for i, _ in items}
    # without --exclude the clicked items come back
    out2, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "20"],
                  stdin=queries)
    assert any(clicked.get(k, set()) & {i for i, _ in items} for k, items in parse_results(out2))


def test_i2i_u2u_i2u_modes(trained):
    d = trained
    cat = categories()
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "i2i", "--topn", "10"],
                 stdin=b"i5\ni17\ni17 item=i17 cat=c3\n")
    res = parse_results(out)
    assert [k for k, _ in res] == ["i5", "i17", "i17"]
    for key, items in res[:2]:
        assert key not in {i for i, _ in items}   # never the query itself
        assert all(-1.0001 <= s <= 1.0001 for _, s in items)   # cosine
        assert sum(cat[i] == cat[key] for i, _ in items) >= 7   # neighbours share the category
    assert res[0][1] != res[1][1]
    ip, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "i2i", "--topn", "3",
                 "--metric", "ip"], stdin=b"i5\n")
    assert parse_results(ip)[0][1] != res[0][1][:3]
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "users.idx", "--mode", "u2u", "--topn", "5"],
                 stdin=b"u3\nu4 age=a1 gender=g0\n")
    res = parse_results(out)
    assert len(res) == 2 and all(len(r) == 5 for _, r in res)
    assert "u3" not in {u for u, _ in res[0][1]}
    # i2u: features given, or the key looked up in --query-index
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "users.idx", "--mode", "i2u", "--topn", "7"],
                 stdin=b"i5 item=i5 cat=c9 brand=b29 price=p1\n")
    out2, _ = run(["query", "-m", d / "model.txt", "--index", d / "users.idx", "--mode", "i2u", "--topn", "7",
                   "--query-index", d / "items.idx"], stdin=b"i5\n")
    assert len(parse_results(out)[0][1]) == 7
    assert [u for u, _ in parse_results(out)[0][1]] == [u for u, _ in parse_results(out2)[0][1]]


def test_cold_start_item_retrieved_through_its_features(trained):
    d = trained
    with open(d / "model.txt", "rb") as f:
        names = {line.split(b" ", 1)[0] for line in f}
    assert b"item=i1200" not in names and b"cat=c10" in names   # the id is unknown, the category known
    cat = categories()
    new = [line.split()[0] for line in open(sample("new_items.txt"))]
    # i2i from its features: its neighbours are its category
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "i2i", "--topn", "10"],
                 stdin=open(sample("new_items.txt"), "rb").read())
    for key, items in parse_results(out):
        assert sum(cat[i] == cat[key] for i, _ in items) >= 6, key
    # u2i: cold items are recommended to users (below the warm items whose ids carry their
    # popularity, so look at the top 100)
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "100"],
                 stdin=sample("users.txt"))
    got = [i for _, items in parse_results(out) for i, _ in items]
    cold = [i for i in got if i in set(new)]
    assert len(set(cold)) >= 20 and len(cold) > 0.01 * len(got)
    # a new user (unknown id) gets recommendations from age/gender/city
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "5"],
                 stdin=b"u_new user=u_new age=a2 gender=g1 city=c4\n")
    assert len(parse_results(out)[0][1]) == 5


def test_eval_beats_popularity(trained):
    d = trained
    out, _ = run(["eval", "-m", d / "model.txt", "--index", d / "items.idx", "--train", sample("clicks.txt"),
                  "-k", "10,50", "--json"], stdin=sample("clicks_test.txt"))
    info = json.loads(out)
    assert info["users"] == 600
    m10, m50 = info["metrics"]["10"], info["metrics"]["50"]
    # popularity gets 0.085 / 0.313 on this data
    assert m10["hit_rate"] > 0.18 and m50["hit_rate"] > 0.45
    assert m10["recall"] == pytest.approx(m10["hit_rate"])   # one held-out click per user
    assert 0 < m10["ndcg"] <= m10["hit_rate"] and 0 < m10["coverage"] <= m50["coverage"] <= 1
    table, _ = run(["eval", "-m", d / "model.txt", "--index", d / "items.idx", "--train", sample("clicks.txt")],
                   stdin=sample("clicks_test.txt"))
    assert "HitRate" in table and "NDCG" in table


def test_eval_counts_a_repeated_held_out_click_once(trained):
    """Two held-out clicks of a user on one item are one held-out item: ranked first, Recall@1 and
    NDCG@1 are 1 (they were 0.5); distinct items missing from the index stay distinct misses."""
    d = trained
    ua = b"u0 user=u0 age=a4 gender=g0 city=c11"
    ub = b"u1 user=u1 age=a1 gender=g1 city=c3"
    out, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "1"],
                 stdin=ua + b"\n" + ub + b"\n")
    (_, [(top_a, _)]), (_, [(top_b, _)]) = parse_results(out)
    held = b"".join(b"%s | %s\n" % (u, i.encode()) for u, i in [
        (ua, top_a), (ua, top_a), (ub, top_b), (ub, "no_such_item_1"), (ub, "no_such_item_2"), (ub, top_b)])
    out, _ = run(["eval", "-m", d / "model.txt", "--index", d / "items.idx", "-k", "1,3", "--json"], stdin=held)
    info = json.loads(out)
    assert (info["users"], info["held_out"], info["not_in_index"]) == (2, 6, 2)
    m1, m3 = info["metrics"]["1"], info["metrics"]["3"]
    assert m1["hit_rate"] == 1.0
    # user a: 1 of 1 held-out item; user b: 1 of 3 (its item and two missing ones)
    assert m1["recall"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-12)
    assert m1["ndcg"] == pytest.approx(1.0, abs=1e-12)
    # NDCG@3 of user b: a hit at rank 1 of an ideal 3 hits
    idcg3 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m3["ndcg"] == pytest.approx((1 + 1 / idcg3) / 2, abs=1e-12)


def test_eval_with_no_held_out_click_is_an_error_not_a_table_of_zeros(trained):
    """Every held-out line bad (or none at all): eval used to print HitRate 0.0000 for
    0 users and exit 0, a number a pipeline would record; now it says why and fails
    (3 when the lines were bad, 1 for an empty input). Bad lines among good ones are
    counted in the summary."""
    d = trained
    args = ["eval", "-m", d / "model.txt", "--index", d / "items.idx", "-k", "1"]
    out, err = run(args, stdin=b"garbage line\nanother\n", code=3)
    assert out == ""
    assert "fm_recall eval: error: no held-out click to evaluate in stdin (2 lines, 2 bad)" in err
    out, err = run(args + ["--json"], stdin=b"", code=1)
    assert out == "" and "no held-out click to evaluate in stdin (0 lines, 0 bad)" in err
    good = b"u0 user=u0 age=a4 gender=g0 city=c11 | i1\n"
    info = json.loads(run(args + ["--json"], stdin=good + b"garbage\n")[0])
    assert (info["users"], info["held_out"], info["bad_lines"]) == (1, 1, 1)
    assert "bad lines skipped 1" in run(args, stdin=good + b"garbage\n")[0]


def test_float32_copy_of_the_model_is_not_another_model(trained, tmp_path):
    """An index built from the model and queried with its float32 serving copy (fm_dump strip --float),
    or the other way round, is the same model: no 'built from another model' warning (there was one:
    the check compared crc32s without index.fingerprint_matches), and the same results. Another
    model still warns."""
    d = trained
    s32 = tmp_path / "serve32.bin"
    run(["convert", d / "model.txt", tmp_path / "model.bin"], exe=FM_DUMP)
    run(["strip", "--float", tmp_path / "model.bin", s32], exe=FM_DUMP)
    run(["index", "-m", s32, "--items", sample("items.txt"), "-o", tmp_path / "items32.idx", "-q"])
    q = b"u0 user=u0 age=a4 gender=g0 city=c11\n"
    outs = []
    for model, idx in [(d / "model.txt", d / "items.idx"), (s32, d / "items.idx"), (d / "model.txt", tmp_path / "items32.idx")]:
        out, err = run(["query", "-m", model, "--index", idx, "--mode", "u2i", "--topn", "3"], stdin=q)
        assert "another model" not in err, (model, idx, err)
        outs.append([k for k, _ in parse_results(out)[0][1]])
    assert outs[0] == outs[1] == outs[2]
    other = tmp_path / "other.txt"
    run(["train", "-m", other, "--items", sample("items.txt"), "-dim", "1,1,8", "--epochs", "1", "--seed", "2",
         "-q"], stdin=sample("clicks.txt"))
    _, err = run(["query", "-m", other, "--index", d / "items.idx", "--mode", "u2i", "--topn", "3"], stdin=q)
    assert "built from another model" in err


def test_model_works_with_fm_dump_and_incremental_training(trained, tmp_path):
    d = trained
    out, _ = run(["info", d / "model.txt"], exe=FM_DUMP)
    assert "8 factors" in out
    with open(sample("clicks.txt"), "rb") as f:
        part = b"".join(f.readlines()[:500])
    _, err = run(["train", "-im", d / "model.txt", "-m", tmp_path / "m2.bin", "-mf", "bin", "-dim", "1,1,8",
                  "--items", sample("items.txt"), "--loss", "bpr", "--neg-dist", "pop0.75", "--pop-suppress",
                  "0.001", "--hard-neg", "12", "--neg", "3"], stdin=part)
    assert "continuing" in err and "clicks trained        " in err
    run(["index", "-m", tmp_path / "m2.bin", "--items", sample("items.txt"), "-o", tmp_path / "i.idx"])
    _, err = run(["train", "-m", tmp_path / "m3.txt", "-dim", "1,1,8", "--items", sample("items.txt"),
                  "--loss", "logistic", "--hard-neg", "10", "--hard-neg-model", d / "model.txt", "-core", "2",
                  "--epochs", "2"], stdin=part)
    assert "logistic loss" in err


def test_deterministic_with_one_core_and_a_seed(tmp_path):
    with open(sample("clicks.txt"), "rb") as f:
        part = b"".join(f.readlines()[:2000])
    for name in ("a.txt", "b.txt"):
        run(["train", "-m", tmp_path / name, "--items", sample("items.txt"), "--seed", "4", "--epochs", "2",
             "--neg-dist", "pop", "-q"], stdin=part)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


def test_bad_lines_and_unknown_items(tmp_path):
    clicks = (b"u1 user=u1 age=a1 | i1\n"
              b"u2 user=u2 age=a2 i3\n"             # no '| ITEM_KEY'
              b"u3 user=u3 age:x | i2\n"            # a value that is not a number
              b"u4 user=u4 | nosuchitem\n"
              b"u5 user=u5 | i2\n")
    _, err = run(["train", "-m", tmp_path / "m.txt", "--items", sample("items.txt"), "--epochs", "1"], stdin=clicks)
    assert "stdin line 2:" in err and "stdin line 3:" in err
    assert "line 4: clicked item 'nosuchitem' is not in --items" in err
    assert "clicks trained        2" in err
    _, err = run(["train", "-m", tmp_path / "m2.txt", "--items", sample("items.txt"), "--on-error", "stop"],
                 stdin=clicks, code=3)
    assert "line 2" in err and "no model written" in err
    assert not (tmp_path / "m2.txt").exists()
    _, err = run(["query", "-m", tmp_path / "m.txt", "--index", tmp_path / "nope.idx", "--mode", "u2i"],
                 stdin=b"", code=1)
    assert "no such index file" in err


def test_usage_errors(trained, tmp_path):
    d = trained
    _, err = run(["query", "-m", d / "model.txt", "--index", d / "users.idx", "--mode", "u2i"], stdin=b"", code=1)
    assert "searches items" in err
    _, err = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--metric", "cos"],
                 stdin=b"", code=2)
    assert "--metric" in err
    _, err = run(["train", "-m", tmp_path / "x.txt", "--items", sample("items.txt"), "--hard-neg", "3"],
                 stdin=b"", code=2)
    assert "--hard-neg" in err
    # --backend faiss without faiss: a clear message (a stub module hides an installed faiss)
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "faiss.py").write_text("raise ImportError('no faiss here')\n")
    env = dict(os.environ, PYTHONPATH=str(stub))
    _, err = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--backend",
                  "faiss"], stdin=b"u1 user=u1\n", code=1, env=env)
    assert "pip install 'streamfm[faiss]'" in err
    # a damaged index is refused with a reason
    data = bytearray((d / "items.idx").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.idx").write_bytes(bytes(data))
    _, err = run(["query", "-m", d / "model.txt", "--index", tmp_path / "bad.idx", "--mode", "u2i"],
                 stdin=b"", code=1)
    assert "checksum mismatch" in err
    (tmp_path / "short.idx").write_bytes(bytes(data[: len(data) // 2]))
    _, err = run(["query", "-m", d / "model.txt", "--index", tmp_path / "short.idx", "--mode", "u2i"],
                 stdin=b"", code=1)
    assert "truncated" in err
    for sub in ("train", "index", "query", "eval"):
        out, _ = run([sub, "--help"])
        assert "Usage:" in out and len(out) > 400


def test_faiss_backend_agrees(trained):
    """faiss is an optional extra of streamfm and part of the test extra, so this runs: its
    results equal the exact backend's (test_usage_errors checks the message without it)."""
    import faiss  # noqa: F401  (pip install -e '.[test]' installs faiss-cpu)

    d = trained
    users = open(sample("users.txt"), "rb").read()
    exact, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "10"],
                   stdin=users)
    assert len(parse_results(exact)) == 600
    fa, _ = run(["query", "-m", d / "model.txt", "--index", d / "items.idx", "--mode", "u2i", "--topn", "10",
                 "--backend", "faiss"], stdin=users)
    a = [[i for i, _ in r] for _, r in parse_results(exact)]
    b = [[i for i, _ in r] for _, r in parse_results(fa)]
    same = np.mean([x == y for x, y in zip(a, b)])
    assert same > 0.97
