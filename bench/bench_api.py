#!/usr/bin/env python3
"""The Python API's cost over the pipeline: one table, ratios to the same data as lines.

A CSR matrix (and the same rows as a dense array) is written as lines by a
numba kernel in the reader thread and trained through the one pipeline; the
question is what that costs against giving the lines themselves, and what
the API adds over fm_train. Deterministic data (24 one-hot fields of
Zipf-skewed ids + 2 numeric columns, like bench_train's), in this process.

    python bench/bench_api.py                # 1,000,000 rows
    python bench/bench_api.py --rows 200000  # quicker
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import streamfm  # noqa: E402
from streamfm.inputs import MatrixLines  # noqa: E402


def data(rows, seed=0):
    """(CSR parts, y, names, dense or None): 24 one-hot fields and 2 numeric columns."""
    rng = np.random.default_rng(seed)
    sizes = [10, 10, 20, 50, 100, 200, 500, 1000] * 3
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    cols = np.empty((rows, 26), np.int64)
    for f, size in enumerate(sizes):
        cols[:, f] = offsets[f] + np.minimum(rng.zipf(1.3, rows) - 1, size - 1)
    cols[:, 24] = offsets[-1]
    cols[:, 25] = offsets[-1] + 1
    vals = np.ones((rows, 26))
    vals[:, 24] = np.round(rng.random(rows), 4)
    vals[:, 25] = np.round(rng.gamma(2.0, 2.0, rows), 1)
    names = ["f%d_%d" % (f, i) for f, size in enumerate(sizes) for i in range(size)] + ["n0", "n1"]
    logit = vals[:, 24] - 0.3 * vals[:, 25] + (cols[:, 0] % 3 == 0) - 0.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    indptr = np.arange(0, 26 * rows + 1, 26, dtype=np.int64)
    return indptr, cols.reshape(-1), vals.reshape(-1), y, names


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--cores", type=int, default=1)
    args = ap.parse_args()
    import scipy.sparse as sp

    indptr, indices, values, y, names = data(args.rows)
    X = sp.csr_matrix((values, indices, indptr), shape=(args.rows, len(names)))
    hp = dict(k=8, seed=1)
    # every kernel loaded (or compiled) before anything is timed
    streamfm.FM(**hp).partial_fit(X[:100], y[:100], feature_names=names)
    streamfm.FM(**hp).partial_fit(X[:100].toarray(), y[:100], feature_names=names)
    t_fmt, text = timed(lambda: MatrixLines(X, y, names).read(1 << 62))
    print("rows %s, %d columns, %.0f MB as lines; formatting them alone: %.2f s (%.0f rows/s)"
          % ("{:,}".format(args.rows), len(names), len(text) / 1e6, t_fmt, args.rows / t_fmt))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "train.txt")
        with open(path, "wb") as f:
            f.write(text)
        runs = [("lines: a path", lambda fm: fm.partial_fit(path, cores=args.cores)),
                ("lines: bytes", lambda fm: fm.partial_fit(text, cores=args.cores)),
                ("CSR matrix", lambda fm: fm.partial_fit(X, y, feature_names=names, cores=args.cores))]
        m = min(args.rows, 50000)  # a dense array of all rows would not fit in memory
        dense = X[:m].toarray()
        runs.append(("dense array (first %s rows)" % "{:,}".format(m),
                     lambda fm: fm.partial_fit(dense, y[:m], feature_names=names, cores=args.cores)))
        models = {}
        for name, run in runs:
            fm = streamfm.FM(**hp)
            t, rep = timed(lambda: run(fm))
            if rep.samples == args.rows:
                models[name] = fm.training_model().params[: fm.n_features + 1].copy()
            rows.append((name, t, rep.samples))
        exe = os.path.join(os.path.dirname(sys.executable), "fm_train")
        t, _ = timed(lambda: subprocess.check_call([exe, "-m", os.path.join(d, "m.txt"), "-dim", "1,1,8",
                                                    "--seed", "1", "-core", str(args.cores), "-q",
                                                    "--input", path]))
        rows.append(("fm_train (process, incl. start, load, write)", t, args.rows))
    base = rows[0][1]
    print("%-46s %9s %12s %9s" % ("input", "seconds", "rows/s", "rows/s vs path"))
    for name, t, n in rows:
        print("%-46s %9.2f %12s %9.2f" % (name, t, "{:,.0f}".format(n / t), (n / t) / (args.rows / base)))
    first = next(iter(models.values()))
    print("identical models (all rows: path, bytes, CSR):",
          all(np.array_equal(first, m) for m in models.values()))


if __name__ == "__main__":
    main()
