"""The featurizer on hand-made records (exact lines) and against a plain-Python reference."""

import random

import numpy as np
import pytest

from sample_helpers import SPEC, make_dir, ref_features
from streamfm.sample import Featurizer
from streamfm.sample.spec import load_spec, spec_from_dict

U1 = b"uid=u1 age=1 hour=13 hist=i2 hist=i3"


def test_hand_made_request(tmp_path):
    fz = Featurizer(make_dir(tmp_path))
    req = {"user": {"uid": "u1", "hour": 13},
           "items": [{"iid": "i1"}, {"iid": "i2", "promo": "x y"}, {"iid": "i3"}, {"iid": "i 4"},
                     {"iid": "nope", "genres": ["Drama"]}]}
    got = fz.featurize(req)
    assert got == [
        U1 + b" iid=i1 genre=Action genre=Comedy price:9.5 age_x_genre=1&Action age_x_genre=1&Comedy ov=1",
        U1 + b" iid=i2 genre=Drama genre=Action promo=x%20y age_x_genre=1&Drama age_x_genre=1&Action ov=2",
        U1 + b" iid=i3 price:12",
        U1 + b" iid=i%204 genre=Sci%3AFi genre=Drama price:1e-07 age_x_genre=1&Sci%3AFi age_x_genre=1&Drama ov=1",
        U1 + b" iid=nope genre=Drama age_x_genre=1&Drama ov=1",
    ]
    assert fz.lines(req, [1, 0, 0, 0, 0]).split(b"\n")[:2] == [b"1 " + got[0], b"0 " + got[1]]


def test_request_attributes_override_the_profile(tmp_path):
    fz = Featurizer(make_dir(tmp_path))
    got = fz.featurize({"user": {"uid": "u2", "age": 30, "hist": ["a", "b", "a", "c"], "top": None},
                        "items": [{"iid": "i1", "genres": "Comedy|Comedy|Horror", "price": None}]})
    # u2's profile: age 40, no history, top Comedy; the request's values win, None falls back to the profile
    assert got == [b"uid=u2 age=2 hist=a hist=c iid=i1 genre=Comedy genre=Horror price:9.5 "
                   b"age_x_genre=2&Comedy age_x_genre=2&Horror ov=1"]
    # an empty list is a value (no tags), not a missing one
    got = fz.featurize({"user": {"uid": "u1", "top": []}, "items": [{"iid": "i1"}]})
    assert not got[0].endswith(b"ov=1") and b" ov=" not in got[0]


def test_no_profile_and_unknown_keys(tmp_path):
    fz = Featurizer(make_dir(tmp_path), load_tables=False)
    assert fz.featurize({"user": {"uid": "u1"}, "items": [{"iid": 7}, {}]}) == [b"uid=u1 iid=7", b"uid=u1"]
    fz = Featurizer(make_dir(tmp_path))
    assert fz.featurize({"user": {}, "items": [{"iid": "zz"}]}) == [b"iid=zz"]
    assert fz.featurize({"user": {"uid": "u1"}, "items": []}) == []


def test_values_become_text_one_way(tmp_path):
    fz = Featurizer(make_dir(tmp_path), load_tables=False)
    vals = [("a b", b"a%20b"), ("x:y%z", b"x%3Ay%25z"), ("tab\there", b"tab%09here"), ("line\nbreak", b"line%0Abreak"),
            ("caf\u00e9", "caf\u00e9".encode()), (3, b"3"), (3.0, b"3"), (0.1, b"0.1"), (True, b"true"),
            (-0, b"0"), (2 ** 70, str(2 ** 70).encode()), (1e300, b"1e+300")]
    for v, want in vals:
        assert fz.featurize({"user": {}, "items": [{"iid": v}]}) == [b"iid=" + want], v


def test_bad_values_online(tmp_path):
    fz = Featurizer(make_dir(tmp_path))
    with pytest.raises(ValueError, match="user.age is not a number"):
        fz.featurize({"user": {"uid": "u1", "age": "old"}, "items": [{"iid": "i1"}]})
    with pytest.raises(ValueError, match=r"items\[1\]: item.price is NaN or infinite"):
        fz.featurize({"user": {}, "items": [{"iid": "i1"}, {"price": float("inf")}]})
    with pytest.raises(ValueError, match="item.promo: a list where one value is expected"):
        fz.featurize({"user": {}, "items": [{"promo": ["a", "b"]}]})
    with pytest.raises(ValueError, match="user.hist: a list inside a list has no text form"):
        fz.featurize({"user": {"hist": [["a"]]}, "items": [{}]})


MORE = """\
separator = "/"
cross_sep = "^"
rare = "RARE"
[user]
key = "u"
[item]
key = "i"

[[feature]]
name = "a"
source = "user.a"
kind = "categorical"
emit = false

[[feature]]
name = "b"
source = "user.b"
kind = "tags"
sep = ","
min_count = 2
prefix = "B"

[[feature]]
name = "c"
source = "item.c"
kind = "categorical"
min_count = 2

[[feature]]
name = "abc"
kind = "cross"
of = ["a", "b", "c"]

[[feature]]
name = "jac"
kind = "overlap"
user = "user.b"
item = "item.t"
sep = ","
measure = "jaccard"
edges = [0.2, 0.5]

[[feature]]
name = "jnum"
kind = "overlap"
user = "user.b"
item = "item.t"
sep = ","
measure = "jaccard"
numeric = true

[[feature]]
name = "cnt"
kind = "overlap"
user = "user.b"
item = "item.t"
sep = ","
max = 2
"""


def more_spec():
    import tomllib

    s = spec_from_dict(tomllib.loads(MORE))
    s.learned = {"b": {"kept": ["x", "y", "z%20w"]}, "c": {"kept": ["c1"]}}
    return s


def test_min_count_crosses_and_overlaps_exact():
    fz = Featurizer(more_spec(), load_tables=False)
    got = fz.featurize({"user": {"a": "A", "b": "x,y,q,z w,x"},
                        "items": [{"c": "c1", "t": "x,y,z w,v"}, {"c": "c2", "t": "q"}, {"t": ""}]})
    # b: q is rare; the cross of a (not emitted itself) x b x c; overlaps use the raw tags:
    # item 1: {x,y,q,z w} & {x,y,z w,v} = 3, union 5 -> 0.6 (bucket 2), capped count 2
    assert got[0] == (b"B/x B/y B/RARE B/z%20w c/c1 abc/A^x^c1 abc/A^y^c1 abc/A^RARE^c1 abc/A^z%20w^c1 "
                      b"jac/2 jnum:0.6 cnt/2")
    # item 2: c2 is rare; overlap {q}: 1 of 4 -> 0.25 (bucket 1), count 1
    assert got[1] == (b"B/x B/y B/RARE B/z%20w c/RARE abc/A^x^RARE abc/A^y^RARE abc/A^RARE^RARE abc/A^z%20w^RARE "
                      b"jac/1 jnum:0.25 cnt/1")
    # item 3: no c, empty tag list: no cross, no overlap
    assert got[2] == b"B/x B/y B/RARE B/z%20w"


def test_bucket_edges_are_left_closed(tmp_path):
    fz = Featurizer(make_dir(tmp_path), load_tables=False)
    ages = [(17.999, b"0"), (18, b"1"), ("25", b"2"), (" 34.5 ", b"2"), (50, b"4"), (-1e9, b"0")]
    for a, want in ages:
        assert fz.featurize({"user": {"age": a}, "items": [{}]}) == [b"age=" + want], a


ALPHABET = ["a", "b", "c", "x y", "k:v", "%", "\u00e9", "A|B", "7", "3.5", ""]


def rand_value(rng, kind):
    r = rng.random()
    if r < 0.15:
        return None
    if kind == "num":
        return rng.choice([1, 2.5, "7", " 3 ", -4, 0, 1e-9, 12345678.25, "0.1"])
    if kind == "list" and r < 0.6:
        return [rng.choice(ALPHABET + [1, 2.0]) for _ in range(rng.randint(0, 6))]
    return "|".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4))) if kind == "list" else \
        rng.choice(ALPHABET[:-1] + [5, 5.5, True])


REF_SPEC = """\
[user]
key = "u"
[item]
key = "i"

[[feature]]
name = "u"
source = "user.u"
kind = "categorical"
[[feature]]
name = "ut"
source = "user.ut"
kind = "tags"
[[feature]]
name = "uh"
source = "user.uh"
kind = "history"
last = 3
min_count = 1
[[feature]]
name = "un"
source = "user.un"
kind = "bucket"
edges = [0, 2, 3.5, 100]
[[feature]]
name = "it"
source = "item.it"
kind = "tags"
min_count = 1
[[feature]]
name = "ic"
source = "item.ic"
kind = "categorical"
[[feature]]
name = "inum"
source = "item.inum"
kind = "numeric"
transform = "log1p"
[[feature]]
name = "x2"
kind = "cross"
of = ["un", "it"]
[[feature]]
name = "x3"
kind = "cross"
of = ["u", "ic", "ut"]
[[feature]]
name = "ov"
kind = "overlap"
user = "user.ut"
item = "item.it"
measure = "jaccard"
edges = [0.1, 0.3, 0.6]
[[feature]]
name = "oc"
kind = "overlap"
user = "user.uh"
item = "item.it"
"""


def test_against_the_reference_on_random_records(tmp_path):
    import tomllib

    spec = spec_from_dict(tomllib.loads(REF_SPEC))
    spec.learned = {"uh": {"kept": ["a", "b", "x%20y", "7", "A|B", "\u00e9"]},
                    "it": {"kept": ["a", "c", "k%3Av", "%25", "1", "2"]}}
    fz = Featurizer(spec, load_tables=False)
    rng = random.Random(5)
    checked = 0
    for _ in range(300):
        user = {"u": rand_value(rng, "cat"), "ut": rand_value(rng, "list"), "uh": rand_value(rng, "list"),
                "un": rand_value(rng, "num")}
        items = [{"it": rand_value(rng, "list"), "ic": rand_value(rng, "cat"), "inum": rand_value(rng, "num")}
                 for _ in range(rng.randint(1, 4))]
        got = fz.featurize({"user": user, "items": items})
        for it, line in zip(items, got):
            want = b" ".join(ref_features(spec.data, user, it, spec.learned))
            assert line == want, (user, it)
            checked += 1
    assert checked > 500


def test_long_tag_lists_against_the_reference():
    # thousands of tags a record: encode's duplicate check hashes them past a few (it scanned every
    # earlier tag, 186 s for 300,000); the output is the reference's, first occurrence first, and the
    # rare value once however many ids map to it. Records of many sizes reuse and grow its table.
    import tomllib

    spec = spec_from_dict(tomllib.loads(REF_SPEC))
    spec.learned = {"uh": {"kept": ["v%d" % i for i in range(0, 3000, 7)]},
                    "it": {"kept": ["v%d" % i for i in range(0, 3000, 3)]}}
    fz = Featurizer(spec, load_tables=False)
    rng = random.Random(11)
    for n in (0, 1, 15, 16, 17, 18, 40, 300, 5000, 20, 2500, 17):
        vocab = max(1, n // 2)
        user = {"u": "x", "ut": "|".join("v%d" % rng.randrange(vocab) for _ in range(n)),
                "uh": ["v%d" % rng.randrange(vocab) for _ in range(n)]}
        items = [{"it": ["v%d" % rng.randrange(3 * vocab) for _ in range(n)] + ["v0", "v%d" % (vocab - 1)]},
                 {"it": ["same"] * n}]
        got = fz.featurize({"user": user, "items": items})
        for it, line in zip(items, got):
            assert line == b" ".join(ref_features(spec.data, user, it, spec.learned)), n


def test_profile_tables_against_the_reference(tmp_path):
    path = make_dir(tmp_path)
    spec = load_spec(path)
    fz = Featurizer(spec)
    from sample_helpers import ITEMS, USERS

    for u in USERS + [{"uid": "nobody"}]:
        for it in ITEMS + [{"iid": "gone"}]:
            req_u = {"uid": u["uid"], "hour": 5}
            got = fz.featurize({"user": req_u, "items": [{"iid": it["iid"]}]})[0]
            want = b" ".join(ref_features(spec.data, dict(u, hour=5), it))
            assert got == want, (u, it)


def test_profile_table_key_column_is_also_an_attribute(tmp_path):
    # the table's key column 'id' is the user key (uid) and, read by name, the attribute user.id
    (tmp_path / "users.tsv").write_text("age\tid\n30\tu1\n41\tu2\n")
    (tmp_path / "spec.toml").write_text(
        '[user]\nkey = "uid"\ntable = { path = "users.tsv", key = "id" }\n[item]\nkey = "iid"\n'
        '[[feature]]\nname = "uid"\nsource = "user.uid"\nkind = "categorical"\n'
        '[[feature]]\nname = "rawid"\nsource = "user.id"\nkind = "categorical"\n'
        '[[feature]]\nname = "age"\nsource = "user.age"\nkind = "categorical"\n')
    fz = Featurizer(str(tmp_path / "spec.toml"))
    assert fz.profiles.tables[0].n == 2
    assert fz.featurize({"user": {"uid": "u2"}, "items": [{"iid": "i"}]}) == [b"uid=u2 rawid=u2 age=41"]


def test_a_one_element_list_key_joins_its_profile_as_offline(tmp_path):
    # a JSON-lines log's key ["u1"] is one value (logs.impressions) and joins u1's row; so does the request's
    fz = Featurizer(make_dir(tmp_path))
    whole = fz.featurize({"user": {"uid": "u1"}, "items": [{"iid": "i1"}]})
    assert whole == [U1.replace(b" hour=13", b"") + b" iid=i1 genre=Action genre=Comedy price:9.5 "
                     b"age_x_genre=1&Action age_x_genre=1&Comedy ov=1"]
    assert fz.featurize({"user": {"uid": ["u1"]}, "items": [{"iid": ("i1",)}]}) == whole
    assert fz.featurize({"user": {"uid": ["u1", None]}, "items": [{"iid": np.array(["i1"])}]}) == whole
    # no value: no profile row (offline such a record is bad); two values are an error
    assert fz.featurize({"user": {"uid": []}, "items": [{"price": 3}]}) == [b"price:3"]
    with pytest.raises(ValueError, match=r"items\[0\]: item.iid: a list where one value is expected"):
        fz.featurize({"user": {}, "items": [{"iid": ["i1", "i2"]}]})
