"""The featurizer: raw records -> feature lines, one code path offline and online.

Two numba kernels do all the work:

``encode`` turns the raw values of one side's attributes (a block of log
records, a profile table, or the dicts of an online request), held as
columns of canonical text (``text.py``), into tokens: for each record and
each base feature of that side, the feature's values as escaped bytes with
their hashes (a categorical id, each tag, the last N history ids, a bucket
index, a formatted number; ids below min-count become the ``rare`` value).

``assemble`` writes one line per impression. A base feature's tokens come
from the impression's own record when it has the attribute (a log column,
a key in the request's dict), else from the profile row of its user or
item. Then, in spec order: ``PREFIX=VALUE`` per token (``PREFIX:NUMBER``
for numeric features), crosses as ``PREFIX=V1&V2[&V3]`` over every
combination of their features' tokens, overlaps as the bucket of
|U & I| (count) or |U & I| / |U | I| (Jaccard) of the user's and item's
tag sets.

``Featurizer.featurize({"user": {...}, "items": [{...}, ...]})`` (the online
path, for the Python API and fm_serve) builds the same columns from Python
values and runs the same two kernels as ``LogFeaturizer`` (fm_sample rank,
fit, recall), so a raw record gives the same bytes either way.
"""

import numpy as np
from numba import njit

from .. import floatfmt
from ..badlines import BadLineLog
from ..metrics import fmt_int
from ..recall.keys import KeyIndex
# value dictionaries, not the model's table: the unkeyed name hash serves
from ..table import init_hash_bytes as hash_bytes
from . import logs
from .sketch import pair_home
from .spec import (BASE_KINDS, K_BUCKET, K_CATEGORICAL, K_HISTORY, K_NUMERIC, K_TAGS, M_COUNT, M_JACCARD,
                   O_BASE, O_CROSS, O_OVERLAP, SIDES, T_LOG1P, T_NONE, SpecError, value_hashes)
from .text import escape_into, value_texts

_KIND_CODE = {"categorical": K_CATEGORICAL, "tags": K_TAGS, "history": K_HISTORY, "bucket": K_BUCKET,
              "numeric": K_NUMERIC}

# line layouts of assemble
LABELED = 0   # LABEL FEATS          (fm_train)
BARE = 1      # FEATS                (online)
KEYED = 2     # KEY FEATS            (fm_recall catalog, users)
CLICK = 3     # USER_KEY FEATS | ITEM_KEY   (fm_recall clicks)


# ---------------------------------------------------------------------------
# the plan: the spec as arrays for the kernels


class Plan:
    """A spec compiled for the kernels.

    Base features (categorical, tags, history, bucket, numeric, and one
    hidden tags feature per overlap side) are numbered b = 0..; each lives on
    one side (0 user, 1 item) at a side-local index. Outputs (what a line
    holds, in spec order) are base features, crosses and overlaps.
    ``raw=True`` (fm_sample fit) keeps ids unmapped by min-count and gives
    bucket features their numbers instead of bucket indexes.
    """

    def __init__(self, spec, raw=False):
        if not raw:
            spec.require_ready()
        d = spec.data
        self.spec = spec
        self.raw = raw
        self.separator = d["separator"].encode()
        self.attrs = [[d["user"]["key"]], [d["item"]["key"]]]
        bases = []
        by_name = {}

        def attr_index(side, attr):
            lst = self.attrs[side]
            if attr not in lst:
                lst.append(attr)
            return lst.index(attr)

        def add_base(name, kind, source, sep="", last=0, transform=T_NONE, mc=None, feature=None):
            side_name, attr = source.split(".", 1)
            side = SIDES.index(side_name)
            b = len(bases)
            bases.append({"name": name, "kind": kind, "side": side, "attr": attr_index(side, attr),
                          "sep": sep.encode("utf-8"), "last": last, "transform": transform, "mc": mc,
                          "feature": feature})
            return b

        for f in spec.features:
            if f["kind"] in BASE_KINDS:
                by_name[f["name"]] = add_base(
                    f["name"], _KIND_CODE[f["kind"]], f["source"], sep=f.get("sep") or "",
                    last=f.get("last") or 0, transform=T_LOG1P if f.get("transform") == "log1p" else T_NONE,
                    mc=f.get("min_count"), feature=f)
        outputs = []
        for f in spec.features:
            if f["kind"] in BASE_KINDS:
                if f["emit"]:
                    outputs.append((O_BASE, [by_name[f["name"]]], f))
            elif f["kind"] == "cross":
                if f["emit"]:
                    outputs.append((O_CROSS, [by_name[o] for o in f["of"]], f))
            else:
                if f["emit"]:
                    bu = add_base(f["name"] + ".user", K_TAGS, f["user"], sep=f["sep"])
                    bi = add_base(f["name"] + ".item", K_TAGS, f["item"], sep=f["sep"])
                    outputs.append((O_OVERLAP, [bu, bi], f))
        self.bases = bases
        self.n_base = nb = len(bases)
        self.outputs = outputs
        self.n_local = [sum(1 for x in bases if x["side"] == s) for s in (0, 1)]
        self.base_side = np.array([x["side"] for x in bases], np.int64)
        self.base_local = np.zeros(nb, np.int64)
        self.local_b = [[], []]
        for b, x in enumerate(bases):
            self.base_local[b] = len(self.local_b[x["side"]])
            self.local_b[x["side"]].append(b)
        self.local_b = [np.array(v, np.int64) for v in self.local_b]
        self.base_attr = np.array([x["attr"] for x in bases], np.int64)
        self.base_kind = np.array([x["kind"] for x in bases], np.int64)
        self.base_last = np.array([x["last"] for x in bases], np.int64)
        self.base_transform = np.array([x["transform"] for x in bases], np.int64)
        self.base_mc = np.array([1 if x["mc"] else 0 for x in bases], np.int64)
        seps = [x["sep"] for x in bases]
        self.sep_arena = np.frombuffer(b"".join(seps) or b"\0", np.uint8).copy()
        self.base_sep_off = np.array(np.cumsum([0] + [len(s) for s in seps])[:-1], np.int64)
        self.base_sep_len = np.array([len(s) for s in seps], np.int64)
        learned = spec.learned
        edges = []
        self.base_edge_off = np.zeros(nb, np.int64)
        self.base_edge_len = np.zeros(nb, np.int64)
        self.base_sketch = np.full(nb, -1, np.int64)
        self.sketch_names = []
        for b, x in enumerate(bases):
            f = x["feature"]
            if f is None or f["kind"] != "bucket":
                continue
            if "edges" in f:
                e = f["edges"]
            elif raw:
                self.base_sketch[b] = len(self.sketch_names)
                self.sketch_names.append(f["name"])
                e = []
            else:
                e = learned[f["name"]]["edges"]
            self.base_edge_off[b] = len(edges)
            self.base_edge_len[b] = len(e)
            edges.extend(e)
        # outputs
        no = len(self.outputs)
        self.n_out = no
        self.out_kind = np.zeros(no, np.int64)
        self.out_mask = np.zeros(no, np.int64)
        self.out_comp = np.full((max(no, 1), 3), -1, np.int64)
        self.out_sepbyte = np.zeros(no, np.int64)
        self.out_measure = np.zeros(no, np.int64)
        self.out_cap = np.zeros(no, np.int64)
        self.out_numeric = np.zeros(no, np.int64)
        self.out_edge_off = np.zeros(no, np.int64)
        self.out_edge_len = np.zeros(no, np.int64)
        self.out_sketch = np.full(no, -1, np.int64)
        prefixes = []
        sep = self.separator[0]
        for o, (kind, comps, f) in enumerate(self.outputs):
            self.out_kind[o] = kind
            for j, b in enumerate(comps):
                self.out_comp[o, j] = b
                self.out_mask[o] |= 1 << bases[b]["side"]
            prefixes.append(f["prefix"].encode("utf-8"))
            numeric = (kind == O_BASE and bases[comps[0]]["kind"] == K_NUMERIC) or (
                kind == O_OVERLAP and f.get("numeric"))
            self.out_sepbyte[o] = 58 if numeric else sep
            if kind == O_OVERLAP:
                self.out_measure[o] = M_JACCARD if f["measure"] == "jaccard" else M_COUNT
                self.out_numeric[o] = 1 if f.get("numeric") else 0
                self.out_cap[o] = f.get("max") or 0
                if "edges" in f or "bins" in f:
                    if "edges" in f:
                        e = f["edges"]
                    elif raw:
                        self.out_sketch[o] = len(self.sketch_names)
                        self.sketch_names.append(f["name"])
                        e = []
                    else:
                        e = learned[f["name"]]["edges"]
                    self.out_edge_off[o] = len(edges)
                    self.out_edge_len[o] = len(e)
                    edges.extend(e)
        self.edge_vals = np.array(edges or [0.0], np.float64)
        self.pre_arena = np.frombuffer(b"".join(prefixes) or b"\0", np.uint8).copy()
        self.out_pre_off = np.array(np.cumsum([0] + [len(p) for p in prefixes])[:-1], np.int64)
        self.out_pre_len = np.array([len(p) for p in prefixes], np.int64)
        self.joiner = np.frombuffer(d["cross_sep"].encode(), np.uint8).copy()
        self.rare = np.frombuffer(d["rare"].encode(), np.uint8).copy()
        self.rare_hash = np.uint64(hash_bytes(self.rare, 0, self.rare.shape[0]))
        # min-count vocabularies: one set of (feature, value hash)
        keys_b, keys_h = [], []
        for b, x in enumerate(bases):
            if x["mc"] and not raw:
                kept = learned[x["name"]]["kept"]
                keys_h.append(value_hashes(kept))
                keys_b.append(np.full(len(kept), b, np.int64))
        vh = np.concatenate(keys_h) if keys_h else np.zeros(0, np.uint64)
        vb = np.concatenate(keys_b) if keys_b else np.zeros(0, np.int64)
        size = 16
        while size < 2 * len(vh) + 2:
            size *= 2
        self.vslots = np.full(size, -1, np.int64)
        self.vhash = np.ascontiguousarray(vh)
        self.vfeat = np.ascontiguousarray(vb)
        _vocab_build(self.vslots, self.vhash, self.vfeat)
        self.count_b = [b for b, x in enumerate(bases) if x["mc"]]
        self.max_prefix = int(self.out_pre_len.max()) if no else 0
        self.base_iskey = np.array([1 if x["attr"] == 0 else 0 for x in bases], np.int64)
        self.local_iskey = [self.base_iskey[lb] for lb in self.local_b]
        # runs: maximal stretches of consecutive base outputs of one side
        runs = []
        self.out_run = np.full(no, -1, np.int64)
        for o, (kind, comps, f) in enumerate(self.outputs):
            if kind != O_BASE:
                continue
            side = bases[comps[0]]["side"]
            if runs and runs[-1][1] == o and runs[-1][2] == side:
                runs[-1][1] = o + 1
            else:
                runs.append([o, o + 1, side])
            self.out_run[o] = len(runs) - 1
        self.run_o0 = np.array([r[0] for r in runs], np.int64)
        self.run_o1 = np.array([r[1] for r in runs], np.int64)
        self.run_side = np.array([r[2] for r in runs], np.int64)
        self.run_local = np.zeros(len(runs), np.int64)
        self.side_runs = [[], []]
        for r, x in enumerate(runs):
            self.run_local[r] = len(self.side_runs[x[2]])
            self.side_runs[x[2]].append(r)
        self.side_runs = [np.array(v, np.int64) for v in self.side_runs]
        eager = []
        for kind, comps, f in self.outputs:
            if kind != O_BASE:
                eager.extend(b for b in comps if b not in eager)
        self.eager = np.array(eager, np.int64)

    def side_attrs(self, side):
        return self.attrs[side]

    def base_args(self):
        """The per-base-feature arrays encode reads."""
        return (self.base_kind, self.base_last, self.base_transform, self.base_mc, self.sep_arena,
                self.base_sep_off, self.base_sep_len, self.base_edge_off, self.base_edge_len, self.edge_vals,
                self.vslots, self.vhash, self.vfeat, self.rare, self.rare_hash)

    def out_args(self):
        return (self.out_kind, self.out_mask, self.out_comp, self.out_pre_off, self.out_pre_len, self.pre_arena,
                self.out_sepbyte, self.out_measure, self.out_cap, self.out_numeric, self.out_edge_off,
                self.out_edge_len, self.edge_vals, self.joiner,
                self.out_run, self.run_side, self.run_o0, self.run_o1, self.run_local,
                len(self.side_runs[0]), len(self.side_runs[1]))


@njit(cache=True, nogil=True)
def _vocab_build(slots, vh, vb):
    mask = slots.shape[0] - 1
    for e in range(vh.shape[0]):
        i = pair_home(vh[e], vb[e], mask)
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = e


# ---------------------------------------------------------------------------
# encode: raw values -> tokens


# encode's duplicate check scans a feature's earlier tokens up to this many, then hashes them
_SCAN_MAX = 16


@njit(inline="always")
def _slot(keys, stamp, now, mask, h):
    """Where hash h is in an open-addressing set of mask + 1 slots (slot i in use
    when stamp[i] == now), or the empty slot it would take: encode's duplicate
    check and overlap_value's item tags both probe here."""
    i = pair_home(h, 0, mask)
    while stamp[i] == now and keys[i] != h:
        i = (i + 1) & mask
    return i


@njit(cache=True, nogil=True)
def write_int(x, out, pos):
    if x < 0:
        out[pos] = 45
        pos += 1
        x = -x
    if x == 0:
        out[pos] = 48
        return pos + 1
    n = 0
    y = x
    while y > 0:
        n += 1
        y //= 10
    for j in range(n - 1, -1, -1):
        out[pos + j] = 48 + x % 10
        x //= 10
    return pos + n


@njit(cache=True, nogil=True)
def encode(n_rec, n_cols, cfirst, ccount, cpresent, ccol, estart, elen, text, n_local, feat_cell, feat_b,
           feat_iskey, ent,
           base_kind, base_last, base_transform, base_mc, sep_arena, base_sep_off, base_sep_len,
           base_edge_off, base_edge_len, edge_vals, vslots, vhash, vfeat, rare, rare_hash, raw,
           tok_ptr, tpres, tok_off, tok_len, tok_hash, tok_val, arena, nt0, ap0, bad_reason, bad_b, bad_col):
    """Tokens of the n_local base features of one side for n_rec records.

    feat_cell[l]: the column holding local feature l's attribute (-1: none).
    A feature of the key attribute is left to the profile row when the
    record has one (ent[r] >= 0: it holds the same key).
    Writes tokens from nt0 / arena bytes from ap0; tok_ptr[r*n_local+l] ..
    tok_ptr[r*n_local+l+1] are record r's tokens of feature l, tpres says
    whether the record has the attribute. A value that cannot be read marks
    the record: bad_reason (logs.R_*), bad_b (the feature), bad_col (its
    byte column). Capacities: see ``token_bounds``. Returns (tokens end,
    arena end).
    """
    nt = nt0
    ap = ap0
    # the hashes of one record's feature's tokens so far, once there are more than
    # _SCAN_MAX of them: a scan of every earlier token per token took 186 s for 300,000 tags.
    # A slot is empty unless its dgen is the current gen (a new record or feature: gen + 1).
    dcap = 64
    dkey = np.empty(dcap, np.uint64)
    dgen = np.zeros(dcap, np.int64)
    gen = 0
    for r in range(n_rec):
        bad_reason[r] = 0
        for l in range(n_local):
            k = r * n_local + l
            tok_ptr[k] = nt
            c = feat_cell[l]
            if c < 0 or cpresent[r * n_cols + c] == 0 or (feat_iskey[l] and ent[r] >= 0):
                tpres[k] = 0
                continue
            tpres[k] = 1
            b = feat_b[l]
            cc = r * n_cols + c
            e0 = cfirst[cc]
            ne = ccount[cc]
            kind = base_kind[b]
            t0 = nt
            gen += 1
            dn = nt  # tokens t0 .. dn are in the set
            if kind == 0 or kind == 3 or kind == 4:
                if ne > 1:
                    if bad_reason[r] == 0:
                        bad_reason[r] = 13
                        bad_b[r] = b
                        bad_col[r] = ccol[cc]
                    continue
                if ne == 0:
                    continue
                if kind != 0:
                    a = estart[e0]
                    ta = a
                    te = a + elen[e0]
                    while ta < te and (text[ta] == 32 or text[ta] == 9):
                        ta += 1
                    while te > ta and (text[te - 1] == 32 or text[te - 1] == 9 or text[te - 1] == 13):
                        te -= 1
                    if ta == te:
                        continue
                    x, st = floatfmt.parse_f64(text, ta, te)
                    if st == floatfmt.BAD or st == floatfmt.NONFINITE:
                        if bad_reason[r] == 0:
                            bad_reason[r] = 14 if st == floatfmt.BAD else 15
                            bad_b[r] = b
                            bad_col[r] = ccol[cc]
                        continue
                    if kind == 4:
                        if base_transform[b] == 1:
                            x = np.log1p(x) if x >= 0 else -np.log1p(-x)
                        if x == 0.0:
                            continue
                        s = ap
                        ap = floatfmt.write_f64(x, arena, ap)
                        tok_off[nt] = s
                        tok_len[nt] = ap - s
                        tok_hash[nt] = hash_bytes(arena, s, ap)
                        tok_val[nt] = x
                        nt += 1
                    elif raw:
                        tok_off[nt] = ap
                        tok_len[nt] = 0
                        tok_hash[nt] = 0
                        tok_val[nt] = x
                        nt += 1
                    else:
                        # the bucket: number of edges <= x
                        eo = base_edge_off[b]
                        lo = 0
                        hi = base_edge_len[b]
                        while lo < hi:
                            mid = (lo + hi) >> 1
                            if edge_vals[eo + mid] <= x:
                                lo = mid + 1
                            else:
                                hi = mid
                        s = ap
                        ap = write_int(lo, arena, ap)
                        tok_off[nt] = s
                        tok_len[nt] = ap - s
                        tok_hash[nt] = hash_bytes(arena, s, ap)
                        tok_val[nt] = x
                        nt += 1
                    continue
            # categorical: its one value; tags, history: every element split at sep (history: the
            # last N pieces, so a first pass counts them). The token code is written out once,
            # not in a helper: an array handed to a helper costs numba two atomic reference
            # counts per call, which was most of this kernel's time.
            so = base_sep_off[b]
            sl = base_sep_len[b] if kind != 0 else 0
            skip = 0
            npass = 2 if kind == 2 else 1
            for ps in range(npass):
                counting = ps == 0 and npass == 2
                idx = 0
                for e in range(e0, e0 + ne):
                    p = estart[e]
                    end = p + elen[e]
                    while True:
                        # the next separator in text[p:end], or end
                        q = end
                        if sl > 0:
                            first = sep_arena[so]
                            y = p
                            while y + sl <= end:
                                if text[y] == first:
                                    same = True
                                    for z in range(1, sl):
                                        if text[y + z] != sep_arena[so + z]:
                                            same = False
                                            break
                                    if same:
                                        q = y
                                        break
                                y += 1
                        if q > p or kind == 0:
                            if not counting and idx >= skip:
                                # the token text[p:q], escaped; below min-count the rare value;
                                # a repeated value of this feature and record is written once
                                s = ap
                                ap = escape_into(text, p, q, arena, ap)
                                h = hash_bytes(arena, s, ap)
                                if base_mc[b] and not raw:
                                    mask = vslots.shape[0] - 1
                                    vi = pair_home(h, b, mask)
                                    known = False
                                    while True:
                                        ve = vslots[vi]
                                        if ve < 0:
                                            break
                                        if vhash[ve] == h and vfeat[ve] == b:
                                            known = True
                                            break
                                        vi = (vi + 1) & mask
                                    if not known:
                                        for z in range(rare.shape[0]):
                                            arena[s + z] = rare[z]
                                        ap = s + rare.shape[0]
                                        h = rare_hash
                                dup = False
                                if nt - t0 <= _SCAN_MAX:
                                    for t in range(t0, nt):
                                        if tok_hash[t] == h:
                                            dup = True
                                            break
                                else:
                                    if 2 * (nt - t0 + 1) > dcap:
                                        while 2 * (nt - t0 + 1) > dcap:
                                            dcap *= 2
                                        dkey = np.empty(dcap, np.uint64)
                                        dgen = np.zeros(dcap, np.int64)
                                        dn = t0
                                    dmask = dcap - 1
                                    while dn < nt:  # the tokens written since
                                        vi = _slot(dkey, dgen, gen, dmask, tok_hash[dn])
                                        dgen[vi] = gen
                                        dkey[vi] = tok_hash[dn]
                                        dn += 1
                                    dup = dgen[_slot(dkey, dgen, gen, dmask, h)] == gen
                                if dup:
                                    ap = s
                                else:
                                    tok_off[nt] = s
                                    tok_len[nt] = ap - s
                                    tok_hash[nt] = h
                                    tok_val[nt] = 0.0
                                    nt += 1
                            idx += 1
                        if q >= end:
                            break
                        p = q + sl
                if counting:
                    skip = idx - base_last[b]
    tok_ptr[n_rec * n_local] = nt
    return nt, ap


@njit(cache=True, nogil=True)
def _cell_bytes(n_rec, n_cols, cfirst, ccount, cpresent, elen, cells, out_bytes, out_els):
    """Per wanted cell c in cells: total element bytes and elements over the records."""
    for j in range(cells.shape[0]):
        c = cells[j]
        tb = 0
        te = 0
        if c >= 0:
            for r in range(n_rec):
                k = r * n_cols + c
                if cpresent[k]:
                    for e in range(cfirst[k], cfirst[k] + ccount[k]):
                        tb += elen[e]
                    te += ccount[k]
        out_bytes[j] = tb
        out_els[j] = te


class Tokens:
    """Token arrays (CSR over record x side-local feature), growing as needed."""

    def __init__(self, tokens=1024, nbytes=1 << 14):
        self.off = np.zeros(tokens, np.int64)
        self.len = np.zeros(tokens, np.int64)
        self.hash = np.zeros(tokens, np.uint64)
        self.val = np.zeros(tokens, np.float64)
        self.arena = np.zeros(nbytes, np.uint8)
        self.nt = 0
        self.ap = 0

    def reset(self):
        self.nt = 0
        self.ap = 0

    def reserve(self, tokens, nbytes):
        if self.nt + tokens > self.off.shape[0]:
            n = max(self.nt + tokens, 2 * self.off.shape[0])
            for name in ("off", "len", "hash", "val"):
                a = getattr(self, name)
                b = np.zeros(n, a.dtype)
                b[: self.nt] = a[: self.nt]
                setattr(self, name, b)
        if self.ap + nbytes > self.arena.shape[0]:
            n = max(self.ap + nbytes, 2 * self.arena.shape[0])
            b = np.zeros(n, np.uint8)
            b[: self.ap] = self.arena[: self.ap]
            self.arena = b

    def trim(self):
        """Shrink the arrays to what is used (profile tables are kept for the run)."""
        self.off = self.off[: self.nt].copy()
        self.len = self.len[: self.nt].copy()
        self.hash = self.hash[: self.nt].copy()
        self.val = self.val[: self.nt].copy()
        self.arena = self.arena[: max(self.ap, 1)].copy()


class SideTokens:
    """One side's tokens for n records: ptr (n * n_local + 1) and present flags into a Tokens."""

    def __init__(self, n, n_local):
        self.n = n
        self.n_local = n_local
        self.ptr = np.zeros(n * n_local + 1, np.int64)
        self.pres = np.zeros(max(n * n_local, 1), np.uint8)


def encode_side(plan, side, cols, feat_cell, store, ent=None):
    """Encode one side's base features of the records in ``cols`` into ``store``.

    ``feat_cell[l]``: the column of ``cols`` holding local feature l's
    attribute (-1: none); ``ent``: each record's profile row (-1: none).
    Returns (SideTokens, bad_reason, bad_b, bad_col).
    """
    n_local = plan.n_local[side]
    n = cols.n
    st = SideTokens(n, n_local)
    bad_reason = np.zeros(max(n, 1), np.int64)
    bad_b = np.zeros(max(n, 1), np.int64)
    bad_col = np.zeros(max(n, 1), np.int64)
    if n_local == 0 or n == 0:
        st.ptr[:] = store.nt
        return st, bad_reason[:n], bad_b[:n], bad_col[:n]
    fb = np.zeros(n_local, np.int64)
    fe = np.zeros(n_local, np.int64)
    _cell_bytes(n, cols.n_cols, cols.first, cols.count, cols.present, cols.length, feat_cell, fb, fe)
    wide = max(24, plan.rare.shape[0])
    tokens = int((fb + fe).sum()) + 1
    nbytes = int(3 * fb.sum() + (fb + fe).sum() * wide) + 64
    store.reserve(tokens, nbytes)
    if ent is None:
        ent = np.full(n, -1, np.int64)
    nt, ap = encode(n, cols.n_cols, cols.first, cols.count, cols.present, cols.col, cols.start, cols.length,
                    cols.text, n_local, feat_cell, plan.local_b[side], plan.local_iskey[side], ent,
                    *plan.base_args(), plan.raw,
                    st.ptr, st.pres, store.off, store.len, store.hash, store.val, store.arena, store.nt, store.ap,
                    bad_reason, bad_b, bad_col)
    store.nt, store.ap = int(nt), int(ap)
    return st, bad_reason[:n], bad_b[:n], bad_col[:n]


def bad_value_text(plan, code, b):
    x = plan.bases[b]
    side = SIDES[x["side"]]
    what = "%s.%s" % (side, plan.attrs[x["side"]][x["attr"]])
    return logs.reason_text(int(code), what)


# ---------------------------------------------------------------------------
# assemble: tokens -> lines


@njit(inline="always")
def _res1(b, i, ue, ie, ui, ii, up_a, up_b, ip_a, ip_b, ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, nlu, nli,
          base_side, base_local, r_src, r_a, r_b):
    """Where base feature b's tokens are for impression i: r_src 0 profile / 1 inline, [r_a, r_b)."""
    l = base_local[b]
    if base_side[b] == 0:
        rec = ui[i]
        ent = ue[i]
        k = rec * nlu + l
        e = ent * nlu + l
        if rec >= 0 and ui_pres[k]:
            r_src[b] = 1
            r_a[b] = ui_a[k]
            r_b[b] = ui_b[k]
        elif ent >= 0:
            r_src[b] = 0
            r_a[b] = up_a[e]
            r_b[b] = up_b[e]
        else:
            r_src[b] = 0
            r_a[b] = 0
            r_b[b] = 0
    else:
        rec = ii[i]
        ent = ie[i]
        k = rec * nli + l
        e = ent * nli + l
        if rec >= 0 and ii_pres[k]:
            r_src[b] = 1
            r_a[b] = ii_a[k]
            r_b[b] = ii_b[k]
        elif ent >= 0:
            r_src[b] = 0
            r_a[b] = ip_a[e]
            r_b[b] = ip_b[e]
        else:
            r_src[b] = 0
            r_a[b] = 0
            r_b[b] = 0


@njit(inline="always")
def resolve_tokens(i, ue, ie, ui, ii, up_a, up_b, ip_a, ip_b, ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, nlu, nli, n_base,
             base_side, base_local, r_src, r_a, r_b):
    """_res1 for every base feature (where each base feature's tokens are for impression i)."""
    for b in range(n_base):
        _res1(b, i, ue, ie, ui, ii, up_a, up_b, ip_a, ip_b, ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, nlu, nli,
              base_side, base_local, r_src, r_a, r_b)


# overlap_value compares every pair of tags up to this many pairs, then hashes the item's
_OVERLAP_SCAN = 256


@njit(inline="always")
def overlap_value(bu, bi, r_src, r_a, r_b, p_hash, i_hash, measure):
    """(has value, value) of the overlap of base features bu (user tags) and bi (item tags)."""
    nu = r_b[bu] - r_a[bu]
    ni = r_b[bi] - r_a[bi]
    if nu == 0 or ni == 0:
        return False, 0.0
    c = 0
    if nu * ni <= _OVERLAP_SCAN:
        for t in range(r_a[bu], r_b[bu]):
            h = p_hash[t] if r_src[bu] == 0 else i_hash[t]
            for u in range(r_a[bi], r_b[bi]):
                h2 = p_hash[u] if r_src[bi] == 0 else i_hash[u]
                if h == h2:
                    c += 1
                    break
    else:
        # the item's tags in a hash set, each user tag looked up once: the same count
        # (a user tag counts when the item holds it) in nu + ni steps instead of nu * ni
        # (two lists of 300,000 tags: 9e10 comparisons)
        cap = 4
        while cap < 2 * ni:
            cap *= 2
        mask = cap - 1
        keys = np.empty(cap, np.uint64)
        stamp = np.zeros(cap, np.int64)  # 1: in use
        for u in range(r_a[bi], r_b[bi]):
            h2 = p_hash[u] if r_src[bi] == 0 else i_hash[u]
            vi = _slot(keys, stamp, 1, mask, h2)
            stamp[vi] = 1
            keys[vi] = h2
        for t in range(r_a[bu], r_b[bu]):
            h = p_hash[t] if r_src[bu] == 0 else i_hash[t]
            if stamp[_slot(keys, stamp, 1, mask, h)] == 1:
                c += 1
    if measure == 0:
        return True, float(c)
    return True, c / float(nu + ni - c)


@njit(cache=True, nogil=True)
def render(n_ent, nl, side, runs, run_o0, run_o1, pa, pb, p_off, p_len, p_arena, out_comp, out_pre_off, out_pre_len,
           pre_arena, out_sepbyte, base_local, seg, pos, seg_a, seg_b):
    """Each profile row's runs as text: ' PREFIX=VALUE' for every token of the run's features.

    runs: the run ids of this side (in spec order); seg_a/seg_b[e * len(runs)
    + q]: row e's text of its q-th run in seg. Returns the end in seg.
    """
    nr = runs.shape[0]
    for e in range(n_ent):
        for q in range(nr):
            r = runs[q]
            seg_a[e * nr + q] = pos
            for o in range(run_o0[r], run_o1[r]):
                l = base_local[out_comp[o, 0]]
                fa = out_pre_off[o]
                fn = out_pre_len[o]
                sb = out_sepbyte[o]
                for t in range(pa[e * nl + l], pb[e * nl + l]):
                    seg[pos] = 32
                    pos += 1
                    for x in range(fn):
                        seg[pos + x] = pre_arena[fa + x]
                    pos += fn
                    seg[pos] = sb
                    pos += 1
                    n = p_len[t]
                    a = p_off[t]
                    for x in range(n):
                        seg[pos + x] = p_arena[a + x]
                    pos += n
            seg_b[e * nr + q] = pos
    return pos


@njit(cache=True, nogil=True)
def assemble(start, sel, mode, side_mask, labels, ue, ie, ui, ii,
             up_a, up_b, ip_a, ip_b, p_off, p_len, p_hash, p_arena,
             useg_a, useg_b, iseg_a, iseg_b, seg,
             ui_a, ui_b, ui_pres, ii_a, ii_b, ii_pres, i_off, i_len, i_hash, i_arena, nlu, nli,
             base_side, base_local, eager,
             out_kind, out_mask, out_comp, out_pre_off, out_pre_len, pre_arena, out_sepbyte, out_measure,
             out_cap, out_numeric, out_edge_off, out_edge_len, edge_vals, joiner,
             out_run, run_side, run_o0, run_o1, run_local, n_runs_u, n_runs_i,
             key_text, k1_start, k1_len, k2_start, k2_len,
             r_src, r_a, r_b, r_len, todo, run_fb, out, pos, line_end):
    """Lines for impressions sel[start:], written at out[pos:] until out is full.

    mode: LABELED, BARE (as ' FEATS'), KEYED, CLICK (see the module); side_mask selects
    outputs (1 user, 2 item; an output is written when all its sides are
    in the mask). Impression i = sel[j] reads profile rows ue[i], ie[i]
    (-1: none) and inline records ui[i], ii[i] (-1: none); keys are
    key_text spans. A run of consecutive features of one side is copied
    from the profile row's pre-rendered text (``render``) unless the
    impression's own record holds one of its attributes. line_end[j] = end
    of line j in out. r_src, r_a, r_b, r_len, todo: scratch of n_base
    entries. Returns (next j, end in out, bytes the next line needs when it
    did not fit).

    The per-token work is written out here rather than in helpers: an
    array handed to a helper costs numba two atomic reference counts per
    call, which was most of this kernel's time.
    """
    n_out = out_kind.shape[0]
    n_runs = run_side.shape[0]
    jl = joiner.shape[0]
    cap = out.shape[0]
    for j in range(start, sel.shape[0]):
        i = sel[j]
        urec = ui[i]
        irec = ii[i]
        uent = ue[i]
        ient = ie[i]
        # where the tokens are: runs from the rendered profile text unless the record overrides them
        nres = 0
        for r in range(n_runs):
            fb = False
            if run_side[r] == 0:
                if urec >= 0:
                    for o in range(run_o0[r], run_o1[r]):
                        if ui_pres[urec * nlu + base_local[out_comp[o, 0]]]:
                            fb = True
                            break
            elif irec >= 0:
                for o in range(run_o0[r], run_o1[r]):
                    if ii_pres[irec * nli + base_local[out_comp[o, 0]]]:
                        fb = True
                        break
            run_fb[r] = fb
            if fb:
                for o in range(run_o0[r], run_o1[r]):
                    todo[nres] = out_comp[o, 0]
                    nres += 1
        for q in range(eager.shape[0]):
            todo[nres] = eager[q]
            nres += 1
        for q in range(nres):
            b = todo[q]
            l = base_local[b]
            src = 0
            ta = 0
            tb = 0
            if base_side[b] == 0:
                if urec >= 0 and ui_pres[urec * nlu + l]:
                    src = 1
                    ta = ui_a[urec * nlu + l]
                    tb = ui_b[urec * nlu + l]
                elif uent >= 0:
                    ta = up_a[uent * nlu + l]
                    tb = up_b[uent * nlu + l]
            else:
                if irec >= 0 and ii_pres[irec * nli + l]:
                    src = 1
                    ta = ii_a[irec * nli + l]
                    tb = ii_b[irec * nli + l]
                elif ient >= 0:
                    ta = ip_a[ient * nli + l]
                    tb = ip_b[ient * nli + l]
            s = 0
            if src == 0:
                for t in range(ta, tb):
                    s += p_len[t]
            else:
                for t in range(ta, tb):
                    s += i_len[t]
            r_src[b] = src
            r_a[b] = ta
            r_b[b] = tb
            r_len[b] = s
        # exact size of the line
        need = 4
        if mode == 2 or mode == 3:
            need += 3 * k1_len[i] + 1
        if mode == 3:
            need += 3 * k2_len[i] + 3
        for o in range(n_out):
            if (out_mask[o] & side_mask) != out_mask[o]:
                continue
            r = out_run[o]
            if r >= 0 and not run_fb[r]:
                if o == run_o0[r]:
                    if run_side[r] == 0:
                        if uent >= 0:
                            q = uent * n_runs_u + run_local[r]
                            need += useg_b[q] - useg_a[q]
                    elif ient >= 0:
                        q = ient * n_runs_i + run_local[r]
                        need += iseg_b[q] - iseg_a[q]
                continue
            pl = out_pre_len[o] + 2
            k = out_kind[o]
            if k == 0:
                b = out_comp[o, 0]
                need += (r_b[b] - r_a[b]) * pl + r_len[b]
            elif k == 1:
                b0 = out_comp[o, 0]
                b1 = out_comp[o, 1]
                b2 = out_comp[o, 2]
                n0 = r_b[b0] - r_a[b0]
                n1 = r_b[b1] - r_a[b1]
                s0 = r_len[b0]
                s1 = r_len[b1]
                if b2 < 0:
                    need += n0 * n1 * (pl + jl) + s0 * n1 + s1 * n0
                else:
                    n2 = r_b[b2] - r_a[b2]
                    s2 = r_len[b2]
                    need += n0 * n1 * n2 * (pl + 2 * jl) + s0 * n1 * n2 + s1 * n0 * n2 + s2 * n0 * n1
            else:
                need += pl + 32
        if pos + need > cap:
            return j, pos, need
        # the line (BARE lines keep the first feature's leading space)
        if mode == 0:
            out[pos] = 49 if labels[i] > 0 else 48
            pos += 1
        elif mode == 2 or mode == 3:
            pos = escape_into(key_text, k1_start[i], k1_start[i] + k1_len[i], out, pos)
        for o in range(n_out):
            if (out_mask[o] & side_mask) != out_mask[o]:
                continue
            r = out_run[o]
            if r >= 0 and not run_fb[r]:
                if o == run_o0[r]:
                    a = 0
                    e = 0
                    if run_side[r] == 0:
                        if uent >= 0:
                            q = uent * n_runs_u + run_local[r]
                            a = useg_a[q]
                            e = useg_b[q]
                    elif ient >= 0:
                        q = ient * n_runs_i + run_local[r]
                        a = iseg_a[q]
                        e = iseg_b[q]
                    out[pos:pos + e - a] = seg[a:e]
                    pos += e - a
                continue
            k = out_kind[o]
            sb = out_sepbyte[o]
            pa = out_pre_off[o]
            pn = out_pre_len[o]
            if k == 0 or k == 1:
                # a base feature's tokens, or a cross's combinations (the last component varies fastest)
                nc = 1 if k == 0 else (2 if out_comp[o, 2] < 0 else 3)
                b0 = out_comp[o, 0]
                n0 = r_b[b0] - r_a[b0]
                n1 = 1
                n2 = 1
                if nc >= 2:
                    n1 = r_b[out_comp[o, 1]] - r_a[out_comp[o, 1]]
                if nc == 3:
                    n2 = r_b[out_comp[o, 2]] - r_a[out_comp[o, 2]]
                for c in range(n0 * n1 * n2):
                    out[pos] = 32
                    pos += 1
                    for x in range(pn):
                        out[pos + x] = pre_arena[pa + x]
                    pos += pn
                    out[pos] = sb
                    pos += 1
                    for m in range(nc):
                        if m > 0:
                            for x in range(jl):
                                out[pos + x] = joiner[x]
                            pos += jl
                        b = out_comp[o, m]
                        if m == 0:
                            t = r_a[b] + c // (n1 * n2)
                        elif m == 1:
                            t = r_a[b] + (c // n2) % n1
                        else:
                            t = r_a[b] + c % n2
                        if r_src[b] == 0:
                            ta = p_off[t]
                            tn = p_len[t]
                            for x in range(tn):
                                out[pos + x] = p_arena[ta + x]
                        else:
                            ta = i_off[t]
                            tn = i_len[t]
                            for x in range(tn):
                                out[pos + x] = i_arena[ta + x]
                        pos += tn
                continue
            # an overlap: |U & I| or the Jaccard index of the two tag sets
            has, v = overlap_value(out_comp[o, 0], out_comp[o, 1], r_src, r_a, r_b, p_hash, i_hash, out_measure[o])
            if not has:
                continue
            if out_numeric[o] and v == 0.0:
                continue
            out[pos] = 32
            pos += 1
            for x in range(pn):
                out[pos + x] = pre_arena[pa + x]
            pos += pn
            out[pos] = sb
            pos += 1
            if out_numeric[o]:
                pos = floatfmt.write_f64(v, out, pos)
                continue
            el = out_edge_len[o]
            if el > 0 or out_cap[o] == 0:
                eo = out_edge_off[o]
                lo = 0
                hi = el
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if edge_vals[eo + mid] <= v:
                        lo = mid + 1
                    else:
                        hi = mid
                idx = lo
            else:
                idx = min(np.int64(v), out_cap[o])
            # write_int, written out (idx >= 0)
            nd = 1
            y = idx // 10
            while y > 0:
                nd += 1
                y //= 10
            for x in range(nd - 1, -1, -1):
                out[pos + x] = 48 + idx % 10
                idx //= 10
            pos += nd
        if mode == 3:
            out[pos] = 32
            out[pos + 1] = 124
            out[pos + 2] = 32
            pos = escape_into(key_text, k2_start[i], k2_start[i] + k2_len[i], out, pos + 3)
        out[pos] = 10
        pos += 1
        line_end[j] = pos
    return sel.shape[0], pos, 0


# ---------------------------------------------------------------------------
# profile tables


class ProfileTable:
    """One side's profile rows, joined by key: their tokens, keys and a key index.

    Row e's tokens of side-local feature l are store[a[e*nl+l]:b[e*nl+l]].
    A key given twice: the first row counts (``duplicates`` says how many).
    """

    def __init__(self, plan, side, path, fmt, key_column, opts, log, bad_file=None):
        self.side = side
        self.path = path
        attrs = plan.attrs[side]
        key_attr = attrs[0]
        # wanted columns: the key column, then every other attribute by name; each column once
        # (the tokenizer fills a file column into one wanted column only, so an attribute named
        # like the table's key column reads the key's cell)
        columns = [key_column]
        cell_of_attr = {}
        for a in attrs:
            c = key_column if a == key_attr else a
            if c not in columns:
                columns.append(c)
            cell_of_attr[a] = columns.index(c)
        feat_cell = np.array([cell_of_attr[attrs[plan.bases[b]["attr"]]] for b in plan.local_b[side]], np.int64)
        self.bad = BadLineLog(opts, log, source=path, file=bad_file)
        self.store = Tokens()
        nl = plan.n_local[side]
        pa, pb = [], []
        keys, key_len = [], []
        self.lines = 0
        self.missing = []
        try:
            stream = open(path, "rb")
        except OSError as e:
            raise SpecError("%s table %s: cannot read: %s" % (SIDES[side], path, e.strerror or e)) from None
        with stream:
            src = logs.BlockSource(stream, fmt)
            if fmt != "jsonl":
                if src.header is None:
                    raise SpecError("%s table %s: empty file (no header line)" % (SIDES[side], path))
                if key_column not in src.header:
                    raise SpecError("%s table %s: no key column %r in its header (columns: %s)" % (
                        SIDES[side], path, key_column, ", ".join(src.header)))
                self.missing = [a for a in columns[1:] if a not in src.header]
            tok = logs.Tokenizer(fmt, columns, header=src.header, source=path)
            for data, first_line in src:
                cols = tok.tokenize(data, first_line)
                self.lines += cols.n_lines
                logs.report_tokenizer_bad(self.bad, cols)
                st, br, bb, bc = encode_side(plan, side, cols, feat_cell, self.store)
                kc = cols.count[0::cols.n_cols][: cols.n]
                ok = (br == 0) & (kc == 1)
                for r in np.flatnonzero(~ok).tolist():
                    line_no = cols.first_line + int(cols.line[r])
                    raw = logs.line_bytes(cols.data, cols.line_start[r])
                    if kc[r] != 1:
                        self.bad.add_record(line_no, logs.reason_text(logs.R_MISSING if kc[r] == 0 else logs.R_LIST,
                                                               "key %r" % key_column), 0, raw)
                    else:
                        self.bad.add_record(line_no, bad_value_text(plan, br[r], bb[r]), int(bc[r]), raw)
                self.bad.check_fraction(self.lines)
                rows = np.flatnonzero(ok)
                if nl:
                    idx = (rows[:, None] * nl + np.arange(nl)[None, :]).ravel()
                    pa.append(st.ptr[idx])
                    pb.append(st.ptr[idx + 1])
                e = cols.first[rows * cols.n_cols]
                ln = cols.length[e]
                kb = np.empty(int(ln.sum()), np.uint8)
                _gather(cols.text, cols.start[e], ln, kb)
                keys.append(kb)
                key_len.append(ln)
            self.bad.check_fraction(self.lines, final=True)
        kl = np.concatenate(key_len) if key_len else np.zeros(0, np.int64)
        self.n = len(kl)
        self.a = np.concatenate(pa) if pa else np.zeros(0, np.int64)
        self.b = np.concatenate(pb) if pb else np.zeros(0, np.int64)
        self.store.trim()
        self.key_arena = np.concatenate(keys + [np.zeros(1, np.uint8)])
        self.key_off = np.zeros(self.n + 1, np.int64)
        np.cumsum(kl, out=self.key_off[1:])
        kh = np.empty(self.n, np.uint64)
        _hash_keys(self.key_arena, self.key_off, kh)
        self.key_hash = kh
        self.index = KeyIndex(kh)
        self.duplicates = self.index.duplicates

    def lookup(self, hashes):
        """Profile row of each key hash, or -1."""
        return self.index.lookup(hashes)

    def key(self, e):
        return bytes(self.key_arena[self.key_off[e]:self.key_off[e + 1]])


@njit(cache=True, nogil=True)
def _gather(text, starts, lens, out):
    p = 0
    for i in range(starts.shape[0]):
        out[p:p + lens[i]] = text[starts[i]:starts[i] + lens[i]]
        p += lens[i]


@njit(cache=True, nogil=True)
def hash_spans(arena, off, out):
    """out[i] = hash of arena[off[i]:off[i + 1]]."""
    for i in range(out.shape[0]):
        out[i] = hash_bytes(arena, off[i], off[i + 1])


@njit(cache=True, nogil=True)
def _hash_keys(arena, off, out):
    for i in range(out.shape[0]):
        out[i] = hash_bytes(arena, off[i], off[i + 1])


class NoTable:
    """A side without a profile table: no rows."""

    n = 0
    duplicates = 0
    lines = 0
    missing = ()

    def __init__(self, side):
        self.side = side
        self.store = Tokens(1, 1)
        self.a = np.zeros(1, np.int64)
        self.b = np.zeros(1, np.int64)
        self.key_arena = np.zeros(1, np.uint8)
        self.key_off = np.zeros(1, np.int64)
        self.bad = None

    def lookup(self, hashes):
        return np.full(len(hashes), -1, np.int64)


class Profiles:
    """Both sides' profile tables, their tokens in one store (the kernels' 'profile' set)."""

    def __init__(self, plan, tables):
        self.plan = plan
        self.tables = tables
        u, it = tables
        nu_t, nu_b = u.store.nt, u.store.ap
        self.off = np.concatenate([u.store.off[:nu_t], it.store.off[:it.store.nt] + nu_b])
        self.len = np.concatenate([u.store.len[:nu_t], it.store.len[:it.store.nt]])
        self.hash = np.concatenate([u.store.hash[:nu_t], it.store.hash[:it.store.nt]])
        self.val = np.concatenate([u.store.val[:nu_t], it.store.val[:it.store.nt]])
        self.arena = np.concatenate([u.store.arena[:max(nu_b, 0)], it.store.arena[:max(it.store.ap, 1)]])
        self.up_a, self.up_b = u.a, u.b
        self.ip_a, self.ip_b = it.a + nu_t, it.b + nu_t
        if not len(self.off):
            self.off = np.zeros(1, np.int64)
            self.len = np.zeros(1, np.int64)
            self.hash = np.zeros(1, np.uint64)
            self.val = np.zeros(1, np.float64)
        self._render()

    def _render(self):
        """Each row's runs of consecutive features of its side, as text (see ``render``)."""
        plan = self.plan
        total = 0
        for side, t in enumerate(self.tables):
            nt = int(t.store.nt)
            total += nt * (plan.max_prefix + 2) + int(t.store.len[:nt].sum())
        self.seg = np.empty(max(total, 1), np.uint8)
        pos = 0
        self.seg_ab = []
        for side, (t, pa, pb) in enumerate(zip(self.tables, (self.up_a, self.ip_a), (self.up_b, self.ip_b))):
            runs = plan.side_runs[side]
            m = max(t.n * len(runs), 1)
            sa = np.zeros(m, np.int64)
            sb = np.zeros(m, np.int64)
            if t.n and len(runs):
                pos = render(t.n, plan.n_local[side], side, runs, plan.run_o0, plan.run_o1, pa, pb, self.off,
                             self.len, self.arena, plan.out_comp, plan.out_pre_off, plan.out_pre_len, plan.pre_arena,
                             plan.out_sepbyte, plan.base_local, self.seg, pos, sa, sb)
            self.seg_ab.append((sa, sb))

    def args(self):
        (usa, usb), (isa, isb) = self.seg_ab
        return (self.up_a, self.up_b, self.ip_a, self.ip_b, self.off, self.len, self.hash, self.arena,
                usa, usb, isa, isb, self.seg)

    def token_args(self):
        return self.up_a, self.up_b, self.ip_a, self.ip_b, self.off, self.len, self.hash, self.arena

    def max_tokens(self):
        """Most tokens one user row and one item row hold together."""
        out = 0
        for t, nl in zip(self.tables, self.plan.n_local):
            if t.n and nl:
                out += int((t.b - t.a).reshape(t.n, nl).sum(axis=1).max())
        return out


def load_profiles(plan, opts, log, tables=None, bad_file=None):
    """Profiles of the spec's tables (``tables``: {side: path or None} overrides)."""
    out = []
    spec = plan.spec
    for side, name in enumerate(SIDES):
        path = spec.table_path(name)
        fmt = spec.table_format(name)
        if tables and name in tables:
            path = tables[name]
            fmt = None
        if path is None:
            out.append(NoTable(side))
            continue
        if fmt is None:
            from .spec import format_of
            fmt = format_of(path)
        key_col = spec.data[name]["table"]["key"] if spec.data[name]["table"] else spec.data[name]["key"]
        out.append(ProfileTable(plan, side, path, fmt, key_col, opts, log, bad_file=bad_file))
    return Profiles(plan, out)


# ---------------------------------------------------------------------------
# writing lines


class LineWriter:
    """Runs assemble over selected impressions into a reusable buffer."""

    def __init__(self, plan, profiles, size=1 << 20):
        self.plan = plan
        self.profiles = profiles
        self.out = np.empty(size, np.uint8)
        nb = max(plan.n_base, 1)
        self.r_src = np.zeros(nb, np.int64)
        self.r_a = np.zeros(nb, np.int64)
        self.r_b = np.zeros(nb, np.int64)
        self.r_len = np.zeros(nb, np.int64)
        self.todo = np.zeros(nb + max(len(plan.eager), 1), np.int64)
        self.run_fb = np.zeros(max(len(plan.run_side), 1), np.bool_)

    def run(self, sel, mode, side_mask, labels, ue, ie, ui, ii, inline, store, key_text=None, k1=None, k2=None,
            emit=None, line_end=None):
        """Lines of impressions sel (in order); ``emit(memoryview)`` gets full buffers.

        ``inline``: (user SideTokens, item SideTokens) whose tokens are in
        ``store``; ui/ii index their records. Returns the bytes written, or
        with emit=None the lines as one bytes object.
        """
        plan = self.plan
        sel = np.ascontiguousarray(sel, dtype=np.int64)
        if line_end is None:
            line_end = np.empty(max(len(sel), 1), np.int64)
        su, si = inline
        empty_s = np.zeros(1, np.int64)
        if key_text is None:
            key_text = np.zeros(1, np.uint8)
        k1s, k1l = k1 if k1 is not None else (empty_s, empty_s)
        k2s, k2l = k2 if k2 is not None else (empty_s, empty_s)
        start = 0
        chunks = []
        total = 0
        pos = 0
        while True:
            j, pos, need = assemble(
                start, sel, mode, side_mask, labels, ue, ie, ui, ii, *self.profiles.args(),
                su.ptr[:-1], su.ptr[1:], su.pres, si.ptr[:-1], si.ptr[1:], si.pres,
                store.off, store.len, store.hash, store.arena, plan.n_local[0], plan.n_local[1],
                plan.base_side, plan.base_local, plan.eager, *plan.out_args(),
                key_text, k1s, k1l, k2s, k2l, self.r_src, self.r_a, self.r_b, self.r_len, self.todo,
                self.run_fb, self.out, pos, line_end)
            line_end[start:j] += total
            if j >= len(sel):
                break
            # the buffer is full: hand it over, and grow it if one line needs more
            if pos:
                if emit is None:
                    chunks.append(bytes(self.out[:pos]))
                else:
                    emit(memoryview(self.out)[:pos])
                total += pos
                pos = 0
            if need > self.out.shape[0]:
                self.out = np.empty(2 * need, np.uint8)
            start = j
        if emit is None:
            chunks.append(bytes(self.out[:pos]))
            return b"".join(chunks)
        if pos:
            emit(memoryview(self.out)[:pos])
        return total + pos


# ---------------------------------------------------------------------------
# the offline path: blocks of an impression log


class Batch:
    """One block of impressions: fixed columns, profile rows, inline tokens, bad records."""

    __slots__ = ("cols", "n", "ok", "req_hash", "pos", "label", "uk_s", "uk_l", "ik_s", "ik_l", "ue", "ie",
                 "inline", "store", "bad")

    def line_no(self, r):
        return self.cols.first_line + int(self.cols.line[r])


class LogFeaturizer:
    """Impression log blocks -> Batches (fm_sample rank, fit, recall)."""

    def __init__(self, plan, profiles, fmt, header, source="input"):
        self.plan = plan
        self.profiles = profiles
        L = plan.spec.data["log"]
        cols = []

        def col(name):
            # each log column is wanted once: the tokenizer fills a file column into one wanted
            # column only, and a column may be both a fixed one and an attribute (the position
            # as a feature, [log] fields = { pos = "item.slot" })
            if name not in cols:
                cols.append(name)
            return cols.index(name)

        self.c_req, self.c_click, self.c_user, self.c_item = (col(L[k]) for k in ("request", "clicked", "user",
                                                                                  "item"))
        self.c_pos = col(L["position"]) if L["position"] else -1
        self.required = list(cols)
        attr_col = {(0, plan.attrs[0][0]): self.c_user, (1, plan.attrs[1][0]): self.c_item}
        for colname, src in L["fields"].items():
            side, attr = src.split(".", 1)
            attr_col[(SIDES.index(side), attr)] = col(colname)
        self.columns = cols
        self.feat_cell = []
        for side in (0, 1):
            fc = [attr_col.get((side, plan.attrs[side][plan.bases[b]["attr"]]), -1) for b in plan.local_b[side]]
            self.feat_cell.append(np.array(fc, np.int64))
        self.tok = logs.Tokenizer(fmt, cols, header=header, source=source)
        self.store = Tokens()
        self.click_min = L["click_min"]

    def check_header(self, source):
        """Raise SpecError when the header lacks a required column; return missing field columns."""
        missing = self.tok.missing_columns()
        req = [c for c in self.required if c in missing]
        if req:
            raise SpecError("%s: the header has no column %s (columns: %s)" % (
                source, ", ".join(repr(c) for c in req), ", ".join(self.tok.header)))
        return [c for c in missing if c not in self.required]

    def attribute_warnings(self, missing_columns):
        """Messages for attributes that neither a table column nor a log column gives."""
        plan = self.plan
        out = []
        L = plan.spec.data["log"]
        inline = {src for colname, src in L["fields"].items() if colname not in missing_columns}
        for side, name in enumerate(SIDES):
            t = self.profiles.tables[side]
            for a, attr in enumerate(plan.attrs[side]):
                if a == 0:
                    continue  # the key: always there
                in_table = getattr(t, "path", None) is not None and attr not in t.missing
                if in_table or ("%s.%s" % (name, attr)) in inline:
                    continue
                users = sorted({x["name"].split(".")[0] for x in plan.bases
                                if x["side"] == side and x["attr"] == a})
                out.append("attribute %s.%s is in no %s table column and no log column: feature%s %s will "
                           "be empty" % (name, attr, name, "s" if len(users) > 1 else "", ", ".join(users)))
        return out

    def batch(self, data, first_line):
        plan = self.plan
        cols = self.tok.tokenize(data, first_line)
        n = cols.n
        bt = Batch()
        bt.cols = cols
        bt.n = n
        m = max(n, 1)
        bt.req_hash = np.zeros(m, np.uint64)
        bt.pos = np.zeros(m, np.float64)
        bt.label = np.zeros(m, np.int8)
        bt.uk_s, bt.uk_l, bt.ik_s, bt.ik_l = (np.zeros(m, np.int64) for _ in range(4))
        uk_hash = np.zeros(m, np.uint64)
        ik_hash = np.zeros(m, np.uint64)
        br = np.zeros(m, np.int64)
        bw = np.zeros(m, np.int64)
        bc = np.zeros(m, np.int64)
        logs.impressions(n, cols.n_cols, cols.first, cols.count, cols.col, cols.start, cols.length, cols.text,
                         self.c_req, self.c_click, self.c_user, self.c_item, self.c_pos,
                         0.0 if self.click_min is None else self.click_min,
                         self.click_min is not None, bt.req_hash, bt.pos, bt.label, bt.uk_s, bt.uk_l, bt.ik_s,
                         bt.ik_l, uk_hash, ik_hash, br, bw, bc)
        bt.ue = self.profiles.tables[0].lookup(uk_hash[:n]) if n else np.zeros(0, np.int64)
        bt.ie = self.profiles.tables[1].lookup(ik_hash[:n]) if n else np.zeros(0, np.int64)
        self.store.reset()
        su, ur, ub, uc = encode_side(plan, 0, cols, self.feat_cell[0], self.store, bt.ue)
        si, ir, ib, ic = encode_side(plan, 1, cols, self.feat_cell[1], self.store, bt.ie)
        bt.inline = (su, si)
        bt.store = self.store
        bad = []
        for li, reason, col, arg in cols.bad:
            bad.append((li, -1, logs.reason_text(reason, repr(cols.names[arg]) if arg >= 0 else "a field"), col))
        okr = br[:n] == 0
        for r in np.flatnonzero(~okr).tolist():
            bad.append((int(cols.line[r]), r, logs.reason_text(int(br[r]), repr(cols.names[int(bw[r])])),
                        int(bc[r])))
        for r in np.flatnonzero(okr & ((ur != 0) | (ir != 0))).tolist():
            if ur[r]:
                bad.append((int(cols.line[r]), r, bad_value_text(plan, ur[r], ub[r]), int(uc[r])))
            else:
                bad.append((int(cols.line[r]), r, bad_value_text(plan, ir[r], ib[r]), int(ic[r])))
        ok = okr & (ur == 0) & (ir == 0)
        bad.sort()
        bt.ok = ok
        bt.bad = bad
        return bt

    def report(self, bt, bad_log, upto_line=None):
        """Report the batch's bad records (those on lines before upto_line); returns how many."""
        if not bt.bad:
            return 0
        rows = [b for b in bt.bad if upto_line is None or b[0] < upto_line]
        need = [b[0] for b in rows if b[1] < 0]
        starts = dict(zip(need, logs.line_starts(bt.cols.data, need))) if need else {}
        for li, r, text, col in rows:
            s = bt.cols.line_start[r] if r >= 0 else starts[li]
            bad_log.add_record(bt.cols.first_line + li, text, col, logs.line_bytes(bt.cols.data, s))
        return len(rows)


# ---------------------------------------------------------------------------
# the online path


class _DictColumns:
    """Columns (as logs.Columns) built from Python values."""

    def __init__(self, records, attrs, where):
        n = len(records)
        nc = len(attrs)
        self.n = n
        self.n_cols = nc
        self.first = np.zeros(max(n * nc, 1), np.int64)
        self.count = np.zeros(max(n * nc, 1), np.int64)
        self.present = np.zeros(max(n * nc, 1), np.uint8)
        self.col = np.zeros(max(n * nc, 1), np.int64)
        parts = []
        starts = []
        lens = []
        pos = 0
        for r, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ValueError("%s #%d: expected a dict of attributes, got %s" % (where, r, type(rec).__name__))
            for c, attr in enumerate(attrs):
                if attr not in rec:
                    continue
                try:
                    present, texts = value_texts(rec[attr])
                except TypeError as e:
                    raise ValueError("%s.%s: %s" % (where, attr, e)) from None
                k = r * nc + c
                self.present[k] = present
                self.first[k] = len(starts)
                self.count[k] = len(texts)
                for t in texts:
                    starts.append(pos)
                    lens.append(len(t))
                    parts.append(t)
                    pos += len(t)
        self.text = np.frombuffer(b"".join(parts) + b"\0", np.uint8).copy()
        self.start = np.array(starts or [0], np.int64)
        self.length = np.array(lens or [0], np.int64)


class Featurizer:
    """Feature lines from raw records with a (frozen) spec: the online path.

    The same kernels as ``fm_sample rank`` build the features, so a raw
    record gives the same bytes here as in the training lines.
    """

    def __init__(self, spec, tables=None, load_tables=True):
        """``spec``: a Spec or the path of a (frozen) spec; ``tables``:
        {"user": path, "item": path} to use instead of the spec's tables;
        ``load_tables=False`` joins no profile table (every attribute must
        come with the request)."""
        from .spec import Spec, load_spec
        from ..train import Options

        if not isinstance(spec, Spec):
            spec = load_spec(spec)
        self.spec = spec
        self.plan = Plan(spec)
        self.fingerprint = spec.fingerprint
        opts = Options(on_error="stop", quiet=True)
        if load_tables:
            self.profiles = load_profiles(self.plan, opts, lambda m: None, tables=tables)
        else:
            self.profiles = Profiles(self.plan, [NoTable(0), NoTable(1)])
        self.writer = LineWriter(self.plan, self.profiles, size=1 << 16)
        self.all_cells = [np.array([self.plan.bases[b]["attr"] for b in self.plan.local_b[s]], np.int64)
                          for s in (0, 1)]

    def _entities(self, side, records):
        key = self.plan.attrs[side][0]
        hashes = np.zeros(len(records), np.uint64)
        has = np.zeros(len(records), bool)
        for r, rec in enumerate(records):
            v = rec.get(key) if isinstance(rec, dict) else None
            if v is None or isinstance(v, dict):
                continue
            # a key of exactly one value joins, a one-element list too: as a log's key cell
            # (logs.impressions: one element, else the record is bad)
            texts = value_texts(v)[1]
            if len(texts) != 1:
                continue
            t = np.frombuffer(texts[0], np.uint8)
            hashes[r] = hash_bytes(t, 0, t.shape[0])
            has[r] = True
        ent = self.profiles.tables[side].lookup(hashes) if len(records) else np.zeros(0, np.int64)
        ent[~has] = -1
        return ent

    def _run(self, request, mode, labels=None):
        if not isinstance(request, dict):
            raise ValueError("a request is a dict {\"user\": {...}, \"items\": [{...}, ...]}")
        user = request.get("user") or {}
        items = request.get("items")
        if items is None or not isinstance(items, (list, tuple)):
            raise ValueError("request[\"items\"] must be a list of dicts")
        plan = self.plan
        store = Tokens()
        ucols = _DictColumns([user], plan.attrs[0], "user")
        icols = _DictColumns(items, plan.attrs[1], "items")
        su, ur, ub, _ = encode_side(plan, 0, ucols, self.all_cells[0], store)
        si, ir, ib, _ = encode_side(plan, 1, icols, self.all_cells[1], store)
        if ur.size and ur[0]:
            raise ValueError(bad_value_text(plan, ur[0], ub[0]))
        for r in np.flatnonzero(ir).tolist():
            raise ValueError("items[%d]: %s" % (r, bad_value_text(plan, ir[r], ib[r])))
        n = len(items)
        ue = np.full(n, self._entities(0, [user])[0], np.int64)
        ie = self._entities(1, list(items))
        ui = np.zeros(n, np.int64)
        ii = np.arange(n, dtype=np.int64)
        lab = np.zeros(max(n, 1), np.int8)
        if labels is not None:
            lab[:n] = np.asarray(labels, np.int8)
        line_end = np.empty(max(n, 1), np.int64)
        blob = self.writer.run(np.arange(n), mode, 3, lab, ue, ie, ui, ii, (su, si), store, line_end=line_end)
        return blob, line_end[:n]

    def featurize(self, request):
        """Feature strings (bytes, ``NAME NAME:VALUE ...``) of each item of a request.

        ``request`` = {"user": {attribute: value, ...}, "items": [{...}, ...]};
        attributes missing from a dict come from the profile tables (joined
        by the user's and items' keys). Values: str, int, float, bool, None,
        or lists of those.
        """
        blob, ends = self._run(request, BARE)
        out = []
        a = 0
        for e in ends.tolist():
            out.append(blob[a + 1:e - 1] if e - a > 1 else b"")
            a = e
        return out

    def lines(self, request, labels):
        """fm_train lines ('1 FEATS' / '0 FEATS') for the items of a request, one label each."""
        if len(labels) != len(request.get("items") or []):
            raise ValueError("one label per item: %d labels for %d items" % (
                len(labels), len(request.get("items") or [])))
        return self._run(request, LABELED, labels)[0]


def profile_notes(profiles, log, quiet, name):
    """One line per profile table read from a file: its rows, bad lines, repeated keys."""
    if quiet:
        return
    for t in profiles.tables:
        if getattr(t, "path", None) is None:
            continue
        msg = "%s: %s table %s: %s rows" % (name, ("user", "item")[t.side], t.path, fmt_int(t.n))
        if t.bad is not None and t.bad.count:
            msg += ", %s bad lines skipped" % fmt_int(t.bad.count)
        if t.duplicates:
            msg += ", %s repeated keys (the first row counts)" % fmt_int(t.duplicates)
        log(msg)
