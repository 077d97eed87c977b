"""fm_sample audit: per-field importance of an FM on a sample stream, and how it moved.

An FM explains each score exactly (``streamfm.explain``):
phi_i = w_i x_i + 0.5 x_i <v_i, s - v_i x_i> sums to score - w0. A field
is a feature name's prefix before the separator (``age=3`` -> ``age``; a
numeric ``price:2.5`` -> ``price``); its phi in a sample is the sum of its
features' phis there. Per field:

- coverage: the share of samples holding the field;
- distinct: how many different feature names of the field appear;
- mean |phi|: the mean of |field phi| over the samples holding it;
- share: the field's sum of |field phi| over all samples / the same sum over
  all fields (how much of the score's movement the field makes).

With a second model, the fields whose share moved most (B - A) are listed:
a field whose importance is far from what its owner expected, or that moved
far between two versions of a pipeline, is often a bug in how it is made.
"""

import numpy as np
from numba import njit

from .. import parse
from ..badlines import BadLineLog
from ..explain import phi_block
from ..reader import BlockReader
from ..table import init_hash_bytes as hash_bytes  # field groups: the unkeyed hash


@njit(cache=True, nogil=True)
def field_hashes(buf, name_start, name_len, nnz, sep, out):
    """out[j] = hash of feature j's name up to its first sep byte (all of it if none)."""
    for j in range(nnz):
        a = name_start[j]
        e = a + name_len[j]
        b = e
        for p in range(a, e):
            if buf[p] == sep:
                b = p
                break
        out[j] = hash_bytes(buf, a, b)


class FieldStats:
    """Accumulated per-field statistics of one or two models."""

    def __init__(self, n_models):
        self.n_models = n_models
        self.names = []
        self.ids = {}
        self.samples = 0
        self.present = np.zeros(0, np.int64)
        self.abs_sum = np.zeros((n_models, 0))
        self.feat_hashes = np.zeros(0, np.uint64)
        self.feat_field = np.zeros(0, np.int64)

    def _grow(self, n):
        if n <= len(self.present):
            return
        extra = n - len(self.present)
        self.present = np.r_[self.present, np.zeros(extra, np.int64)]
        self.abs_sum = np.concatenate([self.abs_sum, np.zeros((self.n_models, extra))], axis=1)

    def add_block(self, p, sep, phis):
        """p: a parse.Parsed block; phis: one phi array (CSR order) per model."""
        nnz = p.nnz
        if p.n_samples == 0:
            return
        self.samples += p.n_samples
        if nnz == 0:
            return
        fh = np.empty(nnz, np.uint64)
        field_hashes(p.buf, p.name_start, p.name_len, nnz, sep, fh)
        uniq, first, inv = np.unique(fh, return_index=True, return_inverse=True)
        ids = np.empty(len(uniq), np.int64)
        for u, (h, j) in enumerate(zip(uniq.tolist(), first.tolist())):
            fid = self.ids.get(h)
            if fid is None:
                a = int(p.name_start[j])
                name = bytes(p.buf[a:a + int(p.name_len[j])])
                cut = name.find(bytes([sep]))
                fid = self.ids[h] = len(self.names)
                self.names.append((name if cut < 0 else name[:cut]).decode("utf-8", "backslashreplace"))
            ids[u] = fid
        field = ids[inv]
        self._grow(len(self.names))
        nf = len(self.names)
        sample = np.repeat(np.arange(p.n_samples), np.diff(p.indptr))
        pair = sample * nf + field
        upair, pinv = np.unique(pair, return_inverse=True)
        pf = upair % nf
        self.present += np.bincount(pf, minlength=nf)[: len(self.present)]
        for m, phi in enumerate(phis):
            sums = np.bincount(pinv, weights=phi[:nnz], minlength=len(upair))
            self.abs_sum[m] += np.bincount(pf, weights=np.abs(sums), minlength=nf)[: len(self.present)]
        # distinct names per field: the union of feature hashes seen
        hu, hi = np.unique(p.hashes, return_index=True)
        allh = np.concatenate([self.feat_hashes, hu])
        allf = np.concatenate([self.feat_field, field[hi]])
        keep_h, keep_i = np.unique(allh, return_index=True)
        self.feat_hashes = keep_h
        self.feat_field = allf[keep_i]

    def table(self):
        """Rows per field: name, coverage, distinct, mean |phi| and share per model."""
        nf = len(self.names)
        distinct = np.bincount(self.feat_field, minlength=nf) if nf else np.zeros(0, np.int64)
        rows = []
        totals = self.abs_sum.sum(axis=1)
        for f in range(nf):
            r = {"field": self.names[f], "coverage": self.present[f] / max(self.samples, 1),
                 "distinct": int(distinct[f])}
            for m in range(self.n_models):
                r["mean_abs_phi_%d" % m] = self.abs_sum[m, f] / max(self.present[f], 1)
                r["share_%d" % m] = self.abs_sum[m, f] / totals[m] if totals[m] > 0 else 0.0
            rows.append(r)
        rows.sort(key=lambda r: (-r["share_0"], r["field"]))
        return rows


def audit_stream(models, stream, sep, opts, log):
    """FieldStats of ``models`` (ServingModels, 1 or 2) over fm_train lines from stream.

    Bad lines follow the input policy (BadLineLog). Returns (stats, lines, bad).
    """
    stats = FieldStats(len(models))
    reader = BlockReader(stream)
    bad = BadLineLog(opts, log)
    bufs = [parse.ParseBuffers(0) for _ in models]
    lines = 0
    phis = [np.empty(0) for _ in models]
    try:
        while True:
            blk = reader.get()
            if blk is None:
                break
            p = parse.parse(blk.data, blk.n_lines, bufs[0], models[0].table)
            lines += p.n_lines
            bad.check(blk, p, lines)
            out = []
            for m, model in enumerate(models):
                if phis[m].shape[0] < p.nnz:
                    phis[m] = np.empty(max(p.nnz, 2 * phis[m].shape[0]))
                # each model hashes names with its own key: B's rows come from
                # parsing the same block against B's table (same samples, same order)
                rows = p.rows if m == 0 else parse.parse(blk.data, blk.n_lines, bufs[m], model.table).rows
                phi_block(p.indptr, rows, p.vals, p.n_samples, model.weights, model.k, phis[m])
                out.append(phis[m])
            stats.add_block(p, sep, out)
        if reader.error is not None:
            raise reader.error
    finally:
        reader.stop()
        bad.close()
    return stats, lines, bad


def format_report(stats, spec_prefixes=None, top=10, labels=("A", "B")):
    """The audit's text report (lines)."""
    rows = stats.table()
    two = stats.n_models == 2
    out = []
    head = "%-24s %9s %9s %12s %8s" % ("field", "coverage", "distinct", "mean|phi|", "share")
    if two:
        head += " %12s %8s %8s" % ("mean|phi|B", "shareB", "change")
    out.append(head)
    for r in rows:
        line = "%-24s %9.4f %9d %12.6g %8.4f" % (r["field"], r["coverage"], r["distinct"], r["mean_abs_phi_0"],
                                                r["share_0"])
        if two:
            line += " %12.6g %8.4f %+8.4f" % (r["mean_abs_phi_1"], r["share_1"], r["share_1"] - r["share_0"])
        out.append(line)
    if two and rows:
        out.append("")
        out.append("moved most (share %s -> %s):" % labels)
        moved = sorted(rows, key=lambda r: (-abs(r["share_1"] - r["share_0"]), r["field"]))[:top]
        for r in moved:
            out.append("  %-24s %8.4f -> %8.4f  (%+.4f)" % (r["field"], r["share_0"], r["share_1"],
                                                        r["share_1"] - r["share_0"]))
    if spec_prefixes:
        seen = {r["field"] for r in rows}
        never = [p for p in spec_prefixes if p not in seen]
        if never:
            out.append("")
            out.append("spec fields never present in the samples: %s" % ", ".join(never))
    return out
