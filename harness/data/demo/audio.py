"""The demo's audio: a synthetic voice, a vocoder's artefacts for fakes, and a recording chain every clip passes."""
from __future__ import annotations

import numpy as np

from harness.data.demo.clip import _VOWELS, SAMPLE_RATE, _envelope, _gaussian

_N_FFT = 512  # synthesis STFT: 32 ms window, 8 ms hop
_HOP = 128
_FREQS = np.fft.rfftfreq(_N_FFT, 1 / SAMPLE_RATE)
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann: overlap-adds to a constant at hop N/4


def _voice_stft(rng: np.random.Generator, syllables: np.ndarray, n: int) -> np.ndarray:
    """The speech as a (frames, bins) STFT, the domain the fakes damage: harmonics x formants, plus fricatives."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = _pitch(rng, t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    # Every harmonic below 7.8 kHz at amplitude 1/k; cos(k phase) by the Chebyshev recurrence (cheap).
    source, previous, current, cos1 = np.zeros(n), np.ones(n), np.cos(phase), np.cos(phase)
    for k in range(1, int(7800 / f0.min()) + 1):
        source += (k * f0 < 7800) * current / k
        previous, current = current, 2 * cos1 * current - previous
    source += 0.03 * (0.4 / 0.03) ** rng.random() * rng.standard_normal(n)  # from clear to breathy voices

    spec = _stft(source)
    frame_t = np.arange(len(spec)) * _HOP / SAMPLE_RATE
    voiced = _envelope(syllables, frame_t)
    spec *= _formant_filter(rng, syllables, frame_t) * voiced[:, None]

    # Fricatives: 30-90 ms of high-band noise at a syllable's start.
    burst = np.zeros_like(frame_t)
    for start, _, loud, _, fricative in syllables:
        if fricative:
            length = rng.uniform(0.03, 0.09)
            burst += loud * np.exp(-0.5 * ((frame_t - start + length / 2) / (length / 2)) ** 2)
    centre, width = rng.uniform(3000, 6000), rng.uniform(800, 2000)
    band = 0.15 * np.exp(-0.5 * ((_FREQS - centre) / width) ** 2)
    return spec + _stft(rng.standard_normal(n)) * band * burst[:, None]


def _pitch(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A speaker's f0 in Hz (90-260): a base, declination, slow glides and jitter that blurs the upper harmonics."""
    steps = np.arange(0, t[-1] + 0.01, 0.01)
    octaves = -0.15 * t / t[-1] + np.interp(t, steps, rng.normal(0, rng.uniform(0.003, 0.02), len(steps)))
    for _ in range(2):
        octaves += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 2 * np.pi))
    return np.clip(rng.uniform(100, 220) * 2.0**octaves, 90, 260)


def _formant_filter(rng: np.random.Generator, syllables: np.ndarray, frame_t: np.ndarray) -> np.ndarray:
    """(frames, bins) magnitude of the vocal tract: each syllable's vowel formants, glided between."""
    tract = rng.uniform(0.85, 1.2)  # shorter tracts (children, women) have higher formants
    formants = np.empty((len(frame_t), 3))
    formants[:] = _VOWELS[int(syllables[0, 3])]
    for start, _, _, vowel, _ in syllables:
        formants[frame_t >= start] = _VOWELS[int(vowel)]
    kernel = np.ones(7) / 7  # ~50 ms of coarticulation
    formants = np.stack([np.convolve(np.pad(f, 3, mode="edge"), kernel, "valid") for f in formants.T], axis=1)
    formants *= tract
    widths, gains = np.array([90.0, 110.0, 160.0]), np.array([1.0, 0.6, 0.3])
    f = _FREQS[None, :, None]
    peaks = gains / (1 + ((f - formants[:, None, :]) / (widths / 2)) ** 2)
    # Fixed higher resonances (speaker identity) keep energy up to 8 kHz, as real speech has.
    high = 0.12 / (1 + ((_FREQS - 3500 * tract) / 300) ** 2) + 0.08 / (1 + ((_FREQS - 4700 * tract) / 400) ** 2)
    return peaks.sum(axis=2) + high + 0.01


def _audio_artefacts(rng: np.random.Generator, spec: np.ndarray, strength: float,
                     extra: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The STFT with a vocoder's mark (smeared magnitude, random phase) and `extra` flaw, and a buzz (level, Hz)."""
    damage = strength**1.5  # weak fakes nearly clean, strong ones plain: easy cases to learn from, hard ones left over
    magnitude = _gaussian(np.abs(spec), 2.5 * damage, axis=1)
    spec = magnitude * np.exp(1j * (np.angle(spec) + damage * np.pi * rng.uniform(-1, 1, spec.shape)))
    if extra == "bandlimit":  # a synthesiser running at a lower rate: a sharp edge, unlike a mic's roll-off
        cutoff = 7500 - strength * rng.uniform(2500, 3500)
        spec = spec / (1 + np.exp((_FREQS - cutoff) / 60))
    if extra == "holes":  # narrow bands the model never learned to fill
        for centre in rng.uniform(400, 6000, size=rng.integers(2, 5)):
            spec = spec * (1 - 0.97 * strength * np.exp(-0.5 * ((_FREQS - centre) / rng.uniform(50, 120)) ** 2))
    buzz = (10 ** ((-38 + 18 * strength) / 20), rng.uniform(1000, 6000)) if extra == "buzz" else None
    return spec, buzz


def _tone(f: float, n: int) -> np.ndarray:
    """A steady tone and its octave, unit RMS: a vocoder's buzz, high above mains hum."""
    t = np.arange(n) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * min(2 * f, 7800) * t)
    return wave / np.sqrt(np.mean(wave**2))


def _recording_chain(rng: np.random.Generator, voice: np.ndarray) -> np.ndarray:
    """What a real recording adds to every clip, genuine or fake: room, noise, microphone, hum, level."""
    n = len(voice)
    if rng.random() < 0.5:  # a small room: exponentially decaying noise as the impulse response
        length = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)  # RT60: 60 dB down (e^-6.9) at the end
        tail = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)
        ir = np.concatenate([[1.0], rng.uniform(0.05, 0.25) * tail / np.sqrt(np.sum(tail**2))])
        voice = np.fft.irfft(np.fft.rfft(voice, 2 * n) * np.fft.rfft(ir, 2 * n), 2 * n)[:n]

    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    slope = rng.uniform(0.0, 1.5)  # white to brown-ish background
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.maximum(f, 20) ** (slope / 2), n)
    t = np.arange(n) / SAMPLE_RATE
    noise *= 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t + rng.uniform(0, 2 * np.pi))
    snr_db = rng.uniform(3, 30)
    voice_rms = np.sqrt(np.mean(voice**2))
    mix = voice + noise * voice_rms / np.sqrt(np.mean(noise**2)) * 10 ** (-snr_db / 20)

    # Microphone: spectral tilt, a presence bump, a gentle low cut and (often) a gentle high roll-off.
    gain_db = rng.uniform(-3, 3) * np.log2(np.maximum(f, 50) / 1000)
    gain_db += rng.uniform(0, 6) * np.exp(-0.5 * (np.log2(np.maximum(f, 1) / rng.uniform(1000, 4000)) / 0.5) ** 2)
    response = 10 ** (gain_db / 20) / np.sqrt(1 + (rng.uniform(60, 200) / np.maximum(f, 1)) ** 4)
    if rng.random() < 0.6:
        response /= np.sqrt(1 + (f / rng.uniform(5000, 8000)) ** 4)
    mix = np.fft.irfft(np.fft.rfft(mix) * response, n)

    if rng.random() < 0.25:  # mains hum: a real-world tone that must not pass for the fakes' buzz
        base = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * base * k * t) / k for k in (1, 2, 3))
        mix += hum * np.sqrt(np.mean(mix**2)) * 10 ** (rng.uniform(-40, -25) / 20)
    return (mix * 10 ** (rng.uniform(-20, -3) / 20) / np.max(np.abs(mix))).astype(np.float32)


def _stft(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, (_N_FFT // 2, _N_FFT // 2 + _HOP))
    starts = _HOP * np.arange(1 + (len(padded) - _N_FFT) // _HOP)
    return np.fft.rfft(padded[starts[:, None] + np.arange(_N_FFT)] * _WINDOW, axis=1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft`, trimmed to `n` samples."""
    idx = _HOP * np.arange(len(spec))[:, None] + np.arange(_N_FFT)
    out = np.zeros(idx.max() + 1)
    norm = np.zeros_like(out)
    np.add.at(out, idx, np.fft.irfft(spec, _N_FFT, axis=1) * _WINDOW)
    np.add.at(norm, idx, np.broadcast_to(_WINDOW**2, idx.shape))
    return (out / np.maximum(norm, 1e-8))[_N_FFT // 2 : _N_FFT // 2 + n]
