#!/usr/bin/env python3
"""fm_sample speed: impressions per second of rank (TSV, CSV, JSON lines), fit, recall, online.

    python bench/bench_sample.py                  # 1,000,000 impressions
    python bench/bench_sample.py --impressions 3000000 --repeat 3

A synthetic shop (seeded): 100,000 users and 200,000 items in profile
tables (TSV), an impression log of requests of 10 to 30 items with a
cascade-click model, and a spec of 30 base fields (12 user, 14 item, 4
inline context fields: hour, weekday, page, network), 3 crosses and 1
overlap (user top categories x item tags, Jaccard, quantile buckets),
min-count on the ids and quantile buckets learned by fit. Each command
runs in its own process through the console script, reading the log from
a file and writing to a file; the time excludes the numba compilation
(a warm-up run first) and includes loading the profile tables and the
fsync of the output. The table reports the best of --repeat runs (the
machine is shared: compare ratios): impressions/s of the whole process,
and "streamed", the rate less the start-up and table load (the time of
the same command on an empty log), which is what a long log sees.

Output bytes per impression are reported too: fm_sample writes about
that many bytes per line whatever the machine. At ~500 bytes a line a
file output is 500 MB per million impressions, so the file rows also time
the disk; a second table runs rank to a pipe read by ``cat`` (the
``fm_sample rank | fm_train`` case), the empty log and the three formats
interleaved in each of max(--repeat, 5) rounds, with medians and bests.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
OUT = os.path.join(HERE, "out", "sample")
FM_SAMPLE = os.path.join(os.path.dirname(sys.executable), "fm_sample")
if not os.path.exists(FM_SAMPLE):
    FM_SAMPLE = os.path.join(ROOT, "bin", "fm_sample")

SPEC = """\
# bench spec: 30 base fields, 3 crosses, 1 overlap
[user]
key = "uid"
table = {{ path = "{users}" }}
[item]
key = "iid"
table = {{ path = "{items}" }}
[log]
request = "req"
position = "pos"
clicked = "click"
fields = {{ hour = "user.hour", weekday = "user.weekday", page = "user.page", net = "user.net" }}

{features}
"""

USER_FIELDS = [("uid", "categorical", {"min_count": 2}), ("age", "bucket", {"bins": 10}),
               ("gender", "categorical", {}), ("city", "categorical", {"min_count": 5}),
               ("occupation", "categorical", {}), ("device", "categorical", {}),
               ("income", "bucket", {"bins": 16}), ("tenure", "bucket", {"bins": 16}),
               ("clicks30", "numeric", {"transform": "log1p"}), ("segment", "categorical", {}),
               ("top_cats", "tags", {}), ("hist", "history", {"last": 10, "min_count": 3})]
ITEM_FIELDS = [("iid", "categorical", {"min_count": 3}), ("cat", "categorical", {}),
               ("subcat", "categorical", {}), ("brand", "categorical", {"min_count": 5}),
               ("price", "bucket", {"bins": 20}), ("ctr", "bucket", {"bins": 20}),
               ("item_age", "bucket", {"edges": [1, 7, 30, 90, 365]}), ("tags", "tags", {"min_count": 5}),
               ("seller", "categorical", {"min_count": 5}), ("quality", "numeric", {}),
               ("reviews", "bucket", {"bins": 10}), ("rating", "bucket", {"edges": [2, 3, 3.5, 4, 4.5]}),
               ("color", "categorical", {}), ("size", "categorical", {})]
CTX_FIELDS = [("hour", "categorical", {}), ("weekday", "categorical", {}), ("page", "categorical", {}),
              ("net", "categorical", {})]
CROSSES = [("age", "cat"), ("gender", "subcat"), ("hour", "cat")]


def spec_text(users, items):
    feats = []
    for side, fields in (("user", USER_FIELDS), ("item", ITEM_FIELDS), ("user", CTX_FIELDS)):
        for name, kind, extra in fields:
            lines = ["[[feature]]", 'name = "%s"' % name, 'source = "%s.%s"' % (side, name), 'kind = "%s"' % kind]
            for k, v in extra.items():
                lines.append("%s = %s" % (k, json.dumps(v)))
            feats.append("\n".join(lines))
    for a, b in CROSSES:
        feats.append('[[feature]]\nname = "%s_x_%s"\nkind = "cross"\nof = ["%s", "%s"]' % (a, b, a, b))
    feats.append('[[feature]]\nname = "cat_overlap"\nkind = "overlap"\nuser = "user.top_cats"\n'
                 'item = "item.tags"\nmeasure = "jaccard"\nbins = 8')
    return SPEC.format(users=users, items=items, features="\n\n".join(feats))


def make_data(d, n_imp, n_users=100_000, n_items=200_000, seed=0):
    """Profile tables and an impression log (TSV, CSV, JSON lines) under d."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    users = os.path.join(d, "users.tsv")
    items = os.path.join(d, "items.tsv")
    zipf_items = np.minimum(rng.zipf(1.3, size=4 * n_imp) - 1, n_items - 1)
    with open(users, "w") as f:
        f.write("uid\tage\tgender\tcity\toccupation\tdevice\tincome\ttenure\tclicks30\tsegment\ttop_cats\thist\n")
        age = rng.integers(16, 80, n_users)
        city = np.minimum(rng.zipf(1.5, n_users), 3000)
        for u in range(n_users):
            tops = "|".join("c%d" % c for c in rng.choice(50, size=rng.integers(1, 6), replace=False))
            hist = "|".join("i%d" % i for i in rng.choice(zipf_items, size=rng.integers(0, 25)))
            f.write("u%d\t%d\t%s\tcity%d\to%d\td%d\t%.2f\t%d\t%d\ts%d\t%s\t%s\n" % (
                u, age[u], "mf"[u % 2], city[u], u % 21, u % 7, rng.lognormal(10, 1), rng.integers(0, 3000),
                rng.poisson(20), u % 13, tops, hist))
    with open(items, "w") as f:
        f.write("iid\tcat\tsubcat\tbrand\tprice\tctr\titem_age\ttags\tseller\tquality\treviews\trating\tcolor\tsize\n")
        for i in range(n_items):
            tags = "|".join("t%d" % t for t in rng.choice(500, size=rng.integers(3, 9), replace=False))
            cat = i % 50
            f.write("i%d\tc%d\tsc%d\tb%d\t%.2f\t%.5f\t%d\t%s\t%s\t%.3f\t%d\t%.1f\tcol%d\tsz%d\n" % (
                i, cat, i % 400, int(rng.zipf(1.4)) % 5000, rng.lognormal(3, 1), rng.beta(1, 30),
                rng.integers(0, 1000), tags + "|c%d" % cat, "sel%d" % (i % 7000), rng.random(),
                rng.poisson(50), rng.uniform(1, 5), i % 12, i % 6))
    log_tsv = os.path.join(d, "log.tsv")
    with open(log_tsv, "w") as f:
        f.write("req\tpos\tuid\tiid\tclick\thour\tweekday\tpage\tnet\n")
        n = 0
        r = 0
        while n < n_imp:
            m = int(min(rng.integers(10, 31), n_imp - n))
            u = int(rng.integers(0, n_users))
            its = rng.choice(zipf_items, size=m)
            attract = rng.random(m) < 0.08
            exam = np.cumprod(np.r_[1.0, np.full(m - 1, 0.9)]) > rng.random(m)
            clicks = (attract & exam).astype(int)
            hour, wd, page, net = int(rng.integers(0, 24)), int(rng.integers(0, 7)), int(rng.integers(1, 5)), \
                ("wifi", "4g", "5g")[r % 3]
            for p in range(m):
                f.write("r%d\t%d\tu%d\ti%d\t%d\t%d\t%d\t%d\t%s\n" % (r, p, u, its[p], clicks[p], hour, wd, page, net))
            n += m
            r += 1
    # the same log as CSV and JSON lines
    log_csv = os.path.join(d, "log.csv")
    log_jsonl = os.path.join(d, "log.jsonl")
    with open(log_tsv) as fin, open(log_csv, "w") as fc, open(log_jsonl, "w") as fj:
        header = fin.readline().rstrip("\n").split("\t")
        fc.write(",".join(header) + "\n")
        for line in fin:
            v = line.rstrip("\n").split("\t")
            fc.write(",".join(v) + "\n")
            fj.write('{"req": "%s", "pos": %s, "uid": "%s", "iid": "%s", "click": %s, "hour": %s, '
                     '"weekday": %s, "page": %s, "net": "%s"}\n' % tuple(v))
    spec = os.path.join(d, "spec.toml")
    with open(spec, "w") as f:
        f.write(spec_text(users, items))
    return spec, users, items, {"tsv": log_tsv, "csv": log_csv, "jsonl": log_jsonl}


def run(args, quiet=True):
    t = time.time()
    p = subprocess.run([FM_SAMPLE] + args + (["-q"] if quiet else []), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    dt = time.time() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode())
        raise SystemExit("fm_sample %s failed" % args[0])
    return dt, p


def run_piped(args):
    """Wall seconds of fm_sample writing to its standard output, read by ``cat``:
    the ``fm_sample rank | fm_train`` case, no file to write and fsync."""
    t = time.time()
    p = subprocess.Popen([FM_SAMPLE] + args + ["-q", "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    c = subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
    p.stdout.close()
    err = p.stderr.read()
    if p.wait() != 0 or c.wait() != 0:
        sys.stderr.write(err.decode())
        raise SystemExit("fm_sample %s failed" % args[0])
    return time.time() - t


def piped_table(frozen, logs, lines, repeat):
    """rank to a pipe, the empty log and the three formats interleaved ``repeat`` times:
    medians and bests, and the streamed rates (less the empty log's start-up)."""
    kinds = [("empty", os.devnull, "tsv")] + [(f, logs[f], f) for f in ("tsv", "csv", "jsonl")]
    times = {k: [] for k, _, _ in kinds}
    for _ in range(repeat):
        for k, path, fmt in kinds:
            times[k].append(run_piped(["rank", "--spec", frozen, "--input", path, "--format", fmt]))
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print("\nrank --negatives all to a pipe (`fm_sample rank | ...`: no output file, no fsync), "
          "%d interleaved rounds" % repeat)
    print("%-10s %9s %9s %18s %18s" % ("log", "median s", "best s", "streamed /s, med.", "streamed /s, best"))
    for k, _, _ in kinds:
        if k == "empty":
            print("%-10s %9.2f %9.2f" % ("empty", med[k], low[k]))
            continue
        print("%-10s %9.2f %9.2f %18s %18s" % (k, med[k], low[k],
                                                "{:,.0f}".format(lines / max(med[k] - med["empty"], 1e-9)),
                                                "{:,.0f}".format(lines / max(low[k] - low["empty"], 1e-9))))


def best(args, repeat):
    return min(run(args)[0] for _ in range(repeat))


def bench_online(frozen, n_requests=2000, items_per=20, seed=1):
    """Requests/s and items/s of Featurizer.featurize on raw dicts (profiles joined by key)."""
    from streamfm.sample import Featurizer

    fz = Featurizer(frozen)
    rng = np.random.default_rng(seed)
    reqs = []
    for _ in range(n_requests):
        reqs.append({"user": {"uid": "u%d" % rng.integers(0, 100000), "hour": int(rng.integers(0, 24)),
                              "weekday": int(rng.integers(0, 7)), "page": 1, "net": "wifi"},
                     "items": [{"iid": "i%d" % i} for i in rng.integers(0, 200000, items_per)]})
    fz.featurize(reqs[0])
    t = time.time()
    for r in reqs:
        fz.featurize(r)
    dt = time.time() - t
    return n_requests / dt, n_requests * items_per / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    d = os.path.join(a.out, "data%d" % a.impressions)
    stamp = os.path.join(d, "done")
    if not os.path.exists(stamp):
        print("generating %d impressions into %s ..." % (a.impressions, d), flush=True)
        make_data(d, a.impressions)
        open(stamp, "w").close()
    spec = os.path.join(d, "spec.toml")
    logs = {f: os.path.join(d, "log." + f) for f in ("tsv", "csv", "jsonl")}
    frozen = os.path.join(d, "spec.frozen.json")
    lines = sum(1 for _ in open(logs["tsv"])) - 1
    print("warm-up (numba compile, cached afterwards) ...", flush=True)
    run(["fit", "--spec", spec, "-o", frozen, "--input", logs["tsv"]])
    run(["rank", "--spec", frozen, "--input", logs["tsv"], "-o", os.path.join(d, "warm.txt")])
    n_feats = len(USER_FIELDS) + len(ITEM_FIELDS) + len(CTX_FIELDS)
    print("\nfm_sample on %s impressions; spec: %d base fields, %d crosses, 1 overlap; 100k users, 200k items"
          % ("{:,}".format(lines), n_feats, len(CROSSES)))
    print("best of %d runs, one process each, tables loaded in each run\n" % a.repeat)
    print("impressions/s: the whole process (what a user sees); streamed: less the empty-log run's start-up")
    print("%-44s %9s %14s %14s %12s" % ("command", "seconds", "impressions/s", "streamed /s", "bytes/line"))
    rows = []
    load = best(["rank", "--spec", frozen, "--input", os.devnull, "-o", os.path.join(d, "empty.txt")], a.repeat)
    rows.append(("rank, empty log (start-up + table load)", load, None, None, None))
    for fmt in ("tsv", "csv", "jsonl"):
        out = os.path.join(d, "rank.%s.txt" % fmt)
        t = best(["rank", "--spec", frozen, "--input", logs[fmt], "-o", out, "--format", fmt], a.repeat)
        size = os.path.getsize(out)
        rows.append(("rank --negatives all, %s" % fmt, t, lines / t, lines / max(t - load, 1e-9), size / lines))
    out = os.path.join(d, "rank.sa.txt")
    t = best(["rank", "--spec", frozen, "--input", logs["tsv"], "-o", out, "--negatives", "skip-above+2",
              "--neg-rate", "0.5"], a.repeat)
    rows.append(("rank --negatives skip-above+2 --neg-rate 0.5", t, lines / t, lines / max(t - load, 1e-9), None))
    t = best(["fit", "--spec", spec, "-o", frozen, "--input", logs["tsv"]], a.repeat)
    rows.append(("fit (14 learned: edges + vocabularies), tsv", t, lines / t, None, None))
    for label, secs, rate, streamed, bpl in rows:
        print("%-44s %9.2f %14s %14s %12s" % (label, secs, "{:,.0f}".format(rate) if rate else "",
                                               "{:,.0f}".format(streamed) if streamed else "",
                                               "%.0f" % bpl if bpl else ""))
    piped_table(frozen, logs, lines, max(a.repeat, 5))
    rq, it = bench_online(frozen)
    print("\nonline Featurizer.featurize (Python dicts, 20 items a request, profiles joined by key): "
          "%s requests/s, %s items/s" % ("{:,.0f}".format(rq), "{:,.0f}".format(it)))


if __name__ == "__main__":
    main()
