"""The low-FPR analysis (TPR intervals, the most confidently wrong clips, the thumbnail sheet) and the
paired AUC comparison the promotion gate uses."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from harness.analysis import (
    _resamples,
    confidently_wrong,
    low_fpr_metrics,
    paired_auc_difference,
    split_thumbnails,
    tpr_intervals,
    write_low_fpr_analysis,
)
from harness.data.dataset import SplitArrays
from harness.metrics import percentiles, tpr_at_fpr


def test_tpr_intervals_match_sklearn_on_every_resample() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounded: many ties
    got = tpr_intervals(y, s, (1e-3, 1e-2, 0.1), n_boot=200, seed=3)
    expected: dict[float, list[float]] = {f: [] for f in got}
    for idx in _resamples(300, 200, 3):
        fprs, tprs, _ = roc_curve(y[idx], s[idx], drop_intermediate=False)
        for f in expected:
            expected[f].append(float(np.interp(f, fprs, tprs)))
    for f, values in expected.items():
        assert got[f] == pytest.approx(percentiles(values, 0.05))
        assert got[f][0] <= tpr_at_fpr(y, s, f) + 0.2 and got[f][0] < got[f][1]


def test_low_fpr_metrics_name_both_points_with_their_intervals() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    s = rng.random(400) + 0.5 * y
    m = low_fpr_metrics(y, s, n_boot=200)
    assert set(m) == {f"val_tpr_fpr{p}{suffix}" for p in ("1e-3", "1e-2") for suffix in ("", "_ci_low", "_ci_high")}
    for p in ("1e-3", "1e-2"):
        assert m[f"val_tpr_fpr{p}_ci_low"] <= m[f"val_tpr_fpr{p}"] <= m[f"val_tpr_fpr{p}_ci_high"]
    assert m["val_tpr_fpr1e-2"] == pytest.approx(tpr_at_fpr(y, s, 1e-2))


def test_confidently_wrong_lists_reals_scored_most_fake_and_fakes_scored_most_real() -> None:
    names = ["r0", "r1", "r2", "f0", "f1", "f2"]
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.2, 0.9, 0.9, 0.05, 0.8, 0.6])
    reals, fakes = confidently_wrong(names, labels, scores, top=2)
    assert [(w.name, w.score) for w in reals] == [("r1", 0.9), ("r2", 0.9)]  # ties by name
    assert [w.name for w in fakes] == ["f0", "f2"] and fakes[0].index == 3


def test_paired_bootstrap_tells_a_better_model_from_an_equal_one() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 150)
    signal = rng.standard_normal(300)
    weak = y * 0.5 + signal
    strong = y * 1.5 + signal  # the same noise, a larger margin: better on every resample
    better = paired_auc_difference(y, strong, weak, n_boot=300)
    assert better.better and better.low > 0 and better.share_better == 1.0
    assert better.difference == pytest.approx(better.candidate_auc - better.reference_auc)
    same = paired_auc_difference(y, weak + 1e-9 * rng.standard_normal(300), weak, n_boot=300)
    assert not same.better and same.low <= 0 <= same.high


def test_analysis_files_and_thumbnail_sheet(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 30
    mels = rng.integers(0, 255, size=(n, 16, 24), dtype=np.uint8)
    labels = np.repeat([0, 1], n // 2)
    data = SplitArrays(inputs={"audio": mels}, labels=labels, names=[f"clip{i}.mp4" for i in range(n)])
    scores = rng.random(n)
    metrics = write_low_fpr_analysis(tmp_path / "a", data.names, labels, scores, thumbnails=split_thumbnails(data),
                                     title="run", n_boot=100)
    assert "val_tpr_fpr1e-3_ci_high" in metrics
    rows = list(csv.DictReader(io.StringIO((tmp_path / "a" / "confidently_wrong.csv").read_text())))
    assert len(rows) == 30 and rows[0]["kind"] == "real scored fake"
    worst_real = max(range(15), key=lambda i: scores[i])
    assert rows[0]["video_name"] == f"clip{worst_real}.mp4"
    summary = json.loads((tmp_path / "a" / "low_fpr.json").read_text())
    assert summary["reals_scored_most_fake"][0]["name"] == f"clip{worst_real}.mp4"
    png = (tmp_path / "a" / "confidently_wrong.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # face crops: the middle frame of each clip
    crops = rng.integers(0, 255, size=(4, 3, 8, 8, 3), dtype=np.uint8)
    video = SplitArrays(inputs={"video": crops}, labels=np.array([0, 1, 0, 1]), names=list("abcd"))
    np.testing.assert_array_equal(split_thumbnails(video)([2])[0], crops[2, 1])


def test_paired_bootstrap_matches_sklearn_on_every_resample() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    a, b = np.round(rng.random(200) + 0.3 * y, 2), np.round(rng.random(200) + 0.2 * y, 1)  # ties in both
    found = paired_auc_difference(y, a, b, n_boot=100, seed=4)
    diffs = [roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]) for i in _resamples(200, 100, 4) if 0 < y[i].sum() < 200]
    assert (found.low, found.high) == pytest.approx(percentiles(diffs, 0.05))
    assert found.candidate_auc == pytest.approx(roc_auc_score(y, a)) and found.reference_auc == pytest.approx(roc_auc_score(y, b))
