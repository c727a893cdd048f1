"""Test scoring for `harness submit` (and a pack's val scoring): every row, through the feature cache and
`harness.predict.Predictor`. A clip with no usable input scores the fallback, returned as a `Fallback` with a
reason per input; a fusion model scores from whichever input it has, a pack from the members that have theirs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harness.data.cache import feature_dir, load_split, prepare_features
from harness.data.dataset import load_arrays
from harness.predict import PackPredictor, Predictor, combine_members
from harness.submit.checks import SubmitError

SLICE = 1024  # test rows read from the memmapped cache and scored at a time


class Fallback(NamedTuple):
    """A test clip scored at the fallback: its name, why (per input for a fusion model), the detail."""

    name: str
    reason: str
    detail: str


def score_test_split(ds: Any, predictor: Predictor | PackPredictor, names: list[str], *, cache_root: Path, workers: int,
                     on_progress: Callable[[int, int], None] | None, split: str = "test") -> tuple[list[float], list[Fallback]]:
    """(a score a name, the clips that fell back) in `names` order; SubmitError when the cache's index is not."""
    members = getattr(predictor, "members", [predictor])
    parts = [_score_member(ds, m, names, split, cache_root=cache_root, workers=workers, on_progress=on_progress)
             for m in members]
    ok = np.stack([usable for _, usable, _ in parts], axis=1)
    scores = combine_members(np.stack([member_scores for member_scores, _, _ in parts], axis=1), ok,
                             getattr(predictor, "member_weights", np.ones(1)), predictor.fallback)
    fallbacks = [Fallback(n, *parts[0][2](n)) for n, row in zip(names, ok) if not row.any()]
    return scores.tolist(), fallbacks


def _score_member(ds: Any, predictor: Predictor, names: list[str], split: str, *, cache_root: Path, workers: int,
                  on_progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray, Callable]:
    """One model's scores of `names`, which of them it could score, and why(name) for those it could not."""
    cfg = predictor.cfg
    folders, failures, reasons = {}, {}, {}
    for name in cfg.inputs:
        settings = cfg.features_for(name)
        prepared = prepare_features(ds, settings, cache_root=cache_root, workers=workers, splits=(split,),
                                    on_progress=on_progress)
        folders[name] = feature_dir(ds, settings, cache_root)
        _, index = load_split(folders[name], split)
        if [row["name"] for row in index] != names:
            raise SubmitError(f"the feature cache's {split} index does not follow the template's order ({prepared.cache})")
        failures.update({(name, f.name): f.detail for f in prepared.failures})
        for row in index:
            if row["ok"] != "1":
                reasons.setdefault(row["name"], []).append((name, row["reason"]))
    data = load_arrays(folders, split, usable_only=False, audio=cfg.audio)  # windowed: the evaluation windows
    missing = {n for n, why in reasons.items() if len(why) == len(cfg.inputs)}  # no input at all
    usable = np.array([n not in missing for n in data.names], dtype=bool)
    scores = np.full(len(names), predictor.fallback, dtype=np.float64)
    rows_usable = np.flatnonzero(usable)
    for start in range(0, len(rows_usable), SLICE):  # a bounded slice of the memmap in memory at a time
        rows = rows_usable[start : start + SLICE]
        batch = data.arrays(rows)
        if len(cfg.inputs) > 1:
            for k in cfg.inputs:
                batch.setdefault(f"{k}_present", np.ones(len(rows), dtype=bool))
        scores[rows] = predictor.score_inputs(batch)

    def why(name: str) -> tuple[str, str]:
        parts = reasons[name]
        if len(parts) == 1:
            return parts[0][1], failures.get((parts[0][0], name), "")
        return "; ".join(f"{i}: {r}" for i, r in parts), "; ".join(failures.get((i, name), "") for i, _ in parts)

    return scores, usable, why
