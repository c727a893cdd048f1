"""Grouped K-fold cross-validation: `harness train --folds K [--group-by auto|none|method|FILE]`.

The labelled clips (train + val) are pooled and dealt into K folds, stratified by label and grouped
(`harness.data.folds`); each fold is one `train_run` (`harness.kind=fold`, `<parent>-fold1..K`) under a
parent run (`harness.tracking.cv_runs`) that records `CrossValResult.metrics`: `cv_val_auc_mean` / `_std`
and `cv_val_tpr_fpr1e-3_mean` / `_std` over the folds' best epochs (ddof 0, as sklearn's); `oof_auc` with
its interval, `oof_tpr_fpr1e-3` and the low-FPR analysis of the out-of-fold scores (each clip scored by
the fold model that never saw it), their slices (`harness.slices`); `oof.csv`
(`video_name,target,score,fold,split`) and `folds.csv` (each clip's group and fold, 1..K).

Groups never straddle folds: `auto` joins the audit's near-duplicates, `none` leaves every clip alone, a
file maps `video_name,group`, `method` makes each forgery method's fakes one group (reals keep their
near-duplicate groups, joined to a fake's method), so every fold validates on methods its training never
saw (`unseen/<method>/auc`, `unseen_auc_mean`, `unseen_auc_min`). Why not one val split: the folds' spread
shows how much a score moves with its clips, and the out-of-fold AUC is measured on K times more clips.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.callbacks import Callback
from harness.config import AudioFeatures, flat, to_dict
from harness.data.dataset import SplitArrays, load_arrays
from harness.data.folds import assign_folds, group_ids, pool, read_group_file, subset
from harness.data.labels import Dataset, DatasetError
from harness.errors import BadInput
from harness.fileio import csv_text, write_text
from harness.preflight import Ready
from harness.run import RunResult, data_fingerprint, readable_run_name, train_run
from harness.slices import fake_groups, run_slices, score_slices, slice_metrics, slices_csv, worst

GROUP_BY_CHOICES = ("auto", "none", "method")


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
    pruned_after_fold: int | None = None  # set when `after_fold` stopped the CV (1..K)
    worst_slice: str | None = None  # the out-of-fold scores' worst slice (`harness.slices`), methods known


@dataclass(frozen=True)
class FoldPlan:
    """The pooled clips and where each goes."""

    data: SplitArrays
    keys: list[str]  # split/name per pooled clip
    groups: np.ndarray  # (N,) group id per clip
    folds: np.ndarray  # (N,) fold per clip

    def split(self, fold: int) -> tuple[SplitArrays, SplitArrays]:
        """(train, val) of `fold` (1..K): val is the fold, train every other."""
        index = fold - 1  # `assign_folds` deals folds 0..K-1
        return subset(self.data, np.flatnonzero(self.folds != index)), subset(self.data, np.flatnonzero(self.folds == index))


def check_group_by(group_by: str) -> str | Path:
    """`auto`, `none`, `method` or an existing file; BadInput otherwise (before any feature work)."""
    if group_by in GROUP_BY_CHOICES:
        return group_by
    if not Path(group_by).is_file():
        raise BadInput(f"--group-by {group_by!r}: not auto, none, method or an existing video_name,group file")
    return Path(group_by)


def clip_groups(ds: Dataset, group_by: str | Path, *, cache_root: Path, workers: int = 2,
                folds: int = 2) -> dict[str, object] | None:
    """Each clip's group (`split/name` or name -> group); None: every clip alone. BadInput: `method` with < `folds`."""
    if group_by == "none":
        return None
    if group_by == "method":
        methods = {ds.methods[s.name].name for split in ("train", "val") for s in ds.split(split)
                   if s.label == 1 and s.name in ds.methods}
        if len(methods) < folds:
            raise BadInput(f"--group-by method: {ds.root} has {len(methods)} fake method(s) in train and val, fewer "
                           f"than --folds {folds} (methods come from --methods FILE or methods.csv in the dataset)")
    if group_by in ("auto", "method"):
        from harness.audit import dataset_groups

        near = dict(dataset_groups(ds, cache_root=cache_root, workers=workers))
        return near if group_by == "auto" else method_groups(ds, near)
    return dict(read_group_file(Path(group_by)))


def method_groups(ds: Dataset, near: dict[str, object]) -> dict[str, object]:
    """Fakes by method; other clips by near-duplicate group, joined to the method of a fake in it."""
    keyed = {f"{split}/{s.name}": s for split in ("train", "val") for s in ds.split(split)}

    def method(key: str) -> str | None:
        found = ds.methods.get(keyed[key].name)
        return found.name if keyed[key].label == 1 and found is not None else None

    joined: dict[object, str] = {}
    for key in keyed:
        if (m := method(key)) is not None:
            joined.setdefault(near.get(key, key), m)
    out: dict[str, object] = {}
    for key in keyed:
        m = method(key) or joined.get(cluster := near.get(key, key))
        out[key] = ("method", m) if m is not None else ("near", cluster)
    return out


def unseen_method_metrics(plan: FoldPlan, scores: np.ndarray, methods: dict) -> dict[str, float]:
    """`unseen/<method>/auc` (and interval) of each held-out method against its fold's reals, their mean and min."""
    out: dict[str, float] = {}
    for fold in np.unique(plan.folds):
        idx = np.flatnonzero(plan.folds == fold)
        names = [plan.data.names[i] for i in idx]
        groups = {k.removeprefix("method."): m for k, m in fake_groups(names, methods).items() if k.startswith("method.")}
        for s in score_slices(plan.data.labels[idx], scores[idx], groups):
            out.update({k.replace("slice/", "unseen/", 1): v for k, v in slice_metrics([s]).items()})
    aucs = [v for k, v in out.items() if k.endswith("/auc")]
    if aucs:
        out["unseen_auc_mean"], out["unseen_auc_min"] = float(np.mean(aucs)), float(np.min(aucs))
    return out


def plan_folds(features: dict[str, Path], groups: dict[str, object] | None, k: int, *, seed: int,
               audio: AudioFeatures | None = None) -> FoldPlan:
    """Pool the usable train and val clips and deal them into `k` folds (`audio`: how windows are cut)."""
    data, keys = pool({split: load_arrays(features, split, audio=audio) for split in ("train", "val")})
    if not len(data):
        raise DatasetError(next(iter(features.values())), "no usable labelled clips to cross-validate on")
    ids = group_ids(keys, groups)
    return FoldPlan(data=data, keys=keys, groups=ids, folds=assign_folds(data.labels, ids, k, seed=seed))


def cross_validate(ready: Ready, *, experiment: str, folds: int, group_by: str = "auto", run_name: str | None = None,
                   callbacks_for: Callable[[int], Sequence[Callback]] = lambda fold: (), workers: int = 2,
                   parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                   after_fold: Callable[[int, list[dict[str, float]]], bool] | None = None) -> CrossValResult:
    """Train one run per fold of `ready`'s pooled train and val clips (fold seed `train.seed`) under a parent
    run, and record the CV summary on the parent.

    `run_name` None: a readable one ending `-cvK`. `callbacks_for(I)`: extra engine callbacks for fold I (1..K).
    `workers`: processes for the audit table (`group_by="auto"`). `parent_run_id`, `tags`: a study's trial
    nests it so (study -> trial -> fold). `after_fold(I, best metrics so far)`, after every fold but the last:
    True stops the CV (a pruner), the parent ending KILLED with `pruned_at_fold`.

    Raises BadInput (a bad `group_by` or fold count, data that cannot make K folds) before any run; whatever
    a fold raises, after the parent is closed FAILED (KILLED on Ctrl-C).
    """
    from harness import tracking
    from harness.analysis import split_thumbnails, write_low_fpr_analysis
    from harness.metrics import bootstrap_auc_interval, classification_metrics
    from harness.tracking.cv_runs import CvParent

    how = check_group_by(group_by)
    cfg, ds = ready.config, ready.dataset
    plan = plan_folds(ready.features, clip_groups(ds, how, cache_root=ready.cache_root, workers=workers, folds=folds),
                      folds, seed=cfg.train.seed, audio=cfg.audio)
    T = tracking.tags
    n_groups = len(np.unique(plan.groups))
    run_tags = {**(tags or {}), T.DATA_PATH: str(ds.root), T.DATA_FINGERPRINT: data_fingerprint(ds, cfg), T.CV_FOLDS: str(folds),
                T.CV_GROUP_BY: str(group_by), T.CV_GROUPS: str(n_groups)}
    parent = CvParent(experiment=experiment, run_name=run_name or f"{readable_run_name(cfg)}-cv{folds}", tags=run_tags,
                      params={**flat(cfg), "cv.folds": folds, "cv.group_by": str(group_by)}, config=to_dict(cfg),
                      parent_run_id=parent_run_id)
    result = CrossValResult(run_id=parent.run_id, run_name=parent.run_name, status=T.RUNNING, groups=n_groups, clips=len(plan.keys))
    scores = np.full(len(plan.keys), np.nan)
    with parent:  # ends FINISHED by `finish`, else as the block ends (KILLED on Ctrl-C, FAILED naming the fold)
        for fold in range(1, folds + 1):
            parent.fold = fold
            run = train_run(ready, experiment=experiment, run_name=f"{parent.run_name}-fold{fold}", parent_run_id=parent.run_id,
                            kind=T.FOLD_KIND, callbacks=callbacks_for(fold), splits=lambda _features, f=fold: plan.split(f),
                            tags={T.CV_FOLD: str(fold), T.CV_FOLDS: str(folds)})
            result.folds.append(run)
            if run.status != T.FINISHED or run.fit is None:  # a fold that did not finish stops the CV
                parent.stop(run.status, error=f"fold {fold} ended {run.status}")
                result.status = run.status
                return result
            scores[plan.folds == fold - 1] = run.fit.val_scores  # subset keeps the pooled order within a fold
            parent.log_fold(fold, {k: run.fit.best_metrics.get(f"val_{k}", math.nan) for k in ("auc", "tpr_fpr1e-3")})
            if after_fold is not None and fold < folds and after_fold(fold, [r.fit.best_metrics for r in result.folds if r.fit]):
                parent.stop(T.KILLED, pruned_after=fold)
                result.status, result.pruned_after_fold = T.KILLED, fold
                return result
        parent.fold = 0
        labels = plan.data.labels
        result.metrics = cv_summary([r.fit.best_metrics for r in result.folds if r.fit is not None])
        oof = classification_metrics(labels, scores)
        result.metrics.update({f"oof_{k}": oof[k] for k in ("auc", "tpr_fpr1e-3", "tpr_fpr1e-2")})
        result.metrics["oof_auc_ci_low"], result.metrics["oof_auc_ci_high"] = bootstrap_auc_interval(labels, scores)
        slices = run_slices(plan.data.names, labels, scores, ds.methods, seconds=None if ds.methods else ready.durations())
        result.metrics.update(slice_metrics(slices))
        if how == "method":
            result.metrics.update(unseen_method_metrics(plan, scores, ds.methods))
        result.worst_slice = low.line() if (low := worst(slices)) is not None else None
        with tempfile.TemporaryDirectory(prefix="harness-cv-") as tmp:
            write_oof(Path(tmp), plan, scores)
            if slices:
                write_text(Path(tmp) / "slices.csv", slices_csv(slices))
            found = write_low_fpr_analysis(Path(tmp) / "analysis", plan.data.names, labels, scores, prefix="oof_",
                                           thumbnails=split_thumbnails(plan.data), title=f"{parent.run_name} out-of-fold")
            result.metrics.update({k: v for k, v in found.items() if "_ci_" in k})
            parent.finish(result.metrics, artifacts=Path(tmp))
    result.status = T.FINISHED
    return result


def cv_summary(best_metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """`cv_val_<m>_mean` and `_std` (ddof 0) over the folds' best-epoch metrics, for AUC and TPR@1e-3."""
    out = {}
    for name in ("val_auc", "val_tpr_fpr1e-3"):
        values = np.array([m.get(name, math.nan) for m in best_metrics], dtype=float)
        out[f"cv_{name}_mean"] = float(np.mean(values)) if len(values) else math.nan
        out[f"cv_{name}_std"] = round(float(np.std(values)), 12) if len(values) else math.nan
    out["cv_folds_finished"] = float(len(best_metrics))
    return out


def write_oof(folder: Path, plan: FoldPlan, scores: np.ndarray) -> None:
    """oof.csv and folds.csv (the module doc) in `folder`, folds numbered 1..K as the fold runs are."""
    split_of = [k.split("/", 1)[0] for k in plan.keys]
    rows = [(n, int(t), f"{s:.6f}", int(f) + 1, sp)
            for n, t, s, f, sp in zip(plan.data.names, plan.data.labels, scores, plan.folds, split_of)]
    write_text(folder / "oof.csv", csv_text(("video_name", "target", "score", "fold", "split"), rows))
    groups = [(n, sp, int(g), int(f) + 1) for n, sp, g, f in zip(plan.data.names, split_of, plan.groups, plan.folds)]
    write_text(folder / "folds.csv", csv_text(("video_name", "split", "group", "fold"), groups))
