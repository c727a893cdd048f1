"""Per-slice scores: how well the reals are told from each forgery method's fakes, and each fake modality's.

One AUC hides a method the model cannot see (0.9 overall can be 0.6 on the method the final test is full
of). So the val reals are scored against the fakes of each method (`method.<name>`) and fake modality
(`modality.<audio|video|both>`) the methods file names, each with a bootstrap interval (200 resamples: a few
ms a slice). The worst slice is what the run summary, the leaderboard and the promotion gate state.
Without methods, the slices are duration buckets (`duration.<a>-<b>s`), each bucket's reals against its own
fakes: length alone can tell the classes apart (a generator writing short clips), so only a within-bucket
AUC says how the model does when length cannot help. Logged as `slice/<name>/auc` (`_ci_low`, `_ci_high`)
and `slices.csv`.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from harness.fileio import csv_text

N_BOOT = 200
PREFIX = "slice/"
# Duration buckets' edges in seconds, doubling: the challenge's clips run from about 2 s to over 10 s.
DURATION_EDGES = (0.0, 2.0, 4.0, 8.0, 16.0, math.inf)
CSV_HEADER = ("slice", "reals", "fakes", "auc", "ci_low", "ci_high")


@dataclass(frozen=True)
class Slice:
    name: str  # method.<name>, modality.<name> or duration.<a>-<b>s
    reals: int
    fakes: int
    auc: float
    low: float
    high: float

    def line(self) -> str:
        """'method.vocoder AUC 0.6100 [0.4500, 0.7700]'."""
        return f"{self.name} AUC {_num(self.auc)} [{_num(self.low)}, {_num(self.high)}]"


def _num(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "n/a"


def metric_name(name: str) -> str:
    """A slice name as MLflow accepts it in a metric name (other characters become `_`)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name)


def fake_groups(names: Sequence[str], methods: Mapping[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """Slice name -> mask over `names` of the fakes in it, by method, then by fake modality."""
    groups: dict[str, np.ndarray] = {}
    for field, kind in enumerate(("method", "modality")):
        for i, name in enumerate(names):
            found = methods.get(name)
            if found is not None and found[0] != "real" and found[field]:
                groups.setdefault(f"{kind}.{found[field]}", np.zeros(len(names), bool))[i] = True
    return groups


def duration_groups(names: Sequence[str], seconds: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Slice name -> mask over `names` of the clips (reals and fakes) in each non-empty `DURATION_EDGES` bucket."""
    lengths = np.array([seconds.get(n, math.nan) for n in names], dtype=float)
    groups = {}
    for low, high in itertools.pairwise(DURATION_EDGES):
        mask = (lengths >= low) & (lengths < high)  # NaN compares false: in no bucket
        if mask.any():
            groups[f"duration.{low:g}-{high:g}s" if math.isfinite(high) else f"duration.{low:g}s-up"] = mask
    return groups


def score_slices(labels: np.ndarray, scores: np.ndarray, groups: Mapping[str, np.ndarray], *,
                 n_boot: int = N_BOOT, within: bool = False) -> list[Slice]:
    """AUC (with its 95% interval) of every real against each group's fakes; `within`: the group's own reals."""
    from sklearn.metrics import roc_auc_score

    from harness.metrics import bootstrap_auc_interval

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    out = []
    for name, mask in groups.items():
        mask = np.asarray(mask)
        pick = mask if within else (labels == 0) | (mask & (labels == 1))
        y, s = labels[pick], scores[pick]
        fakes = int(y.sum())
        if 0 < fakes < len(y):
            auc, (low, high) = float(roc_auc_score(y, s)), bootstrap_auc_interval(y, s, n_boot=n_boot)
        else:
            auc = low = high = math.nan
        out.append(Slice(name, len(y) - fakes, fakes, auc, low, high))
    return out


def run_slices(names: Sequence[str], labels: np.ndarray, scores: np.ndarray,
               methods: Mapping[str, tuple[str, str]], *, seconds: Mapping[str, float] | None = None,
               n_boot: int = N_BOOT) -> list[Slice]:
    """Every slice the methods give for these clips, else the duration buckets of `seconds` (or none)."""
    groups = fake_groups(names, methods)
    if groups:
        return score_slices(labels, scores, groups, n_boot=n_boot)
    return score_slices(labels, scores, duration_groups(names, seconds or {}), n_boot=n_boot, within=True)


def worst(slices: Sequence[Slice]) -> Slice | None:
    """The slice with the lowest finite AUC (ties: by name), None when none has one."""
    scored = [s for s in slices if math.isfinite(s.auc)]
    return min(scored, key=lambda s: (s.auc, s.name)) if scored else None


def slice_metrics(slices: Sequence[Slice]) -> dict[str, float]:
    """`slice/<name>/auc`, `/auc_ci_low`, `/auc_ci_high` of each slice (finite values only)."""
    out = {}
    for s in slices:
        base = f"{PREFIX}{metric_name(s.name)}/auc"
        out.update({k: v for k, v in ((base, s.auc), (f"{base}_ci_low", s.low), (f"{base}_ci_high", s.high))
                    if math.isfinite(v)})
    return out


def slices_csv(slices: Sequence[Slice]) -> str:
    return csv_text(CSV_HEADER, [(s.name, s.reals, s.fakes, *(f"{v:.6f}" for v in (s.auc, s.low, s.high)))
                                 for s in slices])


def worst_from_metrics(metrics: Mapping[str, float]) -> Slice | None:
    """The worst slice recorded in a run's metrics (`slice_metrics` names); counts unknown (0)."""
    return worst([Slice(key[len(PREFIX):-len("/auc")], 0, 0, auc, metrics.get(f"{key}_ci_low", math.nan),
                        metrics.get(f"{key}_ci_high", math.nan))
                  for key, auc in metrics.items() if key.startswith(PREFIX) and key.endswith("/auc")])
