"""Generated clips for the audit's tests (speech-like audio, re-encoded copies), and checks that they
hold what the tests plant in them."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from tests.conftest import write_labels


def speech_like(seed: int, seconds: float, rate: int = 16000) -> np.ndarray:
    """Mono float32 audio that changes over time as speech does: syllables (a gliding harmonic tone
    under a raised-cosine envelope, 3-6 a second) with pauses and a little noise. Clips of other
    seeds differ in timing, pitch and colour, so their fingerprints differ."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros(n, np.float64)
    start = 0.0
    while start < seconds:
        length = rng.uniform(0.12, 0.3)
        on = (t >= start) & (t < start + length)
        phase = (t[on] - start) / length
        pitch = rng.uniform(90, 260) * (1 + 0.2 * phase)
        tone = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / rate) * rng.uniform(0.1, 1) / k for k in range(1, 8))
        out[on] += np.sin(np.pi * phase) ** 2 * tone
        start += length + rng.uniform(0.02, 0.15)
    out += 0.01 * rng.standard_normal(n)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def write_av(path: Path, audio: np.ndarray, *, rate: int = 16000, codec: str = "aac", bitrate: int | None = None,
             frames: np.ndarray | None = None, fps: int = 10) -> Path:
    """An mp4 with `audio` (mono float32 at `rate`) in `codec`, and H.264 video: `frames`
    (uint8, (n, h, w, 3)) or 32x32 grey frames as long as the audio."""
    import av

    if frames is None:
        count = max(1, int(len(audio) / rate * fps))
        frames = np.broadcast_to(((np.arange(count) * 7) % 255).astype(np.uint8)[:, None, None, None], (count, 32, 32, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(codec, rate=rate, layout="mono")
        if bitrate:
            sound.bit_rate = bitrate
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        fmt = sound.codec_context.format.name  # the encoder's sample format: fltp (aac), s16p (mp3), flt (opus)
        step = sound.codec_context.frame_size or 1024
        for i in range(0, len(audio), step):
            block = audio[None, i : i + step]  # mono: planar and packed layouts are the same (1, n)
            if fmt.startswith(("s16", "s32")):
                kind = np.int16 if fmt.startswith("s16") else np.int32
                block = (np.clip(block, -1, 1) * np.iinfo(kind).max).astype(kind)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
    return path


def read_av(path: Path) -> tuple[np.ndarray, int, np.ndarray]:
    """A clip's first audio track (mono float32, its rate) and its video frames (RGB uint8)."""
    import av

    with av.open(str(path)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        audio = np.concatenate([f.to_ndarray().astype(np.float32).mean(axis=0) for f in c.decode(audio=0)])
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return audio, rate, frames


def reencode(src: Path, dst: Path, *, codec: str, bitrate: int, gain_db: float = 0.0) -> Path:
    """`src` decoded and written again: audio in `codec` at `bitrate` with `gain_db`, video re-encoded."""
    audio, rate, frames = read_av(src)
    return write_av(dst, audio * np.float32(10 ** (gain_db / 20)), rate=rate, codec=codec, bitrate=bitrate, frames=frames)


def planted_dataset(root: Path, *, per_class: int = 10, seconds: float = 2.0) -> dict[str, list[str]]:
    """A dataset carrying the three problems the audit must find, each planted deliberately:

    - train and val fakes start with 0.3-0.6 s of silence (in place of their first words, so every
      clip lasts `seconds`), reals do not: a leading-silence shortcut;
    - val holds re-encoded copies (MP3 64 kb/s at -6 dB, Opus 32 kb/s at +3 dB) of two train clips;
    - the test split is recorded at 8 kHz where train and val are at 16 kHz (a shift in sample rate).

    Returns the planted names: {"copies": ["train/x", "val/y", ...] in pairs, ...}.
    """
    rng = np.random.default_rng(7)
    seed = 0
    labels: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split, count in (("train", per_class), ("val", per_class // 2 + 1)):
        for target in (0, 1):
            for i in range(count):
                seed += 1
                audio = speech_like(seed, seconds)
                if target:  # the same length: the silence replaces the start, so only the silence differs
                    lead = int(rng.uniform(0.3, 0.6) * 16000)
                    audio = np.concatenate([np.zeros(lead, np.float32), audio[:-lead]])
                name = f"{split}_{'fake' if target else 'real'}{i}.mp4"
                write_av(root / f"{split}set" / name, audio)
                labels[split].append((name, target))
    copies = []
    for (name, target), (codec, bitrate, gain) in zip(labels["train"][:1] + labels["train"][-1:],
                                                      (("libmp3lame", 64000, -6.0), ("libopus", 32000, 3.0))):
        copy = f"copy_of_{name}"
        reencode(root / "trainset" / name, root / "valset" / copy, codec=codec, bitrate=bitrate, gain_db=gain)
        labels["val"].append((copy, target))
        copies += [f"train/{name}", f"val/{copy}"]
    tests = []
    for i in range(per_class):
        seed += 1
        name = f"test{i}.mp4"
        write_av(root / "testset" / name, speech_like(seed, seconds, rate=8000), rate=8000)
        tests.append(name)
    write_labels(root / "train_label.txt", labels["train"])
    write_labels(root / "val_label.txt", labels["val"])
    (root / "test_template.csv").write_text("video_name,score\n" + "".join(f"{n},0.5\n" for n in tests))
    return {"copies": copies}


def test_reencoded_copy_differs_in_bytes_and_codec_but_not_in_length(tmp_path: Path) -> None:
    src = write_av(tmp_path / "a.mp4", speech_like(1, 1.5))
    dst = reencode(src, tmp_path / "b.mp4", codec="libmp3lame", bitrate=64000, gain_db=-6)
    assert src.read_bytes() != dst.read_bytes()
    a, rate_a, frames_a = read_av(src)
    b, rate_b, frames_b = read_av(dst)
    assert rate_a == rate_b == 16000 and len(frames_a) == len(frames_b)
    assert abs(len(a) - len(b)) / rate_a < 0.1  # codec padding, not another clip
    # -6 dB: about half the level
    assert 0.4 < np.abs(b).max() / np.abs(a).max() < 0.6


def test_speech_like_clips_of_other_seeds_differ() -> None:
    a, b = speech_like(1, 1.0), speech_like(2, 1.0)
    assert a.shape == b.shape and abs(float(np.corrcoef(a, b)[0, 1])) < 0.2
    assert np.array_equal(speech_like(1, 1.0), a)
