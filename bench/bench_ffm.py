#!/usr/bin/env python3
"""Field-aware FM against FM where the interactions depend on the field pair (issue 15 item 1).

Generates (deterministically, numpy seed 0) lines of four fields, user (300
values), item (300), hour (24) and dev (6), labelled by a random FFM with
k = 4 (w ~ N(0, 0.3), v ~ N(0, 0.7), bias -1): an FM's one vector per
feature cannot give a user different factors against items and against
hours, an FFM can. Trains fm_train --model fm and --model ffm (--max-fields
4) for each k and pass count, scores the test set with fm_predict --metrics,
and prints one table: test logloss and AUC, one-pass samples/s (whole
commands on a shared machine: read the ratios), and the true model's test
logloss.

    python bench/bench_ffm.py --train 300000 --test 50000 --ks 4,8 --passes 1,3
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

FIELDS = ["user", "item", "hour", "dev"]
CARD = [300, 300, 24, 6]


def truth(k=4, seed=0):
    rng = np.random.default_rng(seed)
    v = [rng.normal(0, 0.7, (c, len(FIELDS), k)) for c in CARD]
    w = [rng.normal(0, 0.3, c) for c in CARD]
    return w, v


def lines(n, seed, w, v):
    """(text, true probabilities) of n lines."""
    r = np.random.default_rng(seed)
    idx = [r.integers(0, c, n) for c in CARD]
    s = np.full(n, -1.0)
    for a in range(len(FIELDS)):
        s += w[a][idx[a]]
        for b in range(a + 1, len(FIELDS)):
            s += np.einsum("nd,nd->n", v[a][idx[a], b], v[b][idx[b], a])
    p = 1 / (1 + np.exp(-s))
    y = r.random(n) < p
    text = "".join("%d %s\n" % (y[i], " ".join("%s=%d" % (FIELDS[a], idx[a][i]) for a in range(len(FIELDS))))
                   for i in range(n))
    ll = -np.mean(np.where(y, np.log(p), np.log(1 - p)))
    return text, ll


def tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=300000)
    ap.add_argument("--test", type=int, default=50000)
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--passes", default="1,3")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    w, v = truth()
    with tempfile.TemporaryDirectory(prefix="bench-ffm-") as d:
        tr, te = os.path.join(d, "train.txt"), os.path.join(d, "test.txt")
        open(tr, "w").write(lines(args.train, 1, w, v)[0])
        text, best = lines(args.test, 2, w, v)
        open(te, "w").write(text)
        print("| model | passes | test logloss | test AUC | samples/s (pass 1) |")
        print("| --- | --- | --- | --- | --- |")
        for kind in ("fm", "ffm"):
            for k in args.ks.split(","):
                for passes in args.passes.split(","):
                    m = os.path.join(d, "m.bin")
                    extra = ["--max-fields", "4"] if kind == "ffm" else []
                    t = subprocess.run([tool("fm_train"), "--model", kind, *extra, "-dim", "1,1," + k, "-m", m,
                                        "-mf", "bin", "--input", tr, "-core", str(args.cores),
                                        "--passes", passes], capture_output=True, text=True, check=True)
                    rate = re.search(r"samples/s\s+([\d,]+)", t.stderr).group(1)
                    p = subprocess.run([tool("fm_predict"), "-m", m, "--input", te, "-out", os.devnull,
                                        "--metrics"], capture_output=True, text=True, check=True)
                    ll, auc = re.search(r"logloss ([\d.]+)\s+auc ([\d.]+)", p.stderr).groups()
                    print("| %s k=%s | %s | %s | %s | %s |" % (kind.upper(), k, passes, ll, auc,
                                                             rate if passes == "1" else ""))
        print("\ntrue model's test logloss: %.4f" % best)


if __name__ == "__main__":
    main()
