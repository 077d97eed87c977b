#!/usr/bin/env python3
"""Throughput, memory and quality of fm_train / fm_predict (issue 4).

Generates the benchmark data deterministically (24 Zipf-skewed categorical
fields with string names + 2 numeric fields, ~229 bytes a line), then runs
the real commands as child processes, the input piped through `cat` as
users do, and prints one table. Speed is never bought with accuracy: every
run's model is scored on a held-out file.

    python bench/bench_train.py                 # 1,000,000 training lines
    python bench/bench_train.py --lines 200000  # quicker
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, TOP)


def tool(name):
    """The console script next to this interpreter, else the checkout's bin/."""
    p = os.path.join(os.path.dirname(sys.executable), name)
    return p if os.path.exists(p) else os.path.join(TOP, "bin", name)


def machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, Python %s, %s" % (cpu, os.cpu_count(), platform.python_version(), platform.system())


def ensure_data(path, lines, seed):
    # in a child: the generator's memory must not become this process's,
    # whose image every measured child starts from (ru_maxrss counts it)
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    subprocess.check_call([sys.executable, "-m", "streamfm.synth", "ctr", "--lines", str(lines),
                           "--seed", str(seed), "--out", tmp], cwd=TOP)
    os.replace(tmp, path)


def bench_data(data_dir, lines, test_lines):
    """(train, test) paths of the bench's generated data in ``data_dir``: ``lines``
    training lines (seed 1) and ``test_lines`` test lines (seed 2), each made if
    missing; test is None for 0 test lines."""
    train = os.path.join(data_dir, "ctr_train_%d.txt" % lines)
    ensure_data(train, lines, seed=1)
    if not test_lines:
        return train, None
    test = os.path.join(data_dir, "ctr_test_%d.txt" % test_lines)
    ensure_data(test, test_lines, seed=2)
    return train, test


def run(cmd, stdin_path=None):
    """(stderr text, wall seconds, peak RSS bytes) of a child; input piped through cat."""
    t0 = time.time()
    cat = subprocess.Popen(["cat", stdin_path], stdout=subprocess.PIPE) if stdin_path else None
    p = subprocess.Popen(cmd, stdin=cat.stdout if cat else subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if cat:
        cat.stdout.close()
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if cat:
        cat.wait()
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), err))
    return err, wall, ru.ru_maxrss * 1024


def grab(pattern, text, cast=float):
    m = re.search(pattern, text)
    return cast(m.group(1).replace(",", "")) if m else float("nan")


def test_metrics(model, test_path, cores=2):
    err, _, _ = run([tool("fm_predict"), "-m", model, "-out", os.devnull, "-core", str(cores),
                     "--metrics", "--input", test_path])
    return grab(r"logloss ([0-9.]+)", err), grab(r"auc ([0-9.]+)", err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="training lines (default 1,000,000)")
    ap.add_argument("--test-lines", type=int, default=200_000, help="held-out lines (default 200,000)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the data files go")
    ap.add_argument("--quick", action="store_true", help="only -dim 1,1,8 (core 1 and 2) and LR core 1")
    args = ap.parse_args()

    train, test = bench_data(args.data, args.lines, args.test_lines)
    out = os.path.join(args.data, "out")
    os.makedirs(out, exist_ok=True)
    size_mb = os.path.getsize(train) / 1e6

    # warm the numba cache and measure the baseline memory of a tiny run
    tiny = os.path.join(out, "tiny.txt")
    with open(tiny, "w") as f:
        f.write("1 a:1 b\n")
    run([tool("fm_train"), "-m", os.path.join(out, "tiny_model.txt"), "-q"], tiny)
    run([tool("fm_train"), "-m", os.path.join(out, "tiny_model.txt"), "-mnt", "float", "-q"], tiny)
    _, _, base_rss = run([tool("fm_train"), "-m", os.path.join(out, "tiny_model.txt"), "-q"], tiny)

    print("# streamfm training benchmark")
    print()
    print("machine: %s" % machine())
    print("data: %s training lines (%.0f MB), %s held-out lines; %s" % (
        format(args.lines, ","), size_mb, format(args.test_lines, ","), time.strftime("%Y-%m-%d %H:%M")))
    print("fm_train baseline peak RSS (1-line input): %.0f MB" % (base_rss / 1e6))
    print()
    print("| run | samples/s | write txt s | write bin s | peak RSS MB | bytes/feature | features "
          "| prog. logloss | test logloss | test AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs = [("1,1,0", 1, "double"), ("1,1,0", 2, "double"), ("1,1,4", 1, "double"), ("1,1,4", 2, "double"),
            ("1,1,8", 1, "double"), ("1,1,8", 2, "double"), ("1,1,8", 1, "float"), ("1,1,8", 2, "float")]
    if args.quick:
        runs = [("1,1,0", 1, "double"), ("1,1,8", 1, "double"), ("1,1,8", 2, "double")]
    models = {}
    for dim, cores, mnt in runs:
        mtxt = os.path.join(out, "m_%s_%d_%s.txt" % (dim.replace(",", ""), cores, mnt))
        mbin = mtxt[:-4] + ".bin"
        err, wall, rss = run([tool("fm_train"), "-m", mtxt, "-dim", dim, "-core", str(cores), "-mnt", mnt], train)
        rate = grab(r"samples/s\s+([0-9,]+)", err)
        feats = grab(r"features in model\s+([0-9,]+)", err, int)
        prog = grab(r"progressive logloss\s+([0-9.]+)", err)
        t_txt = grab(r"\(txt, ([0-9.]+) s\)", err)
        t_bin = float("nan")
        if cores == 1:
            err_b, _, _ = run([tool("fm_train"), "-m", mbin, "-mf", "bin", "-dim", dim, "-mnt", mnt], train)
            t_bin = grab(r"\(bin, ([0-9.]+) s\)", err_b)
            models[(dim, mnt)] = (mtxt, mbin)
        ll, auc = test_metrics(mtxt, test)
        print("| -dim %s -core %d%s | %s | %.2f | %s | %.0f | %.0f | %s | %.6f | %.6f | %.6f |" % (
            dim, cores, " -mnt float" if mnt == "float" else "", format(int(rate), ","), t_txt,
            "%.2f" % t_bin if t_bin == t_bin else "-", rss / 1e6, (rss - base_rss) / max(feats, 1),
            format(feats, ","), prog, ll, auc))
        sys.stdout.flush()

    print()
    print("| fm_predict (-dim 1,1,8 model, %s lines) | model load s | lines/s |" % format(args.test_lines, ","))
    print("|---|---|---|")
    mtxt, mbin = models[("1,1,8", "double")]
    for label, model in (("txt", mtxt), ("bin", mbin)):
        for cores in (1, 2):
            err, _, _ = run([tool("fm_predict"), "-m", model, "-out", os.devnull, "-core", str(cores)], test)
            print("| %s model, -core %d | %.2f | %s |" % (label, cores, grab(r"model load ([0-9.]+) s", err),
                                                      format(int(grab(r"([0-9,]+) lines/s", err)), ",")))
    # start-up: one line through fm_predict with a warm cache
    small = os.path.join(out, "tiny_model.txt")
    one = os.path.join(out, "one.txt")
    with open(one, "w") as f:
        f.write("1 a:1\n")
    times = []
    for _ in range(5):
        _, wall, _ = run([tool("fm_predict"), "-m", small, "-q"], one)
        times.append(wall)
    print()
    print("fm_predict start-up, one line, warm cache: %.2f s (best of 5; median %.2f s)" % (
        min(times), sorted(times)[2]))


if __name__ == "__main__":
    main()
