#!/usr/bin/env python3
"""Exact top-N against faiss HNSW and IVF on 1,000,000 items at dim 16 (issue 12 item 4).

The index is ``bench_serve.py``'s synthetic recall set (a k=16 model and its
1M-item index, made once into bench/data/out). Queries are u2i user vectors
``[V_U, 1]`` of random users. For each backend it prints the build time, the
memory the search structure holds, queries/s (one query a call, as a server
answers them, and batches of 256) and recall@100 against the exact answer,
then the same figures projected to 10M items.

    python bench/bench_ann.py                  # 1M items, 1,000 queries
    python bench/bench_ann.py --queries 300    # quicker
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_serve import recall_set  # noqa: E402
from bench_train import machine  # noqa: E402


def queries(model_path, n, seed=2):
    from streamfm import FM
    from streamfm.recall.embed import embed, query_vectors
    from streamfm.recall.records import RecordReader
    from streamfm.train import Options
    import io
    from streamfm import parse

    rng = np.random.default_rng(seed)
    lines = b"".join(b"u%d user=u%d age=a%d city=c%d\n" % (i, rng.integers(100_000), rng.integers(8),
                                                            rng.integers(300)) for i in range(n))
    sm = FM.load(model_path).serving_model()
    recs = RecordReader(io.BytesIO(lines), parse.KEYED, Options(quiet=True), print, "queries",
                        table=sm.table).read_all()
    vec, _own, _ = embed(recs, sm.weights, sm.k)
    return query_vectors(vec, "ip", True)


def timed_search(s, qs, topn, batch):
    t0 = time.perf_counter()
    out = []
    for i in range(0, qs.shape[0], batch):
        out.append(s.search(qs[i:i + batch], topn)[0])
    return np.concatenate(out), qs.shape[0] / (time.perf_counter() - t0)


def recall_at(got, want):
    n = want.shape[1]
    return float(np.mean([len(set(g[g >= 0]) & set(w)) / n for g, w in zip(got, want)]))


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--topn", type=int, default=100)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()

    from streamfm import Recall
    from streamfm.recall.ann import AnnSearcher
    from streamfm.recall.index import Searcher

    model, path = recall_set(args.data)
    index = Recall.load_index(path)
    qs = queries(model, args.queries)
    n, d = index.vectors.shape
    print("# exact vs ANN top-%d, u2i, %s items, dim %d (+1 bias column), %d queries, %d threads"
          % (args.topn, format(n, ","), d - 1, qs.shape[0], args.cores))
    print()
    print("machine: %s; %s" % (machine(), time.strftime("%Y-%m-%d %H:%M")))
    print()
    print("| backend | build s | memory MB | q/s, 1 a call | q/s, 256 a call | recall@%d |" % args.topn)
    print("|---|---|---|---|---|---|")
    t0 = time.time()
    m0 = rss_mb()
    exact = Searcher(index, True, "ip", args.cores)
    t_exact = time.time() - t0
    mem_exact = (index.vectors.nbytes + exact.xt.nbytes) / 2 ** 20
    single = qs[: max(50, args.queries // 5)]
    want, qps_b = timed_search(exact, qs, args.topn, 256)
    _, qps_1 = timed_search(exact, single, args.topn, 1)
    rows = [("exact (numba, float32 tiles + float64 check)", t_exact, mem_exact, qps_1, qps_b, 1.0)]
    print("| %s | %.2f | %.0f | %.0f | %.0f | %.4f |" % rows[-1])
    sys.stdout.flush()
    configs = [("hnsw", dict(m=16, ef_construction=40, ef_search=64)),
               ("hnsw", dict(m=16, ef_construction=40, ef_search=256)),
               ("ivf", dict(nlist=1024, nprobe=16)),
               ("ivf", dict(nlist=1024, nprobe=64))]
    built = {}
    for kind, params in configs:
        key = (kind, params.get("m"), params.get("nlist"))
        m0 = rss_mb()
        if key in built:
            s, t_build, mem = built[key]
            if kind == "hnsw":
                s.faiss_index.hnsw.efSearch = params["ef_search"]
            else:
                s.faiss_index.nprobe = params["nprobe"]
        else:
            built.clear()  # one faiss index in memory at a time
            s = AnnSearcher(index, True, "ip", kind=kind, cores=args.cores, **params)
            t_build = s.build_seconds
            mem = s.memory_bytes() / 2 ** 20
            built[key] = (s, t_build, mem)
        got, qps_b = timed_search(s, qs, args.topn, 256)
        _, qps_1 = timed_search(s, single, args.topn, 1)
        label = "%s %s" % (kind, " ".join("%s=%s" % kv for kv in params.items()))
        rows.append((label, t_build, mem, qps_1, qps_b, recall_at(got, want)))
        print("| %s | %.2f | %.0f | %.0f | %.0f | %.4f |" % rows[-1])
        sys.stdout.flush()
    print()
    print("Projected to 10M items (same dim; exact and IVF scans grow linearly, HNSW's build as n log n "
          "and its search as log n; IVF with nlist ~ sqrt(n) = 3,162: build as n x nlist, and the same nprobe "
          "scans sqrt(10) times more rows a query):")
    print()
    print("| backend | build s | memory MB | q/s, 1 a call | q/s, 256 a call |")
    print("|---|---|---|---|---|")
    logf = np.log(10e6) / np.log(1e6)
    for label, tb, mem, q1, qb, _r in rows:
        if label.startswith("exact"):
            f_build, f_q = 10, 10
        elif label.startswith("hnsw"):
            f_build, f_q = 10 * logf, logf
        else:
            f_build, f_q = 10 * np.sqrt(10), np.sqrt(10)  # n x nlist assignments; n / nlist rows a cell
        print("| %s | %.0f | %.0f | %.0f | %.0f |" % (label, tb * f_build, mem * 10, q1 / f_q, qb / f_q))


if __name__ == "__main__":
    main()
