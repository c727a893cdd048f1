"""How well metadata alone tells classes (or splits) apart: single-feature AUCs and a small model.

Numeric columns are features; a text column with two or more values gives a 0/1 feature per value
(`audio_codec=aac`). AUC is max(AUC, 1 - AUC), `direction` naming which, with a percentile bootstrap
interval. A finding needs the threshold *and* a Bonferroni Mann-Whitney p below 0.05 (2 reals and 3 fakes
give one feature in ten AUC 1 by chance; among 25 features 8 clips a class pass, 6 do not). The model:
`harness.audit.model` out of fold by stratified k-fold (k = 5, fewer for a small class; none below 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.audit.model import auc, out_of_fold, stratified_folds
from harness.audit.probe import PROBE_COLUMNS, TEXT_COLUMNS

# harness.metrics (sklearn: 1.2 s) is imported inside functions: the table's workers never need it.
NUMERIC = tuple(c for c in PROBE_COLUMNS if c not in TEXT_COLUMNS) + ("face_found_rate",)
CATEGORICAL = ("container", "audio_codec", "video_codec")
MODEL_FEATURE = "metadata_model"  # how the model's score is named among the features
ALPHA = 0.05
MAX_FOLDS = 5


@dataclass(frozen=True)
class FeatureAUC:
    feature: str
    split: str  # a split name, or "train~test" for adversarial validation
    auc: float  # max(AUC, 1 - AUC)
    low: float
    high: float
    n: int  # clips with a value
    p: float  # two-sided chance of an AUC this far from 0.5 with no association (Mann-Whitney)
    direction: str  # "higher in fakes", "lower in test", ...

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "split": self.split, "auc": _round(self.auc), "low": _round(self.low),
                "high": _round(self.high), "n": self.n, "p": float(f"{self.p:.3g}"), "direction": self.direction}


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def feature_matrix(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Feature names and the (clips, features) matrix (nan: unknown), without columns unknown for every clip."""
    names: list[str] = []
    columns: list[np.ndarray] = []
    for c in NUMERIC:
        values = np.array([np.nan if r.get(c) is None else float(r[c]) for r in rows], dtype=float)
        if np.isfinite(values).any():
            names.append(c)
            columns.append(values)
    for c in CATEGORICAL:
        seen = sorted({r[c] for r in rows if r.get(c)})
        if len(seen) < 2:
            continue
        for value in seen:
            names.append(f"{c}={value}")
            columns.append(np.array([np.nan if not r.get(c) else float(r[c] == value) for r in rows]))
    return names, np.column_stack(columns) if columns else np.zeros((len(rows), 0))


def p_value(auc: float, n_pos: int, n_neg: int) -> float:
    """Two-sided p-value of an AUC this far from 0.5 with no information (Mann-Whitney normal approximation,
    without a tie correction: conservative)."""
    sd = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    return math.erfc(abs(auc - 0.5) / sd / math.sqrt(2))


def feature_aucs(names: list[str], matrix: np.ndarray, y: np.ndarray, split: str, *, positive: str = "fakes",
                 n_boot: int = 1000, seed: int = 0, best: int | None = None) -> list[FeatureAUC]:
    """Each feature's AUC for `y` (1 = `positive`) where known, best first; intervals (the cost) only for the
    `best` highest, a constant feature's [0.5, 0.5] undrawn (half the demo's)."""
    from harness.metrics import bootstrap_auc_interval, has_both_classes

    scored = []
    for j, name in enumerate(names):
        known = np.isfinite(matrix[:, j])
        x, labels = matrix[known, j], y[known]
        if has_both_classes(labels):
            raw = auc(labels, x)
            scored.append((max(raw, 1 - raw), name, raw, x, labels))
    scored.sort(key=lambda item: (-item[0], item[1]))
    found = []
    for _, name, raw, x, labels in scored[:best]:
        constant = bool(x.min() == x.max())
        low, high = (0.5, 0.5) if constant else bootstrap_auc_interval(labels, x, n_boot=n_boot, seed=seed)
        direction = "no difference" if raw == 0.5 else f"{'higher' if raw > 0.5 else 'lower'} in {positive}"
        if raw < 0.5:
            raw, low, high = 1 - raw, 1 - high, 1 - low
        n_pos = int(labels.sum())
        found.append(FeatureAUC(name, split, raw, low, high, len(labels), p_value(raw, n_pos, len(labels) - n_pos), direction))
    return found


def is_finding(f: FeatureAUC, threshold: float, tests: int) -> bool:
    """At or above the threshold, and not a chance result among `tests` features (Bonferroni)."""
    return f.auc >= threshold and f.p * max(tests, 1) < ALPHA


def model_auc(names: list[str], matrix: np.ndarray, y: np.ndarray, split: str, *, seed: int = 0,
              n_boot: int = 1000) -> tuple[FeatureAUC, int] | None:
    """The out-of-fold AUC (not turned: below 0.5 it found nothing) of the model on every feature, and the folds;
    None when a class has fewer than 2 clips or nothing varies."""
    n_pos = int(y.sum())
    folds = min(MAX_FOLDS, n_pos, len(y) - n_pos)  # stratified: no fold without both classes
    varied = [j for j in range(matrix.shape[1]) if len(np.unique(matrix[np.isfinite(matrix[:, j]), j])) > 1]
    if folds < 2 or not varied:
        return None
    from harness.metrics import bootstrap_auc_interval

    scores = out_of_fold(matrix[:, varied], y, stratified_folds(y, folds, seed))
    found = auc(y, scores)
    low, high = bootstrap_auc_interval(y, scores, n_boot=n_boot, seed=seed)
    direction = f"{len(varied)} features, {folds}-fold CV"
    return FeatureAUC(MODEL_FEATURE, split, found, low, high, len(y), p_value(found, n_pos, len(y) - n_pos), direction), folds
