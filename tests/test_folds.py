"""Fold assignment for grouped cross-validation: pooled splits read without copies, stratified folds,
groups that never straddle folds (planted re-encoded copies found by the audit), group files."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from harness.config import AudioFeatures
from harness.crossval import check_group_by, clip_groups, cv_summary, plan_folds
from harness.data.cache import feature_dir, prepare_features
from harness.data.dataset import SplitArrays
from harness.data.folds import StackedRows, assign_folds, group_ids, pool, read_group_file, subset
from harness.data.labels import load_dataset
from harness.errors import BadInput
from tests.conftest import write_labels
from tests.test_audit_support import planted_dataset, reencode


def _split(values: np.ndarray, labels: list[int], names: list[str], rows: np.ndarray | None = None) -> SplitArrays:
    return SplitArrays(inputs={"audio": values}, labels=np.array(labels), names=names, rows=rows)


def test_stacked_rows_read_like_the_concatenation() -> None:
    a, b = np.arange(12).reshape(4, 3), np.arange(100, 106).reshape(2, 3)
    stacked, whole = StackedRows([a, b]), np.concatenate([a, b])
    idx = np.array([5, 0, 4, 3, 3])
    np.testing.assert_array_equal(stacked[idx], whole[idx])
    np.testing.assert_array_equal(stacked[0:1], whole[0:1])
    assert stacked.shape == (6, 3) and len(stacked) == 6
    with pytest.raises(ValueError):
        StackedRows([a, np.zeros((2, 4), a.dtype)])


def test_pool_and_subset_keep_each_clip_with_its_own_row() -> None:
    train_rows = np.arange(5)[:, None] * np.ones((5, 2), int)  # row i holds i
    val_rows = 10 + np.arange(3)[:, None] * np.ones((3, 2), int)
    # train uses rows 0, 2, 4 only (clips without features dropped), val all three
    train = _split(train_rows, [0, 1, 0], ["t0", "t2", "t4"], rows=np.array([0, 2, 4]))
    val = _split(val_rows, [1, 0, 1], ["v0", "v1", "v2"])
    pooled, keys = pool({"train": train, "val": val})
    assert keys == ["train/t0", "train/t2", "train/t4", "val/v0", "val/v1", "val/v2"]
    assert pooled.labels.tolist() == [0, 1, 0, 1, 0, 1] and len(pooled) == 6
    np.testing.assert_array_equal(pooled.arrays(np.arange(6))["audio"][:, 0], [0, 2, 4, 10, 11, 12])
    part = subset(pooled, np.array([4, 1]))
    assert part.names == ["v1", "t2"] and part.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(part.arrays(np.arange(2))["audio"][:, 0], [11, 2])


def test_folds_are_stratified_and_keep_groups_whole() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    groups = rng.integers(0, 20, size=60)  # 20 groups, mixed classes, uneven sizes
    folds = assign_folds(labels, groups, 3, seed=1)
    assert set(folds.tolist()) == {0, 1, 2}
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1, f"group {g} straddles folds"
    for f in range(3):
        assert 0 < labels[folds == f].sum() < (folds == f).sum()  # both classes in every fold
    np.testing.assert_array_equal(folds, assign_folds(labels, groups, 3, seed=1))  # the same seed, the same folds


def test_too_few_groups_for_the_folds_is_bad_input() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(BadInput, match="only 2 group.* fake"):
        assign_folds(labels, np.array([0, 1, 2, 3, 3, 4]), 3)
    with pytest.raises(BadInput, match="at least 2"):
        assign_folds(labels, np.arange(6), 1)


def test_group_ids_by_split_key_then_bare_name_else_alone() -> None:
    keys = ["train/a", "train/b", "val/a", "val/c"]
    ids = group_ids(keys, {"train/a": "s1", "val/c": "s1", "b": "s2"})
    assert ids[0] == ids[3] and ids[1] != ids[0] and ids[2] not in (ids[0], ids[1])
    assert len(set(group_ids(keys, None).tolist())) == 4


def test_group_file_is_read_and_its_problems_named(tmp_path: Path) -> None:
    good = tmp_path / "groups.csv"
    good.write_text("video_name,group\na.mp4,spk1\nval/b.mp4,spk1\n\n")
    assert read_group_file(good) == {"a.mp4": "spk1", "val/b.mp4": "spk1"}
    assert check_group_by(str(good)) == good and check_group_by("auto") == "auto"
    for text, message in (("name,group\na,1\n", "line 1: expected the header"), ("video_name,group\na,\n", "line 2"),
                          ("video_name,group\na,1\na,2\n", "line 3: 'a' listed twice")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(BadInput, match=message):
            read_group_file(bad)
    with pytest.raises(BadInput, match="not auto, none or an existing"):
        check_group_by(str(tmp_path / "missing.csv"))


def test_cv_summary_is_mean_and_spread_over_folds() -> None:
    found = cv_summary([{"val_auc": 0.9, "val_tpr_fpr1e-3": 0.2}, {"val_auc": 0.7, "val_tpr_fpr1e-3": 0.0},
                        {"val_auc": 0.8, "val_tpr_fpr1e-3": 0.1}])
    assert found["cv_val_auc_mean"] == pytest.approx(0.8) and found["cv_val_auc_std"] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert found["cv_val_tpr_fpr1e-3_mean"] == pytest.approx(0.1) and found["cv_folds_finished"] == 3


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[str, str]]]:
    """The audit's planted dataset with eight re-encoded train -> val copies, its audio features prepared."""
    from harness.audit import audit_dataset

    root = tmp_path_factory.mktemp("copies")
    ds_root = root / "ds"
    planted = planted_dataset(ds_root, per_class=8)
    pairs = list(zip(planted["copies"][::2], planted["copies"][1::2]))
    labels = [line.split(",") for line in (ds_root / "train_label.txt").read_text().split()[1:]]
    val_lines = (ds_root / "val_label.txt").read_text()
    for i, (name, target) in enumerate(labels[1:7]):
        copy = f"more_copy_{i}.mp4"
        reencode(ds_root / "trainset" / name, ds_root / "valset" / copy, codec="libmp3lame", bitrate=48000, gain_db=-3.0)
        val_lines += f"{copy},{target}\n"
        pairs.append((f"train/{name}", f"val/{copy}"))
    (ds_root / "val_label.txt").write_text(val_lines)
    ds = load_dataset(ds_root)
    cache = root / "cache"
    with ThreadPoolExecutor(2) as threads:
        audit_dataset(ds, cache_root=cache, pool=threads)  # the audit's table, then cached for `auto`
        prepare_features(ds, AudioFeatures(), cache_root=cache, pool=threads, splits=("train", "val"))
    return ds_root, cache, pairs


def test_reencoded_copies_never_straddle_folds(copies) -> None:
    ds_root, cache, pairs = copies
    ds = load_dataset(ds_root)
    features = {"audio": feature_dir(ds, AudioFeatures(), cache)}
    groups = clip_groups(ds, "auto", cache_root=cache)
    for seed in range(3):
        plan = plan_folds(features, groups, 3, seed=seed)
        fold_of = dict(zip(plan.keys, plan.folds.tolist()))
        assert len(pairs) == 8 and all(fold_of[a] == fold_of[b] for a, b in pairs)
    # Without groups the copies are dealt out independently: some pair lands on both sides of a fold.
    plan = plan_folds(features, clip_groups(ds, "none", cache_root=cache), 3, seed=0)
    fold_of = dict(zip(plan.keys, plan.folds.tolist()))
    assert any(fold_of[a] != fold_of[b] for a, b in pairs)
    assert len(plan.keys) == len(ds.split("train")) + len(ds.split("val"))


def test_a_group_file_puts_its_groups_in_one_fold(copies, tmp_path: Path) -> None:
    ds_root, cache, _ = copies
    ds = load_dataset(ds_root)
    # one "speaker" per four train clips, by bare name
    names = [s.name for s in ds.split("train")]
    write_labels(tmp_path / "groups.csv", [(n, i // 4) for i, n in enumerate(names)], header="video_name,group")
    plan = plan_folds({"audio": feature_dir(ds, AudioFeatures(), cache)},
                      clip_groups(ds, tmp_path / "groups.csv", cache_root=cache), 2, seed=0)
    fold_of = dict(zip(plan.keys, plan.folds.tolist()))
    for start in range(0, len(names), 4):
        assert len({fold_of[f"train/{n}"] for n in names[start : start + 4]}) == 1
