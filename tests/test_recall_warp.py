"""Recall training: the WARP step against numpy, own clicks never drawn as negatives,
the bounded own-click set, -core 2 quality, and fm_recall train's documented defaults."""

import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from streamfm import ftrl, parse
from streamfm.model import Model
from streamfm.recall import sampling
from streamfm.recall.defaults import RECALL_HP, TRAIN
from streamfm.recall.records import RecordReader
from streamfm.recall.trainer import WARP_MAX_WEIGHT, Catalog, Config, Trainer, map_clicks, train
from streamfm.train import Options

HP = [0.05, 1.0, 0.1, 5.0, 0.2, 1.0, 0.1, 5.0, 0.1]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
BIN = os.path.dirname(sys.executable)
M64 = (1 << 64) - 1


def log(msg):
    pass


def records(text, mode, model):
    return RecordReader(io.BytesIO(text), mode, Options(quiet=True), log, "test", model=model).read_all()


# ---------------------------------------------------------------------------
# a slow reference in plain Python / numpy


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def uniform_draws(state):
    """The trainer's generator (splitmix64) from a seed_state: doubles in [0, 1)."""
    x = int(state[0])
    while True:
        x = (x + 0x9E3779B97F4A7C15) & M64
        yield float(mix(x) >> 11) * (1.0 / 9007199254740992.0)


def ftrl_w(z, n, alpha, beta, l1, l2):
    if abs(z) <= l1:
        return 0.0
    sgn = 1.0 if z > 1e-10 else -1.0
    return -(z - sgn * l1) / (l2 + (beta + math.sqrt(n)) / alpha)


def effective(params, rows, k, hp):
    w = {r: ftrl_w(params[r, 2], params[r, 1], *hp[:4]) for r in rows}
    v = {}
    for r in rows:
        for f in range(k):
            n, z = params[r, 3 + f], params[r, 3 + k + f]
            v[r, f] = ftrl_w(z, n, *hp[4:8]) if n > 0 else z
    return w, v


def group_score_and_sum(w, v, entries, k):
    lin = sum(w[r] * x for r, x in entries)
    s = np.array([sum(v[r, f] * x for r, x in entries) for f in range(k)])
    sq = sum(v[r, f] ** 2 * x * x for r, x in entries for f in range(k))
    return lin + 0.5 * (s @ s - sq), s


def ftrl_step(z, n, g, x, alpha):
    n2 = n + g * g
    return z + g - (math.sqrt(n2) - math.sqrt(n)) / alpha * x, n2


def test_warp_step_matches_numpy_reference():
    """One click: the draws replayed from the seed, LightFM's rank weight, the weighted hinge step."""
    k = 4
    n_items = 40
    rng = np.random.default_rng(7)
    model = Model(k, hp=HP, seed=3)
    lines = b"".join(b"i%d id%d genre=g%d genre=h%d:0.5\n" % (i, i, i % 3, i % 2) for i in range(n_items))
    cat = Catalog(records(lines, parse.KEYED, model))
    clicks = records(b"u uid age=3 genre=g1:0.25 | i5\n", parse.CLICK, model)
    n = model.n_rows
    p = model.params
    p[1:n, 1] = rng.uniform(0.1, 2.0, n - 1)
    p[1:n, 2] = rng.uniform(-3, 3, n - 1)
    p[1:n, 3:3 + k] = rng.uniform(0.0, 2.0, (n - 1, k))
    p[1:n, 3 + k:3 + 2 * k] = rng.uniform(-3, 3, (n - 1, k))
    p[2, 3] = 0.0                                   # a v never updated: VZ holds v itself
    before = p[:n].copy()
    # the user clicked 28 of the 40 items (the positive among them): drawing them costs draws
    own = [i for i in range(n_items) if i % 10 < 7]
    seen = sampling.SeenPairs()
    seen.add(np.full(len(own), clicks.key_hash[0], np.uint64), np.array(own, np.int64))
    margin = 100.0                                  # every other item violates: the first valid draw
    cfg = Config(loss="warp", margin=margin, max_sampled=50, seed=11)
    trace = []
    tr = Trainer(model, cat, cfg, seen=seen, trace=trace)
    item = map_clicks(clicks, cat)
    assert item[0] == 5
    tr.run(clicks, item, np.arange(1, dtype=np.int64), False)

    # replay: draws until an item that is not the positive nor an own click
    draws = uniform_draws(sampling.seed_state(cfg.seed, 1, 0))
    tries = 0
    while True:
        tries += 1
        c = min(int(next(draws) * n_items), n_items - 1)
        if c != 5 and c not in own:
            break
    assert trace[0][2][0, 0] == c
    assert tries >= 2, "the case should exercise rejected draws"
    rank = math.floor((n_items - 1) / tries)
    weight = min(math.log(rank) if rank > 1 else 0.0, WARP_MAX_WEIGHT)
    assert weight > 0

    it = cat.records

    def entries(i):
        a, b = it.indptr[i], it.indptr[i + 1]
        return [(int(r), float(x)) for r, x in zip(it.rows[a:b], it.vals[a:b])]

    user = [(int(r), float(x)) for r, x in zip(clicks.rows, clicks.vals)]
    groups = [entries(5), entries(c)]
    rows = sorted({r for r, _ in user + groups[0] + groups[1]})
    w, v = effective(before, rows, k, HP)
    g_p, s_p = group_score_and_sum(w, v, user + groups[0], k)
    g_n, s_n = group_score_and_sum(w, v, user + groups[1], k)
    d = g_p - g_n
    assert d < margin
    # L = weight * (margin - d): dL/dG_P = -weight, dL/dG_N = +weight
    gw = {r: 0.0 for r in rows}
    gv = {(r, f): 0.0 for r in rows for f in range(k)}
    for c_g, ents, s in ((-weight, user + groups[0], s_p), (weight, user + groups[1], s_n)):
        for r, x in ents:
            gw[r] += c_g * x
            for f in range(k):
                gv[r, f] += c_g * (x * s[f] - v[r, f] * x * x)
    after = model.params[:n]
    for r in rows:
        if abs(gw[r]) > 1e-12:
            z2, n2 = ftrl_step(before[r, 2], before[r, 1], gw[r], w[r], HP[0])
            assert after[r, 2] == pytest.approx(z2, rel=1e-9, abs=1e-12)
            assert after[r, 1] == pytest.approx(n2, rel=1e-9, abs=1e-12)
        else:   # the user's w: its gradients cancel in a pair
            assert after[r, 1] == before[r, 1] and after[r, 2] == before[r, 2]
        for f in range(k):
            nn = before[r, 3 + f]
            z = before[r, 3 + k + f] if nn > 0 else 0.0
            z2, n2 = ftrl_step(z, nn, gv[r, f], v[r, f], HP[4])
            assert after[r, 3 + k + f] == pytest.approx(z2, rel=1e-9, abs=1e-12), (r, f)
            assert after[r, 3 + f] == pytest.approx(n2, rel=1e-9, abs=1e-12)
    untouched = sorted(set(range(1, n)) - set(rows))
    np.testing.assert_array_equal(after[untouched], before[untouched])
    s = tr.stat_sum()
    assert s[0] == 1 and s[3] == 1                  # one click trained, one violator
    assert s[2] == pytest.approx(weight * (margin - d), rel=1e-9)


def test_warp_without_a_violator_trains_nothing():
    model = Model(2, hp=HP, seed=1)
    cat = Catalog(records(b"".join(b"i%d id%d\n" % (i, i) for i in range(20)), parse.KEYED, model))
    clicks = records(b"u uid | i3\n", parse.CLICK, model)
    before = model.params.copy()
    tr = Trainer(model, cat, Config(loss="warp", margin=-1e9, max_sampled=7, seed=2))
    tr.run(clicks, map_clicks(clicks, cat), np.arange(1, dtype=np.int64), False)
    np.testing.assert_array_equal(model.params, before)
    s = tr.stat_sum()
    assert s[0] == 1 and s[1] == 7 and s[3] == 0     # 7 candidates scored (never the positive), none violates


def test_warp_weight_is_lightfms():
    from streamfm.recall.trainer import warp_weight
    from numba import njit

    @njit
    def w(t, n):
        return warp_weight(t, n)

    for tries, n in ((1, 1682), (3, 1682), (50, 1682), (1, 2), (2, 3), (1, 10 ** 6)):
        r = math.floor((n - 1) / tries)
        assert w(tries, n) == min(math.log(max(1.0, r)), 10.0)


# ---------------------------------------------------------------------------
# a user's own clicks are never their negatives


def own_click_case(n_users=30, n_items=25, per_user=20, seed=0):
    """Each user clicks 20 of 25 items: a uniform draw is one of their own 80% of the time."""
    rng = np.random.default_rng(seed)
    lines = []
    clicked = {}
    for u in range(n_users):
        its = rng.choice(n_items, per_user, replace=False)
        clicked[u] = set(its.tolist())
        for i in its:
            lines.append(b"u%d user=u%d g=%d | i%d\n" % (u, u, u % 2, i))
    rng.shuffle(lines)
    items = b"".join(b"i%d item=i%d c=%d\n" % (i, i, i % 4) for i in range(n_items))
    return b"".join(lines), items, clicked


def count_own_negatives(trace_list, model, items_text):
    """(negatives drawn, how many were the clicking user's own clicked items in the whole log)."""
    user_items = {}
    for uh, it, _ in trace_list:
        for a, b in zip(uh.tolist(), it.tolist()):
            user_items.setdefault(a, set()).add(b)
    drawn = bad = 0
    for uh, it, negs in trace_list:
        for a, row in zip(uh.tolist(), negs.tolist()):
            for c in row:
                if c >= 0:
                    drawn += 1
                    bad += c in user_items[a]
    return drawn, bad


@pytest.mark.parametrize("loss,epochs", [("warp", 3), ("hinge", 3), ("bpr", 1), ("warp", 1)])
def test_own_clicks_are_never_negatives(loss, epochs):
    clicks, items, _ = own_click_case()
    model = Model(4, hp=HP, seed=1)
    cat = Catalog(records(items, parse.KEYED, model))
    trace = []
    cfg = Config(loss=loss, neg=3, epochs=epochs, seed=5, margin=100.0, max_sampled=200)
    s = train(model, cat, io.BytesIO(clicks), cfg, Options(quiet=True), log, trace=trace)
    drawn, bad = count_own_negatives(trace, model, items)
    assert s.trained + s.stats[7] == 600 * epochs and drawn >= 600   # [7]: no negative found
    if epochs > 1:
        assert bad == 0
    else:
        # one pass: the clicks seen so far (the whole block here) are never drawn
        assert bad == 0 and s.seen_pairs == 600
    # and without the set the same case draws own clicks often (what the test would catch)
    model2 = Model(4, hp=HP, seed=1)
    cat2 = Catalog(records(items, parse.KEYED, model2))
    trace2 = []
    tr = Trainer(model2, cat2, cfg, trace=trace2)
    recs = records(clicks, parse.CLICK, model2)
    tr.run(recs, map_clicks(recs, cat2), np.arange(recs.n, dtype=np.int64), False)
    drawn2, bad2 = count_own_negatives(trace2, model2, items)
    assert bad2 > 0.5 * drawn2


def test_seen_pairs_keep_the_last_capacity_pairs_in_bounded_memory():
    cap = 5000
    s = sampling.SeenPairs(cap)
    rng = np.random.default_rng(3)
    users = rng.integers(0, 1 << 63, 23000, dtype=np.int64).astype(np.uint64)
    items = rng.integers(0, 1000, 23000).astype(np.int64)
    bound = 0
    for a in range(0, 23000, 700):
        s.add(users[a:a + 700], items[a:a + 700])
        bound = max(bound, s.nbytes)
        assert s.contains(users[max(0, a + 700 - cap):a + 700], items[max(0, a + 700 - cap):a + 700]).all()
    assert s.rotations >= 3
    size = 1
    while size < 2 * cap:
        size *= 2
    assert bound <= 2 * size * 8
    # pairs never added are not in it, nor the oldest ones after enough rotations
    assert not s.contains(users[:10] + np.uint64(1), items[:10]).any()
    assert not s.contains(users[:700], items[:700]).any()
    # unbounded (--epochs): everything stays
    s2 = sampling.SeenPairs()
    s2.add(users, items)
    assert s2.contains(users, items).all() and s2.rotations == 0


def test_seen_pairs_keep_the_last_capacity_distinct_pairs_when_clicks_repeat():
    """Blocks holding repeated clicks (and items outside the catalog, -1) must not rotate the set
    before it holds ``capacity`` distinct pairs: one click on (7, 3), then 2000 repeats of another
    pair, capacity 1000, forgot (7, 3) though only 2 distinct pairs were ever added."""
    s = sampling.SeenPairs(1000)
    s.add(np.array([7], np.uint64), np.array([3], np.int64))
    s.add(np.full(2000, 9, np.uint64), np.full(2000, 5, np.int64))
    assert s.contains(np.array([7, 9], np.uint64), np.array([3, 5], np.int64)).all() and s.rotations == 0
    # a stream of blocks with heavy repeats, against a slow reference of the last cap distinct pairs
    cap = 300
    s = sampling.SeenPairs(cap)
    rng = np.random.default_rng(11)
    last = {}   # pair -> when it was last added
    t = 0
    size = 1
    while size < 2 * cap:
        size *= 2
    for b in range(60):
        n = int(rng.integers(1, 900))
        pool = int(rng.integers(1, 400))
        users = rng.integers(0, pool, n).astype(np.uint64) + np.uint64(1000)
        items = rng.integers(-1, 20, n).astype(np.int64)
        s.add(users, items)
        for u, i in zip(users.tolist(), items.tolist()):
            if i >= 0:
                last[(u, i)] = t
                t += 1
        want = sorted(last, key=last.get)[-cap:]
        got = s.contains(np.array([u for u, _ in want], np.uint64), np.array([i for _, i in want], np.int64))
        assert got.all(), (b, int((~got).sum()))
        assert s.nbytes <= 2 * size * 8
    assert s.rotations >= 3


def test_one_pass_stream_remembers_only_seen_pairs_with_capacity():
    clicks, items, _ = own_click_case(n_users=10, per_user=20)
    model = Model(4, hp=HP, seed=1)
    cat = Catalog(records(items, parse.KEYED, model))
    cfg = Config(loss="warp", epochs=1, seen_capacity=64, seed=1)
    s = train(model, cat, io.BytesIO(clicks), cfg, Options(quiet=True), log)
    assert s.seen_rotations >= 1 and s.trained == 200


# ---------------------------------------------------------------------------
# command level: -core 2 quality, documented defaults


def fm_recall(*args, stdin=None):
    p = subprocess.run([os.path.join(BIN, "fm_recall")] + [str(a) for a in args], input=stdin,
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return p.stdout.decode(), p.stderr.decode()


def sample_hr(tmp_path, *train_args):
    with open(os.path.join(SAMPLE, "clicks.txt"), "rb") as f:
        clicks = f.read()
    with open(os.path.join(SAMPLE, "clicks_test.txt"), "rb") as f:
        test = f.read()
    m = tmp_path / ("m%d.bin" % len(list(tmp_path.iterdir())))
    fm_recall("train", "-m", m, "-mf", "bin", "--items", os.path.join(SAMPLE, "items.txt"), "-dim", "1,1,8",
              "-q", *train_args, stdin=clicks)
    idx = str(m) + ".idx"
    fm_recall("index", "-m", m, "--items", os.path.join(SAMPLE, "items.txt"), "-o", idx, "-q")
    out, _ = fm_recall("eval", "-m", m, "--index", idx, "--train", os.path.join(SAMPLE, "clicks.txt"),
                       "--json", "-k", "10,50", stdin=test)
    met = json.loads(out)["metrics"]
    return met["10"]["hit_rate"], met["50"]["hit_rate"]


def test_core_2_trains_a_model_of_the_same_quality(tmp_path):
    one = [sample_hr(tmp_path, "-core", "1", "--seed", s) for s in (1, 2)]
    two = [sample_hr(tmp_path, "-core", "2", "--seed", s) for s in (1, 2)]
    m1 = np.mean(one, axis=0)
    m2 = np.mean(two, axis=0)
    # 600 test users: one HR@50 has a standard error of about 0.02; popularity gets 0.085 / 0.313
    assert m2[1] > 0.5 and m2[0] > 0.2
    assert abs(m2[1] - m1[1]) < 0.06 and abs(m2[0] - m1[0]) < 0.06, (one, two)


def option_help(out):
    """{option: its help text on one line} from click's --help output."""
    blocks = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"^  (-[-\w]+)", line)
        if m:
            name = m.group(1)
            blocks[name] = line
        elif name and line.startswith("    "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def shown_default(blocks, opt, value):
    return re.search(r"\[default: %s[;\]]" % re.escape(str(value)), blocks[opt]) is not None


def test_recall_defaults_are_documented_in_help():
    out, _ = fm_recall("train", "--help")
    text = " ".join(out.split())
    blocks = option_help(out)
    for opt, key in (("--loss", "loss"), ("--max-sampled", "max_sampled"), ("--epochs", "epochs"),
                     ("--margin", "margin"), ("--refresh", "refresh"), ("--seen-pairs", "seen_capacity"),
                     ("--neg", "neg")):
        assert shown_default(blocks, opt, TRAIN[key]), (opt, TRAIN[key], blocks[opt])
    for name, value in RECALL_HP.items():
        assert shown_default(blocks, "-" + name, value), (name, blocks["-" + name])
    assert "validation" in text    # where the defaults come from
    # fm_train keeps alphaFM's
    p = subprocess.run([os.path.join(BIN, "fm_train"), "--help"], capture_output=True)
    b2 = option_help(p.stdout.decode())
    for name in RECALL_HP:
        assert shown_default(b2, "-" + name, ftrl.HP_DEFAULTS[ftrl.HP_NAMES.index(name)]), name
