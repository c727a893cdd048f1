"""`harness pack --soup`: members of one architecture and pretrained start (`harness.pack.soup_groups`)
averaged into one model when that is not worse out of fold than the best of them: each ingredient's fold
models are souped fold by fold, the soup of fold k scoring fold k's held-out clips from the feature cache.
A kept soup replaces its ingredients by one member: the same soup of their official-split weights, with
the sum of their weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def apply_soups(client: Any, rows: list[tuple[Any, Any, Path]], matrix: Any, ready_for: Any, say: Any,
                folder: Path) -> tuple[list[tuple[Any, Any, Path]], list[str]]:
    """`rows` (candidate, MemberSpec, official checkpoint) with each kept soup in place of its ingredients,
    and one line per group tried (also `say`-ed). `matrix`: the aligned `OofMatrix`; `ready_for`: settings
    -> `harness.preflight.Ready`; a kept soup's official weights are written to `folder`."""
    from safetensors.torch import load_file, save_file

    from harness.pack import MemberSpec, cv_evaluator, soup_groups, soup_of, try_soups
    from harness.tracking.pack_run import fold_weights

    lines, out, used = [], list(rows), set()
    for group in soup_groups([spec.config for _, spec, _ in rows]):
        candidates = [rows[i][0] for i in group]
        cfg = rows[group[0]][1].config
        members = [[load_file(str(p)) for p in fold_weights(client, c.run_id)] for c in candidates]
        evaluate = cv_evaluator(_fold_scorer(cfg, matrix, ready_for(cfg)), matrix.labels, matrix.folds)
        outcome = try_soups(members, evaluate)
        lines.append(f"soup of {', '.join(c.run_id[:8] for c in candidates)}: {outcome.message()}")
        say(lines[-1])
        if outcome.kept is None:
            continue
        chosen = [group[i] for i in outcome.kept.ingredients]
        state = soup_of([[load_file(str(rows[i][2]))] for i in chosen], range(len(chosen)))[0]
        path = Path(folder) / f"soup-{len(lines)}.safetensors"
        save_file(state, str(path))
        spec = MemberSpec("+".join(rows[i][1].run_id for i in chosen), sum(rows[i][1].weight for i in chosen), cfg)
        out[chosen[0]] = (rows[chosen[0]][0], spec, path)
        used.update(chosen[1:])
    return [row for i, row in enumerate(out) if i not in used], lines


def _fold_scorer(cfg: Any, matrix: Any, ready: Any):  # noqa: ANN202 - (fold, state) -> scores
    """score(fold, state): fold `fold`'s out-of-fold rows (the matrix's order) scored by a `cfg` model of `state`."""
    from harness.data.dataset import load_arrays
    from harness.predict import Predictor

    splits = {s: load_arrays(ready.features, s, usable_only=False, audio=cfg.audio) for s in ("train", "val")}
    where = {f"{s}/{name}": (s, i) for s, data in splits.items() for i, name in enumerate(data.names)}

    def score(fold: int, state: dict) -> np.ndarray:
        keys = [k for k, f in zip(matrix.keys, matrix.folds) if f == fold]
        predictor = Predictor(cfg, "soup", state=state)
        out = np.empty(len(keys))
        for split, data in splits.items():
            at = [j for j, k in enumerate(keys) if where[k][0] == split]
            if at:
                batch = data.arrays(np.array([where[keys[j]][1] for j in at]))
                if len(cfg.inputs) > 1:
                    for name in cfg.inputs:
                        batch.setdefault(f"{name}_present", np.ones(len(at), dtype=bool))
                out[at] = predictor.score_inputs(batch)
        return out

    return score
