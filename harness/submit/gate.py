"""The promotion gate of `harness submit`, after `checks` and before anything is scored or written.

Facts: val AUC and TPR@FPR=1e-3 with bootstrap intervals, the worst method slice, how many runs it was picked
from (the best of 50 trials is optimistic), the dataset's audit findings, the paired AUC difference against
the registered `champion`. Warnings (refusals under `--strict`: `GateRefused`, exit 1): a val AUC interval
reaching 0.999 (the split no longer ranks models), audit findings, a champion not beaten distinguishably,
in which case `GateReport.withheld` says why and the new version does not get the `champion` alias.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis import paired_auc_difference, tpr_intervals
from harness.data.cache import dataset_id
from harness.errors import JobFailed
from harness.metrics import bootstrap_auc_interval, classification_metrics, has_both_classes
from harness.paths import project_root
from harness.slices import worst_from_metrics
from harness.tracking import metric_names as M
from harness.tracking import promotion_facts as facts
from harness.tracking import tags as T

AUDITS = "audits"  # the project folder holding audits/<dataset id>/audit.json
SATURATED_AUC = 0.999  # an interval reaching this cannot tell good models apart any more
MAX_FINDINGS_SHOWN = 5


class GateRefused(JobFailed):
    """`submit --strict` with gate warnings: the run is not promoted (exit 1), nothing is written."""


@dataclass
class GateReport:
    """The gate's facts (one line each), its warnings, and the numbers behind them (for the card)."""

    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    withheld: str | None = None  # why the run did not earn the champion alias; None: it did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(value: float, low: float, high: float) -> str:
    f = [("n/a" if x is None or not math.isfinite(x) else f"{x:.4f}") for x in (value, low, high)]
    return f"{f[0]} (95% bootstrap interval {f[1]} to {f[2]})"


def run_intervals(run: Any, predictions: tuple[list[str], np.ndarray, np.ndarray] | None) -> dict[str, float]:
    """val AUC and TPR@1e-3 with their intervals: the run's metrics, else computed from its predictions."""
    m = M.summary(run.data.metrics)
    out = {k: m.get(name, math.nan) for k, name in (
        ("auc", "best_val_auc"), ("auc_low", "val_auc_ci_low"), ("auc_high", "val_auc_ci_high"),
        ("tpr", "best_val_tpr_fpr1e-3"), ("tpr_low", "val_tpr_fpr1e-3_ci_low"), ("tpr_high", "val_tpr_fpr1e-3_ci_high"))}
    if predictions is not None and not all(math.isfinite(v) for v in out.values()):
        _, labels, scores = predictions
        if has_both_classes(labels):
            point = classification_metrics(labels, scores)
            out["auc"], out["tpr"] = point["auc"], point["tpr_fpr1e-3"]
            out["auc_low"], out["auc_high"] = bootstrap_auc_interval(labels, scores)
            out["tpr_low"], out["tpr_high"] = tpr_intervals(labels, scores, (1e-3,))[1e-3]
    return out


def audit_findings(ds: Any, *, cache_root: Path, workers: int = 2) -> tuple[list[str], Path]:
    """The dataset's audit findings and its audit.json: read when newer than the label files, else audited now."""
    path = (folder := project_root() / AUDITS / dataset_id(ds)) / "audit.json"
    if not path.is_file() or path.stat().st_mtime < max((p.stat().st_mtime for p in ds.label_files), default=0.0):
        from harness.audit import audit_dataset, write_outputs

        write_outputs(audit_dataset(ds, cache_root=cache_root, workers=workers), folder)
    return list(json.loads(path.read_text(encoding="utf-8")).get("findings", [])), path


def compare_with_champion(candidate: tuple[list[str], np.ndarray, np.ndarray],
                          champion: tuple[list[str], np.ndarray, np.ndarray]) -> Any:
    """The paired AUC comparison on the clips both scored with the same label (None: not both classes)."""
    names, labels, scores = candidate
    theirs = {n: (int(y), float(s)) for n, y, s in zip(*champion)}
    shared = [i for i, n in enumerate(names) if n in theirs and theirs[n][0] == labels[i]]
    if not shared or not has_both_classes(labels[shared]):
        return None
    reference = np.array([theirs[names[i]][1] for i in shared])
    return paired_auc_difference(labels[shared], scores[shared], reference)


def evaluate_gate(client: Any, run: Any, *, ds: Any, model_name: str, cache_root: Path, workers: int = 2) -> GateReport:
    """The gate's facts and warnings for promoting `run` on dataset `ds` under registry name `model_name`."""
    report = GateReport()
    run_id = run.info.run_id
    mine = facts.val_predictions(client, run_id)
    report.values["val"] = v = run_intervals(run, mine)
    report.facts += [f"val AUC {_interval(v['auc'], v['auc_low'], v['auc_high'])}",
                     f"val TPR at FPR 1e-3 {_interval(v['tpr'], v['tpr_low'], v['tpr_high'])}"]
    if (low := worst_from_metrics(run.data.metrics)) is not None:  # runs on data with known methods
        report.values["worst_slice"] = {"name": low.name, "auc": low.auc, "low": low.low, "high": low.high}
        report.facts.append(f"worst slice: {low.line()}")
    if math.isfinite(v["auc_high"]) and v["auc_high"] >= SATURATED_AUC:
        report.warnings.append(f"the val AUC interval reaches {SATURATED_AUC} ({v['auc_low']:.4f} to {v['auc_high']:.4f}): "
                               "this val split can no longer rank models; judge by cross-validation or new data")

    if run.data.tags.get(T.KIND) == T.PACK_KIND:
        _pack_facts(report, run.data.metrics)
    picked = facts.selection(client, run)
    report.values["selected_from"] = {"runs": picked.runs, "among": picked.among}
    flatters = " (the more runs a val split picks from, the more its best score flatters)" if picked.runs > 1 else ""
    report.facts.append(f"selected as the best of {picked.runs} {picked.among}{flatters}")

    findings, audit_json = audit_findings(ds, cache_root=cache_root, workers=workers)
    audit_json = Path(AUDITS, *audit_json.parts[-2:])  # named within the project: the card ships
    report.values["audit"] = {"path": str(audit_json), "findings": findings}
    report.facts.append(f"dataset audit: {f'{len(findings)} finding(s)' if findings else 'no findings'} ({audit_json})")
    if findings:
        more = len(findings) - MAX_FINDINGS_SHOWN
        shown = "; ".join(findings[:MAX_FINDINGS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        report.warnings.append(f"the dataset's audit has {len(findings)} finding(s): {shown}")

    report.values["champion"] = None
    held = facts.champion(client, model_name)
    if held is None:
        report.facts.append(f"champion: none yet for {model_name}")
    elif held[1] == run_id:
        report.facts.append(f"champion: this run already is {model_name} version {held[0]}")
    else:
        version, champion_run = held
        theirs = facts.val_predictions(client, champion_run) if champion_run else None
        c = None if (mine is None or theirs is None) else compare_with_champion(mine, theirs)
        where = f"champion {model_name} version {version} (run {champion_run})"
        report.values["champion"] = {"version": version, "run_id": champion_run,
                                     "comparison": None if c is None else c.to_dict()}
        if c is None:
            report.facts.append(f"{where}: no shared val clips with both classes to compare on")
            report.withheld = f"not shown to beat the {where}: the two runs share no val clips with both classes"
        else:
            report.facts.append(f"against the {where} on {c.clips} shared val clips: AUC {c.candidate_auc:.4f} vs "
                                f"{c.reference_auc:.4f}, difference {c.difference:+.4f} (paired bootstrap 95% interval "
                                f"{c.low:+.4f} to {c.high:+.4f})")
            if not c.better:
                report.withheld = (f"not distinguishably better than the {where}: the AUC difference's interval "
                                   f"{c.low:+.4f} to {c.high:+.4f} does not lie above 0")
        if report.withheld:
            report.warnings.append(report.withheld)
    return report


def _pack_facts(report: GateReport, metrics: dict[str, float]) -> None:
    """A pack against its best member on the nested out-of-fold estimate: not better, it costs several models for nothing."""
    nan = math.nan
    gain, low, high = (metrics.get(k, nan) for k in (M.PACK_GAIN, M.PACK_GAIN_LOW, M.PACK_GAIN_HIGH))
    report.values["pack"] = {"nested_auc": metrics.get(M.PACK_NESTED_AUC), "gain": gain, "low": low, "high": high,
                             "nested_best_single_auc": metrics.get(M.PACK_NESTED_SINGLE_AUC)}
    report.facts.append(f"pack: nested out-of-fold AUC {metrics.get(M.PACK_NESTED_AUC, nan):.4f} against its best member's "
                        f"{metrics.get(M.PACK_NESTED_SINGLE_AUC, nan):.4f}, gain {gain:+.4f} (95% group bootstrap "
                        f"{low:+.4f} to {high:+.4f})")
    if not (math.isfinite(low) and low > 0):
        report.warnings.append(f"the pack is not distinguishably better than its best member on the nested out-of-fold "
                               f"estimate (gain {gain:+.4f}, interval {low:+.4f} to {high:+.4f}): submit that member alone")


def enforce(report: GateReport, run_id: str) -> None:
    """`--strict`: refuse when the gate warned, listing every reason (GateRefused, exit 1)."""
    if report.warnings:
        reasons = " | ".join(f"({i}) {w}" for i, w in enumerate(report.warnings, 1))
        raise GateRefused(f"--strict: run {run_id} not promoted, {len(report.warnings)} gate warning(s): {reasons}")
