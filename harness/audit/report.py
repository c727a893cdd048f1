"""The audit's outputs: `audit.json`, the table and pairs as CSV, figures, and the terminal report.

`DIR/audit.json` keys (the promotion gate and cross-validation read them):

    features         [{feature, split, auc, low, high, n, p, direction}]  every feature, every labelled split
    shortcuts        the same shape: the findings (the model appears as feature "metadata_model")
    models           the same shape: the metadata model's out-of-fold AUC per labelled split
    duplicates       [{a, b, kind, similarity}], a/b as split/name, kind identical | audio | faces
    adversarial_auc  the train-vs-test model's out-of-fold AUC (null: nothing to compare)
    adversarial      its full entry; adversarial_top: the features separating the splits most (as features)
    findings         one line per finding
    table            the table's cache folder, clips probed by this run and reused from it
    clips, failures, settings, dataset, face_cache: context

The folder is swapped in whole (`harness.fileio.atomic_dir`): a reader never sees a mix of two audits.
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
        "dataset": str(result.dataset), "dataset_id": result.dataset_id,
        "clips": dict(Counter(r["split"] for r in result.table.rows)),
        "failures": [{"clip": f"{r['split']}/{r['name']}", "error": r["error"]} for r in result.table.failures()],
        **{key: [f.to_dict() for f in getattr(result, key)] for key in ("features", "shortcuts", "models", "duplicates")},
        "adversarial_auc": None if shift is None else shift.to_dict()["auc"],
        "adversarial": None if shift is None else shift.to_dict(),
        "adversarial_top": [f.to_dict() for f in result.adversarial_top], "findings": list(result.findings),
        "table": {"cache": str(result.table.cache), "probed": result.table.done, "reused": result.table.reused,
                  "seconds": round(result.table.seconds, 3)},
        "face_cache": None if result.face_folder is None else str(result.face_folder), "settings": asdict(result.settings),
    }


def write_outputs(result: AuditResult, out_dir: Path) -> Path:
    """Write audit.json, table.csv, duplicates.csv and plots/ into `out_dir` (replaced whole)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir) as stage:
        (stage / "audit.json").write_text(json.dumps(to_json(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        rows = ({k: "" if r[k] is None else r[k] for k in COLUMNS} for r in result.table.rows)
        (stage / "table.csv").write_text(dict_csv_text(rows, COLUMNS), encoding="utf-8")
        pairs = ((p.a, p.b, p.kind, p.similarity) for p in result.duplicates)
        (stage / "duplicates.csv").write_text(csv_text(("a", "b", "kind", "similarity"), pairs), encoding="utf-8")
        shift = result.adversarial_top[:3] if result.shifted else []  # the three the finding names
        save_finding_plots(result.table.rows, result.shortcuts, shift, stage / "plots")
    return out_dir


def headline_metrics(result: AuditResult) -> dict[str, float]:
    """The numbers an MLflow run shows for the audit."""
    counts = {"clips": result.table.rows, "failures": result.table.failures(), "findings": result.findings,
              "shortcuts": result.shortcuts, "duplicate_pairs": result.duplicates,
              "duplicate_pairs_across_splits": [p for p in result.duplicates if p.across_splits]}
    metrics = {name: float(len(items)) for name, items in counts.items()}
    metrics["seconds"] = result.seconds
    if result.adversarial is not None:
        metrics.update(adversarial_auc=result.adversarial.auc, adversarial_auc_low=result.adversarial.low,
                       adversarial_auc_high=result.adversarial.high)
    for m in result.models:
        metrics[f"{m.split}_model_auc"] = m.auc
    for split in dict.fromkeys(f.split for f in result.features):
        metrics[f"{split}_max_feature_auc"] = max(f.auc for f in result.features if f.split == split)
    return metrics


def render(result: AuditResult, console: Any) -> None:
    """Print the audit (read, shortcuts, duplicates, shift, findings) in 80 columns: no borders, no name folded."""
    t = result.table
    counts = ", ".join(f"{s} {n}" for s, n in Counter(r["split"] for r in t.rows).items())
    console.print(f"[bold]Audit of {result.dataset}[/] ({counts}); table: {t.done} probed, {t.reused} from the cache "
                  f"in {t.seconds:.1f} s; faces: {result.face_folder.name if result.face_folder else 'not prepared'}")
    for r in t.failures():
        console.print(f"[yellow]unreadable:[/] {r['split']}/{r['name']}: {r['error']}")

    console.print(f"\n[bold]Metadata against the label:[/] AUC = max(AUC, 1-AUC), p = Mann-Whitney p x features tested; "
                  f"a shortcut at AUC >= {result.settings.threshold} with p < 0.05")
    flagged = {(f.feature, f.split) for f in result.shortcuts}
    table = _table("feature", "AUC", "95% CI", "p", "direction", *(["verdict"] if flagged else []),
                   right=("AUC", "p"), wrap=("direction",))
    for split in dict.fromkeys(f.split for f in result.features):
        table.add_row(f"[bold]{split}[/]")  # a row per split above its features: one column fewer
        rows = [f for f in result.features if f.split == split]
        shown = [f for f in rows if (f.feature, f.split) in flagged] or rows[:3]
        for f in shown + [m for m in result.models if m.split == split]:
            name, tests = ("all metadata (model)", 1) if f.feature == MODEL_FEATURE else (f.feature, len(rows))
            verdict = ["[red]SHORTCUT[/]" if (f.feature, f.split) in flagged else ""] if flagged else []
            table.add_row(f"  {name}", f"{f.auc:.3f}", f"{f.low:.3f}-{f.high:.3f}", f"{min(1.0, f.p * tests):.2g}",
                          f.direction, *verdict)
    console.print(table if result.features else "no labelled split with both classes: no shortcut analysis")

    across = sum(p.across_splits for p in result.duplicates)
    console.print(f"\n[bold]Duplicates:[/] {len(result.duplicates)} pair(s), {across} across splits")
    if result.duplicates:
        pairs = _table("clips (a, then b)", "kind", "similarity", right=("similarity",))
        for p in result.duplicates[:MAX_PAIRS_SHOWN]:  # one above the other: two clip names do not fit one line
            pairs.add_row(f"{p.a}\n{p.b}", p.kind, f"{p.similarity:.3f}", end_section=True)
        console.print(pairs)
        if len(result.duplicates) > MAX_PAIRS_SHOWN:
            console.print(f"... and {len(result.duplicates) - MAX_PAIRS_SHOWN} more in duplicates.csv")

    shift = result.adversarial
    if shift is None:
        console.print("\n[bold]Shift:[/] no train split and second split to compare")
    else:
        first, second = shift.split.split("~")
        console.print(f"\n[bold]Shift:[/] metadata tells {first} from {second} clips with AUC {_auc(shift)} (about 0.5 is good)")
        for f in result.adversarial_top:
            console.print(f"  {f.feature}: {_auc(f)}, {f.direction}")

    if result.findings:
        console.print(f"\n[bold red]{len(result.findings)} finding(s):[/]")
        console.print(_bullets(result.findings))
    else:
        console.print("\n[bold green]No findings.[/]")


def _table(*columns: str, right: tuple[str, ...] = (), wrap: tuple[str, ...] = ()) -> Any:
    """A borderless table, a rule under its header: `right` columns right-aligned, only `wrap` ones wrapped."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=column not in wrap)
    return table


def _bullets(lines: list[str]) -> Any:
    """`lines` as a list whose wrapped lines stay indented under their first."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for line in lines:
        grid.add_row("  -", line)
    return grid


def _auc(f: FeatureAUC) -> str:
    return f"{f.auc:.3f} [{f.low:.3f}, {f.high:.3f}]"
