"""Small specs, profile tables and impression logs for the fm_sample tests,
and a slow pure-Python reference of the featurizer's semantics."""

import bisect
import json
import math
import os
import sys

from helpers import run

FM_SAMPLE = os.path.join(os.path.dirname(sys.executable), "fm_sample")

SPEC = """\
[user]
key = "uid"
table = { path = "users.tsv" }
[item]
key = "iid"
table = { path = "items.jsonl" }
[log]
request = "req"
position = "pos"
clicked = "click"
fields = { hour = "user.hour", promo = "item.promo" }

[[feature]]
name = "uid"
source = "user.uid"
kind = "categorical"

[[feature]]
name = "age"
source = "user.age"
kind = "bucket"
edges = [18, 25, 35, 50]

[[feature]]
name = "hour"
source = "user.hour"
kind = "categorical"

[[feature]]
name = "hist"
source = "user.hist"
kind = "history"
last = 2

[[feature]]
name = "iid"
source = "item.iid"
kind = "categorical"

[[feature]]
name = "genre"
source = "item.genres"
kind = "tags"

[[feature]]
name = "price"
source = "item.price"
kind = "numeric"

[[feature]]
name = "promo"
source = "item.promo"
kind = "categorical"

[[feature]]
name = "age_x_genre"
kind = "cross"
of = ["age", "genre"]

[[feature]]
name = "ov"
kind = "overlap"
user = "user.top"
item = "item.genres"
"""

USERS = [
    {"uid": "u1", "age": "23", "hist": "i1|i2|i3", "top": "Action|Drama"},
    {"uid": "u2", "age": "40", "hist": "", "top": "Comedy"},
    {"uid": "u3", "age": "17", "hist": "i3", "top": ""},
]

ITEMS = [
    {"iid": "i1", "genres": ["Action", "Comedy"], "price": 9.5},
    {"iid": "i2", "genres": "Drama|Action", "price": 0},
    {"iid": "i3", "genres": [], "price": "12"},
    {"iid": "i 4", "genres": ["Sci:Fi", "Drama"], "price": 1e-7},
]


def write_tsv(path, rows, columns):
    with open(path, "w") as f:
        f.write("\t".join(columns) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(c, "")) for c in columns) + "\n")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_dir(d, spec=SPEC, users=USERS, items=ITEMS):
    """spec.toml, users.tsv and items.jsonl in directory d; returns the spec path."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    write_tsv(os.path.join(d, "users.tsv"), users, ["uid", "age", "hist", "top"])
    write_jsonl(os.path.join(d, "items.jsonl"), items)
    path = os.path.join(d, "spec.toml")
    with open(path, "w") as f:
        f.write(spec)
    return path


def fm_sample(*args, **kw):
    return run(FM_SAMPLE, *args, **kw)


# ---------------------------------------------------------------------------
# reference featurizer: the spec's semantics, spelled out in plain Python


def ref_text(v):
    """(present, [bytes]) of a raw value, as text.py documents it."""
    def one(x):
        if x is None:
            return None
        if isinstance(x, bool):
            return b"true" if x else b"false"
        if isinstance(x, int):
            return str(x).encode()
        if isinstance(x, float):
            r = repr(x)
            if r.endswith(".0"):
                r = r[:-2]
            return r.encode()
        return x.encode("utf-8", "surrogatepass") or None
    if isinstance(v, list):
        return True, [t for t in (one(x) for x in v) if t is not None]
    t = one(v)
    return (False, []) if t is None else (True, [t])


def ref_escape(b):
    return b"".join(b"%%%02X" % c if c <= 32 or c in (127, 58, 37) else bytes([c]) for c in b)


def ref_number(x):
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def ref_features(spec, user, item, learned=None):
    """Feature strings (bytes) of one impression: ``user``/``item`` are the merged raw dicts."""
    learned = learned or {}
    sep = spec["separator"].encode()
    rare = spec["rare"].encode()
    joiner = spec["cross_sep"].encode()
    by_name = {f["name"]: f for f in spec["features"]}
    tokens = {}

    def raw(source):
        side, attr = source.split(".", 1)
        d = user if side == "user" else item
        return ref_text(d.get(attr))

    def pieces(texts, s):
        out = []
        for t in texts:
            parts = t.split(s.encode()) if s else [t]
            out.extend(p for p in parts if p)
        return out

    def mapped(f, vals):
        # the first of equal values counts (a dict keeps insertion order); linear, for long tag lists
        kept = set(learned[f["name"]]["kept"]) if f.get("min_count") else None
        out = {}
        for v in vals:
            e = ref_escape(v)
            if kept is not None and e.decode("utf-8", "surrogateescape") not in kept:
                e = rare
            out.setdefault(e)
        return list(out)

    def base(f):
        present, texts = raw(f["source"])
        k = f["kind"]
        if k == "categorical":
            assert len(texts) <= 1
            return mapped(f, texts)
        if k == "tags":
            return mapped(f, pieces(texts, f["sep"]))
        if k == "history":
            return mapped(f, pieces(texts, f["sep"])[-f["last"]:])
        vals = [t.strip(b" \t\r") for t in texts]
        vals = [float(v) for v in vals if v]
        if k == "bucket":
            edges = f["edges"] if "edges" in f else learned[f["name"]]["edges"]
            return [str(bisect.bisect_right(edges, x)).encode() for x in vals]
        out = []
        for x in vals:
            if f.get("transform") == "log1p":
                x = math.copysign(math.log1p(abs(x)), x)
            if x != 0:
                out.append(ref_number(x).encode())
        return out

    for f in spec["features"]:
        if f["kind"] in ("categorical", "tags", "history", "bucket", "numeric"):
            tokens[f["name"]] = base(f)
    out = []
    for f in spec["features"]:
        if not f["emit"]:
            continue
        p = f["prefix"].encode()
        k = f["kind"]
        if k in ("categorical", "tags", "history", "bucket"):
            out += [p + sep + v for v in tokens[f["name"]]]
        elif k == "numeric":
            out += [p + b":" + v for v in tokens[f["name"]]]
        elif k == "cross":
            combos = [[]]
            for o in f["of"]:
                combos = [c + [v] for c in combos for v in tokens[o]]
            out += [p + sep + joiner.join(c) for c in combos]
        else:
            u = [ref_escape(x) for x in pieces(raw(f["user"])[1], f["sep"])]
            i = [ref_escape(x) for x in pieces(raw(f["item"])[1], f["sep"])]
            u = list(dict.fromkeys(u))
            i = list(dict.fromkeys(i))
            if not u or not i:
                continue
            c = len(set(u) & set(i))
            v = c if f["measure"] == "count" else c / (len(u) + len(i) - c)
            if f.get("numeric"):
                if v != 0:
                    out.append(p + b":" + ref_number(v).encode())
            elif "edges" in f or "bins" in f:
                edges = f["edges"] if "edges" in f else learned[f["name"]]["edges"]
                out.append(p + sep + str(bisect.bisect_right(edges, v)).encode())
            else:
                out.append(p + sep + str(min(int(v), f["max"])).encode())
    return out


# ---------------------------------------------------------------------------
# a random impression log for the helpers' spec and tables

HOURS = ["3", "13", "22", ""]
PROMOS = ["", "", "sale", "new arrival", "x:y"]


def random_rows(n_requests, seed=0):
    """Impression rows (dicts of strings, '' = missing) for SPEC, grouped by request.

    User-side inline fields (hour) are the same for all rows of a request, as
    a server sees them (one user per request)."""
    import random

    rng = random.Random(seed)
    uids = [u["uid"] for u in USERS] + ["u9", "u 10"]
    iids = [i["iid"] for i in ITEMS] + ["i7", "i%8"]
    rows = []
    for r in range(n_requests):
        uid = rng.choice(uids)
        hour = rng.choice(HOURS)
        for p in range(rng.randint(1, 6)):
            rows.append({"req": "r%d" % r, "pos": str(p), "uid": uid, "iid": rng.choice(iids),
                         "click": str(int(rng.random() < 0.3)), "hour": hour, "promo": rng.choice(PROMOS)})
    return rows


LOG_COLUMNS = ["req", "pos", "uid", "iid", "click", "hour", "promo"]


def write_log(path, rows, fmt):
    if fmt == "tsv":
        write_tsv(path, rows, LOG_COLUMNS)
        return
    with open(path, "w") as f:
        for r in rows:
            d = {"req": r["req"], "pos": int(r["pos"]), "uid": r["uid"], "iid": r["iid"],
                 "click": bool(int(r["click"]))}
            if r["hour"]:
                d["hour"] = int(r["hour"])
            if r["promo"]:
                d["promo"] = r["promo"]
            f.write(json.dumps(d) + "\n")


def requests_of(path, fmt):
    """The log read back with Python's csv / json modules, as online requests:
    [(request dict, labels)], one per run of a request id."""
    import csv

    if fmt == "tsv":
        with open(path, newline="") as f:
            recs = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f, delimiter="\t")]
        for r in recs:
            r["click"] = int(r["click"])
    else:
        with open(path) as f:
            recs = [json.loads(line) for line in f]
        for r in recs:
            r["click"] = int(r["click"])
    out = []
    for r in recs:
        if not out or out[-1][2] != r["req"]:
            user = {"uid": r["uid"]}
            if "hour" in r:
                user["hour"] = r["hour"]
            out.append(({"user": user, "items": []}, [], r["req"]))
        item = {"iid": r["iid"]}
        if "promo" in r:
            item["promo"] = r["promo"]
        out[-1][0]["items"].append(item)
        out[-1][1].append(r["click"])
    return [(req, labels) for req, labels, _ in out]
