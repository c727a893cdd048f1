"""Does training keep up with the model when the split streams from disk? Loop samples/s on a generated
memmapped split of >= 200k rows against model-only samples/s, with and without the prefetching reader.

  split       --rows uint8 rows of --height x --width (the audio cache's log-mel shape by default: 200k rows
              = 6.6 GB) written as a .npy memmap, then dropped from the page cache (posix_fadvise DONTNEED
              on that file alone), as a split larger than RAM would never be there;
  reader      the batches alone, read cold (no model): what each batch costs the data path;
  model-only  forward + backward + optimizer step on one pre-loaded batch (bench/train_speed.py's);
  RAM         `harness.engine.fit` on the same rows copied into memory;
  cold        `fit` on the memmap, each batch read when the model wants it (the reader replaced by a
              pass-through), the file dropped from the page cache before the measured epoch;
  prefetch    the same with the engine's own reader (`harness.data.dataset.prefetched`).
The measured epoch is the second (the first pays one-off set-up); each epoch reads --steps batches of
rows drawn at random over the whole file. Augmentation is off so that the loop differs from
model-only by the data path alone. Prints every rate and `loop/model-only` per loop (goal >= 0.9).

    python bench/scale_stream.py [--rows 200000] [--steps 60] [--batch-size 64] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness.engine as engine  # noqa: E402
from harness.config import Augment, TrainConfig  # noqa: E402
from harness.data.dataset import SplitArrays, batches  # noqa: E402
from train_speed import build, model_only_rate  # noqa: E402

NO_AUGMENT = Augment(time_mask=0.0, freq_mask=0.0, time_shift=0.0, hflip=False, colour=0.0)


def write_split(path: Path, rows: int, shape: tuple[int, int]) -> float:
    """The memmap, filled from a tiled random block (throughput does not care what the bytes are);
    returns seconds taken. Flushed, synced and dropped from the page cache."""
    start = time.perf_counter()
    block = np.random.default_rng(0).integers(0, 256, (2048, *shape), dtype=np.uint8)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *shape))
    for first in range(0, rows, len(block)):
        n = min(len(block), rows - first)
        array[first : first + n] = block[:n]
    array.flush()
    del array
    evict(path)
    return time.perf_counter() - start


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache (clean pages only: sync first). Only this file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class EvictAfterEpoch:
    """After each epoch's validation: drop the split again, so the measured epoch reads cold."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rates: list[float] = []

    def on_start(self, info: dict) -> None:
        if self.path:
            evict(self.path)

    def on_epoch(self, report) -> None:  # noqa: ANN001
        self.rates.append(report.metrics["samples_per_s"])
        if self.path:
            evict(self.path)

    def on_end(self, result) -> None:  # noqa: ANN001
        pass


def loop_rate(cfg: TrainConfig, train: SplitArrays, val: SplitArrays, evict_path: Path | None, tmp: Path) -> float:
    watch = EvictAfterEpoch(evict_path)
    engine.seed_everything(0)
    engine.fit(cfg, build(cfg.backbone), train=train, val=val, stats={"audio": ([0.5], [0.25])}, out_dir=tmp / "run",
               callbacks=[watch])
    return watch.rates[-1]


def reader_rate(split: SplitArrays, batch_size: int, path: Path) -> float:
    evict(path)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in batches(split, batch_size, shuffle=True, generator=np.random.default_rng(1)))
    return seen / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60, help="batches per measured epoch")
    ap.add_argument("--backbone", default="test_byobnet.r160_in1k", help="a small model: the CPU here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=None, help="where the split is written (default: a temporary folder)")
    args = ap.parse_args()
    shape = (args.height, args.width)
    cfg = TrainConfig(backbone=args.backbone, pretrained=False, device=args.device, batch_size=args.batch_size,
                      epochs=2, patience=0, augment=NO_AUGMENT, warmup_epochs=0.0)
    n = args.steps * args.batch_size
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="scale-stream-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "train.npy"
        seconds = write_split(path, args.rows, shape)
        size = path.stat().st_size
        print(f"split: {args.rows} rows of {shape[0]}x{shape[1]} uint8 = {size / 1e9:.2f} GB, written in {seconds:.1f} s "
              f"({size / 1e6 / seconds:.0f} MB/s); rows per epoch {n} drawn over the whole file")
        memmap = np.load(path, mmap_mode="r")
        rng = np.random.default_rng(0)
        rows = rng.choice(args.rows, size=n, replace=False)
        labels = (np.arange(n) % 2).astype(np.int64)
        names = [f"r{i}" for i in range(n)]
        streamed = SplitArrays(inputs={"audio": memmap}, labels=labels, names=names, rows=rows)
        in_ram = SplitArrays(inputs={"audio": np.ascontiguousarray(memmap[np.sort(rows)])}, labels=labels, names=names)
        val = SplitArrays(inputs={"audio": rng.integers(0, 256, (args.batch_size, *shape), dtype=np.uint8)},
                          labels=(np.arange(args.batch_size) % 2).astype(np.int64), names=[f"v{i}" for i in range(args.batch_size)])

        reader = reader_rate(streamed, args.batch_size, path)
        model_only = model_only_rate(cfg, shape, args.steps)
        ram = loop_rate(cfg, in_ram, val, None, tmp)
        reader_of_engine = engine.prefetched
        engine.prefetched = lambda source, depth=2: source  # each batch read when the model asks for it
        try:
            cold = loop_rate(cfg, streamed, val, path, tmp)
        finally:
            engine.prefetched = reader_of_engine
        prefetch = loop_rate(cfg, streamed, val, path, tmp)

    print(f"device={args.device} backbone={args.backbone} batch={args.batch_size} input=1x{shape[0]}x{shape[1]} "
          f"threads={torch.get_num_threads()} steps/epoch={args.steps}")
    print(f"reader alone, cold: {reader:.0f} samples/s ({reader * shape[0] * shape[1] / 1e6:.0f} MB/s)")
    print(f"model-only: {model_only:.1f} samples/s")
    for name, rate in (("RAM", ram), ("cold, no reader", cold), ("cold, prefetching reader", prefetch)):
        print(f"loop {name}: {rate:.1f} samples/s   loop/model-only = {rate / model_only:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
