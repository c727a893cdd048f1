"""Figures of the flagged features: how each class (or split) is distributed along them. As `harness.plots`:
a bare `Figure` on its own Agg canvas (no pyplot state), matplotlib imported only when one is drawn."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from harness.audit.stats import MODEL_FEATURE, FeatureAUC, feature_matrix

_COLOURS = ("#1f77b4", "#d62728")  # real / train, fake / test


def save_finding_plots(rows: list[dict], shortcuts: list[FeatureAUC], shift_top: list[FeatureAUC],
                       out_dir: Path) -> list[Path]:
    """Write `shortcut_<split>_<feature>.png` (reals against fakes) and `shift_<feature>.png` (train against the
    other split) per flagged feature; return the paths."""
    names, matrix = feature_matrix(rows)
    column = {n: matrix[:, j] for j, n in enumerate(names)}
    split = np.array([r["split"] for r in rows])
    label = np.array([-1 if r["label"] is None else r["label"] for r in rows])
    written = []
    for f in shortcuts:
        if f.feature == MODEL_FEATURE or f.feature not in column:
            continue
        here = split == f.split
        groups = {"real": column[f.feature][here & (label == 0)], "fake": column[f.feature][here & (label == 1)]}
        title = f"{f.split}: {f.feature}, AUC {f.auc:.3f} [{f.low:.3f}, {f.high:.3f}]"
        written.append(_histogram(out_dir / f"shortcut_{_safe(f.split)}_{_safe(f.feature)}.png", f.feature, groups, title))
    for f in shift_top:
        if f.feature not in column:
            continue
        first, second = f.split.split("~")
        groups = {first: column[f.feature][split == first], second: column[f.feature][split == second]}
        title = f"{first} vs {second}: {f.feature}, AUC {f.auc:.3f} [{f.low:.3f}, {f.high:.3f}]"
        written.append(_histogram(out_dir / f"shift_{_safe(f.feature)}.png", f.feature, groups, title))
    return written


def _histogram(path: Path, feature: str, groups: dict[str, np.ndarray], title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [v[np.isfinite(v)] for v in groups.values()]
    every = np.concatenate(values) if values else np.zeros(0)
    low, high = (float(every.min()), float(every.max())) if len(every) else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 31)
    for (name, v), colour in zip(zip(groups, values), _COLOURS):
        ax.hist(v, bins=bins, alpha=0.55, color=colour, label=f"{name} (n={len(v)})")
    ax.set(xlabel=feature, ylabel="clips")
    ax.set_title(title, fontsize=10)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
