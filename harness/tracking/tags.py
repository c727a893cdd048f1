"""Every tag key the harness writes on MLflow runs, the kinds of run, and the status contract, in one place.

Every run is opened and ended by `lifecycle` and carries `harness.kind` and the same provenance: `train` (a
model on the official split), `fold` (one fold of a cross-validation, a model; parent: its `cv`), `cv` (no
model of its own; parent: none or a study), `study` (reopened by each `harness tune`), `trial` (a model;
parent: its `study`; a cross-validated trial is a `cv` run with `optuna.*` tags), `audit`, `pack`.

Status contract: FINISHED, it ran to the end (a model: trained or early-stopped); KILLED with
`pruned_at_epoch` or `pruned_at_fold`, a pruner stopped the trial at that epoch or after that fold (1-based);
KILLED with `orphaned=true`, its process died and a later command closed it; KILLED alone, interrupted
(Ctrl-C, SIGTERM); FAILED with `error`, the error in one line (`lifecycle.error_line`).
"""
from __future__ import annotations

from harness.provenance import GIT_COMMIT, GIT_DIRTY, VERSION_PREFIX  # noqa: F401 - provenance keys, named here too

# ---- the status contract
FINISHED, KILLED, FAILED, RUNNING = "FINISHED", "KILLED", "FAILED", "RUNNING"
ERROR = "error"  # FAILED: the error message, one line
PRUNED_AT_EPOCH = "pruned_at_epoch"  # KILLED by a pruner
PRUNED_AT_FOLD = "pruned_at_fold"  # a cross-validated trial KILLED by a pruner after that fold (1-based)
ORPHANED = "orphaned"  # "true": KILLED by a later command because its process was gone
STOPPED_BY = "stopped_by"  # "early stopping" or a pruner's reason (FINISHED or KILLED)

# ---- provenance, on every run
DATA_PATH, DATA_FINGERPRINT = "data.path", "data.fingerprint"
HOST, PID = "harness.host", "harness.pid"  # the machine and process that own a RUNNING run (orphan detection)
PID_SINCE = "harness.pid_since"  # ms since the epoch when PID took the run over (a reopened study parent)
KIND = "harness.kind"  # one of KINDS
BEST_WEIGHTS = "best.weights"  # "raw" or "ema": which weights the checkpoint holds (train.ema_decay > 0)

# ---- MLflow's own system tags that the harness sets
MLFLOW_PARENT, MLFLOW_GIT_COMMIT, MLFLOW_RUN_NAME = "mlflow.parentRunId", "mlflow.source.git.commit", "mlflow.runName"
MLFLOW_NOTE = "mlflow.note.content"  # the run's description in the UI

# ---- studies (parent runs) and trials (child runs)
STUDY, STUDY_STORAGE = "harness.study", "harness.study_storage"
SPACE_HASH, TRIALS_TARGET = "harness.space_hash", "harness.trials_target"
BEST_TRIAL_NUMBER, BEST_RUN_ID = "best.trial_number", "best.run_id"
OPTUNA_STUDY, OPTUNA_TRIAL_NUMBER = "optuna.study", "optuna.trial_number"
OPTUNA_STATE = "optuna.state"  # RUNNING | COMPLETE | PRUNED | FAIL, agreeing with the run status
OPTUNA_RETRY_OF = "optuna.retry_of"  # the number of the stale trial this trial re-runs
BEST_PARAM_PREFIX = "best."  # parent run: best.<dimension> = the best trial's value of it
BEST_CHILD = "best"  # "true" on the study's best trial run only (moved when the best changes)
PRUNED_BY = "pruned_by"  # KILLED by a pruner: which one ("median pruner")

# ---- the kinds of run (the values of KIND)
TRAIN_KIND, FOLD_KIND, CV_KIND, STUDY_KIND, TRIAL_KIND, AUDIT_KIND, PACK_KIND = (
    "train", "fold", "cv", "study", "trial", "audit", "pack")
KINDS = (TRAIN_KIND, FOLD_KIND, CV_KIND, STUDY_KIND, TRIAL_KIND, AUDIT_KIND, PACK_KIND)
SETTINGS_DIGEST = "settings.digest"  # `config.settings_digest`: a pack reuses a train run of the same settings and data

# ---- promotion (harness submit) and the registry
PROMOTED, PROMOTED_MODEL, PROMOTED_FALLBACKS, PROMOTED_AT = "promoted", "promoted.model", "promoted.fallbacks", "promoted.at"
CHAMPION = "champion"  # the alias `submit` moves to the newest promoted version
VERSION_BACKBONE, VERSION_VAL_AUC = "backbone", "val_auc"  # tags on a registered model version


# ---- audits (harness audit): KIND is AUDIT_KIND; DATA_PATH and DATA_FINGERPRINT name the dataset
AUDIT_DATASET_ID = "audit.dataset_id"  # the cache's dataset id (folder name + path hash)
AUDIT_FINDINGS = "audit.findings"  # how many findings, as text ("0" when clean)
AUDIT_DIR = "audit.dir"  # the folder holding audit.json, table.csv, duplicates.csv and plots/
AUDIT_RECORD = "audit.record"  # the queued record the run was made from (`audit_run`): recorded once

# ---- grouped cross-validation (harness train --folds K): a parent run, KIND=CV_KIND, one child per fold
CV_FOLDS = "cv.folds"  # K, on the parent and on every fold's run
CV_FOLD = "cv.fold"  # the fold a child run validated on (1..K, as the terminal numbers them)
CV_GROUP_BY = "cv.group_by"  # auto | none | the group file
CV_GROUPS = "cv.groups"  # how many groups the pooled clips formed

# ---- packs (harness pack): KIND=PACK_KIND; each member a train run (its settings from a cv candidate)
PACK_MEMBERS = "pack.members"  # member train run ids, comma separated, in the member table's order
PACK_CANDIDATES = "pack.candidates"  # the cv runs selection chose from, comma separated
PACK_BETTER = "pack.better"  # "true" when the nested pack beat the nested best member distinguishably


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
