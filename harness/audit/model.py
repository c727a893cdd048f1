"""The audit's small model in numpy (sklearn's import costs 1.2 s, the audit's budget on 10 real clips): ROC
AUC by ranks, stratified folds, and sklearn's default `LogisticRegression()` on median-imputed, standardised
inputs by Newton's method; tests/test_audit_model.py holds it to sklearn within 1e-6.
"""
from __future__ import annotations

import numpy as np

MAX_NEWTON_STEPS = 100


def auc(y: np.ndarray, x: np.ndarray) -> float:
    """ROC AUC of scores `x` for 0/1 labels `y` (both present), ties counting half, as sklearn's."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    ranks = (starts + (counts + 1) / 2)[inverse]  # each tie group shares its average rank (1-based)
    positives = int(np.count_nonzero(y))
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold (0..k-1) per sample: each class shuffled and dealt round the folds, so each holds it in proportion."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), int)
    offset = 0
    for value in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == value))
        folds[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # the next class continues where this one stopped: folds stay even in size
    return folds


class LogisticModel:
    """Median imputation, standardisation and L2 logistic regression (C = 1), fitted on one set."""

    def fit(self, matrix: np.ndarray, y: np.ndarray) -> LogisticModel:
        known = np.isfinite(matrix)
        any_known = known.any(axis=0)
        self.medians = np.zeros(matrix.shape[1])
        if any_known.any():
            self.medians[any_known] = np.nanmedian(matrix[:, any_known], axis=0)
        filled = np.where(known, matrix, self.medians)
        self.mean = filled.mean(axis=0)
        scale = filled.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        self.weights = _newton(self._design(filled), y.astype(float))
        return self

    def _design(self, filled: np.ndarray) -> np.ndarray:
        return np.column_stack([(filled - self.mean) / self.scale, np.ones(len(filled))])

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The probability of class 1 for each row."""
        filled = np.where(np.isfinite(matrix), matrix, self.medians)
        return _sigmoid(self._design(filled) @ self.weights)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def _objective(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    z = design @ w
    # log(1 + e^z) - y z, summed, computed without overflow; plus the penalty on every weight but the intercept
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.dot(w[:-1], w[:-1]))


def _newton(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    penalty = np.ones(design.shape[1])
    penalty[-1] = 0.0  # the intercept is not penalised
    w = np.zeros(design.shape[1])
    value = _objective(design, y, w)
    for _ in range(MAX_NEWTON_STEPS):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(w)), gradient)
        size = 1.0
        while size > 1e-10:  # halve the step until the objective does not rise
            trial = w - size * step
            trial_value = _objective(design, y, trial)
            if trial_value <= value:
                break
            size /= 2
        w, value = trial, trial_value
        if np.max(np.abs(size * step)) < 1e-10:
            break
    return w


def out_of_fold(matrix: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each sample's probability from the model fitted on the other folds."""
    scores = np.empty(len(y))
    for fold in np.unique(folds):
        held = folds == fold
        scores[held] = LogisticModel().fit(matrix[~held], y[~held]).predict(matrix[held])
    return scores
