"""The model registry and the promotion record: every MLflow call `harness submit` makes after judging a run.
A new version gets alias `champion` only when the gate says it earned it, else its description says why not
and how to move it on purpose (`set_champion`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.errors import NotFound
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.links import markdown_link, run_page
from harness.tracking.promotion_facts import champion

SUBMISSION_ARTIFACTS = "submission"  # the run's artifact folder that holds what was submitted
MODEL_DESCRIPTION = "Deepfake detectors promoted by harness submit."


def default_model_name(data_dir: Path) -> str:
    """`harness-<dataset folder name>`, reduced to the characters registry names allow."""
    return "harness-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data_dir).name).strip("-.") or "data")


def register_model(client: MlflowClient, run: Any, name: str, *, source: str | None = None, withheld: str | None = None,
                   interval: tuple[float, float] | None = None) -> str:
    """A new version of model `name` (its number as text) from `source`, the pyfunc model (None: the run's
    checkpoint folder); `withheld` None moves `champion` to it, else its description says why not."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            client.create_registered_model(name, description=MODEL_DESCRIPTION)
        except MlflowException as e:  # another process created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    auc = run.data.metrics.get(M.BEST_VAL_AUC)
    backbone = run.data.params.get("train.backbone", "")
    result = "?" if auc is None else f"{auc:.4f}" + (f" (95% interval {interval[0]:.4f} to {interval[1]:.4f})"
                                                     if interval else "")
    tags = {T.VERSION_BACKBONE: backbone, T.VERSION_VAL_AUC: "" if auc is None else f"{auc:.4f}"}
    version = str(client.create_model_version(name, source=source or f"{run.info.artifact_uri}/checkpoint",
                                              run_id=run.info.run_id, tags=tags).version)
    how = (f"Load it: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\")`, then `.predict` a DataFrame "
           "with a `path` column of clips; the scores are `harness predict`'s." if source else
           "The run's checkpoint folder (load it with `harness predict --run-id`).")
    run_link = markdown_link(f"run {run.info.run_name}", run_page(run.info.experiment_id, run.info.run_id))
    description = f"{run_link}, backbone {backbone or '?'}, best val AUC {result}. {how}"
    if withheld is None:
        client.set_registered_model_alias(name, T.CHAMPION, version)
    else:
        description = (f"**Not made the champion**: {withheld}. To make it the champion on purpose: "
                       f"`harness champion {name} {version}`. {description}")
    client.update_model_version(name, version, description=description)
    return version


def set_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """Move alias `champion` of model `name` to `version`; the version it left (None: none). NotFound: no such one."""
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise NotFound(f"no version {version!r} of registered model {name!r}") from None
    previous = champion(client, name)
    client.set_registered_model_alias(name, T.CHAMPION, version)
    return previous[0] if previous else None


def record_promotion(client: MlflowClient, run_id: str, *, model: str, version: str, fallbacks: int, at: str,
                     files: list[Path]) -> None:
    """Log `files` under the run's `submission/` artifacts, then tag it promoted (model/version, fallbacks, when)."""
    for path in files:
        client.log_artifact(run_id, str(path), SUBMISSION_ARTIFACTS)
    tags = {T.PROMOTED: "true", T.PROMOTED_MODEL: f"{model}/{version}", T.PROMOTED_FALLBACKS: str(fallbacks), T.PROMOTED_AT: at}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
