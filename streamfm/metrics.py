"""Metrics of predictions (logloss, AUC, calibration) and the progress line.

Kernels accumulate a small stats vector and two histograms of predicted
probability (negatives, positives) per thread; AUC is read off the merged
histograms, so memory stays constant however long the stream.
"""

import math
import time

import numpy as np
from numba import njit

# stats vector layout (kernels may append their own counters after these)
M_SAMPLES, M_LOSS, M_POS, M_PROB_SUM = 0, 1, 2, 3
N_METRICS = 4
AUC_BINS = 1 << 16


@njit(inline="always")
def add_prediction(stats, hist, y, prob):
    """Account one prediction ``prob`` of a sample with label y (> 0 positive)."""
    if not (0.0 <= prob <= 1.0):
        prob = 0.5  # NaN from a model holding infinities: count it, never index with it
    stats[M_SAMPLES] += 1
    stats[M_PROB_SUM] += prob
    if y > 0:
        stats[M_POS] += 1
        stats[M_LOSS] -= math.log(max(prob, 1e-15))
    else:
        stats[M_LOSS] -= math.log(max(1.0 - prob, 1e-15))
    nbins = hist.shape[1]
    b = int(prob * nbins)
    if b >= nbins:
        b = nbins - 1
    hist[1 if y > 0 else 0, b] += 1


def new_accumulators(extra=0):
    return np.zeros(N_METRICS + extra, dtype=np.float64), np.zeros((2, AUC_BINS), dtype=np.int64)


class MetricSummary:
    """Merged accumulators with the derived metrics."""

    def __init__(self, stats=None, hist=None):
        if stats is None:
            stats, hist = new_accumulators()
        self.stats = stats
        self.hist = hist

    @property
    def samples(self):
        return int(self.stats[M_SAMPLES])

    @property
    def logloss(self):
        n = self.stats[M_SAMPLES]
        return float(self.stats[M_LOSS] / n) if n else float("nan")

    @property
    def auc(self):
        return auc_from_hist(self.hist)

    @property
    def mean_prediction(self):
        n = self.stats[M_SAMPLES]
        return float(self.stats[M_PROB_SUM] / n) if n else float("nan")

    @property
    def positive_rate(self):
        n = self.stats[M_SAMPLES]
        return float(self.stats[M_POS] / n) if n else float("nan")


def auc_from_hist(hist):
    """ROC AUC from per-class histograms of predicted probability.

    hist[0] counts negatives and hist[1] positives per probability bin;
    pairs within one bin count as ties (1/2).
    """
    neg = hist[0].astype(np.float64)
    pos = hist[1].astype(np.float64)
    n_neg = neg.sum()
    n_pos = pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def auc_exact(labels, scores):
    """ROC AUC of scores against labels (> 0 positive), ties counted 1/2."""
    labels = np.asarray(labels) > 0
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    y = labels[order]
    # average ranks over ties
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[a:b] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs):
    y = np.asarray(labels) > 0
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


def fmt_int(n):
    return "{:,}".format(int(n))


def fmt_metric(x):
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.6f" % x


class Progress:
    """The progress lines of a long run on stderr, the same for every command:
    '<name>: part  part  ...', at most one every ``every`` seconds, none when
    ``quiet``. Each run says what its parts are; this holds when and how.

    >>> lines = []
    >>> p = Progress(lines.append, "fm_x", every=0)
    >>> if p.due():
    ...     p.say("%s lines" % fmt_int(1234), "", "%s/s" % p.rate(0))
    >>> lines
    ['fm_x: 1,234 lines  0/s']
    """

    def __init__(self, log, name, every=5.0, quiet=False):
        self.log = log
        self.name = name
        self.every = every
        self.quiet = quiet
        self.t0 = time.time()
        self.last = self.t0

    def due(self):
        """True (and the clock restarted) when a line is to be printed now."""
        now = time.time()
        if self.quiet or now - self.last < self.every:
            return False
        self.last = now
        return True

    @property
    def elapsed(self):
        return time.time() - self.t0

    def rate(self, n):
        """n per second since the run started, formatted."""
        return fmt_int(n / max(self.elapsed, 1e-9))

    def say(self, *parts):
        """One line of the non-empty ``parts``, two spaces apart."""
        self.log("%s: %s" % (self.name, "  ".join(p for p in parts if p)))
