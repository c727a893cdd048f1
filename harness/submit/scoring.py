"""Test scoring for `harness submit`: every template row, from the feature cache, with fallbacks.

Features come through the feature cache (`prepare_features`: the same extraction as `harness
predict`, computed in parallel and reused), the model through `harness.predict.Predictor`. A clip
none of whose inputs can be made scores the predictor's fallback (0.5: see harness.predict) and is
returned as a `Fallback` with the reason per input; a fusion model scores a clip from whichever
input it has.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harness.data.cache import feature_dir, load_split, prepare_features
from harness.data.dataset import load_arrays
from harness.predict import Predictor
from harness.submit.checks import SubmitError

SLICE = 1024  # test rows read from the memmapped cache and scored at a time


class Fallback(NamedTuple):
    """A test clip scored at the fallback: its name, why (per input for a fusion model), the detail."""

    name: str
    reason: str
    detail: str


def score_test_split(
    ds: Any, predictor: Predictor, names: list[str], *, cache_root: Path, workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[list[float], list[Fallback]]:
    """Score the test split from the feature cache (prepared here if needed), in the template's order.

    A clip with none of the model's inputs gets the fallback score; a fusion model scores a clip
    from whichever input it has.

    Returns:
        (one score per name, in `names` order; the clips that fell back, in `names` order).

    Raises:
        SubmitError: the cache's test index is not in the template's order.
    """
    cfg = predictor.cfg
    folders, failures, reasons = {}, {}, {}
    for name in cfg.inputs:
        settings = cfg.features_for(name)
        prepared = prepare_features(ds, settings, cache_root=cache_root, workers=workers, splits=("test",),
                                    on_progress=on_progress)
        folders[name] = feature_dir(ds, settings, cache_root)
        _, index = load_split(folders[name], "test")
        if [row["name"] for row in index] != names:
            raise SubmitError(f"the feature cache's test index does not follow the template's order ({prepared.cache})")
        failures.update({(name, f.name): f.detail for f in prepared.failures})
        for row in index:
            if row["ok"] != "1":
                reasons.setdefault(row["name"], []).append((name, row["reason"]))
    data = load_arrays(folders, "test", usable_only=False, features=cfg.features)  # windowed: the evaluation windows
    missing = {n for n, why in reasons.items() if len(why) == len(cfg.inputs)}  # no input at all
    usable = np.flatnonzero([n not in missing for n in data.names])
    scores = np.full(len(names), predictor.fallback, dtype=np.float64)
    for start in range(0, len(usable), SLICE):  # a bounded slice of the memmap in memory at a time
        rows = usable[start : start + SLICE]
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

    fallbacks = [Fallback(n, *why(n)) for n in names if n in missing]
    return scores.tolist(), fallbacks
