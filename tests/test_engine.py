"""The training engine on small synthetic spectrograms, with a tiny timm model.

Tests that train are marked slow; the name tables and device check are fast.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from harness.callbacks import EpochReport, FitResult, StopTraining
from harness import engine
from harness.config import LOSSES, OPTIMIZERS, Augment, TrainConfig
from harness.data.dataset import SplitArrays
from harness.engine import TrainingDiverged, fit, seed_everything
from harness.modalities import head_outputs
from harness.errors import ConfigError

NO_AUG = Augment(time_mask=0, freq_mask=0, time_shift=0)


def spectrograms(n: int, seed: int, *, difficulty: float = 0.0) -> SplitArrays:
    """Noise images; fakes carry a faint horizontal band (a tonal artefact) at a random height."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, 32, 64)).astype(np.uint8)
    for i in np.flatnonzero(labels):
        row = rng.integers(4, 28)
        images[i, row : row + 2] += np.uint8(90 * (1 - difficulty))
    return SplitArrays(inputs={"audio": images}, labels=labels.astype(np.int64), names=[f"c{i}.mp4" for i in range(n)])


def tiny(loss: str = "bce") -> torch.nn.Module:
    return timm.create_model("test_byobnet", pretrained=False, in_chans=1, num_classes=head_outputs(loss))


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[str] = []
        self.stop_at = stop_at
        self.reports: list[EpochReport] = []

    def on_start(self, info: dict) -> None:
        self.events.append("start")
        self.info = info

    def on_epoch(self, report: EpochReport) -> None:
        self.events.append(f"epoch{report.epoch}")
        self.reports.append(report)
        if self.stop_at == report.epoch:
            raise StopTraining(f"pruned at epoch {report.epoch}")

    def on_end(self, result: FitResult) -> None:
        self.events.append("end")
        self.result = result


def _fit(tmp_path: Path, cfg: TrainConfig, callbacks=(), loss: str = "bce", **data) -> FitResult:
    seed_everything(cfg.seed)  # the model's initial weights are part of the run
    return fit(cfg, tiny(loss), train=spectrograms(64, 0, **data), val=spectrograms(32, 1, **data), stats={"audio": ([0.5], [0.25])},
               out_dir=tmp_path, callbacks=callbacks)


@pytest.mark.slow
def test_learns_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rec = Recorder()
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, device="cpu", augment=NO_AUG, patience=0)
    result = _fit(tmp_path, cfg, [rec])
    assert rec.events == ["start", "epoch1", "epoch2", "epoch3", "epoch4", "end"]
    assert result.best_metrics["val_auc"] > 0.9
    assert result.best_metrics["val_auc"] == max(r.metrics["val_auc"] for r in rec.reports)
    for key in ("train_loss", "lr", "epoch_seconds", "samples_per_s", "val_tpr_fpr1e-3", "val_eer", "val_f1", "val_logloss"):
        assert key in rec.reports[0].metrics
    # `lr` is the rate each epoch trained at (4 steps an epoch, 2 of warm-up): the peak in epoch 1, then the cosine
    # at the epoch's first step; never the scheduler's rate after the last step (0 at the end of the cosine).
    cosine = [3e-3 * 0.5 * (1 + math.cos(math.pi * (4 * k - 2) / 14)) for k in (1, 2, 3)]
    assert [r.metrics["lr"] for r in rec.reports] == pytest.approx([3e-3, *cosine])
    assert result.best_metrics["lr"] == rec.reports[result.best_epoch - 1].metrics["lr"]
    state = load_file(result.checkpoint)
    model = tiny()
    model.load_state_dict(state)  # the best epoch's weights, complete
    assert len(result.val_scores) == 32 and ((0 <= result.val_scores) & (result.val_scores <= 1)).all()
    assert rec.info["device"] == "cpu" and rec.info["precision"] == "fp32"


@pytest.mark.slow
def test_same_seed_same_run(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=16, device="cpu", patience=0)
    a = _fit(tmp_path / "a", cfg)
    b = _fit(tmp_path / "b", cfg)
    assert np.allclose(a.val_scores, b.val_scores, atol=1e-6)


@pytest.mark.slow
def test_callback_stop_and_early_stopping(tmp_path: Path) -> None:
    rec = Recorder(stop_at=2)
    result = _fit(tmp_path, TrainConfig(epochs=5, batch_size=16, device="cpu"), [rec])
    assert result.stopped_by == "pruned at epoch 2" and rec.events[-1] == "end" and len(result.history) == 2
    # An unlearnable task stops on patience.
    flat = _fit(tmp_path, TrainConfig(epochs=8, batch_size=16, device="cpu", patience=1, lr=1e-6), difficulty=1.0)
    assert flat.stopped_by == "early stopping" and len(flat.history) < 8


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "optimizer"), [("ce", "sgd"), ("focal", "radam"), ("bce", "adamw")])
def test_losses_and_optimizers_train(tmp_path: Path, loss: str, optimizer: str) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3 if optimizer != "sgd" else 3e-2, loss=loss, optimizer=optimizer,
                      label_smoothing=0.1, device="cpu", augment=Augment(mixup=0.4), patience=0)
    result = _fit(tmp_path, cfg, loss=loss)
    assert result.best_metrics["val_auc"] > 0.75


@pytest.mark.slow
def test_nan_loss_is_an_error(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e12, optimizer="sgd", grad_clip=0, device="cpu")
    with pytest.raises(TrainingDiverged, match="train loss became nan in epoch"):
        _fit(tmp_path, cfg)


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_reports(tmp_path: Path) -> None:
    class Interrupt(Recorder):
        def on_epoch(self, report: EpochReport) -> None:
            super().on_epoch(report)
            if report.epoch == 2:
                raise KeyboardInterrupt

    rec = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, TrainConfig(epochs=5, batch_size=16, device="cpu"), [rec])
    assert rec.events[-1] == "end" and (tmp_path / "best.safetensors").exists()


def test_a_rank_whose_collective_fails_after_its_interrupt_arrived_ends_interrupted(tmp_path: Path, monkeypatch) -> None:
    """The launcher's SIGTERM reaches a rank blocked in a C call (a collective), whose Python handler cannot run
    until the call returns; it returns with an error because a peer died of its own SIGTERM. The interrupt, not
    the lost peer, must end the run: callbacks told, then KeyboardInterrupt. Simulated in one process: SIGUSR1
    (handler: KeyboardInterrupt, as harness's SIGTERM) lands while the epochs block in a socket read (C) that
    then fails on its own, as gloo's would; nothing in Python runs between the two but `fit`."""
    import os
    import signal
    import socket
    import threading
    import time

    import torch.distributed as dist

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def signal_soon() -> None:
        time.sleep(0.2)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        os.kill(os.getpid(), signal.SIGUSR1)  # this thread takes it: Python only notes it for the main thread

    mine, _peer = socket.socketpair()
    mine.settimeout(1.0)
    monkeypatch.setattr(engine, "_run_epochs",
                        lambda *args: (threading.Thread(target=signal_soon).start(), mine.recv(1)))
    previous = signal.signal(signal.SIGUSR1, interrupt)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    rec = Recorder()
    try:
        with pytest.raises(KeyboardInterrupt):
            _fit(tmp_path, TrainConfig(epochs=2, batch_size=16, device="cpu"), [rec])
    finally:
        dist.destroy_process_group()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, previous)
    assert rec.events == ["start", "end"] and rec.result.stopped_by == "interrupted"


def test_every_configured_loss_and_optimizer_is_implemented() -> None:
    # The config refuses other names, so the engine has no fallback branch: the two lists must agree.
    assert set(engine._LOSSES) == set(LOSSES) and set(engine._OPTIMIZERS) == set(OPTIMIZERS)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    for loss in LOSSES:
        cfg = TrainConfig(loss=loss, label_smoothing=0.1)
        logits = torch.linspace(-1, 1, 4 * head_outputs(loss)).view(4, -1)
        value = engine.loss_fn(cfg, logits, target)
        assert value.ndim == 0 and torch.isfinite(value) and value > 0
    for optimizer in OPTIMIZERS:
        built = engine.make_optimizer(TrainConfig(optimizer=optimizer, lr=0.02), tiny())
        assert [g["lr"] for g in built.param_groups] == [0.02, 0.02]
        assert [g["weight_decay"] for g in built.param_groups] == [0.01, 0.0]  # none on biases and norms


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_bad_input() -> None:
    with pytest.raises(ConfigError, match="^device cuda:1 asked for, but torch sees no CUDA device$"):
        engine.pick_device("cuda:1")
