"""Every tag key the harness writes on MLflow runs, and the status contract, in one place.

Status contract (what a run's MLflow status means, and the tag that says why):

| status   | tag                    | meaning                                                     |
|----------|------------------------|-------------------------------------------------------------|
| FINISHED |                        | trained to the end (or early-stopped); has a checkpoint      |
| KILLED   | `pruned_at_epoch`      | a pruner stopped the trial at that epoch                     |
| KILLED   | `pruned_at_fold`       | a pruner stopped a cross-validated trial after that fold     |
| KILLED   | `orphaned=true`        | its process died (kill -9, crash); closed by a later command |
| KILLED   |                        | interrupted (Ctrl-C, SIGTERM)                                |
| FAILED   | `error`                | the error, one line                                          |

Older runs wrote the same keys, so nothing is migrated.
"""
from __future__ import annotations

# ---- the status contract
FINISHED, KILLED, FAILED, RUNNING = "FINISHED", "KILLED", "FAILED", "RUNNING"
ERROR = "error"  # FAILED: the error message, one line
PRUNED_AT_EPOCH = "pruned_at_epoch"  # KILLED by a pruner
PRUNED_AT_FOLD = "pruned_at_fold"  # a cross-validated trial KILLED by a pruner after that fold (0-based)
ORPHANED = "orphaned"  # "true": KILLED by a later command because its process was gone
STOPPED_BY = "stopped_by"  # "early stopping" or a pruner's reason (FINISHED or KILLED)

# ---- provenance, on every training run
GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
DATA_PATH = "data.path"
DATA_FINGERPRINT = "data.fingerprint"
HOST = "harness.host"  # the machine and process that own a RUNNING run (orphan detection)
PID = "harness.pid"
KIND = "harness.kind"  # "study", "audit", ... (absent on plain training runs)
VERSION_PREFIX = "version."  # version.<package>: the installed version of each package that shapes results
BEST_WEIGHTS = "best.weights"  # "raw" or "ema": which weights the checkpoint holds (train.ema_decay > 0)

# ---- MLflow's own system tags that the harness sets
MLFLOW_PARENT = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_NOTE = "mlflow.note.content"  # the run's description in the UI

# ---- studies (parent runs) and trials (child runs)
STUDY = "harness.study"
STUDY_STORAGE = "harness.study_storage"
SPACE_HASH = "harness.space_hash"
TRIALS_TARGET = "harness.trials_target"
BEST_TRIAL_NUMBER = "best.trial_number"
BEST_RUN_ID = "best.run_id"
OPTUNA_STUDY = "optuna.study"
OPTUNA_TRIAL_NUMBER = "optuna.trial_number"
OPTUNA_STATE = "optuna.state"  # RUNNING | COMPLETE | PRUNED | FAIL, agreeing with the run status
OPTUNA_RETRY_OF = "optuna.retry_of"  # the number of the stale trial this trial re-runs
BEST_PARAM_PREFIX = "best."  # parent run: best.<dimension> = the best trial's value of it
STUDY_KIND = "study"  # the value of KIND on a study's parent run
BEST_CHILD = "best"  # "true" on the study's best trial run only (moved when the best changes)
PRUNED_BY = "pruned_by"  # KILLED by a pruner: which one ("median pruner")

# ---- promotion (harness submit)
PROMOTED = "promoted"
PROMOTED_MODEL = "promoted.model"
PROMOTED_FALLBACKS = "promoted.fallbacks"
PROMOTED_AT = "promoted.at"

# ---- the registry
CHAMPION = "champion"  # the alias `submit` moves to the newest promoted version
VERSION_BACKBONE = "backbone"  # tags on a registered model version
VERSION_VAL_AUC = "val_auc"


def why_not_finished(status: str, tags: dict[str, str]) -> str | None:
    """Why a run cannot be used as a finished model, in words; None when it is FINISHED."""
    if status == FINISHED:
        return None
    if status == KILLED and PRUNED_AT_EPOCH in tags:
        return f"was pruned at epoch {tags[PRUNED_AT_EPOCH]}"
    if status == KILLED and PRUNED_AT_FOLD in tags:
        return f"was pruned after fold {tags[PRUNED_AT_FOLD]}"
    if status == KILLED:
        return "was orphaned by a crashed process" if tags.get(ORPHANED) == "true" else "was interrupted"
    if status == FAILED:
        return f"failed: {tags.get(ERROR, 'no error recorded')}"
    return f"has not finished (status {status})"


# ---- audits (harness audit): KIND is AUDIT_KIND; DATA_PATH and DATA_FINGERPRINT name the dataset
AUDIT_KIND = "audit"  # the value of KIND on an audit run
AUDIT_DATASET_ID = "audit.dataset_id"  # the cache's dataset id (folder name + path hash)
AUDIT_FINDINGS = "audit.findings"  # how many findings, as text ("0" when clean)
AUDIT_DIR = "audit.dir"  # the folder holding audit.json, table.csv, duplicates.csv and plots/


# ---- grouped cross-validation (harness train --folds K): a parent run, KIND=CV_KIND, one child per fold
CV_KIND = "cv"  # the value of KIND on a cross-validation parent run
CV_FOLDS = "cv.folds"  # K, on the parent and on every fold's run
CV_FOLD = "cv.fold"  # the fold a child run validated on (0..K-1)
CV_GROUP_BY = "cv.group_by"  # auto | none | the group file
CV_GROUPS = "cv.groups"  # how many groups the pooled clips formed
