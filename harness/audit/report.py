"""The audit's outputs: `audit.json`, the table and pairs as CSV, figures, and the terminal report.

`DIR/audit.json` keys (the promotion gate and cross-validation read them):

    features         [{feature, split, auc, low, high, n, p, direction}]  every feature, every labelled split
    shortcuts        the same shape: the findings (the model appears as feature "metadata_model")
    models           the same shape: the metadata model's out-of-fold AUC per labelled split
    duplicates       [{a, b, kind, similarity}], a/b as split/name, kind identical | audio | faces
    adversarial_auc  the train-vs-test model's out-of-fold AUC (null: nothing to compare)
    adversarial      its full entry (interval, splits compared); adversarial_top: the features
                     that separate the two splits most, best first (same shape as features)
    findings         one line per finding
    table            the cache folder of the table, clips probed by this run and reused from it
    clips, failures, settings, dataset, face_cache: context

The folder is built aside and swapped in whole (`harness.fileio.atomic_dir`): a reader sees the
previous audit or this one, never a mix.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.audit.analysis import AuditResult
from harness.audit.plots import save_finding_plots
from harness.audit.stats import MODEL_FEATURE, FeatureAUC
from harness.audit.table import COLUMNS
from harness.fileio import atomic_dir, csv_text, dict_csv_text

MAX_PAIRS_SHOWN = 10


def to_json(result: AuditResult) -> dict[str, Any]:
    """The audit as plain JSON values (see the module docstring for the keys)."""
    shift = result.adversarial
    return {
        "dataset": str(result.dataset),
        "dataset_id": result.dataset_id,
        "clips": dict(Counter(r["split"] for r in result.table.rows)),
        "failures": [{"clip": f"{r['split']}/{r['name']}", "error": r["error"]} for r in result.table.failures()],
        "features": [f.to_dict() for f in result.features],
        "shortcuts": [f.to_dict() for f in result.shortcuts],
        "models": [f.to_dict() for f in result.models],
        "duplicates": [p.to_dict() for p in result.duplicates],
        "adversarial_auc": None if shift is None else shift.to_dict()["auc"],
        "adversarial": None if shift is None else shift.to_dict(),
        "adversarial_top": [f.to_dict() for f in result.adversarial_top],
        "findings": list(result.findings),
        "table": {"cache": str(result.table.cache), "probed": result.table.done, "reused": result.table.reused,
                  "seconds": round(result.table.seconds, 3)},
        "face_cache": None if result.face_folder is None else str(result.face_folder),
        "settings": asdict(result.settings),
    }


def write_outputs(result: AuditResult, out_dir: Path) -> Path:
    """Write audit.json, table.csv, duplicates.csv and plots/ into `out_dir` (replaced whole)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir) as stage:
        # Plain writes: nobody sees the staging folder until atomic_dir renames it into place.
        (stage / "audit.json").write_text(json.dumps(to_json(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        rows = ({k: _cell(r[k]) for k in COLUMNS} for r in result.table.rows)
        (stage / "table.csv").write_text(dict_csv_text(rows, COLUMNS), encoding="utf-8")
        pairs = ((p.a, p.b, p.kind, p.similarity) for p in result.duplicates)
        (stage / "duplicates.csv").write_text(csv_text(("a", "b", "kind", "similarity"), pairs), encoding="utf-8")
        shift = result.adversarial_top[:3] if result.shifted else []  # the three the finding names
        save_finding_plots(result.table.rows, result.shortcuts, shift, stage / "plots")
    return out_dir


def _cell(value: Any) -> Any:
    return "" if value is None else value


def headline_metrics(result: AuditResult) -> dict[str, float]:
    """The numbers an MLflow run shows for the audit."""
    metrics: dict[str, float] = {
        "clips": float(len(result.table.rows)),
        "failures": float(len(result.table.failures())),
        "findings": float(len(result.findings)),
        "shortcuts": float(len(result.shortcuts)),
        "duplicate_pairs": float(len(result.duplicates)),
        "duplicate_pairs_across_splits": float(sum(p.across_splits for p in result.duplicates)),
        "seconds": result.seconds,
    }
    if result.adversarial is not None:
        metrics.update(adversarial_auc=result.adversarial.auc, adversarial_auc_low=result.adversarial.low,
                       adversarial_auc_high=result.adversarial.high)
    for m in result.models:
        metrics[f"{m.split}_model_auc"] = m.auc
    for split in dict.fromkeys(f.split for f in result.features):
        metrics[f"{split}_max_feature_auc"] = max(f.auc for f in result.features if f.split == split)
    return metrics


# ---- the terminal report ------------------------------------------------------------------------

def render(result: AuditResult, console: Any) -> None:
    """Print the audit on a rich console: what was read, shortcuts, duplicates, shift, findings."""
    from rich.table import Table

    t = result.table
    counts = ", ".join(f"{s} {n}" for s, n in Counter(r["split"] for r in t.rows).items())
    console.print(f"[bold]Audit of {result.dataset}[/] ({counts}); table: {t.done} probed, {t.reused} from the cache "
                  f"in {t.seconds:.1f} s; faces: {result.face_folder.name if result.face_folder else 'not prepared'}")
    for r in t.failures():
        console.print(f"[yellow]unreadable:[/] {r['split']}/{r['name']}: {r['error']}")

    threshold = result.settings.threshold
    console.print()
    table = Table(title=f"Metadata against the label: AUC = max(AUC, 1-AUC), a shortcut at >= {threshold} "
                        "unless chance explains it (p x features tested >= 0.05)", title_justify="left")
    for col in ("split", "feature", "AUC", "95% CI", "direction", "clips", "p x tests", ""):
        table.add_column(col, overflow="fold")
    flagged = {(f.feature, f.split) for f in result.shortcuts}
    for split in dict.fromkeys(f.split for f in result.features):
        rows = [f for f in result.features if f.split == split]
        shown = [f for f in rows if (f.feature, f.split) in flagged] or rows[:3]
        model = [m for m in result.models if m.split == split]
        for f in shown + model:
            mark = "[red]SHORTCUT[/]" if (f.feature, f.split) in flagged else ""
            name = "all metadata (model)" if f.feature == MODEL_FEATURE else f.feature
            tests = 1 if f.feature == MODEL_FEATURE else len(rows)
            table.add_row(split, name, f"{f.auc:.3f}", f"{f.low:.3f}-{f.high:.3f}", f.direction, str(f.n),
                          f"{min(1.0, f.p * tests):.2g}", mark)
    console.print(table if result.features else "no labelled split with both classes: no shortcut analysis")

    console.print()
    across = sum(p.across_splits for p in result.duplicates)
    console.print(f"[bold]Duplicates:[/] {len(result.duplicates)} pair(s), {across} across splits")
    if result.duplicates:
        pairs = Table(show_header=True)
        for col in ("a", "b", "kind", "similarity"):
            pairs.add_column(col)
        for p in result.duplicates[:MAX_PAIRS_SHOWN]:
            pairs.add_row(p.a, p.b, p.kind, f"{p.similarity:.3f}")
        console.print(pairs)
        if len(result.duplicates) > MAX_PAIRS_SHOWN:
            console.print(f"... and {len(result.duplicates) - MAX_PAIRS_SHOWN} more in duplicates.csv")

    console.print()
    shift = result.adversarial
    if shift is None:
        console.print("[bold]Shift:[/] no train split and second split to compare")
    else:
        first, second = shift.split.split("~")
        console.print(f"[bold]Shift:[/] metadata tells {first} from {second} clips with AUC {_auc(shift)} (about 0.5 is good)")
        for f in result.adversarial_top:
            console.print(f"  {f.feature}: {_auc(f)}, {f.direction}")

    console.print()
    if result.findings:
        console.print(f"[bold red]{len(result.findings)} finding(s):[/]")
        for line in result.findings:
            console.print(f"  - {line}")
    else:
        console.print("[bold green]No findings.[/]")


def _auc(f: FeatureAUC) -> str:
    return f"{f.auc:.3f} [{f.low:.3f}, {f.high:.3f}]"
