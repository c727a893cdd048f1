"""The model registry and the promotion record: every MLflow call `harness submit` makes after judging a run.
A new version gets alias `champion` only when the gate says it earned it, else its description says why not
and how to move it on purpose (`set_champion`). A run is one version: submitting it again reuses its version
(`registered_version`, `reuse_version`). A version's description opens with the alias's story: "Not made the
champion" (why), or "Made the champion" (how, when) with an earlier "not made" paragraph kept below as history.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
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
NOT_MADE = "**Not made the champion**"  # opens the description of a version the gate withheld the alias from
MADE = "**Made the champion"  # opens the description once the alias was moved to it later (by hand or a resubmit)
# The paragraph `register_model` writes when the gate withheld the alias (older versions had no blank line after it).
_NOT_MADE_PARAGRAPH = re.compile(
    re.escape(NOT_MADE) + r": (?P<why>.*?)\. To make it the champion on purpose: `[^`]*`\.\s*(?P<rest>.*)", re.DOTALL)


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
        description = (f"{NOT_MADE}: {withheld}. To make it the champion on purpose: "
                       f"`harness champion {name} {version}`.\n\n{description}")
    client.update_model_version(name, version, description=description)
    return version


def registered_version(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of model `name` already registered from run `run_id`: the champion when it is one of them,
    else the newest; None when the run has none (or the model does not exist yet)."""
    # Filtered by run id only: a run id is plain letters and digits, a model name given with --model-name may not be.
    versions = [str(v.version) for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    if not versions:
        return None
    held = champion(client, name)
    return held[0] if held and held[0] in versions else max(versions, key=int)


def reuse_version(client: MlflowClient, name: str, version: str, *, withheld: str | None) -> tuple[str | None, bool]:
    """A run submitted again is its existing `version`, never a duplicate: the champion stays the champion; any other
    version gets the alias only when the gate earned it (`withheld` None), its description then saying so; the
    version's model stays the one first registered. Returns (the version `champion` names afterwards, whether moved)."""
    held = champion(client, name)
    if (held and held[0] == version) or withheld is not None:
        return (held[0] if held else None), False
    client.set_registered_model_alias(name, T.CHAMPION, version)
    _say_made_champion(client, name, version, f"{MADE}** by `harness submit` on {_now()}: the run was submitted again "
                                              "and the promotion gate found it better than the champion (or there was none).")
    return version, True


def set_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """Move alias `champion` of model `name` to `version` on purpose, its description then saying so; the version
    the alias left (None: none). NotFound: no such one."""
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise NotFound(f"no version {version!r} of registered model {name!r}") from None
    previous = champion(client, name)
    client.set_registered_model_alias(name, T.CHAMPION, version)
    if not (previous and previous[0] == version):  # already the champion: nothing happened worth a line
        _say_made_champion(client, name, version, f"{MADE} by hand** on {_now()} (`harness champion {name} {version}`).")
    return previous[0] if previous else None


def made_champion_description(description: str, line: str) -> str:
    """`description` opened by `line` (how and when the version was made the champion): an earlier such line is
    replaced; a "Not made the champion" paragraph stays below as history, reworded so it no longer reads as the
    alias's current state."""
    if description.startswith(MADE):
        description = description.partition("\n\n")[2]
    if (found := _NOT_MADE_PARAGRAPH.match(description)) is not None:
        description = f"When submitted, the promotion gate did not make it the champion: {found['why']}.\n\n{found['rest']}"
    return f"{line}\n\n{description}".rstrip("\n")


def _say_made_champion(client: MlflowClient, name: str, version: str, line: str) -> None:
    current = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=made_champion_description(current, line))


def _now() -> str:
    """UTC time to the second, as the promotion tags and the model card write it."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def record_promotion(client: MlflowClient, run_id: str, *, model: str, version: str, fallbacks: int, at: str,
                     files: list[Path]) -> None:
    """Log `files` under the run's `submission/` artifacts, then tag it promoted (model/version, fallbacks, when)."""
    for path in files:
        client.log_artifact(run_id, str(path), SUBMISSION_ARTIFACTS)
    tags = {T.PROMOTED: "true", T.PROMOTED_MODEL: f"{model}/{version}", T.PROMOTED_FALLBACKS: str(fallbacks), T.PROMOTED_AT: at}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
