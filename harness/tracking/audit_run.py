"""The MLflow run of one `harness audit`: tag `harness.kind=audit`, the headline numbers as metrics,
the settings as params, the findings as the run's description, and the audit folder as artifacts.

Plain values in (no audit types), so that tracking stays downstream of everything it records.
The run ends FINISHED once everything is logged; FAILED (with an `error` tag) or KILLED (Ctrl-C)
if logging breaks off, so no audit run is left RUNNING.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from harness import paths
from harness.tracking import tags as T
from harness.tracking.store import get_or_create_experiment, git_state, package_versions, setup


def record_audit(
    out_dir: Path,
    *,
    experiment: str,
    dataset_path: str,
    dataset_fingerprint: str,
    dataset_id: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    findings: list[str],
    run_name: str | None = None,
) -> str:
    """Record an audit as a FINISHED MLflow run in `experiment`; return its run id.

    Args:
        out_dir: the audit folder, logged whole as the run's artifacts.
        experiment: MLflow experiment name (created when missing).
        dataset_path, dataset_fingerprint, dataset_id: which data was audited (tags).
        metrics: headline numbers (finite ones are logged).
        params: the audit's settings, flat.
        findings: one line each; they become the run's description.
        run_name: the run's name; MLflow makes one up when None.
    """
    client = setup()
    experiment_id = get_or_create_experiment(client, experiment)
    tags = {**git_state(paths.project_root()), **package_versions()}
    if tags[T.GIT_COMMIT] != "unknown":
        tags[T.MLFLOW_GIT_COMMIT] = tags[T.GIT_COMMIT]
    note = "\n".join(f"- {line}" for line in findings) if findings else "No findings."
    tags.update({
        T.KIND: T.AUDIT_KIND, T.DATA_PATH: dataset_path, T.DATA_FINGERPRINT: dataset_fingerprint,
        T.AUDIT_DATASET_ID: dataset_id, T.AUDIT_FINDINGS: str(len(findings)), T.AUDIT_DIR: str(out_dir),
        T.MLFLOW_NOTE: note,
    })
    run = client.create_run(experiment_id, tags={k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()},
                            run_name=run_name)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)],
            params=[Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()],
        )
        client.log_artifacts(run_id, str(out_dir))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            client.set_terminated(run_id, status=T.KILLED)
        else:
            client.log_batch(run_id, tags=[RunTag(T.ERROR, f"{type(exc).__name__}: {exc}"[:500])])
            client.set_terminated(run_id, status=T.FAILED)
        raise
    client.set_terminated(run_id, status=T.FINISHED)
    return run_id
