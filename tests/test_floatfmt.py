"""Tests for streamfm.floatfmt: exact, shortest float text I/O in numba.

Python's repr/float are the references: repr is the shortest round-tripping
decimal and float() is correctly rounded, so the kernels must agree with them
bit for bit (and digit for digit, up to repr's trailing ".0").
"""

import math
import random
import struct
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from streamfm.floatfmt import (
    BAD, NONFINITE, OK, SLOW,
    format_f32, format_f64, parse_bytes, parse_f64, write_f32, write_f64,
)


# --- batch kernels: one compiled loop instead of a Python call per number ---

@njit(cache=True)
def _write_all64(xs, out):
    p = 0
    for i in range(xs.shape[0]):
        p = write_f64(xs[i], out, p)
        out[p] = 32
        p += 1
    return p


@njit(cache=True)
def _write_all32(xs, out):
    p = 0
    for i in range(xs.shape[0]):
        p = write_f32(xs[i], out, p)
        out[p] = 32
        p += 1
    return p


@njit(cache=True)
def _parse_all(buf, n, res, status):
    """Parse n space-terminated tokens; returns how many were found."""
    i = 0
    k = 0
    size = buf.shape[0]
    while i < size and k < n:
        j = i
        while j < size and buf[j] != 32:
            j += 1
        v, s = parse_f64(buf, i, j)
        res[k] = v
        status[k] = s
        k += 1
        i = j + 1
    return k


def write_tokens(x, f32=False):
    out = np.empty(len(x) * 32 + 32, np.uint8)
    p = (_write_all32 if f32 else _write_all64)(x, out)
    return out[:p]


def split_tokens(buf):
    return buf.tobytes().decode("ascii").split(" ")[:-1]


def parse_strings(strs):
    buf = np.frombuffer((" ".join(strs) + " ").encode("ascii"), np.uint8)
    res = np.empty(len(strs))
    status = np.empty(len(strs), np.int64)
    assert _parse_all(buf, len(strs), res, status) == len(strs)
    return res, status


def bits64(v):
    return struct.pack("<d", v)


def repr_nodot(v):
    """repr, minus the trailing '.0' that write_f64 leaves off integers."""
    r = repr(float(v))
    return r[:-2] if r.endswith(".0") else r


def random_doubles(n, seed):
    """Finite doubles covering every exponent, subnormals and short decimals."""
    rng = np.random.default_rng(seed)
    q = n // 4
    raw = rng.integers(0, 2 ** 64, q, dtype=np.uint64)
    sub = rng.integers(0, 2 ** 64, q, dtype=np.uint64) & np.uint64((1 << 63) | ((1 << 53) - 1))
    few = rng.integers(0, 2 ** 64, q, dtype=np.uint64)
    few &= ~((np.uint64(1) << rng.integers(20, 52, q).astype(np.uint64)) - np.uint64(1))
    dec = (rng.integers(1, 10 ** 9, n - 3 * q).astype(np.float64)
           * 10.0 ** rng.integers(-25, 25, n - 3 * q).astype(np.float64))
    x = np.concatenate([raw, sub, few]).view(np.float64)
    x = np.concatenate([x, dec])
    return x[np.isfinite(x)]


def fm_values(n, seed):
    """FM-like magnitudes: weights 1e-3..1e2, accumulators 1e-2..1e6."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([10.0 ** rng.uniform(-3, 2, n // 2),
                        10.0 ** rng.uniform(-2, 6, n - n // 2)])
    return x * rng.choice([-1.0, 1.0], n)


def edge_doubles():
    vals = [0.0, -0.0, 5e-324, 1e-323, 2.2250738585072014e-308,
            2.225073858507201e-308, 1.7976931348623157e308, 1e16,
            9999999999999998.0, 1e-4, 9.999999999999999e-05, 1e15, 0.1, 0.2,
            0.3, 1 / 3, 2 / 3, math.pi, math.e, 123456789012345680.0]
    vals += [2.0 ** e for e in range(-1074, 1024)]
    vals += [math.nextafter(2.0 ** e, 0) for e in range(-1073, 1024)]
    for k in range(-323, 309):
        v = float("1e%d" % k)
        vals += [v, math.nextafter(v, 0), math.nextafter(v, math.inf)]
    vals += [float(i) for i in range(-1000, 1000)]
    vals += [float(2 ** 53 - i) for i in range(5)] + [float(2 ** 53 + 2 * i) for i in range(5)]
    vals += [float(10 ** k - 1) for k in range(1, 17)]
    x = np.array(vals, dtype=np.float64)
    return np.concatenate([x, -x])


# ------------------------------- write_f64 -------------------------------

@pytest.mark.parametrize("x, text", [
    (0.0, "0"), (-0.0, "-0"), (0.1, "0.1"), (-0.25, "-0.25"), (123.25, "123.25"),
    (1234567.0, "1234567"), (1e15, "1000000000000000"), (1e16, "1e+16"),
    (1.5e20, "1.5e+20"), (1e-4, "0.0001"), (0.00012345, "0.00012345"),
    (1e-5, "1e-05"), (2.5e-310, "2.5e-310"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (1e100, "1e+100"),
    (0.30000000000000004, "0.30000000000000004"),
    (math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan"),
])
def test_write_f64_examples(x, text):
    assert format_f64(x) == text
    out = np.zeros(40, np.uint8)
    end = write_f64(x, out, 5)
    assert out[5:end].tobytes().decode() == text
    assert not out[:5].any() and not out[end:].any()


def test_write_f64_is_repr_and_roundtrips_edges():
    x = edge_doubles()
    toks = split_tokens(write_tokens(x))
    assert toks == [repr_nodot(v) for v in x]
    res, status = parse_strings(toks)
    assert (status == OK).all()
    assert (res.view(np.uint64) == x.view(np.uint64)).all()


@pytest.mark.parametrize("seed", [1, 2])
def test_write_f64_random_is_repr_and_roundtrips(seed):
    x = random_doubles(200_000, seed)
    buf = write_tokens(x)
    toks = split_tokens(buf)
    expected = [repr_nodot(v) for v in x]
    mismatches = [(t, e) for t, e in zip(toks, expected) if t != e]
    assert not mismatches[:10]
    assert max(map(len, toks)) <= 24  # callers reserve 32 bytes a number
    res = np.empty(len(x))
    status = np.empty(len(x), np.int64)
    _parse_all(buf, len(x), res, status)
    assert (status == OK).all()
    assert (res.view(np.uint64) == x.view(np.uint64)).all()


def test_fm_values_roundtrip():
    x = fm_values(300_000, 3)
    buf = write_tokens(x)
    res = np.empty(len(x))
    status = np.empty(len(x), np.int64)
    assert _parse_all(buf, len(x), res, status) == len(x)
    assert (status == OK).all()
    assert (res.view(np.uint64) == x.view(np.uint64)).all()
    # and the text is what float() reads too
    toks = split_tokens(buf)
    assert all(bits64(float(t)) == bits64(v) for t, v in zip(toks[:20_000], x[:20_000]))


@settings(max_examples=1500, deadline=None, database=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_hypothesis_any_double_roundtrips(x):
    text = format_f64(x)
    assert text == repr_nodot(x)
    assert bits64(parse_bytes(text.encode())) == bits64(x)
    arr = np.frombuffer(text.encode(), np.uint8)
    v, status = parse_f64(arr, 0, len(arr))
    assert status == OK and bits64(v) == bits64(x)


# ------------------------------- write_f32 -------------------------------

def f32_roundtrips(text, x32):
    return np.float32(float(text)).view(np.uint32) == np.float32(x32).view(np.uint32)


@pytest.mark.parametrize("x, text", [
    (0.1, "0.1"), (1.0, "1"), (-0.0, "-0"), (0.0, "0"), (1e-45, "1e-45"),
    (3.4028234663852886e38, "3.4028235e+38"), (16777216.0, "16777216"),
    (1.17549435e-38, "1.1754944e-38"), (math.inf, "inf"), (math.nan, "nan"),
])
def test_write_f32_examples(x, text):
    assert format_f32(x) == text


def test_write_f32_accepts_float64_argument():
    @njit
    def via_f64(v, out):
        return write_f32(np.float64(v), out, 0)

    out = np.empty(32, np.uint8)
    n = via_f64(np.float32(0.1), out)
    assert out[:n].tobytes() == b"0.1"


def test_write_f32_double_rounding_case():
    # 7.038531e-26 is inside this float32's interval but, read as a double,
    # lands exactly on the midpoint and ties away to the neighbour.
    for u in (363742205, 363742205 | (1 << 31)):
        x32 = np.uint32(u).view(np.float32)
        text = format_f32(x32)
        assert f32_roundtrips(text, x32), text
    assert format_f32(np.uint32(363742206).view(np.float32)) == "7.0385313e-26"


def test_write_f32_random_roundtrip_and_shortest():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 2 ** 32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([raw[np.isfinite(raw)], fm_values(100_000, 5).astype(np.float32),
                        (2.0 ** np.arange(-149, 128)).astype(np.float32)])
    toks = split_tokens(write_tokens(x, f32=True))
    back = np.array([float(t) for t in toks]).astype(np.float32)
    assert (back.view(np.uint32) == x.view(np.uint32)).all()
    # numpy's str of a float32 is Dragon4's shortest-and-closest decimal
    ref = x.astype(str)
    diff = [(t, r) for t, r in zip(toks, ref) if Decimal(t) != Decimal(r)]
    assert not diff[:10]


# ------------------------------- parse_f64 -------------------------------

def check_against_float(strs):
    """Every OK is exact; returns the status counts."""
    res, status = parse_strings(strs)
    counts = {OK: 0, BAD: 0, NONFINITE: 0, SLOW: 0}
    for s, v, c in zip(strs, res, status):
        counts[int(c)] += 1
        ref = float(s)
        if c == OK:
            assert bits64(v) == bits64(ref), (s, v, ref)
        elif c == NONFINITE:
            assert math.isinf(ref), s
        elif c == SLOW:
            assert bits64(parse_bytes(s.encode())) == bits64(ref)
        else:
            raise AssertionError("BAD for valid number %r" % s)
    return counts


def random_digit_strings(n, seed, min_digits=1, max_digits=40, exp_range=350):
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    lens = rng.integers(min_digits, max_digits + 1, n)
    digits = rng.integers(0, 10, (n, max_digits)) + 48
    digits[:, 0] = rng.integers(1, 10, n) + 48
    exps = rng.integers(-exp_range, exp_range + 1, n)
    out = []
    for i in range(n):
        d = digits[i, :lens[i]].astype(np.uint8).tobytes().decode()
        if r.random() < 0.2:
            d = "0" * r.randint(1, 6) + d
        if r.random() < 0.7:
            cut = r.randint(0, len(d))
            d = d[:cut] + "." + d[cut:]
        sign = r.choice(("", "-", "+"))
        if r.random() < 0.9:
            d += r.choice("eE") + str(exps[i])
        out.append(sign + d)
    return out


def test_parse_random_repr_strings():
    x = random_doubles(100_000, 6)
    strs = [repr(float(v)) for v in x]
    counts = check_against_float(strs)
    assert counts[OK] == len(strs)


def test_parse_random_digit_strings():
    strs = random_digit_strings(150_000, 7)
    counts = check_against_float(strs)
    assert counts[BAD] == 0
    assert counts[NONFINITE] > 0 and counts[OK] > 0.9 * len(strs)
    assert counts[SLOW] < 0.005 * len(strs)


def test_parse_short_strings_are_never_slow():
    # up to 19 significant digits there is no truncation, so no SLOW at all
    strs = random_digit_strings(100_000, 8, max_digits=19, exp_range=330)
    res, status = parse_strings(strs)
    assert not (status == SLOW).any()
    check_against_float(strs)


def test_parse_printf_styles():
    rng = np.random.default_rng(9)
    x = np.concatenate([random_doubles(40_000, 10), fm_values(40_000, 11)])
    strs = ["%.*g" % (int(p), v) for p, v in zip(rng.integers(1, 18, len(x)), x)]
    strs += ["%.*e" % (int(p), v) for p, v in zip(rng.integers(14, 20, len(x)), x)]
    strs += ["%g" % v for v in fm_values(50_000, 12)]  # alphaFM's 6 digits
    counts = check_against_float(strs)
    assert counts[SLOW] == 0 and counts[BAD] == 0


@pytest.mark.parametrize("text", [
    "0.123457", "-1.2e-05", "1.2E+05", "9007199254740993", "9007199254740995",
    "2.2250738585072011e-308", "2.2250738585072012e-308", "1.7976931348623157e308",
    "4.9e-324", "2.4703282292062327e-324", "2.4703282292062328e-324",
    "4.4501477170144023e-308", "7.2057594037927933e16", "1e23", "8.98846567431158e307",
    "5", "5.", ".5", "-0.25", "+7", "-0", "0e999999999999", "1e-400", "-1e-400",
    "0.000000000000000000000000000001234567890123456789",
    "1.2345678901234567890000000000000000", "00000000000000000000000001.5",
    "123456789012345678900000000000e-10", "1" + "0" * 300, "0." + "0" * 330 + "5",
    "1e-1000000000000", "-1e-99999999999999999999999999", "0." + "0" * 2000 + "1e2005",
])
def test_parse_hard_cases(text):
    arr = np.frombuffer(text.encode(), np.uint8)
    v, status = parse_f64(arr, 0, len(arr))
    assert status == OK
    assert bits64(v) == bits64(float(text))


def test_parse_exact_midpoints():
    """Exact halfway points between adjacent doubles, and their neighbours."""
    r = random.Random(13)
    strs = []
    for i in range(3000):
        if i % 2:
            v = struct.unpack("<d", struct.pack("<Q", r.getrandbits(63)))[0]
        else:  # the range where ties to even can show up with short strings
            v = float(r.randint(1, 2 ** 54)) * 2.0 ** r.randint(-10, 30)
        if not math.isfinite(v) or v == 0:
            continue
        mid = (Fraction(v) + Fraction(math.nextafter(v, math.inf))) / 2
        j = mid.denominator.bit_length() - 1  # denominator is 2**j
        n, exp = mid.numerator * 5 ** j, -j
        while n % 10 == 0:
            n, exp = n // 10, exp + 1
        assert Fraction(n) * Fraction(10) ** exp == mid
        digits = str(n)
        strs += ["%de%d" % (n, exp), "%de%d" % (n + 1, exp), "%de%d" % (n - 1, exp)]
        for k in (17, 18, 19):
            if len(digits) > k:
                strs.append("%se%d" % (digits[:k], exp + len(digits) - k))
                strs.append("%de%d" % (int(digits[:k]) + 1, exp + len(digits) - k))
    counts = check_against_float(strs)
    assert counts[BAD] == 0 and counts[OK] > len(strs) // 3


def test_slow_is_rare_for_long_strings():
    strs = random_digit_strings(100_000, 14, min_digits=20, max_digits=25, exp_range=300)
    counts = check_against_float(strs)  # also checks the float() fallback
    assert counts[SLOW] < 0.005 * len(strs), counts


@pytest.mark.parametrize("text", [
    "", ".", "-", "+", "e5", "1e", "1e+", "1e-", "1x", "--1", "+-1", "0x10", "0X1p3",
    " 1", "1 ", "1_000", "1..2", "1.2.3", "1e5.5", "1e5e5", ".e1", "-.", "in", "inff",
    "nana", "infinit", "infinityy", "1,5", "١", "\x00",
])
def test_parse_rejects(text):
    arr = np.frombuffer(text.encode(), np.uint8)
    v, status = parse_f64(arr, 0, len(arr))
    assert status == BAD
    with pytest.raises(ValueError):
        parse_bytes(text.encode())


@pytest.mark.parametrize("text, value", [
    ("inf", math.inf), ("-inf", -math.inf), ("+INF", math.inf), ("Infinity", math.inf),
    ("-iNfInItY", -math.inf), ("nan", math.nan), ("-NaN", math.nan), ("NAN", math.nan),
    ("1e400", math.inf), ("-1e400", -math.inf), ("1.7976931348623159e308", math.inf),
    ("1" + "0" * 400, math.inf), ("1e100000000", math.inf),
    ("-1e99999999999999999999999", -math.inf),
])
def test_parse_nonfinite(text, value):
    arr = np.frombuffer(text.encode(), np.uint8)
    v, status = parse_f64(arr, 0, len(arr))
    assert status == NONFINITE
    assert (math.isnan(v) and math.isnan(value)) or v == value
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_parse_slices_of_a_readonly_buffer():
    data = b"xx-1.5e3yy 0.1 junk"
    buf = np.frombuffer(data, np.uint8)
    assert not buf.flags.writeable
    assert parse_f64(buf, 2, 8) == (-1500.0, OK)
    assert parse_f64(buf, 11, 14) == (0.1, OK)
    assert parse_f64(buf, 2, 9)[1] == BAD
    assert parse_f64(buf, 5, 5)[1] == BAD
    assert parse_bytes(b"0.1") == 0.1 and parse_bytes("-2.5e-3") == -0.0025
    # just above the midpoint between 1.0 and the next double: the first 19
    # digits and the same + 1 round differently, so the kernel must defer
    above_mid = "1.000000000000000111022302462515654042363166809082031250001"
    arr = np.frombuffer(above_mid.encode(), np.uint8)
    assert parse_f64(arr, 0, len(arr))[1] == SLOW
    assert parse_bytes(above_mid) == float(above_mid) == math.nextafter(1.0, 2.0)
    # a SLOW token that float() turns into inf is still refused
    above_max = "1.79769313486231580793728971405303415079934132710037826936173778980445e308"
    assert parse_f64(np.frombuffer(above_max.encode(), np.uint8), 0, len(above_max))[1] == SLOW
    with pytest.raises(ValueError):
        parse_bytes(above_max)
