"""fm_sample fit's learning: the quantile sketch's stated error, exact min-count counts."""

import collections
import json
import math

import numpy as np
import pytest

from sample_helpers import fm_sample, write_tsv
from streamfm.sample.sketch import CountTable, QuantileSketches
from streamfm.sample.spec import load_spec


def check_edges(data, edges_for_q, eps):
    """Each edge e for quantile q is a valid quantile of some q' in [q - eps, q + eps]:
    #{x < e} < q n + eps n and #{x <= e} >= q n - eps n; and it lies between numpy's
    inverted-cdf quantiles at q -/+ eps."""
    data = np.sort(np.asarray(data))
    n = len(data)
    for q, e in edges_for_q:
        below = np.searchsorted(data, e, side="left")
        upto = np.searchsorted(data, e, side="right")
        assert below < q * n + eps * n + 1e-9, (q, e, below, eps)
        assert upto >= q * n - eps * n - 1e-9, (q, e, upto, eps)
        lo = np.quantile(data, max(q - eps, 0.0), method="inverted_cdf")
        hi = np.quantile(data, min(q + eps, 1.0), method="inverted_cdf")
        assert lo <= e <= hi


@pytest.mark.parametrize("dist", ["normal", "lognormal", "ties", "sorted", "reversed"])
def test_quantiles_within_the_stated_rank_error(dist):
    rng = np.random.default_rng(7)
    n = 300_000
    data = {"normal": rng.normal(size=n), "lognormal": rng.lognormal(2, 1.5, size=n),
            "ties": rng.integers(0, 40, size=n).astype(float), "sorted": np.sort(rng.random(n)),
            "reversed": np.sort(rng.random(n))[::-1].copy()}[dist]
    k = 256  # small, so that the stream is compacted many times
    sk = QuantileSketches(1, k=k)
    for chunk in np.array_split(data, 7):
        sk.add(0, chunk)
    assert sk.n(0) == n
    eps = sk.rank_error(0)
    levels = int(np.count_nonzero(sk.fill[0])) + 1
    levels_bound = math.ceil(math.log2(n / k)) + 1
    assert 0 < eps <= levels_bound / k, (eps, levels, levels_bound)
    qs = [j / 20 for j in range(1, 20)]
    check_edges(data, list(zip(qs, sk.quantiles(0, qs))), eps)
    # the same stream gives the same edges
    sk2 = QuantileSketches(1, k=k)
    sk2.add(0, data)
    assert sk2.quantiles(0, qs) == sk.quantiles(0, qs)


def test_small_streams_are_exact():
    data = np.random.default_rng(1).normal(size=1000)
    sk = QuantileSketches(2, k=4096)
    sk.add(1, data)
    assert sk.rank_error(1) == 0.0 and sk.n(0) == 0
    qs = [0.1, 0.25, 0.5, 0.9]
    assert sk.quantiles(1, qs) == [float(np.quantile(data, q, method="inverted_cdf")) for q in qs]
    assert sk.edges(1, 4) == sorted(set(float(np.quantile(data, q, method="inverted_cdf"))
                                        for q in (0.25, 0.5, 0.75)))


def test_counts_are_exact_and_capped():
    from streamfm.sample.sketch import count_add
    from numba import njit

    @njit
    def feed(arrs, b, hashes, src, off, ln):
        slots, ehash, efeat, ecount, eoff, elen, arena, used, distinct, cap, away = arrs
        for i in range(hashes.shape[0]):
            count_add(slots, ehash, efeat, ecount, eoff, elen, arena, used, distinct, cap, away, b, hashes[i],
                      src, off[i], ln[i])

    rng = np.random.default_rng(3)
    vals = np.minimum(rng.zipf(1.5, size=20000), 5000)
    words = [b"v%d" % v for v in vals]
    src = np.frombuffer(b"".join(words), np.uint8)
    ln = np.array([len(w) for w in words], np.int64)
    off = np.r_[0, np.cumsum(ln)[:-1]].astype(np.int64)
    from streamfm.table import init_hash as hash_name  # the sketch keys values by the unkeyed hash
    hashes = np.array([hash_name(w) for w in words], np.uint64)
    cap = 50
    t = CountTable(2, [10 ** 9, cap])
    t.reserve(len(words), len(src))
    feed(t.arrays(), 0, hashes, src, off, ln)
    feed(t.arrays(), 1, hashes, src, off, ln)
    truth = collections.Counter(words)
    assert t.kept(0, 3) == sorted(w for w, c in truth.items() if c >= 3)
    assert t.total(0) == len(words) and int(t.distinct[0]) == len(truth)
    # feature 1 admits the first 50 distinct values only, counted exactly
    first = list(dict.fromkeys(words))[:cap]
    assert t.kept(1, 1) == sorted(first)
    assert int(t.away[1]) == sum(c for w, c in truth.items() if w not in set(first))
    assert t.kept(1, 10) == sorted(w for w in first if truth[w] >= 10)


SPEC = """\
[user]
key = "uid"
[item]
key = "iid"
[log]
request = "req"
clicked = "click"
fields = { x = "user.x", brand = "item.brand", tags = "item.tags" }

[[feature]]
name = "x"
source = "user.x"
kind = "bucket"
bins = 10

[[feature]]
name = "brand"
source = "item.brand"
kind = "categorical"
min_count = 5

[[feature]]
name = "tags"
source = "item.tags"
kind = "tags"
min_count = 30
"""


def test_fit_learns_edges_and_vocabularies(tmp_path):
    rng = np.random.default_rng(11)
    n = 40_000
    x = np.round(rng.lognormal(1, 1, size=n), 3)
    brands = ["b%d" % v for v in np.minimum(rng.zipf(1.3, size=n), 3000)]
    tags = ["|".join("t%d" % t for t in rng.integers(0, 60, size=rng.integers(0, 4))) for _ in range(n)]
    rows = [{"req": "r%d" % (i // 10), "uid": "u%d" % (i % 97), "iid": "i%d" % i, "click": int(i % 7 == 0),
             "x": "%g" % x[i], "brand": brands[i], "tags": tags[i]} for i in range(n)]
    write_tsv(tmp_path / "log.tsv", rows, ["req", "uid", "iid", "click", "x", "brand", "tags"])
    (tmp_path / "spec.toml").write_text(SPEC)
    r = fm_sample("fit", "--spec", tmp_path / "spec.toml", "--input", tmp_path / "log.tsv", "-o",
                  tmp_path / "f.json", "--sketch-k", "512")
    assert r.returncode == 0, r.stderr
    learned = json.loads((tmp_path / "f.json").read_text())["learned"]
    xs = np.array([float("%g" % v) for v in x])
    eps = learned["x"]["rank_error"]
    assert learned["x"]["values"] == n and 0 < eps < 0.05
    qs = [j / 10 for j in range(1, 10)]
    sk = QuantileSketches(1, k=512)
    sk.add(0, xs)
    assert learned["x"]["edges"] == sk.edges(0, 10)  # fit feeds the sketch the log's values, in order
    edges_q = [(q, e) for q, e in zip(qs, sk.quantiles(0, qs))]
    check_edges(xs, edges_q, eps)
    cb = collections.Counter(brands)
    assert learned["brand"]["kept"] == sorted(b for b, c in cb.items() if c >= 5)
    assert learned["brand"]["distinct"] == len(cb) and learned["brand"]["occurrences"] == n
    ct = collections.Counter(t for ts in tags for t in set(ts.split("|")) if t)
    assert learned["tags"]["kept"] == sorted(t for t, c in ct.items() if c >= 30)
    assert b"rank error" in r.stderr and b"ids kept (min_count 5)" in r.stderr
    spec = load_spec(str(tmp_path / "f.json"))
    assert spec.needs_fit() == []
