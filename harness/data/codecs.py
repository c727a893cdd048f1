"""Codec variants of a clip's audio, re-encoded in memory (AAC, MP3, Opus; call quality to transparent; 8-48 kHz;
-6 to +6 dB): uploads and calls re-encode deepfake audio, and a detector trained on one encoding learns its mark.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

_BITRATES = (24_000, 32_000, 48_000, 64_000, 96_000, 128_000)
_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
# codec name -> (container for a raw stream of it, bitrates in bit/s, sample rates it can encode)
CODECS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "aac": ("adts", _BITRATES, _RATES), "libmp3lame": ("mp3", _BITRATES, _RATES),
    "libopus": ("ogg", (12_000, 16_000, 24_000, 32_000, 48_000, 64_000), (8000, 16000, 24000, 48000))}
GAIN_DB = 6.0


@dataclass(frozen=True)
class Variant:
    """What one round trip drew, for reports and tests."""

    codec: str
    bitrate: int
    rate: int
    gain_db: float


def draw_variant(rng: np.random.Generator) -> Variant:
    codec = str(rng.choice(list(CODECS)))
    _, bitrates, rates = CODECS[codec]
    return Variant(codec, int(rng.choice(bitrates)), int(rng.choice(rates)), float(rng.uniform(-GAIN_DB, GAIN_DB)))


def codec_round_trip(audio: np.ndarray, sample_rate: int, variant: Variant) -> np.ndarray:
    """`audio` (mono float32) through `variant`'s gain, rate, encoder and decoder, back at `sample_rate`."""
    import av
    import soxr

    fmt = CODECS[variant.codec][0]
    x = np.clip(audio * np.float32(10 ** (variant.gain_db / 20)), -1.0, 1.0).astype(np.float32)
    if variant.rate != sample_rate:
        x = soxr.resample(x, sample_rate, variant.rate, quality="MQ").astype(np.float32, copy=False)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(variant.codec, rate=variant.rate, layout="mono")
        stream.bit_rate = variant.bitrate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None]), format="flt", layout="mono")
        frame.sample_rate, frame.pts = variant.rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    buf.seek(0)
    parts, rate = [], variant.rate
    with av.open(buf, "r", format=fmt) as container:
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            parts.append(frame.to_ndarray().reshape(len(frame.layout.channels), -1).mean(axis=0))
    decoded = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if rate != sample_rate:
        decoded = soxr.resample(decoded, rate, sample_rate, quality="MQ").astype(np.float32, copy=False)
    return decoded
