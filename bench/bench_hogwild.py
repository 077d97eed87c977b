#!/usr/bin/env python3
"""`-core 1` against `-core 2`, alternately, with a control (issue 16).

On bench_train.py's 1M-line data (generated if missing), each round runs:

1. `fm_train -core 1`;
2. `fm_train -core 2`;
3. the control: two independent `fm_train -core 1` processes started
   together. If each keeps (within 10%) the user+sys time of the round's
   single `-core 1` run, the hardware could run two threads at full speed in
   that round, and any extra CPU `-core 2` spent is streamfm's own (threads
   fighting over shared cache lines, not a busy or throttled machine).

It prints wall and user+sys seconds of every run, the `-core 2` / `-core 1`
CPU ratio and the wall speed-up per round, and their medians and worst
cases over all rounds and over the rounds whose control held. Every run
reads the file through `cat`, as users pipe it. Beside the wall time of the
process it prints the training's own (fm_train's "done after": the pass,
without the start-up and the model writing that every run pays once, one
thread at a time), and at the end the test logloss on bench_train.py's 200k
test lines of the `-core 1` model (deterministic) and of every round's
`-core 2` model (Hogwild's order varies from run to run): their mean and range.

    python bench/bench_hogwild.py                 # 10 rounds, 1M lines, -dim 1,1,8 -mf bin
    python bench/bench_hogwild.py --rounds 4 --lines 300000
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_train import bench_data, machine, tool  # noqa: E402


def start(cores, data, model):
    cat = subprocess.Popen(["cat", data], stdout=subprocess.PIPE)
    # not -q: the closing report says how long the training itself took
    p = subprocess.Popen([tool("fm_train"), "-m", model, "-mf", "bin", "-dim", "1,1,8", "-core", str(cores),
                          "--progress-every", "3600"],
                         stdin=cat.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cat.stdout.close()
    return p, cat, time.time()


def finish(run):
    """(wall s, user+sys s, training s) of a started run (fm_train alone: cat's CPU is not
    counted; training s: fm_train's "done after", the pass without start-up and model writing)."""
    p, cat, t0 = run
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    cat.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("fm_train failed: %s" % err)
    done = re.search(r"done after ([0-9.]+) s", err)
    return wall, ru.ru_utime + ru.ru_stime, float(done.group(1)) if done else float("nan")


def test_logloss(model, test):
    """Logloss of ``model`` on the labelled lines of ``test`` (fm_predict's 'label score' lines)."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        with open(test, "rb") as inp:
            subprocess.run([tool("fm_predict"), "-m", model, "-out", out.name, "-q"], stdin=inp,
                           check=True, stderr=subprocess.DEVNULL)
        y, p = np.loadtxt(out.name, unpack=True)
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y > 0, np.log(p), np.log(1 - p))))


def summary(label, rows):
    if not rows:
        print("| %s | 0 rounds | | | | | | |" % label)
        return
    ratio = [r["c2_cpu"] / r["c1_cpu"] for r in rows]
    speed = [r["c1_wall"] / r["c2_wall"] for r in rows]
    train = [r["c1_train"] / r["c2_train"] for r in rows]
    print("| %s | %d | %.2f | %.2f | %.2fx | %.2fx | %.2fx | %.2fx |" % (
        label, len(rows), statistics.median(ratio), max(ratio), statistics.median(speed), min(speed),
        statistics.median(train), min(train)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--test-lines", type=int, default=200_000, help="test set for the quality line (0: none)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the data file is (made if missing)")
    args = ap.parse_args()
    data, test = bench_data(args.data, args.lines, args.test_lines)
    print("# -core 1 against -core 2, alternately, with a control")
    print()
    print("machine: %s; %s; load average %s" % (machine(), time.strftime("%Y-%m-%d %H:%M"),
                                               " ".join("%.2f" % x for x in os.getloadavg())))
    print("`cat %s | fm_train -m M -mf bin -dim 1,1,8 -core N`; training s: fm_train's own \"done after\" "
          "(the pass, without start-up and model writing)" % os.path.basename(data))
    print()
    print("| round | -core 1 wall s | user+sys s | training s | -core 2 wall s | user+sys s | training s "
          "| CPU ratio | wall speed-up | training speed-up | control: two -core 1 together, user+sys s "
          "| control held |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, quality = [], []
    with tempfile.TemporaryDirectory(prefix="streamfm-hogwild-") as d:
        m = [os.path.join(d, "m%d.bin" % i) for i in range(4)]
        finish(start(1, data, m[0]))  # kernels compiled or loaded, the file in the page cache
        for i in range(1, args.rounds + 1):
            c1_wall, c1_cpu, c1_train = finish(start(1, data, m[0]))
            c2_wall, c2_cpu, c2_train = finish(start(2, data, m[3]))
            a, b = start(1, data, m[1]), start(1, data, m[2])
            ctl = [finish(a)[1], finish(b)[1]]
            held = all(abs(c - c1_cpu) <= 0.1 * c1_cpu for c in ctl)
            rows.append(dict(c1_wall=c1_wall, c1_cpu=c1_cpu, c1_train=c1_train, c2_wall=c2_wall, c2_cpu=c2_cpu,
                             c2_train=c2_train, held=held))
            if test:
                # -core 1 is deterministic, -core 2 is not: every round's -core 2 model is scored
                quality.append(test_logloss(m[3], test))
            print("| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2fx | %.2fx | %.2f / %.2f | %s |" % (
                i, c1_wall, c1_cpu, c1_train, c2_wall, c2_cpu, c2_train, c2_cpu / c1_cpu, c1_wall / c2_wall,
                c1_train / c2_train, ctl[0], ctl[1], "yes" if held else "no"))
            sys.stdout.flush()
        base_ll = test_logloss(m[0], test) if test else None
    print()
    print("| rounds | n | CPU ratio median | CPU ratio worst | wall speed-up median | worst "
          "| training speed-up median | worst |")
    print("|---|---|---|---|---|---|---|---|")
    summary("all", rows)
    summary("control held", [r for r in rows if r["held"]])
    print()
    if quality:
        d = [q - base_ll for q in quality]
        print("test logloss (%s lines): -core 1 %.5f; -core 2, each round's model: mean %.5f (difference %+.5f), "
              "from %+.5f to %+.5f" % (format(args.test_lines, ","), base_ll, statistics.mean(quality),
                                       statistics.mean(d), min(d), max(d)))
    print("Targets (issue 16), over the rounds whose control held: CPU ratio <= 1.1 in every one; wall "
          "speed-up median >= 1.7x, worst >= 1.5x; -core 2 within 0.001 test logloss of -core 1.")


if __name__ == "__main__":
    main()
