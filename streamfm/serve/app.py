"""The HTTP/JSON application (ASGI, starlette): /v1/score, /v1/recall, /healthz, /metrics.

``create_app(model_path, ...)`` loads the first set (model and indexes; a
``StreamFMError`` if it cannot serve) and returns the app; run it with any ASGI
server (``fm_serve`` runs uvicorn). While it runs, a watcher thread reloads
changed files (``state.Holder``); ``app.state.holder.request_reload()`` forces a
reload (``fm_serve`` calls it on SIGHUP: the library installs no signal handlers).

Every answer is JSON (``/metrics``: Prometheus text). A bad request gets a 4xx
``{"error": {"code", "message"[, "sample"]}}`` (``errors.RequestError``); an
exception the handlers did not foresee is logged and answered 500, and the
worker keeps serving.
"""

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from . import search
from .errors import RequestError
from .metrics import Metrics
from .scoring import json_type, samples_text, score_text
from .state import Holder, Watcher

logger = logging.getLogger("streamfm.serve")

JSON = "application/json"
INLINE_SAMPLES = 2000  # bigger score requests run on a worker thread, not the event loop


def _json(obj, status=200):
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON)


class Limits:
    """Request limits: ``max_body_bytes``, ``max_samples`` a score request,
    ``max_explain`` (top-N phi), ``max_topn`` a recall request, ``body_timeout``
    (seconds for the whole body to arrive once the handler reads it)."""

    def __init__(self, max_body_bytes=8 << 20, max_samples=10000, max_explain=100, max_topn=1000,
                 body_timeout=10.0):
        self.max_body_bytes = int(max_body_bytes)
        self.max_samples = int(max_samples)
        self.max_explain = int(max_explain)
        self.max_topn = int(max_topn)
        self.body_timeout = float(body_timeout)


async def read_json(request, limits):
    """The request body as JSON; RequestError for a body over ``limits.max_body_bytes``
    (413), one not all there ``limits.body_timeout`` seconds after the read began
    (408, and the connection is closed), or bad JSON (400).

    The one place request bodies are read: uvicorn has no body-read timeout,
    so without ours a client that declares more body than it sends holds its
    connection and this task until it gives up.
    """
    limit = limits.max_body_bytes
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            declared = int(cl)
        except ValueError:
            raise RequestError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise RequestError(413, "body_too_large", "the body has %d bytes; the limit is %d" % (declared, limit))
    try:
        body = await asyncio.wait_for(_read_body(request, limit), limits.body_timeout)
    except asyncio.TimeoutError:
        # the rest of the body may still come and would be read as the next request
        raise RequestError(408, "body_timeout", "the body did not all arrive within %g s" % limits.body_timeout,
                           close=True) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(400, "malformed_json", "the body is not valid JSON: %s" % str(e)[:200]) from None


async def _read_body(request, limit):
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", "the body is over the limit of %d bytes" % limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # the client's doing, not a bug: no traceback, not an "internal" 500 (nginx's 499; no one reads it)
        raise RequestError(499, "client_disconnected", "the client closed the connection before its body "
                           "was all sent", close=True) from None
    return b"".join(chunks)


def create_app(model_path, items_index=None, users_index=None, *, k=None, mmap=True, poll_interval=1.0,
               limits=None, featurizer=None, ann=None, cores=1, probe_text=None):
    """The ASGI app serving ``model_path`` (and the optional indexes).

    Parameters
    ----------
    model_path : str
        Model file (txt or bin; a binary model is memory-mapped unless ``mmap`` is false).
    items_index, users_index : str, optional
        Index files from ``fm_recall index`` (u2i and i2i search items, i2u and u2u users).
    k : int, optional
        Factor count every model must have (as fm_predict ``-dim``).
    poll_interval : float
        Seconds between looks at the files (0: only when ``request_reload`` is called).
    limits : Limits
        Request size limits.
    featurizer : callable, optional
        ``featurizer(records) -> list of str``: turns the ``records`` of a score
        request (raw attribute records) into feature lines (``fm_serve --spec``
        passes ``records.RecordFeaturizer``, fm_sample's featurizer); a
        ValueError it raises is a 400 ``bad_record``; without it such a request
        is refused (400 ``no_featurizer``). It may be called from several
        threads.
    ann : callable, optional
        ``ann(slots) -> {(mode, metric): searcher}``: ANN searchers built for every
        new set (``cli.ann_builder``).
    cores : int
        Threads that run recall searches.
    probe_text : bytes, optional
        Lines every new model must score to finite numbers (default: built from the model).
    """
    limits = limits or Limits()
    metrics = Metrics()
    holder = Holder(model_path, items_index, users_index, k=k, mmap=mmap, probe_text=probe_text, ann=ann,
                    cores=cores, on_reload=metrics.reload)
    holder.load()
    pool = ThreadPoolExecutor(max_workers=max(1, int(cores)), thread_name_prefix="streamfm-serve")

    def endpoint(name):
        def deco(fn):
            async def handler(request):
                t0 = time.perf_counter()
                err = None
                samples = 0
                try:
                    resp, samples = await fn(request)
                except RequestError as e:
                    err = e.code
                    resp = _json(e.body(), e.status)
                    if e.close:
                        resp.headers["connection"] = "close"  # uvicorn then closes the connection
                except Exception:  # a bug: logged and answered, the worker keeps serving
                    logger.exception("fm_serve: %s failed", name)
                    err = "internal"
                    resp = _json({"error": {"code": "internal", "message": "internal error (logged)"}}, 500)
                metrics.observe(name, resp.status_code, time.perf_counter() - t0, err, samples)
                return resp
            return handler
        return deco

    @endpoint("score")
    async def score(request):
        doc = await read_json(request, limits)
        if type(doc) is not dict:
            raise RequestError(400, "wrong_type", "the request must be a JSON object, not %s" % json_type(doc))
        unknown = sorted(set(doc) - {"samples", "records", "explain"})
        if unknown:
            raise RequestError(400, "unknown_field", "unknown field(s) %s (known: samples, records, explain)"
                               % ", ".join(map(repr, unknown)))
        explain = doc.get("explain", 0)
        if type(explain) is not int:
            raise RequestError(400, "wrong_type", "explain must be an integer, not %s" % json_type(explain))
        if not 0 <= explain <= limits.max_explain:
            raise RequestError(400, "bad_explain", "explain must be in [0, %d]" % limits.max_explain)
        if ("samples" in doc) == ("records" in doc):
            raise RequestError(400, "missing_field", "give either samples or records")
        if "records" in doc:
            records = doc["records"]
            if type(records) is list and len(records) > limits.max_samples:
                raise RequestError(413, "too_many_samples", "%d records; the limit is %d a request"
                                   % (len(records), limits.max_samples))
            if type(records) is list and len(records) > INLINE_SAMPLES:
                samples = await asyncio.get_running_loop().run_in_executor(pool, featurize, featurizer, records)
            else:
                samples = featurize(featurizer, records)
        else:
            samples = doc["samples"]
        if type(samples) is list and len(samples) > limits.max_samples:
            raise RequestError(413, "too_many_samples", "%d samples; the limit is %d a request"
                               % (len(samples), limits.max_samples))
        text = samples_text(samples)
        n = len(samples)
        state = holder.state
        if n <= INLINE_SAMPLES:
            scored = score_text(state.model.obj, text, n, explain)
        else:
            scored = await asyncio.get_running_loop().run_in_executor(
                pool, score_text, state.model.obj, text, n, explain)
        out = {"probabilities": scored.probabilities, "model": state.model.version}
        if explain:
            out["explain"] = scored.explained
        return _json(out), n

    @endpoint("recall")
    async def recall(request):
        doc = await read_json(request, limits)
        q = search.check_query(doc, limits.max_topn)
        state = holder.state
        out = await asyncio.get_running_loop().run_in_executor(pool, search.run, state, q)
        out["model"] = state.model.version
        return _json(out), 0

    @endpoint("healthz")
    async def healthz(request):
        d = {"status": "ok", "pid": os.getpid()}
        d.update(holder.describe())
        if featurizer is not None and hasattr(featurizer, "info"):
            d["spec"] = featurizer.info()
        return _json(d), 0

    @endpoint("metrics")
    async def metrics_text(request):
        return Response(metrics.render(holder), media_type="text/plain; version=0.0.4; charset=utf-8"), 0

    async def http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        metrics.observe("other", exc.status_code, 0.0, code)
        return _json({"error": {"code": code, "message": "%s %s: %s" % (request.method, request.url.path,
                                                                        exc.detail)}}, exc.status_code)

    @asynccontextmanager
    async def lifespan(app):
        watcher = Watcher(holder, poll_interval)
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            pool.shutdown(wait=False)

    app = Starlette(routes=[
        Route("/v1/score", score, methods=["POST"]),
        Route("/v1/recall", recall, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.holder = holder
    app.state.metrics = metrics
    return app


def featurize(featurizer, records):
    """The feature lines of a score request's ``records`` (raw attribute records).

    The one place where the sample builder's featurizer plugs in:
    ``featurizer(records)`` returns one feature line (``NAME:VALUE ...``) per
    record; a ValueError or TypeError it raises is the client's fault (400).
    """
    if featurizer is None:
        raise RequestError(400, "no_featurizer", "this server takes samples, not raw records (it has no featurizer)")
    if type(records) is not list:
        raise RequestError(400, "wrong_type", "records must be an array, not %s" % json_type(records))
    try:
        lines = featurizer(records)
    except RequestError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise RequestError(400, "bad_record", "records: %s" % e) from None
    return list(lines)
