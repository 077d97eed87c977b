"""``fm_serve``: serve a model (and recall indexes) over HTTP/JSON with uvicorn.

One process serves with ``--workers 1``; with more, this process binds the
port, starts that many worker processes on it (each maps the same model
file: its pages are shared) and restarts one that dies; SIGHUP is passed on
to every worker, SIGTERM/SIGINT stop them (requests in flight are finished).
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import click

from ..command import CONTEXT, fail

logger = logging.getLogger("streamfm.serve")


def _log_setup(quiet):
    """streamfm's log lines (reloads, refusals, errors) on stderr, with time and pid."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s fm_serve[%(process)d] %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("streamfm")
    root.handlers[:] = [h]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def ann_builder(kind, cores, m, ef_construction, ef_search, nlist, nprobe):
    """``create_app``'s ``ann``: faiss searchers for u2i and i2i (over the items index)."""
    from ..errors import StreamFMError
    from ..recall.ann import MIN_ROWS_A_CELL, AnnSearcher

    def build(slots):
        items = slots.get("items")
        if items is None:
            return {}
        out = {}
        for mode, pair, metric in (("u2i", True, "ip"), ("i2i", False, "cos")):
            try:
                s = AnnSearcher(items.obj, pair, metric, kind=kind, cores=cores, m=m,
                                ef_construction=ef_construction, ef_search=ef_search, nlist=nlist, nprobe=nprobe)
            except RuntimeError as e:
                # faiss refuses a set it cannot index (IVF over no items): a
                # StreamFMError, so that start-up fails with one line and a reload refuses the set
                raise StreamFMError("%s: cannot build the %s index for %s over %d items: %s"
                                    % (items.path, kind, mode, items.obj.n, str(e).rsplit("failed: ", 1)[-1]))
            logger.info("fm_serve: %s index for %s over %d items built in %.1f s", kind, mode, items.obj.n,
                        s.build_seconds)
            out[(mode, metric)] = s
        if s.nlist_asked is not None and s.nlist < s.nlist_asked:  # the same cells in every mode: said once
            logger.warning("fm_serve: --ann-nlist %d is more cells than %d items can train (%d a cell): the ivf "
                           "index over %s has %d cell%s", s.nlist_asked, items.obj.n, MIN_ROWS_A_CELL, items.path,
                           s.nlist, "" if s.nlist == 1 else "s")
        return out
    return build


@click.command(context_settings=CONTEXT)
@click.option("-m", "model_path", metavar="MODEL", required=True,
              help="Model to serve (txt or bin; a binary model is memory-mapped). Replace it by renaming a new "
                   "file over it (as fm_train -m does): the server loads it, checks it and swaps it in.")
@click.option("--items-index", metavar="IDX", default=None, help="Items index (fm_recall index --items): u2i, i2i.")
@click.option("--users-index", metavar="IDX", default=None, help="Users index (fm_recall index --users): i2u, u2u.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port (and the mapped model's pages).")
@click.option("--cores", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Threads per process running recall searches.")
@click.option("-dim", "--dim", "dim", type=click.IntRange(0), default=None, metavar="K",
              help="Factor count every model must have (default: the first model's, then any that matches "
                   "its indexes).")
@click.option("--poll-interval", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds between looks at the model and index files (0: reload on SIGHUP only).")
@click.option("--no-mmap", is_flag=True, help="Read binary models into memory instead of mapping them.")
@click.option("--probe", "probe_path", metavar="FILE", default=None,
              help="Lines (fm_predict input) every new model must score to finite numbers before it is "
                   "swapped in (default: an empty sample and one of the model's first features).")
@click.option("--max-body-bytes", type=click.IntRange(1024), default=8 << 20, show_default=True,
              help="Largest request body; a bigger one gets 413.")
@click.option("--max-samples", type=click.IntRange(1), default=10000, show_default=True,
              help="Most samples in one score request.")
@click.option("--max-topn", type=click.IntRange(1), default=1000, show_default=True,
              help="Largest topn of a recall request.")
@click.option("--max-explain", type=click.IntRange(0), default=100, show_default=True,
              help="Largest explain (top features) of a score request.")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="Time a request body has to arrive in full once the server reads it; a "
                                      "body still short then gets 408 and its connection is closed.")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Time a connection has to send a request's headers in full, from its "
                                      "opening or the request's first byte; one still short then is closed "
                                      "(an idle keep-alive connection is not).")
@click.option("--ann", type=click.Choice(["none", "hnsw", "ivf"]), default="none", show_default=True,
              help="Approximate search for u2i and i2i (faiss: pip install 'streamfm[faiss]'); a request with "
                   "\"exact\": true still searches exactly.")
@click.option("--ann-m", type=click.IntRange(4, 128), default=32, show_default=True, help="HNSW links a node.")
@click.option("--ann-ef-construction", type=click.IntRange(8), default=80, show_default=True,
              help="HNSW build breadth.")
@click.option("--ann-ef-search", type=click.IntRange(8), default=128, show_default=True,
              help="HNSW search breadth (recall against speed).")
@click.option("--ann-nlist", type=click.IntRange(1), default=None,
              help="IVF cells (default: about sqrt(items)); at most one a 39 items, fewer for a small set "
                   "(said on stderr).")
@click.option("--ann-nprobe", type=click.IntRange(1), default=32, show_default=True, help="IVF cells searched.")
@click.option("--spec", "spec_path", metavar="SPEC", default=None,
              help="Frozen fm_sample spec (fm_sample fit -o): /v1/score then also takes \"records\", raw "
                   "impressions {\"name\": value} as the log fm_sample rank reads has them, featurized as "
                   "fm_sample featurizes them (profile tables joined).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--worker-fd", type=int, default=None, hidden=True)
@click.option("--ready-fd", type=int, default=None, hidden=True)
def fm_serve(model_path, items_index, users_index, host, port, workers, cores, dim, poll_interval, no_mmap,
             probe_path, max_body_bytes, max_samples, max_topn, max_explain, body_timeout, header_timeout, ann, ann_m,
             ann_ef_construction, ann_ef_search, ann_nlist, ann_nprobe, spec_path, quiet, worker_fd, ready_fd):
    """Serve an FM over HTTP/JSON: scores, recall, health and metrics.

    \b
    POST /v1/score   {"samples": ["a:1 b:0.5", {"a": 1, "c": 2}], "explain": 3}
                     -> {"probabilities": [...], "explain": [[[name, phi], ...], ...]}
                     with --spec: {"records": [{"uid": "u1", "iid": "i9", "hour": 7}, ...]}
    POST /v1/recall  {"mode": "u2i", "key": "u1", "features": "age=3 city=7", "topn": 50,
                      "exclude": ["i9"]} -> {"keys": [...], "scores": [...]}
    GET  /healthz    model and index versions, load time, age
    GET  /metrics    Prometheus text
    \b
    The files are watched: a model or index renamed over the old one is loaded
    in the background, checked and swapped in without dropping a request; one
    that fails its checks is refused (logged) and the old set keeps serving.
    SIGHUP reloads every file. Bad requests get a 4xx JSON error.
    \b
    Example:
      fm_serve -m model.bin --items-index items.idx --port 8080
    """
    _log_setup(quiet)
    if workers > 1 and worker_fd is None:
        _supervise(workers, host, port, quiet)
        return
    probe_text = None
    if probe_path:
        try:
            with open(probe_path, "rb") as f:
                probe_text = f.read()
        except OSError as e:
            raise click.ClickException("%s: %s" % (probe_path, e.strerror or e))
    _serve_one(model_path, items_index, users_index, host, port, cores, dim, poll_interval, not no_mmap,
               probe_text, max_body_bytes, max_samples, max_topn, max_explain, body_timeout, header_timeout,
               None if ann == "none" else ann_builder(ann, cores, ann_m, ann_ef_construction, ann_ef_search,
                                                      ann_nlist, ann_nprobe),
               worker_fd, ready_fd, quiet, spec_path)


def _fail(msg):
    fail("fm_serve", msg)


def _serve_one(model_path, items_index, users_index, host, port, cores, dim, poll_interval, mmap, probe_text,
               max_body_bytes, max_samples, max_topn, max_explain, body_timeout, header_timeout, ann, worker_fd,
               ready_fd, quiet, spec_path=None):
    try:
        import uvicorn
        from .app import Limits, create_app
    except ImportError as e:
        _fail("the server needs its extra: pip install 'streamfm[serve]' (%s)" % e)
    from .. import jit
    from ..errors import StreamFMError
    from ..recall.index import FaissMissing

    from .state import warm_kernels

    t0 = time.time()
    jit.release_compiler_memory()  # importing numba mapped all of LLVM; loading kernels needs part of it
    featurizer = None
    if spec_path:
        from .records import RecordFeaturizer

        try:
            featurizer = RecordFeaturizer(spec_path)
            featurizer([])  # nothing to featurize, but the spec's routes are checked
        except (StreamFMError, OSError, ValueError) as e:
            _fail("--spec %s: %s" % (spec_path, e))
    try:
        warm_kernels(model_path, bool(items_index), bool(users_index), mmap)
        jit.release_compiler_memory()  # the kernels are loaded: LLVM's pages go before the model's come in
        app = create_app(model_path, items_index, users_index, k=dim, mmap=mmap, poll_interval=poll_interval,
                         limits=Limits(max_body_bytes, max_samples, max_explain, max_topn, body_timeout), ann=ann,
                         cores=cores, probe_text=probe_text, featurizer=featurizer)
    except (StreamFMError, OSError, FaissMissing) as e:
        _fail(str(e))
    jit.release_compiler_memory()
    holder = app.state.holder
    signal.signal(signal.SIGHUP, lambda signum, frame: holder.request_reload())
    st = holder.state
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .protocol import with_header_timeout

    config = uvicorn.Config(app, host=host, port=port, loop=loop, http=with_header_timeout(HttpToolsProtocol,
                                                                                           header_timeout),
                            lifespan="on", log_level="warning", access_log=False, server_header=False,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    sockets = None
    if worker_fd is not None:
        sockets = [socket.socket(fileno=worker_fd)]
    else:
        try:
            sock = config.bind_socket()
        except SystemExit:
            _fail("cannot listen on %s:%d" % (host, port))
        sockets = [sock]
        port = sock.getsockname()[1]
    if not quiet:
        logger.info("serving %s (version %s, %d features, k=%d)%s%s on http://%s:%d, ready in %.2f s",
                    model_path, st.model.version, st.model.obj.n_rows - 1, st.model.obj.k,
                    ", items %s (%d)" % (items_index, st.items.obj.n) if st.items else "",
                    ", users %s (%d)" % (users_index, st.users.obj.n) if st.users else "",
                    host, port, time.time() - t0)
    if ready_fd is not None:
        from ..output import OutputError, write_all

        try:
            write_all(ready_fd, b"1", "the supervisor's pipe")
            os.close(ready_fd)
        except (OSError, OutputError):
            pass  # a restarted worker: nobody waits for it
    server.run(sockets=sockets)


RESTART_FIRST = 0.5    # seconds before the second quick restart of a worker slot
RESTART_MAX = 60.0     # the longest wait between restarts
RESTART_SETTLED = 60.0  # a worker that served this long died of something else: restart at once


def restart_delay(previous, ran):
    """Seconds before a dead worker's slot starts another, given the wait
    ``previous`` before the one that died and how long it ``ran``.

    A worker dying soon after its start most likely cannot start (the model
    on disk now is one it refuses): restarting it five times a second for
    ever would spend the live workers' cores on numba's start-up, so quick
    deaths wait twice as long each time, up to RESTART_MAX. A worker that
    served RESTART_SETTLED seconds or more is replaced at once.

    >>> [restart_delay(d, 1.0) for d in (0.0, 0.5, 16.0, 60.0)]
    [0.5, 1.0, 32.0, 60.0]
    >>> restart_delay(32.0, 600.0)
    0.0
    """
    if ran >= RESTART_SETTLED:
        return 0.0
    return min(RESTART_MAX, max(RESTART_FIRST, 2.0 * previous))


def _supervise(workers, host, port, quiet):
    """Bind the port, run ``workers`` worker processes on it, restart any that dies."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=2048, reuse_port=False)
    except OSError as e:
        _fail("cannot listen on %s:%d: %s" % (host, port, e.strerror or e))
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    argv = [a for a in sys.argv[1:]]
    stopping = []

    def spawn():
        r, w = os.pipe()
        os.set_inheritable(w, True)
        cmd = [sys.executable, "-m", "streamfm.serve.cli"] + argv + ["--worker-fd", str(sock.fileno()),
                                                                     "--ready-fd", str(w)]
        p = subprocess.Popen(cmd, pass_fds=(sock.fileno(), w))
        os.close(w)
        return p, r

    def forward(signum, frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
                except OSError:
                    pass

    procs = []
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for i in range(workers):
        p, r = spawn()
        ready = os.read(r, 1)
        os.close(r)
        if ready != b"1":
            code = p.wait()
            for q in procs:
                q.terminate()
            sys.exit(code or 1)
        procs.append(p)
    if not quiet:
        logger.info("%d workers serving on http://%s:%d", workers, host, port)
    started = [time.time()] * workers
    delay = [0.0] * workers  # the wait before each slot's last start
    due = [None] * workers   # when a dead worker's slot starts another
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if stopping:
                break
            now = time.time()
            if due[i] is None:
                if p.poll() is None:
                    continue
                delay[i] = restart_delay(delay[i], now - started[i])
                due[i] = now + delay[i]
                logger.error("worker %d exited (%s); starting another%s", p.pid, p.returncode,
                             " in %.1f s (it ran %.1f s)" % (delay[i], now - started[i]) if delay[i] else "")
            if now >= due[i]:
                procs[i], r = spawn()
                os.close(r)
                started[i] = time.time()
                due[i] = None
    deadline = time.time() + 30
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    sys.exit(0 if stopping[0] == signal.SIGTERM else 128 + stopping[0])


if __name__ == "__main__":
    fm_serve()
