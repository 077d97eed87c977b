"""Deterministic synthetic recall data: items, users, clicks (formats: docs/design.md, "Recall").

Items have an id, a category, a brand and a price band; users an id, an age
band, a gender and a city. A hidden model decides who clicks what: every
category has a taste vector, an item's vector is its category's plus a
little noise, a user's vector comes from their age band and gender plus a
personal part, and a user clicks item i with probability proportional to
``pop(i) * exp(SHARPNESS * <u, i>)`` (pop: Zipf over items). So user
features predict what a user likes (cold-start users work) and item
features what an item is like (cold-start items work), while ids carry the
personal part.

Files written to ``--out-dir``:

- ``items.txt``       ``ITEM_KEY item=ID cat=C brand=B price=P`` for the catalog
- ``new_items.txt``   items that are in no click and not in items.txt (cold start)
- ``users.txt``       ``USER_KEY user=ID age=A gender=G city=C``
- ``clicks.txt``      ``USER_KEY <user features> | ITEM_KEY`` (time order), all but
                      each user's last click
- ``clicks_test.txt`` each user's last click (held out)

The same arguments always give the same bytes::

    python -m streamfm.recall.synth --out-dir data/sample
"""

import argparse
import os
import sys

import numpy as np

from ..output import open_output

LATENT = 4
SHARPNESS = 2.5
N_CATS = 12
N_BRANDS = 40
N_PRICES = 5
N_AGES = 6
N_CITIES = 20


def generate(n_users=600, n_items=1200, n_new_items=60, clicks_per_user=16, seed=1):
    """(items, new_items, users, clicks, clicks_test) as lists of byte lines."""
    rng = np.random.default_rng(seed)
    total_items = n_items + n_new_items
    cat_vec = rng.normal(0, 1, (N_CATS, LATENT))
    cat = rng.integers(0, N_CATS, total_items)
    brand = (cat * (N_BRANDS // N_CATS) + rng.integers(0, N_BRANDS // N_CATS, total_items)) % N_BRANDS
    price = rng.integers(0, N_PRICES, total_items)
    item_vec = cat_vec[cat] + 0.35 * rng.normal(0, 1, (total_items, LATENT))
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop = pop[rng.permutation(n_items)]
    age_vec = rng.normal(0, 1, (N_AGES, LATENT))
    gender_vec = rng.normal(0, 0.7, (2, LATENT))
    age = rng.integers(0, N_AGES, n_users)
    gender = rng.integers(0, 2, n_users)
    city = rng.integers(0, N_CITIES, n_users)
    user_vec = age_vec[age] + gender_vec[gender] + 0.6 * rng.normal(0, 1, (n_users, LATENT))

    def item_line(i):
        return b"i%d item=i%d cat=c%d brand=b%d price=p%d" % (i, i, cat[i], brand[i], price[i])

    def user_feats(u):
        return b"user=u%d age=a%d gender=g%d city=c%d" % (u, age[u], gender[u], city[u])

    items = [item_line(i) for i in range(n_items)]
    new_items = [item_line(i) for i in range(n_items, total_items)]
    users = [b"u%d " % u + user_feats(u) for u in range(n_users)]
    logits = SHARPNESS * user_vec @ item_vec[:n_items].T + np.log(pop)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    n_clicks = np.maximum(2, rng.poisson(clicks_per_user, n_users))
    events = []  # (time, user, item)
    for u in range(n_users):
        picks = rng.choice(n_items, size=n_clicks[u], replace=False, p=prob[u])
        times = np.sort(rng.random(n_clicks[u]))
        events.extend(zip(times.tolist(), [u] * len(picks), picks.tolist()))
    events.sort()
    last = {}
    for t, u, i in events:
        last[u] = (t, i)
    clicks, test = [], []
    for t, u, i in events:
        line = b"u%d " % u + user_feats(u) + b" | i%d" % i
        (test if last[u] == (t, i) else clicks).append(line)
    return items, new_items, users, clicks, test


def write_all(out_dir, **kw):
    files = dict(zip(("items.txt", "new_items.txt", "users.txt", "clicks.txt", "clicks_test.txt"),
                     generate(**kw)))
    os.makedirs(out_dir, exist_ok=True)
    for name, lines in files.items():
        with open_output(os.path.join(out_dir, name)) as f:
            f.write(b"".join(x + b"\n" for x in lines))
    return {name: len(lines) for name, lines in files.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m streamfm.recall.synth",
                                description="Write deterministic synthetic recall data (items, users, clicks).")
    p.add_argument("--out-dir", default="data/sample", help="directory for the files (default data/sample)")
    p.add_argument("--users", type=int, default=600, help="number of users (default 600)")
    p.add_argument("--items", type=int, default=1200, help="number of catalog items (default 1200)")
    p.add_argument("--new-items", type=int, default=60, help="cold-start items in new_items.txt (default 60)")
    p.add_argument("--clicks-per-user", type=int, default=16, help="mean clicks per user (default 16)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    a = p.parse_args(argv)
    if min(a.users, a.items) < 2 or a.new_items < 0 or a.clicks_per_user < 1:
        raise SystemExit("error: need at least 2 users and items, and clicks-per-user >= 1")
    counts = write_all(a.out_dir, n_users=a.users, n_items=a.items, n_new_items=a.new_items,
                       clicks_per_user=min(a.clicks_per_user, a.items), seed=a.seed)
    for name, n in counts.items():
        sys.stderr.write("%s: %d lines\n" % (os.path.join(a.out_dir, name), n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
