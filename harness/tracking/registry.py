"""The model registry and the promotion record: every MLflow call `harness submit` makes after refusing or
accepting a run, and the run lookup that `submit` and `predict` share.

- `find_run`: a run id, `best` or `last` -> the run; text that cannot be a run id is refused before
  MLflow sees it (it would otherwise name a folder under .cache/runs).
- `register_model`: a new version of a registered model from the run's checkpoint, alias `champion`.
- `record_promotion`: the submission's files logged under the run's `submission/` artifacts and the
  `promoted.*` tags set (keys from `harness.tracking.tags`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.errors import BadInput
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.store import RUN_ALIASES, get_run, resolve_run_id

SUBMISSION_ARTIFACTS = "submission"  # the run's artifact folder that holds what was submitted
MODEL_DESCRIPTION = "Deepfake detectors promoted by harness submit."
# What MLflow accepts as a run id (its own validation rule): letters, digits, '_' and '-'.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,255}")


def check_run_ref(ref: str) -> str:
    """`ref` when it can name a run (an id, `best` or `last`); else BadInput, one line."""
    if ref in RUN_ALIASES or _RUN_ID.fullmatch(ref):
        return ref
    raise BadInput(f"--run-id {ref!r} is not a run id (letters, digits, '-' and '_'), best or last")


def find_run(client: MlflowClient, ref: str) -> Any:
    """The run that `ref` (an id, `best` or `last`) names.

    Raises:
        BadInput: text that cannot be a run id.
        NotFound: no such run, or no finished run for `best` / `last`.
    """
    return get_run(client, resolve_run_id(client, check_run_ref(ref)))


def default_model_name(data_dir: Path) -> str:
    """`harness-<dataset folder name>`, reduced to the characters registry names allow."""
    return "harness-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data_dir).name).strip("-.") or "data")


def register_model(client: MlflowClient, run: Any, name: str, *, source: str | None = None) -> str:
    """A new version of registered model `name`, aliased `champion`; returns the version number as
    text. `source`: the logged pyfunc model (`tracking.pyfunc.log_pyfunc_model`); None: the run's
    checkpoint folder (not an MLflow model: nothing in MLflow's tooling can load it)."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            client.create_registered_model(name, description=MODEL_DESCRIPTION)
        except MlflowException as e:  # another process created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    auc = M.run_value(run.data.metrics, M.BEST_VAL_AUC)
    how = (f"Load it: `mlflow.pyfunc.load_model(\"models:/{name}@{T.CHAMPION}\")`, then `.predict` a DataFrame "
           "with a `path` column of clips; the scores are `harness predict`'s." if source else
           "The run's checkpoint folder (load it with `harness predict --run-id`).")
    description = (f"Run {run.info.run_name} ({run.info.run_id}), backbone {run.data.params.get('train.backbone', '?')}, "
                   f"best val AUC {'?' if auc is None else f'{auc:.4f}'}. {how}")
    version = client.create_model_version(
        name, source=source or f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id, description=description,
        tags={T.VERSION_BACKBONE: run.data.params.get("train.backbone", ""),
              T.VERSION_VAL_AUC: "" if auc is None else str(auc)},
    )
    client.set_registered_model_alias(name, T.CHAMPION, version.version)
    return str(version.version)


def record_promotion(
    client: MlflowClient, run_id: str, *, model: str, version: str, fallbacks: int, at: str, files: list[Path]
) -> None:
    """Log `files` under the run's `submission/` artifacts, then tag the run promoted (model/version,
    the number of fallback rows, when)."""
    for path in files:
        client.log_artifact(run_id, str(path), SUBMISSION_ARTIFACTS)
    client.set_tag(run_id, T.PROMOTED, "true")
    client.set_tag(run_id, T.PROMOTED_MODEL, f"{model}/{version}")
    client.set_tag(run_id, T.PROMOTED_FALLBACKS, str(fallbacks))
    client.set_tag(run_id, T.PROMOTED_AT, at)
