"""How fast `harness prepare` extracts audio features, against the tutorial and against decoding alone.

Three measurements on the same clips, in one run:
  seed     ../shared/bench/seed_mel.py's pipeline (moviepy -> WAV -> librosa), one clip after another,
           as the tutorial runs it, after one warm-up clip (import time excluded);
  raw      PyAV open + decode of every audio frame, nothing kept (FFmpeg's own cost);
  decode   PyAV decode + mono + resample only (the floor for any feature pipeline using that decoder),
           in the same warm worker pool that prepare uses, with prepare's task sizes;
  prepare  the full cache build (dataset check, decode, checks, log-mel, atomic write, pack) in that
           warm pool, into a new cache each time.
decode-only and prepare alternate --rounds times (machine noise here moves one 2 s figure by up to
10%); every round's ratio is printed, and the median.
With --against REF, only this tree's prepare and the prepare of `harness/data/cache.py` at git
revision REF are timed, alternating in one warm pool: a build into a new cache, then a second run
over it (everything reused: what `train` pays before each run), with each round's ratio (this tree /
REF) of wall time and of CPU time (this process and the workers: steady on a busy machine, but blind
to waiting on the disk, which is what fsync costs). That is how the cost of verifying the cache
(CRC-32s, manifest, lock, fsyncs) was measured.
Sets: the 10 shared real clips copied under new names (--copies times) and a generated demo set.
With --seed-settings the features use the tutorial's settings, and the images are compared with the
seed's: mean absolute difference in grey levels.

    python bench/prepare_speed.py [--copies 40] [--demo-clips 300] [--workers 2] [--rounds 5] [--against REF]
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from harness.config import SEED_AUDIO, AudioFeatures  # noqa: E402
from harness.data.cache import make_pool, plan_tasks, prepare_features  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402


def copied_real_dataset(dst: Path, copies: int) -> Path:
    """The shared real clips under new names, `copies` times over, as a one-split dataset."""
    src = SHARED / "data" / "ffdv-phase1-sample"
    clips = sorted(src.glob("*set/*.mp4"))
    (dst / "trainset").mkdir(parents=True)
    lines = ["video_name,target"]
    for k in range(copies):
        for c in clips:
            name = f"c{k:03d}_{c.name}"
            shutil.copyfile(c, dst / "trainset" / name)
            lines.append(f"{name},{k % 2}")
    (dst / "train_label.txt").write_text("\n".join(lines) + "\n")
    return dst


def seed_rate(clips: list[Path]) -> float:
    sys.path.insert(0, str(SHARED / "bench"))
    from seed_mel import seed_mel_image

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "a.wav")
        seed_mel_image(str(clips[0]), wav)  # warm-up: imports and first-call set-up
        start = time.perf_counter()
        for c in clips:
            seed_mel_image(str(c), wav)
        return len(clips) / (time.perf_counter() - start)


def _decode_chunk(paths: list[str], sample_rate: int) -> int:
    from harness.data.media import decode_audio

    for p in paths:
        decode_audio(p, sample_rate)
    return len(paths)


def _raw_decode_chunk(paths: list[str], sample_rate: int) -> int:
    """FFmpeg's decoder alone: open, demux, decode every audio frame, keep nothing."""
    import av

    for p in paths:
        with av.open(p) as container:
            for _ in container.decode(container.streams.audio[0]):
                pass
    return len(paths)


def warm(pool, clip: Path, workers: int, cfg: AudioFeatures) -> None:  # noqa: ANN001
    """Start every worker and pay its imports before timing anything."""
    from harness.data.features import audio_features

    futures = [pool.submit(audio_features, str(clip), cfg) for _ in range(workers * 2)]
    wait(futures)


def decode_rate(pool, clips: list[Path], sample_rate: int, workers: int, job=_decode_chunk) -> float:  # noqa: ANN001
    """Clips/s of `job` over the clips, in tasks sized as prepare sizes them."""
    tasks = plan_tasks([("", (str(c), "")) for c in clips], workers)
    start = time.perf_counter()
    futures = [pool.submit(job, [clip for clip, _ in chunk], sample_rate) for _, chunk in tasks]
    wait(futures)
    for f in futures:
        f.result()
    return len(clips) / (time.perf_counter() - start)


def prepare_rate(pool, data: Path, cfg: AudioFeatures, cache: Path) -> float:  # noqa: ANN001
    """Clips/s of the whole cache build, from the dataset check to the packed splits."""
    start = time.perf_counter()
    report = prepare_features(load_dataset(data), cfg, cache_root=cache, pool=pool)
    seconds = time.perf_counter() - start
    assert not report.failures, report.failures
    return report.done / seconds


def baseline_prepare(ref: str, folder: Path):  # noqa: ANN201 - the baseline's prepare_features
    """`prepare_features` from harness/data/cache.py at git revision `ref`, importable by spawned workers
    (the module is written to `folder`, which goes on sys.path before the pool starts)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:harness/data/cache.py"], capture_output=True,
                            text=True, check=True).stdout
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "baseline_cache.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("baseline_cache").prepare_features


def cpu_seconds(pool) -> float:  # noqa: ANN001
    """CPU time (user + system) of this process and the pool's workers so far, from /proc: unlike wall
    time, barely moved by other work on the machine (but blind to time spent waiting on the disk)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2])
    for pid in list(pool._processes):  # a bench may look inside
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def timed(prepare, data: Path, cfg: AudioFeatures, cache: Path, pool) -> tuple[float, float, int]:  # noqa: ANN001
    """Wall and CPU seconds of one prepare, and the clips it computed."""
    cpu, start = cpu_seconds(pool), time.perf_counter()
    report = prepare(load_dataset(data), cfg, cache_root=cache, pool=pool)
    return time.perf_counter() - start, cpu_seconds(pool) - cpu, report.done


def compare(pool, sets: dict[str, Path], cfg: AudioFeatures, against, ref: str, rounds: int, tmp: Path) -> None:  # noqa: ANN001
    """This tree's prepare against `against` (REF's), alternating; time ratios this/REF per round."""
    for label, data in sets.items():
        wall: dict[str, list[float]] = {"build": [], "build REF": [], "reuse": [], "reuse REF": []}
        cpu: dict[str, list[float]] = {key: [] for key in wall}
        for r in range(rounds):
            order = [("", prepare_features), (" REF", against)]
            for suffix, prepare in order if r % 2 == 0 else order[::-1]:  # neither always goes first
                cache = tmp / f"cmp-{label[:4]}-{r}{suffix.strip()}"
                for kind in ("build", "reuse"):  # a new cache, then the same one again
                    seconds, busy, done = timed(prepare, data, cfg, cache, pool)
                    assert (done > 0) == (kind == "build")
                    wall[f"{kind}{suffix}"].append(seconds)
                    cpu[f"{kind}{suffix}"].append(busy)
        for kind in ("build", "reuse"):
            for name, times in (("wall", wall), ("cpu", cpu)):
                ratios = [a / b for a, b in zip(times[kind], times[f"{kind} REF"])]
                print(f"{label:>10} {kind} {name}: this tree {1000 * np.median(times[kind]):.0f} ms, {ref} "
                      f"{1000 * np.median(times[f'{kind} REF']):.0f} ms (medians of {rounds}); ratio this/{ref} "
                      f"median {np.median(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})")


def seed_difference() -> list[float]:
    """Mean absolute difference between the seed's images and ours with the seed's settings."""
    sys.path.insert(0, str(SHARED / "bench"))
    from seed_mel import seed_mel_image

    from harness.data.features import audio_features

    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in sorted((SHARED / "data" / "ffdv-phase1-sample").glob("*set/*.mp4")):
            ref = seed_mel_image(str(c), os.path.join(tmp, "a.wav")).astype(np.float32)
            diffs.append(float(np.abs(ref - audio_features(c, SEED_AUDIO)).mean()))
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=40, help="copies of the 10 real clips (default 40: 400 clips, about 2 s a measurement)")
    ap.add_argument("--demo-clips", type=int, default=300, help="generated demo clips (0 to skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="decode-only/prepare pairs, alternating (default 5)")
    ap.add_argument("--seed-settings", action="store_true", help="use the tutorial's feature settings for prepare")
    ap.add_argument("--against", metavar="REF", help="compare prepare with harness/data/cache.py at git revision REF only")
    args = ap.parse_args()
    cfg = SEED_AUDIO if args.seed_settings else AudioFeatures()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {f"real x{args.copies}": copied_real_dataset(tmp / "real", args.copies)}
        if args.demo_clips:
            from harness.data.demo import make_demo_dataset

            sets[f"demo {args.demo_clips}"] = make_demo_dataset(tmp / "demo", clips=args.demo_clips, seed=1)
        print(f"features: {cfg.key()} ({'seed settings' if args.seed_settings else 'defaults'}), workers={args.workers}, cores={os.cpu_count()}")
        if args.against:
            against = baseline_prepare(args.against, tmp / "baseline")
            with make_pool(args.workers) as pool:
                for data in sets.values():
                    warm(pool, sorted(data.glob("*set/*.mp4"))[0], args.workers, cfg)
                compare(pool, sets, cfg, against, args.against, args.rounds, tmp)
            return 0
        with make_pool(args.workers) as pool:
            for label, data in sets.items():
                clips = sorted(data.glob("*set/*.mp4"))
                warm(pool, clips[0], args.workers, cfg)
                seed = seed_rate(clips[:40])  # about 7 s of the seed: a stable steady state
                raw = decode_rate(pool, clips, cfg.sample_rate, args.workers, _raw_decode_chunk)
                decodes, preps = [], []
                for r in range(args.rounds):
                    decodes.append(decode_rate(pool, clips, cfg.sample_rate, args.workers))
                    preps.append(prepare_rate(pool, data, cfg, tmp / f"cache-{label[:4]}-{r}"))
                ratios = [d / p for d, p in zip(decodes, preps)]
                decode, prep = float(np.median(decodes)), float(np.median(preps))
                print(
                    f"{label:>10}: clips={len(clips)} seed={seed:.2f}/s raw-decode={raw:.1f}/s decode-only={decode:.1f}/s prepare={prep:.1f}/s (medians)  "
                    f"prepare/seed={prep / seed:.1f}x  raw-decode/seed={raw / seed:.1f}x  "
                    f"prepare/decode-only time ratio={np.median(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})  "
                    f"prepare/raw-decode time ratio={raw / prep:.2f}x"
                )
    diffs = seed_difference()
    print(f"seed-settings images vs seed: mean abs diff {np.mean(diffs):.2f} grey levels (per clip: {', '.join(f'{d:.2f}' for d in diffs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
