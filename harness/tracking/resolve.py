"""The one door to a recorded run (`harness train --like`, `submit`, `predict`): `resolve_run` turns an id,
`best` or `last` into the run, its settings and, when asked, its weights (downloaded once into
`.cache/runs/<run id>`). A cross-validation gives its settings but is refused as a model, saying what to do.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from harness import checkpoint as ckpt
from harness import paths
from harness.config import RunConfig
from harness.errors import BadInput, NotFound
from harness.fileio import remove_stale_temporaries, temp_name
from harness.tracking import tags as T
from harness.tracking.store import RUN_ALIASES, get_run, resolve_run_id

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,255}")  # what MLflow's own validation accepts as a run id


@dataclass(frozen=True)
class RecordedRun:
    """A recorded run as `resolve_run` finds it: the MLflow run, its settings and its weights."""

    run: Any  # mlflow.entities.Run
    config: RunConfig
    weights: Path | None  # the best epoch's safetensors (a pack's: pack.safetensors), downloaded; None when not asked for
    pack: bool = False  # a pack (harness.kind=pack): `config` is its first member's, pack.json lies beside `weights`

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def resolve_run(client: MlflowClient, ref: str, *, weights: bool = True,
                check: Callable[[Any], None] | None = None) -> RecordedRun:
    """`ref` as a recorded run with its settings and, with `weights`, its checkpoint (downloaded once: artifacts never
    change after a run ends); `check` sees the run first. NotFound: no such run or checkpoint, or a cross-validation."""
    run = get_run(client, resolve_run_id(client, check_run_ref(ref)))
    run_id = run.info.run_id
    if check is not None:
        check(run)
    cv = run.data.tags.get(T.KIND) == T.CV_KIND  # its folds hold the models, each trained on part of the data
    if cv and weights:
        raise NotFound(f"run {run_id} is a cross-validation (harness.kind=cv) with no model of its own: train its "
                       "settings on the official split (`harness train --like RUN`) and use that run")
    folder = None if cv else ckpt.FOLDER
    names = {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
    if run.data.tags.get(T.KIND) == T.PACK_KIND:
        return _pack(client, run, names, weights)
    if ckpt.SETTINGS not in names or (weights and ckpt.WEIGHTS not in names):
        raise NotFound(f"run {run_id} has no checkpoint (it ended before its first validated epoch)")
    settings = f"{folder}/{ckpt.SETTINGS}" if folder else ckpt.SETTINGS
    if weights:
        local = _download_checkpoint(client, run_id)
        return RecordedRun(run, ckpt.read_settings(local / ckpt.SETTINGS, where=f"run {run_id} {settings}"),
                           local / ckpt.WEIGHTS)
    with tempfile.TemporaryDirectory(prefix="harness-settings-") as tmp:
        local = Path(client.download_artifacts(run_id, settings, tmp))
        return RecordedRun(run, ckpt.read_settings(local, where=f"run {run_id} {settings}"), None)


def _pack(client: MlflowClient, run: Any, names: set[str], weights: bool) -> RecordedRun:
    from harness.pack.model import read_members

    run_id = run.info.run_id
    if not weights:
        raise NotFound(f"run {run_id} is a pack of several models (harness.kind=pack): start from one of its members "
                       f"({run.data.tags.get(T.PACK_MEMBERS, '')})")
    if not {ckpt.PACK_TABLE, ckpt.PACK_WEIGHTS} <= names:
        raise NotFound(f"run {run_id} has no {ckpt.FOLDER}/{ckpt.PACK_TABLE} and {ckpt.PACK_WEIGHTS} (an unfinished pack)")
    local = _download_checkpoint(client, run_id)
    return RecordedRun(run, read_members(local)[0].config, local / ckpt.PACK_WEIGHTS, pack=True)


def _download_checkpoint(client: MlflowClient, run_id: str) -> Path:
    """Download into a staging folder (`fileio.temp_name`) renamed into place: never a half-filled cache entry."""
    final = paths.project_root() / ".cache" / "runs" / run_id
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent, recursive=False)
        staging = temp_name(final)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            client.download_artifacts(run_id, ckpt.FOLDER, str(staging))
            # Not a replace: a concurrent download that finished first keeps its folder (a reader may hold it).
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # anything but losing a race with another download
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final / ckpt.FOLDER


def check_run_ref(ref: str) -> str:
    """`ref` when it can name a run (an id, `best` or `last`); else BadInput (it would name a folder in .cache/runs)."""
    if ref in RUN_ALIASES or _RUN_ID.fullmatch(ref):
        return ref
    raise BadInput(f"--run-id {ref!r} is not a run id (letters, digits, '-' and '_'), best or last")
