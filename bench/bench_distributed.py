#!/usr/bin/env python3
"""Quality of the distributed merge, and throughput of the Dask driver (issue 14).

On the bench's 1M-line CTR set (bench_train.py's data, generated if missing):

1. Quality: one sequential model on all lines against the distributed driver
   (streamfm.distributed.train, in process: the same model Dask and Spark
   build on the same split) at 2, 4 and 8 partitions, on random splits
   (each line to a random partition, file order kept within one) and
   contiguous ones (consecutive chunks), with the settings tried: cold
   (one merge at the end, no warm start), warm start, sync rounds, and the
   weighting of the merge. Test logloss / AUC on the 200k held-out lines.
   The data are i.i.d., so the file's order is one draw among many: the
   bench also trains sequential models on ``--orders`` random orders of the
   same lines (their spread is the noise floor of any one gap), and, per
   run, one sequential model on the very order the run's rounds consume
   the lines (the heads interleaved, then each round's ranges one partition
   after another): the run against it is what the merge itself costs.
2. Throughput of streamfm.dask.train on a LocalCluster of 1 and of 2
   single-threaded worker processes (lines/s, wall time including the
   merges and the model's trips between processes).
3. Speed of the merge of whole models: two binary models trained on the
   halves of the file from a shared warm start (the 1.1M features of the
   set), merged by ``fm_dump merge`` (wall, and its own read+merge figure)
   and in process (the reduction alone, models already in memory).

    python bench/bench_distributed.py                  # everything
    python bench/bench_distributed.py --part quality   # or: --part dask, --part merge
    python bench/bench_distributed.py --lines 200000   # quicker
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_train import bench_data, machine, run, tool  # noqa: E402

import streamfm  # noqa: E402
from streamfm import distributed  # noqa: E402

FM_PARAMS = dict(k=8, seed=1)


def read_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def split(lines, parts, how, seed=1):
    if how == "contiguous":
        bounds = np.linspace(0, len(lines), parts + 1).astype(np.int64)
        return [lines[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    owner = np.random.default_rng(seed).integers(0, parts, len(lines))
    return [[lines[i] for i in np.flatnonzero(owner == p)] for p in range(parts)]


def score(fm, test):
    fm.predict_proba(test, cores=2)
    r = fm.last_report
    return r.logloss, r.auc


SETTINGS = {
    # name: (warm_start lines at 1M, rounds after the warm start (None: one merge), merge rule)
    "cold, mean": (0, None, "dn"),
    "warm 100k, mean": (100_000, None, "dn"),
    "warm 100k, 10 rounds, mean": (100_000, 10, "dn"),
    "warm 100k, 10 rounds, sum": (100_000, 10, "sum"),
    "warm 100k, 10 rounds, blend-each": (100_000, 10, "blend-each"),
    "warm 100k, 30 rounds, blend": (100_000, 30, "blend"),
    "warm 100k, 50 rounds, blend": (100_000, 50, "blend"),
    "warm 100k, 100 rounds, blend": (100_000, 100, "blend"),
    "warm 100k, 200 rounds, blend": (100_000, 200, "blend"),
    "warm 100k, 400 rounds, blend": (100_000, 400, "blend"),
    "warm 100k, 30 rounds, blend-each": (100_000, 30, "blend-each"),
    "warm 100k, 30 rounds, mean": (100_000, 30, "dn"),
}
MAIN = "warm 100k, 30 rounds, blend"


def consumed_order(data, plan, warm):
    """The lines in the order a run of ``plan`` trains them: the warm start's heads
    interleaved (one stream), then each round's ranges one partition after another."""
    rounds = plan
    order = []
    if warm:
        order += distributed.interleave([data[p][a:b] for p, a, b in plan[0]])
        rounds = plan[1:]
    for tasks in rounds:
        for p, a, b in tasks:
            order += data[p][a:b]
    return order


def quality(args, train, test):
    lines = read_lines(train)
    test_lines = read_lines(test)
    n = len(lines)
    scale = n / 1_000_000
    t0 = time.time()
    seq = streamfm.FM(**FM_PARAMS)
    seq.partial_fit(lines)
    t_seq = time.time() - t0
    ll0, auc0 = score(seq, test_lines)
    print("## Quality: distributed merge against one sequential model")
    print()
    print("one sequential model (FM.partial_fit, 1 thread, %s lines, %.1f s): test logloss %.4f, AUC %.4f"
          % (format(n, ","), t_seq, ll0, auc0))
    print()
    mean_orders = ll0
    if args.orders:
        lls = []
        for seed in range(1, args.orders + 1):
            idx = np.random.default_rng(seed).permutation(n)
            fm = streamfm.FM(**FM_PARAMS)
            fm.partial_fit([lines[i] for i in idx])
            lls.append(score(fm, test_lines)[0])
        mean_orders = float(np.mean(lls))
        print("the same lines in %d random orders (seeds 1-%d), one sequential model each: test logloss mean "
              "%.4f, sd %.4f, from %.4f to %.4f (%s)" % (len(lls), len(lls), mean_orders,
                                                         float(np.std(lls, ddof=1)) if len(lls) > 1 else 0.0,
                                                         min(lls), max(lls), ", ".join("%.4f" % v for v in lls)))
        print()
    print("gap: to the file-order model; to the mean over orders; merge's cost: to one sequential model on the "
          "order the run consumes the lines")
    print()
    print("| split | partitions | setting | rounds | test logloss | gap | gap to the mean over orders "
          "| same order, sequential | merge's cost | test AUC | seconds (2 threads) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    seeds = args.split_seeds
    runs = [(how, parts, args.main, seed) for how in args.splits for parts in args.parts
            for seed in (seeds if how == "random" else seeds[:1])]
    runs += [("random", 4, name, seeds[0]) for name in args.settings if name != args.main or 4 not in args.parts]
    cache = {}
    gaps = {}
    for how, parts, name, seed in runs:
        if (how, parts, seed) not in cache:
            cache.clear()
            cache[(how, parts, seed)] = split(lines, parts, how, seed)
        data = cache[(how, parts, seed)]
        warm, rounds, rule = SETTINGS[name]
        warm = int(warm * scale)
        per_part = (n - warm) / parts
        sync = None if rounds is None else max(1, int(np.ceil(per_part / rounds)))
        t0 = time.time()
        fm = distributed.train(data, sync_every=sync, warm_start=warm, threads=2, rule=rule, **FM_PARAMS)
        secs = time.time() - t0
        ll, auc = score(fm, test_lines)
        plan = distributed.plan_rounds([len(d) for d in data], sync, warm)
        same = streamfm.FM(**FM_PARAMS)
        same.partial_fit(consumed_order(data, plan, warm))
        ll_same = score(same, test_lines)[0]
        label = how if how == "contiguous" or len(seeds) == 1 else "%s, seed %d" % (how, seed)
        print("| %s | %d | %s | %d | %.4f | %+.4f | %+.4f | %.4f | %+.4f | %.4f | %.1f |" % (
            label, parts, name, len(plan), ll, ll - ll0, ll - mean_orders, ll_same, ll - ll_same, auc, secs))
        sys.stdout.flush()
        gaps.setdefault((how, parts, name), []).append((ll - ll0, ll - mean_orders, ll - ll_same))
    print()
    several = {key: np.array(g) for key, g in gaps.items() if len(g) > 1}
    if several:
        # one split is one draw of the partitions' orders: the mean over split seeds is the gap to expect
        print("over the split seeds %s: mean (standard error of the mean)" % ", ".join(map(str, seeds)))
        print()
        print("| split | partitions | setting | runs | gap (file order) | gap to the mean over orders "
              "| merge's cost |")
        print("|---|---|---|---|---|---|---|")
        for (how, parts, name), g in several.items():
            cells = ["%+.4f (%.4f)" % (g[:, j].mean(), g[:, j].std(ddof=1) / np.sqrt(len(g))) for j in range(3)]
            print("| %s | %d | %s | %d | %s |" % (how, parts, name, len(g), " | ".join(cells)))
        print()


def dask_throughput(args, train):
    from dask import bag as db
    from distributed import Client, LocalCluster

    import streamfm.dask as sfd

    n = sum(1 for _ in open(train, "rb"))
    print("## Dask driver throughput (streamfm.dask.train, %s lines, %d partitions, %s)"
          % (format(n, ","), args.dask_partitions,
             "one merge" if args.dask_rounds is None else "%d rounds" % args.dask_rounds))
    print()
    print("| workers | wall s | lines/s | vs. FM.partial_fit, 1 thread |")
    print("|---|---|---|---|")
    t0 = time.time()
    seq = streamfm.FM(**FM_PARAMS)
    seq.partial_fit(train)
    rate_seq = n / (time.time() - t0)
    print("| (in process, FM.partial_fit) | %.1f | %s | 1.00x |" % (n / rate_seq, format(int(rate_seq), ",")))
    size = os.path.getsize(train)
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            bag = db.read_text(train, blocksize=size // args.dask_partitions + 1).persist()
            client.wait_for_workers(workers)
            # one small run loads the kernels in every worker (not timed)
            sfd.train(db.from_sequence([b"1 a:1 b:1", b"0 c:1"] * 4, npartitions=workers), client=client,
                      **FM_PARAMS)
            per_part = n / args.dask_partitions
            sync = None if args.dask_rounds is None else int(np.ceil(per_part / args.dask_rounds))
            t0 = time.time()
            fm = sfd.train(bag, client=client, sync_every=sync, warm_start=0, **FM_PARAMS)
            wall = time.time() - t0
            assert fm.last_report.lines == n
            print("| %d | %.1f | %s | %.2fx |" % (workers, wall, format(int(n / wall), ","),
                                                   (n / wall) / rate_seq))
            sys.stdout.flush()
    print()
    print("This machine has %d cores: 2 workers can at best double one worker's rate, less what the "
          "merges, the model's trips between processes and the scheduler take." % os.cpu_count())


def merge_speed(args, train):
    """fm_dump merge of two models of the set's halves, trained from one warm start."""
    from streamfm import merge

    out = os.path.join(args.data, "out")
    os.makedirs(out, exist_ok=True)
    lines = read_lines(train)
    warm, rest = lines[: len(lines) // 10], lines[len(lines) // 10:]
    base = os.path.join(out, "merge_base.bin")
    halves = [os.path.join(out, "merge_half%d.bin" % i) for i in (0, 1)]
    fm = streamfm.FM(**FM_PARAMS)
    fm.partial_fit(warm, cores=2)
    fm.save(base, "bin")
    for i, path in enumerate(halves):
        part = streamfm.FM.load(base, state=True)
        part.partial_fit(rest[i::2], cores=2)
        part.save(path, "bin")
    del lines, warm, rest, fm, part
    merged = os.path.join(out, "merge_out.bin")
    print("## Merge of whole models: `fm_dump merge --base BASE A B -o OUT`")
    print()
    print("| run | features | fm_dump merge wall s | its read+merge s | in process, FM objects: merge_models s |")
    print("|---|---|---|---|---|")
    models = [streamfm.FM.load(p, state=True) for p in halves]
    b = streamfm.FM.load(base, state=True)
    for run_no in range(1, 4):
        err, wall, _ = run([tool("fm_dump"), "merge", "--base", base] + halves + ["-o", merged])
        # fm_dump merge's summary line: "... (merge 1.23 s, total 1.50 s)"
        its = err.split("(merge ")[1].split(",")[0] if "(merge " in err else "?"
        t0 = time.time()
        m = merge.merge_models(models, base=b)
        t_in = time.time() - t0
        print("| %d | %s | %.2f | %s | %.2f |" % (run_no, format(m.n_features, ","), wall, its, t_in))
        sys.stdout.flush()
    os.unlink(merged)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="training lines (default 1,000,000)")
    ap.add_argument("--test-lines", type=int, default=200_000, help="held-out lines (default 200,000)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the data files are")
    ap.add_argument("--part", choices=["all", "quality", "dask", "merge"], default="all")
    ap.add_argument("--parts", type=int, nargs="*", default=[2, 4, 8],
                    help="partition counts of the splits x partitions table (none: only --settings)")
    ap.add_argument("--splits", nargs="+", default=["random", "contiguous"], choices=["random", "contiguous"])
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS),
                    metavar="SETTING", help="compared at 4 random partitions (the splits x partitions "
                    "table uses %r), of: %s" % (MAIN, "; ".join(SETTINGS)))
    ap.add_argument("--main", default=MAIN, choices=list(SETTINGS), metavar="SETTING",
                    help="the setting of the splits x partitions table (default %r)" % MAIN)
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[1], metavar="SEED",
                    help="random splits: one run of the main setting per seed, and their mean gaps (default 1)")
    ap.add_argument("--orders", type=int, default=5,
                    help="sequential models on that many random orders of the lines, for the noise floor "
                         "(default 5; 0: none)")
    ap.add_argument("--dask-partitions", type=int, default=8)
    ap.add_argument("--dask-rounds", type=int, default=None)
    args = ap.parse_args()

    train, test = bench_data(args.data, args.lines, args.test_lines)
    print("# streamfm distributed benchmark")
    print()
    print("machine: %s; %s" % (machine(), time.strftime("%Y-%m-%d %H:%M")))
    print("model: FM(%s), default FTRL hyper-parameters" % ", ".join("%s=%r" % kv for kv in FM_PARAMS.items()))
    print()
    if args.part in ("all", "quality"):
        quality(args, train, test)
    if args.part in ("all", "dask"):
        dask_throughput(args, train)
    if args.part in ("all", "merge"):
        merge_speed(args, train)


if __name__ == "__main__":
    main()
