"""Face crops as JPEG: 26 KB a clip at quality 90, not 301 KB raw, so they stay cached (bench/scale_footprint.py). A clip's
blob: a little-endian uint32 header (K, each crop's length), then K JPEG files; OpenCV encodes, `decode_jpeg` decodes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.data.integrity import CacheDamaged

if TYPE_CHECKING:
    import torch

HEADER = np.dtype("<u4")
DECODE_CLIPS = 256  # clips per decode_jpeg call: bounds the host buffer and nvjpeg's batch


def encode_clip(crops: np.ndarray, quality: int) -> np.ndarray:
    """(K, S, S, 3) RGB uint8 crops -> one blob (1-D uint8): the header, then K JPEG files (ValueError: not encodable)."""
    import cv2

    files = []
    for crop in crops:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, int(quality)))
        if not ok:
            raise ValueError(f"OpenCV could not encode a {crop.shape} crop as JPEG")
        files.append(buf.reshape(-1))
    return np.concatenate([np.array([len(files), *(len(f) for f in files)], dtype=HEADER).view(np.uint8), *files])


class JpegCrops:
    """A split's JPEG crops (`blobs`, `spans`) indexing like raw (N, K, S, S, 3) uint8; a clip of 0 bytes reads zeros."""

    dtype = np.dtype(np.uint8)
    ndim = 5

    def __init__(self, blobs: np.ndarray, spans: np.ndarray, crop_shape: tuple[int, ...]) -> None:
        self.blobs = blobs
        self.spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        self.crop_shape = tuple(int(v) for v in crop_shape)
        self.shape = (len(self.spans), *self.crop_shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded crops; `stored_nbytes`: of the JPEG blobs."""
        return int(np.prod(self.shape))

    @property
    def stored_nbytes(self) -> int:
        return int(self.spans[:, 1].sum())

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        decoded = self.decode(rows).numpy()  # `decode` flattens `rows`: an int gives one clip
        return decoded[0] if rows.ndim == 0 else decoded

    def decode(self, rows: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """Clips `rows` as (len(rows), K, S, S, 3) uint8 on `device` (None: the CPU); CacheDamaged for a bad blob."""
        import torch

        device = torch.device(device or "cpu")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = torch.empty((len(rows), *self.crop_shape), dtype=torch.uint8, device=device)
        lengths = self.spans[rows, 1]
        if (lengths == 0).any():
            out[torch.from_numpy(np.flatnonzero(lengths == 0)).to(device)] = 0
        have = np.flatnonzero(lengths > 0)
        k, s, _, c = self.crop_shape
        frames = out.view(len(rows) * k, s, s, c)
        for first in range(0, len(have), DECODE_CLIPS):
            part = have[first : first + DECODE_CLIPS]
            try:
                # decode_jpeg gives (3, S, S) views of (S, S, 3) pixels (nvjpeg: planes): back to (S, S, 3)
                decoded = [image.permute(1, 2, 0) for image in _decode(self._files(rows[part]), device)]
            except RuntimeError as e:  # a JPEG file that does not decode
                raise CacheDamaged(self._where(), f"JPEG crops do not decode ({str(e).splitlines()[0][:120]})") from None
            wrong = next((tuple(d.shape) for d in decoded if d.shape != (s, s, c)), None)
            if wrong is not None:
                raise CacheDamaged(self._where(), f"a JPEG crop of {wrong}, {(s, s, c)} expected")
            if device.type == "cpu":
                # Through numpy: torch starts an OpenMP region per small copy, 10-100x dearer on 2 busy cores.
                into = frames.numpy()
                for i, clip in enumerate(part.tolist()):
                    for j in range(k):
                        into[clip * k + j] = decoded[i * k + j].numpy()
            else:
                out[torch.from_numpy(part).to(device)] = torch.stack(decoded).view(len(part), k, s, s, c)
        return out

    def _files(self, rows: np.ndarray) -> list[torch.Tensor]:
        """The JPEG files of clips `rows` (none empty), read from the blobs into one buffer, as tensors."""
        import torch

        buf = np.empty(int(self.spans[rows, 1].sum()), dtype=np.uint8)  # writable and contiguous: torch shares it
        data, k, files, offset = torch.from_numpy(buf), self.crop_shape[0], [], 0
        for start, length in self.spans[rows].tolist():
            buf[offset : offset + length] = self.blobs[start : start + length]
            header = np.frombuffer(buf, dtype=HEADER, count=min(k + 1, length // 4), offset=offset)
            if len(header) != k + 1 or header[0] != k or 4 * (k + 1) + int(header[1:].sum()) != length:
                raise CacheDamaged(self._where(), f"a clip's JPEG blob at byte {offset} does not hold {k} crops")
            offset += 4 * (k + 1)
            for size in header[1:].tolist():
                files.append(data[offset : offset + size])
                offset += size
        return files

    def _where(self) -> str:
        return getattr(self.blobs, "filename", None) or "JPEG crops"

    def will_need(self, rows: np.ndarray) -> None:
        """Ask the kernel to read clips `rows` ahead (posix_fadvise WILLNEED), as `SplitArrays.will_need`."""
        name = getattr(self.blobs, "filename", None)
        if not isinstance(self.blobs, np.memmap) or not name:
            return
        base = self.blobs.offset
        fd = os.open(Path(name), os.O_RDONLY)
        try:
            for start, length in self.spans[np.sort(np.asarray(rows, dtype=np.int64))].tolist():
                if length:
                    os.posix_fadvise(fd, base + start, length, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _decode(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cpu":  # without `device`: passing device="cpu" took a slower path (bench/gpu_check.py)
        return decode_jpeg(images, mode=ImageReadMode.RGB)
    return decode_jpeg(images, mode=ImageReadMode.RGB, device=device)
