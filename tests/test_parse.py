"""The input line grammar (docs/design.md, "Input lines") as streamfm.parse implements it.

Every rule and every bad-line class is checked on hand-written lines; a
hypothesis property test compares the parser with an independent pure-Python
implementation of the grammar on random mixes of valid and invalid tokens.
"""

import math
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import bad_of, parse_bytes, samples_of
from streamfm import parse
from streamfm.table import hash_name as keyed_hash_name

R = parse
CLIP = parse.VALUE_CLIP


def hash_name(name):
    """The hash parse() gives a name when no table is given (under NO_KEY)."""
    return keyed_hash_name(name, parse.NO_KEY)


def one(line):
    """The single sample of a one-line input: (y, [(name, value), ...])."""
    p = parse_bytes(line)
    assert bad_of(p) == [], bad_of(p)
    s = samples_of(p)
    assert len(s) == 1, s
    return s[0]


def bad(line):
    """(reason, column) of a one-line input that must be rejected."""
    p = parse_bytes(line)
    assert p.n_samples == 0 and p.nnz == 0, samples_of(p)
    b = bad_of(p)
    assert len(b) == 1, b
    assert b[0][0] == 0
    return b[0][1], b[0][2]


def check_csr(p):
    assert p.indptr.shape[0] == p.n_samples + 1
    assert p.indptr[0] == 0 and p.indptr[-1] == p.nnz
    assert np.all(np.diff(p.indptr) >= 0)
    assert len(p.hashes) == len(p.vals) == len(p.name_start) == len(p.name_len) == p.nnz


# ---------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("label,y", [
    (b"1", 1.0), (b"0", -1.0), (b"-1", -1.0), (b"1.0", 1.0), (b"+1", 1.0), (b"0.5", 1.0),
    (b"2", 1.0), (b"-0.0", -1.0), (b"1e0", 1.0), (b"0.0", -1.0), (b"-0.5", -1.0),
    (b".5", 1.0), (b"1.", 1.0), (b"1E-3", 1.0), (b"-1e-300", -1.0), (b"+0", -1.0),
])
def test_label_values(label, y):
    got_y, feats = one(label + b" a:2")
    assert got_y == y
    assert feats == [(b"a", 2.0)]


@pytest.mark.parametrize("line,reason,col", [
    (b"abc a:1", R.BAD_LABEL, 0),
    (b":1 a", R.BAD_LABEL, 0),
    (b"a:1 b:1", R.BAD_LABEL, 0),
    (b"   x1 a", R.BAD_LABEL, 3),
    (b"1x a", R.BAD_LABEL, 0),
    (b"+ a", R.BAD_LABEL, 0),
    (b". a", R.BAD_LABEL, 0),
    (b"1e a", R.BAD_LABEL, 0),
    (b"1_0 a", R.BAD_LABEL, 0),        # Python's float() takes this; the grammar does not
    (b"0x1 a", R.BAD_LABEL, 0),
    (b"nan a:1", R.NONFINITE_LABEL, 0),
    (b"NaN a:1", R.NONFINITE_LABEL, 0),
    (b"-nan a:1", R.NONFINITE_LABEL, 0),
    (b"inf a:1", R.NONFINITE_LABEL, 0),
    (b"-Infinity a:1", R.NONFINITE_LABEL, 0),
    (b"1e400 a:1", R.NONFINITE_LABEL, 0),
    (b"\t -1e999 a:1", R.NONFINITE_LABEL, 2),
])
def test_bad_labels(line, reason, col):
    assert bad(line) == (reason, col)


def test_label_only_line_is_a_sample_without_features():
    p = parse_bytes(b"1\n0 \n-1\t\r\n")
    assert samples_of(p) == [(1.0, []), (-1.0, []), (-1.0, [])]
    assert list(p.indptr) == [0, 0, 0, 0]
    assert bad_of(p) == []


# ---------------------------------------------------------------------------
# separators, blanks, line ends


def test_separators_are_runs_of_spaces_and_tabs():
    y, feats = one(b"1 \t a:1\t\tb:2   \t c:3\t")
    assert feats == [(b"a", 1.0), (b"b", 2.0), (b"c", 3.0)]


def test_leading_and_trailing_blanks():
    assert one(b" \t 1 a:1 \t ") == (1.0, [(b"a", 1.0)])


def test_crlf_lines():
    p = parse_bytes(b"1 a:1\r\n0 b:2 \r\n1\r\n")
    assert bad_of(p) == []
    assert samples_of(p) == [(1.0, [(b"a", 1.0)]), (-1.0, [(b"b", 2.0)]), (1.0, [])]
    # the '\r' is not part of the last value or name
    p = parse_bytes(b"1 a:1.5\r\n1 name\r\n")
    assert samples_of(p) == [(1.0, [(b"a", 1.5)]), (1.0, [(b"name", 1.0)])]
    assert p.hashes[1] == hash_name(b"name")


def test_last_line_without_newline():
    p = parse_bytes(b"1 a:1\n0 b:2")
    assert samples_of(p) == [(1.0, [(b"a", 1.0)]), (-1.0, [(b"b", 2.0)])]
    assert p.n_lines == 2
    p = parse_bytes(b"1 a:1\n0 b:2\r")
    assert samples_of(p) == [(1.0, [(b"a", 1.0)]), (-1.0, [(b"b", 2.0)])]


def test_empty_and_blank_lines_are_skipped_not_bad():
    data = b"\n1 a\n\n \n\t\n \t \r\n\r\n0 b\n\n"
    p = parse_bytes(data)
    assert bad_of(p) == []
    assert samples_of(p) == [(1.0, [(b"a", 1.0)]), (-1.0, [(b"b", 1.0)])]
    assert p.n_lines == data.count(b"\n")


def test_line_numbers_count_blank_lines():
    p = parse_bytes(b"\n\n1 a\n\nbad a\n1 b\n \nx\n")
    assert [(li, r) for li, r, _ in bad_of(p)] == [(4, R.BAD_LABEL), (7, R.BAD_LABEL)]


def test_empty_buffer():
    p = parse_bytes(b"")
    assert p.n_samples == 0 and p.nnz == 0 and bad_of(p) == []


# ---------------------------------------------------------------------------
# tokens


def test_token_without_colon_has_value_one():
    assert one(b"1 a b c:1") == (1.0, [(b"a", 1.0), (b"b", 1.0), (b"c", 1.0)])


def test_last_colon_splits_name_and_value():
    y, feats = one(b"1 a:b:2 http://x.com/y:1 ::3 :a:0.5 d::4 e:f:g:-1")
    assert feats == [(b"a:b", 2.0), (b"http://x.com/y", 1.0), (b":", 3.0), (b":a", 0.5), (b"d:", 4.0),
                     (b"e:f:g", -1.0)]
    # the part after the last ':' is the value, even when it is not a number
    assert bad(b"1 a:b:c") == (R.BAD_VALUE, 2)


def test_colon_token_without_value_is_bad():
    # 'a::' ends in ':' : an empty value
    assert bad(b"1 x a::") == (R.EMPTY_VALUE, 4)


@pytest.mark.parametrize("val", [b"0", b"0.0", b"-0", b"+0", b"-0.0", b"0e10", b"0.000", b"00", b"1e-400",
                                 b"-1e-400"])
def test_value_zero_drops_the_feature(val):
    y, feats = one(b"1 a:1 z:" + val + b" b:2")
    assert feats == [(b"a", 1.0), (b"b", 2.0)]


@pytest.mark.parametrize("val,x", [
    (b"2.5", 2.5), (b"-3", -3.0), (b"+4", 4.0), (b"1e3", 1000.0), (b"1E+3", 1000.0), (b"2.5e-3", 0.0025),
    (b".25", 0.25), (b"7.", 7.0), (b"0.1", 0.1), (b"-1.5e-7", -1.5e-7), (b"123456.789", 123456.789),
    (b"1e9", 1e9), (b"-1e9", -1e9), (b"5e-324", 5e-324), (b"2.2250738585072014e-308", 2.2250738585072014e-308),
    (b"123456789012345", 123456789012345.0), (b"0.12345678901234", 0.12345678901234),
    (b"1234567890.12345", 1234567890.12345), (b"1234567890.123456", 1234567890.123456),
    (b"0.000000000000001", 1e-15), (b"-00000000000000000001.5", -1.5),
])
def test_non_unit_and_exponent_values(val, x):
    y, feats = one(b"1 a:" + val)
    assert feats == [(b"a", x)]
    assert feats[0][1] == float(val)


def test_names_with_invalid_utf8_are_valid():
    y, feats = one(b"1 \xff\xfe:2 \xc3\xa9t\xc3\xa9 \x80\x81\x82:0.5 caf\xe9")
    assert feats == [(b"\xff\xfe", 2.0), (b"\xc3\xa9t\xc3\xa9", 1.0), (b"\x80\x81\x82", 0.5), (b"caf\xe9", 1.0)]
    p = parse_bytes(b"1 \xff\xfe:2")
    assert p.hashes[0] == hash_name(b"\xff\xfe")


def test_ten_megabyte_line():
    n = 1_000_000
    line = b"1 " + b" ".join(b"f%d:%d" % (i, i % 7 + 1) for i in range(n))
    assert len(line) > 9_000_000
    p = parse_bytes(line + b"\n0 last\n")
    check_csr(p)
    assert p.n_samples == 2 and p.nnz == n + 1
    assert list(p.indptr) == [0, n, n + 1]
    assert np.array_equal(p.vals[:n], (np.arange(n) % 7 + 1).astype(np.float64))
    for i in (0, 1, 7, 99_999, n - 1):
        a = int(p.name_start[i])
        assert bytes(p.buf[a:a + int(p.name_len[i])]) == b"f%d" % i
        assert p.hashes[i] == hash_name(b"f%d" % i)
    assert len(set(p.hashes[:n].tolist())) == n


# ---------------------------------------------------------------------------
# bad lines


@pytest.mark.parametrize("line,reason,col", [
    (b"1 a:xyz", R.BAD_VALUE, 2),
    (b"1 b:1 a:1x", R.BAD_VALUE, 6),
    (b"1 a:1_000", R.BAD_VALUE, 2),
    (b"1 a:0x10", R.BAD_VALUE, 2),
    (b"1 a:1e", R.BAD_VALUE, 2),
    (b"1 a:.", R.BAD_VALUE, 2),
    (b"1 a:-", R.BAD_VALUE, 2),
    (b"1 a:1.2.3", R.BAD_VALUE, 2),
    (b"1 a:nan", R.NONFINITE_VALUE, 2),
    (b"1 a:NAN", R.NONFINITE_VALUE, 2),
    (b"1 a:inf", R.NONFINITE_VALUE, 2),
    (b"1 a:-inf", R.NONFINITE_VALUE, 2),
    (b"1 a:Infinity", R.NONFINITE_VALUE, 2),
    (b"1 a:1e400", R.NONFINITE_VALUE, 2),
    (b"1 a:-1e400", R.NONFINITE_VALUE, 2),
    (b"1 a:1e99999999999999999999", R.NONFINITE_VALUE, 2),
    (b"1 :5", R.EMPTY_NAME, 2),
    (b"1 b  :5", R.EMPTY_NAME, 5),
    (b"1 :", R.EMPTY_NAME, 2),
    (b"1 a:", R.EMPTY_VALUE, 2),
    (b"1 x:1 a:1:", R.EMPTY_VALUE, 6),
    (b"1 a\x00b", R.CONTROL_BYTE, 3),
    (b"1 a:1 \x00", R.CONTROL_BYTE, 6),
    (b"\x00\x01\x02", R.CONTROL_BYTE, 0),
    (b"1\x01 a", R.CONTROL_BYTE, 1),
    (b"1 a:1\x7f", R.CONTROL_BYTE, 5),
    (b"1 a:2\rb:3", R.CONTROL_BYTE, 5),      # a lone '\r' mid-line
    (b"1 a:2 \r b:3", R.CONTROL_BYTE, 6),
    (b"1 a\x0bb", R.CONTROL_BYTE, 3),          # vertical tab is not a separator
    (b"1 a\x0c", R.CONTROL_BYTE, 3),
    (b"1 a:1\r\r", R.CONTROL_BYTE, 5),
])
def test_bad_line_classes(line, reason, col):
    assert bad(line) == (reason, col)
    assert reason in parse.REASONS


def test_first_error_of_a_line_wins():
    assert bad(b"abc a:xyz \x00") == (R.BAD_LABEL, 0)
    assert bad(b"1 a:xyz :1 \x00") == (R.BAD_VALUE, 2)
    assert bad(b"1 :1 a:xyz") == (R.EMPTY_NAME, 2)


def test_bad_lines_have_line_numbers_and_do_not_leak_features():
    data = (b"1 a:1 b:2\n"            # 0
            b"1 c:1 d:2 e:xyz\n"      # 1 bad after two good features
            b"\n"                     # 2
            b"0 f:3\n"                # 3
            b"1 g:1 h:1 \x00 i\n"    # 4 bad
            b"1 j:inf k:1\n"          # 5 bad
            b"-1 l:0.5\n")            # 6
    p = parse_bytes(data)
    check_csr(p)
    assert bad_of(p) == [(1, R.BAD_VALUE, 10), (4, R.CONTROL_BYTE, 10), (5, R.NONFINITE_VALUE, 2)]
    assert samples_of(p) == [(1.0, [(b"a", 1.0), (b"b", 2.0)]), (-1.0, [(b"f", 3.0)]),
                             (-1.0, [(b"l", 0.5)])]
    assert sorted(p.hashes.tolist()) == sorted(hash_name(n) for n in (b"a", b"b", b"f", b"l"))
    assert p.n_lines == 7


def _num(x):
    return repr(float(x)).encode()


def test_bad_line_rollback_keeps_clip_count():
    p = parse_bytes(b"1 a:1e300 b:xyz\n1 c:-1e300\n1 d:%s\n" % _num(CLIP))
    assert p.n_clipped == 1
    assert samples_of(p) == [(1.0, [(b"c", -CLIP)]), (1.0, [(b"d", CLIP)])]


def test_huge_finite_values_are_clipped_and_counted():
    # (the brief said 1e9; streamfm clips at parse.VALUE_CLIP, 1e16 since b23585b)
    assert 1e9 <= CLIP < 1e30
    above = np.nextafter(CLIP, np.inf)
    p = parse_bytes(b"1 a:1e300 b:-1e300 c:%s d:%s e:%s f:1.7976931348623157e308 g:-%s h:12345\n"
                    % (_num(above), _num(CLIP), _num(-CLIP), _num(above)))
    assert samples_of(p) == [(1.0, [(b"a", CLIP), (b"b", -CLIP), (b"c", CLIP), (b"d", CLIP), (b"e", -CLIP),
                                    (b"f", CLIP), (b"g", -CLIP), (b"h", 12345.0)])]
    assert p.n_clipped == 5


# ---------------------------------------------------------------------------
# hashes and names


ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./\xff\xe9"


@pytest.mark.parametrize("form", ["plain", "value", "colon_in_name"])
def test_hashes_equal_hash_name_for_every_length(form):
    rng = random.Random(7)
    tokens, names = [], []
    for ln in range(1, 41):
        for _ in range(3):
            name = bytes(rng.choice(ALPHA) for _ in range(ln))
            if form == "colon_in_name" and ln > 1:
                c = rng.randrange(ln)
                name = name[:c] + b":" + name[c + 1:]
            tokens.append(name if form == "plain" else name + b":2.5")
            names.append(name)
    p = parse_bytes(b"1 " + b" ".join(tokens) + b"\n")
    assert bad_of(p) == []
    assert p.nnz == len(names)
    data = bytes(p.buf)
    for j, name in enumerate(names):
        a = int(p.name_start[j])
        assert data[a:a + int(p.name_len[j])] == name
        assert p.hashes[j] == hash_name(name), (j, name)
    # names that only differ in their last byte, or by length, hash apart
    assert len(set(p.hashes.tolist())) == len(set(names))


def test_hash_of_names_with_colon_at_word_boundaries():
    # the last ':' at every position 1..17 of the token (8-byte word boundaries)
    names = []
    for pos in range(1, 18):
        names.append(b"abcdefghijklmnopq"[:pos])
        names.append(b"a:cdefgh:jklmnopq"[:pos])
    p = parse_bytes(b"1 " + b" ".join(n + b":3" for n in names))
    assert [v for v in p.vals] == [3.0] * len(names)
    assert p.hashes.tolist() == [hash_name(n) for n in names]


# ---------------------------------------------------------------------------
# the exact slow path (> 19 significant digits)


HALF_ABOVE_ONE = "1.00000000000000011102230246251565404236316680908203125"   # 1 + 2**-53, a tie


@pytest.mark.parametrize("text", [
    HALF_ABOVE_ONE,                       # tie: rounds to even (1.0)
    HALF_ABOVE_ONE + "0000001",           # just above the tie
    HALF_ABOVE_ONE[:-1] + "4999999",      # just below the tie
    "0.30000000000000001665334536937734810635447502136230468750001",
    "123456789.123456789123456789",
    "-987654321.98765432109876543210",
    "1.2345678901234567890123456789e-300",
    "0.000000000000000000000000000012345678901234567890123",
    "0.12345678901234567890123",
    "9007199254740993.0000000000000000001e-10",
])
def test_long_numbers_parse_exactly(text):
    raw = text.encode()
    want = float(text)
    y, feats = one(b"1 a:" + raw)
    assert feats == [(b"a", want)]
    assert math.copysign(1, feats[0][1]) == math.copysign(1, want)
    # and as a label: only the sign matters
    y, feats = one(raw + b" b")
    assert y == (1.0 if want > 0 else -1.0)


def test_long_numbers_random_digits_parse_exactly():
    rng = random.Random(11)
    toks, want = [], []
    for _ in range(2000):
        nd = rng.randrange(20, 40)
        digits = "".join(rng.choice("0123456789") for _ in range(nd))
        digits = str(rng.randrange(1, 10)) + digits[1:]
        dot = rng.randrange(0, nd + 1)
        s = digits[:dot] + "." + digits[dot:]
        s += "e%d" % rng.randrange(-320, 9 - dot)
        if rng.random() < 0.5:
            s = "-" + s
        x = float(s)
        if x == 0.0:
            continue
        toks.append(b"f:" + s.encode())
        want.append(max(-CLIP, min(CLIP, x)))
    p = parse_bytes(b"1 " + b" ".join(toks))
    assert bad_of(p) == []
    got = p.vals.tolist()
    assert len(got) == len(want)
    mism = [(t, g, w) for t, g, w in zip(toks, got, want) if g != w]
    assert not mism, mism[:5]


def _plain_decimals(seed, count=3000):
    """Texts of plain decimals around the fast path's 15-digit limit: 1 to 18
    digits, with or without a '.' anywhere (".5", "12."), some signed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        nd = rng.randrange(1, 19)
        digits = "".join(rng.choice("0123456789") for _ in range(nd))
        dot = rng.randrange(-1, nd + 1)
        s = digits if dot < 0 else digits[:dot] + "." + digits[dot:]
        out.append(rng.choice(["", "", "-", "+"]) + s)
    return out


def test_plain_decimals_parse_exactly_everywhere():
    """The fast path (read in the token scan for a feature value, in
    parse_number for a signed value and a label) is float()'s double."""
    texts = _plain_decimals(5)
    for t in texts:
        x, status = parse.parse_number(np.frombuffer(t.encode(), np.uint8), 0, len(t))
        assert status in (parse.floatfmt.OK, parse.floatfmt.SLOW), t
        if status == parse.floatfmt.OK:
            assert x == float(t) and math.copysign(1, x) == math.copysign(1, float(t)), t
    data = b"".join(b"%s f:%s g\n" % (t.encode(), t.encode()) for t in texts)
    p = parse_bytes(data)
    assert bad_of(p) == []
    got = samples_of(p)
    assert [y for y, _ in got] == [1.0 if float(t) > 0 else -1.0 for t in texts]
    want = [[(b"f", max(-CLIP, min(CLIP, float(t)))), (b"g", 1.0)] if float(t) != 0 else [(b"g", 1.0)]
            for t in texts]
    assert [f for _, f in got] == want
    assert any(len(t.lstrip("+-").replace(".", "")) <= 15 for t in texts)
    assert any(len(t.lstrip("+-").replace(".", "")) > 15 for t in texts)


def test_parsed_rows_are_the_tables_rows():
    """rows[j] is the table's lookup of each name, across probe chains longer
    than one slot, and -1 (counted) for a name the table lacks."""
    from streamfm.table import FeatureTable, new_key

    names = [b"bias"] + [b"f%d" % i for i in range(3000)]
    arena = np.frombuffer(b"".join(names), np.uint8)
    off = np.zeros(len(names) + 1, np.int64)
    np.cumsum([len(x) for x in names], out=off[1:])
    t = FeatureTable.from_names(arena, off, len(names), key=new_key())
    assert t.probe_lengths()[0] > 2  # some rows sit slots away from their home
    rng = random.Random(2)
    lines, want = [], []
    for _ in range(400):
        toks = [rng.choice(names[1:]) if rng.random() < 0.8 else b"new%d" % rng.randrange(10 ** 6)
                for _ in range(rng.randrange(1, 12))]
        lines.append(b"1 " + b" ".join(toks))
        want += [t.lookup(x) for x in toks]
    p = parse.parse(np.frombuffer(b"\n".join(lines) + b"\n", np.uint8), None, parse.ParseBuffers(0), t)
    assert p.rows.tolist() == want
    assert p.n_unknown == sum(r < 0 for r in want) > 0


# These two cases take the slow path because the 19-digit truncation straddles
# a rounding boundary; float() then says what the number really is.

def test_long_number_that_overflows_is_a_bad_value_not_clipped():
    s = b"1797693134862315807938e287"         # > DBL_MAX + ulp/2: float() gives inf
    assert float(s) == math.inf
    assert bad(b"1 a:" + s) == (R.NONFINITE_VALUE, 2)


def test_long_label_that_overflows_is_nonfinite():
    s = b"1797693134862315807938e287"
    assert bad(s + b" a") == (R.NONFINITE_LABEL, 0)


def test_long_number_that_underflows_to_zero_drops_the_feature():
    s = b"2470328229206232720882e-345"         # < 2**-1075 (half the least subnormal)
    assert float(s) == 0.0
    y, feats = one(b"1 a:1 z:" + s + b" b:2")
    assert feats == [(b"a", 1.0), (b"b", 2.0)]


def test_slow_number_settled_in_a_block_ending_with_featureless_lines():
    # the rebuild after a dropped feature must handle samples without features
    s = b"2470328229206232720882e-345"
    p = parse_bytes(b"1 z:" + s + b"\n0 a:2\n1\n1\n")
    assert bad_of(p) == []
    assert samples_of(p) == [(1.0, []), (-1.0, [(b"a", 2.0)]), (1.0, []), (1.0, [])]


# ---------------------------------------------------------------------------
# property test against an independent implementation of the grammar

_NUM = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_SPECIAL = re.compile(rb"[+-]?(?:inf|infinity|nan)\Z", re.IGNORECASE)
_SEP = re.compile(rb"[ \t]+")


def _number(tok):
    """(status, value): 'ok', 'bad' or 'nonfinite' (Python's float on a checked token)."""
    if _SPECIAL.match(tok):
        return "nonfinite", None
    if not _NUM.match(tok):
        return "bad", None
    x = float(tok)
    if math.isinf(x):
        return "nonfinite", None
    return "ok", x


def _is_control(b):
    return (b < 32 and b != 9) or b == 127


def reference_parse(data):
    """(samples, bad, clipped) of ``data`` by the grammar of docs/design.md, "Input lines"."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    samples, bads, clipped = [], [], 0
    for li, line in enumerate(lines):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t"):
            continue
        start = len(line) - len(line.lstrip(b" \t"))
        # tokens with their columns
        toks = [(m.start(), m.group()) for m in re.finditer(rb"[^ \t]+", line)]
        err = None
        feats = []
        line_clip = 0
        for ti, (col, tok) in enumerate(toks):
            ctrl = [i for i, b in enumerate(tok) if _is_control(b)]
            if ctrl:
                err = (parse.CONTROL_BYTE, col + ctrl[0])
                break
            if ti == 0:
                st, x = _number(tok)
                if st == "bad":
                    err = (parse.BAD_LABEL, col)
                    break
                if st == "nonfinite":
                    err = (parse.NONFINITE_LABEL, col)
                    break
                y = 1.0 if x > 0 else -1.0
                continue
            c = tok.rfind(b":")
            if c < 0:
                feats.append((tok, 1.0))
                continue
            name, val = tok[:c], tok[c + 1:]
            if not name:
                err = (parse.EMPTY_NAME, col)
                break
            if not val:
                err = (parse.EMPTY_VALUE, col)
                break
            st, x = _number(val)
            if st == "bad":
                err = (parse.BAD_VALUE, col)
                break
            if st == "nonfinite":
                err = (parse.NONFINITE_VALUE, col)
                break
            if x == 0.0:
                continue
            if abs(x) > CLIP:
                x = math.copysign(CLIP, x)
                line_clip += 1
            feats.append((name, x))
        assert start == toks[0][0]
        if err:
            bads.append((li,) + err)
        else:
            samples.append((y, feats))
            clipped += line_clip
    return samples, bads, clipped


_name_bytes = st.binary(min_size=0, max_size=12).map(
    lambda b: bytes(c for c in b if c > 32 and c != 127 and c != 58))
_name = st.one_of(
    st.sampled_from([b"a", b"b", b"user_1", b"f12_345", b"http://x.com/y", b"\xff\xfe", b"\xc3\xa9",
                     b"a:b", b":", b"::x", b"bias", b"x" * 17, b"inf", b"1"]),
    _name_bytes,
    st.lists(st.sampled_from([b"a", b"Z", b"0", b":", b"/", b"\xff", b"_"]), min_size=1, max_size=20).map(b"".join),
)
_good_num = st.one_of(
    st.integers(-10 ** 12, 10 ** 12).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda x: ("%.6g" % x).encode()),
    st.sampled_from([b"0", b"-0", b"+0", b"0.0", b"1", b"-1", b"1.", b".5", b"+.5e1", b"1e-400", b"1E+2",
                     b"1e300", b"-1e300", b"1e9", b"1000000000.5", b"00012", b"1e0",
                     HALF_ABOVE_ONE.encode(), b"12345678901234567890123", b"0.1000000000000000000000001",
                     b"1e16", b"-2e16", b"10000000000000001", b"9999999999999999", b"999999999999999",
                     b"0.000000000000001", b"1234567890.123456", b"-.000123"]),
    st.tuples(st.integers(1, 9), st.text("0123456789", min_size=0, max_size=30), st.integers(-330, 290)).map(
        lambda t: ("%d.%se%d" % t).encode()),
)
_bad_num = st.sampled_from([b"", b"x", b"abc", b"nan", b"-nan", b"inf", b"+Infinity", b"1e400", b"-1e999", b"1_0",
                            b"0x1f", b"1e", b"e5", b".", b"-", b"+", b"1.2.3", b"--1", b"1e+", b"infinit",
                            b"\xff", b"1:2"])
_control = st.sampled_from([b"\x00", b"\x01", b"\x1f", b"\x7f", b"\r", b"\x0b", b"\x0c", b"\x1b"])


@st.composite
def _token(draw, valid=True):
    kinds = ["plain", "pair", "pair", "pair"] if valid else ["badval", "badval", "control"]
    kind = draw(st.sampled_from(kinds))
    name = draw(_name)
    if kind == "plain":
        tok = name
    elif kind == "pair":
        tok = name + b":" + draw(_good_num)
    elif kind == "badval":
        tok = name + b":" + draw(_bad_num)
    else:
        tok = name + b":" + draw(_good_num)
        i = draw(st.integers(0, len(tok)))
        tok = tok[:i] + draw(_control) + tok[i:]
    return tok or b"q"


_sep = st.sampled_from([b" ", b"\t", b"  ", b" \t ", b"\t\t"])
_blank = st.sampled_from([b"", b" ", b"\t", b" \t "])


@st.composite
def _line(draw):
    kind = draw(st.sampled_from(["sample"] * 6 + ["mixed"] * 4 + ["empty", "blank", "badlabel", "garbage"]))
    if kind == "empty":
        return b""
    if kind == "blank":
        return draw(_blank)
    if kind == "badlabel":
        label = draw(st.one_of(_bad_num.filter(bool), _token(), _token(valid=False)))
    else:
        label = draw(st.one_of(_good_num, st.sampled_from([b"1", b"0", b"-1"])))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\n", b"")))
    toks = draw(st.lists(_token(), max_size=8))
    if kind == "mixed":
        # one invalid token among valid ones, so that it decides the line's fate
        toks.insert(draw(st.integers(0, len(toks))), draw(_token(valid=False)))
    out = draw(_blank) + label
    for t in toks:
        out += draw(_sep) + t
    out += draw(_blank)
    if draw(st.booleans()) and draw(st.booleans()):
        out += b"\r"
    return out


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_line(), min_size=1, max_size=12), st.booleans())
def test_parser_matches_reference_grammar(lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    want_samples, want_bad, want_clipped = reference_parse(data)
    p = parse_bytes(data)
    check_csr(p)
    got_bad = bad_of(p)
    assert len(got_bad) == len(want_bad)
    assert got_bad == want_bad
    got = samples_of(p)
    assert got == want_samples
    assert p.n_clipped == want_clipped
    for j in range(p.nnz):
        a = int(p.name_start[j])
        assert p.hashes[j] == hash_name(data[a:a + int(p.name_len[j])])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_line(), min_size=1, max_size=40), st.sampled_from([1, 2]))
def test_trainer_survives_random_lines_and_counts_skips_exactly(lines, cores):
    """The whole trainer (reader, parser, table, update) on random valid and
    invalid lines: never crashes, skips exactly the bad lines, trains the rest,
    and keeps every number of the model finite."""
    import io

    from streamfm.model import Model
    from streamfm.train import Options, train_stream

    data = b"\n".join(lines) + b"\n"
    want_samples, want_bad, _ = reference_parse(data)
    m = Model(3, np.float64, seed=5)
    s = train_stream(m, io.BytesIO(data), Options(quiet=True, cores=cores, block_size=64),
                     lambda msg: None)
    assert s.bad == len(want_bad)
    assert s.samples + s.overflow_samples == len(want_samples)
    assert m.n_rows - 1 == len({name for _, feats in want_samples for name, _ in feats})
    assert np.isfinite(m.params[: m.n_rows]).all()


@pytest.mark.parametrize("line,col", [
    (b"u a | P Q", 8),      # something after the item key: its column
    (b"u a |", 5),          # no item key: where it should start
    (b"u a | ", 6),
    (b"u a | \x01P", 6),     # a control byte where the key should be
    (b"u a | P\x01", 7),     # a control byte right after the key: its column
    (b"u a ||", 6),         # '||' is a feature name: the line ends with no '| ITEM_KEY'
    (b"u a | | P", 8),      # a second '|' follows the item key '|'
    (b"u a b", 5),          # no '|' at all: the line's end
])
def test_click_line_errors_point_at_the_cause(line, col):
    p = parse.parse(np.frombuffer(line + b"\n", np.uint8), None, parse.ParseBuffers(0), None, mode=parse.CLICK)
    assert p.n_samples == 0
    assert bad_of(p) == [(0, parse.BAD_CLICK, col)]


def test_click_line_keys():
    data = b"u a b | P\nu | P\r\nu |\tP\t\r\n"
    p = parse.parse(np.frombuffer(data, np.uint8), None, parse.ParseBuffers(0), None, mode=parse.CLICK)
    assert bad_of(p) == []
    assert [(parse.key_bytes(p, s), parse.key_bytes(p, s, item=True)) for s in range(p.n_samples)] == \
        [(b"u", b"P")] * 3
    assert p.indptr.tolist() == [0, 2, 2, 2]
