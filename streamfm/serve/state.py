"""What the server serves (a model and its indexes), and how a new set replaces it.

A ``ServingState`` is immutable: one model (``predict.ServingModel``, its
binary file memory-mapped) and, optionally, an items and a users index with
their searchers, all checked to belong together. A request takes the state
current when it starts and uses it to the end, so a swap never changes
anything under a request in flight; the old state is freed when the last
request that holds it is done.

``Holder`` keeps the current state and replaces it: ``poll()`` looks at the
files (inode, size, modification time); a changed file (a scheduled retrain
renames its new model over the old one) is loaded and checked in the
calling thread (the watcher thread, never a request): the format and its
checksums, the factor count, finite weights, a probe score, and that every
index was built from the model (its model fingerprint). A set that passes is
swapped in at once; a file that fails is refused and logged, and the old set
keeps serving. A new model whose indexes have not been rebuilt yet waits
(``pending``) until matching indexes arrive. ``Watcher`` runs ``poll`` every
``interval`` seconds in a daemon thread; ``request_reload()`` (the command's
SIGHUP) makes it reload every file at once.
"""

import logging
import os
import threading
import time

import numpy as np

from ..errors import ModelFormatError, StreamFMError
from ..fm import probabilities
from ..predict import ServingModel
from ..recall.index import Searcher, array_crc32, fingerprint_matches, model_fingerprint, read_index
from ..recall.query import MODES
from ..recall.split import SplitSearcher

logger = logging.getLogger("streamfm.serve")

FILES = ("model", "items", "users")


def identity(path):
    """(device, inode, size, mtime_ns) of a file, or None if it cannot be seen now."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Loaded:
    """One file as loaded: ``path``, ``ident`` (``identity``), ``obj`` (ServingModel or
    Index), ``version`` (the crc32 of its numbers, hex), ``mtime`` and ``loaded_at``."""

    def __init__(self, path, ident, obj, version, loaded_at, extra=None):
        self.path = path
        self.ident = ident
        self.obj = obj
        self.version = version
        self.mtime = ident[3] / 1e9 if ident else 0.0
        self.loaded_at = loaded_at
        self.extra = extra or {}

    def describe(self, now):
        d = {"path": self.path, "version": self.version, "mtime": round(self.mtime, 3),
             "loaded_at": round(self.loaded_at, 3), "age_seconds": round(max(0.0, now - self.mtime), 3)}
        d.update(self.extra)
        return d


def _all_finite(a, rows=1 << 16):
    for r0 in range(0, a.shape[0], rows):
        if not np.isfinite(a[r0:r0 + rows]).all():
            return False
    return True


def probe_lines(model, n=16):
    """A probe block: an empty sample (the bias alone) and one made of the model's
    first ``n`` features, as input lines."""
    # each as NAME:1: the last ':' of a token splits name and value, and a name may hold ':'
    names = [model.table.name_bytes(r) + b":1" for r in range(1, min(model.n_rows, n + 1))]
    return b"0\n0 " + b" ".join(names) + b"\n"


def probe(model, lines=None):
    """Probabilities of the probe lines (``probe_lines`` by default); raises ModelFormatError
    unless every line is a sample and every probability a finite number."""
    from .. import parse

    block = np.frombuffer(lines or probe_lines(model), dtype=np.uint8)
    p = parse.parse(block, None, parse.ParseBuffers(0), model.table)
    if len(p.bad_line) or p.n_samples == 0:
        raise ModelFormatError("the probe lines do not parse (line %d)" % (int(p.bad_line[0]) + 1 if len(p.bad_line)
                                                                        else 0))
    raw = np.empty(p.n_samples)
    model.scores(p, raw)
    out = np.empty(p.n_samples)
    probabilities(raw, p.n_samples, out)
    if not np.isfinite(out).all():
        raise ModelFormatError("a probe score is not a finite number")
    return out


def load_model(path, k=None, mmap=True, probe_text=None):
    """Load and check a model file for serving; returns a Loaded (``obj``: ServingModel).

    Checks: the format and checksums (``model.read_bin``), ``k`` factors if
    given, every weight finite, and the probe scores finite. ``extra`` holds the
    model fingerprint indexes are matched against.
    """
    ident = identity(path)
    if ident is None:
        raise ModelFormatError("%s: no such model file" % path)
    model = ServingModel.load(path, k=k, mmap=mmap)
    if not _all_finite(model.weights):
        raise ModelFormatError("%s: a weight is NaN or infinite" % path)
    probe(model, probe_text)
    fp = model_fingerprint(model.weights)
    info = model.info or {}
    extra = {"features": model.n_rows - 1, "k": model.k, "dtype": str(model.weights.dtype),
             "format": info.get("format", "txt"), "mapped": bool(getattr(model.weights, "base", None) is not None
                                                                 and not model.weights.flags.writeable),
             "fingerprint": fp}
    if "samples_seen" in info:
        extra["samples_seen"] = int(info["samples_seen"])
    return Loaded(path, ident, model, "%08x" % fp["crc32"], time.time(), extra)


def load_index(path, kind):
    """Load an index file (``kind``: items or users); returns a Loaded (``obj``: Index)."""
    ident = identity(path)
    if ident is None:
        raise ModelFormatError("%s: no such index file" % path)
    index = read_index(path)
    if index.kind != kind:
        raise ModelFormatError("%s holds %s, not %s" % (path, index.kind, kind))
    if index.n == 0:
        # nothing to recall from (fm_recall index writes none; the API can): refused like a
        # bad file, so a reload keeps serving the set it has
        raise ModelFormatError("%s holds no %s: an empty index" % (path, kind))
    if not _all_finite(index.vectors):
        raise ModelFormatError("%s: a vector holds NaN or infinity" % path)
    crc = array_crc32(index.vectors)
    built = (index.model_info or {}).get("crc32")
    extra = {"records": index.n, "k": index.k, "model_version": None if built is None else "%08x" % built}
    return Loaded(path, ident, index, "%08x" % crc, time.time(), extra)


def check_set(model, items, users):
    """Raise ModelFormatError unless each index was built from the model."""
    sm = model.obj
    for slot in (items, users):
        if slot is None:
            continue
        ix = slot.obj
        if ix.k != sm.k:
            raise ModelFormatError("%s has %d factors but the model %s has %d" % (slot.path, ix.k, model.path, sm.k))
        if not fingerprint_matches(ix.model_info, sm.weights, model.extra["fingerprint"]):
            raise ModelFormatError("%s was built from model %s, not from %s (version %s)" % (
                slot.path, slot.extra.get("model_version"), model.path, model.version))


def warm(state):
    """Run each endpoint's kernels once on a new state before it serves, so that no
    request compiles or loads a kernel (a model of another number type needs
    kernels of its own) and no request prepares a searcher."""
    from .errors import RequestError
    from .scoring import score_text
    from . import search

    model = state.model.obj
    # a token NAME:1 (a name may hold ':'; the last ':' of a token splits name and value)
    feat = (model.table.name(1) if model.n_rows > 1 else "a") + ":1"
    score_text(model, "1 %s zz\n%s" % (feat, feat), 2, explain=2)
    for mode, (kind, _q, _pair) in MODES.items():
        index = state.index(kind)
        if index is None or index.n == 0:
            continue
        for exact in (True, False):
            q = search.check_query({"mode": mode, "features": feat, "topn": 2, "exact": exact,
                                    "exclude": [index.key(0).decode("utf-8", "replace")]}, 10)
            try:
                search.run(state, q)
            except RequestError:
                pass


def warm_kernels(model_path, items=False, users=False, mmap=True):
    """Load every kernel serving ``model_path`` needs, on a tiny set of the same kind
    (format, number type, stripped or not; with indexes if asked), before the
    real files: their pages and LLVM's are then never resident at once."""
    import tempfile

    from .. import ftrl
    from ..fm import FM
    from ..model import ModelArrays, detect_format, file_dtype, model_has_state, write_model
    from ..recall.api import Recall

    fmt = detect_format(model_path)
    dtype = file_dtype(model_path)
    stripped = fmt == "bin" and not model_has_state(model_path)
    names = [b"bias", b"u=1", b"u=2", b"i=1", b"i=2", b"c=1"]
    off = np.zeros(len(names) + 1, np.int64)
    np.cumsum([len(x) for x in names], out=off[1:])
    arena = np.frombuffer(b"".join(names), np.uint8)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="streamfm-serve-warm-") as d:
        path = os.path.join(d, "m." + fmt)
        if stripped:
            arrays = ModelArrays(arena, off, rng.normal(size=(len(names), 3)).astype(dtype), None, {"k": 2})
        else:
            params = np.zeros((len(names), ftrl.n_cols(2)), dtype=dtype)
            params[:, 0] = 0.1
            arrays = ModelArrays(arena, off, None, None, {"k": 2}, params=params)
        write_model(arrays, path, fmt, state=not stripped)
        paths = {"items": None, "users": None}
        if items or users:
            rec = Recall(FM.load(path))
            for kind, want, lines in (("items", items, [b"i1 i=1 c=1", b"i2 i=2 c=1"]),
                                      ("users", users, [b"u1 u=1", b"u2 u=2"])):
                if want:
                    paths[kind] = os.path.join(d, kind + ".idx")
                    Recall.save_index(rec.index(lines, kind), paths[kind])
        Holder(path, paths["items"], paths["users"], mmap=mmap).load()


class ServingState:
    """An immutable set: ``model``, ``items``, ``users`` (Loaded or None), searchers, ``generation``.

    ``searcher(mode, metric, exact)`` gives the searcher for a mode: the ANN
    one if the server built it and ``exact`` is false, else the exact one.
    """

    def __init__(self, model, items, users, generation, ann=None, cores=1):
        self.model = model
        self.items = items
        self.users = users
        self.generation = generation
        self.swapped_at = time.time()
        self.cores = cores
        self._exact = {}
        self._lock = threading.Lock()
        self.ann = {}
        # exact searchers of the default metrics are prepared now, in the loading
        # thread, so that no request pays for them
        for mode, (kind, _q, pair) in MODES.items():
            if self.index(kind) is not None:
                self.searcher(mode, "ip" if pair else "cos", True)
        for mode, searcher in (ann or {}).items():
            self.ann[mode] = searcher

    def index(self, kind):
        slot = self.items if kind == "items" else self.users
        return None if slot is None else slot.obj

    def searcher(self, mode, metric, exact):
        kind, _q, pair = MODES[mode]
        metric = "ip" if pair else metric
        if not exact and (mode, metric) in self.ann:
            return self.ann[(mode, metric)]
        key = (mode, metric)
        s = self._exact.get(key)
        if s is None:
            with self._lock:  # another metric than the default: prepared once, on first use
                s = self._exact.get(key)
                if s is None:
                    # one query a request: with several cores, split the rows, not the queries
                    s = self._exact[key] = (SplitSearcher(self.index(kind), pair, metric, self.cores)
                                            if self.cores > 1 else Searcher(self.index(kind), pair, metric, 1))
        return s

    def describe(self, now=None):
        now = time.time() if now is None else now
        out = {"generation": self.generation, "swapped_at": round(self.swapped_at, 3)}
        for name in FILES:
            slot = getattr(self, name)
            if slot is not None:
                d = slot.describe(now)
                d.pop("fingerprint", None)
                out[name] = d
        if self.ann:
            out["ann"] = sorted("%s/%s:%s" % (m, metric, s.kind) for (m, metric), s in self.ann.items())
        return out


class Holder:
    """The current ServingState and the loading of new ones.

    Parameters: ``model_path``, ``items_path``, ``users_path`` (None: not
    served), ``k`` (expected factors, or None), ``mmap`` (map binary models),
    ``probe_text`` (probe lines, bytes; default ``probe_lines``), ``ann``
    (None, or a callable ``ann(state_files) -> {(mode, metric): searcher}``
    building the ANN searchers of a new set), ``cores`` (search threads),
    ``on_reload(file, result)`` (metrics hook). ``load()`` loads the first
    set (raising on any error); ``poll()`` afterwards.
    """

    def __init__(self, model_path, items_path=None, users_path=None, k=None, mmap=True, probe_text=None,
                 ann=None, cores=1, on_reload=None):
        self.paths = {"model": model_path, "items": items_path, "users": users_path}
        self.k = k
        self.mmap = mmap
        self.probe_text = probe_text
        self.ann_builder = ann
        self.cores = cores
        self.on_reload = on_reload or (lambda file, result: None)
        self.state = None
        self.generation = 0
        self.reloads = 0
        self.failures = 0
        self.last_error = None
        self.pending = None        # why a loaded set waits (e.g. a model newer than its index)
        self._failed = {}          # file -> identity that failed to load (not retried until it changes)
        self._cache = {}           # file -> Loaded, loaded but not yet serving (a pending set)
        self._lock = threading.Lock()
        self._force = threading.Event()
        self.wakeup = threading.Event()   # set by request_reload: a Watcher polls at once

    # -- loading -------------------------------------------------------------
    def _load(self, name):
        path = self.paths[name]
        if name == "model":
            return load_model(path, k=self.k, mmap=self.mmap, probe_text=self.probe_text)
        return load_index(path, name)

    def _make_state(self, slots):
        check_set(slots["model"], slots["items"], slots["users"])
        ann = self.ann_builder(slots) if self.ann_builder is not None else None
        state = ServingState(slots["model"], slots["items"], slots["users"], self.generation + 1, ann, self.cores)
        warm(state)
        self.generation += 1
        return state

    def load(self):
        """Load the first set; raises StreamFMError (one line) if it cannot serve."""
        with self._lock:
            slots = {name: (self._load(name) if self.paths[name] else None) for name in FILES}
            self.state = self._make_state(slots)
            return self.state

    def request_reload(self):
        """Reload every file at the next poll, changed or not (SIGHUP)."""
        self._force.set()
        self.wakeup.set()

    def poll(self, force=False):
        """Look at the files; load, check and swap in a changed set. Returns True on a swap."""
        force = force or self._force.is_set()
        self._force.clear()
        with self._lock:
            cur = self.state
            if force:
                self._failed.clear()
                self._cache.clear()
            idents = {name: identity(p) for name, p in self.paths.items() if p}
            changed = [name for name, ident in idents.items()
                       if force or ident != getattr(cur, name).ident]
            if not changed:
                return False
            if any(idents[name] is None for name in changed):
                return False  # a file is being replaced right now: look again at the next poll
            # a file refused before and unchanged since is not tried again (the set keeps the served one)
            changed = [name for name in changed if force or self._failed.get(name) != idents[name]]
            if not changed:
                return False
            slots = {name: getattr(cur, name) for name in FILES}
            for name in changed:
                ident = idents[name]
                cached = self._cache.get(name)
                if cached is not None and cached.ident == ident:
                    slots[name] = cached
                    continue
                try:
                    slot = self._load(name)
                except (StreamFMError, OSError, ValueError, MemoryError) as e:
                    return self._refuse(name, ident, e)
                if slot.ident != ident:
                    return False  # replaced again while loading: the next poll loads the newest
                slots[name] = self._cache[name] = slot
            try:
                state = self._make_state(slots)
            except ModelFormatError as e:
                self.pending = str(e)
                if self._failed.get("set") != tuple(idents.items()):
                    self._failed["set"] = tuple(idents.items())
                    logger.warning("fm_serve: not swapping yet: %s; still serving model %s (generation %d)",
                                   e, cur.model.version, cur.generation)
                    self.on_reload("set", "mismatch")
                return False
            except (StreamFMError, OSError, ValueError, MemoryError) as e:
                return self._refuse(changed[0], idents[changed[0]], e)
            self.state = state
            self.pending = None
            self.last_error = None
            self._cache.clear()
            self._failed.clear()
            self.reloads += 1
            for name in changed:
                self.on_reload(name, "ok")
            logger.warning("fm_serve: now serving %s (generation %d)", ", ".join(
                "%s %s" % (name, getattr(state, name).version) for name in changed), state.generation)
            return True

    def _refuse(self, name, ident, err):
        self._failed[name] = ident
        self.failures += 1
        self.last_error = "%s: %s" % (name, err)
        self.on_reload(name, "failed")
        logger.error("fm_serve: refused the new %s: %s; still serving model %s (generation %d)",
                     name, err, self.state.model.version, self.state.generation)
        return False

    def describe(self):
        d = self.state.describe()
        d.update({"reloads": self.reloads, "reload_failures": self.failures})
        if self.last_error:
            d["last_error"] = self.last_error
        if self.pending:
            d["pending"] = self.pending
        return d


class Watcher:
    """Polls a Holder every ``interval`` seconds in a daemon thread (at once after
    ``request_reload``; only then with ``interval`` 0)."""

    def __init__(self, holder, interval=1.0):
        self.holder = holder
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="streamfm-serve-watcher", daemon=True)
        self._thread.start()

    def _run(self):
        wake = self.holder.wakeup
        while not self._stop.is_set():
            wake.wait(self.interval if self.interval > 0 else None)
            wake.clear()
            if self._stop.is_set():
                break
            try:
                self.holder.poll()
            except Exception:  # the watcher must outlive any bug in one poll
                logger.exception("fm_serve: reload failed")

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self.holder.wakeup.set()
            self._thread.join(timeout=30)
