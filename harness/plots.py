"""Evaluation figures as PNG files: ROC, precision-recall, confusion matrix, score histograms.

Each figure is a bare `Figure` on its own Agg canvas (matplotlib imported lazily): no pyplot, so no
global figure registry to leak memory across a long study and no interactive backend on a headless machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from harness.metrics import has_both_classes, tpr_at_fpr, validate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CLASS_NAMES = ("real", "fake")  # index = label
LOW_FPRS = (1e-3, 1e-2)  # the tie-break FPR and the next decade, marked on the ROC plots


def save_evaluation_plots(y_true: np.ndarray, y_score: np.ndarray, out_dir: Path, *, threshold: float = 0.5,
                          title: str = "") -> list[Path]:
    """roc.png, pr.png, confusion.png and score_hist.png in `out_dir` (a note where one class)."""
    y_true, y_score = validate(y_true, y_score)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = {"roc.png": _draw_roc, "pr.png": _draw_pr, "confusion.png": _draw_confusion, "score_hist.png": _draw_histograms}
    for name, draw in drawers.items():
        fig = _new_figure()
        draw(fig, y_true, y_score, threshold)
        if title:
            fig.suptitle(title)
        fig.savefig(out_dir / name, dpi=110)
    return [out_dir / name for name in drawers]


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # selects Agg for this figure alone; matplotlib.use() would be global
    return fig


def _note_one_class(ax: Axes, what: str, y_true: np.ndarray) -> None:
    n_fake = int(np.count_nonzero(y_true))
    ax.text(0.5, 0.5, f"{what} undefined: one class only\n({len(y_true) - n_fake} real / {n_fake} fake)",
            ha="center", va="center", transform=ax.transAxes)


def _draw_roc(fig: Figure, y_true: np.ndarray, y_score: np.ndarray, _threshold: float) -> None:
    """Linear ROC beside a log-FPR view, where the 1e-3 tie-break lives."""
    fig.set_size_inches(11, 4.8)
    lin, log = fig.subplots(1, 2)
    lin.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    log.set(xlabel="false positive rate (log)", ylabel="true positive rate", title="ROC, low-FPR region", ylim=(0, 1.01))
    log.set_xscale("log", nonpositive="clip")  # FPR 0 pins to the left edge instead of vanishing
    log.set_xlim(min(LOW_FPRS) / 2, 1)
    if not has_both_classes(y_true):
        for ax in (lin, log):
            _note_one_class(ax, "ROC", y_true)
        return
    fprs, tprs, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    lin.plot(fprs, tprs, label=f"AUC = {roc_auc_score(y_true, y_score):.4f}")
    lin.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    lin.legend(loc="lower right")
    log.plot(fprs, tprs)
    for fpr in LOW_FPRS:
        log.axvline(fpr, ls="--", c="grey", lw=0.8)
        tpr = tpr_at_fpr(y_true, y_score, fpr)
        log.plot(fpr, tpr, "o", label=f"TPR@FPR={fpr:g}: {tpr:.3f}")
    log.legend(loc="lower right", title=f"FPR resolution 1/{len(y_true) - int(np.count_nonzero(y_true))}")


def _draw_pr(fig: Figure, y_true: np.ndarray, y_score: np.ndarray, _threshold: float) -> None:
    ax = fig.subplots()
    ax.set(xlabel="recall (fake)", ylabel="precision (fake)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    if not has_both_classes(y_true):
        _note_one_class(ax, "Precision-recall", y_true)
        return
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    # Step plot: average precision sums these steps, so the drawn area is what the number means.
    ax.step(recall, precision, where="post", label=f"AP = {average_precision_score(y_true, y_score):.4f}")
    ax.axhline(np.mean(y_true), ls=":", c="grey", label="chance (fake share)")
    ax.legend(loc="lower left")


def _draw_confusion(fig: Figure, y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> None:
    counts = confusion_matrix(y_true, (y_score >= threshold).astype(int), labels=[0, 1])
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=f"Confusion at threshold {threshold:g}")
    for (row, col), count in np.ndenumerate(counts):  # white text on dark cells, so every count stays legible
        ax.text(col, row, str(count), ha="center", va="center", fontsize=14,
                color="white" if count > counts.max() / 2 else "black")


def _draw_histograms(fig: Figure, y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> None:
    ax = fig.subplots()
    # Shared bins, spanning [0, 1] at least, so both classes read on one scale.
    bins = np.linspace(min(0.0, y_score.min()), max(1.0, y_score.max()), 51)
    for label, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        scores = y_score[y_true == label]
        if len(scores):
            ax.hist(scores, bins=bins, alpha=0.55, color=colour, label=f"{name} (n={len(scores)})")
    ax.axvline(threshold, ls="--", c="black", lw=0.8, label=f"threshold {threshold:g}")
    ax.set(xlabel="score (probability of fake)", ylabel="count", title="Score distribution")
    ax.legend()


def save_pack_plot(aucs: list[float], params: list[int], path: Path, *, kept: int, title: str = "") -> Path:
    """`harness pack`'s greedy trace: out-of-fold AUC after each pick, parameters on a second axis."""
    fig = _new_figure()
    ax = fig.add_subplot()
    steps = np.arange(1, len(aucs) + 1)
    ax.plot(steps, aucs, "o-", color="tab:blue", label="out-of-fold AUC (optimistic)")
    ax.axvline(kept, color="grey", linestyle=":", label=f"kept: {kept} picks")
    ax.set(xlabel="pack size (picks, with replacement)", ylabel="out-of-fold AUC", xticks=steps, title=title)
    twin = ax.twinx()
    twin.step(steps, np.asarray(params) / 1e6, where="post", color="tab:orange", label="parameters (M)")
    twin.set_ylabel("parameters (M)")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
