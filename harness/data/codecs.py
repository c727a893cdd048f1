"""Codec variants of a clip's audio: re-encoded with a random lossy codec, decoded back, in memory.

`codec_round_trip` is the audio-side equivalent of JPEG re-encoding for face crops: deepfake audio
reaches a detector through uploads, calls and messengers that re-encode it, and a detector trained
only on the dataset's own encoding learns that encoding's fingerprint. One round trip draws:

  codec     AAC, MP3 (LAME) or Opus, the three this PyAV build can encode (Vorbis it cannot);
  bitrate   per codec, from narrow-band call quality to transparent (`BITRATES`);
  rate      a resample chain: the clip's rate -> the codec's rate (8-48 kHz, as the codec allows) -> back;
  gain      -6 to +6 dB, clipped to full scale as a real encoder's input would be.

Everything runs in the calling process (a feature worker) on in-memory buffers: nothing touches
the disk, and a variant costs one encode and one decode of the clip (see bench/prepare_speed.py).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

# codec name -> (container for a raw stream of it, bitrates in bit/s, sample rates it can encode)
CODECS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "aac": ("adts", (24_000, 32_000, 48_000, 64_000, 96_000, 128_000), (8000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "libmp3lame": ("mp3", (24_000, 32_000, 48_000, 64_000, 96_000, 128_000), (8000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "libopus": ("ogg", (12_000, 16_000, 24_000, 32_000, 48_000, 64_000), (8000, 16000, 24000, 48000)),
}
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
    """`audio` (mono float32 at `sample_rate`) through `variant`'s gain, resampling, encoder and
    decoder, back at `sample_rate`. Raises av.error.FFmpegError if the encoder refuses."""
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
        frame.sample_rate = variant.rate
        frame.pts = 0
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
