"""One featurizer: the same raw records give the same bytes offline (fm_sample rank
on a log file) and online (Featurizer on the request's Python dicts)."""

import collections

import pytest

from sample_helpers import SPEC, fm_sample, make_dir, random_rows, requests_of, write_log
from streamfm.sample import Featurizer



def learning_spec(rows):
    """SPEC with learned age buckets, and a min_count on iid that some ids miss."""
    counts = sorted(collections.Counter(r["iid"] for r in rows).values())
    return SPEC.replace("edges = [18, 25, 35, 50]", "bins = 3").replace(
        'name = "iid"\nsource = "item.iid"\nkind = "categorical"',
        'name = "iid"\nsource = "item.iid"\nkind = "categorical"\nmin_count = %d' % counts[len(counts) // 2])


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_offline_and_online_features_are_byte_identical(tmp_path, fmt):
    rows = random_rows(300, seed=8)
    spec = make_dir(tmp_path, learning_spec(rows))
    log = tmp_path / ("log." + fmt)
    write_log(log, rows, fmt)
    frozen = tmp_path / "frozen.json"
    r = fm_sample("fit", "--spec", spec, "--input", log, "-o", frozen, "-q")
    assert r.returncode == 0, r.stderr
    r = fm_sample("rank", "--spec", frozen, "--input", log, "--negatives", "all", "-q")
    assert r.returncode == 0, r.stderr
    offline = r.stdout
    fz = Featurizer(str(frozen))
    online = []
    for request, labels in requests_of(log, fmt):
        feats = fz.featurize(request)
        online += [b"%d %s\n" % (y, f) for y, f in zip(labels, feats)]
        assert fz.lines(request, labels) == b"".join(online[-len(labels):])
    assert len(online) == offline.count(b"\n") > 500
    assert b"".join(online) == offline
    # the run exercised what it should: rare ids, learned buckets, crosses, overlaps, escapes
    for token in (b"iid=__rare__", b"age=2", b"age_x_genre=", b" ov=", b"promo=new%20arrival", b"uid=u%2010",
                  b"iid=i%258", b"iid=i1"):
        assert token in offline, token
