"""Duplicate pairs, near-duplicate clusters (`groups`), and the metadata statistics."""
from __future__ import annotations

import numpy as np
import pytest

from harness.audit.duplicates import AUDIO, IDENTICAL, Pair, find_duplicates, groups, identical_pairs, similar_pairs
from harness.audit.stats import MODEL_FEATURE, feature_aucs, feature_matrix, is_finding, model_auc, p_value

KEYS = ["train/a", "train/b", "val/c", "val/d", "test/e"]


def _packed(rows: list[np.ndarray]) -> np.ndarray:
    return np.packbits(np.array(rows, bool), axis=1)


def test_identical_pairs_link_every_file_with_the_same_digest() -> None:
    pairs = identical_pairs(KEYS, ["x", "y", "x", None, "x"])
    assert [(p.a, p.b) for p in pairs] == [("train/a", "val/c"), ("train/a", "test/e"), ("val/c", "test/e")]
    assert all(p.kind == IDENTICAL and p.similarity == 1.0 for p in pairs)


def test_similar_pairs_keep_those_at_or_above_the_threshold_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(512) > 0.5
    near = base.copy()
    near[:40] = ~near[:40]  # 472 of 512 bits agree: 0.922
    far = rng.random(512) > 0.5
    bits = _packed([base, far, near, far, base])
    valid = np.array([True, True, True, True, False])  # e has no fingerprint: never paired
    pairs = similar_pairs(KEYS, bits, valid, 0.9, AUDIO)
    assert {(p.a, p.b) for p in pairs} == {("train/a", "val/c"), ("train/b", "val/d")}
    near_pair = next(p for p in pairs if p.b == "val/c")
    assert near_pair.similarity == pytest.approx(472 / 512, abs=1e-4)
    assert similar_pairs(KEYS, bits, valid, 0.95, AUDIO) == [Pair("train/b", "val/d", AUDIO, 1.0)]


def test_find_duplicates_lists_identical_once_and_across_splits_first() -> None:
    same = np.zeros(512, bool)
    same[::3] = True
    bits = _packed([same, same, same, ~same, ~same])
    pairs = find_duplicates(KEYS, ["x", "x", "y", "z", "w"], bits, np.ones(5, bool), np.zeros((5, 0), np.uint8),
                            np.zeros(5, bool), audio_threshold=0.8)
    assert pairs[0].across_splits and {(p.a, p.b, p.kind) for p in pairs} == {
        ("train/a", "train/b", IDENTICAL),  # not listed again as an audio pair
        ("train/a", "val/c", AUDIO), ("train/b", "val/c", AUDIO), ("val/d", "test/e", AUDIO),
    }
    assert [p.across_splits for p in pairs] == [True, True, True, False]


def test_groups_join_clusters_transitively_and_leave_others_alone() -> None:
    pairs = [Pair("val/c", "test/e", AUDIO, 0.9), Pair("train/b", "test/e", IDENTICAL, 1.0),
             Pair("x/unknown", "train/a", AUDIO, 1)]  # a clip not among the keys is ignored
    found = groups(pairs, KEYS)
    assert found == {"train/a": 0, "train/b": 1, "val/c": 1, "val/d": 3, "test/e": 1}
    assert groups([], KEYS) == {k: i for i, k in enumerate(KEYS)}


# ---- statistics ---------------------------------------------------------------------------------

def test_feature_matrix_turns_text_columns_into_indicators_and_drops_unknown_columns() -> None:
    rows = [{"file_size": 10, "audio_codec": "aac", "fps": None}, {"file_size": 20, "audio_codec": "mp3", "fps": None},
            {"file_size": None, "audio_codec": None, "fps": None}]
    names, matrix = feature_matrix(rows)
    assert names == ["file_size", "audio_codec=aac", "audio_codec=mp3"]
    np.testing.assert_array_equal(matrix[:2], [[10, 1, 0], [20, 0, 1]])
    assert np.isnan(matrix[2]).all()


def test_feature_auc_is_turned_to_its_better_direction_with_its_interval() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    lower_in_fakes = np.where(y == 1, 0.0, 1.0) + 0.8 * rng.standard_normal(80)
    noise = rng.standard_normal(80)
    found = feature_aucs(["a", "b"], np.column_stack([lower_in_fakes, noise]), y, "train", n_boot=300)
    first = found[0]
    assert first.feature == "a" and first.direction == "lower in fakes" and first.auc > 0.75
    assert first.low <= first.auc <= first.high and first.high <= 1.0
    assert is_finding(first, 0.75, 2) and not is_finding(found[1], 0.75, 2)


def test_a_perfect_feature_in_a_tiny_split_is_not_a_finding() -> None:
    """Two reals and three fakes: some feature among 25 separates them perfectly by chance."""
    y = np.array([0, 0, 1, 1, 1])
    found = feature_aucs(["x"], np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), y, "val", n_boot=100)
    assert found[0].auc == 1.0 and not is_finding(found[0], 0.75, 25)
    assert p_value(1.0, 8, 8) * 25 < 0.05 < p_value(1.0, 6, 6) * 25  # where the guard lets go


def test_model_auc_combines_features_out_of_fold() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 50)
    # Each feature alone is weak (d' = 0.7, AUC about 0.69); the six together are not (AUC about 0.89).
    matrix = y[:, None] * 0.7 + rng.standard_normal((100, 6))
    single = max(f.auc for f in feature_aucs([str(i) for i in range(6)], matrix, y, "train", n_boot=50))
    model, folds = model_auc([str(i) for i in range(6)], matrix, y, "train", n_boot=200)
    assert folds == 5 and model.feature == MODEL_FEATURE and model.auc > single and model.auc > 0.8
    assert model_auc(["x"], np.ones((5, 1)), np.array([0, 1, 1, 1, 1]), "val") is None  # one real: no folds


def test_a_constant_feature_gets_the_exact_interval_and_best_keeps_the_top() -> None:
    y = np.repeat([0, 1], 10)
    matrix = np.column_stack([np.full(20, 3.0), np.arange(20.0), np.r_[np.arange(10.0), np.arange(10.0)]])
    found = feature_aucs(["flat", "rising", "same"], matrix, y, "train", n_boot=100)
    flat = next(f for f in found if f.feature == "flat")
    assert (flat.auc, flat.low, flat.high, flat.direction) == (0.5, 0.5, 0.5, "no difference")
    assert found[0].feature == "rising" and found[0].direction == "higher in fakes"
    assert [f.feature for f in feature_aucs(["flat", "rising", "same"], matrix, y, "train", best=1)] == ["rising"]
