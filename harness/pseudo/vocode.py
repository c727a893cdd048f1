"""Vocoded reals: a real clip's log-mel turned back into sound and measured again, so the model learns a
vocoder's traces (harmonics smeared by the mel inversion, Griffin-Lim's phase) on voices it knows are real.

The uint8 log-mel is read back as power (0-255 spanning `top_db` below the peak), spread over the STFT
bins (a smoothed envelope, as a vocoder's), phased by Griffin-Lim seeded per clip, and measured again by
the features' own transform. Tens of ms a clip, so each training real is vocoded once before the first
epoch (`vocode_split`; bench/pseudo_speed.py).
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import cv2
import numpy as np

from harness.config import AudioFeatures
from harness.data.features import mel_filterbank, mel_frames, mel_image

GRIFFIN_LIM_ITERATIONS = 16  # enough for its phase to be plausible; the trace is in what it gets wrong


def vocode(image: np.ndarray, features: AudioFeatures, seed: int, *, time_major: bool = False) -> np.ndarray:
    """A vocoded copy of one uint8 log-mel `image` (height, time), or (time, height) with `time_major`."""
    import librosa

    mel = (image.T if time_major else image).astype(np.float32)
    frames = mel.shape[1]
    if mel.shape[0] != features.n_mels:
        mel = cv2.resize(mel, (frames, features.n_mels), interpolation=cv2.INTER_LINEAR)
    power = 10.0 ** ((mel / 255.0 - 1.0) * features.top_db / 10.0)
    spectrum = np.sqrt(_spread(features.sample_rate, features.n_fft, features.n_mels, features.fmin, features.fmax) @ power)
    audio = librosa.griffinlim(spectrum, n_iter=GRIFFIN_LIM_ITERATIONS, hop_length=features.hop_length,
                               random_state=seed, length=(frames - 1) * features.hop_length)
    if time_major:
        again = mel_frames(audio, features)
        return np.ascontiguousarray(np.resize(again, (frames, again.shape[1])) if len(again) != frames else again)
    return mel_image(audio, dataclasses.replace(features, width=image.shape[1], window_seconds=None))


@lru_cache(maxsize=4)
def _spread(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """(bins, mels): each STFT bin as the weighted mean of the mel bands over it (librosa's inverse: 15 s a clip)."""
    bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).T
    bank = bank / bank.max(axis=0, keepdims=True).clip(1e-12)  # each triangle peaks at 1
    return (bank / bank.sum(axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def vocode_split(audio: np.ndarray, rows: np.ndarray, features: AudioFeatures, seed: int,
                 spans: np.ndarray | None = None) -> np.ndarray:
    """A copy of a split's packed `audio` array with the clips at `rows` vocoded (the rest zeros): images
    (N, H, W), or with `spans` (start, frames) a windowed cache's whole clips."""
    out = np.zeros(audio.shape, dtype=np.uint8)
    for row in rows.tolist():
        clip_seed = int(np.random.default_rng([seed, row]).integers(2**31))
        if spans is None:
            out[row] = vocode(np.asarray(audio[row]), features, clip_seed)
        elif (length := int(spans[row, 1])) > 1:
            start = int(spans[row, 0])
            out[start:start + length] = vocode(np.asarray(audio[start:start + length]), features, clip_seed,
                                               time_major=True)
    return out
