"""fm_sample rank: requests, skip-above, down-sampling and its correction, the bad-record policy."""

import io
import math

import numpy as np
import pytest

from sample_helpers import fm_sample, make_dir
from streamfm.sample.rank import correct_probability, rank_stream
from streamfm.sample.spec import load_spec
from streamfm.train import Options

SPEC = """\
[user]
key = "uid"
[item]
key = "iid"
[log]
request = "req"
position = "pos"
clicked = "click"

[[feature]]
name = "uid"
source = "user.uid"
kind = "categorical"

[[feature]]
name = "iid"
source = "item.iid"
kind = "categorical"
"""

# (request, position, click); iid xN is the record's line number N (data lines from 1)
REQUESTS = [("r1", 0, 0), ("r1", 2, 1), ("r1", 1, 0), ("r1", 3, 0), ("r1", 5, 0), ("r1", 4, 0),
            ("r2", 0, 0), ("r2", 1, 0),
            ("r3", 1, 1), ("r3", 0, 0), ("r3", 2, 1), ("r3", 3, 0), ("r3", 3, 0), ("r3", 4, 0),
            ("r1", 0, 1)]


def log_text(rows=REQUESTS):
    return "req\tpos\tuid\tiid\tclick\n" + "".join(
        "%s\t%d\tu%s\tx%d\t%d\n" % (r, p, r[1:], n + 1, c) for n, (r, p, c) in enumerate(rows))


def expected(lines):
    return "".join("%d uid=u%s iid=x%d\n" % (REQUESTS[n - 1][2], REQUESTS[n - 1][0][1:], n) for n in lines)


@pytest.mark.parametrize("negatives, kept", [
    ("all", range(1, 16)),
    # r1: last click at position 2 -> positions 0, 1 above it; r2: no click; r3: last click at 2 -> position 0;
    # r1 again (a new request: it comes back after r3): its click
    ("skip-above", [1, 2, 3, 9, 10, 11, 15]),
    # and the first K below the last click, by position (r1: 3, then 4; r3: the two at 3, in input order)
    ("skip-above+1", [1, 2, 3, 4, 9, 10, 11, 12, 15]),
    ("skip-above+2", [1, 2, 3, 4, 6, 9, 10, 11, 12, 13, 15]),
    ("skip-above+9", [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15]),
])
def test_negatives_per_request(tmp_path, negatives, kept):
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "log.tsv").write_text(log_text())
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "--negatives",
                  negatives)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == expected(kept)
    assert b"requests             4 (3 with a click)" in r.stderr


def rank_bytes(spec, text, block_size, **kw):
    out = io.BytesIO()
    s = rank_stream(spec, io.BytesIO(text.encode()), out.write, Options(quiet=True), lambda m: None, "tsv",
                    block_size=block_size, **kw)
    return out.getvalue(), s


def test_requests_across_block_boundaries(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "spec.toml"))
    rng = np.random.default_rng(2)
    rows = []
    for r in range(400):
        m = int(rng.integers(1, 12))
        rows += [("q%d" % r, int(p), int(rng.random() < 0.2)) for p in rng.permutation(m)]
    text = log_text(rows)
    whole, s = rank_bytes(spec, text, 1 << 20, negatives="skip-above+1", neg_rate=0.5, seed=3)
    assert s.records == len(rows) and s.stats[0] == 400
    for bs in (64, 100, 1000, 4096):
        part, _ = rank_bytes(spec, text, bs, negatives="skip-above+1", neg_rate=0.5, seed=3)
        assert part == whole, bs


def long_request_rows(rng, n_long):
    """Short requests around one of n_long impressions, 150 of them bad (None: blocks of 1000
    bytes that hold no valid record)."""
    rows = []
    for r in range(30):
        rows += [("a%d" % r, int(p), int(rng.random() < 0.3)) for p in rng.permutation(int(rng.integers(1, 6)))]
    long = [("same", int(p), int(rng.random() < 0.05)) for p in rng.permutation(n_long)]
    long[n_long // 3:n_long // 3 + 150] = [None] * 150
    rows += long
    for r in range(30):
        rows += [("b%d" % r, int(p), int(rng.random() < 0.3)) for p in rng.permutation(int(rng.integers(1, 6)))]
    return rows


def rows_text(rows, ids=None):
    """log_text, a None row written as a record with no click (bad); ``ids``: other request ids
    for the rows (the rest of each line the same)."""
    lines = log_text([r or ("bad", 0, 0) for r in rows]).split("\n")
    for n, r in enumerate(rows):
        if r is None:
            lines[n + 1] = lines[n + 1].rsplit("\t", 1)[0] + "\t"
        if ids:
            lines[n + 1] = ids[n] + lines[n + 1][lines[n + 1].index("\t"):]
    return "\n".join(lines)


def test_a_request_spanning_many_blocks_is_parsed_once(tmp_path, monkeypatch):
    # a request id that does not change for thousands of records: its records used to be carried
    # to the next block and parsed again there, every block (quadratic); now each record is parsed
    # once and the lines, weights and counts are those of one block holding the whole log
    from streamfm.sample import logs

    (tmp_path / "spec.toml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "spec.toml"))
    text = rows_text(long_request_rows(np.random.default_rng(7), 3000))
    parsed = []
    tokenize = logs.Tokenizer.tokenize

    def counting(self, data, first_line):
        c = tokenize(self, data, first_line)
        parsed.append(c.n)
        return c

    monkeypatch.setattr(logs.Tokenizer, "tokenize", counting)
    for negatives in ("all", "skip-above", "skip-above+2"):
        runs = []
        for bs in (1 << 20, 1000):
            parsed.clear()
            w = io.BytesIO()
            out, s = rank_bytes(spec, text, bs, negatives=negatives, neg_rate=0.5, seed=3, weights_write=w.write)
            runs.append((out, w.getvalue(), s.stats.tolist(), s.records, s.bad, s.lines, sum(parsed)))
            if bs == 1000:
                assert len(parsed) > 50  # many blocks
        assert runs[1] == runs[0], negatives
        assert runs[0][2][0] == 61  # requests: 'same' is one


def test_a_request_longer_than_max_request_is_cut_and_reported(tmp_path):
    # held whole until it ends, a request is bounded: past --max-request impressions the rest is
    # another request (each cut said with its line), as if the log had given it another id there
    (tmp_path / "spec.toml").write_text(SPEC)
    spec = load_spec(str(tmp_path / "spec.toml"))
    rows = long_request_rows(np.random.default_rng(8), 450)  # 300 valid: cut after 100 and 200
    ids = [r[0] if r else "bad" for r in rows]
    cut_lines = []
    seen = 0
    for i, r in enumerate(rows):
        if r is not None and r[0] == "same":
            if seen and seen % 100 == 0:
                cut_lines.append(i + 2)  # the header is line 1
            ids[i] = "same%d" % (seen // 100)
            seen += 1
    renamed = rows_text(rows, ids)
    assert len(cut_lines) == 2
    for negatives in ("skip-above", "skip-above+1"):
        want, ws = rank_bytes(spec, renamed, 1 << 20, negatives=negatives)
        for bs in (1 << 20, 700):
            said = []
            out = io.BytesIO()
            s = rank_stream(spec, io.BytesIO(rows_text(rows).encode()), out.write, Options(), said.append, "tsv",
                            negatives=negatives, block_size=bs, max_request=100)
            assert out.getvalue() == want and s.stats.tolist() == ws.stats.tolist(), (negatives, bs)
            assert s.cut == 2 and s.first_cut == cut_lines[0]
            cuts = [m for m in said if "max-request" in m]
            assert len(cuts) == 2
            for m, line in zip(cuts, cut_lines):
                assert "input line %d: request same has more than 100 impressions" % line in m, m
    # under 'all' nothing is held, so nothing is cut: 'same' is one request
    out, s = rank_bytes(spec, rows_text(rows), 700, negatives="all", max_request=100)
    assert s.cut == 0 and s.stats[0] == 61
    # the command: the cut on stderr and in the summary
    (tmp_path / "log.tsv").write_text(rows_text(rows))
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "--negatives",
                  "skip-above", "--max-request", "100")
    assert r.returncode == 0, r.stderr
    assert r.stdout == rank_bytes(spec, renamed, 1 << 20, negatives="skip-above")[0]
    assert b"input line %d: request same has more than 100 impressions" % cut_lines[0] in r.stderr
    assert b"requests cut         2 (more than 100 impressions, --max-request; the first at line %d)" \
        % cut_lines[0] in r.stderr


def test_negative_down_sampling_and_weights(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    rng = np.random.default_rng(4)
    n = 20000
    clicks = (rng.random(n) < 0.1).astype(int)
    rows = [("r%d" % (i // 10), i % 10, int(c)) for i, c in enumerate(clicks)]
    (tmp_path / "log.tsv").write_text(log_text(rows))
    rate = 0.3

    def run(seed, weights=None):
        args = ["rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "--neg-rate", rate,
                "--seed", seed]
        if weights:
            args += ["--weights", weights]
        r = fm_sample(*args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = run(1, tmp_path / "w.txt")
    labels = [int(line[:1]) for line in out.splitlines()]
    pos, neg = sum(labels), len(labels) - sum(labels)
    n_pos, n_neg = int(clicks.sum()), n - int(clicks.sum())
    assert pos == n_pos  # every positive is kept
    sd = math.sqrt(n_neg * rate * (1 - rate))
    assert abs(neg - rate * n_neg) < 5 * sd
    weights = (tmp_path / "w.txt").read_text().split()
    assert len(weights) == len(labels)
    assert all(w == ("1" if y else repr(1 / rate)) for w, y in zip(weights, labels))
    # the weights stand for the negatives that were dropped
    assert abs(sum(float(w) for w, y in zip(weights, labels) if not y) - n_neg) < 5 * sd / rate
    assert run(1) == out and run(2) != out


def test_probability_correction():
    # P positives, N negatives, negatives kept at rate r: the sampled rate p_s corrects to P / (P + N)
    P, N, r = 100, 900, 0.25
    p_s = P / (P + r * N)
    assert correct_probability(p_s, r) == pytest.approx(P / (P + N), rel=1e-12)
    p = np.array([0.01, 0.3, 0.5, 0.99])
    logit = np.log(p / (1 - p)) + math.log(r)  # the same as adding ln r to the bias
    assert np.allclose(correct_probability(p, r), 1 / (1 + np.exp(-logit)), rtol=1e-12)
    with pytest.raises(ValueError):
        correct_probability(0.5, 0)


def test_correct_command(tmp_path):
    (tmp_path / "pred.txt").write_bytes(b"1 0.5\n-1 0.2\tf=1:0.25\nnot a prediction\n-1 0\n")
    r = fm_sample("correct", "--neg-rate", "0.25", "--input", tmp_path / "pred.txt")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\n")
    assert lines[0] == "1 %r" % (0.5 / (0.5 + 0.5 / 0.25))
    assert lines[1] == "-1 %r\tf=1:0.25" % (0.2 / (0.2 + 0.8 / 0.25))
    assert lines[2:] == ["not a prediction", "-1 0.0", ""]
    assert b"1 not 'LABEL P' (copied unchanged)" in r.stderr


BAD_LOG = ("req\tpos\tuid\tiid\tclick\n"
           "r1\t0\tu1\tx1\t1\n"
           "r1\t1\tu1\tx2\tmaybe\n"
           "r1\t2\tu1\t\t0\n"
           "r1\t3\tu1\tx4\n"
           "r1\tnan?\tu1\tx5\t0\n"
           "r2\t0\tu2\tx6\t0\n")


def test_bad_records_are_counted_with_line_numbers(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "log.tsv").write_text(BAD_LOG)
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv",
                  "--bad-lines", tmp_path / "bad.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"1 uid=u1 iid=x1\n0 uid=u2 iid=x6\n"
    err = r.stderr.decode()
    assert "input line 3: 'click' is not a number or true/false (column 12): r1\\x091\\x09u1\\x09x2\\x09maybe" in err
    assert "input line 4: 'iid' is missing (column 1)" in err
    assert "input line 5: number of fields differs from the header (column 11)" in err
    assert "input line 6: 'pos' is not a number (column 4)" in err
    assert "bad records skipped  4" in err
    bad = (tmp_path / "bad.txt").read_text().splitlines()
    assert bad[0] == "3\t'click' is not a number or true/false\tr1\t1\tu1\tx2\tmaybe"
    assert [b.split("\t")[0] for b in bad] == ["3", "4", "5", "6"]


def test_on_error_stop_and_max_bad_fraction_write_nothing(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "log.tsv").write_text(BAD_LOG)
    out = tmp_path / "out.txt"
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "-o", out,
                  "--on-error", "stop")
    assert r.returncode == 3
    assert b"fm_sample rank: error: input line 3: 'click' is not a number or true/false (column 12); " \
           b"stopped (--on-error stop)" in r.stderr
    assert not out.exists()
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "-o", out,
                  "--max-bad-fraction", "0.5")
    assert r.returncode == 3 and not out.exists()
    assert b"input: 4 of 6 lines were bad (more than --max-bad-fraction 0.5)" in r.stderr


def test_json_and_csv_logs(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    lines = ['{"req": "r1", "pos": 0, "uid": "u1", "iid": "x1", "click": true}',
             '{"req": "r1", "pos": 1, "uid": "u1", "iid": {"id": 2}, "click": false}',
             '{"req": "r1", "pos": 2, "uid": "u1", "iid": "x3", "click": false, "other": {"a": [1, {"b": 2}]}}',
             '{"req": "r1", "pos": 3, "uid": "u1", "iid": "x4" "click": 0}',
             '["not", "an", "object"]',
             '',
             '{"req": "r2", "pos": 0, "uid": "u\\t2", "iid": "x\\u00e96", "click": 1}']
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.jsonl")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "1 uid=u1 iid=x1\n0 uid=u1 iid=x3\n1 uid=u%092 iid=x\u00e96\n"
    err = r.stderr.decode()
    assert "input line 2: 'iid': nested object or list (column %d)" % (lines[1].index('{"id"') + 1) in err
    assert "input line 4: invalid JSON (column %d)" % (lines[3].index('"click"') + 1) in err
    assert "input line 5: line is not a JSON object (column 1)" in err
    assert "bad records skipped  3" in err
    (tmp_path / "log.csv").write_text('req,pos,uid,iid,click\nr1,0,"u,1",x1,1\nr1,1,"say ""hi""",x2,0\n'
                                      'r1,2,"open,x3,0\n')
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == '1 uid=u,1 iid=x1\n0 uid=say%20"hi" iid=x2\n'
    assert b"input line 4: unterminated quoted field" in r.stderr


def test_profile_table_bad_rows(tmp_path):
    from sample_helpers import USERS

    users = [dict(u) for u in USERS]
    users[1]["age"] = "forty"
    path = make_dir(tmp_path, users=users)
    (tmp_path / "log.tsv").write_text("req\tpos\tuid\tiid\tclick\thour\tpromo\nr\t0\tu2\ti1\t1\t3\t\n")
    r = fm_sample("rank", "--spec", path, "--input", tmp_path / "log.tsv", "--bad-lines", tmp_path / "bad.txt")
    assert r.returncode == 0, r.stderr
    table = str(tmp_path / "users.tsv")
    assert ("%s line 3: user.age is not a number (column 4): u2\\x09forty\\x09\\x09Comedy" % table) in \
        r.stderr.decode()
    assert (tmp_path / "bad.txt").read_text().startswith("%s:3\tuser.age is not a number\tu2\tforty" % table)
    # u2's row was skipped: only what the log itself has
    assert r.stdout == b"1 uid=u2 hour=3 iid=i1 genre=Action genre=Comedy price:9.5\n"


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_a_fixed_log_column_may_also_be_an_attribute(tmp_path, fmt):
    # the position as a feature, the request id as the user key: each column is read for both uses
    spec = SPEC.replace('clicked = "click"', 'clicked = "click"\nfields = { pos = "item.slot" }') + \
        '\n[[feature]]\nname = "slot"\nsource = "item.slot"\nkind = "categorical"\n'
    (tmp_path / "spec.toml").write_text(spec)
    if fmt == "tsv":
        (tmp_path / "log.tsv").write_text(log_text())
    else:
        (tmp_path / "log.jsonl").write_text("".join(
            '{"req": "%s", "pos": %d, "uid": "u%s", "iid": "x%d", "click": %d}\n' % (r, p, r[1:], n + 1, c)
            for n, (r, p, c) in enumerate(REQUESTS)))
    r = fm_sample("rank", "--spec", tmp_path / "spec.toml", "--input", tmp_path / ("log." + fmt), "--negatives",
                  "skip-above")
    assert r.returncode == 0, r.stderr
    kept = [1, 2, 3, 9, 10, 11, 15]
    assert r.stdout.decode() == "".join("%d uid=u%s iid=x%d slot=%d\n" % (
        REQUESTS[n - 1][2], REQUESTS[n - 1][0][1:], n, REQUESTS[n - 1][1]) for n in kept)
    assert b"bad records skipped  0" in r.stderr
    # the request column as the user key too (one request per run of a user's records)
    (tmp_path / "spec2.toml").write_text(SPEC.replace('clicked = "click"', 'clicked = "click"\nuser = "req"'))
    r = fm_sample("rank", "--spec", tmp_path / "spec2.toml", "--input", tmp_path / ("log." + fmt), "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "".join("%d uid=%s iid=x%d\n" % (c, q, n + 1) for n, (q, p, c) in enumerate(REQUESTS))
