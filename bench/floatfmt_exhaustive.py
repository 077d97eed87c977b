#!/usr/bin/env python3
"""The checks streamfm/floatfmt.py's docstring claims, run at full size; prints a table.

Claims checked:

1. ``write_f32``: every positive finite float32 reads back to itself through
   a double (``np.float32(float(text))``) -- all 2,139,095,039 of them, in
   numba on every core (the reading side is ``parse_f64``, which is checked
   against ``float()`` by claim 3, and ``float()`` decides its SLOW cases).
2. ``write_f64`` prints the digits of Python's ``repr`` (integral values
   without ``.0``) and reads back bit for bit: N random doubles (the doc says
   60 million were checked; ``--doubles 60000000``), half uniform over all
   bit patterns, half FM weights and accumulators (1e-3..1e6, random signs).
3. ``parse_f64`` never returns OK with a value other than ``float()``'s:
   N random decimal strings of 1-25 significant digits and exponents across
   the double range; the SLOW share of 20+ digit strings is reported.
4. ``write_f32`` prints numpy's ``str(np.float32(x))`` digits (the shortest),
   but for the documented double-rounding exceptions: a random sample.

    python bench/floatfmt_exhaustive.py                  # everything, default sizes (~10-20 min)
    python bench/floatfmt_exhaustive.py --quick          # small sizes (a minute)
    python bench/floatfmt_exhaustive.py --skip-f32-all   # claims 2-4 only

It is not run in CI (tests/test_floatfmt.py checks samples of each claim).
"""

import argparse
import os
import sys
import threading
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamfm import floatfmt  # noqa: E402
from streamfm.floatfmt import OK, SLOW, parse_f64, write_f32, write_f64  # noqa: E402

F32_FIRST = 1                 # smallest positive subnormal
F32_END = 0x7F800000          # +inf: every bit pattern below it is a positive finite float32


@njit(cache=True, nogil=True)
def f32_roundtrip(xs, slow_out):
    """(failures, slow) over float32 values xs: write, parse as a double, round to float32."""
    buf = np.empty(48, np.uint8)
    bad = 0
    nslow = 0
    for i in range(xs.shape[0]):
        x = xs[i]
        n = write_f32(x, buf, 0)
        v, st = parse_f64(buf, 0, n)
        if st == SLOW:
            if nslow < slow_out.shape[0]:
                slow_out[nslow] = x
            nslow += 1
        elif st != OK or np.float32(v) != x:
            bad += 1
    return bad, nslow


@njit(cache=True, nogil=True)
def f64_write_parse(xs, out, ends):
    """Write every double into out (ends[i]: end of number i) and count parse-back mismatches."""
    pos = 0
    bad = 0
    for i in range(xs.shape[0]):
        start = pos
        pos = write_f64(xs[i], out, pos)
        ends[i] = pos
        v, st = parse_f64(out, start, pos)
        if st != OK or v != xs[i]:
            bad += 1
    return bad


def claim_f32_all(threads, limit=None):
    end = F32_END if limit is None else min(F32_END, F32_FIRST + limit)
    chunk = 1 << 24
    starts = list(range(F32_FIRST, end, chunk))
    totals = {"checked": 0, "bad": 0, "slow": 0, "slow_bad": 0}
    lock = threading.Lock()
    t0 = time.time()

    def work(mine):
        slow = np.empty(1 << 16, np.float32)
        for a in mine:
            b = min(end, a + chunk)
            xs = np.arange(a, b, dtype=np.uint32).view(np.float32)
            bad, nslow = f32_roundtrip(xs, slow)
            slow_bad = sum(1 for x in slow[:min(nslow, slow.shape[0])]
                           if np.float32(float(floatfmt.format_f32(x))) != x)
            with lock:
                totals["checked"] += b - a
                totals["bad"] += bad
                totals["slow"] += nslow
                totals["slow_bad"] += slow_bad

    f32_roundtrip(np.ones(1, np.float32), np.empty(1, np.float32))  # compile outside the clock
    ths = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for th in ths:
        th.start()
    while any(th.is_alive() for th in ths):
        for th in ths:
            th.join(10)
        sys.stderr.write("  float32: %.1f%% (%.0f s)\n" % (100.0 * totals["checked"] / (end - F32_FIRST),
                                                           time.time() - t0))
    return ("write_f32 -> double -> float32 == x, every positive finite float32"
            if limit is None else "write_f32 round trip, first %d positive float32" % limit,
            totals["checked"], totals["bad"] + totals["slow_bad"],
            "%d parsed via float()" % totals["slow"], time.time() - t0)


def random_doubles(n, rng):
    bits = rng.integers(0, 1 << 64, n // 2, dtype=np.uint64, endpoint=False)
    a = bits.view(np.float64)
    a = a[np.isfinite(a)]
    w = 10.0 ** rng.uniform(-3, 2, n // 4) * rng.choice([-1, 1], n // 4)
    acc = 10.0 ** rng.uniform(-2, 6, n - n // 2 - n // 4) * rng.choice([-1, 1], n - n // 2 - n // 4)
    return np.concatenate([a, w, acc])


def claim_f64_repr(n, rng, batch=1 << 20):
    t0 = time.time()
    checked = bad_rt = bad_repr = 0
    for start in range(0, n, batch):
        xs = random_doubles(min(batch, n - start), rng)
        out = np.empty(xs.shape[0] * 25, np.uint8)
        ends = np.empty(xs.shape[0], np.int64)
        bad_rt += f64_write_parse(xs, out, ends)
        text = out[: ends[-1]].tobytes().decode("ascii") if xs.shape[0] else ""
        begin = 0
        for x, e in zip(xs.tolist(), ends.tolist()):
            mine = text[begin:e]
            begin = e
            r = repr(x)
            if r.endswith(".0"):
                r = r[:-2]
            if mine != r:
                bad_repr += 1
        checked += xs.shape[0]
    return [("write_f64 digits == repr (integral: no .0)", checked, bad_repr, "", time.time() - t0),
            ("write_f64 -> parse_f64 bit for bit", checked, bad_rt, "", time.time() - t0)]


def claim_parse(n, rng):
    t0 = time.time()
    bad = slow = long_slow = long_total = 0
    for _ in range(n):
        nd = int(rng.integers(1, 26))
        digits = "".join(rng.choice(list("0123456789"), nd))
        exp = int(rng.integers(-340, 310))
        s = "%s%s.%se%d" % (rng.choice(["", "-"]), digits[:1], digits[1:], exp)
        b = np.frombuffer(s.encode(), np.uint8)
        v, st = parse_f64(b, 0, b.shape[0])
        ref = float(s)
        if nd >= 20:
            long_total += 1
        if st == SLOW:
            slow += 1
            long_slow += nd >= 20
            continue
        if abs(ref) == float("inf"):
            bad += st == OK
        elif st != OK or v != ref or (v == 0.0 and np.signbit(v) != np.signbit(ref)):
            bad += 1
    return ("parse_f64 OK value == float(), 1-25 digits", n, bad,
            "SLOW: %d (%.2f%% of %d strings of 20+ digits)" % (slow, 100.0 * long_slow / max(long_total, 1),
                                                              long_total), time.time() - t0)


def claim_f32_numpy(n, rng):
    t0 = time.time()
    xs = rng.integers(F32_FIRST, F32_END, n, dtype=np.uint32).view(np.float32)
    differ = []
    for x in xs:
        mine = floatfmt.format_f32(x)
        theirs = str(x)
        if theirs.endswith(".0"):
            theirs = theirs[:-2]
        if mine != theirs and float(mine) != float(theirs):
            differ.append(x)
    # the documented exception: numpy's shortest digits do not survive the double
    undocumented = [x for x in differ if np.float32(float(str(x))) == x]
    return ("write_f32 digits == str(np.float32) (shortest)", n, len(undocumented),
            "%d double-rounding exceptions (documented)" % (len(differ) - len(undocumented)), time.time() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--doubles", type=int, default=5000000, help="random doubles for claim 2")
    ap.add_argument("--strings", type=int, default=1000000, help="random decimal strings for claim 3")
    ap.add_argument("--f32-sample", type=int, default=1000000, help="random float32 for claim 4")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-f32-all", action="store_true", help="skip claim 1 (all float32)")
    ap.add_argument("--quick", action="store_true", help="small sizes everywhere")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.quick:
        args.doubles, args.strings, args.f32_sample = 200000, 50000, 50000
    rows = []
    if not args.skip_f32_all:
        rows.append(claim_f32_all(args.threads, limit=50000000 if args.quick else None))
    rows.extend(claim_f64_repr(args.doubles, rng))
    rows.append(claim_parse(args.strings, rng))
    rows.append(claim_f32_numpy(args.f32_sample, rng))
    print("%-58s %14s %8s %8s  %s" % ("claim", "checked", "failed", "seconds", "notes"))
    for name, checked, failed, note, sec in rows:
        print("%-58s %14s %8d %8.1f  %s" % (name, "{:,}".format(checked), failed, sec, note))
    return 1 if any(r[2] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
