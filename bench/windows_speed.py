"""What windows and codec variants cost, in one run each (issue 13):

  prepare   the same clips (copies of the 10 shared real clips) prepared into a new cache as
            whole-clip images (today), as whole log-mels for windows, and with K = 2 codec variants,
            alternating in one warm worker pool for --rounds rounds; each round's ratio to the
            whole-clip build and the median.
  train     samples/s of the engine on whole-clip images (H x W) against windows of W frames (the
            same input size; a window drawn per clip per step from the packed memmap), one epoch each
            after a warm-up epoch, alternating for --rounds rounds.

    python bench/windows_speed.py [--copies 20] [--rounds 3] [--workers 2] [--train-clips 256]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness.config import AudioFeatures, TrainConfig  # noqa: E402
from harness.data.cache import make_pool, prepare_features, stop_pool  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402
from prepare_speed import copied_real_dataset  # noqa: E402


def prepare_costs(work: Path, copies: int, rounds: int, workers: int) -> None:
    data = copied_real_dataset(work / "real", copies)
    ds = load_dataset(data)
    settings = {"whole": AudioFeatures(), "windows": AudioFeatures(window_seconds=3.0),
                "variants K=2": AudioFeatures(codec_variants=2)}
    pool = make_pool(workers)
    try:
        prepare_features(ds, AudioFeatures(), cache_root=work / "warm", workers=workers, pool=pool, splits=("train",))  # warm-up
        seconds: dict[str, list[float]] = {k: [] for k in settings}
        for r in range(rounds):
            for name, cfg in settings.items():
                cache = work / f"c-{r}-{name.split()[0]}"
                start = time.perf_counter()
                prepare_features(ds, cfg, cache_root=cache, workers=workers, pool=pool, splits=("train",))
                seconds[name].append(time.perf_counter() - start)
                shutil.rmtree(cache)
    finally:
        stop_pool(pool)
    clips = len(ds.split("train"))
    print(f"prepare, {clips} clips, {workers} workers, {rounds} rounds (seconds per build; ratio to whole-clip):")
    for name, values in seconds.items():
        ratios = [v / w for v, w in zip(values, seconds["whole"])]
        print(f"  {name:13s} {' '.join(f'{v:6.2f}' for v in values)}   ratio per round "
              f"{' '.join(f'{x:.2f}' for x in ratios)}  median {statistics.median(ratios):.2f}")


def train_speed(work: Path, clips: int, rounds: int) -> None:
    import torch

    from harness.data.dataset import SplitArrays
    from harness.engine import fit
    from harness.models import create_model

    rng = np.random.default_rng(0)
    height, width = 128, 256
    labels = (np.arange(clips) % 2).astype(np.int64)
    names = [f"c{i}" for i in range(clips)]
    whole = SplitArrays(inputs={"audio": rng.integers(0, 255, (clips, height, width), dtype=np.uint8)}, labels=labels,
                        names=names)
    lengths = rng.integers(300, 1200, clips)  # 3-12 s at a 10 ms hop, as the real clips
    packed = rng.integers(0, 255, (int(lengths.sum()), height), dtype=np.uint8)
    spans = np.stack([np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths], axis=1)
    windows = SplitArrays(inputs={"audio": packed}, labels=labels, names=names, spans=spans, window=width,
                          eval_windows=1)
    val = SplitArrays(inputs={"audio": whole.inputs["audio"][:8]}, labels=labels[:8], names=names[:8])
    cfg = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=2, batch_size=32, device="cpu",
                      patience=0)
    stats = {"audio": ((0.5,), (0.25,))}
    rates: dict[str, list[float]] = {"whole": [], "windows": []}
    for _ in range(rounds):
        for name, data in (("whole", whole), ("windows", windows)):
            model = create_model(cfg.backbone, pretrained=False, in_chans=1, num_classes=1)
            result = fit(cfg, model, train=data, val=val, stats=stats, out_dir=work / "train")
            rates[name].append(result.history[-1].metrics["samples_per_s"])  # the second epoch: warm
    ratios = [w / x for w, x in zip(rates["windows"], rates["whole"])]
    print(f"train, {clips} clips of {height}x{width}, torch {torch.__version__} on {torch.get_num_threads()} threads:")
    for name, values in rates.items():
        print(f"  {name:8s} samples/s {' '.join(f'{v:7.1f}' for v in values)}")
    print(f"  windows / whole per round {' '.join(f'{x:.3f}' for x in ratios)}  median {statistics.median(ratios):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=20, help="copies of the 10 real clips (default 20: 200 clips)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-clips", type=int, default=256)
    ap.add_argument("--only", choices=("prepare", "train"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="windows-bench-") as tmp:
        if args.only != "train":
            prepare_costs(Path(tmp), args.copies, args.rounds, args.workers)
        if args.only != "prepare":
            train_speed(Path(tmp), args.train_clips, args.rounds)


if __name__ == "__main__":
    main()
