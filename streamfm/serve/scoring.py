"""/v1/score: the samples of one request as one block of input lines, scored at once.

A request's samples become one block of alphaFM lines (``samples_block``):
a string is taken as it is (a leading label allowed), an object
``{"name": value}`` is formatted as ``name:value ...``; the numba kernel
``label_lines`` then puts the label ``0`` before every line that has none,
so the block reads through the one grammar of ``parse.py`` as fm_predict
reads its input, and is scored by the model's kernel (``ServingModel.scores``)
in one call: no Python runs per sample once the block is built.

Raw attribute records (the sample builder's featurizer) plug in as one
function, ``featurizer(records) -> list of str lines``; see ``ScoreRequest``.
"""

import re
import threading

import numpy as np
from numba import njit

from .. import floatfmt, parse
from ..explain import phi_block
from ..fm import probabilities
from .errors import RequestError

_LF = 10
_SP = 32
_TAB = 9
_COLON = 58
_WS = re.compile(r"\s")


@njit(cache=True, nogil=True)
def label_lines(src, n, out):
    """Copy the lines of src[:n] to out, with ``0 `` before each line whose first
    token is not a label, and a final end of line; returns (bytes, lines).

    A first token is a label when it holds no ``:`` and reads as a number
    (``1``, ``-1``, ``0.5``, and ``nan``/``inf``, which the parser then
    rejects); ``out`` needs ``n + 2 * (lines + 1) + 1`` bytes.
    """
    pos = 0
    o = 0
    lines = 0
    while pos <= n:
        end = pos
        while end < n and src[end] != _LF:
            end += 1
        a = pos
        while a < end and (src[a] == _SP or src[a] == _TAB):
            a += 1
        b = a
        colon = False
        while b < end and src[b] != _SP and src[b] != _TAB:
            if src[b] == _COLON:
                colon = True
            b += 1
        label = False
        if b > a and not colon:
            _v, st = parse.parse_number(src, a, b)
            label = st != floatfmt.BAD
        if not label:
            out[o] = 48
            out[o + 1] = _SP
            o += 2
        for t in range(pos, end):
            out[o] = src[t]
            o += 1
        out[o] = _LF
        o += 1
        lines += 1
        pos = end + 1
    return o, lines


@njit(cache=True, nogil=True)
def top_phi(indptr, phi, n_samples, topn, out):
    """out[s, :] = positions (CSR) of sample s's topn largest |phi|, ties in input
    order (as a stable sort by -|phi|, NaN last); -1 past the sample's features.

    Each pick is the best feature after the previous pick in that order, so a
    sample of m features costs m * topn steps (not m * topn^2: one sample of
    a million features with explain 100 held the event loop for seconds)."""
    for s in range(n_samples):
        a = indptr[s]
        m = indptr[s + 1] - a
        for t in range(topn):
            out[s, t] = -1
        pv = np.inf   # |phi| and position of the previous pick
        pj = -1
        for t in range(min(topn, m)):
            best = -1
            bv = -1.0
            for j in range(a, a + m):
                v = abs(phi[j])
                if v != v:
                    v = -1.0  # NaN: after every number
                if v > pv or (v == pv and j <= pj):
                    continue  # at or before the previous pick
                if best < 0 or v > bv:
                    best = j
                    bv = v
            out[s, t] = best
            pv = bv
            pj = best


_local = threading.local()


def parse_buffers():
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = parse.ParseBuffers(0)
    return bufs


def dict_line(d, i):
    """One sample given as {name: value} as the text of an input line."""
    parts = []
    for name, value in d.items():
        t = type(value)
        if t is not float and t is not int:
            raise RequestError(400, "wrong_type", "sample %d: the value of %r must be a number, not %s"
                               % (i, name, json_type(value)), sample=i)
        parts.append("%s:%r" % (name, value))
    names = "".join(d)
    if _WS.search(names):
        bad = next(k for k in d if _WS.search(k))
        raise RequestError(400, "bad_sample", "sample %d: feature name %r holds white space" % (i, bad),
                           sample=i)
    return " ".join(parts)


def json_type(x):
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "an object", type(None): "null"}.get(type(x), type(x).__name__)


def samples_text(samples, what="samples"):
    """The samples (strings or {name: value} objects) as one text, a line each."""
    if type(samples) is not list:
        raise RequestError(400, "wrong_type", "%s must be an array, not %s" % (what, json_type(samples)))
    lines = samples
    try:
        text = "\n".join(samples)  # all strings: no Python per sample
    except TypeError:
        lines = []
        for i, s in enumerate(samples):
            if type(s) is str:
                lines.append(s)
            elif type(s) is dict:
                lines.append(dict_line(s, i))
            else:
                raise RequestError(400, "wrong_type", "sample %d must be a string or an object, not %s"
                                   % (i, json_type(s)), sample=i)
        text = "\n".join(lines)
    if samples and text.count("\n") != len(samples) - 1:
        i = next(i for i, s in enumerate(lines) if "\n" in s)
        raise RequestError(400, "bad_sample", "sample %d holds an end of line: one sample is one line" % i,
                           sample=i)
    return text


class Scored:
    """Scores of one request: ``probabilities`` (n,), and with explain the
    top features (name, phi) of each sample."""

    def __init__(self, probs, explained=None):
        self.probabilities = probs
        self.explained = explained


def score_text(model, text, n, explain=0):
    """Score ``n`` lines (``text``, no trailing end of line) with a ServingModel.

    Raises RequestError (400, "bad_sample") naming the first bad line.
    """
    try:
        # surrogateescape: a featurizer's line carries bytes that are not UTF-8 (a profile
        # table's) that way (records.py); a client's "\udcXX" escapes become such bytes
        # too, which the line parser then checks like any input's
        src = np.frombuffer(text.encode("utf-8", "surrogateescape"), dtype=np.uint8)
    except UnicodeEncodeError:
        raise RequestError(400, "bad_sample", "samples must be valid Unicode text") from None
    block = np.empty(src.shape[0] + 2 * n + 3, dtype=np.uint8)
    nb, lines = label_lines(src, src.shape[0], block)
    block = block[:nb]
    if n == 0:
        return Scored(np.zeros(0), [] if explain else None)  # explain asked: an empty list, as for n samples
    bufs = parse_buffers()
    p = parse.parse(block, lines, bufs, model.table)
    if len(p.bad_line):
        li = int(p.bad_line[0])
        raise RequestError(400, "bad_sample", "sample %d: %s" % (li, parse.REASONS[int(p.bad_reason[0])]),
                           sample=li)
    if p.n_samples != n:  # cannot happen: every line is a sample or a bad line
        raise RequestError(400, "bad_sample", "%d samples read from %d given" % (p.n_samples, n))
    raw = np.empty(n)
    model.scores(p, raw)
    probs = np.empty(n)
    probabilities(raw, n, probs)
    explained = None
    if explain:
        phi = np.empty(max(p.nnz, 1))
        phi_block(p.indptr, p.rows, p.vals, n, model.weights, model.k, phi)
        top = np.empty((n, explain), np.int64)
        top_phi(p.indptr, phi, n, explain, top)
        buf = p.buf
        # names as FM.explain gives them (a featurizer's bytes that are not UTF-8 escaped)
        explained = [[[bytes(buf[p.name_start[j]:p.name_start[j] + p.name_len[j]]).decode("utf-8",
                                                                                          "backslashreplace"),
                       float(phi[j])] for j in row if j >= 0] for row in top.tolist()]
    return Scored(probs, explained)
