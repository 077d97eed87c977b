#!/usr/bin/env python3
"""Load test of fm_serve with a real HTTP client (wrk, or aiohttp), on 127.0.0.1 only (issue 12 item 6).

Starts ``fm_serve`` as a child process for each scenario, sends requests at a
fixed rate, and prints one table. The client is wrk (``apt-get install wrk``)
when it is on PATH: a C client that costs the shared 2 cores ~0.05 ms a
request, paced by a Lua schedule that counts every send it could not make on
time, so a slow server cannot hide its queue. ``--client aiohttp`` is the pure
Python open loop (a request's latency counts from when it was due); it costs
~0.5 ms of CPU a request, so at 1,000/s it takes half of this machine's cores
from the server it measures. The swap check reads every answer and always
runs on aiohttp.

- score: 100 candidates x 30 features a request, on the 1.1M-feature
  ``-dim 1,1,8`` bench model (``bench_train.py``'s data), float32 serving copy;
- u2i: top-100 over 1,000,000 items at dim 16, exact search;
- swap: score requests while the model file is replaced (renamed over) every
  2 s by one of two models in turn: every request must succeed, and each
  answer must be the one its model (named in the answer) gives, with no
  client ever going back to an older model.

Every loop is bounded in requests and time and stops by itself.

    python bench/bench_serve.py                      # all three, 20 s each
    python bench/bench_serve.py --only score --rate 1500 --seconds 10
    python bench/bench_serve.py --max-rate            # also: the highest rate (closed loop, 64 connections)
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, TOP)
sys.path.insert(0, HERE)

from bench_train import ensure_data, machine, tool  # noqa: E402

HOST = "127.0.0.1"


# -- data ----------------------------------------------------------------------

def ctr_model(data):
    """The bench's 1.1M-feature -dim 1,1,8 model, stripped to float32 (made once)."""
    train = os.path.join(data, "ctr_train_1000000.txt")
    ensure_data(train, 1_000_000, seed=1)
    out = os.path.join(data, "out")
    os.makedirs(out, exist_ok=True)
    full = os.path.join(out, "serve_m118.bin")
    f32 = os.path.join(out, "serve_m118f.bin")
    if not os.path.exists(full):
        with open(train, "rb") as f:
            subprocess.check_call([tool("fm_train"), "-m", full, "-mf", "bin", "-dim", "1,1,8", "-core", "2", "-q"],
                                  stdin=f)
    if not os.path.exists(f32):
        subprocess.check_call([tool("fm_dump"), "strip", "--float", full, f32])
    return f32, train


def other_model(path, out):
    """A second model: the same features, every weight scaled by 1.01 (another version)."""
    if os.path.exists(out):
        return out
    from streamfm.model import ModelArrays, read_model, write_model

    a = read_model(path, state=False)
    write_model(ModelArrays(a.arena, a.name_off, (a.weights * np.float32(1.01)).astype(a.dtype), None,
                            dict(a.info)), out, "bin", state=False)
    return out


def score_bodies(train, n_bodies=200, candidates=100, features=30, seed=0):
    """Request bodies: 100 candidates of 30 features (a line's 26 and 4 of the next line's)."""
    import json

    rng = np.random.default_rng(seed)
    lines = []
    with open(train, "rb") as f:
        for i, line in enumerate(f):
            if i >= 20000:
                break
            lines.append(line.decode().split()[1:])
    bodies = []
    for _ in range(n_bodies):
        pick = rng.integers(0, len(lines) - 1, size=candidates)
        samples = [" ".join((lines[j] + lines[j + 1])[:features]) for j in pick]
        bodies.append(json.dumps({"samples": samples}).encode())
    return bodies


def recall_set(data, n_items=1_000_000, k=16, seed=0):
    """A synthetic recall model (k=16) and its 1M-item index; u2i query bodies."""
    out = os.path.join(data, "out")
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "serve_recall_k%d.bin" % k)
    index = os.path.join(out, "serve_items_%d_k%d.idx" % (n_items, k))
    n_users, n_cats, n_brands = 100_000, 1000, 20_000
    if not (os.path.exists(model) and os.path.exists(index)):
        from streamfm import FM, Recall
        from streamfm.model import ModelArrays, write_model

        rng = np.random.default_rng(seed)
        names = ([b"bias"] + [b"user=u%d" % i for i in range(n_users)] + [b"age=a%d" % i for i in range(8)]
                 + [b"city=c%d" % i for i in range(300)] + [b"item=i%d" % i for i in range(n_items)]
                 + [b"cat=c%d" % i for i in range(n_cats)] + [b"brand=b%d" % i for i in range(n_brands)])
        off = np.zeros(len(names) + 1, np.int64)
        np.cumsum([len(x) for x in names], out=off[1:])
        w = (rng.normal(size=(len(names), k + 1)) * 0.3).astype(np.float32)
        write_model(ModelArrays(np.frombuffer(b"".join(names), np.uint8), off, w, None, {"k": k}), model, "bin",
                    state=False)
        items = [b"i%d item=i%d cat=c%d brand=b%d" % (i, i, i % n_cats, i % n_brands) for i in range(n_items)]
        Recall.save_index(Recall(FM.load(model)).index(items), index)
    return model, index


def u2i_bodies(n_bodies=500, topn=100, seed=1):
    import json

    rng = np.random.default_rng(seed)
    return [json.dumps({"mode": "u2i", "topn": topn, "features": "user=u%d age=a%d city=c%d" % (
        rng.integers(100_000), rng.integers(8), rng.integers(300))}).encode() for _ in range(n_bodies)]


# -- server ----------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, args, log):
        self.port = free_port()
        self.url = "http://%s:%d" % (HOST, self.port)
        self.log = open(log, "wb")
        t0 = time.time()
        self.proc = subprocess.Popen([tool("fm_serve"), "--host", HOST, "--port", str(self.port)] + args,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        import urllib.request

        while True:
            if self.proc.poll() is not None:
                raise SystemExit("fm_serve exited: see %s" % log)
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.time() - t0 > 600:
                    raise SystemExit("fm_serve did not start in 600 s")
                time.sleep(0.1)
        self.startup = time.time() - t0

    def rss_mb(self):
        """Resident MB of the server and of its workers (VmRSS, VmHWM: now and peak)."""
        pids = [self.proc.pid] + children(self.proc.pid)
        now = peak = 0
        for pid in pids:
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            now += int(line.split()[1])
                        elif line.startswith("VmHWM:"):
                            peak += int(line.split()[1])
            except OSError:
                pass
        return now / 1024, peak / 1024

    def cpu_seconds(self):
        """CPU time (user + system) the server and its workers have used so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in [self.proc.pid] + children(self.proc.pid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                pass
        return total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# -- load ------------------------------------------------------------------------

async def open_loop(url, path, bodies, rate, seconds, max_requests, check=None, connections=64):
    """Send bodies in turn at ``rate`` requests/s for ``seconds``; returns (latencies s, errors, answers, wall)."""
    import aiohttp

    n = min(int(rate * seconds), max_requests)
    lat = np.full(n, np.nan)
    errors = []
    answers = [None] * n
    conn = aiohttp.TCPConnector(limit=connections, force_close=False)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(url, connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        t0 = time.perf_counter() + 0.05

        async def one(i):
            due = t0 + i / rate
            d = due - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
            try:
                async with s.post(path, data=bodies[i % len(bodies)], headers=headers) as r:
                    body = await r.read()
                    lat[i] = time.perf_counter() - due
                    if r.status != 200:
                        errors.append((i, r.status, body[:200]))
                    elif check is not None:
                        answers[i] = check(i, body)
            except Exception as e:  # a failed request is a result, not a crash of the bench
                lat[i] = time.perf_counter() - due
                errors.append((i, "exception", repr(e)[:200]))

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return lat, errors, answers, wall


async def closed_loop(url, path, bodies, seconds, max_requests, connections=64):
    """As many requests as ``connections`` clients can get answered in ``seconds``; returns requests/s."""
    import aiohttp

    done = [0]
    stop_at = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=conn) as s:
        async def worker(w):
            i = w
            while time.perf_counter() < stop_at and done[0] < max_requests:
                async with s.post(path, data=bodies[i % len(bodies)],
                                  headers={"content-type": "application/json"}) as r:
                    await r.read()
                done[0] += 1
                i += connections
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(connections)))
        return done[0] / (time.perf_counter() - t0)


# wrk's Lua: requests cycle through the bodies (one JSON document a line of a
# file) and are paced to a schedule of `rate` a second for the whole thread:
# delay() is asked before every request a connection sends, claims the next
# slot and waits for it, so with enough connections the sends follow the
# schedule whatever the answers' latency (an open loop); a send later than its
# slot (every connection busy) is counted, so a queue cannot hide.
WRK_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } sfm_timespec;
int clock_gettime(int clk, sfm_timespec *ts);
]]
local ts = ffi.new("sfm_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local bodies, n, i, path = {}, 0, 0, "/"
local step, due = 0, nil
late, late_max = 0, 0  -- globals: done() reads them from each thread
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
local headers = {["Content-Type"] = "application/json"}
function init(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
  path = args[2]
  step = 1.0 / tonumber(args[3])
end
function delay()
  local t = now()
  if due == nil then due = t end
  due = due + step
  local d = due - t
  if d < -0.005 then
    late = late + 1
    if -d > late_max then late_max = -d end
  end
  if d <= 0 then return 0 end
  return math.floor(d * 1000)
end
function request()
  i = i % n + 1
  return wrk.format("POST", path, headers, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  local nlate, late_ms = 0, 0
  for _, t in ipairs(threads) do
    nlate = nlate + t:get("late")
    late_ms = math.max(late_ms, math.floor(t:get("late_max") * 1000))
  end
  io.write(string.format("SFM requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "p50=%d p99=%d max=%d late=%d late_max_ms=%d\n", summary.requests, summary.duration, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max, nlate, late_ms))
end
"""


def have_wrk():
    return shutil.which("wrk") is not None


def wrk_load(url, path, bodies, rate, seconds, logdir, connections=32):
    """Paced load with wrk (one thread): a Load.

    wrk's latency counts from the send; the schedule keeps the sends on time
    while a connection is free (see WRK_LUA), and the sends more than 5 ms
    behind their slot are counted (``late``); wrk's own counters give the
    failures: connect/read/write errors, time-outs and non-2xx answers.
    """
    script = os.path.join(logdir, "pace.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    body_file = os.path.join(logdir, "bodies_%s.jsonl" % path.strip("/").replace("/", "_"))
    with open(body_file, "wb") as f:
        for b in bodies:
            if b"\n" in b:
                raise ValueError("a body holds an end of line")
            f.write(b + b"\n")
    out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % max(1, round(seconds)), "--timeout", "10s",
                          "-s", script, url, "--", body_file, path, repr(float(rate))],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True).stdout.decode()
    line = next((x for x in out.splitlines() if x.startswith("SFM ")), None)
    if line is None:
        raise SystemExit("wrk gave no summary:\n" + out)
    v = dict(kv.split("=") for kv in line.split()[1:])
    v = {k: int(x) for k, x in v.items()}
    failed = v["connect"] + v["read"] + v["write"] + v["status"] + v["timeout"]
    errors = [] if not failed else [("wrk", {k: v[k] for k in ("connect", "read", "write", "status", "timeout")})]
    return Load(v["requests"], errors, v["p50"] / 1e3, v["p99"] / 1e3, v["max"] / 1e3, v["duration_us"] / 1e6,
                v["late"], v["late_max_ms"])


class Load:
    """One scenario's result: requests, errors, latency p50/p99/max in ms, wall s,
    and (wrk) the sends more than 5 ms behind their slot and the worst lateness."""

    def __init__(self, n, errors, p50, p99, mx, wall, late=None, late_max_ms=None):
        self.n, self.errors, self.p50, self.p99, self.max, self.wall = n, errors, p50, p99, mx, wall
        self.late, self.late_max_ms = late, late_max_ms

    @classmethod
    def of_latencies(cls, lat, errors, wall):
        ok = lat[np.isfinite(lat)]
        p50, p99, mx = (np.percentile(ok, 50) * 1e3, np.percentile(ok, 99) * 1e3, ok.max() * 1e3) if ok.size \
            else (float("nan"),) * 3
        return cls(len(lat), errors, p50, p99, mx, wall)


def load(args, srv, path, bodies, rate, logdir):
    """Send ``bodies`` to ``srv`` at ``rate``/s for ``args.seconds`` with the chosen client;
    (Load, server CPU s, client CPU s)."""
    if args.client == "wrk":
        import resource

        c0 = srv.cpu_seconds()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = wrk_load(srv.url, path, bodies, rate, args.seconds, logdir)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return res, srv.cpu_seconds() - c0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    (lat, errors, _, wall), scpu, ccpu = measured(srv, open_loop(srv.url, path, bodies, rate, args.seconds,
                                                                  args.max_requests))
    return Load.of_latencies(lat, errors, wall), scpu, ccpu


def measured(srv, coro):
    """Run a load coroutine; (its result, server CPU s, this client's CPU s)."""
    import resource

    c0 = srv.cpu_seconds()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    out = asyncio.run(coro)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, srv.cpu_seconds() - c0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def cpu_line(n, server_cpu, client_cpu):
    print("    CPU a request: server %.3f ms (%.0f requests/s a core), client %.3f ms; load average %s" % (
        server_cpu / n * 1e3, n / max(server_cpu, 1e-9), client_cpu / n * 1e3,
        " ".join("%.1f" % x for x in os.getloadavg())))


def summary(name, rate, res, target):
    print("| %s | %d | %.0f | %.0f | %d | %.2f | %.2f | %.2f | %s |" % (
        name, res.n, rate, res.n / res.wall, len(res.errors), res.p50, res.p99, res.max, target))
    if res.late is not None:
        print("    sends more than 5 ms behind the schedule: %d (worst %d ms)" % (res.late, res.late_max_ms))
    sys.stdout.flush()
    for e in res.errors[:5]:
        print("    error:", e)


# -- scenarios -----------------------------------------------------------------------

def scenario_score(args, model, train, logdir):
    bodies = score_bodies(train)
    srv = Server(["-m", model, "--workers", str(args.workers), "-q"], os.path.join(logdir, "score.log"))
    try:
        rss0 = srv.rss_mb()
        res, scpu, ccpu = load(args, srv, "/v1/score", bodies, args.rate, logdir)
        summary("score, 100 x 30 features, %d worker(s)" % args.workers, args.rate, res, ">= 1,000/s, p99 <= 15 ms")
        cpu_line(res.n, scpu, ccpu)
        if args.max_rate:
            qps = asyncio.run(closed_loop(srv.url, "/v1/score", bodies, min(args.seconds, 10), args.max_requests))
            print("|   highest rate, 64 connections (closed loop) | | | %.0f | | | | | |" % qps)
        rss1 = srv.rss_mb()
        print("    fm_serve start-up %.2f s; RSS %.0f MB after start, %.0f MB after the load (peak %.0f MB)"
              % (srv.startup, rss0[0], rss1[0], rss1[1]))
    finally:
        srv.stop()


def scenario_u2i(args, data, logdir):
    model, index = recall_set(data)
    bodies = u2i_bodies()
    srv = Server(["-m", model, "--items-index", index, "--cores", str(args.cores), "-q"],
                 os.path.join(logdir, "u2i.log"))
    try:
        rate = args.u2i_rate
        res, scpu, ccpu = load(args, srv, "/v1/recall", bodies, rate, logdir)
        summary("u2i top-100 of 1M items, dim 16, exact, --cores %d" % args.cores, rate, res, "p99 <= 25 ms at 100/s")
        cpu_line(res.n, scpu, ccpu)
        rss = srv.rss_mb()
        print("    fm_serve start-up %.2f s; RSS %.0f MB (peak %.0f MB)" % (srv.startup, rss[0], rss[1]))
    finally:
        srv.stop()


def scenario_swap(args, model, train, logdir):
    import json

    import orjson

    from streamfm import FM

    out = os.path.dirname(model)
    b = other_model(model, os.path.join(out, "serve_m118f_b.bin"))
    served = os.path.join(out, "serve_swapped.bin")
    shutil.copyfile(model, served)
    bodies = score_bodies(train, n_bodies=20)
    # the answer of each model to each body, from the API
    want = {}
    for path in (model, b):
        fm = FM.load(path)
        v = "%08x" % __import__("zlib").crc32(memoryview(np.ascontiguousarray(fm.serving_model().weights)).cast("B"))
        want[v] = [fm.predict_proba([("0 " + s).encode() for s in json.loads(body)["samples"]]).tolist()
                   for body in bodies]
        del fm
    srv = Server(["-m", served, "--poll-interval", "0.2", "-q"], os.path.join(logdir, "swap.log"))
    seen = []

    def check(i, body):
        j = orjson.loads(body)
        ok = j["model"] in want and j["probabilities"] == want[j["model"]][i % len(bodies)]
        seen.append((i, j["model"]))
        return ok

    stop = [False]

    def swapper():
        n = 0
        src = [b, model]
        while not stop[0]:
            time.sleep(2.0)
            if stop[0]:
                break
            tmp = served + ".tmp"
            shutil.copyfile(src[n % 2], tmp)
            os.replace(tmp, served)
            n += 1
        return n

    import threading

    th_result = []
    th = threading.Thread(target=lambda: th_result.append(swapper()))
    try:
        th.start()
        lat, errors, answers, wall = asyncio.run(open_loop(srv.url, "/v1/score", bodies, args.swap_rate,
                                                           args.seconds, args.max_requests, check=check))
        stop[0] = True
        th.join()
        wrong = sum(1 for a in answers if a is False)
        versions = [v for _, v in seen]  # in the order the answers came
        changes = sum(1 for x, y in zip(versions, versions[1:]) if x != y)
        reloads = metric_total(srv.url, "streamfm_reloads_total", 'result="ok"')
        summary("score while the model is replaced every 2 s", args.swap_rate,
                Load.of_latencies(lat, errors + [("wrong answer",)] * wrong, wall), "0 failed, new model after each swap")
        print("    %d replacements, %d reloads swapped in, %d answers that did not match their model, "
              "%d changes of model in the order the answers came" % (th_result[0], reloads, wrong, changes))
    finally:
        stop[0] = True
        srv.stop()


def scenario_memory(args, model, train, logdir):
    """Peak RSS and wall time of fm_predict (one line; the 200k held-out lines) and of fm_serve,
    with the full float64 model, its stripped float64 and float32 copies."""
    from bench_train import run

    out = os.path.dirname(model)
    full = os.path.join(out, "serve_m118.bin")
    s64 = os.path.join(out, "serve_m118s.bin")
    if not os.path.exists(s64):
        subprocess.check_call([tool("fm_dump"), "strip", full, s64])
    test = os.path.join(args.data, "ctr_test_200000.txt")
    ensure_data(test, 200_000, seed=2)
    one = os.path.join(out, "one.txt")
    with open(one, "w") as f:
        f.write("1 f0_2:1 f1_7:1\n")
    print()
    print("| model | file MB | fm_predict 1 line: s (best of 5) | peak RSS MB | fm_predict 200k lines -core 2: "
          "peak RSS MB | fm_serve after start / after 2,000 score requests: RSS MB |")
    print("|---|---|---|---|---|---|")
    bodies = score_bodies(train, n_bodies=50)
    for label, path in (("full, float64", full), ("stripped, float64", s64), ("stripped, float32", model)):
        run([tool("fm_predict"), "-m", path, "-q"], one)  # warm the kernel cache and the page cache
        times, peaks = [], []
        for _ in range(5):
            _, wall, rss = run([tool("fm_predict"), "-m", path, "-q"], one)
            times.append(wall)
            peaks.append(rss)
        _, _, rss_all = run([tool("fm_predict"), "-m", path, "-core", "2", "-q"], test)
        srv = Server(["-m", path, "-q"], os.path.join(logdir, "memory.log"))
        try:
            r0 = srv.rss_mb()[0]
            asyncio.run(open_loop(srv.url, "/v1/score", bodies, 400, 5, 2000))
            r1, peak = srv.rss_mb()
        finally:
            srv.stop()
        print("| %s | %.0f | %.2f | %.0f | %.0f | %.0f / %.0f (peak %.0f), start-up %.1f s |" % (
            label, os.path.getsize(path) / 1e6, min(times), max(peaks) / 1e6, rss_all / 1e6, r0, r1, peak,
            srv.startup))
        sys.stdout.flush()


def scenario_json(args, model, train, logdir):
    """stdlib json against orjson on a score request (decode) and its answer (encode), best of 5."""
    import json
    import timeit

    import orjson

    body = score_bodies(train, n_bodies=1)[0]
    dict_body = json.dumps({"samples": [{t.rsplit(":", 1)[0]: float(t.rsplit(":", 1)[1]) for t in x.split()}
                                        for x in json.loads(body)["samples"]]}).encode()
    probs = np.random.default_rng(0).random(100)
    cases = [("decode 100 x 30 lines (%d bytes)" % len(body), lambda: json.loads(body), lambda: orjson.loads(body)),
             ("decode 100 x 30 objects (%d bytes)" % len(dict_body), lambda: json.loads(dict_body),
              lambda: orjson.loads(dict_body)),
             ("encode 100 probabilities", lambda: json.dumps({"probabilities": probs.tolist()}).encode(),
              lambda: orjson.dumps({"probabilities": probs}, option=orjson.OPT_SERIALIZE_NUMPY))]
    print()
    print("| JSON, per request | json (stdlib) us | orjson us | ratio |")
    print("|---|---|---|---|")
    for name, a, b in cases:
        ta = min(timeit.repeat(a, number=200, repeat=5)) / 200 * 1e6
        tb = min(timeit.repeat(b, number=200, repeat=5)) / 200 * 1e6
        print("| %s | %.1f | %.1f | %.1fx |" % (name, ta, tb, ta / tb))


def metric_total(url, name, having):
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and having in line))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the data and models go")
    ap.add_argument("--only", choices=["score", "u2i", "swap", "memory", "json"], action="append",
                    help="run only these scenarios (memory: peak RSS of fm_predict and fm_serve)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each scenario's load (default 20)")
    ap.add_argument("--rate", type=float, default=1000.0, help="score requests/s (default 1,000)")
    ap.add_argument("--u2i-rate", type=float, default=100.0, help="u2i requests/s (default 100)")
    ap.add_argument("--swap-rate", type=float, default=500.0, help="requests/s during the swaps (default 500)")
    ap.add_argument("--workers", type=int, default=1, help="fm_serve --workers for the score scenario")
    ap.add_argument("--cores", type=int, default=2, help="fm_serve --cores for the u2i scenario")
    ap.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per scenario")
    ap.add_argument("--max-rate", action="store_true", help="also measure the highest score rate (closed loop)")
    ap.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk" if have_wrk() else "aiohttp",
                    help="load client of the score and u2i scenarios (default: wrk when it is on PATH, "
                         "`apt-get install wrk`; the swap check reads every answer, so it runs on aiohttp)")
    args = ap.parse_args()
    only = set(args.only or ["score", "u2i", "swap", "memory", "json"])
    logdir = os.path.join(args.data, "out", "serve_logs")
    os.makedirs(logdir, exist_ok=True)
    model = train = None
    if only & {"score", "swap", "memory", "json"}:
        model, train = ctr_model(args.data)
    print("# fm_serve load test")
    print()
    print("machine: %s; %s" % (machine(), time.strftime("%Y-%m-%d %H:%M")))
    if args.client == "wrk":
        print("client: wrk (C), one thread, 32 connections, sends paced to the rate (Lua schedule), latency from "
              "the send; swap check: aiohttp, open loop; 127.0.0.1")
    else:
        print("client: aiohttp, open loop (latency from when each request was due), 127.0.0.1")
    print()
    if "memory" in only:
        # first, while this process is small: a child's peak RSS (wait4) counts this process's
        # image from before the child's exec
        scenario_memory(args, model, train, logdir)
        print()
    print("| scenario | requests | rate asked /s | rate done /s | failed | p50 ms | p99 ms | max ms | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    if "score" in only:
        scenario_score(args, model, train, logdir)
    if "u2i" in only:
        scenario_u2i(args, args.data, logdir)
    if "swap" in only:
        scenario_swap(args, model, train, logdir)
    if "json" in only:
        scenario_json(args, model, train, logdir)


if __name__ == "__main__":
    main()
