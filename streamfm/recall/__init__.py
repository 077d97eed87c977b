"""FM recall (docs/design.md, "Recall"): u2i, i2i, u2u and i2u from one FM model.

Modules:

- ``records``  items / users / clicks files parsed into CSR against a feature table
- ``keys``     record keys -> positions (a hash index over key bytes)
- ``embed``    a record's vector (V, lin + inter) from the model's w and v
- ``sampling`` negative sampling (uniform, click counts ** power), popularity suppression
- ``trainer``  the pairwise (hinge, bpr) and pointwise (logistic) FTRL trainer
- ``index``    the index file and the exact top-N kernel (faiss optional)
- ``query``    the query pipeline (lines in, ranked keys out, input order)
- ``evaluate`` HitRate / Recall / NDCG @K and coverage
- ``synth``    the deterministic sample data generator
- ``cli``      the ``fm_recall`` command group
"""
