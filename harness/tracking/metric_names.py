"""Every MLflow metric name the harness writes. The run page sorts chart sections by the prefix before the
first `/` (unprefixed and `system/` last), so sections read top-down: `epoch/` (per-epoch curves of what is
learnt), `model/` (facts of the model), `summary/` (the run's result: `summary/best_val_auc`), `train/`
(per-epoch curves of the process), `cv/`, `fold/` (step = fold), `oof/` (a cross-validation's parent),
`trials/`, `best_trial/` (a study's parent), `pack/` (a pack's out-of-fold selection).
"""
from __future__ import annotations

from collections.abc import Mapping

EPOCH, MODEL, SUMMARY, TRAIN = "epoch/", "model/", "summary/", "train/"
TRIALS, BEST_TRIAL, FOLD, CV, OOF = "trials/", "best_trial/", "fold/", "cv/", "oof/"

_PROCESS = frozenset({"lr", "epoch_seconds", "samples_per_s"})  # of the training process, not the model: `train/`

BEST_VAL_AUC = SUMMARY + "best_val_auc"  # what `--run-id best` ranks by
BEST_EPOCH = SUMMARY + "best_epoch"
VAL_AUC_CI_LOW, VAL_AUC_CI_HIGH = SUMMARY + "val_auc_ci_low", SUMMARY + "val_auc_ci_high"

# A pack's out-of-fold estimates; the gate reads the nested gain over the best member.
PACK = "pack/"
PACK_OPTIMISTIC_AUC, PACK_NESTED_AUC = PACK + "oof_auc_optimistic", PACK + "oof_auc_nested"
PACK_NESTED_SINGLE_AUC = PACK + "oof_auc_nested_best_single"
PACK_GAIN, PACK_GAIN_LOW, PACK_GAIN_HIGH = PACK + "nested_gain", PACK + "nested_gain_low", PACK + "nested_gain_high"


def epoch_metric(key: str) -> str:
    """`val_auc` -> `epoch/val_auc`, `lr` -> `train/lr` (`harness.callbacks.EpochReport.metrics`)."""
    return (TRAIN if key in _PROCESS else EPOCH) + key


def model_metric(key: str) -> str:
    """`params` -> `model/params` (`info` of the engine's `on_start`)."""
    return MODEL + key


def summary_metric(key: str) -> str:
    """`best_val_auc` -> `summary/best_val_auc` (a run's result values)."""
    return SUMMARY + key


def cv_metric(key: str) -> str:
    """`cv_val_auc_mean` -> `cv/val_auc_mean`, `oof_auc` -> `oof/auc` (the flat names of `harness.crossval`)."""
    for flat, section in (("cv_", CV), ("oof_", OOF)):
        if key.startswith(flat):
            return section + key.removeprefix(flat)
    return key


def summary(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's `summary/` values under their flat names (`best_val_auc`, ...), as the bundle keeps them."""
    return dict(sorted((k.removeprefix(SUMMARY), v) for k, v in metrics.items() if k.startswith(SUMMARY)))
