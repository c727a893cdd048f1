"""Face crops stored as JPEG against raw uint8 crops: bytes per clip, and the training loop's samples/s.

  bytes   the 10 shared real clips prepared both ways (`prepare_features`, one worker, 8 crops of
          112x112 a clip): the packed array and the whole cache folder (shards included) per clip,
          and the mean absolute difference of the decoded crops from the raw ones, in grey levels;
  loop    `harness.engine.fit` (model video, no augmentation) on a training split of --clips clips,
          the real clips' crops tiled, packed as the cache packs them (.npy memmaps on disk: raw
          (N, 8, 112, 112, 3), JPEG a 1-D array of blobs with their offsets): samples/s of the second
          epoch, as the engine reports it (validation excluded). Each round trains on the raw split
          and on the JPEG one (raw first in odd rounds, JPEG first in even ones); the ratio JPEG/raw
          per round, and its median, are printed.
          CPU: test_byobnet, batch 16, JPEG decoded on the prefetching thread. GPU: resnet18, batch
          64, raw and JPEG resident (JPEG decoded once by nvjpeg), then both batched from the host
          (a split too large for the device): JPEG decoded per batch by nvjpeg (decode_device cuda)
          and by the CPU.

    python bench/jpeg_crops.py [--rounds 3] [--clips 96] [--quality 90]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import engine  # noqa: E402
from harness.config import Augment, RunConfig, TrainConfig, VideoFeatures  # noqa: E402
from harness.data.cache import load_split, prepare_features  # noqa: E402
from harness.data.dataset import DeviceResident, SplitArrays  # noqa: E402
from harness.data.jpeg_crops import JpegCrops  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402
from train_speed import LastRate  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ffdv-phase1-sample"
NO_AUGMENT = Augment(time_mask=0.0, freq_mask=0.0, time_shift=0.0, hflip=False, colour=0.0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def real_crops(cache: Path, quality: int) -> tuple[np.ndarray, list[np.ndarray], dict[str, float]]:
    """The shared clips' crops raw (N, 8, 112, 112, 3) and as JPEG blobs (one per clip), prepared by
    the cache both ways, and the byte and error figures."""
    ds = load_dataset(SHARED)
    raw_cfg, jpeg_cfg = VideoFeatures(), VideoFeatures(crop_storage="jpeg", crop_quality=quality)
    with ThreadPoolExecutor(1) as pool:
        raw, jpeg = (prepare_features(ds, cfg, cache_root=cache, pool=pool, workers=1) for cfg in (raw_cfg, jpeg_cfg))
    crops, blobs, decoded = [], [], []
    for split in ("train", "val"):
        array, _ = load_split(raw.cache, split)
        stored, _ = load_split(jpeg.cache, split)
        assert isinstance(stored, JpegCrops)
        crops.append(np.array(array))
        decoded.append(stored[np.arange(len(stored))])
        blobs += [np.array(stored.blobs[s : s + n]) for s, n in stored.spans.tolist()]
    crops_all, decoded_all = np.concatenate(crops), np.concatenate(decoded)
    clips = len(crops_all)
    figures = {
        "clips": clips,
        "raw_array": sum((raw.cache / f"{s}.npy").stat().st_size for s in ("train", "val")) / clips,
        "jpeg_array": sum((jpeg.cache / f"{s}.npy").stat().st_size for s in ("train", "val")) / clips,
        "raw_folder": folder_bytes(raw.cache) / clips,
        "jpeg_folder": folder_bytes(jpeg.cache) / clips,
        "error": float(np.abs(decoded_all.astype(np.int16) - crops_all.astype(np.int16)).mean()),
    }
    return crops_all, blobs, figures


def synthetic_crops(quality: int, clips: int = 20) -> tuple[np.ndarray, list[np.ndarray], dict[str, float]]:
    """Smooth generated crops (low-frequency colour and mild noise) when the shared clips are not
    on this machine; JPEG compresses them roughly as it does faces. No cache folder figures."""
    from harness.data.jpeg_crops import encode_clip

    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.integers(0, 256, (clips * 8, 3, 14, 14)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(112, 112), mode="bilinear") + torch.randn(clips * 8, 3, 112, 112) * 3
    crops = fine.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(clips, 8, 112, 112, 3).contiguous().numpy()
    blobs = [encode_clip(c, quality) for c in crops]
    decoded = JpegCrops(np.concatenate(blobs), np.stack([np.cumsum([len(b) for b in blobs]) - [len(b) for b in blobs],
                                                          [len(b) for b in blobs]], axis=1), crops.shape[1:])
    error = float(np.abs(decoded[np.arange(clips)].astype(np.int16) - crops.astype(np.int16)).mean())
    size = float(np.mean([len(b) for b in blobs]))
    return crops, blobs, {"clips": clips, "raw_array": crops[0].nbytes, "jpeg_array": size, "raw_folder": float("nan"),
                          "jpeg_folder": float("nan"), "error": error, "synthetic": True}


def source_crops(cache: Path, quality: int) -> tuple[np.ndarray, list[np.ndarray], dict[str, float]]:
    """The shared real clips' crops, or generated ones where the shared clips are not at hand."""
    return real_crops(cache, quality) if SHARED.is_dir() else synthetic_crops(quality)


def tiled_splits(folder: Path, crops: np.ndarray, blobs: list[np.ndarray], n: int, name: str) -> tuple[SplitArrays, SplitArrays]:
    """A split of `n` clips (the real ones tiled), raw and JPEG, as memmaps of .npy files in `folder`."""
    pick = np.arange(n) % len(crops)
    labels, names = (np.arange(n) % 2).astype(np.int64), [f"{name}{i}" for i in range(n)]
    raw_path, jpeg_path = folder / f"{name}-raw.npy", folder / f"{name}-jpeg.npy"
    np.save(raw_path, crops[pick])
    sizes = np.array([len(blobs[i]) for i in pick])
    np.save(jpeg_path, np.concatenate([blobs[i] for i in pick]))
    spans = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1)
    raw = SplitArrays(inputs={"video": np.load(raw_path, mmap_mode="r")}, labels=labels, names=names)
    jpeg = SplitArrays(inputs={"video": JpegCrops(np.load(jpeg_path, mmap_mode="r"), spans, crops.shape[1:])},
                       labels=labels, names=names)
    return raw, jpeg


def settings(cuda: bool) -> RunConfig:
    train = TrainConfig(backbone="resnet18" if cuda else "test_byobnet.r160_in1k", pretrained=False,
                        device="cuda" if cuda else "cpu", batch_size=64 if cuda else 16, epochs=2, patience=0,
                        warmup_epochs=0.0, augment=NO_AUGMENT)
    return RunConfig(modality="video", train=train)


def fit_rate(cfg: RunConfig, train: SplitArrays, val: SplitArrays) -> float:
    """samples/s of fit's second epoch (the first pays for warm-up: allocator, page cache, nvjpeg)."""
    from harness.modalities import build_model, input_stats

    engine.seed_everything(0)
    model = build_model(cfg, pretrained=False)
    watch = LastRate()
    with tempfile.TemporaryDirectory() as tmp:
        engine.fit(cfg.train, model, train=train, val=val, stats=input_stats(cfg, model), out_dir=Path(tmp),
                   callbacks=[watch])
    return watch.rate


def host_batched(run: Callable[[], float]) -> float:
    """`run` with every split batched from the host, as one too large for the device is."""
    fits = DeviceResident.fits
    DeviceResident.fits = staticmethod(lambda *a, **k: False)
    try:
        return run()
    finally:
        DeviceResident.fits = fits


def loop_rates(cfg: RunConfig, raw: SplitArrays, jpeg: SplitArrays, val: SplitArrays, cuda: bool,
               jpeg_first: bool = False) -> dict[str, float]:
    """One round: samples/s per way of reading the split (raw first, or JPEG first)."""
    order = [("jpeg", jpeg), ("raw", raw)] if jpeg_first else [("raw", raw), ("jpeg", jpeg)]
    rates = {name: fit_rate(cfg, data, val) for name, data in order}
    if cuda:
        rates["raw, host"] = host_batched(lambda: fit_rate(cfg, raw, val))
        jpeg.decode_device = torch.device("cuda")  # nvjpeg per batch, on the prefetching thread
        try:
            rates["jpeg, host, GPU decode"] = host_batched(lambda: fit_rate(cfg, jpeg, val))
        finally:
            jpeg.decode_device = None
        rates["jpeg, host, CPU decode"] = host_batched(lambda: fit_rate(cfg, jpeg, val))
    return rates


def human(n: float) -> str:
    return f"{n / 1000:.1f} KB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of raw-then-JPEG training (default 3)")
    ap.add_argument("--clips", type=int, default=None, help="training clips (default 96 on a CPU, 4096 on a GPU)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored crops (default 90)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    clips = args.clips or (4096 if cuda else 96)
    cfg = settings(cuda)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jpeg-crops-") as tmp_name:
        tmp = Path(tmp_name)
        crops, blobs, bytes_ = source_crops(tmp / "cache", args.quality)
        raw, jpeg = tiled_splits(tmp, crops, blobs, clips, "train")
        _, val = tiled_splits(tmp, crops, blobs, max(32, clips // 16), "val")  # validated from JPEG too
        # The order alternates: on a shared machine the first fit of a round was not the slower one by chance.
        rounds = [loop_rates(cfg, raw, jpeg, val, cuda, jpeg_first=i % 2 == 1) for i in range(args.rounds)]
    print(f"torch {torch.__version__}; {'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'CPU'}, "
          f"{torch.get_num_threads()} threads; {cfg.train.backbone}, batch {cfg.train.batch_size}, {clips} training clips")
    what = "generated clips: the shared real clips are not here" if bytes_.get("synthetic") else "real clips"
    print(f"bytes per clip ({bytes_['clips']} {what}, 8 crops of 112x112): packed array raw {human(bytes_['raw_array'])}, "
          f"JPEG q{args.quality} {human(bytes_['jpeg_array'])} ({bytes_['raw_array'] / bytes_['jpeg_array']:.1f}x smaller); "
          f"cache folder raw {human(bytes_['raw_folder'])}, JPEG {human(bytes_['jpeg_folder'])} "
          f"({bytes_['raw_folder'] / bytes_['jpeg_folder']:.1f}x); decoded JPEG vs raw: mean abs error "
          f"{bytes_['error']:.2f} grey levels")
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: " + ", ".join(f"{k} {v:.1f} samples/s" for k, v in r.items()) + f"; jpeg/raw {r['jpeg'] / r['raw']:.2f}x")
    ratio = statistics.median(r["jpeg"] / r["raw"] for r in rounds)
    print(f"median over {len(rounds)} rounds: jpeg/raw samples/s = {ratio:.2f}x "
          f"(raw {statistics.median(r['raw'] for r in rounds):.1f}, jpeg {statistics.median(r['jpeg'] for r in rounds):.1f})")
    if cuda:
        for way in ("jpeg, host, GPU decode", "jpeg, host, CPU decode"):
            print(f"median {way} / raw, host: {statistics.median(r[way] / r['raw, host'] for r in rounds):.2f}x")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
