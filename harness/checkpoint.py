"""A run's checkpoint, the one home of its file names (the run's `checkpoint/` artifacts in MLflow):

    checkpoint/
      best.safetensors   the best epoch's weights (safetensors only: nothing unpickled)
      config.json        the run's settings (`harness.config.to_dict`): what predict and `--like` rebuild
      params.json        facts of the model and the run (`FitResult.info`)

A pack keeps `pack.safetensors` and `pack.json` (the member table) instead; a cross-validation only its
`config.json`. Light to import (torch only inside `save_weights`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import RunConfig, from_dict, to_dict
from harness.fileio import write_bytes, write_text

if TYPE_CHECKING:
    import torch

FOLDER = "checkpoint"
WEIGHTS = "best.safetensors"
SETTINGS = "config.json"
PARAMS = "params.json"
PACK_WEIGHTS = "pack.safetensors"
PACK_TABLE = "pack.json"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """safetensors, written atomically: never a half checkpoint. Serialised in memory first (800 MB at the
    200 M-parameter cap): `save_file` writes through a file of its own, which the atomic writer cannot fsync."""
    from safetensors.torch import save

    write_bytes(path, save({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}))


def write_settings(folder: Path, config: RunConfig, info: dict[str, Any] | None = None) -> None:
    """`config.json` (and `params.json` when `info` is given) in `folder`, created when missing."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / SETTINGS, json.dumps(to_dict(config), indent=2))
    if info is not None:
        write_text(folder / PARAMS, json.dumps(info, indent=2, default=str))


def read_settings(path: Path, *, where: str) -> RunConfig:
    """The settings in a `config.json`; `where` names it in a refusal (ConfigError, one line)."""
    return from_dict(RunConfig, json.loads(Path(path).read_text()), where=where)
