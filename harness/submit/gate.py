"""The promotion gate of `harness submit`: the facts a promotion should be judged by, and its warnings.

Evaluated after the refusals of `checks` and before anything is scored or written:

- the run's val AUC and TPR@FPR=1e-3, each with its 95% bootstrap interval (from the run's metrics;
  computed from its val_predictions.csv for runs recorded before the intervals were);
- how many runs it was selected from (`tracking.promotion_facts.selection`): the best of 50 trials
  on one val split is optimistic by construction;
- the dataset's audit findings: `audits/<dataset id>/audit.json` when it is newer than the label
  files, else the audit is run (its table is cached, so a second time costs seconds);
- against the current `champion` of the registered model: the paired bootstrap of the AUC
  difference on the val clips both runs scored (`harness.analysis.paired_auc_difference`).

It warns when the val AUC interval reaches 0.999 (the split no longer ranks models), when the audit
has findings, and when a champion exists that the candidate does not beat distinguishably (the
interval of the difference not wholly above 0, or no shared clips to compare on). `--strict` turns
the warnings into a refusal (`GateRefused`, exit 1, every reason listed, nothing written).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import JobFailed

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(value: float, low: float, high: float, digits: int = 4) -> str:
    def f(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
    return f"{f(value)} (95% bootstrap interval {f(low)} to {f(high)})"


def run_intervals(run: Any, predictions: tuple[list[str], np.ndarray, np.ndarray] | None) -> dict[str, float]:
    """val AUC and TPR@1e-3 with their intervals: the run's metrics, else computed from its predictions."""
    from harness.tracking.metric_names import summary

    m = summary(run.data.metrics)  # flat names, from a run of either naming
    out = {"auc": m.get("best_val_auc", math.nan), "auc_low": m.get("val_auc_ci_low", math.nan),
           "auc_high": m.get("val_auc_ci_high", math.nan), "tpr": m.get("best_val_tpr_fpr1e-3", math.nan),
           "tpr_low": m.get("val_tpr_fpr1e-3_ci_low", math.nan), "tpr_high": m.get("val_tpr_fpr1e-3_ci_high", math.nan)}
    if predictions is not None and not all(math.isfinite(v) for v in out.values()):
        from harness.analysis import tpr_intervals
        from harness.metrics import bootstrap_auc_interval, classification_metrics, has_both_classes

        _, labels, scores = predictions
        if has_both_classes(labels):
            point = classification_metrics(labels, scores)
            out["auc"], out["tpr"] = point["auc"], point["tpr_fpr1e-3"]
            out["auc_low"], out["auc_high"] = bootstrap_auc_interval(labels, scores)
            out["tpr_low"], out["tpr_high"] = tpr_intervals(labels, scores, (1e-3,))[1e-3]
    return out


def audit_findings(ds: Any, *, cache_root: Path, workers: int = 2) -> tuple[list[str], Path]:
    """The dataset's audit findings and its audit.json: read when newer than the label files, else audited now."""
    from harness.data.cache import dataset_id
    from harness.paths import project_root

    folder = project_root() / "audits" / dataset_id(ds)
    path = folder / "audit.json"
    newest_input = max((p.stat().st_mtime for p in ds.label_files), default=0.0)
    if not path.is_file() or path.stat().st_mtime < newest_input:
        from harness.audit import audit_dataset, write_outputs

        write_outputs(audit_dataset(ds, cache_root=cache_root, workers=workers), folder)
    return list(json.loads(path.read_text(encoding="utf-8")).get("findings", [])), path


def compare_with_champion(candidate: tuple[list[str], np.ndarray, np.ndarray],
                          champion: tuple[list[str], np.ndarray, np.ndarray]) -> Any:
    """The paired AUC comparison on the clips both scored with the same label (None: fewer than both classes)."""
    from harness.analysis import paired_auc_difference
    from harness.metrics import has_both_classes

    names, labels, scores = candidate
    theirs = {n: (int(y), float(s)) for n, y, s in zip(*champion)}
    shared = [i for i, n in enumerate(names) if n in theirs and theirs[n][0] == labels[i]]
    if not shared or not has_both_classes(labels[shared]):
        return None
    reference = np.array([theirs[names[i]][1] for i in shared])
    return paired_auc_difference(labels[shared], scores[shared], reference)


def evaluate_gate(client: Any, run: Any, *, ds: Any, model_name: str, cache_root: Path, workers: int = 2) -> GateReport:
    """The gate's facts and warnings for promoting `run` on dataset `ds` under registry name `model_name`."""
    from harness.tracking import promotion_facts as facts

    report = GateReport()
    run_id = run.info.run_id
    mine = facts.val_predictions(client, run_id)
    v = run_intervals(run, mine)
    report.values["val"] = v
    report.facts.append(f"val AUC {_interval(v['auc'], v['auc_low'], v['auc_high'])}")
    report.facts.append(f"val TPR at FPR 1e-3 {_interval(v['tpr'], v['tpr_low'], v['tpr_high'])}")
    if math.isfinite(v["auc_high"]) and v["auc_high"] >= SATURATED_AUC:
        report.warnings.append(f"the val AUC interval reaches {SATURATED_AUC} ({v['auc_low']:.4f} to {v['auc_high']:.4f}): "
                               "this val split can no longer rank models; judge by cross-validation or new data")

    picked = facts.selection(client, run)
    report.values["selected_from"] = {"runs": picked.runs, "among": picked.among}
    report.facts.append(f"selected as the best of {picked.runs} {picked.among}"
                        + (" (the more runs a val split picks from, the more its best score flatters)" if picked.runs > 1 else ""))

    findings, audit_json = audit_findings(ds, cache_root=cache_root, workers=workers)
    report.values["audit"] = {"path": str(audit_json), "findings": findings}
    if findings:
        shown = "; ".join(findings[:MAX_FINDINGS_SHOWN]) + (f"; and {len(findings) - MAX_FINDINGS_SHOWN} more"
                                                             if len(findings) > MAX_FINDINGS_SHOWN else "")
        report.facts.append(f"dataset audit: {len(findings)} finding(s) ({audit_json})")
        report.warnings.append(f"the dataset's audit has {len(findings)} finding(s): {shown}")
    else:
        report.facts.append(f"dataset audit: no findings ({audit_json})")

    report.values["champion"] = None
    held = facts.champion(client, model_name)
    if held is None:
        report.facts.append(f"champion: none yet for {model_name}")
    elif held[1] == run_id:
        report.facts.append(f"champion: this run already is {model_name} version {held[0]}")
    else:
        version, champion_run = held
        theirs = facts.val_predictions(client, champion_run) if champion_run else None
        comparison = None if (mine is None or theirs is None) else compare_with_champion(mine, theirs)
        where = f"champion {model_name} version {version} (run {champion_run})"
        if comparison is None:
            report.values["champion"] = {"version": version, "run_id": champion_run, "comparison": None}
            report.facts.append(f"{where}: no shared val clips with both classes to compare on")
            report.warnings.append(f"not shown to beat the {where}: the two runs share no val clips with both classes")
        else:
            c = comparison
            report.values["champion"] = {"version": version, "run_id": champion_run, "comparison": c.to_dict()}
            line = (f"against the {where} on {c.clips} shared val clips: AUC {c.candidate_auc:.4f} vs {c.reference_auc:.4f}, "
                    f"difference {c.difference:+.4f} (paired bootstrap 95% interval {c.low:+.4f} to {c.high:+.4f})")
            report.facts.append(line)
            if not c.better:
                report.warnings.append(f"not distinguishably better than the {where}: the AUC difference's interval "
                                       f"{c.low:+.4f} to {c.high:+.4f} does not lie above 0")
    return report


def enforce(report: GateReport, run_id: str) -> None:
    """`--strict`: refuse when the gate warned, listing every reason (GateRefused, exit 1)."""
    if report.warnings:
        reasons = " | ".join(f"({i}) {w}" for i, w in enumerate(report.warnings, 1))
        raise GateRefused(f"--strict: run {run_id} not promoted, {len(report.warnings)} gate warning(s): {reasons}")
