"""Does training keep up with the model when the split streams from disk? Loop samples/s on a generated
memmapped split of >= 200k rows against model-only samples/s, with and without the prefetching reader.

  split       --rows uint8 rows of --height x --width (the audio cache's log-mel shape by default: 200k rows
              = 6.6 GB) written as a .npy memmap, then dropped from the page cache (posix_fadvise DONTNEED
              on that file alone), as a split larger than RAM would never be there;
  reader      the batches alone, read cold (no model): row by row as numpy's indexing reads them, and
              with the engine's reader (a thread a batch ahead, the kernel asked for the rows of the
              next `engine.READAHEAD` batches: posix_fadvise WILLNEED);
  model-only  forward + backward + optimizer step on one pre-loaded, normalised batch;
  loop        the engine's own epoch (`harness.engine._train_one_epoch`: batching, transfer,
              normalisation, the step) over --steps batches of rows drawn at random over the file:
                RAM       those rows copied into memory first;
                cold      from the memmap, dropped from the page cache just before, each batch read
                          when the model asks for it (no thread, no read-ahead);
                reader    the same with the engine's reader.
Model and optimizer are built once; the four measurements alternate --rounds times, each on fresh rows,
because other work on a shared machine moves single figures by 2x and more. Augmentation is off, so
loop and model-only differ by the data path alone. Each rate is given per wall second and per CPU
second of this process (all its threads): the CPU figure is steady under other load and shows what the
loop's own code costs, the wall figure shows stalls on the disk. Prints each round and the medians of
`loop/model-only` (goal >= 0.9 for the streamed loop with the reader).

    python bench/scale_stream.py [--rows 200000] [--steps 10] [--batch-size 32] [--rounds 5] [--dir /tmp]
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

from harness import engine  # noqa: E402
from harness.config import Augment, TrainConfig  # noqa: E402
from harness.data.dataset import SplitArrays, batches, prefetched  # noqa: E402

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


def make_loop(cfg: TrainConfig, shape: tuple[int, int]) -> engine._Loop:
    """What `engine.fit` sets up for one process, once."""
    import timm

    engine.seed_everything(0)
    device = engine.pick_device(cfg.device)
    model = timm.create_model(cfg.backbone, pretrained=False, in_chans=1, num_classes=1).to(device)
    optimizer = engine.make_optimizer(cfg, model)
    from harness.distributed import World

    return engine._Loop(cfg=cfg, model=model, module=model, world=World(), inputs=engine.Inputs({"audio": ([0.5], [0.25])}).to(device),
                        optimizer=optimizer, scheduler=engine.warmup_cosine(optimizer, 0, 10**9),
                        precision=engine.pick_precision(device), device=device, rng=np.random.default_rng(0),
                        aug_gen=torch.Generator(device=device).manual_seed(0), resident=None)


Rate = tuple[float, float]  # samples per wall second, per CPU second of this process


def epoch_rate(loop: engine._Loop, split: SplitArrays, *, reader: bool) -> Rate:
    original = engine.prefetched, engine.READAHEAD
    if not reader:  # each batch read when the model asks for it
        engine.prefetched, engine.READAHEAD = (lambda source, depth=2: source), 0
    try:
        start, cpu = time.perf_counter(), time.process_time()
        _, seen = engine._train_one_epoch(loop, split, 1)
        return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu)
    finally:
        engine.prefetched, engine.READAHEAD = original


def model_only_rate(loop: engine._Loop, batch: dict[str, torch.Tensor], y: torch.Tensor, steps: int) -> Rate:
    x = loop.inputs(batch, loop.device)["audio"]
    model, cfg = loop.model, loop.cfg
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = engine.loss_fn(cfg, model(x), y)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
    float(loss.detach())  # waits for the device
    return steps * len(y) / (time.perf_counter() - start), steps * len(y) / (time.process_time() - cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="batches per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backbone", default="test_byobnet.r160_in1k", help="a small model: the CPU here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=None, help="where the split is written (default: a temporary folder)")
    args = ap.parse_args()
    shape = (args.height, args.width)
    cfg = TrainConfig(backbone=args.backbone, pretrained=False, device=args.device, batch_size=args.batch_size,
                      augment=NO_AUGMENT, grad_clip=0.0)
    n = args.steps * args.batch_size  # whole batches: none short, none dropped
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="scale-stream-") as tmp_name:
        path = Path(tmp_name) / "train.npy"
        seconds = write_split(path, args.rows, shape)
        size = path.stat().st_size
        print(f"split: {args.rows} rows of {shape[0]}x{shape[1]} uint8 = {size / 1e9:.2f} GB, written in {seconds:.1f} s; "
              f"{n} rows a measurement, drawn over the whole file")
        memmap = np.load(path, mmap_mode="r")
        labels = (np.arange(n) % 2).astype(np.int64)
        names = [f"r{i}" for i in range(n)]

        def streamed() -> SplitArrays:
            return SplitArrays(inputs={"audio": memmap}, labels=labels, names=names,
                               rows=rng.choice(args.rows, size=n, replace=False))

        for name, read in (("row by row", lambda s: batches(s, args.batch_size, shuffle=True, generator=rng)),
                           ("engine's reader", lambda s: prefetched(batches(s, args.batch_size, shuffle=True, generator=rng,
                                                                             readahead=engine.READAHEAD)))):
            evict(path)
            start = time.perf_counter()
            seen = sum(len(y) for _, y in read(streamed()))
            rate = seen / (time.perf_counter() - start)
            print(f"reader alone, cold, {name}: {rate:.0f} samples/s ({rate * shape[0] * shape[1] / 1e6:.0f} MB/s)")

        loop = make_loop(cfg, shape)
        warm = streamed()
        batch, y = next(iter(batches(warm, args.batch_size, shuffle=False)))
        model_only_rate(loop, batch, y, 2)  # warm-up: allocator, first-call set-up
        print(f"device={args.device} backbone={args.backbone} batch={args.batch_size} input=1x{shape[0]}x{shape[1]} "
              f"torch threads={torch.get_num_threads()} steps={args.steps}", flush=True)
        names_ = ("RAM", "cold, no reader", "cold, engine's reader")
        ratios: dict[str, list[Rate]] = {k: [] for k in names_}
        for r in range(1, args.rounds + 1):
            model_only = model_only_rate(loop, batch, y, args.steps)
            ram_split = streamed()
            in_ram = SplitArrays(inputs={"audio": np.ascontiguousarray(memmap[ram_split.rows])}, labels=labels, names=names)
            rates = {"RAM": epoch_rate(loop, in_ram, reader=True)}
            evict(path)
            rates["cold, no reader"] = epoch_rate(loop, streamed(), reader=False)
            evict(path)
            rates["cold, engine's reader"] = epoch_rate(loop, streamed(), reader=True)
            line = "   ".join(f"{k} {v[0]:.1f} ({v[0] / model_only[0]:.2f}x, cpu {v[1] / model_only[1]:.2f}x)"
                               for k, v in rates.items())
            print(f"round {r}: model-only {model_only[0]:.1f} samples/s ({model_only[1]:.1f} per CPU-s)   loop: {line}",
                  flush=True)
            for k, v in rates.items():
                ratios[k].append((v[0] / model_only[0], v[1] / model_only[1]))
    for k in names_:
        wall, cpu = np.median([w for w, _ in ratios[k]]), np.median([c for _, c in ratios[k]])
        print(f"median loop/model-only, {k}: {wall:.2f}x per wall second, {cpu:.2f}x per CPU second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
