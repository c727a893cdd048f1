"""Frames -> face crops: the largest face per frame, cut out square with a margin, resized.

Detectors sit behind a one-method protocol (`largest_face`) and are registered by name, so a study
or a config can name one and a new one is a class and a decorator. A frame without a face is never
skipped: it falls back to a centre square and is counted, because a clip whose frames silently
vanish breaks loading later (DeepfakeBench issues #107, #32, #86).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.config import VideoFeatures
from harness.data.media import Undecodable, is_image, sample_frames

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the frame given


class FaceDetector(Protocol):
    revision: int  # bump when the boxes it gives change: the cache keys face crops by it

    def largest_face(self, rgb: np.ndarray) -> Box | None:
        """The largest face in an RGB uint8 (H, W, 3) frame, or None."""


DETECTORS: dict[str, Callable[[VideoFeatures], FaceDetector]] = {}


def register_detector(name: str) -> Callable:
    def add(factory: Callable[[VideoFeatures], FaceDetector]) -> Callable[[VideoFeatures], FaceDetector]:
        DETECTORS[name] = factory
        return factory

    return add


@register_detector("haar")
class HaarDetector:
    """OpenCV's Viola-Jones cascades, shipped inside opencv-python-headless 4.x (Intel's BSD-style
    licence): nothing to download, nothing more to install, about 10 ms a frame on one core.

    Passes are tried in turn until one finds a face: frontal (default), frontal (alt2), the profile
    cascade on the frame and on its mirror image (it only knows one side), then the frontal cascade
    on the frame turned by +-12 degrees. Measured on 80 sampled frames of the shared real clips
    (`bench/faces_speed.py`): 73/80 found by the first pass alone, 77-79/80 with alt2 and profile
    (turned or tilted heads are missed), 80/80 with the turned passes. Only misses pay for later passes.
    """

    revision = 1
    CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml")

    def __init__(self, cfg: VideoFeatures) -> None:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None or not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them): "
                               "install opencv-python-headless<5")
        self.cascades = []
        for name in self.CASCADES:
            cascade = cv2.CascadeClassifier(str(Path(folder) / name))
            if cascade.empty():
                raise RuntimeError(f"{Path(folder) / name}: OpenCV could not load this cascade")
            self.cascades.append(cascade)
        self.width = cfg.detect_width
        self.min_face = cfg.min_face

    def largest_face(self, rgb: np.ndarray) -> Box | None:
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, self.width / w)
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        side = max(8, int(self.min_face * small.shape[1]))
        frontal, alt2, profile = self.cascades
        for cascade, mirrored in ((frontal, False), (alt2, False), (profile, False), (profile, True)):
            image = cv2.flip(grey, 1) if mirrored else grey
            box = self._largest(cascade, image, side)
            if box is not None:
                x, y, bw, bh = box
                if mirrored:
                    x = grey.shape[1] - x - bw
                return (int(x / scale), int(y / scale), int((x + bw) / scale), int((y + bh) / scale))
        # Tilted heads: the frontal cascade on the frame turned by +-12 degrees; the box found there
        # is put back around its centre turned back.
        centre = (grey.shape[1] / 2, grey.shape[0] / 2)
        for angle in (12, -12):
            turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
            turned = cv2.warpAffine(grey, turn, grey.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
            box = self._largest(frontal, turned, side)
            if box is not None:
                x, y, bw, bh = box
                cx, cy = cv2.invertAffineTransform(turn) @ np.array([x + bw / 2, y + bh / 2, 1.0])
                return (int((cx - bw / 2) / scale), int((cy - bh / 2) / scale),
                        int((cx + bw / 2) / scale), int((cy + bh / 2) / scale))
        return None

    @staticmethod
    def _largest(cascade, grey: np.ndarray, side: int) -> tuple[int, int, int, int] | None:  # noqa: ANN001
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
        return tuple(max(found, key=lambda b: b[2] * b[3])) if len(found) else None


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


def crops_revision(cfg: VideoFeatures) -> str:
    """The code revision behind `cfg`'s crops: sampler and cropping, and the detector's own.
    Raises ValueError for an unknown detector."""
    return f"{CROPS_REVISION}.{getattr(_factory(cfg), 'revision', 0)}"


def square_crop(rgb: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """A square around `box` grown by `margin` on every side, resized to size x size. Parts outside
    the frame are filled by replicating the edge, so a face at the border keeps its place."""
    import cv2

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    h, w = rgb.shape[:2]
    pad = max(0, -left, -top, left + side_px - w, top + side_px - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    crop = rgb[top : top + side_px, left : left + side_px]
    shrinking = side_px > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def centre_box(rgb: np.ndarray, fraction: float) -> Box:
    """The fallback: a centred square of `fraction` of the shorter side (these clips are face-centred)."""
    h, w = rgb.shape[:2]
    side = fraction * min(h, w)
    return (int((w - side) / 2), int((h - side) / 2), int((w + side) / 2), int((h + side) / 2))


@dataclass(frozen=True)
class FaceCrops:
    crops: np.ndarray  # (frames, size, size, 3) uint8
    fallback: int  # frames where no face was found and the centre square was used


def crop_faces(frames: list[np.ndarray], cfg: VideoFeatures) -> FaceCrops:
    """One crop per frame, `cfg.frames` in all: a short clip's last frame is repeated to fill."""
    find = detector(cfg)
    crops, fallback = [], 0
    for rgb in frames:
        box = find.largest_face(rgb)
        if box is None:
            fallback += 1
            box = centre_box(rgb, cfg.fallback_crop)
            crops.append(square_crop(rgb, box, 0.0, cfg.size))
        else:
            crops.append(square_crop(rgb, box, cfg.margin, cfg.size))
    while len(crops) < cfg.frames:  # repeated frames are not counted as fallbacks: they had a face or not
        crops.append(crops[-1])
    return FaceCrops(np.stack(crops[: cfg.frames]), fallback)


def read_image(path: Path | str) -> np.ndarray:
    """An image file as RGB uint8. Raises EmptyFile or Undecodable."""
    import cv2

    from harness.data.media import EmptyFile

    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyFile(path, "0 bytes")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise Undecodable(path, "OpenCV cannot read this image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def video_features(path: Path | str, cfg: VideoFeatures) -> FaceCrops:
    """Face crops of one clip, or of one face image (then `cfg.frames` should be 1). Raises MediaError."""
    path = Path(path)
    if is_image(path):
        return crop_faces([read_image(path)], cfg)
    return crop_faces(sample_frames(path, cfg.frames), cfg)

