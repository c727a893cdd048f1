"""The low-FPR end of a run's val scores, and how to compare two models on the same clips.

AUC ties break by TPR at FPR = 1e-3, fixed by the few reals scored most fake, so each run records
`val_tpr_fpr1e-3` and `1e-2` with bootstrap intervals and its most confidently wrong clips (CSV and a
thumbnail sheet); `paired_auc_difference` is the promotion gate's comparison (`harness.pack`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.fileio import csv_text, write_text
from harness.metrics import _ranking, _weighted_aucs, has_both_classes, percentiles, tpr_at_fpr, validate

LOW_FPRS = (1e-3, 1e-2)
TOP_WRONG = 20
N_BOOT = 1000


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def tpr_intervals(labels: np.ndarray, scores: np.ndarray, fprs: Sequence[float] = LOW_FPRS, *, n_boot: int = N_BOOT,
                  alpha: float = 0.05, seed: int = 0) -> dict[float, tuple[float, float]]:
    """Percentile bootstrap `(low, high)` of TPR at each of `fprs`; (nan, nan) with no two-class resample.
    Each resample's ROC is two cumulative sums over tie groups (1000 x 150,000 clips: 15 s)."""
    labels, scores = validate(labels, scores)
    order, y, starts = _ranking(labels, -scores)  # highest score first
    values: dict[float, list[float]] = {f: [] for f in fprs}
    for idx in _resamples(len(labels), n_boot, seed):
        counts = np.bincount(idx, minlength=len(labels))[order]
        neg = np.add.reduceat(counts * (y == 0), starts)
        pos = np.add.reduceat(counts * (y == 1), starts)
        total_neg, total_pos = neg.sum(), pos.sum()
        if total_neg == 0 or total_pos == 0:
            continue
        curve_fpr = np.r_[0.0, np.cumsum(neg) / total_neg]
        curve_tpr = np.r_[0.0, np.cumsum(pos) / total_pos]
        for f in fprs:
            values[f].append(float(np.interp(f, curve_fpr, curve_tpr)))
    return {f: percentiles(v, alpha) for f, v in values.items()}


def low_fpr_metrics(labels: np.ndarray, scores: np.ndarray, *, prefix: str = "val_", n_boot: int = N_BOOT) -> dict[str, float]:
    """`<prefix>tpr_fpr1e-3` and `1e-2`, each with `_ci_low` and `_ci_high`; nan with one class."""
    out = {}
    intervals = tpr_intervals(labels, scores, LOW_FPRS, n_boot=n_boot)
    for fpr in LOW_FPRS:
        name = f"{prefix}tpr_fpr{fpr:.0e}".replace("e-0", "e-")
        out[name] = tpr_at_fpr(labels, scores, fpr)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = intervals[fpr]
    return out


@dataclass(frozen=True)
class Wrong:
    """One confidently wrong clip: its position in the split, name, label and score."""

    index: int
    name: str
    label: int
    score: float


def confidently_wrong(names: Sequence[str], labels: np.ndarray, scores: np.ndarray, *,
                      top: int = TOP_WRONG) -> tuple[list[Wrong], list[Wrong]]:
    """(reals scored most fake, fakes scored most real), `top` of each, worst first (ties by name)."""
    labels, scores = validate(labels, scores)
    reals = sorted(np.flatnonzero(labels == 0).tolist(), key=lambda i: (-scores[i], names[i]))[:top]
    fakes = sorted(np.flatnonzero(labels == 1).tolist(), key=lambda i: (scores[i], names[i]))[:top]
    return ([Wrong(i, names[i], 0, float(scores[i])) for i in reals], [Wrong(i, names[i], 1, float(scores[i])) for i in fakes])


@dataclass(frozen=True)
class PairedComparison:
    """AUC of a candidate minus a reference on the same clips, with its paired bootstrap interval."""

    clips: int
    candidate_auc: float
    reference_auc: float
    difference: float
    low: float
    high: float
    share_better: float  # share of resamples where the candidate's AUC is higher

    @property
    def better(self) -> bool:
        """Distinguishably better: the whole interval of the difference lies above 0."""
        return math.isfinite(self.low) and self.low > 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "better": self.better}


def paired_auc_difference(labels: np.ndarray, candidate: np.ndarray, reference: np.ndarray, *,
                          groups: np.ndarray | None = None, n_boot: int = N_BOOT, alpha: float = 0.05,
                          seed: int = 0) -> PairedComparison:
    """Paired bootstrap of `candidate - reference` AUC (one resample for both); `groups` are resampled whole."""
    labels, candidate = validate(labels, candidate)
    _, reference = validate(labels, reference)
    if groups is not None and np.shape(groups) != labels.shape:
        raise ValueError(f"groups must hold one id per clip: {np.shape(groups)} for {len(labels)} clips")
    if not has_both_classes(labels):
        return PairedComparison(len(labels), math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    ranked = [_ranking(labels, scores) for scores in (candidate, reference)]
    # Clip i's draw count is its group's: unique ids in sorted order, so ids 0..N-1 reproduce the clip bootstrap.
    member_of = np.arange(len(labels)) if groups is None else np.unique(groups, return_inverse=True)[1]
    units = int(member_of.max()) + 1
    diffs = []
    for idx in _resamples(units, n_boot, seed):
        counts = np.bincount(idx, minlength=units)[member_of]
        a, b = (_weighted_aucs(counts[order][None], y, starts)[0] for order, y, starts in ranked)
        if math.isfinite(a):
            diffs.append(a - b)
    a, b = (float(_weighted_aucs(np.ones((1, len(labels)), dtype=np.int64), y, starts)[0]) for _, y, starts in ranked)
    low, high = percentiles(diffs, alpha)
    share = float(np.mean(np.array(diffs) > 0)) if diffs else math.nan
    return PairedComparison(len(labels), a, b, a - b, low, high, share)


Thumbnails = Callable[[list[int]], list[np.ndarray]]  # split positions -> one uint8 image each (H, W) or (H, W, 3)


def write_low_fpr_analysis(folder: Path, names: Sequence[str], labels: np.ndarray, scores: np.ndarray, *,
                           thumbnails: Thumbnails | None = None, title: str = "", prefix: str = "val_",
                           n_boot: int = N_BOOT) -> dict[str, float]:
    """low_fpr.json, confidently_wrong.csv (and .png with `thumbnails`) in `folder`; the metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = low_fpr_metrics(labels, scores, prefix=prefix, n_boot=n_boot) if has_both_classes(np.asarray(labels)) else {}
    reals, fakes = confidently_wrong(names, labels, scores)
    rows = [(kind, rank, w.name, w.label, f"{w.score:.6f}")
            for kind, listed in (("real scored fake", reals), ("fake scored real", fakes)) for rank, w in enumerate(listed, 1)]
    write_text(folder / "confidently_wrong.csv", csv_text(("kind", "rank", "video_name", "target", "score"), rows))
    summary = {"metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
               "reals_scored_most_fake": [asdict(w) for w in reals], "fakes_scored_most_real": [asdict(w) for w in fakes]}
    write_text(folder / "low_fpr.json", json.dumps(summary, indent=2) + "\n")
    if thumbnails is not None and (reals or fakes):
        save_wrong_sheet(folder / "confidently_wrong.png", reals, fakes, thumbnails, title=title)
    return metrics


def save_wrong_sheet(path: Path, reals: list[Wrong], fakes: list[Wrong], thumbnails: Thumbnails, *, title: str = "",
                     columns: int = 10) -> Path:
    """A PNG sheet of the reals scored most fake, then the fakes scored most real, each titled with name and score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = [(f"{kind} (top {len(listed)})", listed) for kind, listed in
              (("reals scored most fake", reals), ("fakes scored most real", fakes)) if listed]
    rows_per = [math.ceil(len(listed) / columns) for _, listed in blocks]
    fig = Figure(figsize=(1.6 * columns, 1.9 * sum(rows_per) + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(sum(rows_per), columns)
    row = 0
    for (label, listed), n_rows in zip(blocks, rows_per):
        images = thumbnails([w.index for w in listed])
        for i, (w, image) in enumerate(zip(listed, images)):
            ax = fig.add_subplot(grid[row + i // columns, i % columns])
            mel = image.ndim == 2  # a log-mel: low frequencies at the bottom
            ax.imshow(image, cmap="magma" if mel else None, aspect="auto", origin="lower" if mel else "upper")
            short = w.name if len(w.name) <= 18 else "..." + w.name[-15:]
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{short}\n{w.score:.4f}", fontsize=7)
            if i == 0:
                ax.set_ylabel(label.split(" (")[0].replace(" scored ", "\nscored "), fontsize=7)
        row += n_rows
    fig.suptitle(f"{title}: " * bool(title) + "most confidently wrong val clips (score = probability of fake)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def split_thumbnails(data) -> Thumbnails:  # noqa: ANN001 - harness.data.dataset.SplitArrays
    """Thumbnails from a split's cached inputs: the log-mel (the middle window), else the middle face crop."""

    def take(positions: list[int]) -> list[np.ndarray]:
        arrays = data.arrays(np.asarray(positions, dtype=np.int64))
        if "audio" in arrays:
            audio = arrays["audio"]  # windowed: (clips, eval windows, H, W)
            return list(audio[:, audio.shape[1] // 2] if audio.ndim == 4 else audio)
        return [clip[len(clip) // 2] for clip in arrays["video"]]

    return take
