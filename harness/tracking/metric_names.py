"""Every MLflow metric name the harness writes, and the one mapping from the older flat names.

The MLflow run page groups charts into sections by the prefix before the first `/`, orders the
prefixed sections alphabetically and puts unprefixed metrics ("Model metrics") and `system/` last.
So the names are chosen for the order a reader wants, top-down:

| section     | what                                   | examples                                  | older name       |
|-------------|----------------------------------------|-------------------------------------------|------------------|
| `epoch/`    | per-epoch curves of what is learnt     | `epoch/val_auc`, `epoch/train_loss`        | `val_auc`, ...   |
| `model/`    | facts of the model (numbers)           | `model/params`, `model/macs`               | `info.params`    |
| `summary/`  | the run's result (best epoch, interval)| `summary/best_val_auc`, `summary/best_epoch` | `best_val_auc` |
| `train/`    | per-epoch curves of the process        | `train/lr`, `train/epoch_seconds`          | `lr`, ...        |
| `trials/`, `best_trial/` | a study's parent run      | `trials/complete`, `best_trial/val_auc`    | `trials_complete`, `best_trial_val_auc` |

Older runs keep their names (nothing is migrated): every reader goes through `run_value`, `summary`
or `BEST_VAL_AUC_NAMES`, which accept both.
"""
from __future__ import annotations

from collections.abc import Mapping

EPOCH = "epoch/"
MODEL = "model/"
SUMMARY = "summary/"
TRAIN = "train/"
TRIALS = "trials/"
BEST_TRIAL = "best_trial/"

_LEGACY_MODEL = "info."
# Per-epoch values that describe the training process rather than the model's quality: their own
# section after the summary, so the first section holds the loss and the validation curves.
_PROCESS = frozenset({"lr", "epoch_seconds", "samples_per_s"})

BEST_VAL_AUC = SUMMARY + "best_val_auc"
BEST_EPOCH = SUMMARY + "best_epoch"
VAL_AUC_CI_LOW = SUMMARY + "val_auc_ci_low"
VAL_AUC_CI_HIGH = SUMMARY + "val_auc_ci_high"
# The metric `--run-id best` ranks by, newest name first; older runs carry the second.
BEST_VAL_AUC_NAMES = (BEST_VAL_AUC, "best_val_auc")


def epoch_metric(key: str) -> str:
    """The name of a per-epoch value of `harness.callbacks.EpochReport.metrics`.

    >>> epoch_metric("val_auc"), epoch_metric("lr")
    ('epoch/val_auc', 'train/lr')
    """
    return (TRAIN if key in _PROCESS else EPOCH) + key


def model_metric(key: str) -> str:
    """The name of a numeric model fact (`info` of the engine's `on_start`).

    >>> model_metric("params")
    'model/params'
    """
    return MODEL + key


def summary_metric(key: str) -> str:
    """The name of a result value (`best_val_auc`, `best_epoch`, `val_auc_ci_low`, ...).

    >>> summary_metric("best_val_auc")
    'summary/best_val_auc'
    """
    return SUMMARY + key


def legacy_name(name: str) -> str:
    """The flat name an older run used for `name` (names without a known prefix pass through).

    >>> legacy_name("epoch/val_auc"), legacy_name("model/macs"), legacy_name("best_trial/val_auc")
    ('val_auc', 'info.macs', 'best_trial_val_auc')
    """
    for prefix in (EPOCH, TRAIN, SUMMARY):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    if name.startswith(MODEL):
        return _LEGACY_MODEL + name.removeprefix(MODEL)
    if name.startswith(TRIALS):
        return "trials_" + name.removeprefix(TRIALS) if name != TRIALS + "epochs_trained" else "epochs_trained"
    if name.startswith(BEST_TRIAL):
        return "best_trial_" + name.removeprefix(BEST_TRIAL)
    return name


def run_value(metrics: Mapping[str, float], name: str) -> float | None:
    """A run's value of metric `name` (a current name), read under its older name when the run is older.

    >>> run_value({"best_val_auc": 0.9}, BEST_VAL_AUC), run_value({}, BEST_VAL_AUC)
    (0.9, None)
    """
    if name in metrics:
        return metrics[name]
    return metrics.get(legacy_name(name))


def summary(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's result values under their flat names (`best_val_auc`, `best_epoch`, `val_auc_ci_low`,
    ...), from a run of either naming: the form the bundle and the model card keep.

    >>> summary({"summary/best_val_auc": 0.9, "epoch/val_auc": 0.8, "val_auc_ci_low": 0.7})
    {'best_val_auc': 0.9, 'val_auc_ci_low': 0.7}
    """
    out = {k: v for k, v in metrics.items() if (k.startswith("best_") or "_ci_" in k) and "/" not in k}
    out.update({k.removeprefix(SUMMARY): v for k, v in metrics.items() if k.startswith(SUMMARY)})
    return dict(sorted(out.items()))
