"""Shared by the tuning tests: a small study spec written to a file, a tiny data set, the CLI command."""
from __future__ import annotations

import sys
from pathlib import Path


def write_spec(folder: Path, name: str, *, trials: int = 4, workers: int = 1, backbones: tuple[str, ...] = ("test_byobnet.r160_in1k",),
               lrs: tuple[float, ...] = (), max_params: float = 1e6, epochs: int = 2, pruner: str = 'kind = "none"',
               sampler: str = 'kind = "random"\nseed = 0', objectives: str = '["val_auc"]', max_failures: int = 10,
               gpus_per_trial: int = 1, study_extra: str = "") -> Path:
    """A study of tiny models for 1-3 epochs at 64x64: a couple of seconds a trial on the test data."""
    lr = f"lr = {list(lrs)}" if lrs else "lr = { low = 1e-3, high = 1e-2, log = true }"
    devices = f"\ngpus_per_trial = {gpus_per_trial}" if gpus_per_trial != 1 else ""
    devices += f"\n{study_extra}" if study_extra else ""  # more [study] keys, e.g. folds = 2
    text = f"""
[study]
name = "{name}"
trials = {trials}
workers = {workers}
pretrained = false
max_params = {max_params}
max_failures = {max_failures}
objectives = {objectives}{devices}

[sampler]
{sampler}

[pruner]
{pruner}

[space]
backbone = {list(backbones)}
{lr}
loss = ["bce", "ce", "focal"]
input_size = ["64x64"]
batch_size = 8
epochs = {epochs}

[base.train]
patience = 0

[heartbeat]
interval = 1
grace_period = 3
max_retry = 1
""".replace("'", '"')
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def tiny_dataset(root: Path) -> Path:
    """24 one-second clips (16 train, 8 val, labels alternating) at `root`: a trial in seconds."""
    from tests.conftest import write_clip, write_labels

    for split, n in (("train", 16), ("val", 8)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0, freq=300 + 60 * i)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(16)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(8)])
    return root


CLI = [sys.executable, "-c", "from harness.cli import main; main()"]  # `harness` in a subprocess, this checkout first
