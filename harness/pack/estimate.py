"""How good the pack really is. Selection fits the out-of-fold scores (from enough pure-noise candidates it
still picks a pack well above 0.5: the "optimistic" AUC), so the nested estimate selects on the other
folds' rows (same size and limits), scores each held-out fold with that, and pools; the best single member
gets the same treatment. A paired bootstrap resampling whole groups of folds.csv compares the two.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from harness.analysis import N_BOOT, PairedComparison, paired_auc_difference
from harness.errors import BadInput
from harness.pack.oof import OofMatrix
from harness.pack.select import DEFAULT_SIZE, Limits, Selection, column_aucs, select


@dataclass(frozen=True)
class FoldPick:
    """What the selection chose without fold `fold`'s rows, and how it did on them."""

    fold: int
    weights: dict[str, int]  # member name -> weight
    single: str  # the best single member on the other folds
    auc: float  # the pack's AUC on this fold's rows (nan when they hold one class)


@dataclass(frozen=True)
class PackEstimate:
    """Everything a report, an MLflow description and a plot need about one pack selection."""

    selection: Selection  # on every out-of-fold row: the pack to build, and its trace
    best_single: int  # the best candidate alone (that fits the limits), on every row
    nested_auc: float  # pooled held-out AUC of the pack chosen on the other folds
    nested_single_auc: float  # the same for the best single member
    folds: tuple[FoldPick, ...]
    comparison: PairedComparison  # nested pack minus nested best single, group-resampled bootstrap

    @property
    def optimistic_auc(self) -> float:
        return self.selection.auc

    @property
    def best_single_auc(self) -> float:
        return self.selection.single_auc[self.best_single]

    @property
    def weights(self) -> dict[str, int]:
        """Member name -> weight, in order of first pick."""
        return {self.selection.names[j]: w for j, w in self.selection.weights.items()}

    def to_dict(self) -> dict:
        """Plain JSON-ready values (nan as None): the trace, the skipped candidates, the estimates."""
        s = self.selection
        out = json.dumps({
            "weights": self.weights, "params": s.params, "ms_per_clip": s.ms_per_clip, "kept_steps": s.kept,
            "stopped": s.stopped, "optimistic_auc": self.optimistic_auc, "nested_auc": self.nested_auc,
            "best_single": s.names[self.best_single], "best_single_auc": self.best_single_auc,
            "nested_single_auc": self.nested_single_auc, "comparison": self.comparison.to_dict(),
            "steps": [{k: v for k, v in asdict(step).items() if k != "skipped"} for step in s.steps],
            "skipped": [{"step": step.step, "name": k.name, "reason": k.reason} for step in s.steps for k in step.skipped],
            "single_auc": dict(zip(s.names, s.single_auc)),
            "folds": [asdict(f) for f in self.folds],
        })
        return json.loads(out, parse_constant=lambda _: None)  # NaN and +-Infinity as None

    def summary(self, names: Mapping[str, str] | None = None) -> list[str]:
        """The report's plain lines beside the trace; `names`: candidate -> what to call it (default itself)."""
        s, c = self.selection, self.comparison
        call = {n: (names or {}).get(n, n) for n in s.names}
        best = call[s.names[self.best_single]]
        lines = [f"skipped {call[s.names[j]]}: {reason}" for j, reason in s.skipped.items()]
        lines += [f"stopped early: {s.stopped}"] if s.stopped else []
        if len(s.weights) == 1:
            lines.append(f"one member only: {best} alone scores best out of fold ({self.best_single_auc:.4f}); "
                         f"no other candidate raised the AUC{' within the limits' if s.skipped else ''}")
        return lines + [
            f"OOF AUC {self.optimistic_auc:.4f} optimistic (selected on these rows), {self.nested_auc:.4f} nested; "
            f"best member {best}: {self.best_single_auc:.4f}, nested {self.nested_single_auc:.4f}",
            f"nested pack - best member {c.difference:+.4f}, 95% group bootstrap {c.low:+.4f} to {c.high:+.4f}: "
            f"{'distinguishably better' if c.better else 'not distinguishably better'}"]


def estimate_pack(matrix: OofMatrix, *, size: int = DEFAULT_SIZE, limits: Limits = Limits(), n_boot: int = N_BOOT,
                  alpha: float = 0.05, seed: int = 0) -> PackEstimate:
    """Select the pack on every out-of-fold row and estimate it honestly (module docstring); BadInput on fewer
    than two folds, a fold whose other rows hold one class, or nothing that fits the limits."""
    folds = np.unique(matrix.folds)
    if len(folds) < 2:
        raise BadInput(f"a nested estimate needs at least 2 folds; the out-of-fold rows have {len(folds)}")
    whole = select(matrix, size=size, limits=limits)
    if not whole.kept:
        raise BadInput(f"no candidate fits the limits: {whole.stopped}")
    pack, single = np.empty(len(matrix.labels)), np.empty(len(matrix.labels))
    picks = []
    for fold in folds:
        held = matrix.folds == fold
        inner = select(matrix.rows(~held), size=size, limits=limits)
        pack[held] = inner.combine(matrix.scores[held])
        single[held] = matrix.scores[held, inner.best_single]
        picks.append(FoldPick(int(fold), {matrix.names[j]: w for j, w in inner.weights.items()},
                              matrix.names[inner.best_single], float(column_aucs(pack[held, None], matrix.labels[held])[0])))
    nested = column_aucs(np.stack([pack, single], axis=1), matrix.labels)
    comparison = paired_auc_difference(matrix.labels, pack, single, groups=matrix.groups, n_boot=n_boot, alpha=alpha,
                                       seed=seed)
    return PackEstimate(whole, whole.best_single, float(nested[0]), float(nested[1]), tuple(picks), comparison)

