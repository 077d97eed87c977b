"""fm_sample spec: validation messages, frozen files and their fingerprint."""

import importlib.metadata
import json
import os

import pytest

from sample_helpers import SPEC, fm_sample, make_dir
from streamfm.sample.spec import SpecError, load_spec, spec_from_dict

BASE = """\
[user]
key = "uid"
[item]
key = "iid"
"""


def spec_error(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(str(p))
    msg = str(e.value)
    assert msg.startswith(str(p) + ": "), msg  # every message names the file
    return msg


@pytest.mark.parametrize("body, expected", [
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "bukcet"\nedges = [1]\n',
     "feature 'a': kind 'bukcet' is not one of categorical, tags, history, bucket, numeric, cross, overlap "
     "(did you mean 'bucket'?)"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "bucket"\nbin = 4\n',
     "feature 'a': unknown key 'bin' (did you mean 'bins'?)"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "bucket"\nbins = 4\nedges = [1, 2]\n',
     "feature 'a': give exactly one of edges = [..] (fixed) or bins = N"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "bucket"\nedges = [1, 3, 2]\n',
     "feature 'a': edges must increase strictly, got [1, 3, 2]"),
    ('[[feature]]\nname = "a"\nkind = "categorical"\n',
     "feature 'a': 'source' (user.ATTRIBUTE or item.ATTRIBUTE) is required"),
    ('[[feature]]\nname = "a"\nsource = "ctx.a"\nkind = "categorical"\n',
     "feature 'a': source 'ctx.a' must start with 'user.' or 'item.'"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n'
     '[[feature]]\nname = "x"\nkind = "cross"\nof = ["a", "b"]\n',
     "feature 'x': crosses 'b', which is not defined"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "numeric"\n'
     '[[feature]]\nname = "b"\nsource = "item.b"\nkind = "categorical"\n'
     '[[feature]]\nname = "x"\nkind = "cross"\nof = ["a", "b"]\n',
     "feature 'x': cannot cross 'a' (kind numeric)"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n'
     '[[feature]]\nname = "x"\nkind = "cross"\nof = ["a", "a", "a", "a"]\n',
     "feature 'x': 'of' must list 2 or 3 feature names"),
    ('[[feature]]\nname = "o"\nkind = "overlap"\nuser = "item.tags"\nitem = "item.tags"\n',
     "feature 'o' user: source 'item.tags' must start with 'user.'"),
    ('[[feature]]\nname = "o"\nkind = "overlap"\nuser = "user.t"\nitem = "item.t"\nmeasure = "jaccard"\n',
     "feature 'o': a jaccard overlap needs edges = [..], bins = N or numeric = true"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\nprefix = "a b"\n',
     "feature 'a': prefix 'a b' may not contain white space"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\nprefix = "a=b"\n',
     "may not contain white space, ':', '%' or the separator '='"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n'
     '[[feature]]\nname = "a"\nsource = "user.b"\nkind = "categorical"\n',
     "feature 'a' is defined twice (#1 and #2)"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n'
     '[[feature]]\nname = "b"\nsource = "user.b"\nkind = "categorical"\nprefix = "a"\n',
     "features 'a' and 'b' share the prefix 'a'"),
    ('[[feature]]\nname = "h"\nsource = "user.h"\nkind = "history"\n',
     "feature 'h': 'last' (how many of the most recent ids) is required"),
    ('[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\nmin_count = 0\n',
     "feature 'a': 'min_count' must be an integer >= 1, got 0"),
    ('[log]\nfields = { u = "user.uid" }\n[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n',
     "[log.fields] u: user.uid is the user key, which comes from [log] user"),
    ('', "no [[feature]] tables: a spec needs at least one feature"),
])
def test_spec_errors_name_the_problem(tmp_path, body, expected):
    msg = spec_error(tmp_path, BASE + body)
    assert expected in msg, msg


def test_spec_errors_outside_features(tmp_path):
    assert "[user] is required" in spec_error(tmp_path, '[item]\nkey = "i"\n')
    assert "separator must be one printable byte" in spec_error(tmp_path, 'separator = "::"\n' + BASE)
    for v in ("nan", "inf", "-inf", '"1"'):
        assert "[log]: click_min must be a finite number, got " in spec_error(
            tmp_path, BASE.replace("[item]", "[log]\nclick_min = %s\n[item]" % v, 1) +
            '[[feature]]\nname = "a"\nsource = "user.a"\nkind = "categorical"\n'), v
    msg = spec_error(tmp_path, BASE + "[[feature]\n")
    assert "not valid TOML" in msg
    assert "the spec: unknown key 'features' (did you mean 'feature'?)" in spec_error(
        tmp_path, BASE + '[[features]]\nname = "a"\n')


def test_defaults_are_filled_in():
    s = spec_from_dict({"user": {"key": "u"}, "item": {"key": "i"},
                        "feature": [{"name": "t", "source": "item.tags", "kind": "tags"},
                                    {"name": "o", "kind": "overlap", "user": "user.t", "item": "item.tags"}]})
    t, o = s.features
    assert (t["prefix"], t["sep"], t["emit"], t["min_count"]) == ("t", "|", True, None)
    assert (o["measure"], o["max"], o["sep"]) == ("count", 10, "|")
    assert s.data["separator"] == "=" and s.data["rare"] == "__rare__" and s.data["cross_sep"] == "&"
    assert s.data["log"]["user"] == "u" and s.data["log"]["item"] == "i"


def test_a_spec_that_learns_must_be_fitted_first(tmp_path):
    path = make_dir(tmp_path, SPEC.replace("edges = [18, 25, 35, 50]", "bins = 3"))
    r = fm_sample("rank", "--spec", path, "--input", os.devnull)
    assert r.returncode == 1
    assert b"features 'age' learn edges from data: run 'fm_sample fit --spec" in r.stderr


def test_tomli_only_for_old_pythons():
    reqs = importlib.metadata.requires("streamfm")
    tomli = [r for r in reqs if r.startswith("tomli")]
    assert tomli and "python_version < \"3.11\"" in tomli[0].replace("'", '"'), reqs


LOG = "req\tpos\tuid\tiid\tclick\thour\n" + "".join(
    "r%d\t%d\tu%d\ti%d\t%d\t%d\n" % (k // 3, k % 3, 1 + k % 3, 1 + k % 4, k % 5 == 0, k % 24) for k in range(300))


def fitted(tmp_path, spec_text, name="frozen.json"):
    path = make_dir(tmp_path, spec_text)
    log = tmp_path / "log.tsv"
    log.write_text(LOG)
    out = tmp_path / name
    r = fm_sample("fit", "--spec", path, "--input", log, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    return out


LEARN = SPEC.replace("edges = [18, 25, 35, 50]", "bins = 3").replace(
    'name = "iid"\nsource = "item.iid"\nkind = "categorical"', 'name = "iid"\nsource = "item.iid"\n'
    'kind = "categorical"\nmin_count = 80')


def test_fingerprint_is_stable_and_follows_the_spec(tmp_path):
    a = fitted(tmp_path / "a", LEARN)
    b = fitted(tmp_path / "b", LEARN)
    fa, fb = json.loads(a.read_text()), json.loads(b.read_text())
    assert fa["fingerprint"] == fb["fingerprint"]
    assert fa["learned"] == fb["learned"]
    assert load_spec(str(a)).fingerprint == fa["fingerprint"]
    for change in (LEARN.replace("bins = 3", "bins = 4"),
                   LEARN.replace("min_count = 80", "min_count = 81"),
                   LEARN.replace('name = "price"\nsource = "item.price"\nkind = "numeric"',
                                 'name = "price"\nsource = "item.price"\nkind = "numeric"\ntransform = "log1p"'),
                   'separator = "/"\n' + LEARN):
        fc = json.loads(fitted(tmp_path / "d", change, "d.json").read_text())
        assert fc["fingerprint"] != fa["fingerprint"], change[:40]


def test_fingerprint_ignores_where_the_data_comes_from(tmp_path):
    a = fitted(tmp_path / "a", LEARN)
    fa = json.loads(a.read_text())
    d = tmp_path / "b"
    path = make_dir(d, LEARN.replace('request = "req"', 'request = "rq"'))
    (d / "log.tsv").write_text(LOG.replace("req\t", "rq\t", 1))
    r = fm_sample("fit", "--spec", path, "--input", d / "log.tsv", "-o", d / "f.json", "-q")
    assert r.returncode == 0, r.stderr
    fb = json.loads((d / "f.json").read_text())
    assert fb["fingerprint"] == fa["fingerprint"]
    assert fb["spec"]["log"]["request"] == "rq"


def test_edited_frozen_spec_is_refused(tmp_path):
    a = fitted(tmp_path, LEARN)
    obj = json.loads(a.read_text())
    obj["learned"]["age"]["edges"][0] -= 1
    a.write_text(json.dumps(obj))
    with pytest.raises(SpecError, match="does not match its content"):
        load_spec(str(a))
    a.write_text("{\"format\": \"something else\"}")
    with pytest.raises(SpecError, match="not a frozen fm_sample spec"):
        load_spec(str(a))
