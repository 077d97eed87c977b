"""Values as text: the one canonical form of a raw value, and its escaping.

Every raw value becomes bytes before it becomes a feature, the same way
whether it was a log cell, a JSON token or a Python object handed to the
online featurizer:

- text (a TSV/CSV cell, a JSON string, a Python str): its UTF-8 bytes as
  written (lone surrogates as their 3-byte form); empty text is missing;
- an integer (JSON integer, Python int): its decimal digits (``-0`` is ``0``);
- any other number: the shortest decimal that reads back as the same double
  (``floatfmt.write_f64``: ``3.0`` -> ``3``, ``0.1`` -> ``0.1``);
- true / false: ``true`` / ``false``; null / None: missing;
- a list: each element as above (missing elements are skipped).

In a feature name, the bytes fm_train's grammar reserves (white space and
control bytes, ':' which splits name and value, and '%' itself) are written
as ``%XX`` (upper-case hex), so any value makes exactly one valid token.
"""

import numpy as np
from numba import njit

from .. import floatfmt

_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8).copy()


@njit(inline="always")
def needs_escape(b):
    return b <= 32 or b == 127 or b == 58 or b == 37


@njit(cache=True, nogil=True)
def escape_into(src, a, b, out, pos):
    """Write src[a:b] escaped at out[pos:] (3 bytes per escaped byte); returns the end."""
    for i in range(a, b):
        c = src[i]
        if c <= 32 or c == 127 or c == 58 or c == 37:
            out[pos] = 37
            out[pos + 1] = _HEX[c >> 4]
            out[pos + 2] = _HEX[c & 15]
            pos += 3
        else:
            out[pos] = c
            pos += 1
    return pos


def escape(value):
    """Python twin of escape_into for bytes (keys written by Python code, tests)."""
    out = bytearray()
    for c in value:
        if c <= 32 or c == 127 or c == 58 or c == 37:
            out += b"%%%02X" % c
        else:
            out.append(c)
    return bytes(out)


def scalar_text(v):
    """Canonical bytes of one Python scalar, or None when missing.

    Raises TypeError for values that have no text form (dicts, nested lists).
    """
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return b"true" if v else b"false"
    if isinstance(v, (int, np.integer)):
        return str(int(v)).encode("ascii")
    if isinstance(v, (float, np.floating)):
        return floatfmt.format_f64(float(v)).encode("ascii")
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass") or None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v) or None
    raise TypeError("a %s has no text form" % type(v).__name__)


def value_texts(v):
    """(present, [bytes, ...]) of one raw attribute value (a scalar or a list)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        out = []
        for x in v:
            if isinstance(x, (list, tuple, dict, np.ndarray)):
                raise TypeError("a list inside a list has no text form")
            t = scalar_text(x)
            if t is not None:
                out.append(t)
        return True, out
    t = scalar_text(v)
    if t is None:
        return False, []
    return True, [t]
