"""fm_recall train's defaults: one place, read by the trainer, the command and the bench.

Chosen on a validation split carved from MovieLens-100k's training clicks
(bench/bench_recall.py --part tune; the evidence is in the README). They
differ from fm_train's, which stay alphaFM's: FTRL hyper-parameters that
differ are in RECALL_HP, the rest are fm_train's.
"""

TRAIN = {
    "loss": "warp",          # LightFM-style WARP: sample until the first violator, rank-weighted step
    "margin": 1.0,           # of hinge and warp
    "max_sampled": 32,       # warp: draws per click at most
    "neg": 4,                # hinge, bpr, logistic: negatives per click
    "neg_dist": "uniform",
    "pop_suppress": 0.0,
    "hard_neg": 0,
    "epochs": 10,            # passes over the click log
    "refresh": 2048,         # clicks between two recomputations of the catalog's embeddings
    "seen_capacity": 1 << 20,  # one-pass streams: own clicks remembered (distinct (user, item) pairs)
}

RECALL_HP = {"v_alpha": 0.2}
