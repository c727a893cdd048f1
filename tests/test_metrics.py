"""Metrics against cases whose answers follow from counting, and against sklearn as the oracle."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from harness.metrics import (
    MetricsError,
    _resample_counts,
    _weighted_aucs,
    best_f1,
    bootstrap_auc_interval,
    classification_metrics,
    equal_error_rate,
    tpr_at_fpr,
)

METRIC_KEYS = {"auc", "tpr_fpr1e-3", "tpr_fpr1e-2", "eer", "f1", "f1_threshold", "acc", "logloss"}


def separated(n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Real scores in [0, 0.4], fake in [0.6, 1]: any threshold between splits perfectly."""
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    s = np.r_[np.linspace(0.0, 0.4, n), np.linspace(0.6, 1.0, n)]
    return y, s


def gaussian(n: int, shift: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(size=n) + shift * y


def test_perfect_separation():
    y, s = separated()
    m = classification_metrics(y, s)
    assert set(m) == METRIC_KEYS
    assert m["auc"] == 1.0
    assert m["tpr_fpr1e-3"] == 1.0 and m["tpr_fpr1e-2"] == 1.0
    assert m["eer"] == 0.0
    assert m["f1"] == 1.0
    assert m["acc"] == 1.0


def test_reversed_scores():
    y, s = separated()
    m = classification_metrics(y, 1 - s)
    assert m["auc"] == 0.0
    assert m["tpr_fpr1e-3"] == 0.0
    assert m["eer"] == 1.0
    assert m["acc"] == 0.0


def test_tpr_at_fpr_by_counting():
    # 1000 distinct real scores, so each real sample is 1e-3 of FPR. Fakes are placed at the top:
    # `above` beat every real, `gap` fall between the top two reals, `tied` share the score of the
    # 2nd-highest real, the rest sit below all reals.
    real = np.arange(1000) / 1000
    above, gap, tied, below = 30, 20, 10, 40
    fake = np.r_[np.full(above, 2.0), np.full(gap, (real[-1] + real[-2]) / 2),
                 np.full(tied, real[-2]), np.full(below, -1.0)]
    y = np.r_[np.zeros(len(real), int), np.ones(len(fake), int)]
    s = np.r_[real, fake]
    n_fake = len(fake)
    # At FPR 0 only `above` are caught; allowing one real (FPR 1e-3) catches `gap` too.
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(above / n_fake)
    assert tpr_at_fpr(y, s, 1e-3) == pytest.approx((above + gap) / n_fake)
    assert classification_metrics(y, s)["tpr_fpr1e-3"] == pytest.approx((above + gap) / n_fake)
    # From FPR 0 to 1e-3 the curve runs flat: the top real is passed before any `gap` fake.
    assert tpr_at_fpr(y, s, 0.5e-3) == pytest.approx(above / n_fake)
    # The tie is one diagonal ROC step: halfway along it, half of `tied` are counted.
    assert tpr_at_fpr(y, s, 1.5e-3) == pytest.approx((above + gap + tied / 2) / n_fake)
    assert tpr_at_fpr(y, s, 1e-2) == pytest.approx((above + gap + tied) / n_fake)


def test_eer_symmetric_case():
    # Fakes mirror the reals about 0.5, so at threshold 0.5 the share of reals above equals the
    # share of fakes below: FPR = FNR = the share of reals above 0.5.
    real = np.linspace(0.0, 0.7, 701)[:-1] + 0.0005  # no score equals 0.5 exactly
    y = np.r_[np.zeros(len(real), int), np.ones(len(real), int)]
    s = np.r_[real, 1 - real]
    assert equal_error_rate(y, s) == pytest.approx(np.mean(real > 0.5))


def test_eer_gaussian_matches_theory():
    # Unit-variance classes `shift` apart cross at shift/2: EER = Phi(-shift/2).
    y, s = gaussian(200_000, shift=2.0)
    expected = 0.5 * math.erfc(1.0 / math.sqrt(2))
    assert equal_error_rate(y, s) == pytest.approx(expected, abs=0.005)


def test_best_f1_threshold_between_classes():
    y, s = separated()
    f1, threshold = best_f1(y, s)
    assert f1 == 1.0
    assert s[y == 0].max() < threshold <= s[y == 1].min()


def test_best_f1_matches_brute_force():
    y, s = gaussian(400, seed=3)
    f1, threshold = best_f1(y, s)
    brute = max(f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
    assert f1 == pytest.approx(brute)
    assert f1_score(y, (s >= threshold).astype(int)) == pytest.approx(f1)


def test_accuracy_and_logloss_by_hand():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.2, 0.6, 0.5, 1.0])  # 0.5 counts as fake; 1.0 is clipped
    m = classification_metrics(y, s)
    assert m["acc"] == 0.75
    p_true = np.array([0.8, 0.4, 0.5, 1 - 1e-7])
    assert m["logloss"] == pytest.approx(-np.mean(np.log(p_true)))


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_without_warnings(label):
    y = np.full(20, label)
    s = np.linspace(0.05, 0.95, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, s)
        interval = bootstrap_auc_interval(y, s, n_boot=50)
    for key in ("auc", "tpr_fpr1e-3", "tpr_fpr1e-2", "eer", "f1", "f1_threshold"):
        assert math.isnan(m[key]), key
    assert m["acc"] == np.mean((s >= 0.5) == label)
    assert math.isfinite(m["logloss"])
    assert all(math.isnan(v) for v in interval)


def test_metrics_agree_with_sklearn_auc():
    y, s = gaussian(2000, seed=5)
    assert classification_metrics(y, s)["auc"] == pytest.approx(roc_auc_score(y, s))


def test_bootstrap_contains_point_and_narrows():
    y_small, s_small = gaussian(200, seed=1)
    y_big, s_big = gaussian(5000, seed=1)
    low_s, high_s = bootstrap_auc_interval(y_small, s_small)
    low_b, high_b = bootstrap_auc_interval(y_big, s_big)
    assert low_s <= roc_auc_score(y_small, s_small) <= high_s
    assert low_b <= roc_auc_score(y_big, s_big) <= high_b
    # Width shrinks like 1/sqrt(n): 25x the samples should give about a fifth of the width.
    assert (high_b - low_b) < 0.4 * (high_s - low_s)


def test_bootstrap_handles_ties_and_is_reproducible():
    y, s = gaussian(300, seed=2)
    s = np.round(s, 1)  # heavy ties: each must count half, as in sklearn
    a = bootstrap_auc_interval(y, s, seed=7)
    assert a == bootstrap_auc_interval(y, s, seed=7)
    assert a != bootstrap_auc_interval(y, s, seed=8)
    assert a[0] <= roc_auc_score(y, s) <= a[1]


def test_bootstrap_matches_sklearn_per_resample():
    # The vectorised AUC of a resample must equal sklearn's AUC on that resample.
    y, s = gaussian(500, seed=4)
    s = np.round(s, 1)
    order = np.argsort(s, kind="stable")
    y_sorted, s_sorted = y[order], s[order]
    tie_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    counts = _resample_counts(np.random.default_rng(0), len(y), 20)
    fast = _weighted_aucs(counts, y_sorted, tie_starts)
    for row, auc in zip(counts, fast):
        idx = np.repeat(np.arange(len(y)), row)
        assert auc == pytest.approx(roc_auc_score(y_sorted[idx], s_sorted[idx]), abs=1e-12)


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1, 1], [0.1, 0.9], "length"),
        ([[0, 1]], [[0.1, 0.9]], "1-D"),
        ([0, 1], [0.1, np.nan], "non-finite"),
        ([0, 1], [0.1, np.inf], "non-finite"),
        ([0, 2], [0.1, 0.9], "0 \\(real\\) and 1"),
        ([], [], "empty"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [classification_metrics, equal_error_rate, best_f1, bootstrap_auc_interval,
     lambda y, s: tpr_at_fpr(y, s, 1e-3)],
)
def test_invalid_input_raises(fn, y, s, message):
    with pytest.raises(ValueError, match=message) as info:
        fn(np.asarray(y), np.asarray(s))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, MetricsError) and info.value.exit_code == 1  # a failed job on the command line
