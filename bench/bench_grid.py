#!/usr/bin/env python3
"""One-read tuning and passes without re-reading text (issue 15), timed.

On the bench_train data (generated deterministically by bench_train.py's
generator), prints one table:

- a 6-setting grid (``fm_train --grid 'v_alpha=0.02,0.05,0.1 w_l2=1,5'``, one
  run) against the same 6 settings run one by one (input piped through cat);
- ``fm_train --passes 3`` (pass 1 parses and writes the block cache, passes 2
  and 3 read it) against ``cat x3 | fm_train`` (the text parsed three times);
- with ``--ab CHECKOUT``: one-pass fm_train samples/s of this checkout against
  another (e.g. main), interleaved A/B/A/B..., ``--ab-runs`` each, through
  PYTHONPATH with this interpreter.

Times are wall seconds of whole commands (start-up included). The machine is
shared: read the ratios.

    python bench/bench_grid.py --lines 300000
    python bench/bench_grid.py --lines 300000 --ab /work/main
"""

import argparse
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_train import bench_data, grab, machine, run, test_metrics, tool  # noqa: E402

GRID = "v_alpha=0.02,0.05,0.1 w_l2=1,5"
SETTINGS = [("0.02", "1"), ("0.02", "5"), ("0.05", "1"), ("0.05", "5"), ("0.1", "1"), ("0.1", "5")]


def shell(cmd):
    """(wall seconds, CPU seconds of every process of it, stderr) of a shell pipeline (fails loudly).

    CPU seconds (user + system) hardly move with what else runs on a shared
    machine; wall seconds do."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit("failed (%d): %s\n%s" % (p.returncode, cmd, p.stderr.decode()))
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, p.stderr.decode()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def one_pass_rate(checkout, train, out):
    """samples/s of a one-pass fm_train of ``checkout`` (PYTHONPATH) with this interpreter."""
    code = "import sys; from streamfm.cli import fm_train; sys.argv[0] = 'fm_train'; fm_train()"
    _, _, err = shell("cat %s | PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=%s %s -c \"%s\" -m %s -mf bin -dim 1,1,8 -core 1" % (
        train, checkout, sys.executable, code, out))
    return grab(r"samples/s\s+([0-9,]+)", err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=300_000, help="training lines (default 300,000)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the data files go")
    ap.add_argument("--cores", type=int, default=1, help="-core of every run (default 1)")
    ap.add_argument("--ab", metavar="CHECKOUT", help="compare one-pass speed with this checkout (e.g. /work/main)")
    ap.add_argument("--ab-runs", type=int, default=3, help="A/B runs of each (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each grid/passes timing (default 3)")
    args = ap.parse_args()

    train, test = bench_data(args.data, args.lines, 200_000)
    out = os.path.join(args.data, "out_grid")
    os.makedirs(out, exist_ok=True)
    ft = tool("fm_train")
    core = "-core %d" % args.cores
    run([ft, "-m", os.path.join(out, "warm.txt"), "-q", "--passes", "2", "--holdout-every", "2",
         "--grid", "w_l2=1,2"], train)  # every kernel compiled and cached before timing

    print("# one-read tuning and passes")
    print()
    print("machine: %s" % machine())
    print("data: %s training lines (%.0f MB), -dim 1,1,8 %s; %s" % (
        format(args.lines, ","), os.path.getsize(train) / 1e6, core, time.strftime("%Y-%m-%d %H:%M")))
    print()

    # --- grid vs one by one, passes: cache vs text re-read; interleaved, medians ---
    runs = {"grid": [], "one by one": [], "cache": [], "cat x3": []}
    err = ""
    for _ in range(args.reps):
        w, c, err = shell("cat %s | %s -m %s/best.txt -mf bin %s --grid '%s' --grid-out %s/grid" % (
            train, ft, out, core, GRID, out))
        runs["grid"].append((w, c))
        w = c = 0.0
        for va, l2 in SETTINGS:
            w1, c1, _ = shell("cat %s | %s -m %s/one.bin -mf bin %s -v_alpha %s -w_l2 %s -q" % (
                train, ft, out, core, va, l2))
            w, c = w + w1, c + c1
        runs["one by one"].append((w, c))
        w, c, err_c = shell("%s --input %s -m %s/p3.bin -mf bin %s --passes 3" % (ft, train, out, core))
        runs["cache"].append((w, c))
        w, c, _ = shell("cat %s %s %s | %s -m %s/c3.bin -mf bin %s -q" % (train, train, train, ft, out, core))
        runs["cat x3"].append((w, c))
    med = {k: (median([w for w, _ in v]), median([c for _, c in v])) for k, v in runs.items()}
    best = [ln for ln in err.splitlines() if ln.startswith("  * ")]
    print("median of %d interleaved runs; CPU s = user + system of every process (steadier than wall "
          "on a shared machine)" % args.reps)
    print()
    print("| run | wall s | CPU s | wall ratio | CPU ratio |")
    print("|---|---|---|---|---|")
    for name, base, label in (
            ("one by one", "one by one", "6 settings, one by one (6 x `cat | fm_train`)"),
            ("grid", "one by one", "`fm_train --grid '%s'` (one read)" % GRID),
            ("cat x3", "cat x3", "3 passes, text re-read (`cat x3 | fm_train`)"),
            ("cache", "cat x3", "`fm_train --passes 3` (block cache)")):
        print("| %s | %.1f | %.1f | %.2f | %.2f |" % (label, med[name][0], med[name][1], med[name][0] / med[base][0],
                                                     med[name][1] / med[base][1]))
    passes = [ln.strip() for ln in err_c.splitlines() if ln.startswith("  pass ")]
    ll3, auc3 = test_metrics(os.path.join(out, "p3.bin"), test, args.cores)
    llc, aucc = test_metrics(os.path.join(out, "c3.bin"), test, args.cores)
    print()
    print("best grid setting: %s" % (" ".join(best[0].split()) if best else "?"))
    print("--passes 3, last run: %s" % "; ".join(" ".join(p.split()) for p in passes))
    print("test logloss/AUC after 3 passes: cache %.6f / %.6f, cat x3 %.6f / %.6f (the same model with "
          "-core 1)" % (ll3, auc3, llc, aucc))
    sys.stdout.flush()

    # --- one-pass speed A/B ----------------------------------------------------
    if args.ab:
        print()
        print("| one pass, samples/s | %s |" % " | ".join("run %d" % (i + 1) for i in range(args.ab_runs)))
        print("|---|%s" % ("---|" * args.ab_runs))
        rates = {TOP: [], args.ab: []}
        for _ in range(args.ab_runs):
            for c in (args.ab, TOP):
                rates[c].append(one_pass_rate(c, train, os.path.join(out, "ab.bin")))
        for c in (args.ab, TOP):
            print("| %s | %s |" % (c, " | ".join(format(int(r), ",") for r in rates[c])))
        med = {c: sorted(r)[len(r) // 2] for c, r in rates.items()}
        print()
        print("median ratio (this / %s): %.3f" % (args.ab, med[TOP] / med[args.ab]))


if __name__ == "__main__":
    main()
