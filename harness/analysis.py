"""The low-FPR end of a run's val scores, and how to compare two models on the same clips.

The challenge breaks AUC ties by TPR at FPR = 1e-3, a point of the curve fixed by the handful of
reals scored most fake; one val split measures it very roughly (with 500 reals, FPR 1e-3 is "no
real above the threshold"). So each run records, beside the point values:

- `val_tpr_fpr1e-3` and `val_tpr_fpr1e-2` with percentile bootstrap intervals (`_ci_low`,
  `_ci_high`): resampled (label, score) pairs, resamples with one class skipped;
- the most confidently wrong clips: the reals scored most fake and the fakes scored most real (top
  20 each, name and score, `confidently_wrong.csv`), and a thumbnail sheet of what the model saw
  for them (`confidently_wrong.png`: the log-mel image, or the middle face crop);
- `paired_auc_difference`: the AUC of a candidate minus a reference on the same clips, with a
  paired bootstrap interval (the same resample for both), which the promotion gate reads.

Everything here takes numpy arrays; the thumbnails come from a callable, so the module knows
nothing of the cache or MLflow. sklearn and matplotlib are imported where used.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.fileio import csv_text, write_text
from harness.metrics import has_both_classes, tpr_at_fpr, validate

LOW_FPRS = (1e-3, 1e-2)
TOP_WRONG = 20
N_BOOT = 1000


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentiles(values: list[float], alpha: float) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def tpr_intervals(labels: np.ndarray, scores: np.ndarray, fprs: Sequence[float] = LOW_FPRS, *, n_boot: int = N_BOOT,
                  alpha: float = 0.05, seed: int = 0) -> dict[float, tuple[float, float]]:
    """Percentile bootstrap `(low, high)` of TPR at each of `fprs` (as `harness.metrics.tpr_at_fpr`);
    (nan, nan) when no resample holds both classes.

    The clips are sorted once; a resample is how often it draws each clip, so its ROC curve is two
    cumulative sums over the tie groups (the points sklearn's `roc_curve(drop_intermediate=False)`
    gives, plus repeats that do not move the interpolation): O(N) per resample, no sort: 1000 resamples of 150,000 clips
    took 15 s on a busy 2-core machine, a sklearn call per resample several times that.
    """
    labels, scores = validate(labels, scores)
    order = np.argsort(-scores, kind="stable")
    y, s = labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # the tie groups, highest score first
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
    return {f: _percentiles(v, alpha) for f, v in values.items()}


def low_fpr_metrics(labels: np.ndarray, scores: np.ndarray, *, prefix: str = "val_", n_boot: int = N_BOOT) -> dict[str, float]:
    """`<prefix>tpr_fpr1e-3` and `1e-2`, each with `_ci_low` and `_ci_high`; nan with one class.

    Example:
        >>> m = low_fpr_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), n_boot=50)
        >>> m["val_tpr_fpr1e-3"]
        1.0
    """
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


def confidently_wrong(names: Sequence[str], labels: np.ndarray, scores: np.ndarray, *, top: int = TOP_WRONG) -> tuple[list[Wrong], list[Wrong]]:
    """(reals scored most fake, fakes scored most real), `top` of each, worst first (ties by name).

    Every real is listed by its score whatever the threshold: at FPR 1e-3 the reals at the top of
    the ranking are what decides the tie-break, wrong at 0.5 or not.
    """
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


def paired_auc_difference(labels: np.ndarray, candidate: np.ndarray, reference: np.ndarray, *, n_boot: int = N_BOOT,
                          alpha: float = 0.05, seed: int = 0) -> PairedComparison:
    """Bootstrap the AUC difference `candidate - reference`, resampling clips once for both models, so
    the clips' own difficulty cancels out (a paired test; DeLong's would do too, this needs no normality).

    Each model's clips are sorted once; a resample's AUC is then a weighted count over tie groups
    (ties count half, as in sklearn), O(N) without a sort or a sklearn call per resample."""
    labels, candidate = validate(labels, candidate)
    _, reference = validate(labels, reference)
    if not has_both_classes(labels):
        return PairedComparison(len(labels), math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    ranked = [_ranking(labels, scores) for scores in (candidate, reference)]
    diffs = []
    for idx in _resamples(len(labels), n_boot, seed):
        counts = np.bincount(idx, minlength=len(labels))
        a, b = (_weighted_auc(counts, *r) for r in ranked)
        if math.isfinite(a):
            diffs.append(a - b)
    ones = np.ones(len(labels), dtype=np.int64)
    a, b = (_weighted_auc(ones, *r) for r in ranked)
    low, high = _percentiles(diffs, alpha)
    share = float(np.mean(np.array(diffs) > 0)) if diffs else math.nan
    return PairedComparison(len(labels), a, b, a - b, low, high, share)


def _ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by ascending score, labels in that order, start of each tie group)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    return order, labels[order], np.flatnonzero(np.r_[True, s[1:] != s[:-1]])


def _weighted_auc(counts: np.ndarray, order: np.ndarray, y: np.ndarray, starts: np.ndarray) -> float:
    """AUC with clip i counted `counts[i]` times (= sklearn's roc_auc_score with sample_weight); nan with one class."""
    c = counts[order]
    neg = np.add.reduceat(c * (y == 0), starts).astype(float)
    pos = np.add.reduceat(c * (y == 1), starts).astype(float)
    pairs = neg.sum() * pos.sum()
    if pairs == 0:
        return math.nan
    below = np.cumsum(neg) - neg  # negatives scored strictly lower than each tie group
    return float(np.sum(pos * (below + 0.5 * neg)) / pairs)


Thumbnails = Callable[[list[int]], list[np.ndarray]]  # split positions -> one uint8 image each (H, W) or (H, W, 3)


def write_low_fpr_analysis(folder: Path, names: Sequence[str], labels: np.ndarray, scores: np.ndarray, *,
                           thumbnails: Thumbnails | None = None, title: str = "", prefix: str = "val_",
                           n_boot: int = N_BOOT) -> dict[str, float]:
    """Write low_fpr.json, confidently_wrong.csv and (with `thumbnails`) confidently_wrong.png into
    `folder`; return the metrics (`low_fpr_metrics` with `prefix`) for the run."""
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
    """A PNG sheet: the reals scored most fake, then the fakes scored most real, each tile titled with
    its name and score (a bare Agg figure, as `harness.plots`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = [(f"reals scored most fake (top {len(reals)})", reals), (f"fakes scored most real (top {len(fakes)})", fakes)]
    blocks = [(label, listed) for label, listed in blocks if listed]
    rows_per = [math.ceil(len(listed) / columns) for _, listed in blocks]
    fig = Figure(figsize=(1.6 * columns, 1.9 * sum(rows_per) + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(sum(rows_per), columns)
    row = 0
    for (label, listed), n_rows in zip(blocks, rows_per):
        images = thumbnails([w.index for w in listed])
        for i, (w, image) in enumerate(zip(listed, images)):
            ax = fig.add_subplot(grid[row + i // columns, i % columns])
            ax.imshow(image, cmap="magma" if image.ndim == 2 else None, aspect="auto", origin="lower" if image.ndim == 2 else "upper")
            ax.set_title(f"{_short(w.name)}\n{w.score:.4f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label.split(" (")[0].replace(" scored ", "\nscored "), fontsize=7)
        row += n_rows
    fig.suptitle(f"{title}: most confidently wrong val clips (score = probability of fake)" if title else
                 "most confidently wrong val clips (score = probability of fake)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def split_thumbnails(data) -> Thumbnails:  # noqa: ANN001 - harness.data.dataset.SplitArrays
    """Thumbnails from a split's cached inputs: the log-mel image of an audio input, else the middle
    face crop of the video input."""

    def take(positions: list[int]) -> list[np.ndarray]:
        arrays = data.arrays(np.asarray(positions, dtype=np.int64))
        if "audio" in arrays:
            audio = arrays["audio"]
            # Windowed audio reads (clips, eval windows, H, W): show the middle window of each clip.
            return list(audio[:, audio.shape[1] // 2] if audio.ndim == 4 else audio)
        video = arrays["video"]
        return [clip[len(clip) // 2] for clip in video]

    return take
