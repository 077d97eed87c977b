"""The merge of partitions' models and the round driver (issue 14).

Exact checks: one partition is one sequential run bit for bit; a State
written over its base is the partition's model bit for bit; the merged
numbers equal a pure-Python evaluation of the rule (docs/design.md, "Merging models");
a merged model continues with fm_train -im exactly as through the API.
"""

import io
import itertools
import math
import os
import sys
import zlib

import numpy as np
import pytest

import streamfm
from streamfm import distributed, merge
from streamfm.ftrl import HP_NAMES, VN, W, WN, WZ
from streamfm.synth import write_ctr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import FM_DUMP, FM_TRAIN, assert_ok, assert_one_line_error, run  # noqa: E402
from reference import ftrl_weight  # noqa: E402

K = 4


def ctr_lines(n, seed):
    buf = io.BytesIO()
    write_ctr(buf, n, seed=seed, scale=0.01)
    return buf.getvalue().split(b"\n")[:-1]


@pytest.fixture(scope="module")
def data():
    return ctr_lines(6000, seed=11)


def rows_by_name(fm):
    """{name bytes: FTRL row} of an FM (row 0 as b'' for the bias)."""
    m = fm.training_model()
    out = {b"": m.params[0].copy()}
    for r in range(1, m.n_rows):
        out[m.table.name_bytes(r)] = m.params[r].copy()
    return out


def next_weights(fm):
    """(w, v_1..v_k) per row as the next training step computes them from (z, n)
    (the stored w is the one computed before the last update: alphaFM's)."""
    m = fm.training_model()
    n = m.n_rows
    out = fm.serving_model().weights.copy()
    a, b, l1, l2 = m.hp[:4]
    out[:, 0] = [ftrl_weight(z, nn, a, b, l1, l2) if nn > 0 else w
                 for z, nn, w in zip(m.params[:n, WZ], m.params[:n, WN], m.params[:n, W])]
    return out


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view("u%d" % a.dtype.itemsize)


def assert_same_model(a, b, seen=True):
    ma, mb = a.training_model(), b.training_model()
    n = ma.n_rows
    assert mb.n_rows == n
    assert [ma.table.name_bytes(r) for r in range(n)] == [mb.table.name_bytes(r) for r in range(n)]
    assert np.array_equal(bits(ma.params[:n]), bits(mb.params[:n])), "FTRL rows differ"
    assert not seen or ma.samples_seen == mb.samples_seen


# ---------------------------------------------------------------------------
# the schedule


def test_plan_rounds_cover_every_line_once_in_order():
    lengths = [10, 0, 7, 25]
    for sync, warm in [(None, 0), (4, 0), (4, 6), (3, 100), (1, 1)]:
        rounds = distributed.plan_rounds(lengths, sync, warm)
        seen = {p: [] for p in range(len(lengths))}
        for tasks in rounds:
            assert tasks and len({p for p, _, _ in tasks}) == len(tasks)
            for p, a, b in tasks:
                assert a < b and (sync is None or b - a <= sync or (a == 0 and warm))
                seen[p].extend(range(a, b))
        assert all(seen[p] == list(range(n)) for p, n in enumerate(lengths))
        if warm:
            sizes = distributed.head_sizes(lengths, warm)
            assert rounds[0] == [(p, 0, n) for p, n in enumerate(sizes) if n]
    assert len(distributed.plan_rounds([10, 10], 4)) == 3
    assert distributed.plan_rounds([10, 10], 4.0) == distributed.plan_rounds([10, 10], 4)
    for sync, warm in [(0, 0), (2.5, 0), (float("inf"), 0), (True, 0), (4, None), (4, -1), (4, 1.5)]:
        with pytest.raises(streamfm.ParameterError, match="sync_every" if warm == 0 else "warm_start"):
            distributed.plan_rounds([5], sync, warm)
    with pytest.raises(streamfm.ParameterError, match="warm_start"):
        distributed.head_sizes([5, 3, 4], -3)


def test_warm_start_heads_are_the_partitions_taken_in_turn():
    """head_sizes and interleave against a reader that takes one line of each
    partition in turn (a partition that runs out drops out) until W lines."""
    for lengths in ([10, 0, 7, 25], [3, 3, 3], [1], [5, 2]):
        parts = [["p%d-%d" % (p, i) for i in range(n)] for p, n in enumerate(lengths)]
        for warm in (0, 1, 4, 9, 13, 100):
            turn, pos = [], [0] * len(parts)
            while len(turn) < min(warm, sum(lengths)):
                for p, part in enumerate(parts):
                    if pos[p] < len(part) and len(turn) < warm:
                        turn.append(part[pos[p]])
                        pos[p] += 1
            sizes = distributed.head_sizes(lengths, warm)
            assert sizes == pos, (lengths, warm)
            assert distributed.interleave([part[:n] for part, n in zip(parts, sizes)]) == turn
    # (X, y) heads: the rows in the same turn order, dense or sparse
    sp = pytest.importorskip("scipy.sparse", reason="scipy is in the test extra")
    X = [np.arange(6.0).reshape(3, 2), np.arange(10.0, 14.0).reshape(2, 2)]
    y = [np.array([0, 1, 0]), np.array([1, 1])]
    want_rows = [0, 3, 1, 4, 2]  # rows of the stacked heads
    Xs, ys = np.concatenate(X), np.concatenate(y)
    for conv in (np.asarray, sp.csr_matrix):
        Xi, yi = distributed.interleave([(conv(a), b) for a, b in zip(X, y)])
        Xi = Xi.toarray() if hasattr(Xi, "toarray") else Xi
        assert np.array_equal(Xi, Xs[want_rows]) and np.array_equal(yi, ys[want_rows])


def test_warm_start_keeps_dataframe_names_and_takes_mixed_dense_and_sparse_heads():
    """(X, y) heads: a DataFrame's columns stay the features' names (one partition
    is still a sequential run), and a dense head joins sparse ones as CSR rows."""
    pd = pytest.importorskip("pandas", reason="pandas comes with dask[dataframe], in the test extra")
    sp = pytest.importorskip("scipy.sparse", reason="scipy is in the test extra")
    rng = np.random.default_rng(0)
    X = (rng.random((600, 8)) < 0.3) * rng.random((600, 8))
    y = (rng.random(600) < 0.3).astype(float)
    df = pd.DataFrame(X, columns=["c%d" % i for i in range(8)])
    seq = streamfm.FM(k=K, seed=2)
    seq.partial_fit(df, y)
    assert_same_model(seq, distributed.train([(df, y)], k=K, seed=2, warm_start=30, sync_every=100))
    with pytest.raises(streamfm.ParameterError, match="same columns"):
        distributed.interleave([(df[:50], y[:50]), (df[50:100][df.columns[::-1]], y[50:100])])
    names = list(df.columns)
    mixed = [(X[:300], y[:300]), (sp.csr_matrix(X[300:]), y[300:])]
    sparse = [(sp.csr_matrix(X[:300]), y[:300]), (sp.csr_matrix(X[300:]), y[300:])]
    assert_same_model(distributed.train(mixed, k=K, seed=2, warm_start=100, sync_every=50, feature_names=names),
                      distributed.train(sparse, k=K, seed=2, warm_start=100, sync_every=50, feature_names=names))


def test_distributed_report_keeps_the_bad_lines_by_place(data):
    """A distributed run reports its bad lines as FM.partial_fit does: by reason,
    and each (the first 100) with its number counting all partitions' lines in
    partition order, also those the warm start read; a task that stops names
    its partition."""
    parts = [data[:300] + [b"junk"] + data[300:600], [b"1 a:x"] + data[600:900] + [b"nan x:1"],
             data[900:950] + [b"1 b:inf"] * 3]
    fm = distributed.train(parts, k=K, seed=2, warm_start=60, sync_every=100)
    r = fm.last_report
    want, first = [], 0
    for p in parts:
        rep = streamfm.FM(k=K).partial_fit(p)
        want += [(first + b.line, b.reason, b.column, b.text) for b in rep.bad_lines]
        first += len(p)
    assert r.bad == len(want) == 6 and r.lines == first
    assert [tuple(b) for b in r.bad_lines] == want
    assert r.by_reason == {w: sum(1 for x in want if x[1] == w) for w in sorted({x[1] for x in want})}
    assert r.bad_description == ", ".join("%s: %d" % kv for kv in r.by_reason.items())
    assert want[1][0] == len(parts[0]) + 1  # read by the warm start, numbered by its partition's place
    with pytest.raises(streamfm.BadInputError, match=r"^partition 2, its lines 1-\d+ .*more than max_bad_fraction"):
        distributed.train(parts, k=K, sync_every=100, max_bad_fraction=0.01)
    # (X, y) partitions: a row with NaN is a bad line, numbered as its row over all partitions, from 1
    X = np.random.default_rng(0).random((100, 4))
    y = (X[:, 0] > 0.5).astype(float)
    X[3, 1] = X[70, 2] = np.nan
    r = distributed.train([(X[:50], y[:50]), (X[50:], y[50:])], k=2, warm_start=20, sync_every=10,
                          feature_names=list("abcd")).last_report
    assert [b.line for b in r.bad_lines] == [4, 71] and r.bad == 2


def test_warm_start_trains_the_interleaved_heads_then_the_rounds(data):
    """The warm start is one stream: FM.partial_fit on the heads taken in turn;
    the rounds then start where each head ends."""
    parts = [data[0:1500], data[1500:2300], data[2300:4000]]
    fm = distributed.train(parts, sync_every=700, warm_start=1000, threads=2, k=K, seed=7)
    sizes = distributed.head_sizes([len(p) for p in parts], 1000)
    assert sum(sizes) == 1000 and max(sizes) - min(sizes) <= 1
    want = streamfm.FM(k=K, seed=7)
    want.partial_fit(distributed.interleave([p[:n] for p, n in zip(parts, sizes)]))
    base = merge.Base.of(want)
    rounds = distributed.plan_rounds([len(p) for p in parts], 700, 1000)
    assert rounds[0] == [(p, 0, n) for p, n in enumerate(sizes)]
    for tasks in rounds[1:]:
        base = base.apply(merge.merge([merge.train_partition(base, parts[p], a, b) for p, a, b in tasks]))
    assert_same_model(fm, base.fm())
    assert fm.last_report.lines == 4000 and fm.samples_seen == 4000


# ---------------------------------------------------------------------------
# one partition, one State


@pytest.mark.parametrize("k,fvs", [(0, False), (K, False), (K, True)])
@pytest.mark.parametrize("sync,warm", [(None, 0), (700, 0), (500, 1300)])
def test_one_partition_equals_a_sequential_run(data, k, fvs, sync, warm):
    hp = dict(w_l1=0.5, v_l1=0.05) if fvs else {}
    seq = streamfm.FM(k=k, fvs=fvs, seed=3, **hp)
    seq.partial_fit(data)
    dist = distributed.train([data], sync_every=sync, warm_start=warm, k=k, fvs=fvs, seed=3, **hp)
    assert_same_model(seq, dist)
    rep = dist.last_report
    assert (rep.lines, rep.samples, rep.bad) == (len(data), len(data), 0)
    assert rep.logloss == pytest.approx(seq.last_report.logloss, rel=1e-12)


def test_state_written_over_its_base_is_the_partitions_model(data):
    fm = streamfm.FM(k=K, seed=1)
    fm.partial_fit(data[:2000])
    base = merge.Base.of(fm)
    before = base.params.copy()
    want = base.fm()
    want.partial_fit(data[2000:3000])
    state = merge.train_partition(base, data, 2000, 3000)
    assert np.array_equal(bits(base.params), bits(before)), "a task wrote into the base"
    assert state.n_rows - 1 < want.n_features  # only the rows it changed
    assert_same_model(base.apply(state).fm(), want)
    # merging one state changes nothing either
    assert_same_model(base.apply(merge.merge([state])).fm(), want)


def test_an_untrained_partition_is_the_identity(data):
    fm = streamfm.FM(k=K, seed=1)
    fm.partial_fit(data[:2000])
    base = merge.Base.of(fm)
    s = merge.train_partition(base, data, 2000, 2600)
    empty = merge.train_partition(base, [])
    for rule in merge.RULES:
        got = base.apply(merge.merge([empty, s, empty], rule)).fm()
        assert_same_model(got, base.apply(s).fm())


# ---------------------------------------------------------------------------
# the rule, against a pure-Python evaluation of docs/design.md, "Merging models"


def coord(c, hp):
    if c == 0:
        return WN, WZ, hp[0:4]
    return VN + c - 1, VN + K + c - 1, hp[4:8]


def contraction(n0, n1, alpha, beta, l2):
    c = alpha * l2 + beta
    return 2 * alpha * ((math.sqrt(n1) - math.sqrt(n0)) - c * math.log((math.sqrt(n1) + c) / (math.sqrt(n0) + c)))


def reference_merge(base, parts, hp, rule):
    """{name: expected FTRL row} of the merge of the partitions' models (name -> row dicts)."""
    out = {}
    for name in sorted(set(base).union(*parts)):
        b = base.get(name)
        present = [p[name] for p in parts if name in p]
        row = (b if b is not None else present[0]).copy()
        for c in range(K + 1):
            ncol, zcol, (alpha, beta, l1, l2) = coord(c, hp)
            n0 = b[ncol] if b is not None else 0.0
            z0 = b[zcol] if b is not None else 0.0
            trained = [r for r in present if r[ncol] > n0]
            if len(trained) == 1:
                row[ncol], row[zcol] = trained[0][ncol], trained[0][zcol]
                if c == 0:
                    row[W] = trained[0][W]
                continue
            if not trained:
                continue
            dn = [r[ncol] - n0 for r in trained]
            n = n0 + sum(dn)
            ths = [ftrl_weight(r[zcol], r[ncol], alpha, beta, l1, l2) for r in trained]
            zs = (z0 if n0 > 0 else 0.0) + sum(r[zcol] - (z0 if n0 > 0 else 0.0) for r in trained)
            t_sum = ftrl_weight(zs, n, alpha, beta, l1, l2)
            t_mean = sum(d * t for d, t in zip(dn, ths)) / sum(dn)
            z_mean = sum(d * r[zcol] for d, r in zip(dn, trained)) / sum(dn)
            if rule == "sum":
                theta, z = t_sum, zs
            else:
                if rule == "dn":
                    theta, hint = t_mean, z_mean
                else:
                    if rule == "blend":
                        kk = contraction(n0, n, alpha, beta, l2)
                    else:  # blend-each
                        kk = sum(d * contraction(n0, r[ncol], alpha, beta, l2) for d, r in zip(dn, trained)) / sum(dn)
                    lam = 1 - math.exp(-merge.COUPLING * kk)
                    theta = (1 - lam) * t_sum + lam * t_mean
                    hint = (1 - lam) * zs + lam * z_mean
                if theta == 0:
                    z = min(max(hint, -l1), l1)
                else:
                    z = -theta * (l2 + (beta + math.sqrt(n)) / alpha) - math.copysign(l1, theta)
            row[ncol], row[zcol] = n, z
            if c == 0:
                row[W] = theta
        out[name] = row
    return out


@pytest.fixture(scope="module")
def three_parts(data):
    """A warm base, and three partitions trained from it (overlapping and own features)."""
    fm = streamfm.FM(k=K, seed=2, w_l1=0.05)
    fm.partial_fit(data[:1500])
    base = merge.Base.of(fm)
    chunks = [data[1500:2700], data[2700:3300], data[3300:4000] + [b"1 only_in_two:1 f0_1:1"] * 3]
    states = [merge.train_partition(base, c) for c in chunks]
    return base, chunks, states


@pytest.mark.parametrize("rule", list(merge.RULES))
def test_merge_equals_the_rule_evaluated_in_python(three_parts, rule):
    base, chunks, states = three_parts
    merged = merge.merge(states, rule)
    assert (merged.cnt >= 2).sum() > 500  # coordinates the rule combines
    got = rows_by_name(base.apply(merged).fm())
    parts = [rows_by_name(base.apply(s).fm()) for s in states]
    want = reference_merge(rows_by_name(base.fm()), parts, np.array([base.hyper[h] for h in HP_NAMES]), rule)
    assert sorted(got) == sorted(want)
    g = np.array([got[n] for n in sorted(got)])
    w = np.array([want[n] for n in sorted(want)])
    assert np.allclose(g, w, rtol=1e-10, atol=1e-13), np.abs(g - w).max()


def test_base_caches_change_no_number(three_parts):
    """A Base keeps a feature table for its tasks' models and a name index that
    ``apply`` hands on to the Base it returns: neither changes a number, a Base
    applied to twice or unpickled gives what a fresh copy gives, and training a
    Base's model never writes the Base's rows."""
    import pickle

    base, chunks, states = three_parts

    def fresh(b):
        return merge.Base(b.hyper, b.arena.copy(), b.name_off.copy(), b.params.copy(), b.info)

    b = fresh(base)
    a1 = b.apply(states[0])
    a2 = b.apply(states[1])  # its index went on to a1
    assert_same_model(a2.fm(), fresh(base).apply(states[1]).fm())
    c = a1.apply(states[2])  # with a1's index, grown by states[0]'s names
    assert_same_model(c.fm(), fresh(fresh(base).apply(states[0])).apply(states[2]).fm())
    back = pickle.loads(pickle.dumps(a1))
    assert back._table is None and back._names is None
    for x, y in [(merge.train_partition(a1, chunks[1]), merge.train_partition(back, chunks[1])),
                 (merge.train_partition(a1, chunks[2]), merge.train_partition(fresh(a1), chunks[2]))]:
        assert np.array_equal(bits(x.params), bits(y.params))
    rows = a1.params.copy()
    a1.fm().partial_fit(chunks[0])
    assert np.array_equal(bits(a1.params), bits(rows))
    fm = a1.fm()
    fm.partial_fit(chunks[1][:50])
    shared = merge.Base.of(fm, copy=False)  # a view of fm's rows
    before = rows_by_name(fm)
    shared.fm().partial_fit(chunks[2])
    after = rows_by_name(fm)
    assert all(np.array_equal(bits(before[n]), bits(after[n])) for n in before)


def test_feature_of_one_partition_keeps_its_numbers(three_parts):
    base, chunks, states = three_parts
    merged = rows_by_name(base.apply(merge.merge(states)).fm())
    own = rows_by_name(base.apply(states[2]).fm())
    assert b"only_in_two" in merged
    assert np.array_equal(bits(merged[b"only_in_two"]), bits(own[b"only_in_two"]))
    only = [n for n in own if n not in rows_by_name(base.fm()) and all(n not in rows_by_name(base.apply(s).fm())
                                                                     for s in states[:2])]
    assert len(only) > 20
    for n in only:
        assert np.array_equal(bits(merged[n]), bits(own[n])), n


def test_merge_order_and_grouping_do_not_matter(three_parts):
    base, _, states = three_parts
    want = rows_by_name(base.apply(merge.merge(states)).fm())
    a, b, c = states
    for shape in [[c, a, b], [b, c, a], [merge.merge([a, b]), c], [a, merge.merge([c, b])],
                  [merge.merge([merge.merge([b]), merge.merge([a, c])])]]:
        got = rows_by_name(base.apply(merge.merge(shape)).fm())
        assert sorted(got) == sorted(want)
        g = np.array([got[n] for n in sorted(got)])
        w = np.array([want[n] for n in sorted(want)])
        assert np.allclose(g, w, rtol=1e-9, atol=1e-12), np.abs(g - w).max()


def test_merging_identical_models(data):
    fm = streamfm.FM(k=K, seed=4)
    fm.partial_fit(data[:3000])
    one = rows_by_name(merge.merge_models([fm]))
    assert all(np.array_equal(bits(one[n]), bits(r)) for n, r in rows_by_name(fm).items())
    # the increment-weighted mean of identical weights is those weights; n adds up
    twice = merge.merge_models([fm, fm], rule="dn")
    assert np.allclose(next_weights(twice), next_weights(fm), rtol=1e-12, atol=1e-15)
    m1, m2 = fm.training_model(), twice.training_model()
    n = m1.n_rows
    trained = m1.params[:n, WN] > 0
    assert np.array_equal(m2.params[:n, WN][trained], 2 * m1.params[:n, WN][trained])
    # blend counts two models' evidence twice where they trained little, and keeps
    # the weights where they trained to convergence (the bias)
    blend = merge.merge_models([fm, fm])
    assert next_weights(blend)[0, 0] == pytest.approx(next_weights(fm)[0, 0], rel=5e-3)
    assert blend.samples_seen == 2 * fm.samples_seen


def test_merging_identical_models_onto_their_own_base_is_the_identity(data):
    fm = streamfm.FM(k=K, seed=4)
    fm.partial_fit(data[:3000])
    # copies that trained nothing since the base: every increment is 0, so
    # every coordinate keeps the base's numbers, bit for bit
    assert_same_model(merge.merge_models([fm, fm, fm], base=fm), fm)
    # identical States (partitions that trained the same lines from one base):
    # the increment-weighted mean of equal weights is those weights
    base = merge.Base.of(fm)
    s = merge.train_partition(base, data[3000:3600])
    one = base.apply(s).fm()
    two = base.apply(merge.merge([s, s], rule="dn")).fm()
    assert np.allclose(next_weights(two), next_weights(one), rtol=1e-12, atol=1e-15)


def rekeyed(fm, key):
    """The same model (names, rows, counts) under the table hash key ``key`` (16 bytes)."""
    b = merge.Base.of(fm)
    b.info["hash_key"] = key
    return b.fm()


def table_key(fm):
    return fm.training_model().table.key_bytes()


def assert_rows_found_by_name(fm):
    t = fm.training_model().table
    assert all(t.lookup(t.name_bytes(r)) == r for r in range(1, t.n_rows))


def test_models_with_different_hash_keys_merge_by_name(tmp_path, data):
    """Models hash names under their own random keys: the merge joins rows by
    name, so the keys do not change the merged numbers, and the merged table is
    indexed under one key (the base's; a fresh one without a base)."""
    a = streamfm.FM(k=K, seed=3)
    a.partial_fit(data[:2000])
    b = streamfm.FM(k=K, seed=3)
    b.partial_fit(data[2000:4000])
    assert table_key(a) != table_key(b)
    merged = merge.merge_models([a, b])
    same_key = merge.merge_models([a, rekeyed(b, table_key(a))])
    assert_same_model(merged, same_key)
    assert_rows_found_by_name(merged)
    hp = np.array([a.hyper_parameters()[h] for h in HP_NAMES])
    want = reference_merge({}, [rows_by_name(a), rows_by_name(b)], hp, "blend")
    got = rows_by_name(merged)
    assert sorted(got) == sorted(want)
    assert np.allclose(np.array([got[n] for n in sorted(got)]), np.array([want[n] for n in sorted(want)]),
                       rtol=1e-10, atol=1e-13)
    # parts continued from one base share its key, and the merge keeps it; a part
    # under another key (say, continued from a text copy of the base) merges alike
    base = streamfm.FM(k=K, seed=3)
    base.partial_fit(data[:1000])
    base.save(tmp_path / "base.bin")
    parts = []
    for i, chunk in enumerate([data[1000:2500], data[2500:4000]]):
        p = streamfm.FM.load(tmp_path / "base.bin")
        p.partial_fit(chunk)
        assert table_key(p) == table_key(base)
        parts.append(p)
    other = rekeyed(parts[1], table_key(a))
    assert table_key(other) != table_key(base)
    other.save(tmp_path / "other.bin")
    parts[0].save(tmp_path / "p0.bin")
    parts[1].save(tmp_path / "p1.bin")
    want = merge.merge_models(parts, base=base)
    assert table_key(want) == table_key(base)
    assert_ok(run(FM_DUMP, "merge", "--base", tmp_path / "base.bin", tmp_path / "p0.bin", tmp_path / "other.bin",
                  "-o", tmp_path / "m.bin", "-q"), "fm_dump merge")
    got = streamfm.FM.load(tmp_path / "m.bin")
    assert_same_model(got, want)
    assert table_key(got) == table_key(base)
    assert_rows_found_by_name(got)
    assert np.array_equal(got.predict_proba(data[4000:4500]), want.predict_proba(data[4000:4500]))


def test_states_of_different_bases_do_not_merge(data):
    a = streamfm.FM(k=K, seed=1)
    a.partial_fit(data[:1000])
    b = streamfm.FM(k=K, seed=1)
    b.partial_fit(data[1000:2000])
    s1 = merge.train_partition(merge.Base.of(a), data[2000:2500])
    s2 = merge.train_partition(merge.Base.of(b), data[2000:2500])
    with pytest.raises(streamfm.ModelFormatError, match="same base"):
        merge.merge([s1, s2])
    with pytest.raises(streamfm.ParameterError, match="factors"):
        merge.merge([s1, merge.train_partition(merge.empty_base(k=2), data[:10])])


def test_merged_model_continues_with_im(tmp_path, three_parts, data):
    base, _, states = three_parts
    merged = base.apply(merge.merge(states)).fm()
    more = data[4000:5000]
    want = base.apply(merge.merge(states)).fm()
    want.partial_fit(more)
    for fmt in ("bin", "txt"):
        path = tmp_path / ("merged." + fmt)
        merged.save(path, format=fmt)
        # a text model does not keep its hyper-parameters: give them, as to fm_train
        api = streamfm.FM.load(path, seed=base.hyper["seed"], **{h: base.hyper[h] for h in HP_NAMES})
        api.partial_fit(more)
        assert_same_model(api, want, seen=fmt == "bin")  # text models do not count samples
        out = tmp_path / ("next." + fmt)
        src = tmp_path / "more.txt"
        src.write_bytes(b"\n".join(more) + b"\n")
        hp = ["-%s" % h for h in HP_NAMES]
        args = [a for h, v in zip(hp, [base.hyper[h] for h in HP_NAMES]) for a in (h, repr(v))]
        assert_ok(run(FM_TRAIN, "-im", path, "-m", out, "-mf", "bin", "-dim", "1,1,%d" % K, "--input", src,
                      "--seed", base.hyper["seed"], "-q", *args), "fm_train -im")
        assert_same_model(streamfm.FM.load(out), want, seen=fmt == "bin")


# ---------------------------------------------------------------------------
# the driver on several partitions


def test_driver_on_partitions_equals_rounds_by_hand(data):
    parts = [data[0:2000], data[2000:3500], data[3500:6000]]
    fm = distributed.train(parts, sync_every=800, warm_start=500, threads=2, k=K, seed=5)
    base = merge.empty_base(k=K, seed=5)
    rounds = distributed.plan_rounds([len(p) for p in parts], 800, 500)
    base = base.apply(distributed.train_heads(base, [merge.head(parts[p], b) for p, _, b in rounds[0]]))
    for tasks in rounds[1:]:
        base = base.apply(merge.merge([merge.train_partition(base, parts[p], a, b) for p, a, b in tasks]))
    assert_same_model(fm, base.fm())
    assert fm.last_report.lines == 6000 and fm.samples_seen == 6000


def test_driver_continues_a_model(data):
    start = streamfm.FM(k=K, seed=6)
    start.partial_fit(data[:1000])
    before = rows_by_name(start)
    fm = distributed.train([data[1000:3000], data[3000:5000]], fm=start, sync_every=600)
    assert rows_by_name(start).keys() == before.keys()  # not changed
    assert fm.samples_seen == 5000 and fm.seed == 6
    with pytest.raises(streamfm.ParameterError, match="either"):
        distributed.train([data[:10]], fm=start, k=K)


def test_matrix_partitions_equal_line_partitions():
    rng = np.random.default_rng(0)
    X = (rng.random((400, 12)) < 0.3) * rng.normal(size=(400, 12))
    y = (rng.random(400) < 0.4).astype(float)
    names = ["c%d" % j for j in range(12)]
    lines = []
    for i in range(400):
        toks = ["1" if y[i] > 0 else "0"] + ["%s:%r" % (names[j], float(X[i, j])) for j in range(12) if X[i, j] != 0]
        lines.append(" ".join(toks))
    a = distributed.train([(X[:200], y[:200]), (X[200:], y[200:])], sync_every=50, feature_names=names, k=2)
    b = distributed.train([lines[:200], lines[200:]], sync_every=50, k=2)
    assert_same_model(a, b)


# ---------------------------------------------------------------------------
# fm_dump merge


def merged_by_states(models, base, rule):
    """merge_models by the running merge: each model's State against the base, merged one
    at a time (``Merger``), applied to the base (what engines' reductions do)."""
    b = merge.Base.of(base) if base is not None else None
    m = merge.Merger(rule)
    for fm in models:
        mb = merge.Base.of(fm)
        if b is None:
            b = merge.Base(mb.hyper, np.frombuffer(b"bias", np.uint8), np.array([0, 4], np.int64),
                           np.zeros((1, mb.params.shape[1]), mb.params.dtype), {"samples_seen": 0})
        hp = np.array([float(mb.hyper[h]) for h in HP_NAMES])
        m.add(b.state_of_model(mb.arrays(), hp, mb.hyper["fvs"]))
    return b.apply(m.result()).fm()


def with_row(base, name, row):
    """``base`` (a Base) with one more feature, ``name``, holding FTRL row ``row``."""
    arena = np.concatenate([base.arena[: base.name_off[-1]], np.frombuffer(name, np.uint8)])
    off = np.append(base.name_off, base.name_off[-1] + len(name))
    return merge.Base(base.hyper, arena, off, np.vstack([base.params, row]), base.info)


def as_dtype(fm, dtype):
    b = merge.Base.of(fm)
    return merge.Base(dict(b.hyper, dtype=dtype), b.arena, b.name_off, b.params.astype(dtype), b.info).fm()


@pytest.mark.parametrize("rule", list(merge.RULES))
def test_whole_model_merge_equals_the_running_merge(three_parts, rule):
    """merge_models merges every model at once, row by row; engines merge States one
    at a time. Both give the same numbers bit for bit: with a base, with a base
    feature no model holds, with models in float32 on a float64 base, without a base."""
    base, _, states = three_parts
    models = [base.apply(s).fm() for s in states]
    ext = with_row(base, b"only_in_base", base.params[1] * 3)
    ext32 = as_dtype(ext.fm(), "float32")
    models32 = [as_dtype(m, "float32") for m in models]
    # float64 models on a float32 base (exact copies of float32 numbers: n never below the base's)
    for b, ms in [(base.fm(), models), (ext.fm(), models), (None, models), (base.fm(), models[1:2]),
                  (ext32, models32), (None, models32), (ext32, [as_dtype(m, "float64") for m in models32])]:
        got = merge.merge_models(ms, base=b, rule=rule)
        want = merged_by_states(ms, b, rule)
        assert_same_model(got, want)
        assert got.training_model().params.dtype == want.training_model().params.dtype
    got = rows_by_name(merge.merge_models(models, base=ext.fm(), rule=rule))
    assert np.array_equal(bits(got[b"only_in_base"]), bits(base.params[1] * 3))


def test_whole_model_merge_of_float32_training_equals_the_states(data):
    """Trained in float32, a coordinate's z can move while its n does not (n + g^2
    rounds to n): a row a model changed is that model's, as in its State, even
    where the rule's "untrained" branch would take the larger z."""
    base = streamfm.FM(k=K, dtype="float32", seed=3)
    base.partial_fit(data[:1500])
    b = merge.Base.of(base)
    parts = [data[1500:2500], data[2500:2800], data[2800:4500]]
    want = b.apply(merge.merge([merge.train_partition(b, p) for p in parts])).fm()
    models = []
    for p in parts:
        m = b.fm()
        m.partial_fit(p)
        models.append(m)
    assert_same_model(merge.merge_models(models, base=base), want)


def test_whole_model_merge_refuses_a_model_behind_its_base(data):
    ahead = streamfm.FM(k=K, seed=1)
    ahead.partial_fit(data[:1200])
    behind = streamfm.FM(k=K, seed=1)
    behind.partial_fit(data[:600])
    with pytest.raises(streamfm.ModelFormatError, match="less training .n. than in the base"):
        merge.merge_models([ahead, behind], base=ahead)


def _many_names_model(path, base, new_names, n_of):
    """Write ``base`` (a Base) with features ``new_names`` appended as a binary model:
    row r's FTRL n is n_of(name) in every coordinate (z and w made from it), so a
    merged row shows which rows were joined."""
    from streamfm.model import write_model

    k = base.k
    names = [bytes(base.arena[base.name_off[r]:base.name_off[r + 1]]) for r in range(base.n_rows)] + new_names
    off = np.zeros(len(names) + 1, np.int64)
    np.cumsum([len(x) for x in names], out=off[1:])
    params = np.zeros((len(names), base.params.shape[1]))
    params[: base.n_rows] = base.params
    n = np.array([n_of(x) for x in new_names], np.float64)
    params[base.n_rows:, [WN] + [VN + f for f in range(k)]] = n[:, None]
    params[base.n_rows:, [WZ] + [VN + k + f for f in range(k)]] = -0.01 * n[:, None]
    m = merge.Base(base.hyper, np.frombuffer(b"".join(names), np.uint8), off, params, base.info)
    write_model(m.arrays(), str(path), "bin")
    return path


def test_whole_model_merge_joins_many_names_by_content(tmp_path, three_parts):
    """Models with more new features than run in one piece (names hashed and looked up
    in parallel pieces, the index's slots holding part of each hash): the merged
    names are the base's, then the first model's new ones, then the second's not in
    the first, in order; a name both hold is one row whose n adds both models' (so
    the join paired the right rows); a name held twice is refused, whether it is
    among the first model's new names (found when indexing them) or among the
    second's (found while adding them), even when far apart."""
    base = three_parts[0]
    first = [b"new=%d" % i for i in range(90_000)]
    # every third of the first model's names (in another order), and 60,000 of its own
    second = [b"new=%d" % i for i in range(89_997, 0, -3)] + [b"own=%d" % i for i in range(60_000)]
    rng = np.random.default_rng(4)
    second = [second[i] for i in rng.permutation(len(second))]

    def n_of(name):
        return float(1 + zlib.crc32(name) % 1000)
    a = _many_names_model(tmp_path / "a.bin", base, first, n_of)
    b = _many_names_model(tmp_path / "b.bin", base, second, lambda x: 2 * n_of(x))
    base.fm().save(tmp_path / "base.bin")
    got = merge.merge_models([a, b], base=tmp_path / "base.bin").training_model()
    in_first = set(first)
    want = ([bytes(base.arena[base.name_off[r]:base.name_off[r + 1]]) for r in range(1, base.n_rows)] + first
            + [x for x in second if x not in in_first])
    assert [got.table.name_bytes(r) for r in range(1, got.n_rows)] == want
    n_got = {got.table.name_bytes(r): got.params[r, WN] for r in range(base.n_rows, got.n_rows)}
    in_second = set(second)
    assert all(n_got[x] == n_of(x) * (3 if x in in_second else 1) for x in first)
    assert all(n_got[x] == 2 * n_of(x) for x in second if x not in in_first)
    for names, which in [(first[:70_000] + [b"new=5"] + first[70_000:], "first"),
                         (second[:500] + [b"own=123"] + second[500:], "second")]:
        models = [_many_names_model(tmp_path / "d.bin", base, names, n_of), b] if which == "first" else \
            [a, _many_names_model(tmp_path / "d.bin", base, names, n_of)]
        want = b"new=5" if which == "first" else b"own=123"
        with pytest.raises(streamfm.ModelFormatError, match="feature %r appears twice" % want.decode()):
            merge.merge_models(models, base=tmp_path / "base.bin")


def test_fm_dump_merge_equals_the_api(tmp_path, three_parts):
    base, _, states = three_parts
    paths = []
    for i, s in enumerate(states):
        p = tmp_path / ("part%d.bin" % i)
        base.apply(s).fm().save(p)
        paths.append(p)
    out = tmp_path / "merged.bin"
    base.fm().save(tmp_path / "base.bin")
    proc = run(FM_DUMP, "merge", "--base", tmp_path / "base.bin", *paths, "-o", out)
    assert_ok(proc, "fm_dump merge")
    assert b"3 models" in proc.stderr
    want = base.apply(merge.merge(states)).fm()
    assert_same_model(streamfm.FM.load(out), want)
    api = merge.merge_models(paths, base=tmp_path / "base.bin")
    assert_same_model(api, want)
    # without a base: every model counts from nothing
    proc = run(FM_DUMP, "merge", paths[0], paths[1], "-o", tmp_path / "nobase.txt", "--to", "txt", "-q")
    assert_ok(proc)
    assert proc.stderr == b""
    got = streamfm.FM.load(tmp_path / "nobase.txt", w_l1=0.05)
    assert got.n_features >= base.n_rows - 1


def test_merge_checks_the_base_and_names_the_model_that_differs(tmp_path, data):
    """A base is checked like the models (its hyper-parameters are the merged
    model's, every weight is rebuilt with them); errors name the file; a binary
    model keeps its own hyper-parameters, only text models take the given ones."""
    base = streamfm.FM(k=K, seed=5)
    base.partial_fit(data[:1000])
    base.save(tmp_path / "base.bin")
    part = streamfm.FM.load(tmp_path / "base.bin", v_alpha=0.2)
    part.partial_fit(data[1000:2000])
    part.save(tmp_path / "part.bin")
    with pytest.raises(streamfm.ParameterError, match=r"part\.bin: .*v_alpha 0\.2 \(the base: 0\.05\)"):
        merge.merge_models([tmp_path / "part.bin"], base=tmp_path / "base.bin")
    proc = run(FM_DUMP, "merge", "--base", tmp_path / "base.bin", tmp_path / "part.bin", "-o", tmp_path / "o.bin")
    assert_one_line_error(proc, tmp_path / "part.bin", "v_alpha 0.2 (the base: 0.05)")
    assert not (tmp_path / "o.bin").exists()
    # hyper-parameters given to the merge: for text models only
    assert merge.merge_models([tmp_path / "base.bin"], v_alpha=0.3).hyper_parameters()["v_alpha"] == 0.05
    base.save(tmp_path / "base.txt", format="txt")
    with pytest.raises(streamfm.ParameterError, match=r"base\.txt: .*v_alpha 0\.3 \(the first model: 0\.05\)"):
        merge.merge_models([tmp_path / "base.bin", tmp_path / "base.txt"], v_alpha=0.3)
    assert merge.merge_models([tmp_path / "base.txt"], v_alpha=0.3).hyper_parameters()["v_alpha"] == 0.3
    # fm_dump merge gives them too: the text model's z is rebuilt with its own alpha
    part.save(tmp_path / "part.txt", format="txt")
    twice = [tmp_path / "part.txt"] * 2
    want = merge.merge_models(twice, v_alpha=0.2)
    proc = run(FM_DUMP, "merge", *twice, "-v_alpha", "0.2", "-o", tmp_path / "t.bin", "-q")
    assert_ok(proc)
    got = streamfm.FM.load(tmp_path / "t.bin")
    assert got.hyper_parameters()["v_alpha"] == 0.2
    assert_same_model(got, want)
    defaults = merge.merge_models(twice).training_model()
    assert not np.array_equal(defaults.params[:defaults.n_rows], want.training_model().params[:defaults.n_rows])
    proc = run(FM_DUMP, "merge", tmp_path / "part.bin", tmp_path / "part.txt", "-o", tmp_path / "t.bin")
    assert_one_line_error(proc, tmp_path / "part.txt", "v_alpha 0.05 (the first model: 0.2)")


def test_merged_model_file_says_the_hyper_parameters_it_was_merged_with(tmp_path, data):
    """Without a base the merged model used to be written with no hyper-parameters,
    fvs or seed: read back, it had the defaults, and training went on with them."""
    a = streamfm.FM(k=K, seed=7, v_alpha=0.2, w_l2=1.0)
    a.partial_fit(data[:1000])
    a.save(tmp_path / "a.bin")
    a.save(tmp_path / "a.txt", format="txt")
    want = {h: a.hyper_parameters()[h] for h in HP_NAMES + ("fvs", "seed")}
    for models, hyper in ((["a.bin", "a.bin"], {}), (["a.txt"], dict(v_alpha=0.2, w_l2=1.0, seed=7))):
        merge.merge_models([tmp_path / m for m in models], **hyper).save(tmp_path / "m.bin")
        got = streamfm.FM.load(tmp_path / "m.bin").hyper_parameters()
        assert {h: got[h] for h in want} == want
    proc = run(FM_DUMP, "merge", tmp_path / "a.bin", tmp_path / "a.bin", "-o", tmp_path / "c.bin", "-q")
    assert_ok(proc)
    got = streamfm.FM.load(tmp_path / "c.bin").hyper_parameters()
    assert {h: got[h] for h in want} == want
    # a text model loaded with its hyper-parameters and saved as binary keeps them too
    streamfm.FM.load(tmp_path / "a.txt", v_alpha=0.2, w_l2=1.0, seed=7).save(tmp_path / "t.bin")
    got = streamfm.FM.load(tmp_path / "t.bin").hyper_parameters()
    assert {h: got[h] for h in want} == want
    streamfm.FM.load(tmp_path / "a.txt").save(tmp_path / "u.bin")  # none given: none claimed
    assert streamfm.FM.load(tmp_path / "u.bin").info.get("hyper") is None
    # a text model has no seed to differ from: fm_train -im takes --seed without a warning
    proc = run(FM_TRAIN, "-im", tmp_path / "a.txt", "-m", tmp_path / "c2.bin", "-mf", "bin", "-dim", "1,1,%d" % K,
               "--seed", "7", "-v_alpha", "0.2", "-w_l2", "1", input=b"".join(x + b"\n" for x in data[1000:1100]))
    assert_ok(proc)
    assert b"differs from the model's seed" not in proc.stderr
    got = streamfm.FM.load(tmp_path / "c2.bin").hyper_parameters()
    assert {h: got[h] for h in want} == want


def test_merge_refuses_a_model_that_holds_a_name_twice(tmp_path, data):
    """fm_predict refuses a model file listing a feature twice; the merge must too,
    whatever path the name takes (appended as new, or joined to a row the base or
    another model holds), and name the file, never write one row for two."""
    a = streamfm.FM(k=K, seed=5)
    a.partial_fit(data[:1500])
    a.save(tmp_path / "a.txt", format="txt")
    a.save(tmp_path / "a.bin")
    lines = (tmp_path / "a.txt").read_bytes().split(b"\n")
    (tmp_path / "dup.txt").write_bytes(b"\n".join(lines[:-1] + [lines[3], b""]))
    for models, base in ((["dup.txt"], None), (["a.bin", "dup.txt"], None), (["dup.txt", "a.bin"], None),
                         (["dup.txt"], "a.bin")):
        with pytest.raises(streamfm.ModelFormatError, match=r"dup\.txt: feature .* appears twice"):
            merge.merge_models([tmp_path / m for m in models], base=tmp_path / base if base else None)
    proc = run(FM_DUMP, "merge", tmp_path / "dup.txt", "-o", tmp_path / "o.bin")
    assert_one_line_error(proc, tmp_path / "dup.txt", "appears twice")
    assert not (tmp_path / "o.bin").exists()


def test_base_apply_refuses_a_state_of_another_kind(data):
    """A State with other k, hyper-parameters or fvs is refused (a wider one
    used to be written past the base's rows)."""
    fm = streamfm.FM(k=K)
    fm.partial_fit(data[:500])
    base = merge.Base.of(fm)
    for other in (dict(k=K + 4), dict(k=K, v_alpha=0.5), dict(k=K, fvs=True)):
        state = merge.train_partition(merge.empty_base(**other), data[500:700])
        with pytest.raises(streamfm.ParameterError, match="the state to apply"):
            base.apply(state)
    assert base.apply(merge.train_partition(base, data[500:700])).n_rows >= base.n_rows


def test_float32_models_continuing_a_float64_base_merge(tmp_path, data):
    """A -mnt float model continued from a float64 base holds the base's untrained
    rows rounded: they are not "less training than the base"."""
    base = streamfm.FM(k=K, seed=5)
    base.partial_fit(data[:2000])
    base.save(tmp_path / "base.bin")
    parts = []
    for i, lines in enumerate((data[2000:2600], data[2600:3200])):
        part = streamfm.FM.load(tmp_path / "base.bin", dtype="float32")
        part.partial_fit(lines)
        part.save(tmp_path / ("p%d.bin" % i))
        parts.append(part)
    one = merge.merge_models([tmp_path / "p0.bin"], base=tmp_path / "base.bin")
    assert one.dtype == "float64" and one.n_features == parts[0].n_features
    test = data[3200:3700]
    assert np.allclose(one.predict_proba(test), parts[0].predict_proba(test), rtol=0, atol=1e-5)
    two = merge.merge_models([tmp_path / "p0.bin", tmp_path / "p1.bin"], base=tmp_path / "base.bin")
    assert two.n_features >= one.n_features


def test_fm_dump_merge_errors(tmp_path, data):
    a = streamfm.FM(k=K)
    a.partial_fit(data[:300])
    b = streamfm.FM(k=2)
    b.partial_fit(data[:300])
    a.save(tmp_path / "a.bin")
    b.save(tmp_path / "b.bin")
    assert_one_line_error(run(FM_DUMP, "merge", tmp_path / "a.bin", tmp_path / "b.bin", "-o", tmp_path / "o.bin"),
                          "4 and 2 factors")
    before = (tmp_path / "a.bin").read_bytes()
    assert_one_line_error(run(FM_DUMP, "merge", tmp_path / "a.bin", "-o", tmp_path / "a.bin"),
                          tmp_path / "a.bin", "input", code=2)
    assert (tmp_path / "a.bin").read_bytes() == before
    assert_one_line_error(run(FM_DUMP, "merge", tmp_path / "nope.bin", "-o", tmp_path / "o.bin"),
                          tmp_path / "nope.bin", "no such")
    a.save(tmp_path / "strip.bin", state=False)
    assert_one_line_error(run(FM_DUMP, "merge", tmp_path / "strip.bin", "-o", tmp_path / "o.bin"), "stripped")
    assert not (tmp_path / "o.bin").exists()
    assert b"--base" in run(FM_DUMP, "merge", "--help").stdout
