"""Self-blended face crops (Shiohara & Yamasaki, CVPR 2022): a crop blended with a jittered copy of itself
through a soft mask over the inner face, so the only fake trace is the seam (colour, sharpness, scale).

The mask is the hull of the crop's five YuNet landmarks stretched to cover brows to chin, feathered; a
crop without landmarks (Haar fallback) gets a centred ellipse. One jitter per clip, the same on all its
frames (a swap's colour does not flicker); masks follow each frame's landmarks.
"""
from __future__ import annotations

import cv2
import numpy as np


def blend(crops: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Self-blended copies of `crops` (n, frames, S, S, 3) uint8, with `landmarks` (n, frames, 5, 2)
    in crop pixels (NaN: none). Returns a new uint8 array of the same shape."""
    out = np.empty_like(crops)
    for i, clip in enumerate(crops):
        frames, side = clip.shape[0], clip.shape[1]
        stacked = np.ascontiguousarray(clip.transpose(1, 2, 0, 3).reshape(side, side, frames * 3)).astype(np.float32)
        source = _jittered(stacked, frames, rng)
        stretch = rng.uniform(1.2, 1.7, 2) * (1.0, 1.25)  # more downwards: the hull stops at the mouth
        feather = rng.uniform(0.01, 0.05) * side  # a swap's seam is a few pixels wide
        opacity = rng.choice([0.6, 0.8, 1.0, 1.0])
        masks = np.stack([_mask(landmarks[i, k], side, stretch, feather) for k in range(frames)], axis=-1) * opacity
        mask = np.repeat(masks, 3, axis=-1)  # (S, S, frames * 3), frame-major like `stacked`
        mixed = source * mask + stacked * (1 - mask)
        out[i] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8).reshape(side, side, frames, 3).transpose(2, 0, 1, 3)
    return out


def _jittered(image: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """The blend's source with colour, frequency (blur or sharpen) and scale jittered: the seam carries all three."""
    side = image.shape[0]
    tint = np.tile(rng.uniform(0.85, 1.15, 3), frames) * rng.uniform(0.9, 1.1)
    out = image * tint.astype(np.float32) + np.tile(rng.uniform(-20, 20, 3), frames).astype(np.float32)
    soft = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.8, 2.5))
    out = soft if rng.random() < 0.6 else out + rng.uniform(0.5, 1.5) * (out - soft)  # blur or unsharp mask
    scale = rng.uniform(0.94, 1.06)
    warp = np.float32([[scale, 0, (1 - scale) * side / 2 + rng.uniform(-2, 2)],
                       [0, scale, (1 - scale) * side / 2 + rng.uniform(-2, 2)]])
    return cv2.warpAffine(out, warp, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _mask(points: np.ndarray, side: int, stretch: np.ndarray, feather: float) -> np.ndarray:
    """Soft mask (S, S) float32 in [0, 1]: the stretched landmark hull, or a centred ellipse."""
    mask = np.zeros((side, side), np.float32)
    if np.isfinite(points).all():
        centre = points.mean(axis=0)
        hull = cv2.convexHull(((points - centre) * stretch + centre).astype(np.float32))
        cv2.fillConvexPoly(mask, np.rint(hull).astype(np.int32), 1.0)
    else:
        axes = (int(side * 0.28 * stretch[0] / 1.45), int(side * 0.3 * stretch[1] / 1.8))
        cv2.ellipse(mask, (side // 2, int(side * 0.55)), axes, 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), max(feather, 0.5))
