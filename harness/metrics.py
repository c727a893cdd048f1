"""Competition metrics over numpy arrays: labels 1 = deepfake, scores = probability of fake.

The ranking is ROC-AUC with ties broken by TPR at FPR = 1e-3; F1 and log loss are watched too.
Every curve comes from sklearn so our numbers match what the organisers compute. Threshold-based
metrics call a sample fake when `score >= threshold`, sklearn's convention for curve thresholds.

With one class present the ranking metrics are undefined: they come back as nan rather than as an
exception or a warning, so a partial validation split never aborts a run. Arrays that cannot be
scored at all (non-finite scores from a broken model, mismatched lengths) raise `MetricsError`, a
failed job (exit 1) that is still a ValueError for callers that catch that.
"""
from __future__ import annotations

import numpy as np

from harness.errors import JobFailed

# sklearn.metrics is imported inside the functions that use it: it costs about 1.2 s, and commands
# that only import this module for its types (audit, submit's checks) should not pay it.
LOGLOSS_EPS = 1e-7
# Resamples are processed in chunks of at most this many (resample, sample) cells, so memory
# stays near 8 bytes x this x a few arrays (~100 MB) whatever the number of samples.
_BOOT_CELLS = 4_000_000


class MetricsError(JobFailed, ValueError):
    """Labels and scores that cannot be scored: the run that produced them failed (exit 1)."""


def validate(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return `(labels as int 0/1, scores as float)`, or raise MetricsError saying what is wrong."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1 or y_score.ndim != 1:
        shapes = f"{y_true.shape} and {y_score.shape}"
        raise MetricsError(f"y_true and y_score must be 1-D, got shapes {shapes}")
    if len(y_true) != len(y_score):
        raise MetricsError(f"y_true and y_score differ in length: {len(y_true)} != {len(y_score)}")
    if len(y_true) == 0:
        raise MetricsError("y_true and y_score are empty")
    if not np.all(np.isfinite(y_score)):
        raise MetricsError(f"y_score has {np.count_nonzero(~np.isfinite(y_score))} non-finite values")
    if not np.isin(y_true, (0, 1)).all():
        found = np.unique(y_true)[:5]
        raise MetricsError(f"y_true must hold only 0 (real) and 1 (fake), got {found}")
    return y_true.astype(int), y_score


def has_both_classes(y_true: np.ndarray) -> bool:
    """Whether ranking metrics are defined: sklearn raises or warns when a class is missing."""
    return 0 < np.count_nonzero(y_true) < len(y_true)


def tpr_at_fpr(y_true: np.ndarray, y_score: np.ndarray, fpr: float) -> float:
    """TPR at `fpr`, linearly interpolated on the full ROC curve.

    Where the curve is vertical at exactly `fpr`, np.interp takes the last (highest) TPR there,
    i.e. the best TPR reachable without exceeding `fpr`.
    """
    from sklearn.metrics import roc_curve

    y_true, y_score = validate(y_true, y_score)
    if not has_both_classes(y_true):
        return float("nan")
    fprs, tprs, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    return float(np.interp(fpr, fprs, tprs))


def equal_error_rate(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The rate where FPR equals FNR, interpolated linearly along the ROC curve."""
    from sklearn.metrics import roc_curve

    y_true, y_score = validate(y_true, y_score)
    if not has_both_classes(y_true):
        return float("nan")
    fprs, tprs, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    # FPR - FNR rises strictly along the full curve (every threshold moves FPR or TPR), and both
    # are linear within a segment, so interpolating FPR at FPR - FNR = 0 lands on the crossing.
    return float(np.interp(0.0, fprs - (1.0 - tprs), fprs))


def best_f1(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """`(F1, threshold)` at the threshold that maximises F1; (nan, nan) with one class."""
    from sklearn.metrics import precision_recall_curve

    y_true, y_score = validate(y_true, y_score)
    if not has_both_classes(y_true):
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    # The last point (precision 1, recall 0) has no threshold; drop it.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """All watched metrics in one dict; the ranking ones are nan when a class is missing."""
    from sklearn.metrics import log_loss, roc_auc_score

    y_true, y_score = validate(y_true, y_score)
    nan = float("nan")
    both = has_both_classes(y_true)
    f1, f1_threshold = best_f1(y_true, y_score)
    clipped = np.clip(y_score, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return {
        "auc": float(roc_auc_score(y_true, y_score)) if both else nan,
        "tpr_fpr1e-3": tpr_at_fpr(y_true, y_score, 1e-3),
        "tpr_fpr1e-2": tpr_at_fpr(y_true, y_score, 1e-2),
        "eer": equal_error_rate(y_true, y_score),
        "f1": f1,
        "f1_threshold": f1_threshold,
        "acc": float(np.mean((y_score >= 0.5) == y_true)),
        # labels= keeps log loss defined when only one class is present.
        "logloss": float(log_loss(y_true, clipped, labels=[0, 1])),
    }


def bootstrap_auc_interval(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap `(low, high)` interval of ROC-AUC over resampled (label, score) pairs.

    Resamples holding one class are skipped; (nan, nan) when none holds both. A resample is
    represented by how often it draws each sample, so all its AUCs come from a few array passes
    instead of one sklearn call per resample (about 40x slower at 5000 samples).
    """
    y_true, y_score = validate(y_true, y_score)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    order = np.argsort(y_score, kind="stable")
    y_sorted, s_sorted = y_true[order], y_score[order]
    # Start of each run of tied scores, so ties count half as in sklearn's AUC.
    tie_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    rng = np.random.default_rng(seed)
    n = len(y_sorted)
    rows = max(1, _BOOT_CELLS // n)
    aucs = [
        _weighted_aucs(_resample_counts(rng, n, min(rows, n_boot - done)), y_sorted, tie_starts)
        for done in range(0, n_boot, rows)
    ]
    aucs = np.concatenate(aucs)
    aucs = aucs[~np.isnan(aucs)]
    if len(aucs) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _resample_counts(rng: np.random.Generator, n: int, n_rows: int) -> np.ndarray:
    """`(n_rows, n)` counts: how often each of n samples is drawn in each bootstrap resample."""
    draws = rng.integers(0, n, size=(n_rows, n))
    draws += np.arange(n_rows)[:, None] * n  # a distinct bin range per row, for a single bincount
    return np.bincount(draws.ravel(), minlength=n_rows * n).reshape(n_rows, n)


def _weighted_aucs(counts: np.ndarray, y_sorted: np.ndarray, tie_starts: np.ndarray) -> np.ndarray:
    """AUC of each row of `counts` used as sample weights over score-sorted samples; nan where
    a row draws one class only. Equals roc_auc_score(y, s, sample_weight=row)."""
    neg = np.add.reduceat(counts * (y_sorted == 0), tie_starts, axis=1).astype(float)
    pos = np.add.reduceat(counts * (y_sorted == 1), tie_starts, axis=1).astype(float)
    # Each positive beats the negatives below its score and half-beats those tied with it.
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    pairs = neg.sum(axis=1) * pos.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(pairs), np.nan), where=pairs > 0)
