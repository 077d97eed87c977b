"""The input line grammar (docs/design.md, "Input lines"), parsed in numba.

    LABEL SEP NAME:VALUE SEP NAME:VALUE ...      SEP = one or more ' ' or '\\t'

- LABEL is a number; > 0 is a positive (y = 1), anything else a negative (-1).
- NAME is any bytes without white space; the LAST ':' of a token splits name
  and value; a token without ':' has value 1; value 0 drops the feature.
- Empty (or blank) lines are skipped; a '\\r' right before '\\n' is ignored.
- A bad line is rolled back and reported with its reason and byte column.

Recall files use the same grammar with a KEY (any token) in place of the
label, and click lines end with ``| ITEM_KEY`` (see LABELED, KEYED, CLICK).

This module is the only place that knows the grammar; training, prediction,
recall and importance all parse through ``parse_block``.
"""

import numpy as np
from numba import njit

from . import floatfmt
from .jit import prefetch1
from .table import hash_final, hash_start, hash_word, home_slot, lookup_span

# Reasons a line is rejected; the numbers are stable (they appear in reports).
BAD_LABEL = 1
NONFINITE_LABEL = 2
BAD_VALUE = 3
NONFINITE_VALUE = 4
EMPTY_NAME = 5
EMPTY_VALUE = 6
CONTROL_BYTE = 7
BAD_CLICK = 8
FIELD_CAPACITY = 9  # a field-aware FM's line (ffm.py), found when its new names get rows

# What the first token of a line is (docs/design.md, "Input lines").
LABELED = 0   # LABEL NAME:VALUE ...
KEYED = 1     # KEY NAME:VALUE ...                (recall items, users, queries)
CLICK = 2     # USER_KEY NAME:VALUE ... | ITEM_KEY (recall clicks)

REASONS = {
    BAD_LABEL: "label is not a number",
    NONFINITE_LABEL: "label is NaN or infinite",
    BAD_VALUE: "feature value is not a number",
    NONFINITE_VALUE: "feature value is NaN, infinite or overflows",
    EMPTY_NAME: "empty feature name before ':'",
    EMPTY_VALUE: "empty feature value after ':'",
    CONTROL_BYTE: "control byte (binary data?) in line",
    BAD_CLICK: "click line must be 'USER_KEY NAME:VALUE ... | ITEM_KEY'",
    FIELD_CAPACITY: "a new field beyond the model's field capacity (--max-fields)",
}

# |value| above this is clipped (and counted). Real feature values (counts,
# prices, microsecond time stamps) stay below it; beyond it they are
# garbage whose squares swamp or overflow the FTRL accumulators (the
# trainer also skips and counts any update that would still overflow).
VALUE_CLIP = 1e16

_SP = 32
_TAB = 9
_LF = 10
_CR = 13
_COLON = 58
_DEL = 127
_U8 = np.uint64(8)


_P10 = np.array([10.0 ** i for i in range(16)])


@njit(inline="always")
def _exact_decimal(mant, frac):
    """The double of a plain decimal ``digits[.digits]`` of <= 15 digits:
    ``mant`` its digits as an integer, ``frac`` how many follow the '.'.
    Both mant and 10**frac are exact doubles, so one IEEE division is
    correctly rounded (Clinger's fast path): the double the full parser
    returns. parse_number and parse_block's value scan both end here."""
    v = np.float64(mant)
    if frac > 0:
        v = v / _P10[frac]
    return v


@njit(inline="always")
def parse_number(buf, start, end):
    """floatfmt.parse_f64, with an inline fast path for short plain decimals.

    Most values in CTR data are '1' or a few digits; for at most 15 digits
    without exponent the value is one exact IEEE division (Clinger's fast
    path), the same double the full parser returns, at a fraction of its cost.
    """
    i = start
    neg = False
    if i < end and (buf[i] == 45 or buf[i] == 43):
        neg = buf[i] == 45
        i += 1
    mant = 0
    nd = 0
    frac = 0
    dot = False
    while i < end:
        d = np.int64(buf[i]) - 48
        if 0 <= d <= 9:
            mant = mant * 10 + d
            nd += 1
            if dot:
                frac += 1
        elif d == -2 and not dot:
            dot = True
        else:
            nd = 99
            break
        i += 1
    if 0 < nd <= 15:
        v = _exact_decimal(mant, frac)
        return (-v if neg else v), floatfmt.OK
    return floatfmt.parse_f64(buf, start, end)


@njit(inline="always")
def _at(buf, pos):
    # an unsigned index spares numba's negative-index check on every byte
    return buf[np.uintp(pos)]


@njit(inline="always")
def _is_sep(b):
    return b == _SP or b == _TAB


@njit(inline="always")
def _is_eol(buf, pos, n):
    b = _at(buf, pos)
    if b == _LF:
        return True
    return b == _CR and (pos + 1 >= n or _at(buf, pos + 1) == _LF)


@njit(inline="always")
def _at_line_end(buf, pos, n):
    """Nothing more on this line at pos: the end of the block or of the line."""
    return pos >= n or _is_eol(buf, pos, n)


@njit(inline="always")
def _ends_token(buf, pos, n):
    """A token that stopped at pos ended as tokens do (else a control byte stopped it)."""
    return pos >= n or _is_sep(_at(buf, pos)) or _is_eol(buf, pos, n)


@njit(inline="always")
def _skip_sep(buf, pos, n):
    while pos < n and _is_sep(_at(buf, pos)):
        pos += 1
    return pos


@njit(inline="always")
def _skip_line(buf, pos, n):
    while pos < n and _at(buf, pos) != _LF:
        pos += 1
    return pos + 1


@njit(inline="always")
def _token_end(buf, pos, n):
    while pos < n:
        b = _at(buf, pos)
        if b > _SP and b != _DEL:
            pos += 1
            continue
        break
    return pos


@njit(cache=True, nogil=True)
def parse_block(buf, n, mode, slots, row_hash, key, ys, indptr, sample_line, hashes, rows, vals,
                name_start, name_len, keys, bad_line, bad_reason, bad_col, slow_idx, slow_start,
                slow_end):
    """Parse the complete lines in buf[:n] into CSR arrays.

    ``mode`` says what the first token is (LABELED, KEYED, CLICK); for
    KEYED and CLICK lines keys[s] = (start, end) of the sample's key and,
    for CLICK, keys[s, 2:4] of its item key (ys is then 1).

    Each feature's name is hashed under the table's ``key`` and looked up
    in the feature table (``slots``, ``row_hash``) as it is parsed, so the
    table's cache misses overlap with parsing: rows[j] is its row, or -1 for
    a name not in the table (the hash and the name's byte span are kept for
    inserting it).
    Capacities the caller provides: samples and bad lines <= lines in the
    block + 1, features and slow tokens <= n // 2 + 1.
    Returns (samples, features, lines, bad lines, slow tokens, clipped
    values, unknown features). ``slow`` tokens are valid numbers the fast
    parser cannot round exactly (slow_idx: the feature, or -1-s for the label
    of sample s); the caller settles them (``_settle_slow``).
    """
    ns = 0
    nnz = 0
    nbad = 0
    nslow = 0
    nclip = 0
    nmiss = 0
    line = 0
    pos = 0
    indptr[0] = 0
    mask = slots.shape[0] - 1
    h0 = hash_start(key)
    while pos < n:
        lstart = pos
        pos = _skip_sep(buf, pos, n)
        if _at_line_end(buf, pos, n):
            pos = _skip_line(buf, pos, n)
            line += 1
            continue
        line_slow = nslow
        # label or key
        ts = pos
        reason = 0
        y = 1.0
        pos = _token_end(buf, pos, n)
        if not _ends_token(buf, pos, n):
            reason = CONTROL_BYTE
            ts = pos
        elif mode != LABELED:
            keys[ns, 0] = ts
            keys[ns, 1] = pos
        else:
            v, st = parse_number(buf, ts, pos)
            if st == floatfmt.OK:
                y = 1.0 if v > 0.0 else -1.0
            elif st == floatfmt.SLOW:
                slow_idx[nslow] = -1 - ns
                slow_start[nslow] = ts
                slow_end[nslow] = pos
                nslow += 1
            elif st == floatfmt.NONFINITE:
                reason = NONFINITE_LABEL
            else:
                reason = BAD_LABEL
        line_nnz = nnz
        line_clip = nclip
        # features
        item = mode != CLICK
        while reason == 0:
            pos = _skip_sep(buf, pos, n)
            if _at_line_end(buf, pos, n):
                break
            ts = pos
            if mode == CLICK and _at(buf, pos) == 124 and _ends_token(buf, pos + 1, n):
                # '| ITEM_KEY' ends a click line
                ts = _skip_sep(buf, pos + 1, n)
                te = _token_end(buf, ts, n)
                keys[ns, 2] = ts
                keys[ns, 3] = te
                pos = _skip_sep(buf, te, n)
                if te == ts or not _at_line_end(buf, pos, n):
                    reason = BAD_CLICK
                    if te != ts:
                        ts = pos  # the column of what follows the item key
                    break
                item = True
                break
            # One pass over NAME[:VALUE]: the bytes are hashed a word of 8 at a
            # time (table.py's keyed hash) and the value after the latest ':'
            # is read as a plain decimal as it goes by, so the common value
            # needs no second pass (the digit rule is parse_number's). Kept in
            # parse_block by hand: as an inline='always' helper returning its
            # state (end, colon, hash, digits), with or without a digit-step
            # helper, this pass parsed 10-30% slower in A/B runs over
            # bench_train's data; so did parse_number and the label as
            # helpers built on that digit step.
            h = h0
            acc = np.uint64(0)
            cnt = 0
            colon = -1
            ch = h
            cacc = acc
            vm = 0
            vd = 0
            vf = -1
            while pos < n:
                b = _at(buf, pos)
                if b > _SP and b != _DEL:
                    if b == _COLON:
                        colon = pos
                        ch = h
                        cacc = acc
                        vm = 0
                        vd = 0
                        vf = -1
                    elif colon >= 0:
                        d = np.int64(b) - 48
                        if 0 <= d <= 9:
                            vm = vm * 10 + d
                            vd += 1
                            if vf >= 0:
                                vf += 1
                        elif d == -2 and vf < 0:
                            vf = 0
                        else:
                            vd = 99
                    acc = (acc << _U8) | np.uint64(b)
                    cnt += 1
                    if cnt == 8:
                        h = hash_word(h, acc)
                        acc = np.uint64(0)
                        cnt = 0
                    pos += 1
                    continue
                break
            te = pos
            if not _ends_token(buf, pos, n):
                reason = CONTROL_BYTE
                ts = pos
                break
            if colon < 0:
                nlen = te - ts
                hv = hash_final(h, acc, nlen)
                x = 1.0
                st = floatfmt.OK
            else:
                nlen = colon - ts
                if nlen == 0:
                    reason = EMPTY_NAME
                    break
                if colon + 1 == te:
                    reason = EMPTY_VALUE
                    break
                # the snapshot was taken before the ':' entered the hash; its
                # partial word holds the name's last nlen % 8 bytes
                hv = hash_final(ch, cacc, nlen)
                if 0 < vd <= 15:
                    # Clinger's fast path: one exact division, as parse_number
                    x = _exact_decimal(vm, vf)
                    st = floatfmt.OK
                else:
                    x, st = parse_number(buf, colon + 1, te)
                if st == floatfmt.BAD:
                    reason = BAD_VALUE
                    break
                if st == floatfmt.NONFINITE:
                    reason = NONFINITE_VALUE
                    break
            if st == floatfmt.SLOW:
                slow_idx[nslow] = nnz
                slow_start[nslow] = colon + 1
                slow_end[nslow] = te
                nslow += 1
                x = 1.0
            elif x == 0.0:
                continue
            elif x > VALUE_CLIP:
                x = VALUE_CLIP
                nclip += 1
            elif x < -VALUE_CLIP:
                x = -VALUE_CLIP
                nclip += 1
            # the lookup waits for the line's end; its slot starts loading now
            prefetch1(slots, home_slot(hv, mask))
            hashes[nnz] = hv
            vals[nnz] = x
            name_start[nnz] = ts
            name_len[nnz] = nlen
            nnz += 1
        if reason == 0 and not item:
            reason = BAD_CLICK
            ts = pos
        if reason == 0:
            nmiss += lookup_span(slots, row_hash, hashes, rows, line_nnz, nnz)
            ys[ns] = y
            sample_line[ns] = line
            ns += 1
            indptr[ns] = nnz
        else:
            nnz = line_nnz
            nslow = line_slow
            nclip = line_clip
            bad_line[nbad] = line
            bad_reason[nbad] = reason
            bad_col[nbad] = ts - lstart
            nbad += 1
        pos = _skip_line(buf, pos, n)
        line += 1
    return ns, nnz, line, nbad, nslow, nclip, nmiss


class ParseBuffers:
    """Reusable output arrays of parse_block for blocks up to ``size`` bytes."""

    def __init__(self, size=0):
        self.size = -1
        self.ensure(size, size)

    def ensure(self, nbytes, nlines):
        if nbytes <= self.size and nlines < self.lines_cap:
            return
        size = max(nbytes, 2 * max(self.size, 0))
        lines = max(nlines + 1, size // 64 + 2)
        feats = size // 2 + 2
        self.size = size
        self.lines_cap = lines
        self.ys = np.empty(lines, np.float64)
        self.indptr = np.empty(lines + 1, np.int64)
        self.sample_line = np.empty(lines, np.int64)
        self.keys = np.empty((lines, 4), np.int64)
        self.bad_line = np.empty(lines, np.int64)
        self.bad_reason = np.empty(lines, np.int8)
        self.bad_col = np.empty(lines, np.int64)
        self.hashes = np.empty(feats, np.uint64)
        self.rows = np.empty(feats, np.int64)
        self.vals = np.empty(feats, np.float64)
        self.name_start = np.empty(feats, np.int64)
        self.name_len = np.empty(feats, np.int64)
        self.slow_idx = np.empty(feats, np.int64)
        self.slow_start = np.empty(feats, np.int64)
        self.slow_end = np.empty(feats, np.int64)


class Parsed:
    """One parsed block: CSR views into ParseBuffers plus the bad lines."""

    __slots__ = ("ys", "indptr", "sample_line", "keys", "hashes", "rows", "vals", "name_start", "name_len",
                 "n_samples", "nnz", "n_lines", "bad_line", "bad_reason", "bad_col",
                 "n_clipped", "n_unknown", "buf", "tok_field")


_NO_SLOTS = np.full(1, -1, dtype=np.int32)
_NO_HASHES = np.zeros(1, dtype=np.uint64)
NO_KEY = np.zeros(2, dtype=np.uint64)


def parse(buf, n_lines_hint, bufs, table=None, mode=LABELED):
    """Parse a uint8 array of complete lines; returns a Parsed.

    With a FeatureTable, ``rows`` holds each feature's row (-1: not in it)
    and ``hashes`` the names' hashes under its key (without one, under
    ``NO_KEY``). ``mode``: LABELED (ranking samples), KEYED or CLICK (recall
    files; see ``Parsed.keys`` and ``key_bytes``).
    """
    n = buf.shape[0]
    if n_lines_hint is None:
        n_lines_hint = bytes(buf).count(b"\n") + 1
    bufs.ensure(n, n_lines_hint)
    slots, row_hash, key = ((table.slots, table.row_hash, table.key) if table is not None
                            else (_NO_SLOTS, _NO_HASHES, NO_KEY))
    ns, nnz, nl, nbad, nslow, nclip, nmiss = parse_block(
        buf, n, mode, slots, row_hash, key, bufs.ys, bufs.indptr, bufs.sample_line, bufs.hashes,
        bufs.rows, bufs.vals, bufs.name_start, bufs.name_len, bufs.keys, bufs.bad_line,
        bufs.bad_reason, bufs.bad_col, bufs.slow_idx, bufs.slow_start, bufs.slow_end)
    p = Parsed()
    p.buf = buf
    p.ys = bufs.ys[:ns]
    p.indptr = bufs.indptr[: ns + 1]
    p.sample_line = bufs.sample_line[:ns]
    p.keys = bufs.keys[:ns]
    p.hashes = bufs.hashes[:nnz]
    p.rows = bufs.rows[:nnz]
    p.vals = bufs.vals[:nnz]
    p.name_start = bufs.name_start[:nnz]
    p.name_len = bufs.name_len[:nnz]
    p.n_samples, p.nnz, p.n_lines = ns, nnz, nl
    p.bad_line = bufs.bad_line[:nbad]
    p.bad_reason = bufs.bad_reason[:nbad]
    p.bad_col = bufs.bad_col[:nbad]
    p.n_clipped = nclip
    p.n_unknown = nmiss
    p.tok_field = None
    if nslow:
        _settle_slow(p, bufs, nslow)
    return p


def key_bytes(parsed, s, item=False):
    """The key (or, with item=True, the clicked item's key) of sample s."""
    c = 2 if item else 0
    a, b = parsed.keys[s, c], parsed.keys[s, c + 1]
    return bytes(parsed.buf[a:b])


def _settle_slow(p, bufs, nslow):
    """Exact values for the rare numbers the fast parser cannot round.

    Python's float() decides them; one that overflows makes its line bad,
    a value that underflows to 0 drops its feature (as any 0 does), and a
    label's sign is the sign of its value. Rebuilds the CSR arrays only in
    those (very rare) cases.
    """
    data = bytes(p.buf)
    drop_feat = []
    bad = {}  # sample -> (reason, token start)
    for j in range(nslow):
        a, b = int(bufs.slow_start[j]), int(bufs.slow_end[j])
        x = float(data[a:b])
        idx = int(bufs.slow_idx[j])
        if idx < 0:
            s = -1 - idx
            if x != x or abs(x) == float("inf"):
                bad.setdefault(s, (NONFINITE_LABEL, a))
            else:
                p.ys[s] = 1.0 if x > 0 else -1.0
            continue
        if abs(x) == float("inf"):
            s = int(np.searchsorted(p.indptr, idx, side="right")) - 1
            bad.setdefault(s, (NONFINITE_VALUE, int(p.name_start[idx])))
        elif x == 0.0:
            drop_feat.append(idx)
        else:
            if abs(x) > VALUE_CLIP:
                x = VALUE_CLIP if x > 0 else -VALUE_CLIP
                p.n_clipped += 1
            p.vals[idx] = x
    if not drop_feat and not bad:
        return
    remove(p, drop_feat, bad, data)


def remove(p, drop_feat, bad, data):
    """Drop the features ``drop_feat`` (indices) and the samples of ``bad``
    ({sample: (reason, byte where the problem is)}) from the parsed block ``p``;
    the samples' lines join its bad lines. Returns the features kept (a mask)."""
    keep_f = np.ones(p.nnz, dtype=bool)
    keep_f[drop_feat] = False
    keep_s = np.ones(p.n_samples, dtype=bool)
    for s in bad:
        keep_s[s] = False
        keep_f[p.indptr[s]:p.indptr[s + 1]] = False
    kept = np.r_[0, np.cumsum(keep_f)]
    per_sample = kept[p.indptr[1:]] - kept[p.indptr[:-1]]
    indptr = np.zeros(int(keep_s.sum()) + 1, dtype=np.int64)
    np.cumsum(per_sample[keep_s], out=indptr[1:])
    for name in ("hashes", "rows", "vals", "name_start", "name_len"):
        setattr(p, name, getattr(p, name)[keep_f])
    p.n_unknown = int((p.rows < 0).sum())
    bad_lines = list(zip(p.bad_line.tolist(), p.bad_reason.tolist(), p.bad_col.tolist()))
    for s, (reason, a) in bad.items():
        line_start = data.rfind(b"\n", 0, a) + 1
        bad_lines.append((int(p.sample_line[s]), reason, a - line_start))
    bad_lines.sort()
    p.bad_line = np.array([b[0] for b in bad_lines], dtype=np.int64)
    p.bad_reason = np.array([b[1] for b in bad_lines], dtype=np.int8)
    p.bad_col = np.array([b[2] for b in bad_lines], dtype=np.int64)
    p.ys = p.ys[keep_s]
    p.keys = p.keys[keep_s]
    p.sample_line = p.sample_line[keep_s]
    p.indptr = indptr
    p.n_samples = len(p.ys)
    p.nnz = len(p.vals)
    return keep_f
