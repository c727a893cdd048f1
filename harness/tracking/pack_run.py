"""The MLflow side of `harness pack`: its candidates (finished cross-validations, their out-of-fold tables),
the train run a member reuses, and the pack's run (`harness.kind=pack`), recorded like a training run so that
`--run-id best`, `predict`, `submit` and the gate treat it as any model, plus the selection (`pack/`).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from harness import checkpoint as ckpt
from harness.config import RunConfig
from harness.errors import BadInput
from harness.fileio import write_text
from harness.metrics import bootstrap_auc_interval, classification_metrics, has_both_classes
from harness.plots import save_evaluation_plots, save_pack_plot
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.lifecycle import open_run, readable
from harness.tracking.links import markdown_link, run_page
from harness.tracking.recorder import write_predictions
from harness.tracking.resolve import resolve_run
from harness.tracking.store import get_or_create_experiment


@dataclass(frozen=True)
class Candidate:
    """A finished cross-validation that pack selection may pick: its settings and downloaded tables."""

    run_id: str
    run_name: str
    config: RunConfig
    folder: Path  # holding its oof.csv (and folds.csv)


def candidates(client: MlflowClient, refs: Sequence[str], dest: Path) -> list[Candidate]:
    """Each run of `refs` checked (BadInput unless a FINISHED `cv` run), its oof.csv / folds.csv downloaded into `dest`."""
    out = []
    for ref in refs:
        found = resolve_run(client, ref, weights=False, check=_check_candidate)
        folder = Path(dest) / found.run_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in {"oof.csv", "folds.csv"} & {Path(a.path).name for a in client.list_artifacts(found.run_id)}:
            client.download_artifacts(found.run_id, name, str(folder))
        out.append(Candidate(found.run_id, found.run.info.run_name, found.config, folder))
    return out


def _check_candidate(run: Any) -> None:
    run_id, kind = run.info.run_id, run.data.tags.get(T.KIND)
    if kind != T.CV_KIND:
        raise BadInput(f"run {run_id} is a {kind} run, not a cross-validation (harness.kind=cv): a pack is chosen "
                       "on out-of-fold scores (`harness train --folds K`, or a study with folds)")
    if (why := T.why_not_finished(run.info.status, run.data.tags)) is not None:
        raise BadInput(f"run {run_id} {why}: only a FINISHED cross-validation can be packed")


def reusable_train_run(client: MlflowClient, *, settings: str, data: str) -> str | None:
    """The newest FINISHED train run with these settings and data digests (`settings_digest`, `data_fingerprint`), or None."""
    query = (f"attributes.status = '{T.FINISHED}' and tags.`{T.KIND}` = '{T.TRAIN_KIND}' and "
             f"tags.`{T.SETTINGS_DIGEST}` = '{settings}' and tags.`{T.DATA_FINGERPRINT}` = '{data}'")
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def fold_weights(client: MlflowClient, cv_run: str) -> list[Path]:
    """The checkpoints of a cross-validation's fold runs (downloaded once) in fold order; NotFound: one has none."""
    query = f"tags.`{T.MLFLOW_PARENT}` = '{cv_run}' and tags.`{T.KIND}` = '{T.FOLD_KIND}'"
    folds = client.search_runs([client.get_run(cv_run).info.experiment_id], filter_string=query)
    folds.sort(key=lambda r: int(r.data.tags.get(T.CV_FOLD, 0)))
    return [resolve_run(client, r.info.run_id).weights for r in folds]


@dataclass(frozen=True)
class Member:
    """A member of the recorded pack: the train run it came from, its weight, the candidate it stands for."""

    run_id: str
    weight: int
    candidate: str  # the cv run whose settings it trained
    experiment_id: str


def record_pack(client: MlflowClient, *, experiment: str, folder: Path, estimate: Any, members: Sequence[Member],
                val: tuple[list[str], np.ndarray, np.ndarray], compliance: Any, tags: dict[str, str],
                params: dict[str, Any], notes: Sequence[str] = ()) -> tuple[str, str]:
    """Open, fill and end the pack's run (`folder`: the saved pack; `val`: names, labels, scores); (run id, its
    result in one line, with its members' val AUCs alone)."""
    experiment_id = get_or_create_experiment(client, experiment)
    c = estimate.comparison
    run_tags = {**tags, T.PACK_MEMBERS: ",".join(m.run_id for m in members),
                T.PACK_CANDIDATES: ",".join(estimate.selection.names), T.PACK_BETTER: str(c.better).lower()}
    names, labels, scores = val
    run = open_run(client, T.PACK_KIND, experiment_id=experiment_id, run_name=f"pack-{len(members)}", tags=run_tags,
                   params=params)
    with run:
        values = {M.summary_metric(f"best_val_{k}"): v for k, v in classification_metrics(labels, scores).items()}
        if has_both_classes(labels):
            values[M.VAL_AUC_CI_LOW], values[M.VAL_AUC_CI_HIGH] = bootstrap_auc_interval(labels, scores)
        values.update({M.model_metric("params"): compliance.params, M.model_metric("thop_params"): compliance.thop_params,
                       M.model_metric("macs"): compliance.macs, M.PACK_OPTIMISTIC_AUC: estimate.optimistic_auc,
                       M.PACK_NESTED_AUC: estimate.nested_auc, M.PACK_NESTED_SINGLE_AUC: estimate.nested_single_auc,
                       M.PACK_GAIN: c.difference, M.PACK_GAIN_LOW: c.low, M.PACK_GAIN_HIGH: c.high})
        run.log_metrics(values)
        steps = estimate.selection.steps
        with tempfile.TemporaryDirectory(prefix="harness-pack-") as tmp:
            (out := Path(tmp)).joinpath("pack").mkdir()
            write_text(out / "pack" / "report.json", json.dumps(estimate.to_dict(), indent=2) + "\n")
            save_pack_plot([s.auc for s in steps], [s.params for s in steps], out / "pack" / "pack_size.png",
                           kept=estimate.selection.kept, title=run.run_name)
            save_evaluation_plots(labels, scores, out / "plots", title=run.run_name)
            write_predictions(out / "val_predictions.csv", names, labels, scores)
            run.call(client.log_artifacts, run.run_id, str(out))
        for name in (ckpt.PACK_TABLE, ckpt.PACK_WEIGHTS):  # logged from where they lie: no copy of the weights
            run.call(client.log_artifact, run.run_id, str(Path(folder) / name), ckpt.FOLDER)
        member_aucs = {m.run_id: client.get_run(m.run_id).data.metrics.get(M.BEST_VAL_AUC)
                       for m in members if "+" not in m.run_id}  # a soup's id joins its ingredients'
        run.describe(_description(estimate, members, values, compliance, notes, member_aucs))
    line = result_line(values, len(members), compliance.thop_params)
    if known := [a for a in member_aucs.values() if a is not None]:
        spread = readable(min(known)) + ("" if len(known) == 1 else f" to {readable(max(known))}")
        line += f"; {'its member' if len(members) == 1 else 'members'} alone val AUC {spread}"
    return run.run_id, line


def result_line(values: dict[str, float], members: int, thop_params: float) -> str:
    """The pack's result in one line, as a training run's: 'val AUC 0.7257 [0.5728, 0.8573], 7 members, 1.27M ...'."""
    low, high = values.get(M.VAL_AUC_CI_LOW), values.get(M.VAL_AUC_CI_HIGH)
    interval = f" [{readable(low)}, {readable(high)}]" if low is not None and high is not None else ""
    return (f"val AUC {readable(values.get(M.BEST_VAL_AUC, float('nan')))}{interval}, {members} member(s), "
            f"{thop_params / 1e6:.2f}M parameters (thop)")


def _description(estimate: Any, members: Sequence[Member], values: dict[str, float], compliance: Any,
                 notes: Sequence[str], member_aucs: dict[str, float | None]) -> str:
    def alone(run_id: str) -> str:
        auc = member_aucs.get(run_id)
        return f", val AUC {readable(auc)} alone" if auc is not None else ""

    rows = [f"- {markdown_link(m.run_id[:8], run_page(m.experiment_id, m.run_id))} weight {m.weight}{alone(m.run_id)} "
            f"(settings of cv run {m.candidate[:8]})" for m in members]
    c = estimate.comparison
    return "\n".join([
        f"Pack: {result_line(values, len(members), compliance.thop_params)}.",
        "", *rows, "", (f"Out-of-fold AUC {estimate.optimistic_auc:.4f} (optimistic), nested {estimate.nested_auc:.4f}; "
        f"best single member nested {estimate.nested_single_auc:.4f}; gain {c.difference:+.4f} (95% group bootstrap "
        f"{c.low:+.4f} to {c.high:+.4f}, {'distinguishably better' if c.better else 'not distinguishably better'})."), *notes])
