"""The demo set as a whole: the plan (names, splits, labels, artefacts), the parallel build, the files written."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.data.demo.audio import _audio_artefacts, _istft, _recording_chain, _tone, _voice_stft
from harness.data.demo.clip import FPS, SAMPLE_RATE, SIZE, _Clip, _envelope, _rng, _syllables
from harness.data.demo.video import _background, _camera, _draw_face, _face_swap, _paint_face
from harness.data.methods import METHODS_FILE
from harness.data.workers import worker_pool
from harness.errors import BadInput
from harness.fileio import atomic_dir, pid_alive, write_text

# Bump whenever the generated content changes, so a folder made by older code is refused, not mixed.
FORMAT = 2  # 2: named forgery methods (methods.csv), one of them in test only

MARKER = ".demo.json"
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))
# Forgery methods: name -> (modality faked, vocoder flaw, face swap flaw); one modality's model misses the other's.
METHODS = {
    "vocoder": ("audio", "none", "none"),
    "vocoder-bandlimit": ("audio", "bandlimit", "none"),
    "faceswap": ("video", "none", "none"),
    "faceswap-jitter": ("video", "none", "jitter"),
    "av-vocoder-faceswap": ("both", "none", "none"),
    "av-holes-lag": ("both", "holes", "lag"),
    "vocoder-buzz": ("audio", "buzz", "none"),  # test only, as the real final test holds unseen methods
}
SEEN = ("vocoder", "vocoder", "vocoder-bandlimit", "vocoder-bandlimit", "faceswap", "faceswap", "faceswap-jitter",
        "av-vocoder-faceswap", "av-holes-lag", "av-holes-lag")  # dealt in turn: 4 audio, 3 video, 3 both of 10
UNSEEN = "vocoder-buzz"
UNSEEN_SHARE = 0.25  # of the test fakes
# Tuned: a small CNN goes from val AUC ~0.6 to ~0.7 in 5 epochs; no single hand-made feature gets past about 0.72.
STRENGTHS = (0.35, 0.65, 1.0)


def make_demo_dataset(out: Path, *, clips: int = 240, seed: int = 0, seconds: float = 3.0, replace_older: bool = False,
                      on_build: Callable[[str], None] | None = None) -> Path:
    """Write the demo data set to `out` (at once if already there) and return `out`, built aside and swapped in
    (`atomic_dir`). BadInput, deleting nothing, when `out` holds anything else, except with `replace_older` a demo
    set of another FORMAT. `on_build` hears why a build starts ("first use", "made by another version ...")."""
    if clips < 10:
        raise BadInput(f"clips must be at least 10 so that every split holds both classes, got {clips}")
    if seconds < 1.0:
        raise BadInput(f"seconds must be at least 1.0 so that a clip holds a few syllables, got {seconds}")
    out = Path(out)
    params = {"format": FORMAT, "clips": int(clips), "seed": int(seed), "seconds": float(seconds)}
    if _is_complete(out, params, replace_older=replace_older):
        return out
    if on_build is not None:
        on_build("made by another version of the generator" if (out / MARKER).is_file() else "first use")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    with atomic_dir(out) as stage:
        _build(stage, _plan(clips, seed, float(seconds)), params)
        # Again at the swap: another process may have filled `out` meanwhile (the same set, or BadInput).
        _is_complete(out, params, replace_older=replace_older)
    return out


def _remove_stale_builds(out: Path) -> None:
    """Staging folders of builds into `out` whose process is gone (killed mid-build)."""
    for leftover in out.parent.glob(f".{out.name}.*"):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)", leftover.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def _is_complete(out: Path, params: dict, *, replace_older: bool = False) -> bool:
    """True: `out` holds this very set; False: absent, empty or (`replace_older`) of another FORMAT; else BadInput."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        found = json.loads((out / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        found = None
    if not isinstance(found, dict):
        raise BadInput(f"{out} exists and is not a demo data set; pick another folder or delete it")
    if found == params:
        return True
    if replace_older and found.get("format") != params["format"]:
        return False
    raise BadInput(f"{out} holds a demo data set made with {found}, not {params}; pick another folder or delete it")


def _plan(clips: int, seed: int, seconds: float) -> list[_Clip]:
    """Names, splits, labels and artefact strengths, all drawn from `seed`, in a shuffled order."""
    rng = np.random.default_rng(seed)
    names = [rng.bytes(16).hex() + ".mp4" for _ in range(clips)]
    n_val, n_test = (round(clips * share) for _, share in SPLIT_SHARES[1:])
    sizes = {"train": clips - n_val - n_test, "val": n_val, "test": n_test}
    rows = []
    for split, n in sizes.items():
        fakes = n // 2
        unseen = max(1, round(fakes * UNSEEN_SHARE)) if split == "test" else 0
        start = int(rng.integers(len(SEEN)))  # small splits get other methods than the first few
        methods = [SEEN[(start + i) % len(SEEN)] for i in range(fakes - unseen)] + [UNSEEN] * unseen
        methods += ["real"] * (n - fakes)
        for method in rng.permutation(methods):
            kind = METHODS[method][0] if method != "real" else "real"
            audio = float(rng.choice(STRENGTHS)) if kind in ("audio", "both") else 0.0
            video = float(rng.choice(STRENGTHS)) if kind in ("video", "both") else 0.0
            rows.append((split, int(kind != "real"), audio, video, str(method)))
    order = rng.permutation(clips)
    return [_Clip(names[i], *rows[j], seed=seed, index=i, seconds=seconds) for i, j in enumerate(order)]


def _build(folder: Path, plan: list[_Clip], params: dict) -> None:
    for sub in [f"{split}set" for split, _ in SPLIT_SHARES] + [".answers"]:
        (folder / sub).mkdir(parents=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with worker_pool(min(cpus, 8)) as pool:
        list(pool.map(_write_clip, plan, [folder] * len(plan), chunksize=4))
    _write_labels(folder, plan)
    write_text(folder / MARKER, json.dumps(params, indent=2) + "\n")  # last: it marks a complete set


def _write_labels(folder: Path, plan: list[_Clip]) -> None:
    def write(path: str, header: str, splits: tuple[str, ...], row: Callable[[_Clip], str]) -> None:
        write_text(folder / path, "\n".join([header, *(row(c) for c in plan if c.split in splits)]) + "\n")

    for split, path in (("train", "train_label.txt"), ("val", "val_label.txt"), ("test", ".answers/test_label.txt")):
        write(path, "video_name,target", (split,), lambda c: f"{c.name},{c.target}")
    write("test_template.csv", "video_name,score", ("test",), lambda c: f"{c.name},0.5")
    write(".answers/clips.csv", "video_name,split,target,audio_artefact,video_artefact,method",  # strengths, 0 = genuine
          ("train", "val", "test"), lambda c: f"{c.name},{c.split},{c.target},{c.audio_fake},{c.video_fake},{c.method}")
    # The methods of train and val beside their labels; the test's with its hidden answers.
    for path, splits in ((METHODS_FILE, ("train", "val")), (f".answers/{METHODS_FILE}", ("test",))):
        write(path, "video_name,method,modality", splits,
              lambda c: f"{c.name},{c.method},{METHODS[c.method][0] if c.target else ''}")


def _write_clip(clip: _Clip, folder: Path) -> None:
    n = round(clip.seconds * SAMPLE_RATE)
    syllables = _syllables(_rng(clip, "speech"), clip.seconds)
    spec = _voice_stft(_rng(clip, "voice"), syllables, n)
    buzz = None
    if clip.audio_fake:
        spec, buzz = _audio_artefacts(_rng(clip, "audio fake"), spec, clip.audio_fake, METHODS[clip.method][1])
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
        video = _face_swap(_rng(clip, "video fake"), video, face, syllables, times, clip.video_fake, METHODS[clip.method][2])
    video = _camera(_rng(clip, "camera"), video)
    _encode(folder / f"{clip.split}set" / clip.name, video, audio)  # fsynced by `atomic_dir` before the swap


def _encode(path: Path, video: np.ndarray, audio: np.ndarray) -> None:
    """Write H.264 + AAC mp4, single-threaded, so the bytes depend on the content alone."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"  # FFmpeg builds without GPL parts
    with av.open(str(path), "w", format="mp4") as container:
        options = {"threads": "1"}
        if codec == "libx264":
            # No macroblock-tree rate control: with it, this x264 gave other bytes for the same frames now and then.
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
