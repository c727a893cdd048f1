"""Grouped K-fold cross-validation: `harness train --folds K [--group-by auto|none|FILE]`.

The labelled clips (train + val) are pooled and dealt into K folds, stratified by label and grouped
(`harness.data.folds`); each fold trains one ordinary run (`harness.run.train_run`, the same gates,
recorder and checkpoint) under a parent run (`harness.tracking.cv_runs`). The parent gets:

- `cv_val_auc_mean`, `cv_val_auc_std` and `cv_val_tpr_fpr1e-3_mean`, `..._std` over the folds' best
  epochs (std over folds, ddof 0 as sklearn's `cross_val_score(...).std()` users expect);
- `oof_auc` with `oof_auc_ci_low` / `oof_auc_ci_high` (percentile bootstrap over clips) and
  `oof_tpr_fpr1e-3`: every clip scored once, by the fold model that never saw it;
- `oof.csv` (`video_name,target,score,fold,split`) and `folds.csv` (each clip's group and fold);
- the low-FPR analysis of the out-of-fold scores (`harness.analysis`): `oof_tpr_fpr1e-3_ci_low` /
  `_ci_high` (and 1e-2), and `analysis/` with the most confidently wrong clips and their thumbnails.

Groups (`group_by`): `auto` joins the audit's near-duplicates (identical files, re-encoded copies;
computed through the audit's table cache when missing), `none` leaves every clip alone, a file maps
`video_name,group` (a speaker, a source video). A group never straddles folds.

Why not trust one val split: the folds' spread shows how much a score moves with the clips it is
measured on, and the out-of-fold AUC is measured on K times more clips than one split.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.callbacks import Callback
from harness.config import AudioFeatures, RunConfig, check_track, flat, to_dict
from harness.data.dataset import SplitArrays, load_arrays
from harness.data.folds import assign_folds, group_ids, pool, read_group_file, subset
from harness.data.labels import Dataset, DatasetError, load_dataset
from harness.errors import BadInput
from harness.fileio import csv_text, write_text
from harness.run import RunResult, check_names, data_fingerprint, features_for, readable_run_name, train_run

GROUP_BY_CHOICES = ("auto", "none")


@dataclass
class CrossValResult:
    """What a cross-validation did: the parent run, each fold's run, the summary numbers."""

    run_id: str
    run_name: str
    status: str
    folds: list[RunResult] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    groups: int = 0
    clips: int = 0
    pruned_after_fold: int | None = None  # set when `after_fold` stopped the CV


@dataclass(frozen=True)
class FoldPlan:
    """The pooled clips and where each goes."""

    data: SplitArrays
    keys: list[str]  # split/name per pooled clip
    groups: np.ndarray  # (N,) group id per clip
    folds: np.ndarray  # (N,) fold per clip

    def split(self, fold: int) -> tuple[SplitArrays, SplitArrays]:
        """(train, val) of `fold`: val is the fold, train every other."""
        return subset(self.data, np.flatnonzero(self.folds != fold)), subset(self.data, np.flatnonzero(self.folds == fold))


def check_group_by(group_by: str) -> str | Path:
    """`auto`, `none` or an existing file; BadInput otherwise (before any feature work)."""
    if group_by in GROUP_BY_CHOICES:
        return group_by
    path = Path(group_by)
    if not path.is_file():
        raise BadInput(f"--group-by {group_by!r}: not auto, none or an existing video_name,group file")
    return path


def clip_groups(ds: Dataset, group_by: str | Path, *, cache_root: Path, workers: int = 2) -> dict[str, object] | None:
    """The group of each clip (`split/name` or bare name -> group) by `group_by`; None: every clip alone."""
    if group_by == "none":
        return None
    if group_by == "auto":
        from harness.audit import dataset_groups

        return dict(dataset_groups(ds, cache_root=cache_root, workers=workers))
    return dict(read_group_file(Path(group_by)))


def plan_folds(features: dict[str, Path], groups: dict[str, object] | None, k: int, *, seed: int,
               audio: AudioFeatures | None = None) -> FoldPlan:
    """Pool the usable train and val clips of the feature folders and deal them into `k` folds
    (`audio`: the audio settings, which say how windows are cut when the cache holds whole log-mels).
    Training draws of a pooled clip read its codec variants where its split has them (train)."""
    data, keys = pool({split: load_arrays(features, split, features=audio) for split in ("train", "val")})
    if not len(data):
        raise DatasetError(next(iter(features.values())), "no usable labelled clips to cross-validate on")
    ids = group_ids(keys, groups)
    return FoldPlan(data=data, keys=keys, groups=ids, folds=assign_folds(data.labels, ids, k, seed=seed))


def cross_validate(
    cfg: RunConfig,
    *,
    data_dir: Path,
    experiment: str,
    cache_root: Path,
    folds: int,
    group_by: str = "auto",
    run_name: str | None = None,
    callbacks_for: Callable[[int], Sequence[Callback]] = lambda fold: (),
    workers: int = 2,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    after_fold: Callable[[int, list[dict[str, float]]], bool] | None = None,
) -> CrossValResult:
    """Train one run per fold under a parent run and record the CV summary on the parent.

    Args:
        cfg: the settings every fold trains with (the fold seed is `cfg.train.seed`, also the folds' shuffle).
        data_dir: the dataset; its train and val clips are pooled.
        experiment: MLflow experiment name.
        cache_root: the feature cache (and the audit's table cache for `group_by="auto"`).
        folds: K, at least 2.
        group_by: `auto`, `none` or a `video_name,group` file.
        run_name: the parent's name (None: a readable one ending `-cvK`); folds are `<name>-foldI`.
        callbacks_for: extra engine callbacks for fold I (the CLI's epoch table).
        workers: processes for features and the audit table.
        parent_run_id: nest the CV run under this run (a study's parent: study -> trial -> fold).
        tags: more tags for the CV run (a study's trial tags).
        after_fold: called after each finished fold with the fold number and every finished fold's
            best metrics so far; True stops the CV there (a pruner): the CV run ends KILLED with
            `pruned_at_fold`, and the result's status says KILLED.

    Raises:
        BadInput: a bad `group_by` or fold count, or data that cannot make K folds (before any run).
        Whatever a fold raises, after the parent is closed FAILED (KILLED on Ctrl-C).
    """
    from harness import tracking
    from harness.analysis import split_thumbnails, write_low_fpr_analysis
    from harness.metrics import bootstrap_auc_interval, classification_metrics

    how = check_group_by(group_by)
    ds = load_dataset(data_dir)
    check_track(ds.track, cfg.modality, where=ds.root)
    check_names(cfg)
    features = features_for(ds, cfg, cache_root, workers=workers)
    plan = plan_folds(features, clip_groups(ds, how, cache_root=cache_root, workers=workers), folds, seed=cfg.train.seed,
                      audio=cfg.features)
    T = tracking.tags
    n_groups = len(np.unique(plan.groups))
    parent = _cv_parent(cfg, ds, experiment, run_name or f"{readable_run_name(cfg)}-cv{folds}", folds, str(group_by), n_groups,
                        parent_run_id=parent_run_id, tags=tags)
    result = CrossValResult(run_id=parent.run_id, run_name=parent.run_name, status=T.RUNNING, groups=n_groups, clips=len(plan.keys))
    scores = np.full(len(plan.keys), np.nan)
    try:
        for fold in range(folds):
            run = train_run(cfg, data_dir=data_dir, experiment=experiment, cache_root=cache_root,
                            run_name=f"{parent.run_name}-fold{fold}", parent_run_id=parent.run_id,
                            callbacks=callbacks_for(fold), splits=lambda _features, f=fold: plan.split(f),
                            tags={T.CV_FOLD: str(fold), T.CV_FOLDS: str(folds)})
            result.folds.append(run)
            if run.status != T.FINISHED or run.fit is None:
                raise _FoldStopped(fold, run.status)
            scores[plan.folds == fold] = run.fit.val_scores  # subset keeps the pooled order within a fold
            parent.log_fold(fold, {k: run.fit.best_metrics.get(f"val_{k}", math.nan) for k in ("auc", "tpr_fpr1e-3")})
            if after_fold is not None and fold < folds - 1 and after_fold(fold, [r.fit.best_metrics for r in result.folds if r.fit]):
                parent.finish(T.KILLED, tags={T.PRUNED_AT_FOLD: str(fold)})
                result.status, result.pruned_after_fold = T.KILLED, fold
                return result
    except _FoldStopped as stop:
        parent.finish(stop.status, error=f"fold {stop.fold} ended {stop.status}")
        result.status = stop.status
        return result
    except KeyboardInterrupt:
        parent.finish(T.KILLED)
        raise
    except BaseException as e:
        parent.finish(T.FAILED, error=f"fold {len(result.folds)}: {type(e).__name__}: {e}")
        raise
    try:
        labels = plan.data.labels
        result.metrics = cv_summary([r.fit.best_metrics for r in result.folds if r.fit is not None])
        oof = classification_metrics(labels, scores)
        result.metrics.update({"oof_auc": oof["auc"], "oof_tpr_fpr1e-3": oof["tpr_fpr1e-3"],
                               "oof_tpr_fpr1e-2": oof["tpr_fpr1e-2"]})
        result.metrics["oof_auc_ci_low"], result.metrics["oof_auc_ci_high"] = bootstrap_auc_interval(labels, scores)
        with tempfile.TemporaryDirectory(prefix="harness-cv-") as tmp:
            write_oof(Path(tmp), plan, scores)
            found = write_low_fpr_analysis(Path(tmp) / "analysis", plan.data.names, labels, scores, prefix="oof_",
                                           thumbnails=split_thumbnails(plan.data), title=f"{parent.run_name} out-of-fold")
            result.metrics.update({k: v for k, v in found.items() if "_ci_" in k})
            parent.finish(T.FINISHED, metrics=result.metrics, artifacts=Path(tmp))
    except BaseException as e:
        parent.finish(T.KILLED if isinstance(e, KeyboardInterrupt) else T.FAILED, error=f"{type(e).__name__}: {e}")
        raise
    result.status = T.FINISHED
    return result


class _FoldStopped(Exception):
    """A fold ended without finishing (pruned or stopped): the CV stops there."""

    def __init__(self, fold: int, status: str) -> None:
        super().__init__(f"fold {fold} ended {status}")
        self.fold, self.status = fold, status


def cv_summary(best_metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """`cv_val_<m>_mean` and `_std` (ddof 0) over the folds' best-epoch metrics, for AUC and TPR@1e-3.

    Example:
        >>> cv_summary([{"val_auc": 0.8, "val_tpr_fpr1e-3": 0.1}, {"val_auc": 0.6, "val_tpr_fpr1e-3": 0.3}])["cv_val_auc_std"]
        0.1
    """
    out = {}
    for name in ("val_auc", "val_tpr_fpr1e-3"):
        values = np.array([m.get(name, math.nan) for m in best_metrics], dtype=float)
        out[f"cv_{name}_mean"] = float(np.mean(values)) if len(values) else math.nan
        out[f"cv_{name}_std"] = round(float(np.std(values)), 12) if len(values) else math.nan
    out["cv_folds_finished"] = float(len(best_metrics))
    return out


def write_oof(folder: Path, plan: FoldPlan, scores: np.ndarray) -> None:
    """oof.csv (video_name,target,score,fold,split) and folds.csv (video_name,split,group,fold) in `folder`."""
    split_of = [k.split("/", 1)[0] for k in plan.keys]
    rows = [(n, int(t), f"{s:.6f}", int(f), sp)
            for n, t, s, f, sp in zip(plan.data.names, plan.data.labels, scores, plan.folds, split_of)]
    write_text(folder / "oof.csv", csv_text(("video_name", "target", "score", "fold", "split"), rows))
    groups = [(n, sp, int(g), int(f)) for n, sp, g, f in zip(plan.data.names, split_of, plan.groups, plan.folds)]
    write_text(folder / "folds.csv", csv_text(("video_name", "split", "group", "fold"), groups))


def _cv_parent(cfg: RunConfig, ds: Dataset, experiment: str, name: str, folds: int, group_by: str, groups: int, *,
               parent_run_id: str | None, tags: dict[str, str] | None):
    from harness.tracking import tags as T
    from harness.tracking.cv_runs import CvParent

    params = {**flat(cfg), "cv.folds": folds, "cv.group_by": group_by}
    run_tags = {**(tags or {}), T.DATA_PATH: str(ds.root), T.DATA_FINGERPRINT: data_fingerprint(ds, cfg), T.CV_FOLDS: str(folds),
                T.CV_GROUP_BY: group_by, T.CV_GROUPS: str(groups)}
    if parent_run_id:
        run_tags[T.MLFLOW_PARENT] = parent_run_id
    return CvParent(experiment=experiment, run_name=name, params=params, tags=run_tags, config=to_dict(cfg))
