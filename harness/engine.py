"""The training loop: fit a model on cached features, validate every epoch, keep the best by val AUC.

With `train.ema_decay` > 0 a timm `ModelEmaV3` is validated beside the weights (`val_*_ema`) and the better
of the two is checkpointed (`FitResult.info["best_weights"]`). Reports go through `harness.callbacks`.
CUDA: AMP (bf16, else fp16 with a gradient scaler) and channels_last; CPU: fp32. In a process group
(`harness.distributed`) it is DDP: each rank trains on its shard, validation scores are gathered, rank 0
alone checkpoints and runs the callbacks, and its decision to stop is broadcast.
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

from harness import checkpoint as ckpt
from harness.augment import image_augment, jpeg_uint8, mixup_inputs, spec_augment
from harness.callbacks import Callback, EpochReport, FitResult, StopTraining
from harness.config import Augment, TrainConfig
from harness.data.dataset import BatchHook, DeviceResident, Shard, SplitArrays, batches, prefetched
from harness.distributed import group as distributed
from harness.errors import BadInput, ConfigError, JobFailed

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
        return nullcontext() if self.autocast_dtype is None else torch.autocast(device.type, dtype=self.autocast_dtype)


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
    """`cfg.optimizer` with no weight decay on biases and norm weights (1-D parameters)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}]
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


def _smoothed(cfg: TrainConfig, target: torch.Tensor) -> torch.Tensor:
    return target * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing


def _focal(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits[:, 0], _smoothed(cfg, target), alpha=-1, gamma=cfg.focal_gamma, reduction="mean")


# One entry per name in config.LOSSES (a test holds the two equal); "ce" trains a two-logit head.
_LOSSES: dict[str, Callable[[TrainConfig, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": lambda cfg, logits, target: F.binary_cross_entropy_with_logits(logits[:, 0], _smoothed(cfg, target)),
    "ce": lambda cfg, logits, target: F.cross_entropy(logits, torch.stack([1 - target, target], dim=1),
                                                      label_smoothing=cfg.label_smoothing),
    "focal": _focal,
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
    """uint8 batches as cached -> normalised model inputs in layout, augmented in training, masks kept."""

    def __init__(self, stats: Stats) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleDict({name: Normalise(mean, std) for name, (mean, std) in stats.items()})

    def forward(self, batch: dict[str, torch.Tensor], device: torch.device, *, augment: Augment | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Windowed audio (B, K, H, W) becomes B*K samples (clip-major); other inputs are repeated to match."""
        if (audio := batch.get("audio")) is not None and audio.ndim == 4 and (windows := audio.shape[1]) > 1:
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
            if (mask := batch.get(f"{name}_present")) is not None:
                # A missing input becomes the data mean (0): it moves batch-norm statistics least.
                out[f"{name}_present"] = keep = mask.to(device, non_blocking=True)
                x = x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            out[name] = x
        return out


def aggregate_scores(probs: torch.Tensor, how: str) -> torch.Tensor:
    """(B, K) probabilities -> (B,) float64: `mean`, `max`, or `logit_mean` (the mean logit's probability)."""
    probs = probs.double()
    if probs.shape[1] == 1:  # one window (or a whole-clip image): its score, whatever the rule
        return probs[:, 0]
    if how == "max":
        return probs.amax(dim=1)
    if how == "logit_mean":
        return torch.sigmoid(torch.logit(probs, eps=1e-7).mean(dim=1))
    return probs.mean(dim=1)


def clip_probabilities(model: torch.nn.Module, x: dict[str, torch.Tensor], clips: int, how: str) -> torch.Tensor:
    """Probability of fake per clip (float64) for inputs `x` of `clips` clips laid out by `Inputs`."""
    return aggregate_scores(fake_probability(call_model(model, x)).view(clips, -1), how)


def call_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One input positionally, several (fusion) by name."""
    return model(next(iter(inputs.values()))) if len(inputs) == 1 else model(**inputs)


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Inputs, data: SplitArrays, *, batch_size: int, device: torch.device,
            precision: Precision, aggregate: str = "mean", shard: Shard = Shard()) -> np.ndarray:
    """Probability of fake (float64) per clip of `shard`'s share of `data`, in order."""
    model.eval()
    scores = []
    for batch, y in batches(data, max(1, batch_size // data.eval_windows), shuffle=False, shard=shard):
        with precision.autocast(device):
            scores.append(clip_probabilities(model, inputs(batch, device), len(y), aggregate).cpu())
    return torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0)


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
    deal: np.random.Generator  # shuffles on the prefetch thread: never interleaved with draws from `rng`
    resident: DeviceResident | None  # the train split on the device, when it fits
    ema: torch.nn.Module | None = None  # timm ModelEmaV3 of `model`, when train.ema_decay > 0
    hook: BatchHook | None = None  # pseudo-fakes, made in host batches
    step: int = 0
    epoch_lr: float = 0.0  # the highest rate a step of the epoch used: the warm-up peak, else the rate it began at


def fit(cfg: TrainConfig, model: torch.nn.Module, *, train: SplitArrays, val: SplitArrays, stats: Stats, out_dir: Path,
        callbacks: Sequence[Callback] = (), info: dict | None = None, hook: BatchHook | None = None) -> FitResult:
    """Train `model`; the best epoch by val AUC. `stats`: each input's (mean, std); `hook`: host batch changes."""
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"need clips to train and validate on (train={len(train)}, val={len(val)})")
    seed_everything(cfg.seed)
    world = distributed.current()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)  # one GPU per rank
    model = model.to(device)
    host_batches = _jpeg(cfg, train) or hook is not None  # JPEG re-encoding (OpenCV) and pseudo-fakes work on the host
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        val.decode_device = device  # JPEG-stored face crops: nvjpeg decodes each host batch on the GPU
        if not host_batches:
            train.decode_device = device
    optimizer = make_optimizer(cfg, model)
    trained = model
    if world.active:  # DDP: gradients averaged across ranks in backward
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    per_rank = -(-len(train) // world.size)  # each rank's padded share (Shard.take)
    steps_per_epoch = max(1, per_rank // cfg.batch_size + (per_rank % cfg.batch_size > 1))
    loop = _Loop(
        cfg=cfg, model=trained, module=model, world=world,
        inputs=Inputs(stats).to(device), optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch),
        # Augmentation draws differ per rank (rank 0 keeps the single-process seed).
        precision=pick_precision(device), device=device, rng=np.random.default_rng(cfg.seed + world.rank),
        aug_gen=torch.Generator(device=device).manual_seed(cfg.seed + world.rank),
        deal=np.random.default_rng([cfg.seed, 1]),
        resident=DeviceResident(train, device) if not host_batches and DeviceResident.fits(train, device) else None,
        ema=_make_ema(cfg, model), hook=hook,
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
        try:
            _run_epochs(loop, train, val, out_dir / ckpt.WEIGHTS, callbacks, result)
        except Exception:
            if world.active:
                _interrupt_first()
            raise
    except KeyboardInterrupt:  # Ctrl-C: the best checkpoint so far is reported, then the interrupt goes on
        result.stopped_by = "interrupted"
        for cb in callbacks:
            cb.on_end(result)
        raise
    for cb in callbacks:
        cb.on_end(result)
    return result


def _interrupt_first() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C or SIGTERM reached this rank while it waited in a collective.

    The launcher passes Ctrl-C on as SIGTERM to every rank, rank 0 first. A rank blocked in a gloo or NCCL
    call cannot run its Python handler until the call returns, and it returns with an error as soon as a
    peer has died of its own SIGTERM: without this the lost peer, a consequence of the interrupt, would end
    the run FAILED with no checkpoint. `os.kill(own pid, 0)` sends nothing but runs the handlers pending
    (CPython checks signals right after a kill aimed at its own process); none pending: the error stands."""
    os.kill(os.getpid(), 0)


def _run_epochs(loop: _Loop, train: SplitArrays, val: SplitArrays, checkpoint: Path, callbacks: Sequence[Callback],
                result: FitResult) -> None:
    from harness.metrics import classification_metrics  # sklearn: seconds to import, kept off the prediction path

    cfg, world = loop.cfg, loop.world
    best_auc, stale = -1.0, 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_loss, seen = _train_one_epoch(loop, train, epoch)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"train loss became {train_loss} in epoch {epoch} (try a lower --lr)")
        # The module, not its DDP wrapper (which would wait for ranks scoring fewer batches); rank 0 gets all.
        def evaluate(module: torch.nn.Module) -> np.ndarray:
            shard_scores = predict(module, loop.inputs, val, batch_size=cfg.batch_size * 2, device=loop.device,
                                   precision=loop.precision, aggregate=cfg.aggregate, shard=world.shard)
            return distributed.gather_shards(shard_scores, len(val), world)

        def val_metrics(scores: np.ndarray) -> dict[str, float]:
            return {f"val_{k}": v for k, v in classification_metrics(val.labels, scores).items()}

        scores = {"raw": evaluate(loop.module), **({"ema": evaluate(loop.ema.module)} if loop.ema is not None else {})}
        if not world.is_main:  # rank 0 judges the epoch; the others learn whether to go on
            result.stopped_by = distributed.agree(None, world)
            if result.stopped_by:
                return
            continue
        judged = {k: val_metrics(v) for k, v in scores.items()}
        chosen = max(judged, key=lambda k: _auc(judged[k]))  # raw on a tie
        metrics = {**judged["raw"], **{f"{k}_ema": v for k, v in judged.get("ema", {}).items()}}
        # The epoch's rate, not the scheduler's after its last step (the next epoch's: 0 at the end of a cosine).
        metrics.update(train_loss=train_loss, lr=loop.epoch_lr,
                       epoch_seconds=time.perf_counter() - start, samples_per_s=seen / train_seconds)
        if improved := (auc := _auc(judged[chosen])) > best_auc:
            best_auc, stale = auc, 0
            ckpt.save_weights(loop.module if chosen == "raw" else loop.ema.module, checkpoint)
            # The best epoch's val_* are the saved weights' (what submit bundles and a study ranks).
            result.best_epoch, result.best_metrics = epoch, {**metrics, **judged[chosen]}
            result.val_scores, result.checkpoint = scores[chosen], checkpoint
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
    """timm's ModelEmaV3 (None at decay 0), its decay warming up so a short run is not mostly its init."""
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
    scaler = loop.precision.scaler or torch.amp.GradScaler(device.type, enabled=False)  # disabled: plain steps
    total = torch.zeros((), device=device)
    seen = 0
    loop.epoch_lr = 0.0
    # Every rank deals the same permutation, seeded by (seed, epoch) as DistributedSampler.set_epoch does.
    order = np.random.default_rng([cfg.seed, epoch]) if world.active else loop.deal
    # Host batches are read ahead while the model steps: a split larger than RAM streams (bench/scale_stream.py).
    source = loop.resident.batches(cfg.batch_size, generator=order, shard=world.shard) if loop.resident else \
        prefetched(batches(train, cfg.batch_size, shuffle=True, generator=order, shard=world.shard, readahead=READAHEAD,
                           hook=loop.hook))
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
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loop.epoch_lr = max(loop.epoch_lr, loop.optimizer.param_groups[0]["lr"])  # the rate this step uses
        scaler.step(loop.optimizer)
        scaler.update()
        loop.scheduler.step()
        loop.step += 1
        if loop.ema is not None:
            loop.ema.update(loop.module, step=loop.step)  # the unwrapped module: same keys as the EMA copy
        total += loss.detach() * len(y)  # stays on the device: no sync per step
        seen += len(y)
    total_loss, seen_all = distributed.sum_over_ranks([float(total), float(seen)], world)
    return total_loss / max(1, seen_all), int(seen_all)
