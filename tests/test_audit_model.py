"""The audit's numpy model against sklearn: the same AUC, folds that stratify, the same fit."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harness.audit.model import LogisticModel, auc, out_of_fold, stratified_folds


def test_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for n in (5, 40, 500):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        x = np.round(rng.standard_normal(n) + y, 1)  # rounded: many ties
        assert auc(y, x) == pytest.approx(roc_auc_score(y, x), abs=1e-12)


def test_folds_hold_each_class_in_proportion() -> None:
    y = np.array([0] * 13 + [1] * 7)
    folds = stratified_folds(y, 5, seed=3)
    for fold in range(5):
        assert np.count_nonzero(y[folds == fold] == 1) in (1, 2) and np.count_nonzero(y[folds == fold] == 0) in (2, 3)
    assert sorted(np.bincount(folds)) == [4, 4, 4, 4, 4]
    assert np.array_equal(folds, stratified_folds(y, 5, seed=3)) and not np.array_equal(folds, stratified_folds(y, 5, seed=4))


@pytest.mark.parametrize("separable", [False, True])
def test_out_of_fold_probabilities_match_sklearns_logistic_regression(separable: bool) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    matrix = rng.standard_normal((60, 5)) + (4.0 if separable else 0.5) * y[:, None]
    matrix[:, 2] *= 1000  # scales differ: standardisation matters
    matrix[rng.random((60, 5)) < 0.1] = np.nan  # unknown values: median imputation
    matrix[:, 4] = np.where(np.arange(60) < 50, np.nan, matrix[:, 4])  # unknown in most clips
    folds = stratified_folds(y, 5, seed=0)
    ours = out_of_fold(matrix, y, folds)
    sklearn = np.empty(60)
    for fold in range(5):
        held = folds == fold
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              LogisticRegression(solver="newton-cholesky", tol=1e-10, max_iter=1000))
        sklearn[held] = model.fit(matrix[~held], y[~held]).predict_proba(matrix[held])[:, 1]
    np.testing.assert_allclose(ours, sklearn, atol=1e-6)


def test_a_column_unknown_in_every_training_clip_is_filled_with_zero() -> None:
    matrix = np.column_stack([np.array([0.0, 1.0, 2.0, 3.0]), np.full(4, np.nan)])
    model = LogisticModel().fit(matrix, np.array([0, 0, 1, 1]))
    assert model.medians[1] == 0.0 and np.isfinite(model.predict(matrix)).all()
