from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.labels import DatasetError, load_dataset
from tests.conftest import write_labels


def test_real_sample_with_trainset_label_naming(shared_sample: Path) -> None:
    ds = load_dataset(shared_sample)
    assert ds.track == "video"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [5, 5, 0]
    assert {s.label for s in ds.split("val")} == {0, 1}
    assert all(s.path.is_file() for s in ds.split("train"))
    assert ds.split("train")[0].name == "6e14a72bccaaf5567209fc356ce04ab9.mp4"  # label-file order kept
    assert not ds.warnings


def test_template_order_and_fingerprint(small_dataset: Path) -> None:
    ds = load_dataset(small_dataset)
    assert ds.template == ["test1.mp4", "test0.mp4"]
    assert [s.name for s in ds.split("test")] == ds.template
    before = ds.fingerprint()
    write_labels(small_dataset / "val_label.txt", [("val0.mp4", 1), ("val1.mp4", 1)])
    assert load_dataset(small_dataset).fingerprint() != before


def test_test_split_without_template_lists_the_folder(small_dataset: Path) -> None:
    (small_dataset / "test_template.csv").unlink()
    ds = load_dataset(small_dataset)
    assert ds.template is None
    assert [s.name for s in ds.split("test")] == ["test0.mp4", "test1.mp4"]


def _error(root: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name,label\ntrain0.mp4,0\n", "train_label.txt:1: header must be 'video_name,target'"),
        ("video_name,target\ntrain0.mp4,2\n", "train_label.txt:2: target must be 0 or 1, found '2'"),
        ("video_name,target\ntrain0.mp4,0\ntrain0.mp4,1\n", "train_label.txt:3: duplicate name 'train0.mp4' (first on line 2)"),
        ("video_name,target\n../val0.mp4,0\n", "train_label.txt:2: name leaves the split folder: '../val0.mp4'"),
        ("video_name,target\n/etc/passwd.mp4,0\n", "train_label.txt:2: absolute path not allowed"),
        ("video_name,target\nnothere.mp4,1\n", "train_label.txt:2: listed file is missing"),
        ("video_name,target\ntrain0.txt,1\n", "train_label.txt:2: unsupported extension '.txt'"),
        ("video_name,target\ntrain0.mp4,1,extra\n", "train_label.txt:2: expected 2 columns, found 3"),
        ("", "train_label.txt:1: empty file"),
    ],
)
def test_bad_label_files(small_dataset: Path, content: str, expected: str) -> None:
    (small_dataset / "train_label.txt").write_text(content)
    assert expected in _error(small_dataset)


def test_missing_label_file_names_both_forms(small_dataset: Path) -> None:
    (small_dataset / "val_label.txt").unlink()
    message = _error(small_dataset)
    assert "val_label.txt: missing label file for valset/" in message and "valset_label.txt" in message


def test_template_duplicates_and_missing_files(small_dataset: Path) -> None:
    (small_dataset / "test_template.csv").write_text("video_name,score\ntest0.mp4,0\ntest0.mp4,0\n")
    assert "test_template.csv:3: duplicate name" in _error(small_dataset)
    (small_dataset / "test_template.csv").write_text("video_name,score\ntest9.mp4,0\n")
    assert "test_template.csv:2: listed file is missing" in _error(small_dataset)


def test_unlisted_files_are_a_warning(small_dataset: Path) -> None:
    (small_dataset / "trainset" / "stray.mp4").write_bytes((small_dataset / "trainset" / "train0.mp4").read_bytes())
    ds = load_dataset(small_dataset)
    assert len(ds.split("train")) == 4
    assert any("1 file(s) not listed in train_label.txt" in w and "stray.mp4" in w for w in ds.warnings)


def test_missing_folder_and_empty_dataset(tmp_path: Path) -> None:
    assert "dataset folder not found" in _error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no trainset/, valset/ or testset/" in _error(tmp_path / "empty")


def test_image_track_is_detected(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    root = tmp_path / "faces"
    (root / "trainset").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "trainset" / f"f{i}.jpg"), np.full((16, 16, 3), 40 * i, np.uint8))
    write_labels(root / "trainset_label.txt", [(f"f{i}.jpg", i % 2) for i in range(3)])
    ds = load_dataset(root)
    assert ds.track == "image" and len(ds.split("train")) == 3
