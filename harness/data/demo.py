"""A deterministic synthetic data set in the layout of the 2024 Global Multimedia Deepfake Detection
challenge (audio-video track), so that every command can be run end to end without the real data.

Layout (what `harness.data.labels` reads):

    OUT/trainset/*.mp4  OUT/valset/*.mp4  OUT/testset/*.mp4
    OUT/train_label.txt  OUT/val_label.txt     video_name,target   (1 = deepfake)
    OUT/test_template.csv                      video_name,score    (0.5 for every test clip)
    OUT/.answers/test_label.txt                the hidden test labels, to score a submission
    OUT/.answers/clips.csv                     which artefacts each clip carries, at what strength
    OUT/.demo.json                             the parameters; written last, so it marks a complete set

Each clip is a small mp4 (H.264 96x96 at 12 fps, AAC mono 16 kHz): speech-like audio (a harmonic
source with gliding pitch, formant resonances, syllable envelopes, fricative bursts) and a face-like
picture whose mouth opens with the audio envelope. Genuine clips vary in the nuisances of real
recordings (room, microphone colouration, noise, hum, level, camera blur and noise), so that no single
trivial feature separates the classes. As in the challenge, a fake may be fake in its audio, its video
or both. Audio fakes carry a vocoder's mark (harmonics smeared across frequency, phase partly random),
often with band-limiting, spectral holes or a faint tonal buzz; video fakes a blended inner face with a
colour and sharpness seam, sometimes jittering against the head or with its mouth out of step with the
audio. Each fake's artefacts have one of a few strengths, from barely there to plain.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
FPS = 12
SIZE = 96
# Bump whenever the generated content changes, so a folder made by older code is refused, not mixed.
FORMAT = 1

MARKER = ".demo.json"
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))
# Which modality a fake is fake in. A model of one modality cannot see the other's fakes, so its AUC
# tops out well below 1 (about 0.85 for audio, 0.8 for video), much as on the real data.
FAKE_KINDS = (("audio", 0.4), ("video", 0.3), ("both", 0.3))
# Tuned so that a small CNN trained from scratch is near chance after one epoch and clearly better after
# a few (log-mel: ~0.6 -> ~0.7 val AUC in 5 epochs; frames: ~0.55 -> ~0.65), and no single hand-made
# feature (level, bandwidth, sharpness, harmonic contrast, file size) gets past about 0.72.
STRENGTHS = (0.35, 0.65, 1.0)

_N_FFT = 512  # synthesis STFT: 32 ms window, 8 ms hop
_HOP = 128
_FREQS = np.fft.rfftfreq(_N_FFT, 1 / SAMPLE_RATE)
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann: overlap-adds to a constant at hop N/4
# (F1, F2, F3) of five vowels for an average adult voice; each speaker scales them.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
_SKIN = np.array([[224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172], [241, 194, 125], [110, 70, 40]])


@dataclass(frozen=True)
class _Clip:
    """Everything a worker needs to write one clip; the seed pair makes it independent of the others."""

    name: str
    split: str
    target: int
    audio_fake: float  # artefact strength, 0.0 for genuine audio
    video_fake: float
    seed: int
    index: int
    seconds: float


def make_demo_dataset(out: Path, *, clips: int = 240, seed: int = 0, seconds: float = 3.0) -> Path:
    """Write the demo data set to `out` and return `out`; return at once if it is already there.

    The set is built in a sibling folder and moved into place in one rename, so an interrupted run
    never leaves a half data set at `out`. Raises ValueError when `out` holds something else (another
    demo with other parameters, or foreign files), rather than silently mixing two data sets.
    """
    if clips < 10:
        raise ValueError(f"clips must be at least 10 so that every split holds both classes, got {clips}")
    if seconds < 1.0:
        raise ValueError(f"seconds must be at least 1.0 so that a clip holds a few syllables, got {seconds}")
    out = Path(out)
    params = {"format": FORMAT, "clips": int(clips), "seed": int(seed), "seconds": float(seconds)}
    if _is_complete(out, params):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier, killed process that had our pid
    try:
        _build(tmp, _plan(clips, seed, float(seconds)), params)
        try:
            os.replace(tmp, out)  # also succeeds onto an empty folder
        except OSError:
            if not _is_complete(out, params):  # someone else finished the same set first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_complete(out: Path, params: dict) -> bool:
    """True when `out` already holds this very set; False when it is absent or empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"{out} exists and is not a demo data set; pick another folder or delete it")
    found = json.loads(marker.read_text())
    if found != params:
        raise ValueError(
            f"{out} holds a demo data set made with {found}, not {params}; pick another folder or delete it"
        )
    return True


def _plan(clips: int, seed: int, seconds: float) -> list[_Clip]:
    """Names, splits, labels and artefact strengths, all drawn from `seed`, in a shuffled order."""
    rng = np.random.default_rng(seed)
    names = [rng.bytes(16).hex() + ".mp4" for _ in range(clips)]
    shares = dict(SPLIT_SHARES)
    n_val, n_test = round(clips * shares["val"]), round(clips * shares["test"])
    sizes = {"train": clips - n_val - n_test, "val": n_val, "test": n_test}
    rows = []
    for split, n in sizes.items():
        kinds = _fake_kinds(n // 2) + ["real"] * (n - n // 2)
        for kind in rng.permutation(kinds):
            audio = float(rng.choice(STRENGTHS)) if kind in ("audio", "both") else 0.0
            video = float(rng.choice(STRENGTHS)) if kind in ("video", "both") else 0.0
            rows.append((split, int(kind != "real"), audio, video))
    order = rng.permutation(clips)
    return [_Clip(names[i], *rows[j], seed=seed, index=i, seconds=seconds) for i, j in enumerate(order)]


def _fake_kinds(n: int) -> list[str]:
    """`n` fake kinds in the FAKE_KINDS shares, exact up to rounding, so each split gets the mix."""
    audio = round(n * FAKE_KINDS[0][1])
    video = round(n * FAKE_KINDS[1][1])
    return ["audio"] * audio + ["video"] * video + ["both"] * (n - audio - video)


def _build(folder: Path, plan: list[_Clip], params: dict) -> None:
    for split, _ in SPLIT_SHARES:
        (folder / f"{split}set").mkdir(parents=True)
    (folder / ".answers").mkdir()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Spawned workers: the caller may have torch or other threaded libraries loaded, which fork breaks.
    with ProcessPoolExecutor(min(cpus, 8), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_clip, plan, [folder] * len(plan), chunksize=4))
    _write_labels(folder, plan)
    (folder / MARKER).write_text(json.dumps(params, indent=2) + "\n")


def _write_labels(folder: Path, plan: list[_Clip]) -> None:
    def lines(header: str, rows: list[str]) -> str:
        return "\n".join([header, *rows]) + "\n"

    label_files = {"train": "train_label.txt", "val": "val_label.txt", "test": ".answers/test_label.txt"}
    for split, path in label_files.items():
        rows = [f"{c.name},{c.target}" for c in plan if c.split == split]
        (folder / path).write_text(lines("video_name,target", rows))
    tests = [f"{c.name},0.5" for c in plan if c.split == "test"]
    (folder / "test_template.csv").write_text(lines("video_name,score", tests))
    detail = [f"{c.name},{c.split},{c.target},{c.audio_fake},{c.video_fake}" for c in plan]
    header = "video_name,split,target,audio_artefact,video_artefact"  # artefact strengths, 0 = genuine
    (folder / ".answers/clips.csv").write_text(lines(header, detail))


def _rng(clip: _Clip, part: str) -> np.random.Generator:
    """An independent stream per clip and per part, so that a fake's speaker, room and camera are drawn
    exactly as a genuine clip's are, whatever its artefacts consume."""
    key = ("speech", "voice", "audio fake", "room", "look", "video fake", "camera").index(part)
    return np.random.default_rng(np.random.SeedSequence(clip.seed, spawn_key=(clip.index, key)))


def _write_clip(clip: _Clip, folder: Path) -> None:
    n = round(clip.seconds * SAMPLE_RATE)
    syllables = _syllables(_rng(clip, "speech"), clip.seconds)
    spec = _voice_stft(_rng(clip, "voice"), syllables, n)
    buzz = None
    if clip.audio_fake:
        spec, buzz = _audio_artefacts(_rng(clip, "audio fake"), spec, clip.audio_fake)
    voice = _istft(spec, n)
    if buzz is not None:
        level, hz = buzz
        voice += level * np.sqrt(np.mean(voice**2)) * _tone(hz, n)
    audio = _recording_chain(_rng(clip, "room"), voice)

    times = np.arange(round(clip.seconds * FPS)) / FPS
    look = _rng(clip, "look")
    background = _background(look, len(times))
    face = _draw_face(look, _envelope(syllables, times), times)
    colour, alpha = _paint_face(face)
    video = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    if clip.video_fake:
        video = _face_swap(_rng(clip, "video fake"), video, face, syllables, times, clip.video_fake)
    video = _camera(_rng(clip, "camera"), video)
    _encode(folder / f"{clip.split}set" / clip.name, video, audio)


# --- audio -----------------------------------------------------------------------------------------


def _syllables(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Rows of (start, duration, loudness, vowel, has_fricative): a speaker's rhythm with pauses."""
    rate = rng.uniform(3.0, 6.0)  # syllables per second
    t, rows = rng.uniform(0.0, 0.3), []
    while t < seconds - 0.1:
        dur = rng.uniform(0.55, 0.9) / rate
        rows.append((t, dur, rng.uniform(0.4, 1.0), rng.integers(len(_VOWELS)), rng.random() < 0.6))
        t += dur + rng.uniform(0.1, 0.5) / rate
        if rng.random() < 0.12:  # a pause between phrases
            t += rng.uniform(0.15, 0.45)
    return np.array(rows, dtype=float).reshape(-1, 5)


def _envelope(syllables: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Loudness at `times`: a rounded bump per syllable. Drives both the voice and the mouth."""
    env = np.zeros_like(times)
    for start, dur, loud, _, _ in syllables:
        x = np.clip((times - start) / dur, 0.0, 1.0)
        env = np.maximum(env, loud * np.sin(np.pi * x) ** 0.8)
    return env


def _voice_stft(rng: np.random.Generator, syllables: np.ndarray, n: int) -> np.ndarray:
    """The speech as a (frames, bins) STFT: harmonic source x formant envelope, plus fricative noise.

    Built in the STFT domain because the fake artefacts are damage to that same representation.
    """
    t = np.arange(n) / SAMPLE_RATE
    f0 = _pitch(rng, t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    # Every harmonic below 7.8 kHz at amplitude 1/k; cos(k phase) by the Chebyshev recurrence, far
    # cheaper than a cosine per harmonic.
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
    """A speaker's f0 in Hz: a base in 100-220 Hz, phrase declination, slow glides and cycle-to-cycle
    jitter (which blurs the upper harmonics, as in real voices), within 90-260."""
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


def _audio_artefacts(
    rng: np.random.Generator, spec: np.ndarray, strength: float
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A vocoder's mark, often with one more flaw: the damaged STFT, and a buzz (level, Hz) or None."""
    # Every synthesiser's vocoder: the magnitude smoothed across frequency (the harmonics bleed into
    # their valleys) and the phase partly random (their fine structure smears in time).
    damage = strength**1.5  # weak fakes nearly clean, strong ones plain: easy cases to learn from, hard ones left over
    magnitude = _gaussian(np.abs(spec), 2.5 * damage, axis=1)
    spec = magnitude * np.exp(1j * (np.angle(spec) + damage * np.pi * rng.uniform(-1, 1, spec.shape)))
    extra = rng.choice(["none", "bandlimit", "holes", "buzz"], p=[0.25, 0.25, 0.25, 0.25])
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


# --- video -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Face:
    """A face's look and its path through the clip, in pixels; per-frame arrays have one row a frame."""

    skin: np.ndarray  # RGB
    hair: np.ndarray | None
    lips: np.ndarray
    iris: np.ndarray
    half_width: float
    half_height: float
    eye_gap: float
    light: float  # direction of the key light, radians
    cx: np.ndarray
    cy: np.ndarray
    tilt: np.ndarray
    blink: np.ndarray  # 1 open, 0 shut
    mouth: np.ndarray  # 0 closed .. 1 wide open


def _background(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A blotchy wall with a few straight edges (shelves, door frames), slowly panned by the camera."""
    canvas = SIZE + 16
    wall = rng.uniform(40, 200, 3) + 25 * _smooth_noise(rng, 4, canvas) + 10 * _smooth_noise(rng, 16, canvas)
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, canvas - 10, 2)
        wall[y0 : y0 + rng.integers(4, 40), x0 : x0 + rng.integers(4, 40)] = rng.uniform(30, 220, 3)
    pan = np.cumsum(rng.normal(0, 0.4, (frames, 2)), axis=0)
    offsets = np.clip(np.round(8 + pan - pan.mean(axis=0)), 0, 16).astype(int)
    return np.stack([wall[y : y + SIZE, x : x + SIZE] for x, y in offsets]).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """(size, size, 3) unit-ish noise, bilinear between a `cells` x `cells` grid of random values."""
    grid = rng.normal(size=(cells + 1, cells + 1, 3))
    pos = np.linspace(0, cells, size)
    i = np.minimum(pos.astype(int), cells - 1)
    w = (pos - i)[:, None, None]
    rows = grid[i] * (1 - w) + grid[i + 1] * w
    return rows[:, i] * (1 - w.transpose(1, 0, 2)) + rows[:, i + 1] * w.transpose(1, 0, 2)


def _draw_face(rng: np.random.Generator, mouth: np.ndarray, times: np.ndarray) -> _Face:
    frames = len(times)
    half_width = float(rng.uniform(17, 23))  # python floats keep the painting in float32
    drift = np.cumsum(rng.normal(0, 0.5, (frames, 2)), axis=0)
    drift = np.clip(drift - drift.mean(axis=0), -6, 6)
    # Bobs a little, and nods with the syllables while speaking.
    bob = rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * rng.uniform(1, 2.5) * times) + 1.2 * mouth
    blink = np.ones(frames)
    for start in np.arange(rng.uniform(0, 2), times[-1] + 1, rng.uniform(2, 4)):
        blink[(times >= start) & (times < start + 0.15)] = 0.1
    return _Face(
        skin=np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 10, 3), 0, 255),
        hair=rng.uniform(10, 120) * np.array([1.0, 0.8, 0.6]) if rng.random() < 0.75 else None,
        lips=np.array([170.0, 80, 80]) * rng.uniform(0.7, 1.1),
        iris=rng.uniform(20, 110, 3),
        half_width=half_width,
        half_height=half_width * float(rng.uniform(1.2, 1.35)),
        eye_gap=float(rng.uniform(0.34, 0.42)),
        light=float(rng.uniform(0, 2 * np.pi)),
        cx=48 + rng.normal(0, 4) + drift[:, 0],
        cy=50 + rng.normal(0, 4) + drift[:, 1] + bob,
        tilt=rng.uniform(-0.12, 0.12) + np.cumsum(rng.normal(0, 0.01, frames)),
        blink=blink,
        mouth=mouth,
    )


def _paint_face(face: _Face, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(colour, alpha) of the head, frame by frame; `shift` moves the features (not the head) in pixels."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)  # float32 halves the cost of painting
    dx, dy = xx[None] - _col(face.cx), yy[None] - _col(face.cy)
    cos, sin = np.cos(face.tilt), np.sin(face.tilt)
    u, v = dx * _col(cos) + dy * _col(sin), dy * _col(cos) - dx * _col(sin)  # head coordinates, v down
    a, b = face.half_width, face.half_height
    shift_u, shift_v = (shift[:, 0], shift[:, 1]) if shift is not None else (0.0, 0.0)

    def ellipse(region: tuple, u0: float, v0: float, ru: float, rv: float | np.ndarray) -> np.ndarray:
        """A filled ellipse with a one-pixel soft edge (anti-aliased, as a camera would see it)."""
        r = np.sqrt(((u[region] - _col(u0)) / ru) ** 2 + ((v[region] - _col(v0)) / _col(rv)) ** 2)
        return np.clip((1 - r) * np.minimum(ru, _col(rv)) + 0.5, 0, 1)

    def feature(colour: np.ndarray, u0: float, v0: float, ru: float, rv: float | np.ndarray) -> None:
        """Paint a feature only inside its bounding box over all frames: features are small, frames not."""
        fu, fv = u0 + shift_u, v0 + shift_v
        x, y = face.cx + fu * cos - fv * sin, face.cy + fu * sin + fv * cos
        reach = max(ru, float(np.max(rv))) + 2
        rows = slice(max(int(y.min() - reach), 0), min(int(y.max() + reach) + 1, SIZE))
        cols = slice(max(int(x.min() - reach), 0), min(int(x.max() + reach) + 1, SIZE))
        region = (slice(None), rows, cols)
        mask = ellipse(region, fu, fv, ru, rv)[..., None]
        image[region] += mask * (colour.astype(np.float32) - image[region])

    everywhere = (slice(None),)
    shading = 1 + 0.18 * (u * np.float32(np.cos(face.light)) + v * np.float32(np.sin(face.light))) / a
    image = face.skin.astype(np.float32) * np.clip(shading, 0.6, 1.3)[..., None]
    head, neck = ellipse(everywhere, 0, 0, a, b), ellipse(everywhere, 0, 1.15 * b, 0.45 * a, 0.5 * b)
    alpha = np.maximum(head, neck)
    if face.hair is not None:
        hair = ellipse(everywhere, 0, -0.08 * b, 1.06 * a, 1.05 * b) * np.clip(-0.45 * b - v, 0, 1)
        image += hair[..., None] * (face.hair.astype(np.float32) - image)
        alpha = np.maximum(alpha, hair)
    for side in (-1, 1):
        eye_u = side * face.eye_gap * a
        feature(face.hair if face.hair is not None else face.skin * 0.5, eye_u, -0.36 * b, 0.16 * a, 0.035 * b)
        feature(np.array([235.0, 235, 230]), eye_u, -0.2 * b, 0.15 * a, 0.07 * b * face.blink)
        feature(face.iris, eye_u, -0.2 * b, 0.07 * a, 0.065 * b * face.blink)
    feature(face.skin * 0.8, 0, 0.12 * b, 0.1 * a, 0.12 * b)  # nose shadow
    opening = b * (0.015 + 0.14 * face.mouth)
    feature(face.lips, 0, 0.48 * b, 0.3 * a, 0.04 * b + opening)
    feature(np.array([50.0, 15, 20]), 0, 0.48 * b, 0.24 * a, opening)
    return image, alpha


def _col(x: float | np.ndarray) -> float | np.ndarray:
    """A per-frame array shaped to broadcast over (frames, H, W) in float32; a scalar as it is."""
    return x.astype(np.float32)[:, None, None] if isinstance(x, np.ndarray) else np.float32(x)


def _face_swap(
    rng: np.random.Generator,
    video: np.ndarray,
    host: _Face,
    syllables: np.ndarray,
    times: np.ndarray,
    strength: float,
) -> np.ndarray:
    """Blend another person's inner face over the host's, with the artefacts of a face swap.

    Always: a colour and sharpness mismatch at the blend's edge. Sometimes: the pasted face jitters
    against the head, and its mouth follows the audio late or early.
    """
    lag = strength * rng.uniform(0.08, 0.25) * rng.choice([-1, 1]) if rng.random() < 0.5 else 0.0
    jitter = rng.normal(0, 1.2 * strength, (len(times), 2)) if rng.random() < 0.5 else np.zeros((len(times), 2))
    tint = rng.normal(0, 1, 3)
    source = dataclasses.replace(
        host,
        skin=np.clip(host.skin + 24 * strength * tint / np.linalg.norm(tint) + rng.normal(0, 4, 3), 0, 255),
        iris=rng.uniform(20, 110, 3),
        eye_gap=host.eye_gap * float(rng.uniform(0.9, 1.1)),
        mouth=_envelope(syllables, times - lag),
    )
    colour, _ = _paint_face(source, shift=jitter)
    colour = _blur(colour, 0.5 + 1.3 * strength)
    mask = _inner_mask(dataclasses.replace(host, cx=host.cx + jitter[:, 0], cy=host.cy + jitter[:, 1]))
    return video * (1 - mask[..., None]) + colour * mask[..., None]


def _inner_mask(face: _Face) -> np.ndarray:
    """The pasted region: eyes to chin, feathered over ~2 px so the seam is faint, not a cut-out."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    du = (xx[None] - _col(face.cx)) / (0.8 * face.half_width)
    dv = (yy[None] - _col(face.cy) - 0.1 * face.half_height) / (0.8 * face.half_height)
    return np.clip((1 - np.sqrt(du**2 + dv**2)) * 0.8 * face.half_width / 2, 0, 1)


def _blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two image axes of (frames, H, W, 3)."""
    return _gaussian(_gaussian(video, sigma, axis=1), sigma, axis=2)


def _gaussian(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along one axis, edges extended; a weighted sum of shifts, cheap for small sigma."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(x.real.dtype)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0)
    length = x.shape[axis]
    return np.moveaxis(sum(w * padded[i : i + length] for i, w in enumerate(kernel)), 0, axis)


def _camera(rng: np.random.Generator, video: np.ndarray) -> np.ndarray:
    """What every camera adds: focus blur, exposure, white balance and sensor noise, as uint8."""
    if rng.random() < 0.5:
        video = _blur(video, rng.uniform(0.3, 0.9))
    video = video * (rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    video = video + rng.uniform(1, 5) * rng.standard_normal(video.shape, dtype=np.float32)
    return np.clip(np.round(video), 0, 255).astype(np.uint8)


# --- container ---------------------------------------------------------------------------------------


def _encode(path: Path, video: np.ndarray, audio: np.ndarray) -> None:
    """Write H.264 + AAC mp4, single-threaded, so the bytes depend on the content alone."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"  # FFmpeg builds without GPL parts
    with av.open(str(path), "w", format="mp4") as container:
        options = {"threads": "1"}
        if codec == "libx264":
            # Without macroblock-tree rate control: with it, this x264 build was measured to give other
            # bytes for the same frames now and then, depending on what the process encoded before.
            options |= {"crf": "26", "x264-params": "mbtree=0"}
        vstream = container.add_stream(codec, rate=FPS, options=options)
        if codec == "mpeg4":
            vstream.bit_rate = 64_000  # its default, 200 kb/s, is far more than 96x96 needs
        vstream.width = vstream.height = SIZE
        vstream.pix_fmt = "yuv420p"
        vstream.thread_count = 1
        astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        astream.bit_rate = 48_000  # below ~40 kb/s FFmpeg's AAC encoder low-passes under 8 kHz
        for i, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        for start in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            container.mux(astream.encode(frame))
        container.mux(astream.encode())
