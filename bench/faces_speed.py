"""How fast face crops are made, and how often a face is found, by each detector, on real and demo clips.

  decode   PyAV: sample `frames` frames evenly from each clip (decode in order, stop after the last);
  detect   each detector (+ square crop and resize, landmarks mapped into the crop) on the same
           decoded frames, one core, the detectors alternating --rounds times (median ms/frame);
           frames found by YuNet itself (with landmarks), by the Haar chain, or left to the centre
           square. Sets: the 10 shared real clips and the first --demo-clips clips of the demo
           data set (`harness demo-data`; --demo DIR, made there when missing);
  prepare  `prepare_features` with the default face settings over the real clips copied --copies
           times, in a warm 2-process pool, from the dataset check to the packed split (--copies 0: skipped).

    python bench/faces_speed.py [--demo /tmp/demo-yunet] [--demo-clips 60] [--rounds 3] [--copies 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prepare_speed import SHARED, copied_real_dataset  # noqa: E402

from harness.config import VideoFeatures, replace  # noqa: E402
from harness.data.cache import init_worker, make_pool, prepare_features  # noqa: E402
from harness.data.faces import crop_faces, detector  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402
from harness.data.media import sample_frames  # noqa: E402

DETECTORS = ("haar", "yunet")


def detector_table(sets: dict[str, list[list[np.ndarray]]], cfg: VideoFeatures, rounds: int) -> None:
    """Per set and detector: frames found by YuNet / by Haar / centre square, and median ms a frame."""
    configs = {name: replace(cfg, detector=name) for name in DETECTORS}
    for c in configs.values():
        detector(c).largest_face(next(iter(sets.values()))[0][0])  # warm-up: loads the model or cascades
    print(f"{'set':<6} {'detector':<8} {'frames':>6} {'YuNet':>6} {'Haar':>6} {'centre':>6} {'ms/frame':>9}")
    for set_name, clips in sets.items():
        n = sum(len(f) for f in clips)
        times: dict[str, list[float]] = {name: [] for name in DETECTORS}
        counts: dict[str, tuple[int, int, int]] = {}
        for _ in range(rounds):
            for name, c in configs.items():
                start = time.perf_counter()
                results = [crop_faces(frames, c) for frames in clips]
                times[name].append(1000 * (time.perf_counter() - start) / n)
                centre = sum(r.fallback for r in results)
                # a short clip's crops repeat its last frame: count the frames it has
                yunet = sum(int(np.isfinite(r.confidence[: len(f)]).sum()) for r, f in zip(results, clips))
                counts[name] = (yunet, n - centre - yunet, centre)
        for name in DETECTORS:
            yunet, haar, centre = counts[name]
            print(f"{set_name:<6} {name:<8} {n:>6} {yunet:>6} {haar:>6} {centre:>6} {statistics.median(times[name]):>9.1f}")
        print(f"{set_name:<6} yunet/haar time, per round: "
              + ", ".join(f"{y / h:.2f}" for y, h in zip(times["yunet"], times["haar"])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path(tempfile.gettempdir()) / "demo-yunet")
    ap.add_argument("--demo-clips", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=VideoFeatures().frames)
    args = ap.parse_args()
    cfg = VideoFeatures(frames=args.frames)
    init_worker()  # one thread, as in the workers: per-core figures
    clips = sorted((SHARED / "data" / "ffdv-phase1-sample").glob("*set/*.mp4"))

    sample_frames(clips[0], cfg.frames)  # warm-up: imports
    start = time.perf_counter()
    real = [sample_frames(c, cfg.frames) for c in clips]
    decode_s = time.perf_counter() - start
    n = sum(len(f) for f in real)
    print(f"frames/clip={cfg.frames} size={cfg.size} detect_width={cfg.detect_width} one core, "
          f"{os.cpu_count()} cores on the machine")
    print(f"  decode {n / decode_s:.1f} frames/s ({1000 * decode_s / len(clips):.1f} ms/clip) on the real clips")
    sets = {"real": real}
    if args.demo_clips:
        from harness.data.demo import make_demo_dataset

        demo = make_demo_dataset(args.demo)
        demo_clips = sorted(demo.glob("*set/*.mp4"))[: args.demo_clips]
        sets["demo"] = [sample_frames(c, cfg.frames) for c in demo_clips]
    detector_table(sets, cfg, args.rounds)

    if args.copies:
        with tempfile.TemporaryDirectory() as tmp, make_pool(args.workers) as pool:
            data = copied_real_dataset(Path(tmp) / "real", args.copies)
            warm = load_dataset(copied_real_dataset(Path(tmp) / "warm", 1))
            prepare_features(warm, cfg, cache_root=Path(tmp) / "warm-cache", pool=pool)
            start = time.perf_counter()
            report = prepare_features(load_dataset(data), cfg, cache_root=Path(tmp) / "cache", pool=pool)
            seconds = time.perf_counter() - start
            print(f"  prepare --modality video (detector {cfg.detector}): {report.done} clips in {seconds:.1f} s = "
                  f"{report.done / seconds:.1f} clips/s ({report.done * cfg.frames / seconds:.0f} frames/s) with "
                  f"{args.workers} workers on {os.cpu_count()} cores; "
                  f"fallback frames {report.fallback_frames} of {report.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
