"""Fold assignment for grouped cross-validation: pooled splits read without copies, stratified folds,
groups that never straddle folds (planted re-encoded copies found by the audit), group files."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import AudioFeatures
from harness.crossval import check_group_by, clip_groups, cv_summary, plan_folds
from harness.data.cache import extract, feature_dir, prepare_features
from harness.data.dataset import DeviceResident, SplitArrays, batches, load_arrays
from harness.data.features import eval_windows
from harness.data.folds import StackedRows, assign_folds, check_group_file, group_ids, pool, read_group_file, subset
from harness.data.labels import load_dataset
from harness.errors import BadInput
from tests.conftest import write_clip, write_labels
from tests.test_audit_support import planted_dataset, reencode


def _split(values: np.ndarray, labels: list[int], names: list[str], rows: np.ndarray | None = None) -> SplitArrays:
    return SplitArrays(inputs={"audio": values}, labels=np.array(labels), names=names, rows=rows)


def test_stacked_rows_read_like_the_concatenation() -> None:
    a, b = np.arange(12).reshape(4, 3), np.arange(100, 106).reshape(2, 3)
    stacked, whole = StackedRows([a, b]), np.concatenate([a, b])
    idx = np.array([5, 0, 4, 3, 3])
    np.testing.assert_array_equal(stacked[idx], whole[idx])
    np.testing.assert_array_equal(stacked[0:1], whole[0:1])
    np.testing.assert_array_equal(stacked[np.array([[5, 0], [1, 4]])], whole[np.array([[5, 0], [1, 4]])])  # windows' index
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


def test_stacked_rows_with_a_gap_read_each_part_where_it_starts() -> None:
    a, b = np.arange(4).reshape(2, 2), np.arange(10, 16).reshape(3, 2)
    stacked = StackedRows([a, b], starts=[0, 4], length=7)  # rows 2-3: a gap (no sample reads it)
    assert stacked.shape == (7, 2) and stacked.nbytes == a.nbytes + b.nbytes
    np.testing.assert_array_equal(stacked[np.array([5, 1, 4, 0])], [b[1], a[1], b[0], a[0]])
    np.testing.assert_array_equal(np.asarray(stacked), np.concatenate([a, np.zeros((2, 2), a.dtype), b]))
    np.testing.assert_array_equal(np.asarray(StackedRows([a, b])), np.concatenate([a, b]))  # the accelerator's copy
    for bad in ([2], [3], [7], [-1]):  # gap rows, rows past either end
        with pytest.raises(IndexError):
            stacked[np.array(bad)]
    with pytest.raises(ValueError, match="overlap"):
        StackedRows([a, b], starts=[0, 1], length=7)


def test_pool_shifts_codec_variants_into_the_pooled_rows_and_leaves_gaps_for_other_inputs() -> None:
    """Fusion with codec variants: the audio array holds clips then copies, the crops clips only, so
    the val split's rows start after the train split's copies in both."""
    audio_t = np.array([0, 1, 2, 100, 101, 200, 201], np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    video_t = np.arange(3, dtype=np.uint8)[:, None] * np.ones((1, 4), np.uint8)
    train = SplitArrays(inputs={"audio": audio_t, "video": video_t}, labels=np.array([0, 1]), names=["t0", "t2"],
                        rows=np.array([0, 2]), variants=np.array([[3, 4], [-1, -1], [5, 6]]))  # t1: no copies, dropped
    audio_v = np.array([50, 51], np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    video_v = np.array([50, 51], np.uint8)[:, None] * np.ones((1, 4), np.uint8)
    val = SplitArrays(inputs={"audio": audio_v, "video": video_v}, labels=np.array([1, 0]), names=["v0", "v1"])
    pooled, _ = pool({"train": train, "val": val})
    assert pooled.rows.tolist() == [0, 2, 7, 8]
    assert pooled.variants.tolist()[:3] == [[3, 4], [-1, -1], [5, 6]] and (pooled.variants[3:] == -1).all()
    evaluation = pooled.arrays(np.arange(4))
    np.testing.assert_array_equal(evaluation["audio"][:, 0, 0], [0, 2, 50, 51])
    np.testing.assert_array_equal(evaluation["video"][:, 0], [0, 2, 50, 51])
    rng = np.random.default_rng(0)
    drawn = [set(), set(), set(), set()]
    for _ in range(30):  # training: a clip reads itself or its own copies; val clips have none
        for i, value in enumerate(pooled.arrays(np.arange(4), rng)["audio"][:, 0, 0].tolist()):
            drawn[i].add(value)
    assert drawn == [{0, 100, 101}, {2, 200, 201}, {50}, {51}]
    fold = subset(pooled, np.array([3, 1]))
    assert fold.variants is pooled.variants
    np.testing.assert_array_equal(fold.arrays(np.arange(2))["video"][:, 0], [51, 2])


WINDOWED = AudioFeatures(window_seconds=1.0, eval_windows=3, codec_variants=1)


@pytest.fixture(scope="module")
def windowed_splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AudioFeatures, SplitArrays, SplitArrays]:
    """Audio clips of 0.6-3 s (the shortest under a window: tiled), prepared whole at the native hop
    with one codec variant per training clip; the train and val splits as loaded for training."""
    root = tmp_path_factory.mktemp("pooled") / "ds"
    for split, lengths in (("train", (0.6, 1.5, 2.2, 3.0)), ("val", (1.2, 2.6, 0.7))):
        for i, seconds in enumerate(lengths):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=seconds, freq=300 + 150 * i, video=False)
        write_labels(root / f"{split}_label.txt", [(f"{split}{i}.mp4", i % 2) for i in range(len(lengths))])
    ds = load_dataset(root)
    report = prepare_features(ds, WINDOWED, cache_root=root.parent / "cache", workers=1, splits=("train", "val"))
    assert not report.failures
    folder = feature_dir(ds, WINDOWED, root.parent / "cache")
    train, val = (load_arrays(folder, split, audio=WINDOWED) for split in ("train", "val"))
    assert train.variants is not None and val.variants is None
    return root, WINDOWED, train, val


def test_pooled_windowed_clips_read_their_own_windows(windowed_splits) -> None:
    root, cfg, train, val = windowed_splits
    pooled, keys = pool({"train": train, "val": val})
    assert keys == [f"train/train{i}.mp4" for i in range(4)] + [f"val/val{i}.mp4" for i in range(3)]
    assert (pooled.window, pooled.eval_windows) == (train.window, 3) and len(pooled.inputs["audio"]) == \
        len(train.inputs["audio"]) + len(val.inputs["audio"])
    evaluation = pooled.arrays(np.arange(len(pooled)))["audio"]
    assert evaluation.shape == (7, 3, 128, train.window)
    for i, key in enumerate(keys):  # the very windows that predict cuts from the clip itself
        split, name = key.split("/")
        clip = extract(root / f"{split}set" / name, cfg)[0]
        np.testing.assert_array_equal(evaluation[i], eval_windows(clip, cfg), err_msg=key)
    # the train part draws exactly as the train split does (same rows, same copies, same windows)
    part = subset(pooled, np.arange(4))
    for seed in range(3):
        np.testing.assert_array_equal(part.arrays(np.arange(4), np.random.default_rng(seed))["audio"],
                                      train.arrays(np.arange(4), np.random.default_rng(seed))["audio"])
    # a val clip trains on its own frames only: no copies were made of it
    val_frames = [extract(root / "valset" / f"val{i}.mp4", cfg)[0] for i in range(3)]
    rng = np.random.default_rng(1)
    for _ in range(10):
        drawn = pooled.arrays(np.arange(4, 7), rng)["audio"]
        for window, frames in zip(drawn, val_frames):
            looped = np.tile(frames, (2 + train.window // len(frames), 1))  # a short clip is tiled
            assert any((looped[s : s + train.window].T == window).all() for s in range(len(frames)))


def test_a_pooled_windowed_fold_batches_alike_on_the_host_and_the_accelerator_path(windowed_splits) -> None:
    """DeviceResident (tried on the CPU) copies the stacked frames whole and cuts the same windows
    and copies from the same draws as the host batches."""
    _, _, train, val = windowed_splits
    pooled, _ = pool({"train": train, "val": val})
    fold = subset(pooled, np.array([6, 0, 3, 5, 1]))
    resident = DeviceResident(fold, torch.device("cpu"))
    assert len(resident) == 5 and not DeviceResident.fits(fold, torch.device("cpu"))  # host batches on the CPU
    on_device = [(b["audio"].numpy(), y.numpy()) for b, y in resident.batches(2, generator=np.random.default_rng(4))]
    on_host = [(b["audio"].numpy(), y.numpy()) for b, y in batches(fold, 2, shuffle=True, generator=np.random.default_rng(4))]
    assert len(on_device) == len(on_host) == 2
    for (a, ya), (b, yb) in zip(on_device, on_host):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    assert fold.nbytes == 5 * 128 * train.window


def test_pooling_splits_with_other_window_settings_is_refused(windowed_splits) -> None:
    _, _, train, val = windowed_splits
    with pytest.raises(ValueError, match="window settings differ"):
        pool({"train": train, "val": dataclasses.replace(val, eval_windows=5)})


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
    with pytest.raises(BadInput, match="not auto, none, method or an existing"):
        check_group_by(str(tmp_path / "missing.csv"))


def test_a_group_file_that_names_no_clip_is_refused_and_one_that_misses_some_warns(tmp_path: Path) -> None:
    keys = ["train/a.mp4", "train/b.mp4", "val/c.mp4", "val/d.mp4"]
    path = tmp_path / "groups.csv"
    write_labels(path, [("speaker1.wav", 1), ("speaker2.wav", 2)], header="video_name,group")
    with pytest.raises(BadInput) as refused:
        check_group_file(path, keys)
    assert str(refused.value) == (f"--group-by {path}: none of its 2 names is a clip of the dataset (the file has "
                                  "'speaker1.wav', the dataset 'train/a.mp4' or 'a.mp4')")
    write_labels(path, [("a.mp4", 1), ("val/c.mp4", 1), ("x.mp4", 2)], header="video_name,group")
    assert check_group_file(path, keys) == [
        f"--group-by {path}: 2 of 4 clips are in no group there (each is a group of its own)",
        f"--group-by {path}: 1 of its 3 names match no clip (e.g. 'x.mp4')"]
    write_labels(path, [("a.mp4", 1), ("b.mp4", 1), ("c.mp4", 2), ("val/d.mp4", 2)], header="video_name,group")
    assert check_group_file(path, keys) == []


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
