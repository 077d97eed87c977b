"""The feature spec: TOML in, validated and normalised; frozen JSON out, fingerprinted.

A spec (TOML; ``tomllib``, or ``tomli`` on Python < 3.11) looks like::

    separator = "="            # feature name = PREFIX SEPARATOR VALUE (audit's field = PREFIX)
    cross_sep = "&"            # between the values of a cross
    rare = "__rare__"          # the value of ids below min_count

    [user]
    key = "user_id"            # the attribute holding the user key
    table = { path = "users.tsv" }          # optional profile table, joined by key
    [item]
    key = "item_id"
    table = { path = "items.jsonl" }

    [log]                      # impression logs (JSON lines, CSV or TSV with a header)
    request = "request_id"
    position = "position"      # optional (default: order within the request)
    clicked = "clicked"        # a number (> 0, or >= click_min, is a click) or true/false
    fields = { hour = "user.hour", item_ctr = "item.ctr" }   # more columns -> attributes

    [[feature]]
    name = "age"
    source = "user.age"
    kind = "bucket"            # categorical | tags | history | bucket | numeric | cross | overlap
    bins = 8                   # quantile buckets learned by fm_sample fit (or edges = [..])

Values of an attribute come from the impression record (the log's columns,
or the request's dicts online) when it has them, else from the profile
table row of the record's user or item. The fingerprint covers what decides
the features (the features, names, learned edges and vocabularies), not
where files are or how the log's columns are called.
"""

import difflib
import hashlib
import json
import math
import os
import re
import sys

import numpy as np


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

FROZEN_FORMAT = "streamfm-sample-spec"
FROZEN_VERSION = 1

SIDES = ("user", "item")
BASE_KINDS = ("categorical", "tags", "history", "bucket", "numeric")
KINDS = BASE_KINDS + ("cross", "overlap")
TABLE_FORMATS = ("tsv", "csv", "jsonl")

# kernel codes
K_CATEGORICAL, K_TAGS, K_HISTORY, K_BUCKET, K_NUMERIC = range(5)
O_BASE, O_CROSS, O_OVERLAP = range(3)
T_NONE, T_LOG1P = range(2)
M_COUNT, M_JACCARD = range(2)

DEFAULT_MAX_VOCAB = 1_000_000
DEFAULT_OVERLAP_MAX = 10
MAX_BINS = 1000

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file and the feature."""


def _bad_token_bytes(text):
    """Bytes that cannot appear in a feature name prefix (white space, ':', '%', control)."""
    return [c for c in text if ord(c) <= 32 or c in ":%\x7f"]


class _Checker:
    def __init__(self, where):
        self.where = where

    def fail(self, msg):
        raise SpecError("%s: %s" % (self.where, msg))

    def keys(self, table, allowed, what):
        if not isinstance(table, dict):
            self.fail("%s must be a table, got %s" % (what, _typename(table)))
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                self.fail("%s: unknown key %r%s (allowed: %s)" % (
                    what, k, " (did you mean %r?)" % close[0] if close else "", ", ".join(sorted(allowed))))

    def string(self, table, key, what, default=None, required=False):
        if key not in table:
            if required:
                self.fail("%s: %r is required" % (what, key))
            return default
        v = table[key]
        if not isinstance(v, str) or not v:
            self.fail("%s: %r must be a non-empty string, got %r" % (what, key, v))
        return v

    def integer(self, table, key, what, lo, hi=None, default=None):
        if key not in table:
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            self.fail("%s: %r must be an integer %s, got %r" % (
                what, key, ">= %d" % lo if hi is None else "in %d..%d" % (lo, hi), v))
        return v


def _typename(v):
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(v), type(v).__name__)


def _source(c, text, what, sides=SIDES):
    if not isinstance(text, str) or "." not in text:
        c.fail("%s: source must be 'user.ATTRIBUTE' or 'item.ATTRIBUTE', got %r" % (what, text))
    side, attr = text.split(".", 1)
    if side not in sides:
        c.fail("%s: source %r must start with %s" % (what, text, " or ".join("'%s.'" % s for s in sides)))
    if not attr:
        c.fail("%s: source %r names no attribute" % (what, text))
    return side, attr


def _edges(c, v, what):
    if not isinstance(v, list) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        c.fail("%s: edges must be a non-empty list of numbers, got %r" % (what, v))
    xs = [float(x) for x in v]
    if not all(math.isfinite(x) for x in xs):
        c.fail("%s: edges must be finite numbers, got %r" % (what, v))
    if any(b <= a for a, b in zip(xs, xs[1:])):
        c.fail("%s: edges must increase strictly, got %r" % (what, v))
    return xs


def _sep(c, f, what, default="|"):
    if "sep" not in f:
        return default
    v = f["sep"]
    if not isinstance(v, str):
        c.fail("%s: sep must be a string, got %r" % (what, v))
    return v


_COMMON = ("name", "kind", "prefix", "emit")
_KEYS = {
    "categorical": _COMMON + ("source", "min_count", "max_vocab"),
    "tags": _COMMON + ("source", "sep", "min_count", "max_vocab"),
    "history": _COMMON + ("source", "sep", "last", "min_count", "max_vocab"),
    "bucket": _COMMON + ("source", "edges", "bins"),
    "numeric": _COMMON + ("source", "transform"),
    "cross": _COMMON + ("of",),
    "overlap": _COMMON + ("user", "item", "sep", "measure", "edges", "bins", "max", "numeric"),
}


def _feature(c, f, i, sep_char):
    what = "feature #%d" % (i + 1)
    if not isinstance(f, dict):
        c.fail("%s must be a table ([[feature]]), got %s" % (what, _typename(f)))
    name = f.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        c.fail("%s: name must be letters, digits, '_', '.', '-', got %r" % (what, name))
    what = "feature %r" % name
    kind = f.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        c.fail("%s: kind %r is not one of %s%s" % (what, kind, ", ".join(KINDS),
                                                   " (did you mean %r?)" % close[0] if close else ""))
    c.keys(f, _KEYS[kind], what)
    out = {"name": name, "kind": kind}
    prefix = c.string(f, "prefix", what, default=name)
    bad = _bad_token_bytes(prefix)
    if bad or sep_char in prefix:
        c.fail("%s: prefix %r may not contain white space, ':', '%%' or the separator %r" % (
            what, prefix, sep_char))
    out["prefix"] = prefix
    emit = f.get("emit", True)
    if not isinstance(emit, bool):
        c.fail("%s: emit must be true or false, got %r" % (what, emit))
    out["emit"] = emit
    if kind in BASE_KINDS:
        if "source" not in f:
            c.fail("%s: 'source' (user.ATTRIBUTE or item.ATTRIBUTE) is required" % what)
        side, attr = _source(c, f["source"], what)
        out["source"] = "%s.%s" % (side, attr)
    if kind in ("categorical", "tags", "history"):
        mc = c.integer(f, "min_count", what, 1)
        out["min_count"] = mc
        out["max_vocab"] = c.integer(f, "max_vocab", what, 1, default=DEFAULT_MAX_VOCAB) if mc else None
        if "max_vocab" in f and not mc:
            c.fail("%s: max_vocab only applies with min_count" % what)
    if kind in ("tags", "history"):
        out["sep"] = _sep(c, f, what)
    if kind == "history":
        if "last" not in f:
            c.fail("%s: 'last' (how many of the most recent ids) is required" % what)
        out["last"] = c.integer(f, "last", what, 1, 100000)
    if kind == "bucket":
        if ("edges" in f) == ("bins" in f):
            c.fail("%s: give exactly one of edges = [..] (fixed) or bins = N (quantiles learned by fit)" % what)
        if "edges" in f:
            out["edges"] = _edges(c, f["edges"], what)
        else:
            out["bins"] = c.integer(f, "bins", what, 2, MAX_BINS)
    if kind == "numeric":
        t = f.get("transform", "none")
        if t not in ("none", "log1p"):
            c.fail("%s: transform must be 'none' or 'log1p', got %r" % (what, t))
        out["transform"] = t
    if kind == "cross":
        of = f.get("of")
        if not isinstance(of, list) or not 2 <= len(of) <= 3 or not all(isinstance(x, str) for x in of):
            c.fail("%s: 'of' must list 2 or 3 feature names, got %r" % (what, of))
        if len(set(of)) != len(of):
            c.fail("%s: 'of' names a feature twice: %r" % (what, of))
        out["of"] = list(of)
    if kind == "overlap":
        for s in SIDES:
            if s not in f:
                c.fail("%s: '%s' (the %s's tag list, %s.ATTRIBUTE) is required" % (what, s, s, s))
        _source(c, f["user"], what + " user", sides=("user",))
        _source(c, f["item"], what + " item", sides=("item",))
        out["user"], out["item"] = f["user"], f["item"]
        out["sep"] = _sep(c, f, what)
        m = f.get("measure", "count")
        if m not in ("count", "jaccard"):
            c.fail("%s: measure must be 'count' or 'jaccard', got %r" % (what, m))
        out["measure"] = m
        modes = [k for k in ("edges", "bins", "max", "numeric") if k in f]
        if len(modes) > 1:
            c.fail("%s: give at most one of edges, bins, max, numeric, got %s" % (what, ", ".join(modes)))
        if "numeric" in f and f["numeric"] is not True:
            c.fail("%s: numeric must be true when given" % what)
        if not modes:
            if m == "jaccard":
                c.fail("%s: a jaccard overlap needs edges = [..], bins = N or numeric = true" % what)
            out["max"] = DEFAULT_OVERLAP_MAX
        elif modes[0] == "edges":
            out["edges"] = _edges(c, f["edges"], what)
        elif modes[0] == "bins":
            out["bins"] = c.integer(f, "bins", what, 2, MAX_BINS)
        elif modes[0] == "max":
            if m != "count":
                c.fail("%s: max applies to a count overlap; bucket a jaccard one with edges or bins" % what)
            out["max"] = c.integer(f, "max", what, 1, 1000000)
        else:
            out["numeric"] = True
    return out


def _table(c, t, side, key):
    what = "[%s.table]" % side
    if isinstance(t, str):
        t = {"path": t}
    c.keys(t, ("path", "format", "key"), what)
    path = c.string(t, "path", what, required=True)
    fmt = t.get("format", None)
    if fmt is None:
        fmt = format_of(path)
    if fmt not in TABLE_FORMATS:
        c.fail("%s: format must be one of %s, got %r" % (what, ", ".join(TABLE_FORMATS), fmt))
    return {"path": path, "format": fmt, "key": c.string(t, "key", what, default=key)}


def format_of(path, default="tsv"):
    """tsv, csv or jsonl from a file name's extension (.gz etc. not supported)."""
    low = path.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"),
                     (".tsv", "tsv"), (".tab", "tsv")):
        if low.endswith(ext):
            return fmt
    return default


def normalise(raw, where):
    """The validated spec as a plain dict with every default filled in."""
    c = _Checker(where)
    c.keys(raw, ("separator", "cross_sep", "rare", "user", "item", "log", "feature"), "the spec")
    sep = raw.get("separator", "=")
    if not isinstance(sep, str) or len(sep.encode()) != 1 or _bad_token_bytes(sep):
        c.fail("separator must be one printable byte other than ':' and '%%', got %r" % (sep,))
    cross_sep = raw.get("cross_sep", "&")
    if not isinstance(cross_sep, str) or not cross_sep or _bad_token_bytes(cross_sep):
        c.fail("cross_sep must be a non-empty string without white space, ':' or '%%', got %r" % (cross_sep,))
    rare = raw.get("rare", "__rare__")
    if not isinstance(rare, str) or not rare or _bad_token_bytes(rare):
        c.fail("rare must be a non-empty string without white space, ':' or '%%', got %r" % (rare,))
    spec = {"separator": sep, "cross_sep": cross_sep, "rare": rare}
    for side in SIDES:
        if side not in raw:
            c.fail("[%s] is required (at least key = \"...\", the attribute holding the %s key)" % (side, side))
        s = raw[side]
        c.keys(s, ("key", "table"), "[%s]" % side)
        key = c.string(s, "key", "[%s]" % side, required=True)
        spec[side] = {"key": key, "table": _table(c, s["table"], side, key) if "table" in s else None}
    log = raw.get("log", {})
    c.keys(log, ("format", "request", "position", "clicked", "click_min", "user", "item", "fields"), "[log]")
    fmt = log.get("format")
    if fmt is not None and fmt not in TABLE_FORMATS:
        c.fail("[log]: format must be one of %s, got %r" % (", ".join(TABLE_FORMATS), fmt))
    click_min = log.get("click_min")
    if click_min is not None and (isinstance(click_min, bool) or not isinstance(click_min, (int, float))
                                  or not math.isfinite(click_min)):
        # TOML has nan and inf: no clicked value compares >= them, every impression would be a negative
        c.fail("[log]: click_min must be a finite number, got %r" % (click_min,))
    fields = log.get("fields", {})
    if not isinstance(fields, dict):
        c.fail("[log]: fields must be a table of column = \"user.X\" / \"item.X\"")
    norm_fields = {}
    mapped = {}
    for col, src in fields.items():
        side, attr = _source(c, src, "[log.fields] %s" % col)
        src = "%s.%s" % (side, attr)
        if attr == spec[side]["key"]:
            c.fail("[log.fields] %s: %s is the %s key, which comes from [log] %s" % (col, src, side, side))
        if src in mapped:
            c.fail("[log.fields]: columns %r and %r both give %s" % (mapped[src], col, src))
        mapped[src] = col
        norm_fields[col] = src
    spec["log"] = {
        "format": fmt,
        "request": c.string(log, "request", "[log]", default="request_id"),
        "position": c.string(log, "position", "[log]", default=None),
        "clicked": c.string(log, "clicked", "[log]", default="clicked"),
        "click_min": None if click_min is None else float(click_min),
        "user": c.string(log, "user", "[log]", default=spec["user"]["key"]),
        "item": c.string(log, "item", "[log]", default=spec["item"]["key"]),
        "fields": norm_fields,
    }
    feats = raw.get("feature")
    if not isinstance(feats, list) or not feats:
        c.fail("no [[feature]] tables: a spec needs at least one feature")
    out = []
    names = {}
    prefixes = {}
    for i, f in enumerate(feats):
        nf = _feature(c, f, i, sep)
        if nf["name"] in names:
            c.fail("feature %r is defined twice (#%d and #%d)" % (nf["name"], names[nf["name"]] + 1, i + 1))
        names[nf["name"]] = i
        if nf["emit"]:
            if nf["prefix"] in prefixes:
                c.fail("features %r and %r share the prefix %r (their features would mix)" % (
                    prefixes[nf["prefix"]], nf["name"], nf["prefix"]))
            prefixes[nf["prefix"]] = nf["name"]
        out.append(nf)
    by_name = {f["name"]: f for f in out}
    for f in out:
        if f["kind"] != "cross":
            continue
        for o in f["of"]:
            if o not in by_name:
                close = difflib.get_close_matches(o, list(by_name), n=1)
                c.fail("feature %r: crosses %r, which is not defined%s" % (
                    f["name"], o, " (did you mean %r?)" % close[0] if close else ""))
            k = by_name[o]["kind"]
            if k not in ("categorical", "tags", "history", "bucket"):
                c.fail("feature %r: cannot cross %r (kind %s); cross categorical, tags, history or "
                       "bucket features" % (f["name"], o, k))
    if not any(f["emit"] for f in out):
        c.fail("every feature has emit = false: nothing would be written")
    spec["features"] = out
    return spec


def feature_sides(spec, f):
    """The sides (user, item) whose attributes feature f reads."""
    if f["kind"] in BASE_KINDS:
        return {f["source"].split(".", 1)[0]}
    if f["kind"] == "overlap":
        return {"user", "item"}
    by_name = {g["name"]: g for g in spec["features"]}
    return set().union(*(feature_sides(spec, by_name[o]) for o in f["of"]))


def mixed_features(spec):
    """Emitted features that read both user and item attributes (crosses, overlaps)."""
    return [f for f in spec["features"] if f["emit"] and len(feature_sides(spec, f)) > 1]


def learnable(spec):
    """Names of features fit has to learn something for: {name: 'edges' | 'vocab'}."""
    out = {}
    for f in spec["features"]:
        if f["kind"] == "overlap" and not f["emit"]:
            continue  # writes nothing, needs nothing
        if f.get("bins"):
            out[f["name"]] = "edges"
        elif f.get("min_count"):
            out[f["name"]] = "vocab"
    return out


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(spec, learned):
    """16 hex digits of SHA-256 over what decides the features.

    Left out: table paths and formats, and the [log] section (where data
    comes from and how its columns are called does not change a feature).
    """
    core = {k: v for k, v in spec.items() if k != "log"}
    core = dict(core)
    for side in SIDES:
        core[side] = {"key": spec[side]["key"]}
    text = _canonical({"format": FROZEN_FORMAT, "version": FROZEN_VERSION, "spec": core,
                       "learned": learned or {}})
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


class Spec:
    """A validated spec, frozen (learned state present) or not."""

    def __init__(self, data, learned=None, path=None, base_dir=".", frozen=False, fit_info=None):
        self.data = data
        self.learned = learned or {}
        self.path = path
        self.base_dir = base_dir
        self.frozen = frozen
        self.fit_info = fit_info or {}
        self.features = data["features"]
        self.by_name = {f["name"]: f for f in self.features}

    @property
    def fingerprint(self):
        return fingerprint(self.data, self.learned)

    def needs_fit(self):
        """Learnable features without learned state (empty when ready to use)."""
        return sorted(n for n in learnable(self.data) if n not in self.learned)

    def require_ready(self):
        missing = self.needs_fit()
        if missing:
            raise SpecError("%s: features %s learn %s from data: run 'fm_sample fit --spec %s' and use the "
                            "frozen spec it writes" % (
                                self.path or "spec", ", ".join(repr(m) for m in missing),
                                " and ".join(sorted(set(learnable(self.data)[m] for m in missing))),
                                self.path or "SPEC"))

    def table_path(self, side):
        t = self.data[side]["table"]
        if t is None:
            return None
        return t["path"] if os.path.isabs(t["path"]) else os.path.join(self.base_dir, t["path"])

    def table_format(self, side):
        t = self.data[side]["table"]
        return None if t is None else t["format"]

    def to_frozen(self, learned, fit_info):
        """The frozen file's JSON object (table paths made absolute)."""
        data = json.loads(json.dumps(self.data))
        for side in SIDES:
            if data[side]["table"] is not None:
                data[side]["table"]["path"] = os.path.abspath(self.table_path(side))
        return {"format": FROZEN_FORMAT, "version": FROZEN_VERSION,
                "fingerprint": fingerprint(data, learned), "spec": data, "learned": learned,
                "fit": fit_info}

    def plan(self, raw=False):
        from .featurize import Plan

        return Plan(self, raw=raw)


def load_spec(path):
    """A Spec from a TOML spec or a frozen JSON spec (``fm_sample fit`` output).

    Raises SpecError with the file name and what is wrong.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise SpecError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    head = blob.lstrip()[:1]
    if head == b"{":
        return _load_frozen(path, blob, base_dir)
    try:
        raw = tomllib.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError("%s: not UTF-8 text (%s)" % (path, e)) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError("%s: not valid TOML: %s" % (path, e)) from None
    return Spec(normalise(raw, path), path=path, base_dir=base_dir)


def spec_from_dict(raw, where="spec", base_dir="."):
    """A Spec from an already parsed TOML document (a dict), for the Python API."""
    return Spec(normalise(raw, where), path=where, base_dir=base_dir)


def _load_frozen(path, blob, base_dir):
    try:
        obj = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SpecError("%s: not a frozen spec (invalid JSON: %s)" % (path, e)) from None
    if not isinstance(obj, dict) or obj.get("format") != FROZEN_FORMAT:
        raise SpecError("%s: not a frozen fm_sample spec (no \"format\": \"%s\")" % (path, FROZEN_FORMAT))
    if obj.get("version") != FROZEN_VERSION:
        raise SpecError("%s: frozen spec version %r; this streamfm reads version %d" % (
            path, obj.get("version"), FROZEN_VERSION))
    data = obj.get("spec")
    learned = obj.get("learned") or {}
    try:
        check = normalise(_denormalise(data), path)
    except SpecError:
        raise
    except Exception as e:  # a hand-edited structure: say so, not a traceback
        raise SpecError("%s: malformed frozen spec (%s)" % (path, e)) from None
    fp = fingerprint(check, learned)
    if fp != obj.get("fingerprint"):
        raise SpecError("%s: fingerprint %s does not match its content (%s): the file was edited; "
                        "edit the TOML spec and run fm_sample fit again" % (path, obj.get("fingerprint"), fp))
    _check_learned(check, learned, path)
    return Spec(check, learned=learned, path=path, base_dir=base_dir, frozen=True, fit_info=obj.get("fit"))


def _denormalise(data):
    """A normalised spec dict back into TOML-shaped input (normalise is idempotent on it)."""
    raw = {k: data[k] for k in ("separator", "cross_sep", "rare")}
    for side in SIDES:
        raw[side] = {"key": data[side]["key"]}
        if data[side]["table"] is not None:
            raw[side]["table"] = dict(data[side]["table"])
    log = {k: v for k, v in data["log"].items() if v is not None}
    raw["log"] = log
    feats = []
    for f in data["features"]:
        g = {k: v for k, v in f.items() if v is not None}
        if g.get("max_vocab") == DEFAULT_MAX_VOCAB and not f.get("min_count"):
            g.pop("max_vocab")
        feats.append(g)
    raw["feature"] = feats
    return raw


def _check_learned(spec, learned, path):
    need = learnable(spec)
    for name, what in need.items():
        st = learned.get(name)
        if not isinstance(st, dict):
            raise SpecError("%s: feature %r has no learned %s" % (path, name, what))
        if what == "edges":
            e = st.get("edges")
            if not isinstance(e, list) or any(b <= a for a, b in zip(e, e[1:])):
                raise SpecError("%s: feature %r: learned edges must be an increasing list" % (path, name))
        else:
            if not isinstance(st.get("kept"), list):
                raise SpecError("%s: feature %r: learned vocabulary missing" % (path, name))


def write_frozen(obj, path):
    """Write a frozen spec atomically (the file is replaced only when complete)."""
    from ..output import open_output

    text = json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
    with open_output(path) as f:
        f.write(text.encode("ascii"))


def value_hashes(values):
    """64-bit hashes of escaped value strings (as the kernels hash token bytes)."""
    from .featurize import hash_spans

    enc = [v.encode("utf-8", "surrogateescape") for v in values]
    off = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(b) for b in enc], out=off[1:])
    arena = np.frombuffer(b"".join(enc) + b"\0", np.uint8)
    out = np.empty(len(enc), np.uint64)
    hash_spans(arena, off, out)
    return out
