"""Deterministic synthetic CTR data in alphaFM's text format.

Every line is a label ``1`` or ``0`` and 26 features, single spaces, ``'\\n'`` ends::

    0 f0_1:1 f1_4:1 f2_0:1 ... f23_221474:1 n0:0.9616 n1:1.1

* 24 categorical fields ``f0``..``f23``, written ``fK_ID:1`` (alphaFM needs the ``:``;
  ``explicit_one=False`` / ``--implicit-one`` writes ``fK_ID``). Each field has its own
  vocabulary (``FIELD_VOCAB``: 10 values for the smallest, 400,000 for the largest) and
  Zipf-skewed value frequencies (exponent ``ZIPF_EXPONENT`` = 1.1). Value ids are numbered
  roughly in first-seen order, so frequent values tend to have short ids (as in logs
  whose ids come from a counter), but not strictly in order of frequency.
* 2 numeric fields: ``n0`` uniform in (0, 1) with at most 4 decimals, ``n1`` log-normal
  (heavy tail, median about 4.5) with 1 decimal. Numeric values are never 0.

At scale 1, a 1,000,000-line file is about 229 MB (229 bytes a line) and holds about
1.1 million distinct features; ``scale`` shrinks the vocabularies for small files.

Labels come from a hidden factorization machine (``HIDDEN_DIM`` = 8 factors): every
categorical value has a weight ``w`` and a factor vector ``v``, the numeric fields a
weight each (no factors), and::

    logit = bias + sum w x + sum_{i<j} <v_i, v_j> + noise,   label ~ Bernoulli(sigmoid(logit))

The interactions are strong on the small and medium vocabularies (f0..f11) and weak on
the id-like large ones, so a FM with 8 factors beats logistic regression. The bias is set
so that about 20% of the labels are positive. ``informative_fields`` zeroes the hidden
parameters of all other fields, so that the label depends on the listed fields only.

Determinism: the hidden model depends only on ``model_seed`` (and ``scale``,
``informative_fields``); the samples only on ``seed``. Train and test sets are the same
hidden model with two seeds. The output does not depend on ``block_lines``, and the first
N lines of a longer run with the same arguments are the N-line run.

Command line (``--help`` for all options)::

    python -m streamfm.synth ctr --lines 1000000 --seed 1 --out bench.txt
    python -m streamfm.synth ctr --lines 25000 --seed 1 --scale 0.01 --out train.txt
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .output import OutputError, open_output

__all__ = [
    "FIELD_VOCAB",
    "CAT_FIELDS",
    "NUM_FIELDS",
    "FIELD_NAMES",
    "N_FEATURES",
    "HIDDEN_DIM",
    "ZIPF_EXPONENT",
    "SAMPLE_SCALE",
    "HiddenModel",
    "hidden_model",
    "draw_samples",
    "generate_ctr",
    "write_ctr",
    "main",
]

# --------------------------------------------------------------------------- shape

#: Vocabulary size of each categorical field f0..f23 at scale 1.
FIELD_VOCAB: Tuple[int, ...] = (
    10, 12, 16, 24, 40, 60, 100, 250, 600, 1500, 4000, 10000,
    25000, 60000, 120000, 180000, 240000, 300000, 350000, 400000,
    400000, 400000, 400000, 400000,
)
N_CAT = len(FIELD_VOCAB)
CAT_FIELDS: Tuple[str, ...] = tuple("f%d" % i for i in range(N_CAT))
NUM_FIELDS: Tuple[str, ...] = ("n0", "n1")
FIELD_NAMES: Tuple[str, ...] = CAT_FIELDS + NUM_FIELDS
N_FEATURES = len(FIELD_NAMES)  # features on every line

ZIPF_EXPONENT = 1.1
HIDDEN_DIM = 8
#: Vocabularies shrink with ``scale`` but never below ``min(vocab, MIN_SCALED_VOCAB)``.
MIN_SCALED_VOCAB = 10
#: Scale used for the files in data/sample (largest vocabulary 4,000).
SAMPLE_SCALE = 0.01
#: Target share of positive labels (the bias is calibrated to it).
TARGET_POSITIVE_RATE = 0.2

# Hidden model strength per field: (std of w, std of each v component).
# Small/medium vocabularies (f0..f11) carry strong pairwise interactions, the id-like
# large ones mostly main effects. Over samples, the interaction term has a standard
# deviation of about 2.1, the categorical linear term about 1.1, the numeric one 0.4 and
# the noise 0.8 (logit units): the true probabilities reach an AUC of about 0.89, a FM
# learnt in one pass over 25k lines about 0.77 and logistic regression about 0.72.
_W_STD_SMALL, _V_STD_SMALL = 0.25, 0.30
_W_STD_LARGE, _V_STD_LARGE = 0.20, 0.06
_SMALL_FIELDS = 12  # f0..f11 are "small/medium"
_NUM_W_SIZE = (0.8, 0.04)  # |hidden weight| of n0 (on [0,1)) and n1 (median ~4.5); random signs
_NOISE_STD = 0.8  # std of the logit noise (irreducible error)

# n1 ~ lognormal(mu, sigma), capped so its integer part has at most 5 digits
_N1_MU, _N1_SIGMA, _N1_MAX_TENTHS = 1.5, 0.9, 999_999

# uniform columns drawn per line (row-major, so output never depends on block size)
_U_CAT = 0  # 24 columns: categorical values
_U_N0 = N_CAT  # n0
_U_BM1 = N_CAT + 1  # Box-Muller pair -> n1 and logit noise
_U_BM2 = N_CAT + 2
_U_LABEL = N_CAT + 3
_N_UNIFORM = N_CAT + 4

_CALIBRATION_LINES = 50_000
_ID_ORDER_SHARPNESS = 1.25


def scaled_vocab(scale: float = 1.0) -> Tuple[int, ...]:
    """Vocabulary sizes of f0..f23 at ``scale``: ``max(min(v, 10), round(v * scale))``."""
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError("scale must be a positive number, got %r" % (scale,))
    return tuple(max(min(v, MIN_SCALED_VOCAB), int(round(v * scale))) for v in FIELD_VOCAB)


def _normalize_informative(informative_fields) -> Optional[Tuple[str, ...]]:
    """None (all fields) or a sorted tuple of known field names."""
    if informative_fields is None:
        return None
    if isinstance(informative_fields, str):
        informative_fields = [s for s in informative_fields.split(",") if s.strip()]
    names = []
    for f in informative_fields:
        if isinstance(f, (int, np.integer)):
            f = "f%d" % int(f)
        f = str(f).strip()
        if f not in FIELD_NAMES:
            raise ValueError(
                "unknown field %r in informative_fields (known: f0..f%d, n0, n1)" % (f, N_CAT - 1)
            )
        names.append(f)
    return tuple(sorted(set(names), key=FIELD_NAMES.index))


# --------------------------------------------------------------------------- hidden model


@dataclass(frozen=True, eq=False)
class HiddenModel:
    """The hidden FM that labels the samples. Arrays are indexed by value *rank*
    (0 = most frequent); ``ids[f][rank]`` is the id written in the text."""

    vocab: Tuple[int, ...]
    informative: Tuple[str, ...]  # field names whose parameters are not all zero
    cdf: Tuple[np.ndarray, ...]  # per field, cumulative Zipf probabilities (float64)
    ids: Tuple[np.ndarray, ...]  # per field, rank -> written id (int64, a permutation)
    w: Tuple[np.ndarray, ...]  # per field, float64 (vocab,)
    v: Tuple[np.ndarray, ...]  # per field, float32 (vocab, HIDDEN_DIM)
    vsq: Tuple[np.ndarray, ...]  # per field, |v|^2 as float64 (vocab,)
    w_num: np.ndarray  # (2,) weights of n0, n1
    bias: float
    noise_std: float

    def is_informative(self, field: str) -> bool:
        return field in self.informative

    def logit(self, ranks: np.ndarray, num: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        """Hidden logit of samples given as value ranks (n, 24) and numeric values (n, 2).

        ``bias + sum w + 0.5 (|sum v|^2 - sum |v|^2) + num @ w_num (+ noise)``.
        """
        ranks = np.asarray(ranks)
        num = np.asarray(num, dtype=np.float64)
        n = ranks.shape[0]
        lin = np.full(n, self.bias, dtype=np.float64)
        s = np.zeros((n, HIDDEN_DIM), dtype=np.float64)
        sq = np.zeros(n, dtype=np.float64)
        for f in range(N_CAT):
            if CAT_FIELDS[f] not in self.informative:
                continue
            r = ranks[:, f]
            lin += self.w[f][r]
            s += self.v[f][r]
            sq += self.vsq[f][r]
        lin += num[:, 0] * self.w_num[0]
        lin += num[:, 1] * self.w_num[1]
        out = lin + 0.5 * ((s * s).sum(axis=1) - sq)
        if noise is not None:
            out += noise
        return out

    def label_probability(self, ranks: np.ndarray, num: np.ndarray) -> np.ndarray:
        """sigmoid of the noise-free logit: the best score a learner can hope for."""
        return _sigmoid(self.logit(ranks, num))

    def field_dependence(self, field: str, n_lines: int = 2000, seed: int = 0) -> float:
        """How much the label depends on ``field``: the largest change of the logit over
        ``n_lines`` samples when that field's values are redrawn (others kept). Exactly 0
        for a field outside ``informative_fields``."""
        if field not in FIELD_NAMES:
            raise ValueError("unknown field %r" % (field,))
        rng = np.random.default_rng([int(seed), 77])
        ranks, num, _, _ = _draw(self, rng, n_lines)
        ranks2, num2, _, _ = _draw(self, rng, n_lines)
        ranks_b, num_b = ranks.copy(), num.copy()
        if field in CAT_FIELDS:
            j = CAT_FIELDS.index(field)
            ranks_b[:, j] = ranks2[:, j]
        else:
            j = NUM_FIELDS.index(field)
            num_b[:, j] = num2[:, j]
        return float(np.max(np.abs(self.logit(ranks_b, num_b) - self.logit(ranks, num))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _field_rng(model_seed: int, tag: int, f: int) -> np.random.Generator:
    return np.random.default_rng([int(model_seed), tag, f])


def _check_seed(name: str, seed) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError("%s must be >= 0, got %d" % (name, seed))
    return seed


@functools.lru_cache(maxsize=4)
def _hidden_model_cached(model_seed: int, scale: float, informative: Optional[Tuple[str, ...]]) -> HiddenModel:
    vocab = scaled_vocab(scale)
    cdfs, ids, ws, vs, vsqs = [], [], [], [], []
    for f, V in enumerate(vocab):
        p = np.arange(1, V + 1, dtype=np.float64) ** -ZIPF_EXPONENT
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        cdf[-1] = 1.0
        cdfs.append(cdf)
        # ids: numbered in first-seen order of a log whose value frequencies are
        # p ** _ID_ORDER_SHARPNESS (value r is first seen at time Exp(1) / p_r**sharpness),
        # so frequent values tend to have small ids, but not strictly. They depend on the
        # field's vocabulary and model_seed only, never on the informative set.
        first_seen = _field_rng(model_seed, 1, f).standard_exponential(V) / (p / p[0]) ** _ID_ORDER_SHARPNESS
        idmap = np.empty(V, dtype=np.int64)
        idmap[np.argsort(first_seen, kind="stable")] = np.arange(V, dtype=np.int64)
        ids.append(idmap)
        rng = _field_rng(model_seed, 2, f)
        small = f < _SMALL_FIELDS
        w_std, v_std = (_W_STD_SMALL, _V_STD_SMALL) if small else (_W_STD_LARGE, _V_STD_LARGE)
        w = rng.standard_normal(V) * w_std
        v = (rng.standard_normal((V, HIDDEN_DIM)) * v_std).astype(np.float32)
        if informative is not None and CAT_FIELDS[f] not in informative:
            w[:] = 0.0
            v[:] = 0.0
        ws.append(w)
        vs.append(v)
        vsqs.append((v.astype(np.float64) ** 2).sum(axis=1))
    rng = _field_rng(model_seed, 3, 0)
    w_num = np.where(rng.random(2) < 0.5, -1.0, 1.0) * np.array(_NUM_W_SIZE)
    if informative is not None:
        for j, name in enumerate(NUM_FIELDS):
            if name not in informative:
                w_num[j] = 0.0
    inf = FIELD_NAMES if informative is None else informative
    model = HiddenModel(
        vocab=vocab, informative=tuple(inf), cdf=tuple(cdfs), ids=tuple(ids), w=tuple(ws),
        v=tuple(vs), vsq=tuple(vsqs), w_num=w_num, bias=0.0, noise_std=_NOISE_STD,
    )
    # calibrate the bias on a sample drawn from a model_seed-only stream
    ranks, num, noise, _ = _draw(model, _field_rng(model_seed, 4, 0), _CALIBRATION_LINES)
    z = model.logit(ranks, num, noise)
    lo, hi = -30.0, 30.0
    for _ in range(100):  # bisection on the mean probability
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < TARGET_POSITIVE_RATE:
            lo = mid
        else:
            hi = mid
    object.__setattr__(model, "bias", 0.5 * (lo + hi))
    for arrays in (model.cdf, model.ids, model.w, model.v, model.vsq, (model.w_num,)):
        for a in arrays:
            a.flags.writeable = False  # the model is cached and shared
    return model


def hidden_model(model_seed: int = 0, scale: float = 1.0, informative_fields=None) -> HiddenModel:
    """The hidden FM used by ``generate_ctr`` with the same arguments (cached)."""
    return _hidden_model_cached(
        _check_seed("model_seed", model_seed), float(scale), _normalize_informative(informative_fields)
    )


# --------------------------------------------------------------------------- sampling


def _draw(model: HiddenModel, rng: np.random.Generator, n: int):
    """Draw n samples: ranks (n, 24) int64, numeric values (n, 2), noise (n,), label
    uniforms (n,). Also returns the integer forms of n0 (1/10000) and n1 (1/10) as the
    numeric values are exactly what is written."""
    u = rng.random((n, _N_UNIFORM))
    ranks = np.empty((n, N_CAT), dtype=np.int64)
    for f in range(N_CAT):
        ranks[:, f] = np.searchsorted(model.cdf[f], u[:, _U_CAT + f], side="right")
    # n0: k / 10000 with k in 1..9999
    n0_k = 1 + np.minimum((u[:, _U_N0] * 9999).astype(np.int64), 9998)
    # Box-Muller: two independent normals from two uniforms
    rad = np.sqrt(-2.0 * np.log1p(-u[:, _U_BM1]))  # 1 - u in (0, 1]
    ang = 2.0 * np.pi * u[:, _U_BM2]
    g1 = rad * np.cos(ang)
    g2 = rad * np.sin(ang)
    n1 = np.exp(_N1_MU + _N1_SIGMA * g1)
    n1_k = np.clip(np.rint(n1 * 10.0), 1, _N1_MAX_TENTHS).astype(np.int64)
    num = np.empty((n, 2), dtype=np.float64)
    num[:, 0] = n0_k / 10000.0
    num[:, 1] = n1_k / 10.0
    noise = g2 * model.noise_std
    return ranks, num, noise, (u[:, _U_LABEL], n0_k, n1_k)


def draw_samples(n_lines: int, seed: int = 1, model_seed: int = 0, scale: float = 1.0, informative_fields=None):
    """Samples as arrays (what ``generate_ctr`` writes as text, same arguments ->
    same samples): ``(ranks (n,24), ids (n,24), num (n,2), labels (n,) int8, model)``."""
    model = hidden_model(model_seed, scale, informative_fields)
    rng = np.random.default_rng(_check_seed("seed", seed))
    ranks, num, noise, (u_label, _, _) = _draw(model, rng, int(n_lines))
    labels = (u_label < _sigmoid(model.logit(ranks, num, noise))).astype(np.int8)
    ids = np.empty_like(ranks)
    for f in range(N_CAT):
        ids[:, f] = model.ids[f][ranks[:, f]]
    return ranks, ids, num, labels, model


# --------------------------------------------------------------------------- text


def _digits(x: np.ndarray, width: int, strip: str = "leading") -> np.ndarray:
    """Decimal digits of non-negative ints as an (n, width) uint8 matrix; zero digits to
    strip ('leading' keeps at least the last digit, 'trailing' keeps the first) are
    set to byte 0 (removed later)."""
    pw = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    d = (x[:, None] // pw[None, :]) % 10
    out = (d + 48).astype(np.uint8)
    if strip == "leading":
        # blank position j if x < 10**(width-1-j), except the last position
        blank = x[:, None] < pw[None, :]
        blank[:, -1] = False
    elif strip == "trailing":
        # blank position j if x % 10**(width-j) == 0 ... i.e. all digits from j on are 0
        rem = x[:, None] % (10 * pw[None, :])  # value of digits j..end
        blank = rem == 0
        blank[:, 0] = False
    else:
        raise ValueError(strip)
    out[blank] = 0
    return out


class _Layout:
    """Column layout of the fixed-width byte matrix a block is built in."""

    def __init__(self, vocab: Sequence[int], explicit_one: bool):
        parts = []  # (kind, payload, width)
        parts.append(("label", None, 1))
        for f, V in enumerate(vocab):
            parts.append(("const", (" f%d_" % f).encode(), None))
            parts.append(("cat", f, len(str(V - 1))))
            if explicit_one:
                parts.append(("const", b":1", None))
        parts.append(("const", b" n0:0.", None))
        parts.append(("n0", None, 4))
        parts.append(("const", b" n1:", None))
        parts.append(("n1int", None, len(str(_N1_MAX_TENTHS // 10))))
        parts.append(("const", b".", None))
        parts.append(("n1dec", None, 1))
        parts.append(("const", b"\n", None))
        self.parts = []
        col = 0
        for kind, payload, width in parts:
            if kind == "const":
                width = len(payload)
            self.parts.append((kind, payload, col, width))
            col += width
        self.width = col
        self.template = np.zeros(self.width, dtype=np.uint8)
        for kind, payload, col, width in self.parts:
            if kind == "const":
                self.template[col:col + width] = np.frombuffer(payload, dtype=np.uint8)


def _format_block(layout: _Layout, model: HiddenModel, ranks, labels, n0_k, n1_k) -> bytes:
    n = ranks.shape[0]
    m = np.empty((n, layout.width), dtype=np.uint8)
    m[:] = layout.template
    for kind, payload, col, width in layout.parts:
        if kind == "label":
            m[:, col] = 48 + labels
        elif kind == "cat":
            m[:, col:col + width] = _digits(model.ids[payload][ranks[:, payload]], width)
        elif kind == "n0":
            m[:, col:col + width] = _digits(n0_k, width, strip="trailing")
        elif kind == "n1int":
            m[:, col:col + width] = _digits(n1_k // 10, width)
        elif kind == "n1dec":
            m[:, col] = 48 + (n1_k % 10)
    flat = m.reshape(-1)
    return flat[flat != 0].tobytes()


def generate_ctr(
    n_lines: int,
    seed: int = 1,
    model_seed: int = 0,
    scale: float = 1.0,
    informative_fields=None,
    block_lines: int = 100_000,
    explicit_one: bool = True,
) -> Iterator[bytes]:
    """Yield ``bytes`` blocks of complete lines, ``n_lines`` lines in all.

    seed: the samples (and their label noise); model_seed: the hidden model;
    scale: multiplies vocabulary sizes (``SAMPLE_SCALE`` for small files);
    informative_fields: names (``"f0"``, ``"n1"``, ...) or indices of the fields the
    label depends on, None for all; block_lines: lines per block (does not change the
    output); explicit_one: write categorical features as ``fK_ID:1`` (default, the
    only form alphaFM reads) or, if False, as ``fK_ID`` (implicit value 1).
    """
    n_lines = int(n_lines)
    if n_lines < 0:
        raise ValueError("n_lines must be >= 0")
    block_lines = max(1, int(block_lines))
    rng = np.random.default_rng(_check_seed("seed", seed))
    model = hidden_model(model_seed, scale, informative_fields)
    layout = _Layout(model.vocab, explicit_one)
    done = 0
    while done < n_lines:
        n = min(block_lines, n_lines - done)
        ranks, num, noise, (u_label, n0_k, n1_k) = _draw(model, rng, n)
        labels = (u_label < _sigmoid(model.logit(ranks, num, noise))).astype(np.uint8)
        yield _format_block(layout, model, ranks, labels, n0_k, n1_k)
        done += n


def write_ctr(path_or_file: Union[str, os.PathLike, BinaryIO], n_lines: int, **kwargs) -> Tuple[int, int]:
    """Write ``generate_ctr(n_lines, **kwargs)`` to a path (``"-"`` is stdout;
    written by ``output.open_output``) or a binary file object. Returns
    (lines, bytes) written."""
    nbytes = 0
    if isinstance(path_or_file, (str, os.PathLike)):
        with open_output(os.fspath(path_or_file)) as fh:
            for block in generate_ctr(n_lines, **kwargs):
                fh.write(block)
                nbytes += len(block)
        return int(n_lines), nbytes
    for block in generate_ctr(n_lines, **kwargs):
        path_or_file.write(block)
        nbytes += len(block)
    path_or_file.flush()
    return int(n_lines), nbytes


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streamfm.synth",
        description="Generate deterministic synthetic data for streamfm.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    c = sub.add_parser(
        "ctr",
        help="CTR samples in alphaFM's text format, labelled by a hidden FM",
        description=(
            "Write CTR samples 'LABEL fK_ID ... n0:X n1:Y' (24 categorical fields with "
            "Zipf-skewed values, 2 numeric fields), labels drawn from a hidden factorization "
            "machine (8 factors, ~20% positives). The same arguments always give the same "
            "bytes; the first N lines of a longer run are the N-line run."
        ),
    )
    c.add_argument("--lines", type=int, required=True, metavar="N", help="number of lines to write")
    c.add_argument("--seed", type=int, default=1, metavar="S",
                   help="seed of the samples; use two seeds for train and test (default 1)")
    c.add_argument("--model-seed", type=int, default=0, metavar="M",
                   help="seed of the hidden model that labels the samples (default 0)")
    c.add_argument("--scale", type=float, default=1.0, metavar="X",
                   help="multiply vocabulary sizes by X (never below 10 values a field); "
                        "the files in data/sample use %g (default 1: ~1.1M distinct "
                        "features in 1M lines)" % SAMPLE_SCALE)
    c.add_argument("--informative", default=None, metavar="FIELDS",
                   help="comma-separated fields the label depends on, e.g. f0,f3,n1; the "
                        "hidden weights of all others are 0 (default: all fields)")
    c.add_argument("--implicit-one", action="store_true",
                   help="write categorical features as fK_ID (implicit value 1) instead of "
                        "fK_ID:1; streamfm reads both, alphaFM only fK_ID:1")
    c.add_argument("--block-lines", type=int, default=100_000, metavar="B",
                   help="lines generated per block (memory only; output is the same)")
    c.add_argument("--out", default="-", metavar="FILE",
                   help="output file, '-' for standard output (default)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "ctr":
        if args.lines < 0:
            raise SystemExit("--lines must be >= 0")
        try:
            write_ctr(
                args.out, args.lines, seed=args.seed, model_seed=args.model_seed,
                scale=args.scale, informative_fields=args.informative,
                block_lines=args.block_lines, explicit_one=not args.implicit_one,
            )
        except OutputError as e:
            if e.errno == errno.EPIPE:  # the reader went away, e.g. `| head`
                return 0
            raise SystemExit("error: %s" % e)
        except ValueError as e:
            raise SystemExit("error: %s" % e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
