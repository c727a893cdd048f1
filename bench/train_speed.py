"""Is the training loop bound by the model? Loop samples/s against model-only samples/s.

  model-only  forward + backward + optimizer step on one pre-loaded, normalised batch on the device,
              repeated (no data handling, no augmentation, no metrics, no logging);
  loop        `harness.engine.fit` on the same model, batch size and input size over generated uint8
              spectrograms: batching, transfer, normalisation, augmentation, validation excluded from
              samples/s as the engine reports it; with --mlflow, a real RunRecorder on a throwaway
              SQLite store, whose time inside MLflow calls is reported as a share of epoch time.
Prints `loop/model-only` (goal >= 0.9) and `mlflow share of epoch time` (goal <= 2%).

CPU (this machine):   python bench/train_speed.py
GPU check (one call): python bench/train_speed.py --device cuda --backbone resnet18 --clips 4096 --batch-size 128 --epochs 2
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import RunConfig, TrainConfig  # noqa: E402
from harness.data.dataset import SplitArrays  # noqa: E402
from harness.engine import fit, loss_fn, make_optimizer, pick_device, pick_precision, seed_everything  # noqa: E402


def generated(n: int, shape: tuple[int, int], seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    return SplitArrays(inputs={"audio": rng.integers(0, 256, (n, *shape), dtype=np.uint8)}, labels=np.arange(n) % 2,
                       names=[f"g{i}" for i in range(n)])


def build(backbone: str) -> torch.nn.Module:
    import timm

    return timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=1)


def model_only_rate(cfg: TrainConfig, shape: tuple[int, int], steps: int) -> float:
    seed_everything(0)
    device = pick_device(cfg.device)
    precision = pick_precision(device)
    model = build(cfg.backbone).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    x = torch.randn(cfg.batch_size, 1, *shape, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.arange(cfg.batch_size, device=device) % 2).float()

    def step() -> None:
        with precision.autocast(device):
            loss = loss_fn(cfg, model(x), y)
        opt.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(opt)
            precision.scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning, lazy init
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


class LastRate:
    """Engine callback keeping the last epoch's samples/s (shared by gpu_check and jpeg_crops)."""

    def __init__(self) -> None:
        self.rate = float("nan")

    def on_start(self, info: dict) -> None: ...

    def on_epoch(self, report) -> None:  # noqa: ANN001
        self.rate = report.metrics["samples_per_s"]

    def on_end(self, result) -> None: ...  # noqa: ANN001


class LogTime:
    """Notes the recorder's MLflow time after on_start and after each epoch's logging."""

    def __init__(self, recorder) -> None:  # noqa: ANN001
        self.recorder = recorder
        self.marks: list[float] = []

    def on_start(self, info: dict) -> None:
        self.marks.append(self.recorder.log_seconds())

    def on_epoch(self, report) -> None:  # noqa: ANN001
        self.marks.append(self.recorder.log_seconds())

    def on_end(self, result) -> None:  # noqa: ANN001
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=384, help="generated training clips")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True, help="log through a real RunRecorder")
    args = ap.parse_args()
    shape = (args.height, args.width)
    cfg = TrainConfig(backbone=args.backbone, pretrained=False, device=args.device, batch_size=args.batch_size,
                      epochs=args.epochs, patience=0)
    train, val = generated(args.clips, shape, 0), generated(max(64, args.clips // 8), shape, 1)

    callbacks, recorder = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if args.mlflow:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
            from harness import tracking

            client = tracking.setup()
            recorder = tracking.RunRecorder(client, experiment_id=tracking.get_or_create_experiment(client, "bench"),
                                            run_name="train-speed", config=RunConfig(train=cfg))
            callbacks += [recorder, snapshots := LogTime(recorder)]
        seed_everything(0)
        result = fit(cfg, build(args.backbone), train=train, val=val, stats={"audio": ([0.5], [0.25])}, out_dir=Path(tmp) / "run",
                     callbacks=callbacks)
        if recorder is not None:
            recorder.finish("FINISHED")
        steps = max(10, args.clips // args.batch_size)
        model_only = model_only_rate(cfg, shape, steps)

    last = result.history[-1].metrics  # the first epoch pays one-off set-up costs
    loop = last["samples_per_s"]
    print(f"device={result.info['device']} precision={result.info['precision']} backbone={args.backbone} "
          f"batch={args.batch_size} input=1x{args.height}x{args.width} clips={args.clips}")
    print(f"model-only: {model_only:.1f} samples/s   loop: {loop:.1f} samples/s   loop/model-only = {loop / model_only:.2f}x")
    if recorder is not None:
        epoch_time = sum(h.metrics["epoch_seconds"] for h in result.history)
        per_epoch = snapshots.marks[-1] - snapshots.marks[0]
        print(f"mlflow per-epoch logging: {per_epoch * 1000:.0f} ms over {epoch_time:.1f} s of epochs = {100 * per_epoch / epoch_time:.2f}% "
              f"of epoch time; all MLflow calls incl. params and end-of-run artifacts: {recorder.log_seconds():.2f} s "
              f"= {100 * recorder.log_seconds() / epoch_time:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
