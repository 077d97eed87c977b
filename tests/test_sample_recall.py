"""fm_sample recall: fm_recall's catalog, users and clicks files, and the mixed-feature check."""

import os
import re
import sys

from helpers import run
from sample_helpers import SPEC, fm_sample, make_dir, random_rows, write_log

FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")


def test_recall_refuses_user_item_features(tmp_path):
    path = make_dir(tmp_path)
    write_log(tmp_path / "log.tsv", random_rows(5), "tsv")
    r = fm_sample("recall", "--spec", path, "--input", tmp_path / "log.tsv", "--catalog", tmp_path / "c.txt",
                  "--clicks", tmp_path / "k.txt")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "recall needs user and item features apart" in err
    assert "'age_x_genre' (cross of user.age x item.genres)" in err
    assert "'ov' (overlap of user.top and item.genres)" in err
    assert not (tmp_path / "c.txt").exists() and not (tmp_path / "k.txt").exists()


# the cross now reads user attributes only (its name stays), the overlap is not written
RECALL_SPEC = SPEC.replace('of = ["age", "genre"]', 'of = ["age", "hour"]').replace(
    'name = "ov"\nkind = "overlap"', 'name = "ov"\nkind = "overlap"\nemit = false')


def test_recall_files_feed_fm_recall(tmp_path):
    path = make_dir(tmp_path, RECALL_SPEC)
    rows = random_rows(200, seed=3)
    write_log(tmp_path / "log.tsv", rows, "tsv")
    out = {k: tmp_path / (k + ".txt") for k in ("catalog", "clicks", "users")}
    r = fm_sample("recall", "--spec", path, "--input", tmp_path / "log.tsv", "--catalog", out["catalog"],
                  "--clicks", out["clicks"], "--users-out", out["users"])
    assert r.returncode == 0, r.stderr
    catalog = out["catalog"].read_text().splitlines()
    assert catalog == ["i1 iid=i1 genre=Action genre=Comedy price:9.5",
                       "i2 iid=i2 genre=Drama genre=Action",
                       "i3 iid=i3 price:12",
                       "i%204 iid=i%204 genre=Sci%3AFi genre=Drama price:1e-07"]
    assert out["users"].read_text().splitlines() == [
        "u1 uid=u1 age=1 hist=i2 hist=i3", "u2 uid=u2 age=3", "u3 uid=u3 age=0 hist=i3"]
    clicks = out["clicks"].read_text().splitlines()
    want = []
    ages = {"u1": "1", "u2": "3", "u3": "0"}
    hists = {"u1": " hist=i2 hist=i3", "u3": " hist=i3"}
    for row in rows:
        if row["click"] != "1":
            continue
        u = row["uid"].replace("%", "%25").replace(" ", "%20")
        feats = "uid=" + u
        if row["uid"] in ages:
            feats += " age=" + ages[row["uid"]]
        if row["hour"]:
            feats += " hour=" + row["hour"]
        feats += hists.get(row["uid"], "")
        if row["uid"] in ages and row["hour"]:
            feats += " age_x_genre=%s&%s" % (ages[row["uid"]], row["hour"])
        want.append("%s %s | %s" % (u, feats, row["iid"].replace("%", "%25").replace(" ", "%20")))
    assert clicks == want
    assert b"clicks are on items not in the catalog" in r.stderr
    r = run(FM_RECALL, "train", "-m", tmp_path / "m.txt", "-dim", "1,1,2", "--items", out["catalog"], "--input",
            out["clicks"], "--seed", "1", timeout=900)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    in_catalog = sum(1 for row in rows if row["click"] == "1" and row["iid"] in ("i1", "i2", "i3", "i 4"))
    assert re.search(r"bad lines skipped +0\n", err), err
    # every click on a catalog item reaches the trainer (here each user clicked
    # all four items, so none has a negative: own clicks are never negatives)
    assert re.search(r"clicks x passes +%d x " % in_catalog, err), err
