"""The scale-out figures a machine with a GPU can give in one command (about 2-4 minutes on one GPU).

  ddp        `harness.engine.fit` as one rank under torch's elastic launcher (`launch_ranks(1, ...)`:
             a process group of one, the model wrapped in DistributedDataParallel) against the same
             fit in a plain process: samples/s of the second epoch, and the ratio (goal: about 1);
  loop       fit's samples/s against model-only samples/s (bench/train_speed.py's), for the split
             resident on the device, and streamed from a memmap on disk through the host with the
             prefetching reader (as a split larger than GPU memory is), and without it;
  jpeg       torchvision.io.decode_jpeg of JPEG face crops (8 frames of 112x112 a clip, quality 90),
             on the GPU (one call per batch of clips) and on the CPU: clips/s, next to the raw uint8
             path (rows copied out of an in-memory array);
  jpeg reader  fit's samples/s on a face-crop split stored as JPEG (`crop_storage = "jpeg"`: the reader
             `harness.data.jpeg_crops.JpegCrops`) against the same split raw (bench/jpeg_crops.py's
             round, one of it): resident on the device (JPEG decoded once by nvjpeg), and batched from
             the host with nvjpeg and with CPU decoding per batch.
Without CUDA the same script runs small CPU versions of the ddp, loop and jpeg reader checks (so the
code paths are exercised) and says which GPU parts it skipped.

    python bench/gpu_check.py            # everything, GPU where there is one
    python bench/gpu_check.py --quick    # smaller sizes (a smoke test)
"""
from __future__ import annotations

import argparse
import json
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

from train_speed import LastRate, build, model_only_rate  # noqa: E402

from harness import engine  # noqa: E402
from harness.config import Augment, TrainConfig  # noqa: E402
from harness.data.dataset import DeviceResident, SplitArrays  # noqa: E402

NO_AUGMENT = Augment(time_mask=0.0, freq_mask=0.0, time_shift=0.0, hflip=False, colour=0.0)
STATS = {"audio": ([0.5], [0.25])}


def settings(cuda: bool, quick: bool) -> tuple[TrainConfig, int, tuple[int, int]]:
    """(config, training clips, input shape): a real model on a GPU, a tiny one on a CPU."""
    if cuda:
        cfg = TrainConfig(backbone="resnet18", pretrained=False, device="cuda", batch_size=128, epochs=2, patience=0,
                          augment=NO_AUGMENT, warmup_epochs=0.0)
        return cfg, 2048 if quick else 8192, (128, 256)
    cfg = TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, device="cpu", batch_size=16, epochs=2,
                      patience=0, augment=NO_AUGMENT, warmup_epochs=0.0)
    return cfg, 64 if quick else 192, (64, 128)


def generated(n: int, shape: tuple[int, int], seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    return SplitArrays(inputs={"audio": rng.integers(0, 256, (n, *shape), dtype=np.uint8)},
                       labels=(np.arange(n) % 2).astype(np.int64), names=[f"g{i}" for i in range(n)])


def fit_rate(cfg: TrainConfig, train: SplitArrays, val: SplitArrays, shape: tuple[int, int]) -> float:
    watch = LastRate()
    engine.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        engine.fit(cfg, build(cfg.backbone), train=train, val=val, stats=STATS, out_dir=Path(tmp), callbacks=[watch])
    return watch.rate


def ddp_worker(args: argparse.Namespace) -> int:
    """One rank (started by launch_ranks): the same fit inside a process group."""
    from harness.distributed import process_group

    cfg, clips, shape = settings(torch.cuda.is_available(), args.quick)
    with process_group(cfg.device) as world:
        rate = fit_rate(cfg, generated(clips, shape, 0), generated(256, shape, 1), shape)
        if world.is_main:
            Path(args.ddp_worker).write_text(json.dumps({"rate": rate, "world": world.size, "active": world.active}))
    return 0


def check_ddp(cfg: TrainConfig, clips: int, shape: tuple[int, int], quick: bool) -> None:
    from harness.distributed import launch_ranks

    plain = fit_rate(cfg, generated(clips, shape, 0), generated(256, shape, 1), shape)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        outcome = launch_ranks(1, [str(Path(__file__).resolve()), "--ddp-worker", str(out), *(["--quick"] if quick else [])])
        if not outcome.ok:
            print(f"ddp: the rank failed: {outcome.reason}")
            return
        ranked = json.loads(out.read_text())
    assert ranked["active"], "the rank ran without a process group"
    print(f"ddp --nproc 1 vs plain: {ranked['rate']:.0f} vs {plain:.0f} samples/s = {ranked['rate'] / plain:.2f}x")


def streamed_split(folder: Path, clips: int, shape: tuple[int, int]) -> SplitArrays:
    """The generated split as a .npy memmap on disk, dropped from the page cache."""
    data = generated(clips, shape, 0)
    path = folder / "train.npy"
    np.save(path, data.inputs["audio"])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return SplitArrays(inputs={"audio": np.load(path, mmap_mode="r")}, labels=data.labels, names=data.names)


def check_loop(cfg: TrainConfig, clips: int, shape: tuple[int, int], cuda: bool) -> None:
    model_only = model_only_rate(cfg, shape, max(10, clips // cfg.batch_size))
    val = generated(256, shape, 1)
    lines = []
    if cuda:
        resident = fit_rate(cfg, generated(clips, shape, 0), val, shape)
        lines.append(("resident on the device", resident))
    fits, reader = DeviceResident.fits, engine.prefetched
    DeviceResident.fits = staticmethod(lambda *a, **k: False)  # batches from the host, as a split too big for the GPU
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lines.append(("streamed, prefetching reader", fit_rate(cfg, streamed_split(Path(tmp), clips, shape), val, shape)))
        engine.prefetched = lambda source, depth=2: source
        with tempfile.TemporaryDirectory() as tmp:
            lines.append(("streamed, no reader", fit_rate(cfg, streamed_split(Path(tmp), clips, shape), val, shape)))
    finally:
        DeviceResident.fits, engine.prefetched = fits, reader
    print(f"model-only: {model_only:.0f} samples/s ({cfg.backbone}, batch {cfg.batch_size}, 1x{shape[0]}x{shape[1]})")
    for name, rate in lines:
        print(f"loop {name}: {rate:.0f} samples/s   loop/model-only = {rate / model_only:.2f}x")


def face_crops(clips: int, frames: int = 8, size: int = 112) -> np.ndarray:
    """Smooth synthetic crops (low-frequency noise, like skin and background) that JPEG compresses as
    it would real faces, more or less; real crops are measured by bench/scale_footprint.py."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (clips * frames, 3, size // 8, size // 8), dtype=np.uint8)
    fine = torch.nn.functional.interpolate(torch.from_numpy(coarse).float(), size=(size, size), mode="bilinear")
    noise = torch.from_numpy(rng.normal(0, 6, fine.shape).astype(np.float32))
    return (fine + noise).clamp(0, 255).to(torch.uint8).numpy()


def check_jpeg(cuda: bool, quick: bool, batch: int = 64, frames: int = 8) -> None:
    from torchvision.io import decode_jpeg, encode_jpeg

    crops = torch.from_numpy(face_crops(256 if quick else 1024, frames))
    encoded = encode_jpeg(list(crops), quality=90)
    per_clip = sum(len(e) for e in encoded) / (len(crops) / frames)
    step = batch * frames

    def decode(chunk: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        # On the CPU without `device`: passing device="cpu" took another, 2x slower path here.
        return decode_jpeg(chunk, device=device) if device != "cpu" else decode_jpeg(chunk)

    def rate(device: str) -> float:
        decode(encoded[:step], device)  # warm-up (nvjpeg handles, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < 3.0:
            for first in range(0, len(encoded), step):
                out = decode(encoded[first : first + step], device)
                done += len(out)
            if device == "cuda":
                torch.cuda.synchronize()
        return done / frames / (time.perf_counter() - start)

    raw = crops.numpy().reshape(-1, frames, *crops.shape[1:])
    start, done = time.perf_counter(), 0
    rng = np.random.default_rng(0)
    while time.perf_counter() - start < 1.0:
        np.ascontiguousarray(raw[rng.integers(0, len(raw), batch)])
        done += batch
    raw_rate = done / (time.perf_counter() - start)
    cpu = rate("cpu")
    print(f"jpeg crops q90: {per_clip / 1000:.1f} KB a clip ({raw[0].nbytes / per_clip:.1f}x smaller than raw); "
          f"raw rows {raw_rate:.0f} clips/s; decode_jpeg CPU {cpu:.0f} clips/s (threads={torch.get_num_threads()})")
    if cuda:
        gpu = rate("cuda")
        print(f"jpeg decode_jpeg on the GPU: {gpu:.0f} clips/s = {gpu / cpu:.1f}x the CPU, "
              f"{gpu * frames:.0f} frames/s")
    else:
        print("jpeg decode_jpeg on the GPU: skipped (no CUDA)")


def check_jpeg_reader(cuda: bool, quick: bool) -> None:
    import jpeg_crops

    clips = (512 if quick else 2048) if cuda else 24
    cfg = jpeg_crops.settings(cuda)
    with tempfile.TemporaryDirectory(prefix="gpu-check-jpeg-") as tmp_name:
        tmp = Path(tmp_name)
        crops, blobs, figures = jpeg_crops.source_crops(tmp / "cache", 90)
        raw, jpeg = jpeg_crops.tiled_splits(tmp, crops, blobs, clips, "train")
        _, val = jpeg_crops.tiled_splits(tmp, crops, blobs, max(32, clips // 16), "val")
        rates = jpeg_crops.loop_rates(cfg, raw, jpeg, val, cuda)
    print(f"jpeg reader ({cfg.train.backbone}, batch {cfg.train.batch_size}, {clips} clips of 8x112x112, q90 "
          f"{figures['jpeg_array'] / 1000:.1f} KB a clip): " + ", ".join(f"{k} {v:.0f} samples/s" for k, v in rates.items())
          + f"; jpeg/raw {rates['jpeg'] / rates['raw']:.2f}x")
    if cuda:
        print(f"jpeg reader from the host: nvjpeg {rates['jpeg, host, GPU decode'] / rates['raw, host']:.2f}x raw, "
              f"CPU decode {rates['jpeg, host, CPU decode'] / rates['raw, host']:.2f}x raw")
    else:
        print("jpeg reader on the GPU (resident decode, nvjpeg per batch): skipped (no CUDA)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_worker:
        return ddp_worker(args)
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"torch {torch.__version__}; CUDA device: {name}; CPU threads {torch.get_num_threads()}")
    cfg, clips, shape = settings(cuda, args.quick)
    if not cuda:
        print("no CUDA: the ddp, loop and jpeg reader checks run small CPU versions; GPU figures skipped")
    check_ddp(cfg, clips, shape, args.quick)
    check_loop(cfg, clips, shape, cuda)
    check_jpeg(cuda, args.quick)
    check_jpeg_reader(cuda, args.quick)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
