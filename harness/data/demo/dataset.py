"""The demo set as a whole: the plan (names, splits, labels, artefacts), the parallel build, the label files."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from harness.data.demo.audio import _audio_artefacts, _istft, _recording_chain, _tone, _voice_stft
from harness.data.demo.clip import FPS, SAMPLE_RATE, _Clip, _rng
from harness.data.demo.container import _encode
from harness.data.demo.speech import _envelope, _syllables
from harness.data.demo.video import _background, _camera, _draw_face, _face_swap, _paint_face
from harness.data.workers import worker_pool
from harness.errors import BadInput
from harness.fileio import atomic_dir, pid_alive, write_text

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


def make_demo_dataset(out: Path, *, clips: int = 240, seed: int = 0, seconds: float = 3.0) -> Path:
    """Write the demo data set to `out` and return `out`; return at once if it is already there.

    The set is built in a hidden sibling folder (every file fsynced) and swapped into place with
    renames (`harness.fileio.atomic_dir`), so an interrupted run never leaves a half data set at
    `out`; what a killed build left is removed by the next one. Raises BadInput (a ValueError) when
    `out` holds something else (another demo with other parameters, or foreign files), rather than
    silently mixing two data sets.

    Example:
        >>> make_demo_dataset(Path("/tmp/demo"), clips=10, seconds=1.0)  # doctest: +SKIP
        PosixPath('/tmp/demo')
    """
    if clips < 10:
        raise BadInput(f"clips must be at least 10 so that every split holds both classes, got {clips}")
    if seconds < 1.0:
        raise BadInput(f"seconds must be at least 1.0 so that a clip holds a few syllables, got {seconds}")
    out = Path(out)
    params = {"format": FORMAT, "clips": int(clips), "seed": int(seed), "seconds": float(seconds)}
    if _is_complete(out, params):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    with atomic_dir(out) as stage:
        _build(stage, _plan(clips, seed, float(seconds)), params)
        # Checked again at the swap: another process may have filled `out` meanwhile. The same set is
        # replaced by an identical one; anything else raises, and the swap does not happen.
        _is_complete(out, params)
    return out


def _remove_stale_builds(out: Path) -> None:
    """Staging folders of builds into `out` whose process is gone (killed mid-build)."""
    for leftover in out.parent.glob(f".{out.name}.*"):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)", leftover.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def _is_complete(out: Path, params: dict) -> bool:
    """True when `out` already holds this very set; False when it is absent or empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / MARKER
    if not marker.is_file():
        raise BadInput(f"{out} exists and is not a demo data set; pick another folder or delete it")
    found = json.loads(marker.read_text())
    if found != params:
        raise BadInput(
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
    # Spawned workers (the caller may have torch or other threaded libraries loaded, which fork breaks),
    # stopped at once by Ctrl-C or SIGTERM, and gone with this process if it is killed.
    with worker_pool(min(cpus, 8)) as pool:
        list(pool.map(_write_clip, plan, [folder] * len(plan), chunksize=4))
    _write_labels(folder, plan)
    write_text(folder / MARKER, json.dumps(params, indent=2) + "\n")  # last: it marks a complete set


def _write_labels(folder: Path, plan: list[_Clip]) -> None:
    def lines(header: str, rows: list[str]) -> str:
        return "\n".join([header, *rows]) + "\n"

    label_files = {"train": "train_label.txt", "val": "val_label.txt", "test": ".answers/test_label.txt"}
    for split, path in label_files.items():
        rows = [f"{c.name},{c.target}" for c in plan if c.split == split]
        write_text(folder / path, lines("video_name,target", rows))
    tests = [f"{c.name},0.5" for c in plan if c.split == "test"]
    write_text(folder / "test_template.csv", lines("video_name,score", tests))
    detail = [f"{c.name},{c.split},{c.target},{c.audio_fake},{c.video_fake}" for c in plan]
    header = "video_name,split,target,audio_artefact,video_artefact"  # artefact strengths, 0 = genuine
    write_text(folder / ".answers/clips.csv", lines(header, detail))


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
    path = folder / f"{clip.split}set" / clip.name
    _encode(path, video, audio)
    _fsync(path)  # the folder is swapped in by a rename: its files must be on disk first


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
