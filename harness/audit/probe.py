"""One clip's metadata row and audio fingerprint, from one open: what a worker computes for the audit table.

Fingerprint (Haitsma and Kalker): the active part cut into `fp_segments` spans, each span's energy in
`fp_bands` mel bands (150-4000 Hz, what lossy codecs keep) in dB floored 60 dB below the loudest; a bit per
(band pair, span pair): whether the neighbouring bands' difference rose, so gain changes no bit. Measured:
copies re-encoded at 24-64 kb/s, re-gained or padded kept 0.85-0.98 of 512 bits; different clips shared
0.50 (highest of 28,680 pairs 0.60). A clip whose span loudness varies under 1 dB (tones 0.2 dB, speech
6-13 dB) gets none: steady sounds agreed in 0.87-0.90.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import AudioFeatures
from harness.fileio import sha256

# Bump when what a worker computes changes: the cache key includes it, so old rows are recomputed.
TABLE_REVISION = 1
MIN_SWING_DB = 1.0  # a clip whose loudness varies less than this over its spans (sd) gets no fingerprint


@dataclass(frozen=True)
class TableSettings:
    """What the per-clip table is computed with; `key()` names the cache entry."""

    sample_rate: int = 16000  # the decode rate, as `harness prepare`'s default
    frame_ms: float = 10.0  # silence is judged per frame of this length
    silence_db: float = -40.0  # a frame this far below the clip's peak sample is silent
    fp_bands: int = 17  # fingerprint: mel bands ...
    fp_segments: int = 33  # ... and time spans; (bands - 1) x (segments - 1) bits
    fp_fmin: float = 150.0
    fp_fmax: float = 4000.0

    @property
    def fingerprint_bits(self) -> int:
        return (self.fp_bands - 1) * (self.fp_segments - 1)

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "revision": TABLE_REVISION}, sort_keys=True).encode()
        return "audit-" + hashlib.sha1(blob).hexdigest()[:10]


# The columns a worker fills, in the CSV's order (the parent adds split, name, label, face); the rest numbers.
PROBE_COLUMNS = (
    "error", "file_size", "sha256", "container", "duration_container", "bitrate_container",
    "audio_codec", "audio_sample_rate", "audio_channels", "audio_bitrate", "duration_audio_declared",
    "duration_audio", "leading_silence", "trailing_silence", "loudness", "peak",
    "video_codec", "fps", "width", "height", "video_bitrate", "duration_video", "video_frames",
)
TEXT_COLUMNS = frozenset({"error", "sha256", "container", "audio_codec", "video_codec"})


def probe_clip(path: Path | str, settings: TableSettings) -> tuple[dict[str, Any], np.ndarray | None]:
    """The metadata row and packed fingerprint (None without usable audio); a broken clip's `error` says why."""
    from harness.data import media

    path = Path(path)
    row: dict[str, Any] = {"file_size": path.stat().st_size, "sha256": sha256(path), "error": ""}
    try:
        audio = _read(path, settings, row)
    except media.MediaError as e:
        row["error"] = f"{e.reason}: {e.detail}"
        return row, None
    if audio is None:
        return row, None
    measures, active = audio_measures(audio, settings)
    row.update(measures)
    if active is None:
        return row, None
    bits = fingerprint(audio[active[0] : active[1]], settings)
    return row, None if bits is None else np.packbits(bits)


def _read(path: Path, settings: TableSettings, row: dict[str, Any]) -> np.ndarray | None:
    """Fill `row` from the container; return the first audio track mono at the settings' rate (None without),
    as `media.decode_audio` decodes it. One open serves both (1.2 ms, as much as the decode). Raises MediaError."""
    import soxr

    from harness.data import media

    try:
        with media.first_track(path, "audio", media.NoAudio) as (container, stream):
            row.update(describe(container))
            samples = media.decode_until_damage(container, stream)
            mono = samples.mono() if samples else None
            rate = stream.codec_context.sample_rate or stream.rate
    except media.NoAudio:  # no sound: the container and its picture still describe the clip
        with media.first_track(path, "video", media.NoVideo) as (container, _):
            row.update(describe(container))
        return None
    if mono is None:
        raise media.Undecodable(path, "the audio track decoded to no samples")
    if rate != settings.sample_rate:
        mono = soxr.resample(mono, rate, settings.sample_rate, quality="MQ").astype(np.float32, copy=False)
    return mono


def describe(container: Any) -> dict[str, Any]:
    """What an open PyAV container and its first audio and video tracks declare."""
    info: dict[str, Any] = {
        "container": container.format.name.split(",")[0],
        "duration_container": container.duration / 1e6 if container.duration else None,
        "bitrate_container": container.bit_rate or None,
    }
    if container.streams.audio:
        a = container.streams.audio[0]
        info.update(audio_codec=a.codec_context.name, audio_sample_rate=a.codec_context.sample_rate or None,
                    audio_channels=a.codec_context.channels or None, audio_bitrate=a.bit_rate or None,
                    duration_audio_declared=_seconds(a))
    if container.streams.video:
        v = container.streams.video[0]
        info.update(video_codec=v.codec_context.name, fps=float(v.average_rate) if v.average_rate else None,
                    width=v.codec_context.width or None, height=v.codec_context.height or None,
                    video_bitrate=v.bit_rate or None, duration_video=_seconds(v), video_frames=v.frames or None)
    return info


def _seconds(stream: Any) -> float | None:
    return None if stream.duration is None or stream.time_base is None else float(stream.duration * stream.time_base)


def audio_measures(audio: np.ndarray, settings: TableSettings) -> tuple[dict[str, float], tuple[int, int] | None]:
    """Duration, leading and trailing silence, loudness (RMS dBFS) and peak (dBFS) of mono audio, and the
    samples from the first to the last non-silent frame (None: all silent)."""
    rate = settings.sample_rate
    hop = max(1, round(rate * settings.frame_ms / 1000))
    seconds = len(audio) / rate
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64)  # each frame's sum of squares
    tail = audio[len(energy) * hop :]
    total = float(energy.sum()) + float(np.dot(tail, tail))
    peak = max(float(audio.max()), -float(audio.min())) if len(audio) else 0.0
    measures = {"duration_audio": seconds, "loudness": 10 * math.log10(max(total / max(len(audio), 1), 1e-20)),
                "peak": 20 * math.log10(max(peak, 1e-10))}
    # A frame is loud when its mean square exceeds (peak x 10^(silence_db/20))^2.
    level = (peak * 10 ** (settings.silence_db / 20)) ** 2 * hop
    loud = np.flatnonzero(energy > level) if peak > 0 else np.zeros(0, int)
    if len(loud) == 0:
        measures.update(leading_silence=seconds, trailing_silence=seconds)
        return measures, None
    first, last = int(loud[0]), int(loud[-1])
    measures.update(leading_silence=first * hop / rate, trailing_silence=max(0.0, seconds - (last + 1) * hop / rate))
    return measures, (first * hop, (last + 1) * hop)


def fingerprint(audio: np.ndarray, settings: TableSettings) -> np.ndarray | None:
    """The clip's `settings.fingerprint_bits` fingerprint bools, or None for a steady sound (module docstring)."""
    from harness.data.features import mel_power

    cfg = AudioFeatures(sample_rate=settings.sample_rate, n_fft=512, hop_length=max(1, settings.sample_rate // 100),
                        n_mels=settings.fp_bands, fmin=settings.fp_fmin, fmax=settings.fp_fmax)
    power = mel_power(audio, cfg).astype(np.float64)  # (bands, frames)
    frames = power.shape[1]
    if frames < settings.fp_segments:  # shorter than one frame per span: repeat frames to fill them
        power = np.repeat(power, -(-settings.fp_segments // frames), axis=1)
        frames = power.shape[1]
    edges = np.linspace(0, frames, settings.fp_segments + 1).astype(int)
    spans = np.add.reduceat(power, edges[:-1], axis=1) / np.diff(edges)
    loudness = 10 * np.log10(np.maximum(spans.sum(axis=0), 1e-30))
    if float(np.std(loudness)) < MIN_SWING_DB:
        return None
    spans = 10 * np.log10(np.maximum(spans, max(float(spans.max()), 1e-30) * 1e-6))
    across = spans[:-1] - spans[1:]  # neighbouring bands, per span
    return (across[:, 1:] - across[:, :-1] > 0).ravel()
