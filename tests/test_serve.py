"""fm_serve: a real server on a free localhost port, spoken to over real HTTP.

Most tests share one server running in a thread (uvicorn, the app of
``streamfm.serve.app``); the command itself (SIGHUP, --workers, start-up
errors) runs as a subprocess. Answers are checked against the Python API
(``FM.predict_proba``, ``FM.explain``, ``Recall.search``), which the other
test files check against the reference implementation.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the [serve] extra is part of [test]")
httpx = pytest.importorskip("httpx", reason="the [test] extra installs httpx")

import uvicorn  # noqa: E402

from helpers import SAMPLE  # noqa: E402
from streamfm import FM, Recall  # noqa: E402
from streamfm.serve.app import Limits, create_app  # noqa: E402
from streamfm.serve.scoring import label_lines  # noqa: E402

FM_SERVE = os.path.join(os.path.dirname(sys.executable), "fm_serve")
ITEMS = (SAMPLE / "items.txt").read_bytes().splitlines()
USERS = (SAMPLE / "users.txt").read_bytes().splitlines()
CLICKS = (SAMPLE / "clicks.txt").read_bytes().splitlines()


# -- fixtures ------------------------------------------------------------------

def make_set(d, seed, clicks=CLICKS[:3000], stem="model"):
    """Train a small recall FM on the sample shop; write model (bin) and both indexes."""
    rec = Recall.train(clicks, ITEMS, k=4, epochs=1, seed=seed)
    paths = {"model": os.path.join(d, stem + ".bin"), "items": os.path.join(d, stem + ".items.idx"),
             "users": os.path.join(d, stem + ".users.idx")}
    rec.fm.save(paths["model"])
    Recall.save_index(rec.index(ITEMS, "items"), paths["items"])
    Recall.save_index(rec.index(USERS, "users"), paths["users"])
    return paths


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app, **config):
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def post(self, path, body):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return self.client.post(path, content=body, headers={"content-type": "application/json"})

    def get(self, path):
        return self.client.get(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("serve"))
    return d, make_set(d, seed=1)


@pytest.fixture(scope="module")
def server(files):
    d, p = files
    srv = ServerThread(create_app(p["model"], p["items"], p["users"], poll_interval=0,
                                  limits=Limits(max_body_bytes=1 << 16, max_samples=500, max_topn=200)))
    yield srv
    srv.stop()


def lines_of(samples):
    """What a sample means as an fm_predict line (the reference for /v1/score)."""
    out = []
    for s in samples:
        if isinstance(s, dict):
            out.append("0 " + " ".join("%s:%r" % kv for kv in s.items()))
        else:
            first = s.split()[0] if s.split() else ""
            out.append(s if first and ":" not in first and re.match(r"^[-+]?[0-9.]+$", first) else "0 " + s)
    return [x.encode() for x in out]


SAMPLES = ["user=u1 age=a2 gender=g1 item=i7 cat=c2 brand=b7",
           "1 user=u3 item=i8 cat=c3",
           "-1 user=u3 item=i8:0.5 cat=c3",
           {"user=u1": 1, "item=i7": 1.0, "cat=c2": 2},
           "",
           "never=seen",
           "0.5 item=i10:1e-3 age=a1"]


# -- /v1/score -----------------------------------------------------------------

def test_score_equals_the_api_for_lines_labels_and_objects(server, files):
    r = server.post("/v1/score", {"samples": SAMPLES})
    assert r.status_code == 200, r.text
    got = r.json()
    want = FM.load(files[1]["model"]).predict_proba(lines_of(SAMPLES))
    assert got["probabilities"] == want.tolist()  # the same kernels: equal, not close
    assert len(got["probabilities"]) == len(SAMPLES)
    assert "explain" not in got


def test_score_explain_equals_the_api(server, files):
    r = server.post("/v1/score", {"samples": SAMPLES, "explain": 3})
    assert r.status_code == 200, r.text
    want = FM.load(files[1]["model"]).explain(lines_of(SAMPLES), top=3)
    got = r.json()["explain"]
    assert len(got) == len(SAMPLES)
    for g, w in zip(got, want):
        assert [tuple(x) for x in g] == [(n, phi) for n, phi in w]


def test_label_lines_kernel():
    def run(text):
        src = np.frombuffer(text, np.uint8)
        out = np.empty(len(text) + 2 * (text.count(b"\n") + 2) + 1, np.uint8)
        nb, n = label_lines(src, len(src), out)
        return bytes(out[:nb]), n

    assert run(b"a:1 b") == (b"0 a:1 b\n", 1)
    assert run(b"1 a:1\n-1 b\n0.5 c\n\n  x") == (b"1 a:1\n-1 b\n0.5 c\n0 \n0   x\n", 5)
    assert run(b"5:1 b") == (b"0 5:1 b\n", 1)      # a token with ':' is a feature
    assert run(b"nan a:1") == (b"nan a:1\n", 1)    # a label the parser then rejects
    assert run(b"") == (b"0 \n", 1)


def test_top_phi_kernel_equals_a_stable_sort():
    from streamfm.serve.scoring import top_phi

    rng = np.random.default_rng(7)
    lens = [0, 1, 3, 7, 40, 200]
    indptr = np.r_[0, np.cumsum(lens)].astype(np.int64)
    phi = rng.integers(-4, 5, size=indptr[-1]).astype(np.float64) / 2  # many ties, both signs
    phi[indptr[4] + 3] = np.nan
    for topn in (1, 2, 5, 50):
        out = np.empty((len(lens), topn), np.int64)
        top_phi(indptr, phi, len(lens), topn, out)
        for s in range(len(lens)):
            a, b = indptr[s], indptr[s + 1]
            want = (a + np.argsort(-np.abs(phi[a:b]), kind="stable")[:topn]).tolist()
            assert out[s].tolist() == want + [-1] * (topn - len(want))
    # one long sample (the pick is m * topn steps, not m * topn^2 / 2: bench, not timed here)
    m = 100_000
    big = rng.normal(size=m)
    out = np.empty((1, 100), np.int64)
    top_phi(np.array([0, m], np.int64), big, 1, 100, out)
    assert out[0].tolist() == np.argsort(-np.abs(big), kind="stable")[:100].tolist()


def test_empty_sample_list(server):
    r = server.post("/v1/score", {"samples": []})
    assert r.status_code == 200 and r.json()["probabilities"] == []
    r = server.post("/v1/score", {"samples": [], "explain": 2})
    assert r.status_code == 200 and r.json()["probabilities"] == [] and r.json()["explain"] == []


def test_model_whose_feature_names_hold_a_colon_is_served(tmp_path):
    """A name may hold ':' (the last ':' of a token splits name and value): the probe
    and the warm-up must not read such a name as NAME:VALUE and refuse the model."""
    fm = FM(k=2, seed=1)
    fm.partial_fit([b"1 url:http://x:1 b:1", b"0 url:http://y:1 c:1"])
    path = str(tmp_path / "colon.bin")
    fm.save(path)
    srv = ServerThread(create_app(path, poll_interval=0))
    try:
        samples = ["url:http://x:1 b", "url:http://y:2"]
        r = srv.post("/v1/score", {"samples": samples})
        assert r.status_code == 200, r.text
        assert r.json()["probabilities"] == fm.predict_proba([b"0 " + s.encode() for s in samples]).tolist()
    finally:
        srv.stop()


# -- /v1/recall ----------------------------------------------------------------

RECALL_CASES = [
    # (request, the fm_recall query line, query index kind or None)
    ({"mode": "u2i", "key": "u0"}, b"u0", "users"),             # the user's vector from the users index
    ({"mode": "u2i", "features": "user=u5 age=a1 gender=g0 city=c3"}, b"- user=u5 age=a1 gender=g0 city=c3", None),
    ({"mode": "u2i", "key": "u7", "features": {"age=a2": 1, "city=c1": 1}}, b"u7 age=a2:1 city=c1:1", None),
    ({"mode": "i2i", "key": "i7"}, b"i7", None),
    ({"mode": "i2i", "key": "i7", "metric": "ip"}, b"i7", None),
    ({"mode": "u2u", "key": "u2"}, b"u2", None),
    ({"mode": "i2u", "key": "i9"}, b"i9", "items"),
    ({"mode": "i2u", "features": "item=i12 cat=c1"}, b"- item=i12 cat=c1", None),
]


@pytest.mark.parametrize("req,line,qkind", RECALL_CASES)
def test_recall_equals_fm_recall_query(server, files, req, line, qkind):
    p = files[1]
    req = dict(req, topn=7)
    r = server.post("/v1/recall", req)
    assert r.status_code == 200, r.text
    got = r.json()
    fm = FM.load(p["model"])
    kind = "items" if req["mode"] in ("u2i", "i2i") else "users"
    index = Recall.load_index(p[kind])
    qidx = Recall.load_index(p[qkind]) if qkind else (
        Recall.load_index(p["users"]) if req["mode"] == "u2i" else None)
    [(qkey, hits)] = Recall(fm).search([line], index, mode=req["mode"], topn=7, metric=req.get("metric"),
                                       query_index=qidx)
    assert got["keys"] == [k for k, _ in hits]
    assert got["scores"] == [s for _, s in hits]
    assert got["key"] == req.get("key")


def test_recall_exclude_drops_keys(server):
    full = server.post("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 10}).json()["keys"]
    drop = full[:3] + ["not-an-item"]
    r = server.post("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 7, "exclude": drop})
    assert r.status_code == 200
    assert r.json()["keys"] == full[3:10]


def test_recall_output_is_what_the_command_prints(server, files, tmp_path):
    """The keys and (as float32) the scores fm_recall query prints."""
    p = files[1]
    fm_recall = os.path.join(os.path.dirname(sys.executable), "fm_recall")
    proc = subprocess.run([fm_recall, "query", "-m", p["model"], "--index", p["items"], "--mode", "u2i",
                           "--topn", "5", "-q"], input=USERS[3] + b"\n", stdout=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0
    key, rest = proc.stdout.decode().rstrip("\n").split("\t")
    cli = [(t.rsplit(":", 1)[0], np.float32(t.rsplit(":", 1)[1])) for t in rest.split()]
    got = server.post("/v1/recall", {"mode": "u2i", "key": key, "features": USERS[3].decode().split(" ", 1)[1],
                                     "topn": 5}).json()
    assert got["keys"] == [k for k, _ in cli]
    assert [np.float32(s) for s in got["scores"]] == [s for _, s in cli]


# -- /healthz and /metrics -----------------------------------------------------

def test_healthz(server, files):
    h = server.get("/healthz").json()
    fm = FM.load(files[1]["model"])
    assert h["status"] == "ok"
    assert h["model"]["path"] == files[1]["model"]
    assert h["model"]["features"] == fm.n_features
    assert h["model"]["mapped"] is True
    assert h["items"]["records"] == len(ITEMS) and h["users"]["records"] == len(USERS)
    # every index was built from the served model
    assert h["items"]["model_version"] == h["model"]["version"] == h["users"]["model_version"]
    assert h["model"]["age_seconds"] >= 0 and h["model"]["loaded_at"] <= time.time()
    assert h["generation"] == 1


def metric(text, name, **labels):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            lab = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(lab.get(k) == str(v) for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                found = True
    return total if found else None


def test_metrics_count_requests_errors_and_latency(server):
    before = server.get("/metrics").text
    for _ in range(3):
        server.post("/v1/score", {"samples": ["a:1"]})
    server.post("/v1/score", b"{nope")
    after = server.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    a = after.text

    def delta(name, **lab):
        return (metric(a, name, **lab) or 0) - (metric(before, name, **lab) or 0)
    assert delta("streamfm_requests_total", endpoint="score", status=200) == 3
    assert delta("streamfm_requests_total", endpoint="score", status=400) == 1
    assert delta("streamfm_request_errors_total", endpoint="score", code="malformed_json") == 1
    assert delta("streamfm_request_duration_seconds_count", endpoint="score") == 4
    assert delta("streamfm_request_duration_seconds_bucket", endpoint="score", le="+Inf") == 4
    assert delta("streamfm_samples_scored_total") == 3
    assert metric(a, "streamfm_model_age_seconds") >= 0
    assert metric(a, "streamfm_state_generation") == 1
    # histogram buckets are cumulative
    counts = [float(m) for m in re.findall(r'streamfm_request_duration_seconds_bucket\{endpoint="score",le="[^"]+",'
                                           r'pid="\d+"\} (\d+)', a)]
    assert counts == sorted(counts) and counts[-1] == metric(a, "streamfm_request_duration_seconds_count",
                                                               endpoint="score")


# -- bad requests: 4xx JSON, never a 500 ---------------------------------------

BAD = [
    # (path, body, status, code)
    ("/v1/score", b"{\"samples\": [\"a:1\"", 400, "malformed_json"),
    ("/v1/score", b"not json", 400, "malformed_json"),
    ("/v1/score", b"{\"samples\": [\"a:NaN\"]}", 400, "bad_sample"),
    ("/v1/score", b"{\"samples\": [{\"a\": NaN}]}", 400, "malformed_json"),     # NaN is not JSON
    ("/v1/score", b"{\"samples\": [{\"a\": 1e999}]}", 400, "malformed_json"),   # nor is infinity
    ("/v1/score", {"samples": ["a:inf b:1"]}, 400, "bad_sample"),
    ("/v1/score", {"samples": ["inf a:1"]}, 400, "bad_sample"),                 # a non-finite label
    ("/v1/score", {"samples": ["a:1", "b:x"]}, 400, "bad_sample"),
    ("/v1/score", {"samples": ["a:1\nb:1"]}, 400, "bad_sample"),
    ("/v1/score", {"samples": ["a\x01:1"]}, 400, "bad_sample"),
    ("/v1/score", {"samples": [{"a b": 1}]}, 400, "bad_sample"),
    ("/v1/score", {"samples": [{"": 1}]}, 400, "bad_sample"),
    ("/v1/score", [1, 2], 400, "wrong_type"),
    ("/v1/score", {"samples": "a:1"}, 400, "wrong_type"),
    ("/v1/score", {"samples": [1]}, 400, "wrong_type"),
    ("/v1/score", {"samples": [None]}, 400, "wrong_type"),
    ("/v1/score", {"samples": [{"a": "1"}]}, 400, "wrong_type"),
    ("/v1/score", {"samples": [{"a": True}]}, 400, "wrong_type"),
    ("/v1/score", {"samples": [{"a": [1]}]}, 400, "wrong_type"),
    ("/v1/score", {"samples": ["a"], "explain": "3"}, 400, "wrong_type"),
    ("/v1/score", {"samples": ["a"], "explain": -1}, 400, "bad_explain"),
    ("/v1/score", {"samples": ["a"], "explain": 10 ** 6}, 400, "bad_explain"),
    ("/v1/score", {"samples": ["a"], "extra": 1}, 400, "unknown_field"),
    ("/v1/score", {}, 400, "missing_field"),
    ("/v1/score", {"records": [{"a": 1}]}, 400, "no_featurizer"),
    ("/v1/score", {"samples": ["a:1"] * 501}, 413, "too_many_samples"),
    ("/v1/score", {"samples": ["x" * 70000]}, 413, "body_too_large"),
    ("/v1/recall", {"mode": "x2y", "key": "u0"}, 400, "unknown_mode"),
    ("/v1/recall", {"mode": 3, "key": "u0"}, 400, "wrong_type"),
    ("/v1/recall", {"key": "u0"}, 400, "missing_field"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 0}, 400, "bad_topn"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "topn": -5}, 400, "bad_topn"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 201}, 400, "bad_topn"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 1.5}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "topn": "5"}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": 7}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u 0"}, 400, "bad_query"),
    ("/v1/recall", {"mode": "u2i"}, 400, "bad_query"),
    ("/v1/recall", {"mode": "u2i", "features": "age=a1:nan"}, 400, "bad_query"),
    ("/v1/recall", {"mode": "u2i", "features": {"age=a1": float("inf")}}, 400, "malformed_json"),
    ("/v1/recall", {"mode": "u2i", "features": 5}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "exclude": "i1"}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "exclude": [1]}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "metric": "cos"}, 400, "bad_metric"),
    ("/v1/recall", {"mode": "i2i", "key": "i1", "metric": "l2"}, 400, "bad_metric"),
    ("/v1/recall", {"mode": "i2i", "key": "i1", "exact": "yes"}, 400, "wrong_type"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "bogus": 1}, 400, "unknown_field"),
    ("/v1/recall", {"mode": "u2i", "key": "nobody"}, 404, "unknown_key"),
    ("/v1/recall", {"mode": "i2i", "key": "no-such-item"}, 404, "unknown_key"),
    ("/v1/recall", {"mode": "u2i", "key": "u0", "features": "x" * 70000}, 413, "body_too_large"),
]


@pytest.mark.parametrize("path,body,status,code", BAD, ids=["%s-%s-%d" % (b[0].split("/")[-1], b[3], i)
                                                            for i, b in enumerate(BAD)])
def test_bad_request_gets_a_4xx_json_error(server, path, body, status, code):
    if isinstance(body, (dict, list)):
        body = json.dumps(body, allow_nan=True)
    r = server.post(path, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert server.get("/healthz").status_code == 200  # the worker lives on


def test_unknown_path_and_method_are_json_errors(server):
    r = server.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = server.get("/v1/score")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = server.client.post("/healthz")
    assert r.status_code == 405


def raw_answer(sock):
    """One answer read off ``sock``: (status, headers, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)  # socket.timeout if the server does not answer
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection within its answer"
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


STALLED = {  # a request whose body stops short: headers and 10 of its bytes
    "content-length": b"Content-Length: 100\r\n\r\n" + b'{"samples"',
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n" + b'64\r\n{"samples"',
}


@pytest.mark.parametrize("framing", sorted(STALLED))
def test_body_that_stops_short_gets_408_and_the_server_serves_on(files, framing):
    """A client that declares more body than it sends held a connection and a
    task for ever (uvicorn has no body-read timeout); now --body-timeout ends
    it with a 408 JSON error and closes that connection only."""
    d, p = files
    srv = ServerThread(create_app(p["model"], p["items"], poll_interval=0, limits=Limits(body_timeout=0.5)))
    try:
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.settimeout(60)  # generous: the server answers after 0.5 s
        stalled.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + STALLED[framing])
        assert srv.get("/healthz").status_code == 200  # served while the body is awaited
        status, headers, body = raw_answer(stalled)
        assert stalled.recv(1) == b""  # and closed that connection: its rest would be read as a request
        stalled.close()
        assert status == 408 and headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert body["error"]["code"] == "body_timeout" and "0.5 s" in body["error"]["message"]
        r = srv.post("/v1/score", {"samples": SAMPLES})
        assert r.status_code == 200 and len(r.json()["probabilities"]) == len(SAMPLES)
        m = srv.get("/metrics").text
        assert metric(m, "streamfm_request_errors_total", endpoint="score", code="body_timeout") == 1
    finally:
        srv.stop()


def test_client_that_hangs_up_mid_body_is_not_a_server_error(files, caplog):
    """A client that closes its connection before its body is all sent was
    logged as "score failed" with a traceback and counted as a 500 "internal"
    error (a bug by the metrics' count); now it is the client's: 499
    client_disconnected, no traceback, and the server serves on."""
    d, p = files
    srv = ServerThread(create_app(p["model"], p["items"], poll_interval=0, limits=Limits(body_timeout=60)))
    try:
        gone = socket.create_connection(("127.0.0.1", srv.port))
        gone.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"samples"')
        time.sleep(0.3)  # the handler is reading the body
        gone.close()
        deadline = time.time() + 60
        m = ""
        while time.time() < deadline:
            m = srv.get("/metrics").text
            if metric(m, "streamfm_request_errors_total", endpoint="score", code="client_disconnected"):
                break
            time.sleep(0.05)
        assert metric(m, "streamfm_request_errors_total", endpoint="score", code="client_disconnected") == 1, m
        assert metric(m, "streamfm_request_errors_total", endpoint="score", code="internal") in (None, 0)
        assert metric(m, "streamfm_requests_total", endpoint="score", status="499") == 1
        assert "score failed" not in caplog.text
        assert srv.post("/v1/score", {"samples": SAMPLES}).status_code == 200
    finally:
        srv.stop()


def _closed_after(sock, limit=60):
    """Seconds until the server closes ``sock`` (it must send nothing first)."""
    t0 = time.time()
    sock.settimeout(limit)
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    return time.time() - t0


@pytest.mark.parametrize("base", ["httptools", "h11"])
def test_headers_that_never_end_close_the_connection(files, base):
    """uvicorn waits for ever on headers that stop short (its keep-alive timer is
    reset by every byte): a connection that sends half its headers, or trickles
    them, or sends nothing, is closed --header-timeout after it opened or the
    request began; a complete request is answered, and an idle keep-alive
    connection (no byte since the answer) is not closed by it."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from streamfm.serve.protocol import with_header_timeout

    d, p = files
    proto = with_header_timeout({"httptools": HttpToolsProtocol, "h11": H11Protocol}[base], 0.5)
    srv = ServerThread(create_app(p["model"], p["items"], poll_interval=0), http=proto, timeout_keep_alive=30)
    try:
        addr = ("127.0.0.1", srv.port)
        half = socket.create_connection(addr)
        half.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        silent = socket.create_connection(addr)
        trickle = socket.create_connection(addr)
        slow = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200  # a byte each 0.05 s: 11.6 s
        sent = 0
        try:
            for c in slow:
                trickle.sendall(bytes([c]))
                sent += 1
                time.sleep(0.05)
        except OSError:  # closed under it
            pass
        assert sent < len(slow)
        assert srv.get("/healthz").status_code == 200  # served meanwhile
        assert _closed_after(half) < 30 and _closed_after(silent) < 30 and _closed_after(trickle) < 30
        keep = socket.create_connection(addr)
        keep.settimeout(60)
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw_answer(keep)[0] == 200
        time.sleep(1.5)  # idle, three header timeouts long: still open
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw_answer(keep)[0] == 200
        keep.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request stops short: closed
        assert _closed_after(keep) < 30
        for sock in (half, silent, trickle, keep):
            sock.close()
        assert srv.post("/v1/score", {"samples": SAMPLES}).status_code == 200
    finally:
        srv.stop()


def test_body_that_arrives_slowly_within_the_timeout_is_served(files):
    """A body sent in pieces that all arrive within the timeout is answered as
    usual, on a connection that stays open."""
    d, p = files
    srv = ServerThread(create_app(p["model"], p["items"], poll_interval=0, limits=Limits(body_timeout=30)))
    try:
        # first: loading a model can take longer than uvicorn keeps an idle connection open
        want = FM.load(p["model"]).predict_proba(lines_of(SAMPLES)).tolist()
        body = json.dumps({"samples": SAMPLES}).encode()
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.settimeout(60)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        s.sendall(body[10:])
        status, headers, got = raw_answer(s)
        assert status == 200 and "connection" not in headers
        assert got["probabilities"] == want
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection serves on
        assert raw_answer(s)[0] == 200
        s.close()
    finally:
        srv.stop()


def test_index_missing_for_the_mode(files):
    d, p = files
    srv = ServerThread(create_app(p["model"], items_index=p["items"], poll_interval=0))
    try:
        for mode in ("i2u", "u2u"):
            r = srv.post("/v1/recall", {"mode": mode, "key": "i1"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "index_missing", r.text
        # u2i by key alone takes the user's vector from the users index
        r = srv.post("/v1/recall", {"mode": "u2i", "key": "u0"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "index_missing"
        assert srv.post("/v1/recall", {"mode": "u2i", "features": "age=a1"}).status_code == 200
    finally:
        srv.stop()


def test_random_bodies_never_get_a_500(server):
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=False,
                     allow_infinity=False), st.text(max_size=30), st.sampled_from(["u2i", "i2i", "u0", "i7",
                                                                                   "a:1 b:2", "1 a"]))
    value = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=8), c,
                                                                                             max_size=5)),
                         max_leaves=20)
    keys = st.sampled_from(["samples", "explain", "mode", "key", "features", "topn", "exclude", "metric", "exact",
                            "records", "x"])
    body = st.dictionaries(keys, value, max_size=5)

    @hyp.settings(max_examples=150, deadline=None, derandomize=True)
    @hyp.given(body, st.sampled_from(["/v1/score", "/v1/recall"]))
    def check(doc, path):
        r = server.post(path, json.dumps(doc))
        assert r.status_code < 500, (doc, r.text)
        assert r.headers["content-type"] == "application/json"

    check()


# -- concurrency -----------------------------------------------------------------

def test_concurrent_requests(server, files):
    fm = FM.load(files[1]["model"])
    want_p = fm.predict_proba(lines_of(SAMPLES)).tolist()
    want_r = server.post("/v1/recall", {"mode": "u2i", "key": "u4", "topn": 20}).json()["keys"]
    errors = []

    def client(i):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for j in range(25):
                if (i + j) % 2:
                    r = c.post("/v1/score", json={"samples": SAMPLES})
                    ok = r.status_code == 200 and r.json()["probabilities"] == want_p
                else:
                    r = c.post("/v1/recall", json={"mode": "u2i", "key": "u4", "topn": 20})
                    ok = r.status_code == 200 and r.json()["keys"] == want_r
                if not ok:
                    errors.append(r.text)

    ths = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert errors == []


# -- hot reload ----------------------------------------------------------------------

def replace(src, dst):
    """What a scheduled retrain does: a new file renamed over the served one."""
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@pytest.fixture()
def live(tmp_path):
    """A server on copies of set A (in tmp_path), set B trained differently beside it."""
    d = str(tmp_path)
    a = make_set(d, seed=1, stem="a")
    b = make_set(d, seed=2, clicks=CLICKS[3000:6000], stem="b")
    served = {k: os.path.join(d, "served." + os.path.basename(v).split(".", 1)[1]) for k, v in a.items()}
    for k in a:
        shutil.copyfile(a[k], served[k])
    srv = ServerThread(create_app(served["model"], served["items"], served["users"], poll_interval=0.05))
    yield srv, a, b, served
    srv.stop()


def wait_for(cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def version(srv):
    return srv.get("/healthz").json()["model"]["version"]


def test_hot_reload_by_rename_changes_the_next_response(live):
    srv, a, b, served = live
    lines = lines_of(SAMPLES)
    pa = FM.load(a["model"]).predict_proba(lines).tolist()
    pb = FM.load(b["model"]).predict_proba(lines).tolist()
    assert pa != pb
    assert srv.post("/v1/score", {"samples": SAMPLES}).json()["probabilities"] == pa
    v0 = version(srv)
    # the model first: its indexes were built from the old one, so it waits for them
    replace(b["model"], served["model"])
    assert wait_for(lambda: srv.get("/healthz").json().get("pending"))
    assert srv.post("/v1/score", {"samples": SAMPLES}).json()["probabilities"] == pa
    replace(b["items"], served["items"])
    replace(b["users"], served["users"])
    assert wait_for(lambda: version(srv) != v0)
    r = srv.post("/v1/score", {"samples": SAMPLES}).json()
    assert r["probabilities"] == pb and r["model"] == version(srv)
    h = srv.get("/healthz").json()
    assert h["generation"] == 2 and "pending" not in h and h["reloads"] == 1
    # recall now answers from set B
    fm_b = FM.load(b["model"])
    [(_, hits)] = Recall(fm_b).search([USERS[0]], Recall.load_index(b["items"]), mode="u2i", topn=5)
    assert srv.post("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 5}).json()["keys"] == [k for k, _ in hits]
    m = srv.get("/metrics").text
    assert metric(m, "streamfm_reloads_total", file="model", result="ok") == 1
    assert metric(m, "streamfm_reloads_total", file="set", result="mismatch") >= 1


def test_model_without_indexes_reloads_alone(tmp_path):
    d = str(tmp_path)
    a = make_set(d, seed=1, stem="a")
    b = make_set(d, seed=2, clicks=CLICKS[3000:6000], stem="b")
    served = os.path.join(d, "m.bin")
    shutil.copyfile(a["model"], served)
    srv = ServerThread(create_app(served, poll_interval=0.05))
    try:
        v0 = version(srv)
        replace(b["model"], served)
        assert wait_for(lambda: version(srv) != v0)
        pb = FM.load(b["model"]).predict_proba(lines_of(SAMPLES)).tolist()
        assert srv.post("/v1/score", {"samples": SAMPLES}).json()["probabilities"] == pb
    finally:
        srv.stop()


@pytest.mark.parametrize("breakage", ["truncated", "flipped", "garbage", "wrong_dim", "nan"])
def test_broken_new_model_is_refused_and_the_old_keeps_serving(live, tmp_path, breakage):
    srv, a, b, served = live
    pa = FM.load(a["model"]).predict_proba(lines_of(SAMPLES)).tolist()
    good = open(b["model"], "rb").read()
    bad = str(tmp_path / "bad.bin")
    if breakage == "truncated":
        data = good[: len(good) * 2 // 3]
    elif breakage == "flipped":
        data = bytearray(good)
        data[len(good) - 100] ^= 0x10
        data = bytes(data)
    elif breakage == "garbage":
        data = b"this is not a model\n"
    elif breakage == "wrong_dim":
        fm = FM(k=3, seed=1)
        fm.partial_fit([b"1 user=u1 item=i1", b"0 user=u2 item=i2"])
        fm.save(bad)
        data = open(bad, "rb").read()
    else:
        fm = FM.load(b["model"])
        names, _ = fm.embeddings()
        text = "bias nan\n" + "".join("%s 0.1 %s\n" % (n, " ".join(["0.1"] * fm.k)) for n in names[:5])
        data = text.encode()
    with open(bad, "wb") as f:
        f.write(data)
    v0 = version(srv)
    stop = threading.Event()
    failures = []

    def hammer():  # requests keep coming while the new file is refused
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"samples": SAMPLES})
                if r.status_code != 200 or r.json()["probabilities"] != pa:
                    failures.append(r.text)

    th = threading.Thread(target=hammer)
    th.start()
    try:
        replace(bad, served["model"])
        assert wait_for(lambda: srv.get("/healthz").json().get("last_error") is not None
                        or srv.get("/healthz").json().get("pending") is not None)
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
    assert failures == []
    h = srv.get("/healthz").json()
    assert h["model"]["version"] == v0 and h["generation"] == 1
    m = srv.get("/metrics").text
    if breakage == "wrong_dim":  # a model that loads but fits no index: it waits
        assert "factors" in h["pending"]
    else:
        assert h["reload_failures"] == 1 and "model" in h["last_error"]
        assert metric(m, "streamfm_reloads_total", file="model", result="failed") == 1
    # a good set later is taken
    for k in ("model", "items", "users"):
        replace(b[k], served[k])
    assert wait_for(lambda: version(srv) != v0)


def test_swap_under_load_no_failed_request_and_new_model_after(live):
    srv, a, b, served = live
    lines = lines_of(SAMPLES)
    pa = FM.load(a["model"]).predict_proba(lines).tolist()
    pb = FM.load(b["model"]).predict_proba(lines).tolist()
    va = version(srv)
    stop = threading.Event()
    bad = []
    seen = [[] for _ in range(4)]

    def hammer(i):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"samples": SAMPLES})
                if r.status_code != 200:
                    bad.append(r.text)
                    continue
                j = r.json()
                want = pa if j["model"] == va else pb
                if j["probabilities"] != want:
                    bad.append("model %s answered %s" % (j["model"], j["probabilities"]))
                seen[i].append(j["model"])

    ths = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in ths:
        t.start()
    assert wait_for(lambda: all(len(x) >= 2 for x in seen))  # every client is answered by A
    for k in ("items", "users", "model"):
        replace(b[k], served[k])
    ok = wait_for(lambda: version(srv) != va)
    n_at_swap = [len(x) for x in seen]
    wait_for(lambda: all(len(x) >= n + 2 for x, n in zip(seen, n_at_swap)))  # and then by B
    stop.set()
    for t in ths:
        t.join()
    assert ok and bad == []
    vb = version(srv)
    for s in seen:
        # each client: the old model, then the new one, never back
        assert s and s[0] == va and s[-1] == vb
        first_new = s.index(vb)
        assert set(s[first_new:]) == {vb}


def test_sighup_style_forced_reload(live):
    srv, a, b, served = live
    holder = srv.app.state.holder
    g0 = srv.get("/healthz").json()["generation"]
    holder.request_reload()   # what fm_serve does on SIGHUP: reload every file, changed or not
    assert wait_for(lambda: srv.get("/healthz").json()["generation"] == g0 + 1)


def test_featurizer_plugs_in_records(files):
    d, p = files

    def featurizer(records):
        return ["user=%s item=%s" % (r["user"], r["item"]) for r in records]

    srv = ServerThread(create_app(p["model"], poll_interval=0, featurizer=featurizer))
    try:
        r = srv.post("/v1/score", {"records": [{"user": "u1", "item": "i7"}, {"user": "u2", "item": "i8"}]})
        want = srv.post("/v1/score", {"samples": ["user=u1 item=i7", "user=u2 item=i8"]}).json()
        assert r.status_code == 200 and r.json()["probabilities"] == want["probabilities"]
        r = srv.post("/v1/score", {"records": [{"user": "u1"}]})  # the featurizer's KeyError: the client's fault
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_record"
    finally:
        srv.stop()


def test_record_whose_profile_holds_bytes_that_are_not_utf8(tmp_path):
    """A profile table's value that is not UTF-8 (a latin-1 file) goes into the
    feature as its bytes, as fm_sample rank writes it: the record scores and is
    explained as its line is by the API, not refused as "not valid Unicode"."""
    from sample_helpers import make_dir
    from streamfm.serve.records import RecordFeaturizer

    spec = make_dir(tmp_path / "spec")
    users = tmp_path / "spec" / "users.tsv"
    users.write_bytes(users.read_bytes().replace(b"i1|i2|i3", b"i1|i\xe92|i3"))
    featurizer = RecordFeaturizer(spec)
    [line] = [x.encode("utf-8", "surrogateescape") for x in featurizer([{"uid": "u1", "iid": "i1"}])]
    assert b" hist=i\xe92 " in line
    fm = FM(k=2, seed=1)
    fm.partial_fit([b"1" + line[1:], b"0 uid=u2 iid=i1"])
    path = str(tmp_path / "m.bin")
    fm.save(path)
    srv = ServerThread(create_app(path, poll_interval=0, featurizer=featurizer))
    try:
        r = srv.post("/v1/score", {"records": [{"uid": "u1", "iid": "i1"}], "explain": 20})
        assert r.status_code == 200, r.text
        assert r.json()["probabilities"] == fm.predict_proba([line]).tolist()
        assert [tuple(x) for x in r.json()["explain"][0]] == fm.explain([line], top=20)[0]
        assert ["hist=i\\xe92"] == [n for n, _ in r.json()["explain"][0] if n.startswith("hist=i") and n != "hist=i3"]
    finally:
        srv.stop()


# -- ANN ------------------------------------------------------------------------------

def random_index(n, k, seed):
    """A recall Index in memory: ``n`` random rows of ``k`` factors and a bias, keys k0, k1, ..."""
    from streamfm.recall.index import Index

    vec = np.random.default_rng(seed).normal(size=(n, k + 1)).astype(np.float32)
    keys = [b"k%d" % i for i in range(n)]
    off = np.zeros(n + 1, np.int64)
    np.cumsum([len(x) for x in keys], out=off[1:])
    return Index("items", vec, np.frombuffer(b"".join(keys), np.uint8), off, {})


def test_ann_searchers_recall_and_exclusions():
    pytest.importorskip("faiss", reason="faiss-cpu is in the [test] extra")
    from streamfm.recall.ann import AnnSearcher
    from streamfm.recall.index import Exclusions, brute_force

    rng = np.random.default_rng(3)
    n, k = 4000, 8
    index = random_index(n, k, 3)
    vec = index.vectors
    qs = rng.normal(size=(50, k + 1)).astype(np.float32)
    qs[:, k] = 1.0
    want, want_sc = brute_force(vec, qs, 20)
    for kind in ("hnsw", "ivf"):
        s = AnnSearcher(index, True, kind=kind, nlist=32, nprobe=8)
        idx, sc = s.search(qs, 20)
        hits = np.mean([len(set(idx[q]) & set(want[q])) / 20 for q in range(50)])
        assert hits >= 0.9, (kind, hits)
        # the scores are the exact float64 scores of the rows returned, best first
        ref = (vec[idx].astype(np.float64) * qs[:, None, :].astype(np.float64)).sum(-1)
        assert np.allclose(sc, ref, rtol=0, atol=1e-9) and (np.diff(sc, axis=1) <= 0).all()
        # excluded rows never come back
        ex = np.sort(want[0, :5])
        idx2, _ = s.search(qs[:1], 20, Exclusions(np.array([0, 5]), ex.astype(np.int64)))
        assert not set(ex) & set(idx2[0])


@pytest.mark.parametrize("pair,metric", [(True, "ip"), (False, "cos"), (False, "ip")])
def test_split_searcher_equals_the_exact_searcher(pair, metric):
    """Rows split among threads: the same rows, scores and order as one exact search."""
    from streamfm.recall.index import Exclusions, Index, Searcher
    from streamfm.recall.split import SplitSearcher

    rng = np.random.default_rng(4)
    n, k = 20000, 6
    vec = rng.normal(size=(n, k + 1)).astype(np.float32)
    vec[100:110] = vec[5]  # ties: the lower row first
    keys = [b"k%d" % i for i in range(n)]
    off = np.zeros(n + 1, np.int64)
    np.cumsum([len(x) for x in keys], out=off[1:])
    index = Index("items", vec, np.frombuffer(b"".join(keys), np.uint8), off, {})
    qs = rng.normal(size=(5, k + 1)).astype(np.float32)
    qs[0] = vec[5]
    qs[:, k] = 1.0 if pair else 0.0
    ex_rows = [np.array([], np.int64), np.array([3, 17000, 19999]), np.array([]), np.array([12000]), np.array([])]
    excl = Exclusions(np.r_[0, np.cumsum([len(e) for e in ex_rows])].astype(np.int64),
                      np.concatenate(ex_rows).astype(np.int64))
    self_hash = index.key_hash[[5, 9, 10000, 19000, 0]]
    want = Searcher(index, pair, metric, 1).search(qs, 50, excl, self_hash)
    for parts in (2, 3):
        got = SplitSearcher(index, pair, metric, parts).search(qs, 50, excl, self_hash)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_server_with_ann_answers_exact_on_request(files):
    pytest.importorskip("faiss", reason="faiss-cpu is in the [test] extra")
    from streamfm.serve.cli import ann_builder

    d, p = files
    srv = ServerThread(create_app(p["model"], p["items"], p["users"], poll_interval=0,
                                  ann=ann_builder("hnsw", 1, 16, 40, 64, None, 8)))
    try:
        assert sorted(srv.get("/healthz").json()["ann"]) == ["i2i/cos:hnsw", "u2i/ip:hnsw"]
        ex = srv.post("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 20, "exact": True}).json()
        ap = srv.post("/v1/recall", {"mode": "u2i", "key": "u0", "topn": 20}).json()
        assert len(set(ex["keys"]) & set(ap["keys"])) >= 18  # 1,200 items: HNSW is all but exact
        s = dict(zip(ex["keys"], ex["scores"]))
        assert all(s[k] == v for k, v in zip(ap["keys"], ap["scores"]) if k in s)
    finally:
        srv.stop()


def test_ivf_cells_are_at_most_one_a_39_items_and_faiss_prints_nothing(capfd):
    """--ann-nlist 64 over 200 items: faiss printed "WARNING clustering 200 points
    to 64 centroids: please provide at least 2496 training points" on stderr and
    trained cells of 3 rows. Now the cells are clamped to 200 // 39 = 5 (recorded
    as ``nlist``, asked ``nlist_asked``) and nothing reaches stderr; fewer items
    than one cell's worth get one cell; no items at all is still refused."""
    pytest.importorskip("faiss", reason="faiss-cpu is in the [test] extra")
    from streamfm.recall.ann import AnnSearcher
    from streamfm.recall.index import brute_force

    index = random_index(200, 8, 5)
    qs = np.random.default_rng(6).normal(size=(10, 9)).astype(np.float32)
    capfd.readouterr()
    s = AnnSearcher(index, True, kind="ivf", nlist=64, nprobe=8)
    assert capfd.readouterr() == ("", "")
    assert (s.nlist, s.nlist_asked, s.faiss_index.nlist) == (5, 64, 5)
    # nprobe 8 covers the 5 cells: the search is exact
    assert np.array_equal(s.search(qs, 10)[0], brute_force(index.vectors, qs, 10)[0])
    s = AnnSearcher(random_index(20, 8, 7), True, kind="ivf", nlist=30)
    assert capfd.readouterr() == ("", "")
    assert (s.nlist, s.nlist_asked) == (1, 30)
    s = AnnSearcher(random_index(2000, 8, 8), True, kind="ivf")  # the default, about sqrt(n), fits
    assert (s.nlist, s.nlist_asked) == (45, None) and capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="Number of training points"):
        AnnSearcher(random_index(0, 8, 9), True, kind="ivf")


def test_ann_nlist_clamp_is_reported_by_the_command_layer(files):
    """fm_serve says on stderr (its log) that --ann-nlist was more cells than
    the items can train, and serves the set: before, 20 items with
    --ann-nlist 30 were refused."""
    pytest.importorskip("faiss", reason="faiss-cpu is in the [test] extra")
    import logging

    from streamfm.serve.cli import ann_builder

    d, p = files
    rec = Recall.train(CLICKS[:3000], ITEMS, k=4, epochs=1, seed=2)
    small = {"model": os.path.join(d, "small20.bin"), "items": os.path.join(d, "small20.idx")}
    rec.fm.save(small["model"])
    Recall.save_index(rec.index(ITEMS[:20], "items"), small["items"])
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the command's logger may not propagate to pytest's
    log = logging.getLogger("streamfm.serve")
    log.addHandler(handler)
    try:
        srv = ServerThread(create_app(small["model"], small["items"], poll_interval=0,
                                      ann=ann_builder("ivf", 1, 16, 40, 64, 30, 8)))
    finally:
        log.removeHandler(handler)
    try:
        said = [r for r in records if "--ann-nlist" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING
        assert "30" in said[0].getMessage() and "20 items" in said[0].getMessage()
        assert "1 cell" in said[0].getMessage()
        assert sorted(srv.get("/healthz").json()["ann"]) == ["i2i/cos:ivf", "u2i/ip:ivf"]
        ap = srv.post("/v1/recall", {"mode": "i2i", "key": "i7", "topn": 5})
        ex = srv.post("/v1/recall", {"mode": "i2i", "key": "i7", "topn": 5, "exact": True})
        assert ap.status_code == 200 and ap.json()["keys"] == ex.json()["keys"]  # one cell: all of it searched
    finally:
        srv.stop()


def test_ann_that_cannot_index_a_set_refuses_it(files, tmp_path, monkeypatch):
    """faiss refusing a new items index is a refused reload, reported once, and a
    one-line start-up error: not an exception out of every poll. (IVF over fewer
    items than --ann-nlist cells no longer fails: the cells are clamped; faiss
    still refuses an empty set, which no served index can be, so its refusal is
    played here.)"""
    pytest.importorskip("faiss", reason="faiss-cpu is in the [test] extra")
    from streamfm.errors import StreamFMError
    from streamfm.recall import ann as ann_module
    from streamfm.serve.cli import ann_builder
    from streamfm.serve.state import Holder

    real = ann_module.AnnSearcher

    def refusing(index, *a, **kw):
        if index.n < 100:
            raise RuntimeError("Error in void faiss::Clustering::train_encoded(...) at Clustering.cpp:66: Error: "
                               "'nx >= static_cast<idx_t>(k)' failed: Number of training points (%d) should be at "
                               "least as large as number of clusters (30)" % index.n)
        return real(index, *a, **kw)

    monkeypatch.setattr(ann_module, "AnnSearcher", refusing)
    d, p = files
    ann = ann_builder("ivf", 1, 16, 40, 64, 30, 8)
    served = {k: str(tmp_path / ("served." + k)) for k in ("model", "items")}
    for k in served:
        shutil.copyfile(p[k], served[k])
    holder = Holder(served["model"], served["items"], ann=ann)
    v0 = holder.load().model.version
    rec = Recall.train(CLICKS[:3000], ITEMS, k=4, epochs=1, seed=2)
    small = {"model": str(tmp_path / "small.bin"), "items": str(tmp_path / "small.idx")}
    rec.fm.save(small["model"])
    Recall.save_index(rec.index(ITEMS[:20], "items"), small["items"])
    replace(small["items"], served["items"])
    replace(small["model"], served["model"])
    assert holder.poll() is False
    assert holder.failures == 1 and "20 items" in holder.last_error and "30" in holder.last_error
    assert holder.poll() is False and holder.failures == 1  # not tried again until a file changes
    assert holder.state.model.version == v0 and holder.state.generation == 1
    with pytest.raises(StreamFMError, match="cannot build the ivf index for u2i over 20 items"):
        create_app(small["model"], small["items"], poll_interval=0, ann=ann)


def test_an_empty_index_is_refused_with_one_line_at_start_and_on_reload(files, tmp_path):
    """An index of no items (``Recall.index([])`` writes one; fm_recall index does
    not) crashed the loader with a TypeError out of the crc32 (a memoryview of a
    zero-size array); now it is a refused file: one line at start-up, and a
    reload that keeps serving the set it has."""
    from streamfm.errors import StreamFMError
    from streamfm.serve.state import Holder

    d, p = files
    empty = str(tmp_path / "empty.idx")
    Recall.save_index(Recall(FM.load(p["model"])).index([], "items"), empty)
    with pytest.raises(StreamFMError, match="empty.idx holds no items: an empty index"):
        create_app(p["model"], empty, poll_interval=0)
    served = {k: str(tmp_path / ("served." + k)) for k in ("model", "items")}
    for k in served:
        shutil.copyfile(p[k], served[k])
    holder = Holder(served["model"], served["items"])
    n = holder.load().items.obj.n
    replace(empty, served["items"])
    assert holder.poll() is False
    assert holder.failures == 1 and "holds no items" in holder.last_error
    assert holder.state.items.obj.n == n > 0


# -- the command -----------------------------------------------------------------------

def start_cli(*args, timeout=900, cwd=None):
    """fm_serve in a subprocess on a free port; returns (process, base url)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([FM_SERVE, "--port", str(port)] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    url = "http://127.0.0.1:%d" % port
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("fm_serve did not start: %s" % proc.stderr.read().decode())


def stop_cli(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err.decode()


def test_cli_help():
    proc = subprocess.run([FM_SERVE, "--help"], stdout=subprocess.PIPE, timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0
    for flag in ("--items-index", "--users-index", "--host", "--port", "--workers", "--ann", "--max-topn",
                 "--max-body-bytes", "--body-timeout", "--header-timeout", "/v1/score", "/v1/recall", "/healthz", "/metrics", "SIGHUP"):
        assert flag in out


def test_cli_body_timeout_answers_a_stalled_body_408(files):
    """--body-timeout reaches the app: fm_serve answers a body that stops short;
    --header-timeout reaches the protocol: headers that stop short close the
    connection (they held it for ever)."""
    d, p = files
    proc, url = start_cli("-m", p["model"], "--poll-interval", "0", "--body-timeout", "0.5",
                          "--header-timeout", "0.5")
    try:
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.settimeout(60)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n" + STALLED["content-length"])
        status, headers, body = raw_answer(s)
        s.close()
        assert status == 408 and body["error"]["code"] == "body_timeout" and "0.5 s" in body["error"]["message"]
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.settimeout(60)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        assert s.recv(100) == b""  # closed, no answer: there is no request yet
        s.close()
        assert httpx.post(url + "/v1/score", json={"samples": SAMPLES}).status_code == 200
    finally:
        code, err = stop_cli(proc)
    assert "Traceback" not in err, err


def test_cli_sighup_reloads_and_sigterm_stops(files):
    d, p = files
    proc, url = start_cli("-m", p["model"], "--items-index", p["items"], "--poll-interval", "0")
    try:
        h = httpx.get(url + "/healthz").json()
        assert h["generation"] == 1 and h["items"]["records"] == len(ITEMS)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.get(url + "/healthz").json()["generation"] == 2)
        r = httpx.post(url + "/v1/score", json={"samples": SAMPLES})
        assert r.json()["probabilities"] == FM.load(p["model"]).predict_proba(lines_of(SAMPLES)).tolist()
    finally:
        code, err = stop_cli(proc)
    assert "Traceback" not in err, err
    assert "serving" in err


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


class Workers:
    """fm_serve -m MODEL --workers 2 on a free port, its stderr in tmp_path/err.txt."""

    def __init__(self, model, tmp_path):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.log_path = tmp_path / "err.txt"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([FM_SERVE, "-m", model, "--workers", "2", "--poll-interval", "0", "--port",
                                      str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        self.url = "http://127.0.0.1:%d" % port

    def err(self):
        return self.log_path.read_text()

    def up(self):
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self):
        """SIGTERM (passed on to every worker); the supervisor's exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def test_cli_workers_share_the_port_and_a_dead_worker_is_replaced(files, tmp_path):
    d, p = files
    w = Workers(p["model"], tmp_path)
    url = w.url
    try:
        assert wait_for(w.up, timeout=900), w.err()
        workers = children(w.proc.pid)
        assert len(workers) == 2
        pids = {httpx.get(url + "/healthz").json()["pid"] for _ in range(5)}
        assert pids <= workers
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(children(w.proc.pid) - {victim}) == 2, timeout=300)
        assert wait_for(lambda: "starting another" in w.err(), timeout=10)
        for _ in range(20):  # every answer comes from a live worker
            r = httpx.post(url + "/v1/score", json={"samples": ["a:1"]})
            assert r.status_code == 200
        w.proc.send_signal(signal.SIGHUP)  # passed on to every worker
        assert wait_for(lambda: httpx.get(url + "/healthz").json()["generation"] == 2)
    finally:
        code = w.stop()
    assert code == 0, w.err()
    assert "Traceback" not in w.err(), w.err()


def test_cli_worker_that_cannot_start_is_retried_less_and_less_often(files, tmp_path):
    """A worker that dies while the model on disk is one it refuses cannot start
    again: its slot waits twice as long after each quick death (0.5 s, 1 s, ...),
    instead of a new process five times a second for ever; the live worker keeps
    serving, and once the model is good again the slot fills."""
    d, p = files
    served = str(tmp_path / "served.bin")
    shutil.copyfile(p["model"], served)
    w = Workers(served, tmp_path)
    try:
        assert wait_for(lambda: "2 workers serving" in w.err(), timeout=900), w.err()  # both started
        good = open(served, "rb").read()
        (tmp_path / "broken.bin").write_bytes(good[:1000])
        replace(str(tmp_path / "broken.bin"), served)
        victim = sorted(children(w.proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: "starting another in 1.0 s" in w.err(), timeout=600), w.err()
        assert "starting another in 0.5 s" in w.err()
        for _ in range(10):  # the other worker serves meanwhile
            assert httpx.post(w.url + "/v1/score", json={"samples": ["a:1"]}).status_code == 200
        (tmp_path / "good.bin").write_bytes(good)
        replace(str(tmp_path / "good.bin"), served)
        assert w.err().count(", ready in ") == 2  # the first two workers only: no start succeeded
        assert wait_for(lambda: w.err().count(", ready in ") == 3, timeout=600), w.err()
        assert len(children(w.proc.pid)) == 2 and w.up()
    finally:
        code = w.stop()
    assert code == 0, w.err()
    assert "Traceback" not in w.err(), w.err()


@pytest.mark.parametrize("what", ["no_model", "broken_model", "mismatched_index"])
def test_cli_refuses_to_start_on_a_bad_set(files, tmp_path, what):
    d, p = files
    if what == "no_model":
        args = ["-m", tmp_path / "nope.bin"]
    elif what == "broken_model":
        bad = tmp_path / "bad.bin"
        bad.write_bytes(open(p["model"], "rb").read()[:1000])
        args = ["-m", bad]
    else:
        other = make_set(str(tmp_path), seed=5, clicks=CLICKS[:500], stem="o")
        args = ["-m", p["model"], "--items-index", other["items"]]
    proc = subprocess.run([FM_SERVE, "--port", "0"] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=900)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert {"no_model": "no such", "broken_model": "truncated", "mismatched_index": "built from"}[what] in err


# -- raw records through fm_sample's featurizer (--spec) --------------------------------

def test_cli_spec_record_scores_exactly_as_its_fm_sample_line_in_fm_predict(tmp_path):
    """A raw impression sent to ``fm_serve --spec`` scores exactly as the line
    ``fm_sample rank`` writes for the same log record scores in ``fm_predict``."""
    from helpers import FM_PREDICT, FM_TRAIN, run
    from sample_helpers import fm_sample, make_dir, random_rows, write_log
    from test_sample_identity import learning_spec

    rows = random_rows(120, seed=4)
    spec = make_dir(tmp_path, learning_spec(rows))
    log = tmp_path / "log.jsonl"
    write_log(log, rows, "jsonl")
    frozen = tmp_path / "frozen.json"
    r = fm_sample("fit", "--spec", spec, "--input", log, "-o", frozen, "-q")
    assert r.returncode == 0, r.stderr
    r = fm_sample("rank", "--spec", frozen, "--input", log, "--negatives", "all", "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout
    model = tmp_path / "m.bin"
    r = run(FM_TRAIN, "-m", model, "-dim", "1,1,4", "--seed", "3", "-q", input=lines)
    assert r.returncode == 0, r.stderr
    r = run(FM_PREDICT, "-m", model, "-q", input=lines)
    assert r.returncode == 0, r.stderr
    want = [float(ln.split()[1]) for ln in r.stdout.splitlines()]
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(records) == len(want) > 300

    proc, url = start_cli("-m", model, "--spec", frozen, "--poll-interval", "0", "--max-samples", "5000", cwd=tmp_path)
    try:
        got = httpx.post(url + "/v1/score", json={"records": records}, timeout=60)
        assert got.status_code == 200, got.text
        assert got.json()["probabilities"] == want          # equal, not close
        one = httpx.post(url + "/v1/score", json={"records": records[7:8]}).json()["probabilities"]
        assert one == want[7:8]
        # qualified attribute names route like the log's columns
        rec = dict(records[7])
        q = {"user.uid": rec.pop("uid"), "item.iid": rec.pop("iid")}
        q.update({k: v for k, v in rec.items() if k not in ("uid", "iid")})
        assert httpx.post(url + "/v1/score", json={"records": [q]}).json()["probabilities"] == want[7:8]
        h = httpx.get(url + "/healthz").json()
        assert h["spec"]["fingerprint"] == json.loads(frozen.read_text())["fingerprint"]
        for bad, why in (([{"uid": "u1", "iid": "i1", "colour": "red"}], "unknown name 'colour'"),
                         ([{"uid": "u1", "user.uid": "u2"}], "given twice"),
                         (["uid=u1"], "a record is an object"),
                         ([{"uid": {"nested": 1}}], "records")):
            r = httpx.post(url + "/v1/score", json={"records": bad})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "bad_record" and why in r.json()["error"]["message"], r.text
    finally:
        code, err = stop_cli(proc)
    assert "Traceback" not in err, err


def test_cli_refuses_a_bad_spec(files, tmp_path):
    d, p = files
    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    proc = subprocess.run([FM_SERVE, "--port", "0", "-m", p["model"], "--spec", bad], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("fm_serve: error: --spec %s: " % bad) and len(err.strip().splitlines()) == 1, err
