"""Face crops stored as JPEG (`VideoFeatures.crop_storage = "jpeg"`): the encoder the prepare workers
run, and the reader that decodes them in the training process.

Raw crops cost frames x size x size x 3 bytes a clip (301 KB at 8 x 112 x 112), 150 GB for 500k clips:
more than a GPU machine's RAM, so such a split streams from disk every epoch. As JPEG at quality 90 a
real clip's crops take about 26 KB (11.6x less, mean error 1.3 grey levels: bench/scale_footprint.py),
and the split stays in the page cache.

One clip is one uint8 blob: a little-endian uint32 header (the number of crops K, then each crop's
length in bytes) and the K JPEG files end to end. A split's blobs are packed end to end in
`<split>.npy` (1-D uint8) with each clip's `start,frames` (for crops: bytes) in its index, the way
windowed log-mels are packed (`harness.data.packs`); a clip without features has 0 bytes.

Encoding is OpenCV's (libjpeg-turbo, already loaded in every prepare worker, which thus never imports
torch); decoding is `torchvision.io.decode_jpeg`, one batched call per chunk of clips: libjpeg-turbo
on the CPU, nvjpeg when a CUDA device is given. `round_trip` is what prediction uses: the same encoder
and the CPU decoder, so a model scores the pixels it was trained on (nvjpeg may differ from the CPU
decoder by a grey level here and there: its IDCT and chroma upsampling are its own).
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
    """(K, S, S, 3) RGB uint8 crops -> one blob (1-D uint8): the header, then K JPEG files.

    Raises:
        ValueError: OpenCV could not encode a crop.
    """
    import cv2

    files = []
    for crop in crops:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, int(quality)))
        if not ok:
            raise ValueError(f"OpenCV could not encode a {crop.shape} crop as JPEG")
        files.append(buf.reshape(-1))
    header = np.array([len(files), *(len(f) for f in files)], dtype=HEADER).view(np.uint8)
    return np.concatenate([header, *files])


def round_trip(crops: np.ndarray, quality: int) -> np.ndarray:
    """`crops` as training reads them from a JPEG cache: encoded at `quality`, decoded on the CPU."""
    blob = encode_clip(crops, quality)
    return JpegCrops(blob, np.array([[0, len(blob)]]), crops.shape)[0]


class JpegCrops:
    """A split's JPEG crops that read like the raw (N, K, S, S, 3) uint8 array.

    Indexing (a row, an array of rows or a slice) decodes on the CPU into a new numpy array, so code
    that reads crops by row (batches, thumbnails, folds, the audit) works unchanged; `decode(rows,
    device)` gives a tensor, decoded by nvjpeg on a CUDA device. A clip of 0 bytes (no features)
    reads as zeros, as in a raw pack.

    Args:
        blobs: the packed blobs, 1-D uint8 (the split's memmap).
        spans: (N, 2) int: each clip's start and length in `blobs`.
        crop_shape: one clip's decoded shape, (K, S, S, 3).
    """

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
        """Bytes of the decoded crops (what batches of them hold); `stored_nbytes`: of the JPEG blobs."""
        return int(np.prod(self.shape))

    @property
    def stored_nbytes(self) -> int:
        return int(self.spans[:, 1].sum())

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.decode(np.array([key]))[0].numpy()
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.decode(rows).numpy()

    def decode(self, rows: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """Clips `rows` decoded, (len(rows), K, S, S, 3) uint8, on `device` (None: the CPU).

        Raises:
            CacheDamaged: a blob whose header or JPEG files do not decode to the split's crop shape.
        """
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
                # Frame by frame through numpy: torch's copy kernels start an OpenMP region per small
                # tensor, which cost 10-100x more here on a busy 2-core machine.
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

        starts, lengths = self.spans[rows, 0], self.spans[rows, 1]
        buf = np.empty(int(lengths.sum()), dtype=np.uint8)  # writable and contiguous: torch shares it
        ends = np.cumsum(lengths)
        for start, length, end in zip(starts.tolist(), lengths.tolist(), ends.tolist()):
            buf[end - length : end] = self.blobs[start : start + length]
        data = torch.from_numpy(buf)
        k = self.crop_shape[0]
        files = []
        for length, end in zip(lengths.tolist(), ends.tolist()):
            offset = end - length
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
        """Ask the kernel to read clips `rows` ahead (posix_fadvise WILLNEED on their bytes), as
        `SplitArrays.will_need` does for raw rows; nothing for blobs in memory."""
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
