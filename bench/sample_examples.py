#!/usr/bin/env python3
"""fm_sample examples: a MovieLens-100k feature ablation, and skip-above vs all negatives.

    python bench/sample_examples.py               # both parts
    python bench/sample_examples.py --part ml     # (a) MovieLens 100k ablation
    python bench/sample_examples.py --part skip   # (b) skip-above on a request-grouped synthetic log

(a) MovieLens 100k, read from the recbole==1.2.1 wheel (bench/bench_recall.py
downloads it with pip into bench/data/). Every rating is an exposure and a
rating >= 4 a click; each user's last 20% of ratings (by time) are the test
set, both logs in time order. A request is a user's ratings of one day. Profile tables:
users (age, gender, occupation, zip prefix) and movies (release year,
genres, and their click-through rate in the training period, a posterior
statistic). Inline log fields, computed from the past only: the user's last
10 clicked movies (history) and their 3 most clicked genres. Each feature
group is added in turn; for each spec the script runs fm_sample fit and rank
on the training log and rank on the test log through the console scripts,
trains fm_train -dim 1,1,0 (LR) and -dim 1,1,8 (one pass, in time order,
alphaFM's default hyper-parameters) and scores the test lines with
fm_predict: test logloss and AUC.

(b) A synthetic shop whose logging policy always ranks half of the items
("new" items) in the bottom half of a 10-slot list. Users examine the list
top-down (cascade): an examined item is clicked with its attraction
probability, after a click the user goes on with probability 0.6, after a
pass with 0.85. With --negatives all, items left unexamined below the last
click count as negatives, and new items collect them; skip-above keeps only
the negatives the user saw. Models are compared on relevance: a test set of
random (user, item) pairs whose label is the attraction itself (no position
effect), AUC over all items and over new items.
"""

import argparse
import collections
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
OUT = os.path.join(HERE, "out", "sample_examples")
BIN = os.path.dirname(sys.executable)


def tool(name):
    p = os.path.join(BIN, name)
    return p if os.path.exists(p) else os.path.join(ROOT, "bin", name)


def sh(args, **kw):
    p = subprocess.run([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode())
        raise SystemExit("%s failed" % os.path.basename(str(args[0])))
    return p


def evaluate(pred_path):
    """(logloss, AUC) of fm_predict output 'LABEL P' lines."""
    from streamfm.metrics import auc_exact, logloss

    y, p = [], []
    with open(pred_path) as f:
        for line in f:
            a, b = line.split()[:2]
            y.append(1 if int(a) > 0 else 0)
            p.append(float(b))
    y = np.array(y)
    p = np.array(p)
    return logloss(y, p), auc_exact(y, p)


def train_and_score(work, spec, train_log, test_log, negatives="all", dim="1,1,8", extra=()):
    frozen = os.path.join(work, "spec.frozen.json")
    sh([tool("fm_sample"), "fit", "--spec", spec, "--input", train_log, "-o", frozen, "-q"])
    train = os.path.join(work, "train.txt")
    test = os.path.join(work, "test.txt")
    sh([tool("fm_sample"), "rank", "--spec", frozen, "--input", train_log, "-o", train, "--negatives", negatives,
        "-q"])
    sh([tool("fm_sample"), "rank", "--spec", frozen, "--input", test_log, "-o", test, "-q"])
    model = os.path.join(work, "model.bin")
    sh([tool("fm_train"), "-m", model, "-mf", "bin", "-dim", dim, "--input", train, "--seed", "1", "-q"]
       + list(extra))
    pred = os.path.join(work, "pred.txt")
    sh([tool("fm_predict"), "-m", model, "--input", test, "-out", pred, "-q"])
    return pred, sum(1 for _ in open(train))


# ---------------------------------------------------------------------------
# (a) MovieLens 100k


ML_SPEC_HEAD = """\
[user]
key = "user_id"
table = {{ path = "{users}" }}
[item]
key = "movie_id"
table = {{ path = "{items}" }}
[log]
request = "req"
position = "pos"
clicked = "click"
fields = {{ hist = "user.hist", top_genres = "user.top_genres" }}
"""

ML_GROUPS = [
    ("ids", """
[[feature]]
name = "user"
source = "user.user_id"
kind = "categorical"
[[feature]]
name = "movie"
source = "item.movie_id"
kind = "categorical"
min_count = 2
"""),
    ("+ user profile (age buckets, gender, occupation, zip)", """
[[feature]]
name = "age"
source = "user.age"
kind = "bucket"
edges = [18, 25, 35, 45, 50, 56]
[[feature]]
name = "gender"
source = "user.gender"
kind = "categorical"
[[feature]]
name = "occupation"
source = "user.occupation"
kind = "categorical"
[[feature]]
name = "zip"
source = "user.zip2"
kind = "categorical"
min_count = 20
"""),
    ("+ movie profile (year buckets, genres, CTR buckets)", """
[[feature]]
name = "year"
source = "item.year"
kind = "bucket"
bins = 8
[[feature]]
name = "genre"
source = "item.genres"
kind = "tags"
[[feature]]
name = "ctr"
source = "item.ctr"
kind = "bucket"
bins = 10
"""),
    ("+ history (last 10 clicked movies)", """
[[feature]]
name = "hist"
source = "user.hist"
kind = "history"
last = 10
min_count = 5
"""),
    ("+ cross age x genre", """
[[feature]]
name = "age_x_genre"
kind = "cross"
of = ["age", "genre"]
"""),
    ("+ overlap top-3 genres x movie genres", """
[[feature]]
name = "genre_match"
kind = "overlap"
user = "user.top_genres"
item = "item.genres"
measure = "count"
max = 3
"""),
]


def ml_data(work):
    from bench_recall import ml100k_files

    inter, users, items = ml100k_files()
    os.makedirs(work, exist_ok=True)
    r = sorted(((float(x[3]), int(x[0]), int(x[1]), float(x[2])) for x in inter))
    # each user's last 20% of ratings (by time) are the test set
    by_user = collections.defaultdict(list)
    for k, (ts, u, i, rating) in enumerate(r):
        by_user[u].append(k)
    is_test = np.zeros(len(r), bool)
    for ks in by_user.values():
        is_test[ks[int(np.ceil(0.8 * len(ks))):]] = True
    genres_of = {}
    year_of = {}
    for row in items:
        iid, _title, year, genres = (row + ["", "", "", ""])[:4]
        genres_of[int(iid)] = genres.split()
        year_of[int(iid)] = year.strip()
    # the movies' CTR in the training period (a posterior statistic, smoothed)
    shown = collections.Counter()
    clicked = collections.Counter()
    for k, (ts, u, i, rating) in enumerate(r):
        if is_test[k]:
            continue
        shown[i] += 1
        clicked[i] += rating >= 4
    base = sum(clicked.values()) / max(sum(shown.values()), 1)
    with open(os.path.join(work, "users.tsv"), "w") as f:
        f.write("user_id\tage\tgender\toccupation\tzip2\n")
        for row in users:
            uid, age, gender, occ, zipc = row[:5]
            f.write("%s\t%s\t%s\t%s\t%s\n" % (uid, age, gender, occ, zipc[:2]))
    with open(os.path.join(work, "items.tsv"), "w") as f:
        f.write("movie_id\tyear\tgenres\tctr\n")
        for iid in sorted(genres_of):
            ctr = (clicked[iid] + 10 * base) / (shown[iid] + 10)
            f.write("%d\t%s\t%s\t%.5f\n" % (iid, year_of[iid], "|".join(genres_of[iid]), ctr))
    # the log in time order; history and top genres from the past only
    hist = collections.defaultdict(list)
    gcount = collections.defaultdict(collections.Counter)
    paths = {"train": os.path.join(work, "train.tsv"), "test": os.path.join(work, "test.tsv")}
    files = {k: open(p, "w") for k, p in paths.items()}
    for f in files.values():
        f.write("req\tpos\tuser_id\tmovie_id\tclick\thist\ttop_genres\n")
    # requests: a user's ratings of one day, in time order (grouped: sorted by day, user, time)
    order = sorted(range(len(r)), key=lambda k: (int(r[k][0] // 86400), r[k][1], r[k][0]))
    pos = collections.Counter()
    for k in order:
        ts, u, i, rating = r[k]
        day = int(ts // 86400)
        req = "%d-%d" % (u, day)
        part = "test" if is_test[k] else "train"
        top = [g for g, _ in sorted(gcount[u].items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
        files[part].write("%s\t%d\t%d\t%d\t%d\t%s\t%s\n" % (req, pos[req], u, i, rating >= 4,
                                                             "|".join(str(x) for x in hist[u][-10:]),
                                                             "|".join(top)))
        pos[req] += 1
        if rating >= 4:
            hist[u].append(i)
            gcount[u].update(genres_of[i])
    for f in files.values():
        f.close()
    return paths


def part_ml(a):
    work = os.path.join(a.out, "ml100k")
    paths = ml_data(work)
    n_test = sum(1 for _ in open(paths["test"])) - 1
    n_train = sum(1 for _ in open(paths["train"])) - 1
    print("\n(a) MovieLens 100k: ratings as exposures (rating >= 4 a click), each user's last 20%% by time as test "
          "(%s training, %s test impressions)" % ("{:,}".format(n_train), "{:,}".format(n_test)))
    print("fm_train, one pass in time order (alphaFM's default hyper-parameters); test logloss / AUC as "
          "feature groups are added\n")
    print("| features | LR (-dim 1,1,0) logloss | LR AUC | FM (-dim 1,1,8) logloss | FM AUC |")
    print("|---|---:|---:|---:|---:|")
    spec_text = ML_SPEC_HEAD.format(users=os.path.join(work, "users.tsv"), items=os.path.join(work, "items.tsv"))
    for label, group in ML_GROUPS:
        spec_text += group
        spec = os.path.join(work, "spec.toml")
        with open(spec, "w") as f:
            f.write(spec_text)
        res = []
        for dim in ("1,1,0", "1,1,8"):
            pred, n_train = train_and_score(work, spec, paths["train"], paths["test"], dim=dim)
            res += evaluate(pred)
        print("| %s | %.4f | %.4f | %.4f | %.4f |" % ((label,) + tuple(res)), flush=True)


# ---------------------------------------------------------------------------
# (b) skip-above vs all negatives


SKIP_SPEC = """\
[user]
key = "user"
table = {{ path = "{users}" }}
[item]
key = "item"
table = {{ path = "{items}" }}
[log]
request = "req"
position = "pos"
clicked = "click"

[[feature]]
name = "user"
source = "user.user"
kind = "categorical"
[[feature]]
name = "seg"
source = "user.seg"
kind = "categorical"
[[feature]]
name = "item"
source = "item.item"
kind = "categorical"
[[feature]]
name = "cat"
source = "item.cat"
kind = "categorical"
[[feature]]
name = "seg_x_cat"
kind = "cross"
of = ["seg", "cat"]
"""


def skip_data(work, n_requests=40000, n_users=3000, n_items=400, n_seg=20, n_cat=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(work, exist_ok=True)
    seg = rng.integers(0, n_seg, n_users)
    cat = rng.integers(0, n_cat, n_items)
    new = rng.random(n_items) < 0.5
    affinity = rng.normal(0, 1.5, (n_seg, n_cat))
    quality = rng.normal(-1.5, 0.7, n_items)

    def attract(u, i):
        return 1 / (1 + np.exp(-(affinity[seg[u], cat[i]] + quality[i])))

    with open(os.path.join(work, "users.tsv"), "w") as f:
        f.write("user\tseg\n" + "".join("u%d\ts%d\n" % (u, seg[u]) for u in range(n_users)))
    with open(os.path.join(work, "items.tsv"), "w") as f:
        f.write("item\tcat\n" + "".join("i%d\tc%d\n" % (i, cat[i]) for i in range(n_items)))
    old_items = np.flatnonzero(~new)
    new_items = np.flatnonzero(new)
    with open(os.path.join(work, "train.tsv"), "w") as f:
        f.write("req\tpos\tuser\titem\tclick\n")
        for r in range(n_requests):
            u = int(rng.integers(0, n_users))
            # the logging policy: 5 established items on top, 5 new ones below
            shown = np.r_[rng.choice(old_items, 5, replace=False), rng.choice(new_items, 5, replace=False)]
            go = True
            for p, i in enumerate(shown):
                click = 0
                if go:
                    click = int(rng.random() < attract(u, i))
                    go = rng.random() < (0.6 if click else 0.85)
                f.write("q%d\t%d\tu%d\ti%d\t%d\n" % (r, p, u, i, click))
    with open(os.path.join(work, "test.tsv"), "w") as f:
        f.write("req\tpos\tuser\titem\tclick\n")
        for t in range(40000):
            u = int(rng.integers(0, n_users))
            i = int(rng.integers(0, n_items))
            f.write("t%d\t0\tu%d\ti%d\t%d\n" % (t, u, i, int(rng.random() < attract(u, i))))
    return new


def part_skip(a):
    work = os.path.join(a.out, "skip")
    new = skip_data(work)
    spec = os.path.join(work, "spec.toml")
    with open(spec, "w") as f:
        f.write(SKIP_SPEC.format(users=os.path.join(work, "users.tsv"), items=os.path.join(work, "items.tsv")))
    test_items = [int(line.split("\t")[3][1:]) for line in open(os.path.join(work, "test.tsv")).readlines()[1:]]
    is_new = new[np.array(test_items)]
    print("\n(b) skip-above vs all negatives: 40,000 requests of 10 items (5 established on top, 5 new below),")
    print("cascade clicks; test: 40,000 random (user, item) pairs labelled by attraction (no position effect)\n")
    print("| --negatives | training lines | relevance AUC, all items | new items | established items |")
    print("|---|---:|---:|---:|---:|")
    from streamfm.metrics import auc_exact

    for neg in ("all", "skip-above", "skip-above+1"):
        pred, n_train = train_and_score(work, spec, os.path.join(work, "train.tsv"), os.path.join(work, "test.tsv"),
                                        negatives=neg, dim="1,1,4")
        y, p = [], []
        for line in open(pred):
            s = line.split()
            y.append(int(s[0]) > 0)
            p.append(float(s[1]))
        y = np.array(y)
        p = np.array(p)
        print("| %s | %s | %.4f | %.4f | %.4f |" % (
            neg, "{:,}".format(n_train), auc_exact(y, p), auc_exact(y[is_new], p[is_new]),
            auc_exact(y[~is_new], p[~is_new])), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["ml", "skip", "all"], default="all")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    if a.part in ("ml", "all"):
        part_ml(a)
    if a.part in ("skip", "all"):
        part_skip(a)


if __name__ == "__main__":
    main()
