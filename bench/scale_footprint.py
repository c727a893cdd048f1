"""Bytes per clip per modality, measured on the real clips, and what 100k and 1M clips would take.

  prepare   `harness.data.cache.prepare_features` on the 10 shared real clips copied --copies times,
            audio (log-mels) and faces (8 crops of 112x112), in a warm pool of ONE worker: seconds
            per clip of one core, dataset check and packing included;
  bytes     the packed array per clip (what training reads: a memmap), and the whole cache folder per
            clip (the shards keep a second copy: they are the durable record, the array is derived);
  JPEG      every cached face crop encoded with torchvision.io.encode_jpeg at --quality (and 75/95 for
            comparison): bytes per clip, mean absolute error in grey levels against the raw crop, and
            torchvision.io.decode_jpeg clips/s on this CPU (batched, one call per batch of --batch
            clips), next to the raw uint8 path (rows copied out of an in-memory array);
  projection  for 100k and 1M clips on a 16-core machine: disk (cache folder) and RAM (the packed
            arrays, to keep a split in the page cache; JPEG crops instead of raw), and prepare time
            = clips x seconds per clip / 16 (prepare's workers share nothing, so this assumes it scales
            with cores; decoding may be limited by the disk long before on network storage).

    python bench/scale_footprint.py [--copies 10] [--quality 90] [--batch 32]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prepare_speed import copied_real_dataset  # noqa: E402

from harness.config import AudioFeatures, VideoFeatures  # noqa: E402
from harness.data.cache import feature_dir, make_pool, prepare_features  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402

CORES = 16
SIZES = (100_000, 1_000_000)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare_cost(data: Path, warmup: Path, cfg: AudioFeatures | VideoFeatures, cache: Path) -> tuple[float, Path]:
    """Seconds per clip of one worker (warm), and the feature folder."""
    with make_pool(1) as pool:
        prepare_features(load_dataset(warmup), cfg, cache_root=cache / "warm", pool=pool, workers=1)  # imports, detector load
        start = time.perf_counter()
        report = prepare_features(load_dataset(data), cfg, cache_root=cache, pool=pool, workers=1)
        seconds = time.perf_counter() - start
    assert report.done and not report.failures, report.failures
    return seconds / report.done, feature_dir(load_dataset(data), cfg, cache)


def jpeg_figures(crops: np.ndarray, quality: int, batch: int) -> tuple[float, float, float]:
    """(bytes per clip, mean abs error in grey levels, decode clips/s) for (N, K, S, S, 3) crops."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    frames = torch.from_numpy(np.ascontiguousarray(crops.reshape(-1, *crops.shape[2:]))).permute(0, 3, 1, 2).contiguous()
    encoded = encode_jpeg(list(frames), quality=quality)
    per_clip = sum(len(e) for e in encoded) / len(crops)
    decoded = torch.stack(decode_jpeg(encoded))
    error = float((decoded.float() - frames.float()).abs().mean())
    k = crops.shape[1]
    step = batch * k
    decode_jpeg(encoded[:step])  # warm-up
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0:  # at least 2 s of decoding, whole batches
        for first in range(0, len(encoded), step):
            decode_jpeg(encoded[first : first + step])
            done += len(encoded[first : first + step])
    return per_clip, error, done / k / (time.perf_counter() - start)


def raw_rate(crops: np.ndarray, batch: int) -> float:
    """Clips/s of the raw path: a batch's rows copied out of an in-memory array (what `take` does)."""
    rng = np.random.default_rng(0)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        np.ascontiguousarray(crops[rng.integers(0, len(crops), batch)])
        done += batch
    return done / (time.perf_counter() - start)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10, help="copies of the 10 real clips (default 10: 100 clips)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored crops")
    ap.add_argument("--batch", type=int, default=32, help="clips per decode call")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-footprint-") as tmp_name:
        tmp = Path(tmp_name)
        data = copied_real_dataset(tmp / "real", args.copies)
        warmup = copied_real_dataset(tmp / "warm", 1)
        audio_s, audio_dir = prepare_cost(data, warmup, AudioFeatures(), tmp / "cache")
        video_s, video_dir = prepare_cost(data, warmup, VideoFeatures(), tmp / "cache")
        clips = len(load_dataset(data).split("train"))
        audio = np.load(audio_dir / "train.npy", mmap_mode="r")
        crops = np.array(np.load(video_dir / "train.npy", mmap_mode="r"))
        audio_row, video_row = audio[0].nbytes, crops[0].nbytes
        audio_folder, video_folder = folder_bytes(audio_dir) / clips, folder_bytes(video_dir) / clips
        jpeg = {q: jpeg_figures(crops, q, args.batch) for q in sorted({75, args.quality, 95})}
        raw = raw_rate(crops, args.batch)
        shutil.rmtree(tmp / "cache", ignore_errors=True)

    print(f"measured on {clips} real clips (10 shared clips x {args.copies}); one prepare worker, warm")
    print(f"audio log-mel {audio.shape[1]}x{audio.shape[2]}: {human(audio_row)} a clip in the array, "
          f"{human(audio_folder)} of cache folder; prepare {audio_s * 1000:.1f} ms a clip")
    print(f"faces {crops.shape[1]}x{crops.shape[2]}x{crops.shape[3]}x3: {human(video_row)} a clip raw in the array, "
          f"{human(video_folder)} of cache folder; prepare {video_s * 1000:.1f} ms a clip")
    for q, (size, error, rate) in jpeg.items():
        print(f"faces as JPEG q{q}: {human(size)} a clip = {size / video_row:.3f}x raw ({video_row / size:.1f}x smaller), "
              f"mean abs error {error:.2f} grey levels; decode_jpeg (CPU, {args.batch} clips a call) {rate:.0f} clips/s; "
              f"raw rows {raw:.0f} clips/s ({raw / rate:.0f}x)")
    jpeg_size = jpeg[args.quality][0]
    print(f"projection on a {CORES}-core machine (prepare time = clips x per-clip cost / {CORES}):")
    for n in SIZES:
        disk = n * (audio_folder + video_folder)
        disk_jpeg = n * (audio_folder + video_folder * jpeg_size / video_row)
        print(f"  {n:>9,} clips: disk {human(disk)} (faces as JPEG q{args.quality}: {human(disk_jpeg)}); "
              f"RAM to hold the packed arrays: audio {human(n * audio_row)}, faces raw {human(n * video_row)}, "
              f"faces JPEG {human(n * jpeg_size)}; prepare audio {duration(n * audio_s / CORES)}, "
              f"faces {duration(n * video_s / CORES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
