"""How the training engine talks to the outside (tracking and tuning implement `Callback`). A callback may
raise `StopTraining` from `on_epoch` (a pruner does): the engine keeps the best checkpoint so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class StopTraining(Exception):
    """Raised by a callback to end training now (pruning). `reason` is recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    metrics: dict[str, float]  # train_loss, lr (the epoch's peak rate), epoch_seconds, samples_per_s, val_auc, ...
    improved: bool  # val AUC beat every earlier epoch (the checkpoint was replaced)


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]  # the val metrics of the best epoch
    checkpoint: Path | None  # safetensors of the best epoch's weights
    val_names: list[str]
    val_labels: np.ndarray
    val_scores: np.ndarray  # probability of fake at the best epoch
    history: list[EpochReport] = field(default_factory=list)
    stopped_by: str | None = None  # "early stopping", a callback's StopTraining reason, or None
    info: dict[str, Any] = field(default_factory=dict)  # device, params, macs, ... as sent to on_start


class Callback(Protocol):
    def on_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: device, dtype, parameter counts, dataset sizes."""

    def on_epoch(self, report: EpochReport) -> None:
        """After each epoch's validation. May raise StopTraining."""

    def on_end(self, result: FitResult) -> None:
        """After training ends normally or by StopTraining (not on errors)."""
