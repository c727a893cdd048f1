"""Competition metrics over numpy arrays: labels 1 = deepfake, scores = probability of fake.

Ranking: ROC-AUC, ties broken by TPR at FPR = 1e-3; curves from sklearn, as the organisers compute them;
fake when `score >= threshold`. With one class the ranking metrics are nan. Arrays that cannot be scored
raise `MetricsError` (exit 1; also a ValueError).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.errors import JobFailed

# sklearn.metrics (1.2 s to import) is imported inside the functions that use it.
LOGLOSS_EPS = 1e-7
_BOOT_CELLS = 4_000_000  # (resample, sample) cells per bootstrap chunk: ~100 MB whatever the sample count


class MetricsError(JobFailed, ValueError):
    """Labels and scores that cannot be scored: the run that produced them failed (exit 1)."""


def validate(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return `(labels as int 0/1, scores as float)`, or raise MetricsError saying what is wrong."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1 or y_score.ndim != 1:
        raise MetricsError(f"y_true and y_score must be 1-D, got shapes {y_true.shape} and {y_score.shape}")
    if len(y_true) != len(y_score):
        raise MetricsError(f"y_true and y_score differ in length: {len(y_true)} != {len(y_score)}")
    if len(y_true) == 0:
        raise MetricsError("y_true and y_score are empty")
    if not np.all(np.isfinite(y_score)):
        raise MetricsError(f"y_score has {np.count_nonzero(~np.isfinite(y_score))} non-finite values")
    if not np.isin(y_true, (0, 1)).all():
        raise MetricsError(f"y_true must hold only 0 (real) and 1 (fake), got {np.unique(y_true)[:5]}")
    return y_true.astype(int), y_score


def has_both_classes(y_true: np.ndarray) -> bool:
    """Whether ranking metrics are defined: sklearn raises or warns when a class is missing."""
    return 0 < np.count_nonzero(y_true) < len(y_true)


def tpr_at_fpr(y_true: np.ndarray, y_score: np.ndarray, fpr: float) -> float:
    """TPR at `fpr`, interpolated on the full ROC curve (where it is vertical at `fpr`, the highest TPR)."""
    curve = _full_roc(y_true, y_score)
    return float("nan") if curve is None else float(np.interp(fpr, curve[0], curve[1]))


def equal_error_rate(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The rate where FPR equals FNR, interpolated linearly along the ROC curve."""
    curve = _full_roc(y_true, y_score)
    if curve is None:
        return float("nan")
    fprs, tprs = curve
    # FPR - FNR rises strictly along the full curve and is linear within a segment: interpolate its zero.
    return float(np.interp(0.0, fprs - (1.0 - tprs), fprs))


def _full_roc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPRs, TPRs) at every threshold (sklearn's, as the organisers compute it); None with one class."""
    from sklearn.metrics import roc_curve

    y_true, y_score = validate(y_true, y_score)
    if not has_both_classes(y_true):
        return None
    fprs, tprs, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    return fprs, tprs


def best_f1(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """`(F1, threshold)` at the threshold that maximises F1; (nan, nan) with one class."""
    from sklearn.metrics import precision_recall_curve

    y_true, y_score = validate(y_true, y_score)
    if not has_both_classes(y_true):
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    precision, recall = precision[:-1], recall[:-1]  # the last point (precision 1, recall 0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """All watched metrics in one dict; the ranking ones are nan when a class is missing."""
    from sklearn.metrics import log_loss, roc_auc_score

    y_true, y_score = validate(y_true, y_score)
    f1, f1_threshold = best_f1(y_true, y_score)
    clipped = np.clip(y_score, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return {
        "auc": float(roc_auc_score(y_true, y_score)) if has_both_classes(y_true) else float("nan"),
        "tpr_fpr1e-3": tpr_at_fpr(y_true, y_score, 1e-3), "tpr_fpr1e-2": tpr_at_fpr(y_true, y_score, 1e-2),
        "eer": equal_error_rate(y_true, y_score), "f1": f1, "f1_threshold": f1_threshold,
        "acc": float(np.mean((y_score >= 0.5) == y_true)),
        "logloss": float(log_loss(y_true, clipped, labels=[0, 1])),  # labels=: defined with one class too
    }


def bootstrap_auc_interval(y_true: np.ndarray, y_score: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap `(low, high)` of ROC-AUC over two-class resamples (else nan), from draw counts."""
    y_true, y_score = validate(y_true, y_score)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    _, y_sorted, tie_starts = _ranking(y_true, y_score)  # ties count half, as in sklearn's AUC
    rng = np.random.default_rng(seed)
    n = len(y_sorted)
    rows = max(1, _BOOT_CELLS // n)
    aucs = np.concatenate([_weighted_aucs(_resample_counts(rng, n, min(rows, n_boot - done)), y_sorted, tie_starts)
                           for done in range(0, n_boot, rows)])
    return percentiles(aucs[~np.isnan(aucs)], alpha)


def percentiles(values: Sequence[float], alpha: float) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) quantiles of `values`; (nan, nan) when there are none."""
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by ascending score, labels in that order, start of each tie group)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    return order, labels[order], np.flatnonzero(np.r_[True, s[1:] != s[:-1]])


def _resample_counts(rng: np.random.Generator, n: int, n_rows: int) -> np.ndarray:
    """`(n_rows, n)` counts: how often each of n samples is drawn in each bootstrap resample."""
    draws = rng.integers(0, n, size=(n_rows, n))
    draws += np.arange(n_rows)[:, None] * n  # a distinct bin range per row, for a single bincount
    return np.bincount(draws.ravel(), minlength=n_rows * n).reshape(n_rows, n)


def _weighted_aucs(counts: np.ndarray, y_sorted: np.ndarray, tie_starts: np.ndarray) -> np.ndarray:
    """roc_auc_score with each row of `counts` as sample weights over score-sorted samples; nan: one class."""
    neg = np.add.reduceat(counts * (y_sorted == 0), tie_starts, axis=1).astype(float)
    pos = np.add.reduceat(counts * (y_sorted == 1), tie_starts, axis=1).astype(float)
    # Each positive beats the negatives below its score and half-beats those tied with it.
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    pairs = neg.sum(axis=1) * pos.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(pairs), np.nan), where=pairs > 0)
