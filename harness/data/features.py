"""Audio -> log-mel uint8 image, the same image the tutorial makes, at a fraction of the cost.

The filterbank and window come from librosa (so the numbers are librosa's); the STFT runs as one
OpenCV DFT call over strided frames and the mel projection as a sparse product, because that brings
feature time for a 7 s clip to about 0.8 ms, next to about 8 ms to decode and resample it. The decibel scaling
follows `librosa.power_to_db(S, ref=np.max, top_db=...)` and the min-max scaling the tutorial's
`cv2.normalize(..., NORM_MINMAX)`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.config import AudioFeatures
from harness.data.media import check_audio, decode_audio


@lru_cache(maxsize=8)
def _filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None):  # noqa: ANN202
    import librosa
    import scipy.sparse

    window = librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    # Each FFT bin feeds at most two triangles: a sparse product is several times faster than dense.
    return window, scipy.sparse.csr_matrix(mel.astype(np.float32))


def mel_power(audio: np.ndarray, cfg: AudioFeatures) -> np.ndarray:
    """Mel power spectrogram (n_mels, frames), as librosa.feature.melspectrogram(center=True) computes it."""
    import cv2

    window, mel = _filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    padded = np.pad(audio.astype(np.float32, copy=False), cfg.n_fft // 2)  # librosa pads with zeros
    if len(padded) < cfg.n_fft:
        padded = np.pad(padded, (0, cfg.n_fft - len(padded)))
    n_frames = 1 + (len(padded) - cfg.n_fft) // cfg.hop_length
    step = padded.strides[0]
    frames = np.lib.stride_tricks.as_strided(padded, (n_frames, cfg.n_fft), (step * cfg.hop_length, step))
    # OpenCV's real DFT in its packed (CCS) layout: Re0, Re1, Im1, Re2, Im2, ... (and Re(N/2) last
    # when N is even). 0.16 ms for a 7 s clip against 0.57 ms for scipy's rfft, which spends most
    # of its time writing the complex output. Blocks of 128 frames keep every temporary in the
    # core's cache: 0.8 ms a clip instead of 1.2 ms for the whole clip at once.
    out = np.empty((cfg.n_mels, n_frames), dtype=np.float32)
    bins = cfg.n_fft // 2 + 1
    power = np.empty((_BLOCK, bins), dtype=np.float32)
    for start in range(0, n_frames, _BLOCK):
        packed = cv2.dft(frames[start : start + _BLOCK] * window, flags=cv2.DFT_ROWS)
        np.multiply(packed, packed, out=packed)
        p = power[: len(packed)]
        p[:, 0] = packed[:, 0]
        if cfg.n_fft % 2 == 0:
            np.add(packed[:, 1:-1:2], packed[:, 2:-1:2], out=p[:, 1:-1])
            p[:, -1] = packed[:, -1]
        else:
            np.add(packed[:, 1::2], packed[:, 2::2], out=p[:, 1:])
        out[:, start : start + len(packed)] = mel @ p.T
    return out


_BLOCK = 128  # STFT frames per block in mel_power


def mel_image(audio: np.ndarray, cfg: AudioFeatures) -> np.ndarray:
    """uint8 image of shape `cfg.shape`: dB relative to the peak, floored at -top_db, min-max scaled."""
    import cv2

    db = 10.0 * np.log10(np.maximum(mel_power(audio, cfg), 1e-10))
    db -= db.max()
    np.maximum(db, -cfg.top_db, out=db)
    low = db.min()
    scaled = (db - low) * (255.0 / (0.0 - low)) if low < 0 else np.zeros_like(db)
    height, width = cfg.shape
    if scaled.shape != (height, width):
        shrinking = width < scaled.shape[1]
        # Area averaging when shrinking the time axis keeps short artefacts in the picture;
        # `linear` reproduces the tutorial exactly.
        method = cv2.INTER_AREA if shrinking and cfg.interpolation == "area" else cv2.INTER_LINEAR
        scaled = cv2.resize(scaled, (width, height), interpolation=method)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def audio_features(path: Path | str, cfg: AudioFeatures) -> np.ndarray:
    """Decode, check and turn one clip into its log-mel image. Raises a MediaError subclass."""
    audio, declared = decode_audio(path, cfg.sample_rate)
    check_audio(
        path,
        audio,
        cfg.sample_rate,
        declared,
        min_seconds=cfg.min_seconds,
        truncated_ratio=cfg.truncated_ratio,
        silence_dbfs=cfg.silence_dbfs,
    )
    return mel_image(audio, cfg)
