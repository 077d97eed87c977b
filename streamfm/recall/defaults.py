"""fm_recall train's defaults: one place, read by the trainer, the command and the bench.

Chosen on a validation split carved from MovieLens-100k's training clicks
(bench/bench_recall.py --part tune; the evidence is in the README). They
differ from fm_train's, which stay alphaFM's: FTRL hyper-parameters that
differ are in RECALL_HP, the rest are fm_train's.
"""

TRAIN = {
    "loss": "bpr",           # -log sigmoid(s(u,i+) - s(u,i-))
    "neg": 4,                # negatives per click ...
    "hard_neg": 16,          # ... the 4 the model scores highest of 16 draws
    "neg_dist": "uniform",
    "pop_suppress": 0.0,
    "margin": 1.0,           # of hinge and warp
    "max_sampled": 32,       # warp: draws per click at most
    "epochs": 6,             # passes over the click log (with history features as good as 15, at about half
                             # the cost; a profile-only click log wants about 15: README, "Recall defaults")
    "refresh": 2048,         # candidates' scores: each catalog embedding recomputed every N clicks
    "seen_capacity": 1 << 20,  # one-pass streams: own clicks remembered (distinct (user, item) pairs)
}

RECALL_HP = {"v_alpha": 0.1}
