"""The demo's video: a face-like head on a panned wall, a face swap for fakes, and a camera."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from harness.data.demo.clip import SIZE, _envelope, _gaussian

_SKIN = np.array([[224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172], [241, 194, 125], [110, 70, 40]])


@dataclass(frozen=True)
class _Face:
    """A face's look and its path through the clip, in pixels; per-frame arrays have one row a frame."""

    skin: np.ndarray  # RGB
    hair: np.ndarray | None
    lips: np.ndarray
    iris: np.ndarray
    half_width: float
    half_height: float
    eye_gap: float
    light: float  # direction of the key light, radians
    cx: np.ndarray
    cy: np.ndarray
    tilt: np.ndarray
    blink: np.ndarray  # 1 open, 0 shut
    mouth: np.ndarray  # 0 closed .. 1 wide open


def _background(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A blotchy wall with a few straight edges (shelves, door frames), slowly panned by the camera."""
    canvas = SIZE + 16
    wall = rng.uniform(40, 200, 3) + 25 * _smooth_noise(rng, 4, canvas) + 10 * _smooth_noise(rng, 16, canvas)
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, canvas - 10, 2)
        wall[y0 : y0 + rng.integers(4, 40), x0 : x0 + rng.integers(4, 40)] = rng.uniform(30, 220, 3)
    pan = np.cumsum(rng.normal(0, 0.4, (frames, 2)), axis=0)
    offsets = np.clip(np.round(8 + pan - pan.mean(axis=0)), 0, 16).astype(int)
    return np.stack([wall[y : y + SIZE, x : x + SIZE] for x, y in offsets]).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """(size, size, 3) unit-ish noise, bilinear between a `cells` x `cells` grid of random values."""
    grid = rng.normal(size=(cells + 1, cells + 1, 3))
    pos = np.linspace(0, cells, size)
    i = np.minimum(pos.astype(int), cells - 1)
    w = (pos - i)[:, None, None]
    rows = grid[i] * (1 - w) + grid[i + 1] * w
    return rows[:, i] * (1 - w.transpose(1, 0, 2)) + rows[:, i + 1] * w.transpose(1, 0, 2)


def _draw_face(rng: np.random.Generator, mouth: np.ndarray, times: np.ndarray) -> _Face:
    frames = len(times)
    half_width = float(rng.uniform(17, 23))  # python floats keep the painting in float32
    drift = np.cumsum(rng.normal(0, 0.5, (frames, 2)), axis=0)
    drift = np.clip(drift - drift.mean(axis=0), -6, 6)
    # Bobs a little, and nods with the syllables while speaking.
    bob = rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * rng.uniform(1, 2.5) * times) + 1.2 * mouth
    blink = np.ones(frames)
    for start in np.arange(rng.uniform(0, 2), times[-1] + 1, rng.uniform(2, 4)):
        blink[(times >= start) & (times < start + 0.15)] = 0.1
    return _Face(skin=np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 10, 3), 0, 255),
                 hair=rng.uniform(10, 120) * np.array([1.0, 0.8, 0.6]) if rng.random() < 0.75 else None,
                 lips=np.array([170.0, 80, 80]) * rng.uniform(0.7, 1.1), iris=rng.uniform(20, 110, 3),
                 half_width=half_width, half_height=half_width * float(rng.uniform(1.2, 1.35)),
                 eye_gap=float(rng.uniform(0.34, 0.42)), light=float(rng.uniform(0, 2 * np.pi)),
                 cx=48 + rng.normal(0, 4) + drift[:, 0], cy=50 + rng.normal(0, 4) + drift[:, 1] + bob,
                 tilt=rng.uniform(-0.12, 0.12) + np.cumsum(rng.normal(0, 0.01, frames)), blink=blink, mouth=mouth)


def _paint_face(face: _Face, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(colour, alpha) of the head, frame by frame; `shift` moves the features (not the head) in pixels."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)  # float32 halves the cost of painting
    dx, dy = xx[None] - _col(face.cx), yy[None] - _col(face.cy)
    cos, sin = np.cos(face.tilt), np.sin(face.tilt)
    u, v = dx * _col(cos) + dy * _col(sin), dy * _col(cos) - dx * _col(sin)  # head coordinates, v down
    a, b = face.half_width, face.half_height
    shift_u, shift_v = (shift[:, 0], shift[:, 1]) if shift is not None else (0.0, 0.0)

    def ellipse(region: tuple, u0: float, v0: float, ru: float, rv: float | np.ndarray) -> np.ndarray:
        """A filled ellipse with a one-pixel soft edge (anti-aliased, as a camera would see it)."""
        r = np.sqrt(((u[region] - _col(u0)) / ru) ** 2 + ((v[region] - _col(v0)) / _col(rv)) ** 2)
        return np.clip((1 - r) * np.minimum(ru, _col(rv)) + 0.5, 0, 1)

    def feature(colour: np.ndarray, u0: float, v0: float, ru: float, rv: float | np.ndarray) -> None:
        """Paint a feature only inside its bounding box over all frames: features are small, frames not."""
        fu, fv = u0 + shift_u, v0 + shift_v
        x, y = face.cx + fu * cos - fv * sin, face.cy + fu * sin + fv * cos
        reach = max(ru, float(np.max(rv))) + 2
        rows = slice(max(int(y.min() - reach), 0), min(int(y.max() + reach) + 1, SIZE))
        cols = slice(max(int(x.min() - reach), 0), min(int(x.max() + reach) + 1, SIZE))
        region = (slice(None), rows, cols)
        mask = ellipse(region, fu, fv, ru, rv)[..., None]
        image[region] += mask * (colour.astype(np.float32) - image[region])

    everywhere = (slice(None),)
    shading = 1 + 0.18 * (u * np.float32(np.cos(face.light)) + v * np.float32(np.sin(face.light))) / a
    image = face.skin.astype(np.float32) * np.clip(shading, 0.6, 1.3)[..., None]
    head, neck = ellipse(everywhere, 0, 0, a, b), ellipse(everywhere, 0, 1.15 * b, 0.45 * a, 0.5 * b)
    alpha = np.maximum(head, neck)
    if face.hair is not None:
        hair = ellipse(everywhere, 0, -0.08 * b, 1.06 * a, 1.05 * b) * np.clip(-0.45 * b - v, 0, 1)
        image += hair[..., None] * (face.hair.astype(np.float32) - image)
        alpha = np.maximum(alpha, hair)
    for side in (-1, 1):
        eye_u = side * face.eye_gap * a
        feature(face.hair if face.hair is not None else face.skin * 0.5, eye_u, -0.36 * b, 0.16 * a, 0.035 * b)
        feature(np.array([235.0, 235, 230]), eye_u, -0.2 * b, 0.15 * a, 0.07 * b * face.blink)
        feature(face.iris, eye_u, -0.2 * b, 0.07 * a, 0.065 * b * face.blink)
    feature(face.skin * 0.8, 0, 0.12 * b, 0.1 * a, 0.12 * b)  # nose shadow
    opening = b * (0.015 + 0.14 * face.mouth)
    feature(face.lips, 0, 0.48 * b, 0.3 * a, 0.04 * b + opening)
    feature(np.array([50.0, 15, 20]), 0, 0.48 * b, 0.24 * a, opening)
    return image, alpha


def _col(x: float | np.ndarray) -> float | np.ndarray:
    """A per-frame array shaped to broadcast over (frames, H, W) in float32; a scalar as it is."""
    return x.astype(np.float32)[:, None, None] if isinstance(x, np.ndarray) else np.float32(x)


def _face_swap(rng: np.random.Generator, video: np.ndarray, host: _Face, syllables: np.ndarray, times: np.ndarray,
               strength: float, flaw: str = "none") -> np.ndarray:
    """Another inner face blended over the host's: a colour and sharpness seam, and by `flaw` jitter or lagging lips."""
    lag = strength * rng.uniform(0.08, 0.25) * rng.choice([-1, 1]) if flaw == "lag" else 0.0
    jitter = rng.normal(0, 1.2 * strength, (len(times), 2)) if flaw == "jitter" else np.zeros((len(times), 2))
    tint = rng.normal(0, 1, 3)
    source = dataclasses.replace(
        host, skin=np.clip(host.skin + 24 * strength * tint / np.linalg.norm(tint) + rng.normal(0, 4, 3), 0, 255),
        iris=rng.uniform(20, 110, 3), eye_gap=host.eye_gap * float(rng.uniform(0.9, 1.1)),
        mouth=_envelope(syllables, times - lag))
    colour, _ = _paint_face(source, shift=jitter)
    colour = _blur(colour, 0.5 + 1.3 * strength)
    mask = _inner_mask(dataclasses.replace(host, cx=host.cx + jitter[:, 0], cy=host.cy + jitter[:, 1]))
    return video * (1 - mask[..., None]) + colour * mask[..., None]


def _inner_mask(face: _Face) -> np.ndarray:
    """The pasted region: eyes to chin, feathered over ~2 px so the seam is faint, not a cut-out."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    du = (xx[None] - _col(face.cx)) / (0.8 * face.half_width)
    dv = (yy[None] - _col(face.cy) - 0.1 * face.half_height) / (0.8 * face.half_height)
    return np.clip((1 - np.sqrt(du**2 + dv**2)) * 0.8 * face.half_width / 2, 0, 1)


def _blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two image axes of (frames, H, W, 3)."""
    return _gaussian(_gaussian(video, sigma, axis=1), sigma, axis=2)


def _camera(rng: np.random.Generator, video: np.ndarray) -> np.ndarray:
    """What every camera adds: focus blur, exposure, white balance and sensor noise, as uint8."""
    if rng.random() < 0.5:
        video = _blur(video, rng.uniform(0.3, 0.9))
    video = video * (rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    video = video + rng.uniform(1, 5) * rng.standard_normal(video.shape, dtype=np.float32)
    return np.clip(np.round(video), 0, 255).astype(np.uint8)
