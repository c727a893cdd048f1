"""What the feature cache already knows about faces: the face-found rate and a hash of the crops.

Nothing is decoded: the newest face-crop folder (`harness prepare --modality video`) holds the crops and
the index's `fallback` counts; without one both columns stay empty. The hash: a dHash per frame (grey,
9x8 by area, a bit per horizontal neighbour pair), 64 bits a frame; a mostly flat clip gets none.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.cache import dataset_id, load_split
from harness.data.labels import Dataset

HASH_SIDE = 8  # a frame's dHash: HASH_SIDE rows x HASH_SIDE bits
FLAT = 8.0  # grey levels: a shrunk crop with less contrast than this is flat


@dataclass
class FaceColumns:
    """Per clip (the table's order): the face-found rate (nan: unknown) and the packed crop hash."""

    folder: Path | None
    found_rate: np.ndarray
    hashes: np.ndarray  # (N, bytes) uint8, packed bits
    has_hash: np.ndarray  # bool


def newest_face_folder(ds: Dataset, cache_root: Path) -> Path | None:
    """The most recently prepared face-crop folder of the dataset, or None."""
    base = Path(cache_root) / dataset_id(ds)
    folders = [p for p in base.glob("video-*") if (p / "settings.json").is_file()] if base.is_dir() else []
    return max(folders, key=lambda p: (p / "settings.json").stat().st_mtime_ns, default=None)


def face_columns(ds: Dataset, keys: list[str], cache_root: Path) -> FaceColumns:
    """The face columns for the clips `keys` (`split/name`), read from the newest face-crop folder."""
    n = len(keys)
    found = np.full(n, np.nan)
    folder = newest_face_folder(ds, cache_root)
    if folder is None:
        return FaceColumns(None, found, np.zeros((n, 0), np.uint8), np.zeros(n, bool))
    frames = int(json.loads((folder / "settings.json").read_text()).get("frames", 1))
    width = frames * HASH_SIDE * HASH_SIDE // 8
    hashes, has = np.zeros((n, width), np.uint8), np.zeros(n, bool)
    where = {k: i for i, k in enumerate(keys)}
    for split in ds.samples:
        if not (folder / f"{split}.csv").is_file() or not (folder / f"{split}.npy").is_file():
            continue
        crops, index = load_split(folder, split)
        for row in index:
            i = where.get(f"{split}/{row['name']}")
            if i is None or row["ok"] != "1":
                continue
            found[i] = 1.0 - int(row["fallback"] or 0) / frames
            bits, flat = crop_hash(np.asarray(crops[int(row["row"])]))
            hashes[i] = np.packbits(bits)
            has[i] = flat <= frames // 2  # mostly featureless crops (black frames) would all look alike
    return FaceColumns(folder, found, hashes, has)


def crop_hash(crops: np.ndarray) -> tuple[np.ndarray, int]:
    """dHash bits of one clip's crops, (frames, size, size, 3) uint8 -> frames*64 bools, and how many crops
    are flat (under FLAT grey levels between darkest and brightest cell: their bits say nothing)."""
    import cv2

    bits, flat = [], 0
    for crop in crops.reshape(-1, *crops.shape[-3:]):
        grey = crop.astype(np.float32).mean(axis=2)
        small = cv2.resize(grey, (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA)
        bits.append(small[:, 1:] > small[:, :-1])
        flat += float(small.max() - small.min()) < FLAT
    return np.concatenate([b.ravel() for b in bits]), flat
