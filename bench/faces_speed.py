"""How fast face crops are made, and how often a face is found, on the shared real clips.

  decode   PyAV: sample `frames` frames evenly from each clip (decode in order, stop after the last);
  detect   the configured detector (+ square crop and resize) on those frames;
  prepare  `prepare_features` with face settings over the clips copied --copies times, in a warm
           2-process pool, from the dataset check to the packed split.
Also: faces found per sampled frame on the 10 real clips (the rest fall back to a centre crop).

    python bench/faces_speed.py [--copies 10] [--workers 2] [--frames 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prepare_speed import SHARED, copied_real_dataset  # noqa: E402

from harness.config import VideoFeatures  # noqa: E402
from harness.data.cache import init_worker, make_pool, prepare_features  # noqa: E402
from harness.data.faces import crop_faces, detector  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402
from harness.data.media import sample_frames  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=VideoFeatures().frames)
    args = ap.parse_args()
    cfg = VideoFeatures(frames=args.frames)
    init_worker()  # one thread, as in the workers: per-core figures
    clips = sorted((SHARED / "data" / "ffdv-phase1-sample").glob("*set/*.mp4"))

    sample_frames(clips[0], cfg.frames)  # warm-up: imports
    start = time.perf_counter()
    frames = [sample_frames(c, cfg.frames) for c in clips]
    decode_s = time.perf_counter() - start
    n = sum(len(f) for f in frames)
    detector(cfg).largest_face(frames[0][0])  # warm-up: loads the cascades
    start = time.perf_counter()
    results = [crop_faces(f, cfg) for f in frames]
    detect_s = time.perf_counter() - start
    misses = sum(r.fallback for r in results)
    print(f"detector={cfg.detector} frames/clip={cfg.frames} size={cfg.size} one core:")
    print(f"  decode {n / decode_s:.1f} frames/s ({1000 * decode_s / len(clips):.1f} ms/clip), "
          f"detect+crop {n / detect_s:.1f} frames/s ({1000 * detect_s / n:.1f} ms/frame), "
          f"both {n / (decode_s + detect_s):.1f} frames/s")
    print(f"  faces found in {n - misses} of {n} sampled frames ({(n - misses) / n:.1%}) of the 10 real clips; "
          f"per clip misses: {', '.join(str(r.fallback) for r in results)}")

    with tempfile.TemporaryDirectory() as tmp, make_pool(args.workers) as pool:
        data = copied_real_dataset(Path(tmp) / "real", args.copies)
        warm = load_dataset(copied_real_dataset(Path(tmp) / "warm", 1))
        prepare_features(warm, cfg, cache_root=Path(tmp) / "warm-cache", pool=pool)
        start = time.perf_counter()
        report = prepare_features(load_dataset(data), cfg, cache_root=Path(tmp) / "cache", pool=pool)
        seconds = time.perf_counter() - start
        print(f"  prepare --modality video: {report.done} clips in {seconds:.1f} s = {report.done / seconds:.1f} clips/s "
              f"({report.done * cfg.frames / seconds:.0f} frames/s) with {args.workers} workers on {os.cpu_count()} cores; "
              f"fallback frames {report.fallback_frames} of {report.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
