"""The server's counters and their Prometheus text exposition (format 0.0.4).

Per process: with ``fm_serve --workers N`` each worker counts its own requests
(a scrape of the shared port sees one worker; the ``pid`` label tells which).
"""

import os
import threading
import time

# request latency buckets, seconds
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(**kv):
    return "{" + ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                          for k, v in kv.items()) + "}"


class Metrics:
    """Requests and errors by endpoint, a latency histogram per endpoint, reloads, samples scored."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}    # (endpoint, status) -> count
        self.errors = {}      # (endpoint, code) -> count
        self.hist = {}        # endpoint -> [bucket counts..., +Inf count, sum]
        self.reloads = {}     # (file, result) -> count
        self.samples = 0
        self.started = time.time()

    def observe(self, endpoint, status, seconds, error=None, samples=0):
        """Count one answered request (``error``: its error code, for a 4xx/5xx)."""
        with self.lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if error is not None:
                ek = (endpoint, error)
                self.errors[ek] = self.errors.get(ek, 0) + 1
            h = self.hist.get(endpoint)
            if h is None:
                h = self.hist[endpoint] = [0] * (len(BUCKETS) + 2)
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[i] += 1
                    break
            else:
                h[len(BUCKETS)] += 1
            h[-1] += seconds
            self.samples += samples

    def reload(self, file, result):
        """Count a reload attempt of ``file`` (model, items, users, set) by result (ok, failed, mismatch)."""
        with self.lock:
            key = (file, result)
            self.reloads[key] = self.reloads.get(key, 0) + 1

    def render(self, holder, now=None):
        """The exposition text."""
        now = time.time() if now is None else now
        pid = os.getpid()
        out = []

        def head(name, kind, text):
            out.append("# HELP %s %s" % (name, text))
            out.append("# TYPE %s %s" % (name, kind))

        with self.lock:
            head("streamfm_requests_total", "counter", "HTTP requests answered, by endpoint and status.")
            for (ep, st), c in sorted(self.requests.items()):
                out.append("streamfm_requests_total%s %d" % (_labels(endpoint=ep, status=st, pid=pid), c))
            head("streamfm_request_errors_total", "counter", "Requests answered with an error, by endpoint and code.")
            for (ep, code), c in sorted(self.errors.items()):
                out.append("streamfm_request_errors_total%s %d" % (_labels(endpoint=ep, code=code, pid=pid), c))
            head("streamfm_request_duration_seconds", "histogram", "Time from request to answer, by endpoint.")
            for ep, h in sorted(self.hist.items()):
                acc = 0
                for b, c in zip(BUCKETS, h):
                    acc += c
                    out.append("streamfm_request_duration_seconds_bucket%s %d"
                               % (_labels(endpoint=ep, le=repr(b), pid=pid), acc))
                acc += h[len(BUCKETS)]
                out.append("streamfm_request_duration_seconds_bucket%s %d" % (_labels(endpoint=ep, le="+Inf", pid=pid), acc))
                out.append("streamfm_request_duration_seconds_sum%s %.9g" % (_labels(endpoint=ep, pid=pid), h[-1]))
                out.append("streamfm_request_duration_seconds_count%s %d" % (_labels(endpoint=ep, pid=pid), acc))
            head("streamfm_samples_scored_total", "counter", "Samples scored by /v1/score.")
            out.append("streamfm_samples_scored_total%s %d" % (_labels(pid=pid), self.samples))
            head("streamfm_reloads_total", "counter",
                 "Reload attempts by file and result (ok: swapped in; failed: refused; mismatch: waits for "
                 "matching files).")
            for (f, r), c in sorted(self.reloads.items()):
                out.append("streamfm_reloads_total%s %d" % (_labels(file=f, result=r, pid=pid), c))
        st = holder.state
        head("streamfm_model_age_seconds", "gauge", "Seconds since the served model file was written.")
        out.append("streamfm_model_age_seconds%s %.3f" % (_labels(version=st.model.version, pid=pid),
                                                          max(0.0, now - st.model.mtime)))
        head("streamfm_model_loaded_timestamp_seconds", "gauge", "When the served model was loaded (Unix time).")
        out.append("streamfm_model_loaded_timestamp_seconds%s %.3f" % (_labels(pid=pid), st.model.loaded_at))
        head("streamfm_model_features", "gauge", "Features in the served model.")
        out.append("streamfm_model_features%s %d" % (_labels(pid=pid), st.model.obj.n_rows - 1))
        head("streamfm_index_records", "gauge", "Records in each served index.")
        for kind in ("items", "users"):
            slot = getattr(st, kind)
            if slot is not None:
                out.append("streamfm_index_records%s %d" % (_labels(index=kind, version=slot.version, pid=pid),
                                                           slot.obj.n))
        head("streamfm_state_generation", "gauge", "Sets served since start (1 = the first).")
        out.append("streamfm_state_generation%s %d" % (_labels(pid=pid), st.generation))
        head("streamfm_reload_pending", "gauge", "1 while a loaded model waits for matching indexes.")
        out.append("streamfm_reload_pending%s %d" % (_labels(pid=pid), 1 if holder.pending else 0))
        head("streamfm_uptime_seconds", "gauge", "Seconds since this process started serving.")
        out.append("streamfm_uptime_seconds%s %.3f" % (_labels(pid=pid), now - self.started))
        return "\n".join(out) + "\n"
