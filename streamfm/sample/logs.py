"""Impression logs and profile tables (TSV, CSV, JSON lines) -> columnar blocks.

The reader thread of ``streamfm.reader`` cuts the file into blocks of whole
lines; a numba tokenizer turns a block into columns: for each record and
each column the caller asked for, its elements (byte spans of canonical
text, see ``text.py``) and whether the record has it. Nothing per record
happens in Python.

Formats:
- TSV: a header line of column names, then tab-separated cells, as written
  (no quoting). An empty cell is missing.
- CSV: a header line, comma-separated cells; a cell may be quoted (a
  comma inside quotes is text, two quotes are one), but a quoted cell may
  not hold a newline.
- JSON lines: one flat object a line; values are strings, numbers,
  true/false, null or lists of those (a nested object or list is an error
  only in a column that is used). A repeated key: the last one counts.

Bad records are counted and reported with their line numbers under the
trainer's policy (``--on-error skip|stop``, ``--max-bad-fraction``,
``--bad-lines FILE``), in ``streamfm.badlines``'s message format.
"""

import csv
import io
import os

import numpy as np
from numba import njit

from .. import floatfmt
from ..reader import BlockReader
from ..table import init_hash_bytes as hash_bytes  # value dictionaries: the unkeyed hash
from ..table import lookup_one, place

# bad-record reasons; the kernels return the code, Python the words
R_JSON = 1
R_NOT_OBJECT = 2
R_NESTED = 3
R_FIELDS = 4
R_QUOTE = 5
R_AFTER_QUOTE = 6
R_ESCAPE = 7
R_MISSING = 10        # a required column (request, clicked, user, item) is missing
R_CLICKED = 11        # clicked is not a number or true/false
R_POSITION = 12       # position is not a number
R_LIST = 13           # a list where one value is expected
R_NUMBER = 14         # a value that must be a number is not one
R_NONFINITE = 15      # ... or is NaN / infinite

REASONS = {
    R_JSON: "invalid JSON",
    R_NOT_OBJECT: "line is not a JSON object",
    R_NESTED: "%s: nested object or list",
    R_FIELDS: "number of fields differs from the header",
    R_QUOTE: "unterminated quoted field (a newline inside quotes is not supported)",
    R_AFTER_QUOTE: "text after a closing quote",
    R_ESCAPE: "invalid escape in a JSON string",
    R_MISSING: "%s is missing",
    R_CLICKED: "%s is not a number or true/false",
    R_POSITION: "%s is not a number",
    R_LIST: "%s: a list where one value is expected",
    R_NUMBER: "%s is not a number",
    R_NONFINITE: "%s is NaN or infinite",
}

# tokenizer status: which buffer was too small
OK = 0
NEED_ELEMENTS = 1
NEED_SCRATCH = 2

_LF = 10
_CR = 13
_SP = 32
_TAB = 9
_QUOTE = 34
_BSL = 92

# The tokenizers test bytes in place (end of line: '\n', or '\r' before '\n'
# or the end; blanks: ' ', '\t', a '\r' that does not end the line) rather
# than call helpers that take ``text``: numba counts a reference on every
# array passed to a helper, even an inlined one, two atomic operations a call
# that it cannot drop inside these loops; per byte and per key they were
# most of the tokenizers' time.


@njit(cache=True, nogil=True)
def tokenize_delimited(text, n, delim, quoted, n_file_cols, col_map, n_cols, cell_first, cell_count,
                       cell_col, el_start, el_len, rec_line, rec_start, bad_line, bad_reason, bad_col,
                       scratch0):
    """Cells of the lines in text[:n] (TSV: quoted=False; CSV: quoted=True).

    col_map[i] = the wanted column of file column i, or -1. Per record r
    and wanted column c: cell_count[r*n_cols+c] elements (0 or 1) from
    cell_first; decoded quoted cells go to text[scratch0:].
    Returns (status, records, bad, lines).
    """
    nr = 0
    nb = 0
    ne = 0
    sp = scratch0
    cap_e = el_start.shape[0]
    cap_t = text.shape[0]
    line = 0
    p = 0
    while p < n:
        ls = p
        # blank line (or only '\r')
        b = text[p]
        if b == _LF or (b == _CR and (p + 1 >= n or text[p + 1] == _LF)):
            while p < n and text[p] != _LF:
                p += 1
            p += 1
            line += 1
            continue
        base = nr * n_cols
        for c in range(n_cols):
            cell_count[base + c] = 0
            cell_col[base + c] = 0
        ci = 0
        reason = 0
        col = 0
        while True:
            cs = p
            if quoted and p < n and text[p] == _QUOTE:
                # quoted cell: "" is one quote
                q = p + 1
                dbl = False
                closed = False
                while q < n and text[q] != _LF:
                    if text[q] == _QUOTE:
                        if q + 1 < n and text[q + 1] == _QUOTE:
                            dbl = True
                            q += 2
                            continue
                        closed = True
                        break
                    q += 1
                if not closed:
                    reason = 5
                    col = cs - ls
                    break
                vs = p + 1
                ve = q
                p = q + 1
                if p < n and text[p] != delim and text[p] != _LF \
                        and not (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                    reason = 6
                    col = p - ls
                    break
                if dbl:
                    if sp + (ve - vs) > cap_t:
                        return NEED_SCRATCH, nr, nb, line
                    ds = sp
                    t = vs
                    while t < ve:
                        text[sp] = text[t]
                        sp += 1
                        t += 2 if text[t] == _QUOTE else 1
                    vs = ds
                    ve = sp
            else:
                while p < n:
                    b = text[p]
                    if b == delim or b == _LF or (b == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                        break
                    p += 1
                vs = cs
                ve = p
            if ci < n_file_cols:
                c = col_map[ci]
                if c >= 0 and ve > vs:
                    if ne >= cap_e:
                        return NEED_ELEMENTS, nr, nb, line
                    el_start[ne] = vs
                    el_len[ne] = ve - vs
                    cell_first[base + c] = ne
                    cell_count[base + c] = 1
                    cell_col[base + c] = cs - ls
                    ne += 1
            ci += 1
            if p < n and text[p] == delim:
                p += 1
                continue
            break
        if reason == 0 and ci != n_file_cols:
            reason = 4
            col = p - ls
        if reason == 0:
            rec_line[nr] = line
            rec_start[nr] = ls
            nr += 1
        else:
            bad_line[nb] = line
            bad_reason[nb] = reason
            bad_col[nb] = col
            nb += 1
        while p < n and text[p] != _LF:
            p += 1
        p += 1
        line += 1
    return OK, nr, nb, line


@njit(cache=True, nogil=True)
def _hexval(b):
    if 48 <= b <= 57:
        return b - 48
    if 65 <= b <= 70:
        return b - 55
    if 97 <= b <= 102:
        return b - 87
    return -1


@njit(cache=True, nogil=True)
def _string_end(text, p, n):
    """p after the opening quote; returns (end of content, has escapes), end=-1 if unterminated."""
    esc = False
    while p < n and text[p] != _LF:
        b = text[p]
        if b == _QUOTE:
            return p, esc
        if b == _BSL:
            esc = True
            p += 2
            continue
        p += 1
    return -1, esc


@njit(cache=True, nogil=True)
def _put_utf8(text, sp, cp):
    if cp < 0x80:
        text[sp] = cp
        return sp + 1
    if cp < 0x800:
        text[sp] = 0xC0 | (cp >> 6)
        text[sp + 1] = 0x80 | (cp & 0x3F)
        return sp + 2
    if cp < 0x10000:
        text[sp] = 0xE0 | (cp >> 12)
        text[sp + 1] = 0x80 | ((cp >> 6) & 0x3F)
        text[sp + 2] = 0x80 | (cp & 0x3F)
        return sp + 3
    text[sp] = 0xF0 | (cp >> 18)
    text[sp + 1] = 0x80 | ((cp >> 12) & 0x3F)
    text[sp + 2] = 0x80 | ((cp >> 6) & 0x3F)
    text[sp + 3] = 0x80 | (cp & 0x3F)
    return sp + 4


@njit(cache=True, nogil=True)
def _unescape(text, a, b, sp):
    """Decode the JSON string content text[a:b] to text[sp:]; returns the end, or -1."""
    p = a
    while p < b:
        c = text[p]
        if c != _BSL:
            text[sp] = c
            sp += 1
            p += 1
            continue
        if p + 1 >= b:
            return -1
        e = text[p + 1]
        p += 2
        if e == 34 or e == 92 or e == 47:
            text[sp] = e
        elif e == 98:
            text[sp] = 8
        elif e == 102:
            text[sp] = 12
        elif e == 110:
            text[sp] = 10
        elif e == 114:
            text[sp] = 13
        elif e == 116:
            text[sp] = 9
        elif e == 117:
            if p + 4 > b:
                return -1
            cp = 0
            for t in range(4):
                h = _hexval(text[p + t])
                if h < 0:
                    return -1
                cp = cp * 16 + h
            p += 4
            if 0xD800 <= cp < 0xDC00 and p + 6 <= b and text[p] == _BSL and text[p + 1] == 117:
                lo = 0
                okp = True
                for t in range(4):
                    h = _hexval(text[p + 2 + t])
                    if h < 0:
                        okp = False
                        break
                    lo = lo * 16 + h
                if okp and 0xDC00 <= lo < 0xE000:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    p += 6
            sp = _put_utf8(text, sp, cp)
            continue
        else:
            return -1
        sp += 1
    return sp


@njit(cache=True, nogil=True)
def _skip_value(text, p, n):
    """Skip any JSON value (nested too) starting at p; returns the end or -1."""
    depth = 0
    while p < n and text[p] != _LF:
        b = text[p]
        if b == _QUOTE:
            e, _ = _string_end(text, p + 1, n)
            if e < 0:
                return -1
            p = e + 1
            if depth == 0:
                return p
            continue
        if b == 91 or b == 123:
            depth += 1
        elif b == 93 or b == 125:
            if depth == 0:
                return p
            depth -= 1
            if depth == 0:
                return p + 1
        elif depth == 0 and (b == 44):
            return p
        p += 1
    return p if depth == 0 else -1


@njit(cache=True, nogil=True)
def _scalar(text, p, n, sp, cap_t):
    """One JSON scalar at p: (status, end, el_start, el_len, sp).

    status: 0 ok (el_len 0 = missing: null or ""), -1 invalid, -2 need
    scratch, 1 nested (a '[' or '{').
    """
    b = text[p]
    if b == _QUOTE:
        e, esc = _string_end(text, p + 1, n)
        if e < 0:
            return -1, p, 0, 0, sp
        if not esc:
            return 0, e + 1, p + 1, e - p - 1, sp
        if sp + (e - p) > cap_t:
            return -2, p, 0, 0, sp
        s2 = _unescape(text, p + 1, e, sp)
        if s2 < 0:
            return -3, p, 0, 0, sp
        return 0, e + 1, sp, s2 - sp, s2
    if b == 91 or b == 123:
        return 1, p, 0, 0, sp
    if b == 116 and p + 4 <= n and text[p + 1] == 114 and text[p + 2] == 117 and text[p + 3] == 101:
        return 0, p + 4, p, 4, sp
    if b == 102 and p + 5 <= n and text[p + 1] == 97 and text[p + 2] == 108 and text[p + 3] == 115 \
            and text[p + 4] == 101:
        return 0, p + 5, p, 5, sp
    if b == 110 and p + 4 <= n and text[p + 1] == 117 and text[p + 2] == 108 and text[p + 3] == 108:
        return 0, p + 4, p, 0, sp
    # a number
    q = p
    integer = True
    while q < n:
        c = text[q]
        if 48 <= c <= 57 or c == 45:
            q += 1
        elif c == 46 or c == 101 or c == 69 or c == 43:
            integer = False
            q += 1
        else:
            break
    if q == p:
        return -1, p, 0, 0, sp
    x, st = floatfmt.parse_f64(text, p, q)
    if st == floatfmt.BAD:
        return -1, p, 0, 0, sp
    if integer:
        # '-0' and '-00..' read as 0, as Python's int
        zero = True
        for t in range(p, q):
            if text[t] != 48 and text[t] != 45:
                zero = False
                break
        if zero and text[p] == 45:
            return 0, q, q - 1, 1, sp
        return 0, q, p, q - p, sp
    if sp + 32 > cap_t:
        return -2, p, 0, 0, sp
    if st == floatfmt.SLOW:
        return 4, q, p, q - p, sp  # the caller settles it in Python
    s2 = floatfmt.write_f64(x, text, sp)
    return 0, q, sp, s2 - sp, s2


@njit(cache=True, nogil=True)
def tokenize_jsonl(text, n, col_slots, col_hash, n_cols, cell_first, cell_count, cell_present, cell_col,
                   el_start, el_len, rec_line, rec_start, bad_line, bad_reason, bad_col, bad_arg, scratch0,
                   slow):
    """Flat JSON objects, one a line, into columns (see tokenize_delimited).

    col_slots/col_hash: an open addressing index of the wanted columns'
    name hashes. cell_present is 1 for a key with a non-null value (an
    empty list is present with 0 elements). slow[0] counts the numbers
    that need Python's float(), slow[1:] holds their elements (their raw
    text is kept; ``_settle`` rewrites them). slow has el_start's size + 1.
    Returns (status, records, bad, lines).
    """
    nr = 0
    nb = 0
    ne = 0
    sp = scratch0
    cap_e = el_start.shape[0]
    cap_t = text.shape[0]
    line = 0
    p = 0
    while p < n:
        ls = p
        while p < n and (text[p] == _SP or text[p] == _TAB
                         or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
            p += 1
        if p >= n or text[p] == _LF \
                or (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
            while p < n and text[p] != _LF:
                p += 1
            p += 1
            line += 1
            continue
        base = nr * n_cols
        for c in range(n_cols):
            cell_count[base + c] = 0
            cell_present[base + c] = 0
            cell_col[base + c] = 0
        reason = 0
        col = p - ls
        arg = -1
        if text[p] != 123:
            reason = 2
        else:
            p += 1
            while p < n and (text[p] == _SP or text[p] == _TAB
                             or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                p += 1
            first = True
            while True:
                if p >= n or text[p] == _LF \
                        or (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                    reason = 1
                    col = p - ls
                    break
                if text[p] == 125 and first:
                    p += 1
                    break
                first = False
                if text[p] != _QUOTE:
                    reason = 1
                    col = p - ls
                    break
                ke, kesc = _string_end(text, p + 1, n)
                if ke < 0:
                    reason = 1
                    col = p - ls
                    break
                if kesc:
                    if sp + (ke - p) > cap_t:
                        return NEED_SCRATCH, nr, nb, line
                    k2 = _unescape(text, p + 1, ke, sp)
                    if k2 < 0:
                        reason = 7
                        col = p - ls
                        break
                    h = hash_bytes(text, sp, k2)
                else:
                    h = hash_bytes(text, p + 1, ke)
                c = lookup_one(col_slots, col_hash, h)
                p = ke + 1
                while p < n and (text[p] == _SP or text[p] == _TAB
                                 or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                    p += 1
                if p >= n or text[p] != 58:
                    reason = 1
                    col = p - ls
                    break
                p += 1
                while p < n and (text[p] == _SP or text[p] == _TAB
                                 or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                    p += 1
                if p >= n or text[p] == _LF \
                        or (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                    reason = 1
                    col = p - ls
                    break
                vcol = p - ls
                if c < 0:
                    q = _skip_value(text, p, n)
                    if q < 0:
                        reason = 1
                        col = p - ls
                        break
                    p = q
                elif text[p] == 91:
                    # a list of scalars
                    cell_present[base + c] = 1
                    cell_col[base + c] = vcol
                    cell_first[base + c] = ne
                    cnt = 0
                    p += 1
                    while p < n and (text[p] == _SP or text[p] == _TAB
                                     or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                        p += 1
                    if p < n and text[p] == 93:
                        p += 1
                    else:
                        while True:
                            if p >= n or text[p] == _LF \
                                    or (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                                reason = 1
                                col = p - ls
                                break
                            st, q, es, el, sp2 = _scalar(text, p, n, sp, cap_t)
                            if st == -2:
                                return NEED_SCRATCH, nr, nb, line
                            if st == 1:
                                reason = 3
                                arg = c
                                col = p - ls
                                break
                            if st < 0:
                                reason = 7 if st == -3 else 1
                                col = p - ls
                                break
                            sp = sp2
                            if el > 0:
                                if ne >= cap_e:
                                    return NEED_ELEMENTS, nr, nb, line
                                if st == 4:
                                    slow[slow[0] + 1] = ne
                                    slow[0] += 1
                                el_start[ne] = es
                                el_len[ne] = el
                                ne += 1
                                cnt += 1
                            p = q
                            while p < n and (text[p] == _SP or text[p] == _TAB
                                             or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                                p += 1
                            if p < n and text[p] == 44:
                                p += 1
                                while p < n and (text[p] == _SP or text[p] == _TAB
                                                 or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                                    p += 1
                                continue
                            if p < n and text[p] == 93:
                                p += 1
                                break
                            reason = 1
                            col = p - ls
                            break
                    cell_count[base + c] = cnt
                    if reason:
                        break
                else:
                    st, q, es, el, sp2 = _scalar(text, p, n, sp, cap_t)
                    if st == -2:
                        return NEED_SCRATCH, nr, nb, line
                    if st == 1:
                        reason = 3
                        arg = c
                        col = p - ls
                        break
                    if st < 0:
                        reason = 7 if st == -3 else 1
                        col = p - ls
                        break
                    sp = sp2
                    p = q
                    if el > 0:
                        if ne >= cap_e:
                            return NEED_ELEMENTS, nr, nb, line
                        if st == 4:
                            slow[slow[0] + 1] = ne
                            slow[0] += 1
                        el_start[ne] = es
                        el_len[ne] = el
                        cell_first[base + c] = ne
                        cell_count[base + c] = 1
                        cell_present[base + c] = 1
                        cell_col[base + c] = vcol
                        ne += 1
                    else:
                        cell_count[base + c] = 0
                        cell_present[base + c] = 0
                while p < n and (text[p] == _SP or text[p] == _TAB
                                 or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                    p += 1
                if p < n and text[p] == 44:
                    p += 1
                    while p < n and (text[p] == _SP or text[p] == _TAB
                                     or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                        p += 1
                    continue
                if p < n and text[p] == 125:
                    p += 1
                    break
                reason = 1
                col = p - ls
                break
            if reason == 0:
                while p < n and (text[p] == _SP or text[p] == _TAB
                                 or (text[p] == _CR and p + 1 < n and text[p + 1] != _LF)):
                    p += 1
                if p < n and text[p] != _LF \
                        and not (text[p] == _CR and (p + 1 >= n or text[p + 1] == _LF)):
                    reason = 1
                    col = p - ls
        if reason == 0:
            rec_line[nr] = line
            rec_start[nr] = ls
            nr += 1
        else:
            bad_line[nb] = line
            bad_reason[nb] = reason
            bad_col[nb] = col
            bad_arg[nb] = arg
            nb += 1
        while p < n and text[p] != _LF:
            p += 1
        p += 1
        line += 1
    return OK, nr, nb, line


class Columns:
    """One block's records as columns (see the module doc).

    For record r and wanted column c (k = r * n_cols + c): ``count[k]``
    elements starting at ``first[k]``, each ``text[start[e]:start[e] + length[e]]``;
    ``present[k]`` says the record has the column (a list may be empty);
    ``col[k]`` is the cell's byte column in its line. ``line[r]`` is the
    record's line index in the block, ``line_start[r]`` its first byte.
    The arrays are the tokenizer's buffers: valid until its next block.
    """

    __slots__ = ("text", "n", "n_cols", "names", "first", "count", "present", "col", "start", "length",
                 "line", "line_start", "first_line", "n_lines", "bad", "data")

    def element_bytes(self, r, c):
        k = r * self.n_cols + c
        f = int(self.first[k])
        return [bytes(self.text[self.start[e]:self.start[e] + self.length[e]])
                for e in range(f, f + int(self.count[k]))]


class Tokenizer:
    """Tokenizes blocks of one format for a fixed list of wanted columns."""

    def __init__(self, fmt, columns, header=None, source="input"):
        """``columns``: wanted column names; ``header``: the file's column names (TSV/CSV)."""
        self.fmt = fmt
        self.columns = list(columns)
        self.n_cols = len(self.columns)
        self.source = source
        self.header = header = list(header or [])
        self.el_cap = 1 << 14
        self.scratch_cap = 1 << 16
        self.rec_cap = 0
        self.text = np.empty(0, np.uint8)
        self._alloc_elements()
        if fmt in ("tsv", "csv"):
            pos = {}
            for i, name in enumerate(header):
                pos.setdefault(name, i)
            self.col_map = np.full(len(header), -1, np.int64)
            for c, name in enumerate(self.columns):
                if name in pos:
                    self.col_map[pos[name]] = c
        else:
            size = 16
            while size < 4 * max(self.n_cols, 1):
                size *= 2
            self.col_slots = np.full(size, -1, np.int64)
            self.col_hash = np.zeros(max(self.n_cols, 1), np.uint64)
            for c, name in enumerate(self.columns):
                b = np.frombuffer(name.encode("utf-8", "surrogatepass"), np.uint8)
                self.col_hash[c] = hash_bytes(b, 0, b.shape[0])
                place(self.col_slots, self.col_hash, c)

    def _alloc_elements(self):
        self.start = np.empty(self.el_cap, np.int64)
        self.length = np.empty(self.el_cap, np.int64)
        self.slow = np.zeros(self.el_cap + 1, np.int64)

    def _alloc_records(self, rc):
        self.rec_cap = rc
        m = rc * max(self.n_cols, 1)
        self.first = np.empty(m, np.int64)
        self.count = np.empty(m, np.int64)
        self.present = np.empty(m, np.uint8)
        self.col = np.empty(m, np.int64)
        self.line = np.empty(rc, np.int64)
        self.line_start = np.empty(rc, np.int64)
        self.bad_line = np.empty(rc, np.int64)
        self.bad_reason = np.empty(rc, np.int64)
        self.bad_col = np.empty(rc, np.int64)
        self.bad_arg = np.empty(rc, np.int64)

    def missing_columns(self):
        """Wanted columns the header does not have (TSV/CSV only)."""
        if self.fmt == "jsonl":
            return []
        have = set(self.header)
        return [c for c in self.columns if c not in have]

    def tokenize(self, data, first_line):
        """Columns of one block (data: uint8 array of whole lines)."""
        n = data.shape[0]
        lines = int(np.count_nonzero(data == 10)) + 2
        if self.rec_cap < lines:
            self._alloc_records(max(lines, 2 * self.rec_cap))
        while True:
            if self.text.shape[0] < n + self.scratch_cap:
                self.text = np.empty(n + self.scratch_cap, np.uint8)
            text = self.text
            text[:n] = data
            self.slow[0] = 0
            self.bad_arg[:] = -1
            if self.fmt == "jsonl":
                st, nr, nb, nl = tokenize_jsonl(
                    text, n, self.col_slots, self.col_hash, self.n_cols, self.first, self.count, self.present,
                    self.col, self.start, self.length, self.line, self.line_start, self.bad_line,
                    self.bad_reason, self.bad_col, self.bad_arg, n, self.slow)
            else:
                st, nr, nb, nl = tokenize_delimited(
                    text, n, 9 if self.fmt == "tsv" else 44, self.fmt == "csv", self.col_map.shape[0],
                    self.col_map, self.n_cols, self.first, self.count, self.col, self.start, self.length,
                    self.line, self.line_start, self.bad_line, self.bad_reason, self.bad_col, n)
            if st == NEED_ELEMENTS:
                self.el_cap *= 2
                self._alloc_elements()
                continue
            if st == NEED_SCRATCH:
                self.scratch_cap = max(2 * self.scratch_cap, n)
                continue
            break
        c = Columns()
        c.data = data
        c.text = text
        c.n = nr
        c.n_cols = self.n_cols
        c.names = self.columns
        k = nr * self.n_cols
        c.first, c.count, c.col = self.first[:k], self.count[:k], self.col[:k]
        if self.fmt == "jsonl":
            c.present = self.present[:k]
        else:
            c.present = self.present[:k]
            np.greater(c.count, 0, out=c.present, casting="unsafe")
        c.start, c.length = self.start, self.length
        c.line, c.line_start = self.line[:nr], self.line_start[:nr]
        c.first_line = first_line
        c.n_lines = nl
        c.bad = [(int(a), int(b), int(cc), int(d)) for a, b, cc, d in
                 zip(self.bad_line[:nb], self.bad_reason[:nb], self.bad_col[:nb], self.bad_arg[:nb])]
        if self.slow[0]:
            _settle(c, self.slow[1:1 + int(self.slow[0])])
        return c


def _settle(c, elements):
    """Numbers of more than 19 digits the fast parser could not round: Python's float decides."""
    extra = bytearray()
    base = c.text.shape[0]
    fixes = []
    for e in elements.tolist():
        tok = bytes(c.text[c.start[e]:c.start[e] + c.length[e]])
        s = floatfmt.format_f64(float(tok)).encode("ascii")
        fixes.append((e, base + len(extra), len(s)))
        extra += s
    c.text = np.concatenate([c.text, np.frombuffer(bytes(extra), np.uint8)])
    for e, s, ln in fixes:
        c.start[e] = s
        c.length[e] = ln


def read_header(first_line, fmt):
    """Column names of a TSV/CSV header line (bytes, without the newline)."""
    text = first_line.decode("utf-8", "surrogateescape").rstrip("\r\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    if fmt == "tsv":
        return text.split("\t")
    return next(csv.reader(io.StringIO(text)))


class BlockSource:
    """Blocks of whole lines from a binary stream, the header taken off (TSV/CSV)."""

    def __init__(self, stream, fmt, block_size=1 << 20):
        self.fmt = fmt
        self.reader = BlockReader(stream, block_size=block_size)
        self.header = None
        self._pending = None
        self.bytes_read = 0
        if fmt in ("tsv", "csv"):
            self._read_header()

    def _read_header(self):
        while True:
            blk = self.reader.get()
            if blk is None:
                self.header = None
                return
            data = blk.data
            if not len(data):
                continue
            nl = np.flatnonzero(data == 10)
            cut = int(nl[0]) + 1 if len(nl) else len(data)
            self.header = read_header(bytes(data[:cut]), self.fmt)
            self._pending = (data[cut:], blk.first_line + 1)
            return

    def __iter__(self):
        """(data, first_line) of each block, as read."""
        try:
            while True:
                if self._pending is not None:
                    data, first = self._pending
                    self._pending = None
                else:
                    blk = self.reader.get()
                    if blk is None:
                        break
                    data, first = blk.data, blk.first_line
                if not len(data):
                    continue
                yield data, first
            if self.reader.error is not None:
                raise self.reader.error
        finally:
            self.reader.stop()
            self.bytes_read = self.reader.bytes_read

    def stop(self):
        self.reader.stop()


def line_bytes(data, line_start):
    """The line of data starting at byte line_start, without its newline."""
    e = int(line_start)
    n = data.shape[0]
    end = e
    while end < n and data[end] != 10:
        end += 1
    return bytes(data[e:end])


def line_starts(data, line_indices):
    """Byte offsets of the given line indices (0-based) in data."""
    nl = np.flatnonzero(data == 10)
    starts = np.r_[0, nl + 1]
    return [int(starts[i]) if i < len(starts) else len(data) for i in line_indices]


def reason_text(code, what=None):
    msg = REASONS[code]
    return msg % what if "%s" in msg else msg


def report_tokenizer_bad(bad_log, cols, upto_line=None):
    """Report a block's tokenizer-level bad lines (before line index upto_line)."""
    if not cols.bad:
        return 0
    rows = [b for b in cols.bad if upto_line is None or b[0] < upto_line]
    starts = line_starts(cols.data, [b[0] for b in rows])
    for (li, reason, col, arg), s in zip(rows, starts):
        what = repr(cols.names[arg]) if arg >= 0 else None
        bad_log.add_record(cols.first_line + li, reason_text(reason, what or "a field"), col, line_bytes(cols.data, s))
    return len(rows)


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


# ---------------------------------------------------------------------------
# impression columns: request, clicked, position, user and item keys


@njit(inline="always")
def _one(count, k):
    """0 ok, R_MISSING, R_LIST for a cell that must hold one value."""
    c = count[k]
    if c == 1:
        return 0
    return 10 if c == 0 else 13


@njit(cache=True, nogil=True)
def impressions(n, n_cols, first, count, col, start, length, text, c_req, c_click, c_user, c_item, c_pos,
                click_min, use_click_min, req_hash, pos, label, uk_s, uk_l, ik_s, ik_l, uk_hash, ik_hash,
                bad_reason, bad_what, bad_col):
    """The fixed columns of each impression record; a record missing one is marked bad.

    clicked: true/false, or a number (> 0 is a click; >= click_min when
    use_click_min). position: a number (without a position column, the
    record's index). bad_what: the column the reason is about.
    """
    for r in range(n):
        bad_reason[r] = 0
        base = r * n_cols
        why = 0
        what = 0
        for c in (c_req, c_click, c_user, c_item):
            w = _one(count, base + c)
            if w:
                why = w
                what = c
                break
        if why == 0 and c_pos >= 0:
            w = _one(count, base + c_pos)
            if w:
                why = w
                what = c_pos
        if why:
            bad_reason[r] = why
            bad_what[r] = what
            bad_col[r] = col[base + what]
            continue
        e = first[base + c_req]
        req_hash[r] = hash_bytes(text, start[e], start[e] + length[e])
        e = first[base + c_user]
        uk_s[r] = start[e]
        uk_l[r] = length[e]
        uk_hash[r] = hash_bytes(text, start[e], start[e] + length[e])
        e = first[base + c_item]
        ik_s[r] = start[e]
        ik_l[r] = length[e]
        ik_hash[r] = hash_bytes(text, start[e], start[e] + length[e])
        # clicked
        e = first[base + c_click]
        a = start[e]
        b = a + length[e]
        while a < b and (text[a] == 32 or text[a] == 9):
            a += 1
        while b > a and (text[b - 1] == 32 or text[b - 1] == 9 or text[b - 1] == 13):
            b -= 1
        lab = -1
        if b - a == 4 and (text[a] | 32) == 116 and (text[a + 1] | 32) == 114 and (text[a + 2] | 32) == 117 \
                and (text[a + 3] | 32) == 101:
            lab = 1
        elif b - a == 5 and (text[a] | 32) == 102 and (text[a + 1] | 32) == 97 and (text[a + 2] | 32) == 108 \
                and (text[a + 3] | 32) == 115 and (text[a + 4] | 32) == 101:
            lab = 0
        else:
            x, st = floatfmt.parse_f64(text, a, b)
            if st == floatfmt.OK or st == floatfmt.SLOW:
                if use_click_min:
                    lab = 1 if x >= click_min else 0
                else:
                    lab = 1 if x > 0 else 0
        if lab < 0:
            bad_reason[r] = 11
            bad_what[r] = c_click
            bad_col[r] = col[base + c_click]
            continue
        label[r] = lab
        if c_pos >= 0:
            e = first[base + c_pos]
            a = start[e]
            b = a + length[e]
            while a < b and (text[a] == 32 or text[a] == 9):
                a += 1
            while b > a and (text[b - 1] == 32 or text[b - 1] == 9 or text[b - 1] == 13):
                b -= 1
            x, st = floatfmt.parse_f64(text, a, b)
            if st != floatfmt.OK and st != floatfmt.SLOW:
                bad_reason[r] = 12
                bad_what[r] = c_pos
                bad_col[r] = col[base + c_pos]
                continue
            pos[r] = x
        else:
            pos[r] = r
