"""The training loop: fit a model on cached features, validate every epoch, keep the best by val AUC.

With `train.ema_decay` > 0 an exponential moving average of the weights (timm `ModelEmaV3`) is kept
beside them and validated every epoch too (metrics `val_*_ema`); the checkpoint is whichever of the
two scored the better val AUC, named in `FitResult.info["best_weights"]` ("raw" or "ema"), and the
best epoch's `val_*` metrics are that checkpoint's. Windowed audio is scored per clip by
`aggregate_scores` over its evaluation windows (`train.aggregate`).

It reports through `harness.callbacks.Callback` and knows nothing of MLflow or Optuna. On CUDA it
uses AMP (bf16 where supported, else fp16 with a gradient scaler) and channels_last; on CPU, fp32.

Inside a process group (`harness.distributed`) the same loop is DDP: each rank trains on its shard
of the split (a new deal each epoch), validation scores are gathered so metrics are computed once
over the whole split, rank 0 alone saves checkpoints (of the unwrapped module) and runs the
callbacks, and its decision to stop (early stopping, a pruner) is broadcast so every rank agrees.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.augment import image_augment, jpeg_uint8, mixup_inputs, spec_augment
from harness.callbacks import Callback, EpochReport, FitResult, StopTraining
from harness.config import Augment, TrainConfig
from harness.data.dataset import DeviceResident, Shard, SplitArrays, batches, prefetched
from harness.distributed import group as distributed
from harness.errors import BadInput, ConfigError, JobFailed
from harness.fileio import write_bytes

Stats = dict[str, tuple[Sequence[float], Sequence[float]]]  # input name -> (mean, std)

READAHEAD = 4  # batches of a memmapped split asked of the kernel ahead of their turn


class TrainingDiverged(JobFailed):
    """The loss stopped being a number: the run cannot go on."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class Precision:
    autocast_dtype: torch.dtype | None  # None: plain fp32
    scaler: torch.amp.GradScaler | None

    def autocast(self, device: torch.device):  # noqa: ANN201
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def pick_precision(device: torch.device) -> Precision:
    if device.type != "cuda":
        return Precision(None, None)
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, None)  # bf16 has fp32's range: no scaler needed
    return Precision(torch.float16, torch.amp.GradScaler("cuda"))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights, as usual for conv nets and transformers.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return _OPTIMIZERS[cfg.optimizer](groups, cfg.lr, next(model.parameters()).is_cuda)


# One entry per name in config.OPTIMIZERS (the config refuses any other; a test holds the two equal).
_OPTIMIZERS: dict[str, Callable[[list, float, bool], torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr, on_cuda: torch.optim.AdamW(groups, lr=lr, fused=on_cuda),  # one kernel for all
    "radam": lambda groups, lr, on_cuda: torch.optim.RAdam(groups, lr=lr, decoupled_weight_decay=True),
    "sgd": lambda groups, lr, on_cuda: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_fn(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`target` is the probability of fake (soft under mixup)."""
    return _LOSSES[cfg.loss](cfg, logits.float(), target)


def _cross_entropy(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    soft = torch.stack([1 - target, target], dim=1)  # a two-logit head (modalities.head_outputs)
    return F.cross_entropy(logits, soft, label_smoothing=cfg.label_smoothing)


def _smoothed(cfg: TrainConfig, target: torch.Tensor) -> torch.Tensor:
    return target * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing


def _binary_cross_entropy(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits[:, 0], _smoothed(cfg, target))


def _focal(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits[:, 0], _smoothed(cfg, target), alpha=-1, gamma=cfg.focal_gamma, reduction="mean")


# One entry per name in config.LOSSES (the config refuses any other; a test holds the two equal).
_LOSSES: dict[str, Callable[[TrainConfig, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": _binary_cross_entropy, "ce": _cross_entropy, "focal": _focal,
}


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.softmax(dim=1)[:, 1] if logits.shape[1] == 2 else logits[:, 0].sigmoid()


class Normalise(torch.nn.Module):
    """uint8 (B, C, H, W) -> float, scaled by the backbone's pretrained mean/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Inputs(torch.nn.Module):
    """uint8 batches as cached -> what the model takes: normalised, in layout, augmented in training.

    "audio" (B, H, W) -> (B, 1, H, W); "video" (B, K, S, S, 3) -> (B, K, 3, S, S). One input is passed
    to the model positionally; several (fusion) by name, with their `<name>_present` masks.
    """

    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleDict({name: Normalise(mean, std) for name, (mean, std) in stats.items()})

    def forward(self, batch: dict[str, torch.Tensor], device: torch.device, *, augment: Augment | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Windowed audio with several windows per clip, (B, K, H, W), becomes B*K samples (clip-major,
        window k of clip b at b*K + k); the clip's other inputs are repeated to match."""
        windows = clip_windows(batch)
        if windows > 1:
            batch = {k: v.flatten(0, 1) if k == "audio" else v.repeat_interleave(windows, dim=0) for k, v in batch.items()}
        out: dict[str, torch.Tensor] = {}
        for name, norm in self.norms.items():
            x = batch[name].to(device, non_blocking=True)
            if name == "audio":
                x = norm(x.unsqueeze(1))
                if augment is not None:
                    x = spec_augment(x, augment, generator)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
            else:
                b, k, h, w, c = x.shape
                x = norm(x.permute(0, 1, 4, 2, 3).reshape(b * k, c, h, w)).reshape(b, k * c, h, w).contiguous()
                if augment is not None:  # one flip / colour / crop per clip, the same on all its frames
                    x = image_augment(x, augment, generator)
                x = x.reshape(b, k, c, h, w)
            if f"{name}_present" in batch:
                # A missing input is zeros in the cache; as the data mean (0 after normalising) it
                # moves batch-norm statistics least, and the model does not use it anyway.
                keep = batch[f"{name}_present"].to(device, non_blocking=True)
                x = x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            out[name] = x
        for key, mask in batch.items():
            if key.endswith("_present"):
                out[key] = mask.to(device, non_blocking=True)
        return out


def clip_windows(batch: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> int:
    """Windows per clip in a batch: K for windowed audio scored as (B, K, H, W), else 1."""
    audio = batch.get("audio")
    return int(audio.shape[1]) if audio is not None and audio.ndim == 4 else 1


def aggregate_scores(probs: torch.Tensor, how: str) -> torch.Tensor:
    """(B, K) probabilities of fake -> (B,) float64, by `train.aggregate`: the mean, the max, or the
    probability of the mean logit (`logit_mean`, which lets one confident window weigh more than the
    mean does without letting it decide alone as the max does)."""
    probs = probs.double()
    if probs.shape[1] == 1:  # one window (or a whole-clip image): its score, whatever the rule
        return probs[:, 0]
    if how == "max":
        return probs.amax(dim=1)
    if how == "logit_mean":
        return torch.sigmoid(torch.logit(probs, eps=1e-7).mean(dim=1))
    return probs.mean(dim=1)


def clip_probabilities(model: torch.nn.Module, x: dict[str, torch.Tensor], clips: int, how: str) -> torch.Tensor:
    """Probability of fake per clip (float64) for model inputs `x` of `clips` clips (each clip's
    windows consecutive, as `Inputs` lays them out), aggregated by `how`."""
    probs = fake_probability(call_model(model, x))
    return aggregate_scores(probs.view(clips, -1), how)


def call_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if len(inputs) == 1:
        return model(next(iter(inputs.values())))
    return model(**inputs)


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Inputs, data: SplitArrays, *, batch_size: int, device: torch.device,
            precision: Precision, aggregate: str = "mean", shard: Shard = Shard()) -> np.ndarray:
    """Probability of fake per clip of `shard`'s share of `data` (all of it by default), in order
    (float64); windowed clips aggregated by `aggregate`."""
    model.eval()
    scores = []
    for batch, y in batches(data, max(1, batch_size // data.eval_windows), shuffle=False, shard=shard):
        with precision.autocast(device):
            scores.append(clip_probabilities(model, inputs(batch, device), len(y), aggregate).cpu())
    return torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0)


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """safetensors, written under a temporary name, fsynced and renamed: never a half checkpoint.

    Serialised in memory first (one extra copy of the weights, 800 MB at the 200 M-parameter cap):
    safetensors' `save_file` writes through a file of its own, which the atomic writer cannot fsync."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_bytes(path, save(state))


@dataclass
class _Loop:
    """The state one training run carries from step to step."""

    cfg: TrainConfig
    model: torch.nn.Module  # what trains: the module, or its DDP wrapper in a process group
    module: torch.nn.Module  # the module itself: validated, checkpointed
    world: distributed.World
    inputs: Inputs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    precision: Precision
    device: torch.device
    rng: np.random.Generator
    aug_gen: torch.Generator
    # Shuffles and window/variant draws happen on the prefetch thread: a generator of their own, so
    # they never interleave with the main thread's augmentation draws from `rng`.
    deal: np.random.Generator
    resident: DeviceResident | None  # the train split on the device, when it fits
    ema: torch.nn.Module | None = None  # timm ModelEmaV3 of `model`, when train.ema_decay > 0
    step: int = 0


def fit(
    cfg: TrainConfig,
    model: torch.nn.Module,
    *,
    train: SplitArrays,
    val: SplitArrays,
    stats: Stats,
    out_dir: Path,
    callbacks: Sequence[Callback] = (),
    info: dict | None = None,
) -> FitResult:
    """Train `model` and return the best epoch by val AUC, its checkpoint and val scores.

    `stats` gives each input's normalisation (mean, std) and so names the inputs the model reads."""
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"need clips to train and validate on (train={len(train)}, val={len(val)})")
    seed_everything(cfg.seed)
    world = distributed.current()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)  # one GPU per rank
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        val.decode_device = device  # JPEG-stored face crops: nvjpeg decodes each host batch on the GPU
        if not _jpeg(cfg, train):  # the JPEG re-encoding augmentation works on host batches
            train.decode_device = device
    optimizer = make_optimizer(cfg, model)
    per_rank = -(-len(train) // world.size)  # each rank's padded share (Shard.take)
    steps_per_epoch = max(1, per_rank // cfg.batch_size + (per_rank % cfg.batch_size > 1))
    loop = _Loop(
        cfg=cfg, model=_wrap(model, device) if world.active else model, module=model, world=world,
        inputs=Inputs(stats).to(device), optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch),
        # Augmentation draws differ per rank (rank 0 keeps the single-process seed); the deal of
        # samples to ranks has its own generator (`_train_one_epoch`).
        precision=pick_precision(device), device=device, rng=np.random.default_rng(cfg.seed + world.rank),
        aug_gen=torch.Generator(device=device).manual_seed(cfg.seed + world.rank),
        deal=np.random.default_rng([cfg.seed, 1]),
        # JPEG re-encoding runs on the host (OpenCV), so a split that needs it is batched from the host.
        resident=DeviceResident(train, device) if DeviceResident.fits(train, device) and not _jpeg(cfg, train) else None,
        ema=_make_ema(cfg, model),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"device": str(device), "precision": str(loop.precision.autocast_dtype or "fp32"), "train_clips": len(train),
            "val_clips": len(val), **({"ranks": world.size} if world.active else {}), **(info or {})}
    if loop.ema is not None:
        info["best_weights"] = "raw"  # until the EMA scores better
    for cb in callbacks:
        cb.on_start(info)
    result = FitResult(best_epoch=0, best_metrics={}, checkpoint=None, val_names=val.names, val_labels=val.labels,
                       val_scores=np.zeros(len(val)), info=info)
    try:
        _run_epochs(loop, train, val, out_dir / "best.safetensors", callbacks, result)
    except KeyboardInterrupt:
        # Ctrl-C: the best checkpoint so far is kept and reported before the interrupt goes on.
        result.stopped_by = "interrupted"
        for cb in callbacks:
            cb.on_end(result)
        raise
    for cb in callbacks:
        cb.on_end(result)
    return result


def _wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the process group: gradients are averaged across ranks in backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _run_epochs(loop: _Loop, train: SplitArrays, val: SplitArrays, checkpoint: Path, callbacks: Sequence[Callback], result: FitResult) -> None:
    # sklearn costs seconds to import: only training needs it, not the prediction path (the bundle's API).
    from harness.metrics import classification_metrics

    cfg, world = loop.cfg, loop.world
    best_auc, stale = -1.0, 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_loss, seen = _train_one_epoch(loop, train, epoch)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"train loss became {train_loss} in epoch {epoch} (try a lower --lr)")
        # The module, not its DDP wrapper: ranks score different numbers of batches, and a wrapper's
        # forward would wait for the others. Each rank scores its share; rank 0 gets them all.
        def evaluate(module: torch.nn.Module) -> np.ndarray:
            shard_scores = predict(module, loop.inputs, val, batch_size=cfg.batch_size * 2, device=loop.device,
                                   precision=loop.precision, aggregate=cfg.aggregate, shard=world.shard)
            return distributed.gather_shards(shard_scores, len(val), world)

        scores = evaluate(loop.module)
        ema_scores = evaluate(loop.ema.module) if loop.ema is not None else None
        if not world.is_main:  # rank 0 judges the epoch; the others learn whether to go on
            result.stopped_by = distributed.agree(None, world)
            if result.stopped_by:
                return
            continue
        raw = {f"val_{k}": v for k, v in classification_metrics(val.labels, scores).items()}
        metrics = dict(raw)
        chosen, chosen_scores, chosen_metrics = "raw", scores, raw
        if ema_scores is not None:
            ema = {f"val_{k}": v for k, v in classification_metrics(val.labels, ema_scores).items()}
            metrics.update({f"{k}_ema": v for k, v in ema.items()})
            if _auc(ema) > _auc(raw):
                chosen, chosen_scores, chosen_metrics = "ema", ema_scores, ema
        metrics.update(train_loss=train_loss, lr=loop.optimizer.param_groups[0]["lr"],
                       epoch_seconds=time.perf_counter() - start, samples_per_s=seen / train_seconds)
        auc = _auc(chosen_metrics)
        improved = auc > best_auc
        if improved:
            best_auc, stale = auc, 0
            save_checkpoint(loop.module if chosen == "raw" else loop.ema.module, checkpoint)
            # The best epoch's val_* are the saved weights' (what submit bundles and a study ranks).
            result.best_epoch, result.best_metrics = epoch, {**metrics, **chosen_metrics}
            result.val_scores, result.checkpoint = chosen_scores, checkpoint
            if loop.ema is not None:
                result.info["best_weights"] = chosen
        else:
            stale += 1
        report = EpochReport(epoch=epoch, metrics=metrics, improved=improved)
        result.history.append(report)
        try:
            for cb in callbacks:
                cb.on_epoch(report)
        except StopTraining as stop:
            result.stopped_by = stop.reason
        if result.stopped_by is None and cfg.patience and stale >= cfg.patience:
            result.stopped_by = "early stopping"
        if distributed.agree(result.stopped_by, world):
            return


def _auc(metrics: dict[str, float]) -> float:
    return metrics["val_auc"] if math.isfinite(metrics["val_auc"]) else 0.0


def _make_ema(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module | None:
    """timm's ModelEmaV3 of `model`, or None when `ema_decay` is 0. With warmup, the decay grows
    with the step count (1 - (1 + step)^-3/4, capped at `ema_decay`), so that a short run's average is
    not mostly the initial weights."""
    if cfg.ema_decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=0.75)


def _jpeg(cfg: TrainConfig, data: SplitArrays) -> bool:
    return cfg.augment.jpeg > 0 and "video" in data.inputs


def _train_one_epoch(loop: _Loop, train: SplitArrays, epoch: int) -> tuple[float, int]:
    """Mean train loss and samples seen, over all ranks."""
    cfg, model, device, world = loop.cfg, loop.model, loop.device, loop.world
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    # Every rank must deal the same permutation, so the deal is seeded by (seed, epoch) alone, as
    # DistributedSampler.set_epoch does; one process keeps its single generator.
    order = np.random.default_rng([cfg.seed, epoch]) if world.active else loop.deal
    # From the host, the next batch is read while the model steps, and the kernel reads the rows of the
    # few after it meanwhile: a split larger than RAM streams from disk (bench/scale_stream.py).
    source = loop.resident.batches(cfg.batch_size, generator=order, shard=world.shard) if loop.resident else \
        prefetched(batches(train, cfg.batch_size, shuffle=True, generator=order, shard=world.shard, readahead=READAHEAD))
    for batch, y in source:
        if _jpeg(cfg, train):
            crops = batch["video"].numpy()  # the batch's own copy: re-encoded in place, frame by frame
            jpeg_uint8(crops.reshape(-1, *crops.shape[2:]), min(1.0, cfg.augment.jpeg * cfg.augment.strength), loop.rng,
                       cfg.augment.jpeg_quality)
        x = loop.inputs(batch, device, augment=cfg.augment, generator=loop.aug_gen)
        y = y.to(device, non_blocking=True)
        if cfg.augment.mixup > 0:
            x, y = mixup_inputs(x, y, cfg.augment.mixup, loop.aug_gen)
        with loop.precision.autocast(device):
            loss = loss_fn(cfg, call_model(model, x), y)
        loop.optimizer.zero_grad(set_to_none=True)
        scaler = loop.precision.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(loop.optimizer)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(loop.optimizer)
            scaler.update()
        else:
            loop.optimizer.step()
        loop.scheduler.step()
        loop.step += 1
        if loop.ema is not None:
            loop.ema.update(loop.module, step=loop.step)  # the unwrapped module: same keys as the EMA copy
        total += loss.detach() * len(y)  # stays on the device: no sync per step
        seen += len(y)
    total_loss, seen_all = distributed.sum_over_ranks([float(total), float(seen)], world)
    return total_loss / max(1, seen_all), int(seen_all)
