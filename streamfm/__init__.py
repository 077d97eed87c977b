"""streamfm: a streaming FTRL Factorization Machine learner (alphaFM-compatible)."""

__version__ = "0.1.0"
