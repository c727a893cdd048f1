"""Cached features -> shuffled batches of tensors, nanoGPT-style: no DataLoader, no per-sample Python.

A split's packed uint8 array is small (32 KiB a clip at 128x256), so it is read into memory once and
batches are sliced out with numpy fancy indexing. Batches stay uint8 until they reach the device:
a quarter of the bytes to copy, and normalisation runs where the model runs.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.cache import load_split


@dataclass
class SplitArrays:
    images: np.ndarray  # (N, H, W) uint8 spectrograms; (N, H, W, 3) for face images
    labels: np.ndarray  # (N,) int64; -1 where unlabelled (test)
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def load_arrays(feature_dir: Path, split: str, *, usable_only: bool = True) -> SplitArrays:
    """A split from the cache. `usable_only` drops clips whose features failed (training needs real
    inputs); submission keeps them and scores them by the documented fallback instead."""
    images, index = load_split(feature_dir, split)
    keep = [i for i, row in enumerate(index) if row["ok"] == "1" or not usable_only]
    labels = np.array([int(index[i]["label"]) if index[i]["label"] != "" else -1 for i in keep], dtype=np.int64)
    return SplitArrays(images=np.ascontiguousarray(images[keep]), labels=labels, names=[index[i]["name"] for i in keep])


def batches(
    data: SplitArrays, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images with a channel axis, float labels) per batch. The last batch may be short,
    except when shuffling for training, where a batch of one would upset batch norm."""
    order = generator.permutation(len(data)) if shuffle and generator is not None else np.arange(len(data))
    n = len(order)
    if shuffle and n % batch_size == 1 and n > 1:
        order = order[:-1]
        n -= 1
    for start in range(0, n, batch_size):
        idx = np.sort(order[start : start + batch_size]) if not shuffle else order[start : start + batch_size]
        x = torch.from_numpy(data.images[idx])
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (B, C, H, W)
        yield x, torch.from_numpy(data.labels[idx]).float()
