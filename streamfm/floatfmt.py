"""Exact and fast float <-> text conversion for text model files.

Text models (alphaFM's layout) hold tens of millions of numbers. alphaFM writes
6 significant digits and so loses optimizer state on every save/load cycle;
streamfm writes every number so that it reads back bit for bit, and does it in
numba-compiled loops because Python's ``repr``/``float`` cost ~1 us a number.

Writing (``write_f64``, ``write_f32``) uses Schubfach (R. Giulietti, "The
Schubfach way to render doubles", 2020; structured after A. Bolz's
Drachennest port). The output is the shortest decimal that rounds back to the
same value and, among those, the closest to it, so ``write_f64`` prints the
same digits as Python's ``repr`` (checked on 60 million random doubles).
Layout also follows ``repr``: positional for 1e-4 <= |x| < 1e16, otherwise
``1.5e+20`` / ``2.5e-310``; the one difference is that integral values drop
the ``.0`` (``1234567``, not ``1234567.0``). Zero is ``0``/``-0``; inf and nan
are written as ``inf``, ``-inf``, ``nan``. At most 24 bytes a number.

``write_f32`` prints the digits numpy's ``str(np.float32(x))`` prints, with one
exception per sign: readers go through a double (``np.float32(float(s))``),
and for the float32 just below 7.0385313e-26 the shortest decimal
``7.038531e-26`` becomes, as a double, exactly the midpoint to its neighbour
and then rounds away. Results that close to the end of the rounding interval
are re-checked and, if spoiled, replaced by the digits of the exact double.
Round trip through the double was checked for every positive finite float32.

Reading (``parse_f64``) uses the Clinger fast path and then the Eisel-Lemire
algorithm in the form of fast_float's ``compute_float`` (Lemire, "Number
parsing at a gigabyte per second", 2021), which also rounds subnormals
correctly. Strings of more than 19 significant digits are truncated to 19
and accepted only if the truncated mantissa and the mantissa + 1 round to the
same double; otherwise status ``SLOW`` asks the caller to use ``float()``
(about 1 in 1000 random 20+ digit strings; never for 19 digits or fewer).
``OK`` is never returned with a wrongly rounded value.

The 64x64 -> 128-bit products are emulated with 32-bit halves, since numba
has no 128-bit integer type. The power-of-ten tables are computed at import
with exact Python integers (no hand-copied constants to get wrong).

Measured on the development machine (2 vCPU, numba 0.68, one thread), 10
million random doubles (half FM weights 1e-3..1e2, half accumulators
1e-2..1e6, random signs; 18.7 bytes a number), space separated, into and from
buffers already paged in (first touch of a fresh 300 MB buffer costs more):
    write_f64: 0.57 s   (57 ns a number)
    parse_f64: 0.39 s   (39 ns a number, finding the token ends included)
    write_f32: 0.49 s   (the same values as float32, 9.9 bytes a number)
"""

import numpy as np
from numba import njit

try:  # LLVM ctlz; an internal but long-standing numba intrinsic
    from numba.cpython.unsafe.numbers import leading_zeros as _ctlz
except ImportError:  # pragma: no cover - fallback for a numba that moved it
    _ctlz = None

__all__ = [
    "OK", "BAD", "NONFINITE", "SLOW",
    "write_f64", "write_f32", "parse_f64",
    "format_f64", "format_f32", "parse_bytes",
]

# parse_f64 status codes
OK = 0
BAD = 1
NONFINITE = 2
SLOW = 3

# numba types mixed uint64/int64 arithmetic as float64, so every constant that
# meets a uint64 must itself be a uint64.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_U4 = np.uint64(4)
_U10 = np.uint64(10)
_U32 = np.uint64(32)
_U40 = np.uint64(40)
_U52 = np.uint64(52)
_U63 = np.uint64(63)
_U100 = np.uint64(100)
_U10000 = np.uint64(10000)
_U1E8 = np.uint64(10 ** 8)
_M32 = np.uint64(0xFFFFFFFF)
_ALL1 = np.uint64(0xFFFFFFFFFFFFFFFF)
_MANT52 = np.uint64((1 << 52) - 1)
_HIDDEN52 = np.uint64(1 << 52)
_TWO53 = np.uint64(1 << 53)
_EXP11 = np.uint64(0x7FF)
_SIGN64 = np.uint64(1 << 63)
_INF_BITS = np.uint64(0x7FF0000000000000)
_MANT23 = np.uint32((1 << 23) - 1)
_U32_23 = np.uint32(23)
_U32_31 = np.uint32(31)
_U32_FF = np.uint32(0xFF)
_U32_0 = np.uint32(0)
_ABS32 = np.uint32(0x7FFFFFFF)
_HIDDEN23 = np.uint64(1 << 23)
_LOW9 = np.uint64(0x1FF)


# ---------------------------------------------------------------------------
# Tables, built with exact integer arithmetic at import.
# ---------------------------------------------------------------------------

def _ceil_normalized(num, den, bits):
    """ceil(num/den * 2**s), with s chosen so the result's top bit is bit bits-1.

    Rounding up makes the table value an over-estimate (or exact), which is
    what Schubfach's round-to-odd proof needs.
    """
    s = bits - (num.bit_length() - den.bit_length())
    while True:
        if s >= 0:
            n, d = num << s, den
        else:
            n, d = num, den << -s
        if n >= d << bits:
            s -= 1
        elif n < d << (bits - 1):
            s += 1
        else:
            g = -((-n) // d)
            assert g < 1 << bits
            return g


def _schubfach_table(kmin, kmax, bits):
    out = []
    for k in range(kmin, kmax + 1):
        if k >= 0:
            g = _ceil_normalized(10 ** k, 1, bits)
        else:
            g = _ceil_normalized(1, 10 ** -k, bits)
        if bits == 128:
            out.append(g >> 64)
            out.append(g & ((1 << 64) - 1))
        else:
            out.append(g)
    return np.array(out, dtype=np.uint64)


_SF64_KMIN = -292
_SF64_KMAX = 324
# 10**k for k in [-292, 324] as a 128-bit (hi, lo) pair, interleaved.
_SF64_G = _schubfach_table(_SF64_KMIN, _SF64_KMAX, 128)
_SF32_KMIN = -31
_SF32_KMAX = 45
_SF32_G = _schubfach_table(_SF32_KMIN, _SF32_KMAX, 64)


def _eisel_lemire_table(qmin, qmax):
    """fast_float's 128-bit truncated powers of five (table_generation.py).

    Negative powers are reciprocals rounded up (then truncated to 128 bits),
    positive ones are 5**q truncated to its top 128 bits; the product error
    bounds of Mushtak & Lemire are proved for exactly this table.
    """
    out = []
    for q in range(qmin, qmax + 1):
        if q < 0:
            p5 = 5 ** -q
            z = p5.bit_length()  # smallest z with 2**z >= p5 (p5 is no power of 2)
            b = z + 127 if q >= -27 else 2 * z + 128
            c = (1 << b) // p5 + 1
            while c >= 1 << 128:
                c >>= 1
        else:
            c = 5 ** q
            while c < 1 << 127:
                c <<= 1
            while c >= 1 << 128:
                c >>= 1
        out.append(c >> 64)
        out.append(c & ((1 << 64) - 1))
    return np.array(out, dtype=np.uint64)


_EL_QMIN = -342
_EL_QMAX = 308
_EL_POW5 = _eisel_lemire_table(_EL_QMIN, _EL_QMAX)

# Exact powers of ten: as doubles up to 1e22 (Clinger), as integers up to 1e19.
_P10F = np.array([10.0 ** i for i in range(23)], dtype=np.float64)
_P10U = np.array([10 ** i for i in range(20)], dtype=np.uint64)

_INFINITY = np.frombuffer(b"infinity", dtype=np.uint8).copy()

_DIGITS100 = np.frombuffer(
    "".join("%02d" % i for i in range(100)).encode("ascii"), dtype=np.uint8
).copy()


# ---------------------------------------------------------------------------
# 128-bit helpers
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _mul128(a, b):
    """(hi, lo) of the full 128-bit product of two uint64."""
    a0 = a & _M32
    a1 = a >> _U32
    b0 = b & _M32
    b1 = b >> _U32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    # Neither partial sum can overflow: (2**32-1)**2 + (2**32-1) < 2**64.
    mid1 = p10 + (p00 >> _U32)
    mid2 = p01 + (mid1 & _M32)
    hi = p11 + (mid1 >> _U32) + (mid2 >> _U32)
    lo = (mid2 << _U32) | (p00 & _M32)
    return hi, lo


if _ctlz is not None:
    @njit(cache=True, nogil=True)
    def _clz64(x):
        return np.int64(_ctlz(x))
else:  # pragma: no cover
    @njit(cache=True, nogil=True)
    def _clz64(x):
        n = 0
        while (x & _SIGN64) == _U0:
            x = x << _U1
            n += 1
        return np.int64(n)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _round_to_odd64(g_hi, g_lo, cp):
    # floor(g * cp / 2**128) with the discarded bits folded into bit 0: this
    # keeps enough information to decide rounding exactly (Schubfach, sec. 9).
    x_hi, x_lo = _mul128(g_lo, cp)
    y_hi, y_lo = _mul128(g_hi, cp)
    y_lo2 = y_lo + x_hi
    if y_lo2 < x_hi:
        y_hi += _U1
    if y_lo2 != _U0:
        y_hi |= _U1
    return y_hi


@njit(cache=True, nogil=True)
def _to_decimal64(m, e):
    """Shortest (digits, exp10) for the positive double with fields m, e."""
    if e != 0:
        c = m | _HIDDEN52
        q = e - 1075
        if -52 <= q <= 0:
            # Integers below 2**53 are printed exactly, which is also shortest
            # once trailing zeros are stripped.
            sh = np.uint64(-q)
            f = c >> sh
            if (f << sh) == c:
                return f, np.int64(0)
    else:
        c = m
        q = np.int64(-1074)
    odd = c & _U1
    lower_closer = m == _U0 and e > 1
    cb = c << _U2
    cbl = cb - _U2
    if lower_closer:
        cbl += _U1
    cbr = cb + _U2
    if lower_closer:
        k = (q * 1262611 - 524031) >> 22
    else:
        k = (q * 1262611) >> 22
    h = np.uint64(q + ((-k * 1741647) >> 19) + 1)
    idx = 2 * (-k - _SF64_KMIN)
    g_hi = _SF64_G[idx]
    g_lo = _SF64_G[idx + 1]
    vbl = _round_to_odd64(g_hi, g_lo, cbl << h)
    vb = _round_to_odd64(g_hi, g_lo, cb << h)
    vbr = _round_to_odd64(g_hi, g_lo, cbr << h)
    # Ties at the interval ends belong to the value only for even significands.
    lower = vbl + odd
    upper = vbr - odd
    s = vb >> _U2
    if s >= _U10:
        sp = s // _U10
        up_in = lower <= sp * _U40
        wp_in = sp * _U40 + _U40 <= upper
        if up_in != wp_in:
            return sp + np.uint64(wp_in), k + 1
    u_in = lower <= (s << _U2)
    w_in = (s << _U2) + _U4 <= upper
    if u_in != w_in:
        return s + np.uint64(w_in), k
    mid = (s << _U2) + _U2
    if vb > mid or (vb == mid and (s & _U1) != _U0):
        s += _U1
    return s, k


@njit(cache=True, nogil=True)
def _round_to_odd32(g, cp):
    b01 = (g & _M32) * cp
    b11 = (g >> _U32) * cp
    hi = b11 + (b01 >> _U32)
    y1 = hi >> _U32
    # "> 1" and not "!= 0": g is rounded up, so a remainder of 1 may be error.
    if (hi & _M32) > _U1:
        y1 |= _U1
    return y1


@njit(cache=True, nogil=True)
def _near(c4, v):
    d = np.int64(c4) - np.int64(v)
    return -4 <= d <= 4


@njit(cache=True, nogil=True)
def _to_decimal32(m, e):
    """Shortest (digits, exp10, near_end) for the positive float32 (m, e).

    near_end flags a result within a few units of round-off of an end of the
    rounding interval; only such a result can be spoiled by the double
    rounding of ``np.float32(float(text))`` (see write_f32).
    """
    if e != 0:
        c = m | _HIDDEN23
        q = e - 150
        if -23 <= q <= 0:
            sh = np.uint64(-q)
            f = c >> sh
            if (f << sh) == c:
                return f, np.int64(0), False
    else:
        c = m
        q = np.int64(-149)
    odd = c & _U1
    lower_closer = m == _U0 and e > 1
    cb = c << _U2
    cbl = cb - _U2
    if lower_closer:
        cbl += _U1
    cbr = cb + _U2
    if lower_closer:
        k = (q * 1262611 - 524031) >> 22
    else:
        k = (q * 1262611) >> 22
    h = np.uint64(q + ((-k * 1741647) >> 19) + 1)
    g = _SF32_G[-k - _SF32_KMIN]
    vbl = _round_to_odd32(g, cbl << h)
    vb = _round_to_odd32(g, cb << h)
    vbr = _round_to_odd32(g, cbr << h)
    lower = vbl + odd
    upper = vbr - odd
    s = vb >> _U2
    if s >= _U10:
        sp = s // _U10
        up_in = lower <= sp * _U40
        wp_in = sp * _U40 + _U40 <= upper
        if up_in != wp_in:
            c4 = sp * _U40 + (_U40 if wp_in else _U0)
            return sp + np.uint64(wp_in), k + 1, _near(c4, vbl) or _near(c4, vbr)
    u_in = lower <= (s << _U2)
    w_in = (s << _U2) + _U4 <= upper
    if u_in == w_in:
        mid = (s << _U2) + _U2
        w_in = vb > mid or (vb == mid and (s & _U1) != _U0)
    if w_in:
        s += _U1
    c4 = s << _U2
    return s, k, _near(c4, vbl) or _near(c4, vbr)


@njit(cache=True, nogil=True)
def _put2(out, p, r):
    i = np.int64(r) * 2
    out[p] = _DIGITS100[i]
    out[p + 1] = _DIGITS100[i + 1]


@njit(cache=True, nogil=True)
def _put8(out, p, r):
    # Fixed 8 digits, straight-line: cheaper than a digit loop.
    hi = r // _U10000
    lo = r - hi * _U10000
    a = hi // _U100
    b = lo // _U100
    _put2(out, p, a)
    _put2(out, p + 2, hi - a * _U100)
    _put2(out, p + 4, b)
    _put2(out, p + 6, lo - b * _U100)


@njit(cache=True, nogil=True)
def _put_digits(out, pos, s, n):
    """Write the n decimal digits of s (n <= 17) into out[pos:pos+n]."""
    p = pos + n
    while s >= _U1E8:
        q = s // _U1E8
        p -= 8
        _put8(out, p, s - q * _U1E8)
        s = q
    while s >= _U100:
        q = s // _U100
        p -= 2
        _put2(out, p, s - q * _U100)
        s = q
    if s >= _U10:
        _put2(out, p - 2, s)
    else:
        out[p - 1] = np.uint8(48 + np.int64(s))


@njit(cache=True, nogil=True)
def _format_decimal(out, p, s, k):
    """Lay out s * 10**k (s > 0) like repr, starting at out[p]; return end."""
    while True:
        q = s // _U10
        if s != q * _U10:
            break
        s = q
        k += 1
    n = 17
    while n > 1 and s < _P10U[n - 1]:
        n -= 1
    e10 = k + n - 1
    if 0 <= e10 < 16:
        if k >= 0:
            _put_digits(out, p, s, n)
            p += n
            for _ in range(k):
                out[p] = 48
                p += 1
            return p
        # Digits go one byte right, then the integer part slides back over
        # the gap and the point fills the hole (at most 16 bytes moved).
        _put_digits(out, p + 1, s, n)
        ip = e10 + 1
        for j in range(ip):
            out[p + j] = out[p + j + 1]
        out[p + ip] = 46
        return p + n + 1
    if -4 <= e10 < 0:
        out[p] = 48
        out[p + 1] = 46
        p += 2
        for _ in range(-e10 - 1):
            out[p] = 48
            p += 1
        _put_digits(out, p, s, n)
        return p + n
    _put_digits(out, p + 1, s, n)
    out[p] = out[p + 1]
    if n > 1:
        out[p + 1] = 46
        p += n + 1
    else:
        p += 1
    out[p] = 101
    if e10 < 0:
        out[p + 1] = 45
        ee = -e10
    else:
        out[p + 1] = 43
        ee = e10
    p += 2
    if ee >= 100:
        out[p] = np.uint8(48 + ee // 100)
        ee = ee % 100
        p += 1
    out[p] = _DIGITS100[2 * ee]
    out[p + 1] = _DIGITS100[2 * ee + 1]
    return p + 2


@njit(cache=True, nogil=True)
def _write_nonfinite(out, p, is_nan, neg):
    if is_nan:
        out[p] = 110
        out[p + 1] = 97
        out[p + 2] = 110
        return p + 3
    if neg:
        out[p] = 45
        p += 1
    out[p] = 105
    out[p + 1] = 110
    out[p + 2] = 102
    return p + 3


@njit(cache=True, nogil=True)
def write_f64(x, out, pos):
    """Write float64 x as its shortest round-tripping decimal at out[pos:].

    Returns the position after the last byte written. ``out`` (uint8) needs
    at least 32 free bytes from ``pos``; the longest output is 24 bytes.
    """
    bits = np.float64(x).view(np.uint64)
    neg = (bits & _SIGN64) != _U0
    e = np.int64((bits >> _U52) & _EXP11)
    m = bits & _MANT52
    if e == 0x7FF:
        return _write_nonfinite(out, pos, m != _U0, neg)
    p = pos
    if neg:
        out[p] = 45
        p += 1
    if e == 0 and m == _U0:
        out[p] = 48
        return p + 1
    s, k = _to_decimal64(m, e)
    return _format_decimal(out, p, s, k)


@njit(cache=True, nogil=True)
def _nearest_double(s, k):
    """The double nearest s * 10**k, for s < 2**53 and a float32-range k."""
    if s <= _TWO53 and -22 <= k <= 22:
        d = np.float64(s)
        if k < 0:
            return d / _P10F[-k]
        return d * _P10F[k]
    dbits, _st = _compute_float64(k, s)
    return np.uint64(dbits).view(np.float64)


@njit(cache=True, nogil=True)
def write_f32(x, out, pos):
    """Write x rounded to float32 as the shortest decimal that round-trips.

    Round trip means ``np.float32(float(text)) == np.float32(x)``. Returns the
    position after the last byte written; needs 32 free bytes from ``pos``.
    """
    bits = np.float32(x).view(np.uint32)
    neg = (bits >> _U32_31) != _U32_0
    e = np.int64((bits >> _U32_23) & _U32_FF)
    m = np.uint64(bits & _MANT23)
    if e == 0xFF:
        return _write_nonfinite(out, pos, m != _U0, neg)
    p = pos
    if neg:
        out[p] = 45
        p += 1
    if e == 0 and m == _U0:
        out[p] = 48
        return p + 1
    s, k, near_end = _to_decimal32(m, e)
    if near_end:
        # A decimal inside the float32 rounding interval can still round (as
        # a double) exactly onto the interval's end, and the tie then goes to
        # the neighbouring float32: 7.038531e-26 is the one such float32
        # (per sign). Check, and print the exact double's digits instead.
        d = _nearest_double(s, k)
        if np.float32(d).view(np.uint32) != (bits & _ABS32):
            d64 = np.float64(np.float32(x)).view(np.uint64)
            s, k = _to_decimal64(d64 & _MANT52, np.int64(d64 >> _U52) & 0x7FF)
    return _format_decimal(out, p, s, k)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _compute_float64(q, w):
    """Bits of the double nearest w * 10**q (w > 0), and OK or SLOW.

    fast_float's compute_float for binary64: a 128-bit truncated product
    against the power-of-five table decides the rounding except in cases
    flagged SLOW (never seen in practice; kept as a guard).
    """
    if q < _EL_QMIN:
        return _U0, OK
    if q > _EL_QMAX:
        return _INF_BITS, OK
    lz = _clz64(w)
    w = w << np.uint64(lz)
    idx = 2 * (q - _EL_QMIN)
    hi, lo = _mul128(w, _EL_POW5[idx])
    if (hi & _LOW9) == _LOW9:
        # The low bits that decide rounding might be affected by the
        # truncated part of 5**q: fold in the next 64 bits of the table.
        s_hi, _s_lo = _mul128(w, _EL_POW5[idx + 1])
        lo2 = lo + s_hi
        if lo2 < lo:
            hi += _U1
        lo = lo2
    if lo == _ALL1 and (q < -27 or q > 55):
        return _U0, SLOW
    upper = np.int64(hi >> _U63)
    shift = np.uint64(upper + 9)
    mant = hi >> shift
    power2 = ((217706 * q) >> 16) + 63 + upper - lz + 1023
    if power2 <= 0:
        if -power2 + 1 >= 64:
            return _U0, OK
        mant = mant >> np.uint64(-power2 + 1)
        mant += mant & _U1
        mant = mant >> _U1
        # Rounding may carry into the smallest normal; the exponent field
        # then comes from the carried bit itself.
        return mant, OK
    if lo <= _U1 and -4 <= q <= 23 and (mant & _U3) == _U1:
        # Exactly halfway between two doubles: round to even, not up.
        if (mant << shift) == hi:
            mant &= ~_U1
    mant += mant & _U1
    mant = mant >> _U1
    if mant >= _TWO53:
        mant = _HIDDEN52
        power2 += 1
    mant &= ~_HIDDEN52
    if power2 >= 0x7FF:
        return _INF_BITS, OK
    return (np.uint64(power2) << _U52) | mant, OK


@njit(cache=True, nogil=True)
def _lower(c):
    # ASCII letters to lower case; other bytes stay distinct from letters.
    return np.int64(c) | 0x20


@njit(cache=True, nogil=True)
def _special(buf, i, end):
    """1 if buf[i:end] is inf or infinity, 2 if nan (any case), else 0."""
    n = end - i
    if n == 3:
        a = _lower(buf[i])
        b = _lower(buf[i + 1])
        c = _lower(buf[i + 2])
        if a == 105 and b == 110 and c == 102:
            return 1
        if a == 110 and b == 97 and c == 110:
            return 2
        return 0
    if n == 8:
        for j in range(8):
            if _lower(buf[i + j]) != _INFINITY[j]:
                return 0
        return 1
    return 0


@njit(cache=True, nogil=True)
def _from_bits(bits, neg):
    if neg:
        bits = bits | _SIGN64
    v = np.uint64(bits).view(np.float64)
    if bits & _INF_BITS == _INF_BITS:
        return v, NONFINITE
    return v, OK


@njit(cache=True, nogil=True)
def parse_f64(buf, start, end):
    """Parse buf[start:end] (uint8) as a decimal float: (value, status).

    status is OK (value correctly rounded), BAD (not a number), NONFINITE
    (inf/nan text, or a number that overflows), or SLOW (valid, but the fast
    algorithm cannot guarantee the rounding: re-parse with ``float()``).
    """
    i = start
    if i >= end:
        return 0.0, BAD
    neg = False
    c = buf[i]
    if c == 45 or c == 43:
        neg = c == 45
        i += 1
        if i >= end:
            return 0.0, BAD
    c0 = _lower(buf[i])
    if c0 == 105 or c0 == 110:
        sp = _special(buf, i, end)
        if sp == 1:
            return (-np.inf if neg else np.inf), NONFINITE
        if sp == 2:
            return np.nan, NONFINITE
        return 0.0, BAD
    mant = _U0
    nd = 0
    exp10 = np.int64(0)
    dropped = False
    huge_exp = False
    digits_from = i
    # Leading zeros carry no information; skipping them first keeps the
    # digit loops free of a "seen a non-zero digit yet" test.
    while i < end and buf[i] == 48:
        i += 1
    while i < end:
        d = np.int64(buf[i]) - 48
        if d < 0 or d > 9:
            break
        if nd < 19:
            mant = mant * _U10 + np.uint64(d)
            nd += 1
        else:
            exp10 += 1
            dropped |= d != 0
        i += 1
    any_digit = i > digits_from
    if i < end and buf[i] == 46:
        i += 1
        frac_from = i
        if nd == 0:
            # Zeros after the point and before the first significant digit
            # only move the exponent: they never use up the 19 digits.
            while i < end and buf[i] == 48:
                i += 1
            exp10 -= i - frac_from
        while i < end:
            d = np.int64(buf[i]) - 48
            if d < 0 or d > 9:
                break
            if nd < 19:
                mant = mant * _U10 + np.uint64(d)
                nd += 1
                exp10 -= 1
            else:
                dropped |= d != 0
            i += 1
        any_digit = any_digit or i > frac_from
    if not any_digit:
        return 0.0, BAD
    if i < end and _lower(buf[i]) == 101:
        i += 1
        eneg = False
        if i < end and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        exp_from = i
        ev = np.int64(0)
        while i < end:
            d = np.int64(buf[i]) - 48
            if d < 0 or d > 9:
                break
            if ev < 100000000:  # saturate rather than overflow int64
                ev = ev * 10 + d
            i += 1
        if i == exp_from:
            return 0.0, BAD
        if ev >= 100000000:
            # Only ~1e8 digits could bring such an exponent back into range:
            # shorter strings are surely 0 or inf, longer ones go to float().
            if end - start >= 10000000:
                return 0.0, SLOW
            huge_exp = eneg
            if not eneg:
                exp10 = np.int64(100000000)
        if eneg:
            exp10 -= ev
        else:
            exp10 += ev
    if i != end:
        return 0.0, BAD
    if mant == _U0:
        return -0.0 if neg else 0.0, OK
    if huge_exp:
        return -0.0 if neg else 0.0, OK
    if not dropped:
        if mant <= _TWO53 and -22 <= exp10 <= 22:
            # Clinger: both operands exact, so one IEEE operation rounds once.
            v = np.float64(mant)
            if exp10 < 0:
                v = v / _P10F[-exp10]
            else:
                v = v * _P10F[exp10]
            return -v if neg else v, OK
        bits, st = _compute_float64(exp10, mant)
    else:
        # The true value lies strictly between mant and mant+1 (times 10**q);
        # if both ends round alike, so does everything between.
        bits, st = _compute_float64(exp10, mant)
        bits2, st2 = _compute_float64(exp10, mant + _U1)
        if st2 != OK or bits2 != bits:
            st = SLOW
    if st != OK:
        return 0.0, st
    return _from_bits(bits, neg)


# ---------------------------------------------------------------------------
# Python conveniences (tests, slow paths)
# ---------------------------------------------------------------------------

def format_f64(x):
    """str of the shortest round-tripping decimal for a float64."""
    out = np.empty(32, dtype=np.uint8)
    n = write_f64(float(x), out, 0)
    return out[:n].tobytes().decode("ascii")


def format_f32(x):
    """str of the shortest decimal that round-trips x as float32."""
    out = np.empty(32, dtype=np.uint8)
    with np.errstate(over="ignore"):
        x = np.float32(x)
    n = write_f32(x, out, 0)
    return out[:n].tobytes().decode("ascii")


def parse_bytes(b):
    """Parse one number (bytes or str) exactly like ``float()``.

    Raises ValueError for anything that is not a finite decimal number.
    """
    if isinstance(b, str):
        b = b.encode("ascii", "replace")
    arr = np.frombuffer(b, dtype=np.uint8)
    v, st = parse_f64(arr, 0, arr.shape[0])
    if st == OK:
        return v
    if st == SLOW:
        v = float(b)
        if v - v == 0.0:
            return v
        st = NONFINITE
    if st == NONFINITE:
        raise ValueError("non-finite number: %r" % (b,))
    raise ValueError("not a number: %r" % (b,))
