"""Frames -> face crops: the largest face per frame (`DETECTORS`), cut out square with a margin, resized, with its
landmarks ((frames, 5, 2) crop pixels: right eye, left eye, nose tip, right and left mouth corners) and confidence,
NaN where Haar or the centre square gave it. Faceless frames are never skipped (DeepfakeBench #107): YuNet failing,
the Haar chain tries, then a centre square, counted.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from harness.config import VideoFeatures
from harness.data.media import EmptyFile, Undecodable, is_image, sample_frames
from harness.errors import ConfigError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the frame given


class Face(NamedTuple):
    """A face in frame pixels: its box and, where given, five landmarks ((0, 0): the top-left pixel's centre)."""

    box: Box
    landmarks: np.ndarray = np.full((5, 2), np.nan, np.float32)
    confidence: float = math.nan


class FaceDetector(Protocol):
    revision: int  # bump when the faces it gives change: the cache keys face crops by it

    def largest_face(self, rgb: np.ndarray) -> Face | None:
        """The largest face in an RGB uint8 (H, W, 3) frame, or None."""


def _scaled(rgb: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """The frame shrunk to `width` pixels wide (never enlarged), and the scale used."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, width / w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA), scale


class HaarDetector:
    """OpenCV's bundled cascades (10 ms a frame, boxes only) in turn: 73, then 79, then 80 of 80 shared frames found."""

    revision = 1
    CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml")

    def __init__(self, cfg: VideoFeatures) -> None:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None or not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them): "
                               "install opencv-python-headless<5")
        self.cascades = [cv2.CascadeClassifier(str(Path(folder) / name)) for name in self.CASCADES]
        if empty := [name for name, cascade in zip(self.CASCADES, self.cascades) if cascade.empty()]:
            raise RuntimeError(f"{Path(folder) / empty[0]}: OpenCV could not load this cascade")
        self.width, self.min_face = cfg.detect_width, cfg.min_face

    def largest_face(self, rgb: np.ndarray) -> Face | None:
        import cv2

        small, scale = _scaled(rgb, self.width)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        side = max(8, int(self.min_face * small.shape[1]))
        frontal, alt2, profile = self.cascades
        for cascade, mirrored in ((frontal, False), (alt2, False), (profile, False), (profile, True)):
            if (box := self._largest(cascade, cv2.flip(grey, 1) if mirrored else grey, side)) is not None:
                x, y, bw, bh = box
                x = grey.shape[1] - x - bw if mirrored else x
                return Face((int(x / scale), int(y / scale), int((x + bw) / scale), int((y + bh) / scale)))
        # Tilted heads: the box found on the turned frame goes back around its centre turned back.
        centre = (grey.shape[1] / 2, grey.shape[0] / 2)
        for angle in (12, -12):
            turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
            turned = cv2.warpAffine(grey, turn, grey.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
            if (box := self._largest(frontal, turned, side)) is not None:
                x, y, bw, bh = box
                cx, cy = cv2.invertAffineTransform(turn) @ np.array([x + bw / 2, y + bh / 2, 1.0])
                return Face((int((cx - bw / 2) / scale), int((cy - bh / 2) / scale),
                             int((cx + bw / 2) / scale), int((cy + bh / 2) / scale)))
        return None

    @staticmethod
    def _largest(cascade, grey: np.ndarray, side: int) -> tuple[int, int, int, int] | None:  # noqa: ANN001
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
        return tuple(max(found, key=lambda b: b[2] * b[3])) if len(found) else None


YUFACE = "yuface==2023.5.1"  # pyproject pins the same
MODEL_ENV = "HARNESS_YUNET_MODEL"  # the ONNX file of the yunet-onnx detector
NO_YUFACE = (f"face detector 'yunet' needs the yuface package ({YUFACE}; wheels for Linux and Windows on x86-64, "
             f"Python 3.10-3.11): install it, or choose 'yunet-onnx' with {MODEL_ENV}=FILE, or 'haar'")


class YuNetDetector:
    """YuNet from its authors' `yuface` wheel: the largest face of `SCORE` and `min_face`, else the Haar chain's."""

    revision = 1
    # Real faces score 0.87-0.95, the demo's 0.7-0.89 (OpenCV's 0.9 kept 2 of 480); sideways faces pass: see upright.
    SCORE = 0.6

    def __init__(self, cfg: VideoFeatures) -> None:
        self.width, self.min_face = cfg.detect_width, cfg.min_face
        self.haar = HaarDetector(cfg)
        self._load()

    def _load(self) -> None:
        self.model_digest()
        # One OpenMP thread, read once at load (spinning threads: 150-400 ms a frame on 2 busy cores, else 4-9).
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            import yuface
        except ImportError:
            raise ConfigError(NO_YUFACE) from None
        finally:
            os.environ.pop("OMP_NUM_THREADS", None)
            if saved is not None:
                os.environ["OMP_NUM_THREADS"] = saved
        self._yuface = yuface

    def _detect(self, small: np.ndarray) -> np.ndarray:
        """(N, 15) rows of x, y, w, h, five (x, y) landmarks, confidence in [0, 1], in `small`'s pixels."""
        confs, boxes, points = self._yuface.detect(np.ascontiguousarray(small[:, :, ::-1]), conf=0.0)  # SCORE cuts later
        return np.column_stack([boxes, points, np.asarray(confs) / 100]).astype(np.float32).reshape(-1, 15)

    def largest_face(self, rgb: np.ndarray) -> Face | None:
        small, scale = _scaled(rgb, self.width)
        faces = self._detect(small)
        faces = faces[(faces[:, 14] >= self.SCORE) & (faces[:, 2] >= self.min_face * small.shape[1])]
        if not len(faces):
            return self.haar.largest_face(rgb)
        best = faces[np.argmax(faces[:, 2] * faces[:, 3])]
        x, y, w, h = best[:4] / scale
        landmarks = (best[4:14].reshape(5, 2) + 0.5) / scale - 0.5  # pixel centres, through the shrink
        return Face((int(x), int(y), int(x + w), int(y + h)), landmarks.astype(np.float32), float(best[14]))

    @staticmethod
    @lru_cache(maxsize=1)
    def model_digest() -> str:
        """sha256 (hex) over yuface's compiled files, each checked against its RECORD (else ConfigError)."""
        try:
            files = importlib.metadata.files("yuface") or []
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(NO_YUFACE) from None
        compiled = sorted((f for f in files if f.hash and f.parts[0] == "yuface" and f.suffix != ".py"), key=str)
        if not compiled:
            raise ConfigError(f"yuface lists no compiled files in its RECORD: reinstall {YUFACE}")
        total = hashlib.sha256()
        for f in compiled:
            total.update(f"{f} {checked_sha256(Path(f.locate()), f.hash.value)}\n".encode())
        return total.hexdigest()


def checked_sha256(path: Path, recorded: str) -> str:
    """The sha256 of `path`, hex, checked against `recorded` (a wheel RECORD's urlsafe base64); ConfigError if not."""
    try:
        digest = hashlib.sha256(path.read_bytes()).digest()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the face detector's model ({e.strerror or e})") from None
    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != recorded.rstrip("="):
        raise ConfigError(f"{path}: sha256 {digest.hex()[:12]}... is not the one its package recorded: "
                          f"the face detector's model is damaged or replaced; reinstall {YUFACE}")
    return digest.hex()


class YuNetOnnxDetector(YuNetDetector):
    """YuNet through `cv2.FaceDetectorYN` on the ONNX file HARNESS_YUNET_MODEL names, where no yuface wheel exists."""

    def _load(self) -> None:
        import cv2

        path = self.model_path()
        try:
            self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), self.SCORE)
        except cv2.error as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "no detail"
            raise ConfigError(f"{path}: OpenCV cannot load this as a YuNet model ({reason})") from None

    def _detect(self, small: np.ndarray) -> np.ndarray:
        self.net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.net.detect(np.ascontiguousarray(small[:, :, ::-1]))
        return np.zeros((0, 15), np.float32) if faces is None else faces.reshape(-1, 15)

    @staticmethod
    def model_path() -> Path:
        """The ONNX file HARNESS_YUNET_MODEL names. Raises ConfigError when unset or not a file."""
        value = os.environ.get(MODEL_ENV, "")
        if not value:
            raise ConfigError(f"face detector 'yunet-onnx' needs {MODEL_ENV} set to a YuNet ONNX file")
        if not Path(value).is_file():
            raise ConfigError(f"{value}: no such file ({MODEL_ENV}, the model of face detector 'yunet-onnx')")
        return Path(value)

    @staticmethod
    def model_digest() -> str:
        return hashlib.sha256(YuNetOnnxDetector.model_path().read_bytes()).hexdigest()  # ~230 KB: 1 ms


DETECTORS: dict[str, Callable[[VideoFeatures], FaceDetector]] = {
    "haar": HaarDetector, "yunet": YuNetDetector, "yunet-onnx": YuNetOnnxDetector}


def _factory(cfg: VideoFeatures) -> Callable[[VideoFeatures], FaceDetector]:
    if cfg.detector not in DETECTORS:
        raise ValueError(f"unknown face detector {cfg.detector!r}; choose from {', '.join(sorted(DETECTORS))}")
    return DETECTORS[cfg.detector]


@lru_cache(maxsize=4)
def detector(cfg: VideoFeatures) -> FaceDetector:
    """The configured detector, built once per process. Raises ValueError for an unknown name."""
    return _factory(cfg)(cfg)


# Bump when frame sampling or cropping changes what a clip's crops are: the cache keys crops by it.
CROPS_REVISION = 3  # 3: frames turned upright by the display matrix


def model_digest(cfg: VideoFeatures) -> str:
    """sha256 (hex) of `cfg`'s detector's model, "" for Haar; ValueError (unknown), ConfigError (missing, damaged)."""
    return digest() if (digest := getattr(_factory(cfg), "model_digest", None)) is not None else ""


def crops_revision(cfg: VideoFeatures) -> str:
    """What made `cfg`'s crops besides the settings: `CROPS_REVISION`.revision[.model sha256[:12]]; raises likewise."""
    digest = model_digest(cfg)
    return f"{CROPS_REVISION}.{getattr(_factory(cfg), 'revision', 0)}" + (f".{digest[:12]}" if digest else "")


def cache_settings(cfg: VideoFeatures) -> dict[str, object]:
    """A face-crop folder's settings.json: `cfg.cache_settings()` and `detector_model` ("sha256:<hex>") if any."""
    digest = model_digest(cfg)
    return {**cfg.cache_settings(), **({"detector_model": f"sha256:{digest}"} if digest else {})}


def square_around(box: Box, margin: float) -> tuple[int, int, int]:
    """(left, top, side) of the square around `box` grown by `margin` of its longer side on every side."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), max(1, int(round(side)))


def square_crop(rgb: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """`square_around(box, margin)` resized to size x size, the edge replicated outside the frame."""
    import cv2

    left, top, side = square_around(box, margin)
    h, w = rgb.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    crop = rgb[top : top + side, left : left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def centre_box(rgb: np.ndarray, fraction: float) -> Box:
    """The fallback: a centred square of `fraction` of the shorter side (these clips are face-centred)."""
    h, w = rgb.shape[:2]
    side = fraction * min(h, w)
    return (int((w - side) / 2), int((h - side) / 2), int((w + side) / 2), int((h + side) / 2))


@dataclass(frozen=True)
class FaceCrops:
    crops: np.ndarray  # (frames, size, size, 3) uint8
    fallback: int  # frames where no face was found and the centre square was used
    landmarks: np.ndarray  # (frames, 5, 2) float32 in crop pixels (see the module doc); NaN: none
    confidence: np.ndarray  # (frames,) float32 in [0, 1]; NaN: none (Haar or the centre square)


def crop_faces(frames: list[np.ndarray], cfg: VideoFeatures) -> FaceCrops:
    """One crop per frame, `cfg.frames` in all: a short clip's last frame is repeated to fill."""
    find = detector(cfg)
    crops, landmarks, confidence, fallback = [], [], [], 0
    for rgb in frames:
        face, margin = find.largest_face(rgb), cfg.margin
        if face is None:
            fallback += 1
            face, margin = Face(centre_box(rgb, cfg.fallback_crop)), 0.0
        crops.append(square_crop(rgb, face.box, margin, cfg.size))
        left, top, side = square_around(face.box, margin)
        landmarks.append((face.landmarks - (left, top) + 0.5) * (cfg.size / side) - 0.5)  # pixel centres, resized
        confidence.append(face.confidence)
    n = cfg.frames  # repeated frames are not counted as fallbacks: they had a face or not
    fill = lambda items: (items + items[-1:] * n)[:n]  # noqa: E731
    return FaceCrops(np.stack(fill(crops)), fallback, np.stack(fill(landmarks)).astype(np.float32),
                     np.array(fill(confidence), np.float32))


def read_image(path: Path | str) -> np.ndarray:
    """An image file as RGB uint8. Raises EmptyFile or Undecodable."""
    import cv2

    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyFile(path, "0 bytes")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise Undecodable(path, "OpenCV cannot read this image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def video_features(path: Path | str, cfg: VideoFeatures) -> FaceCrops:
    """Face crops of one clip, or of one face image (then `cfg.frames` should be 1). Raises MediaError."""
    return crop_faces([read_image(path)] if is_image(path) else sample_frames(path, cfg.frames), cfg)

