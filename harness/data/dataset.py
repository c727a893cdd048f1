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


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None) -> list[np.ndarray]:
    """Sample indices per batch. The last batch may be short, except when shuffling for training,
    where a batch of one would upset batch norm and is dropped."""
    order = generator.permutation(n) if shuffle and generator is not None else np.arange(n)
    if shuffle and n % batch_size == 1 and n > 1:
        order = order[:-1]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def as_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) spectrograms or (B, H, W, 3) images -> (B, C, H, W)."""
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def batches(
    data: SplitArrays, batch_size: int, *, shuffle: bool, generator: np.random.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images with a channel axis, float labels) per batch, from host memory."""
    for idx in batch_indices(len(data), batch_size, shuffle=shuffle, generator=generator):
        yield as_nchw(torch.from_numpy(data.images[idx])), torch.from_numpy(data.labels[idx]).float()


class DeviceResident:
    """A split uploaded to the accelerator once, batched there: no host work or copy per step.

    Used when the uint8 split is small next to the device's free memory (it usually is: 32 KiB a clip).
    """

    def __init__(self, data: SplitArrays, device: torch.device) -> None:
        self.images = torch.from_numpy(data.images).to(device)
        self.labels = torch.from_numpy(data.labels).float().to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, generator: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(len(self), batch_size, shuffle=True, generator=generator):
            i = torch.from_numpy(idx).to(self.device, non_blocking=True)
            yield as_nchw(self.images[i]), self.labels[i]

    @staticmethod
    def fits(data: SplitArrays, device: torch.device, share: float = 0.25) -> bool:
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return data.images.nbytes < share * free
