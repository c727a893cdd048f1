"""Model soups (Wortsman et al. 2022): members fine-tuned from one pretrained start averaged into ONE model
at the cost of one. The uniform soup averages all; the greedy soup adds members best first while the score
does not drop. Soups were found worse than the best single ResNet and EfficientNet, so `try_soups` keeps
one only when its out-of-fold AUC is not below the best member's. A member is one state dict per fold;
souping goes fold by fold and `cv_evaluator` pools each fold's val scores, so a soup's AUC is out of fold
(the greedy soup's optimistic, as a pack selection's).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.config import RunConfig, to_dict
from harness.errors import BadInput
from harness.models import resolve_name
from harness.pack.select import column_aucs

StateDict = dict[str, torch.Tensor]
Evaluate = Callable[[Sequence[StateDict]], float]  # souped weights per fold -> out-of-fold AUC


def soup_key(cfg: RunConfig) -> tuple:
    """What members must share to be souped: modality, backbones, start, head, scoring rule and inputs."""
    t = cfg.train
    names = ([t.backbone] if "audio" in cfg.inputs else []) + ([t.video_backbone or t.backbone] if "video" in cfg.inputs else [])
    backbones = tuple(resolve_name(name) for name in names)  # `arch` and `arch.default_tag` are one start
    inputs = tuple(sorted((name, repr(to_dict(cfg.features_for(name)))) for name in cfg.inputs))
    start = (t.pretrained, t.weights) if t.pretrained or t.weights else ("random init, seed", t.seed)
    return (cfg.modality, backbones, start, t.loss, t.aggregate, t.frame_aggregate, inputs)


def soup_groups(configs: Sequence[RunConfig]) -> list[list[int]]:
    """Positions of `configs` that can be souped together, groups of two or more, in order of first member."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(soup_key(cfg), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def average_states(states: Sequence[StateDict]) -> StateDict:
    """The element-wise mean of state dicts of one architecture (in float64, cast back); integer tensors
    (batch-norm step counters) come from the first. Raises BadInput when keys or shapes differ."""
    if not states:
        raise BadInput("a soup needs at least one state dict")
    first = states[0]
    for i, s in enumerate(states[1:], start=2):
        if s.keys() != first.keys():
            odd = sorted(set(s) ^ set(first))[0]
            raise BadInput(f"soup ingredient {i} has other weights than the first (e.g. {odd}): not one architecture")
        if (shape := next((k for k in first if s[k].shape != first[k].shape), None)) is not None:
            raise BadInput(f"soup ingredient {i}: {shape} is {tuple(s[shape].shape)}, not {tuple(first[shape].shape)}")
    return {key: (sum(s[key].double() for s in states) / len(states)).to(value.dtype) if value.is_floating_point()
            else value.clone() for key, value in first.items()}


def soup_of(members: Sequence[Sequence[StateDict]], ingredients: Sequence[int]) -> list[StateDict]:
    """The soup of `ingredients` (member positions), fold by fold."""
    folds = {len(members[i]) for i in ingredients}
    if len(folds) != 1:
        raise BadInput(f"soup members have different numbers of folds: {sorted(folds)}")
    return [average_states([members[i][f] for i in ingredients]) for f in range(folds.pop())]


@dataclass(frozen=True)
class Soup:
    kind: str  # "uniform" | "greedy"
    ingredients: tuple[int, ...]  # member positions
    auc: float


@dataclass(frozen=True)
class SoupOutcome:
    """Each member's score, both soups' and the one kept (None: no soup beat the best member)."""

    member_auc: tuple[float, ...]
    uniform: Soup
    greedy: Soup
    kept: Soup | None
    states: tuple[StateDict, ...] | None  # the kept soup's weights, one per fold

    @property
    def best_member(self) -> int:
        return int(np.argmax(self.member_auc))

    def message(self) -> str:
        """One line with the numbers: which soup was kept, or why none was."""
        best = f"the best member ({self.best_member}) {self.member_auc[self.best_member]:.4f}"
        both = (f"uniform soup of {len(self.uniform.ingredients)} {self.uniform.auc:.4f}, greedy soup of "
                f"{len(self.greedy.ingredients)} {self.greedy.auc:.4f}")
        if self.kept is None:
            return f"no soup kept: {both}; neither is a soup of 2+ members at least as good as {best}"
        return f"kept the {self.kept.kind} soup of members {list(self.kept.ingredients)}: {both}; {best}"


def greedy_soup(members: Sequence[Sequence[StateDict]], evaluate: Evaluate,
                member_auc: Sequence[float] | None = None) -> Soup:
    """Wortsman's greedy soup: members best first (ties: listed first), each kept unless it lowers the score."""
    scores = list(member_auc) if member_auc is not None else [evaluate(m) for m in members]
    order = sorted(range(len(members)), key=lambda i: (-scores[i], i))
    ingredients, auc = [order[0]], scores[order[0]]
    for i in order[1:]:
        trial = evaluate(soup_of(members, [*ingredients, i]))
        if trial >= auc:
            ingredients, auc = [*ingredients, i], trial
    return Soup("greedy", tuple(ingredients), float(auc))


def try_soups(members: Sequence[Sequence[StateDict]], evaluate: Evaluate) -> SoupOutcome:
    """Score every member, the uniform soup and the greedy soup with `evaluate`; keep the better soup
    of two or more members whose AUC is not below the best member's (a tie goes to the uniform soup)."""
    if len(members) < 2:
        raise BadInput(f"a soup needs at least 2 members, got {len(members)}")
    member_auc = tuple(float(evaluate(m)) for m in members)
    uniform = Soup("uniform", tuple(range(len(members))), float(evaluate(soup_of(members, range(len(members))))))
    greedy = greedy_soup(members, evaluate, member_auc)
    fit = [s for s in (uniform, greedy) if len(s.ingredients) > 1 and s.auc >= max(member_auc)]
    kept = max(fit, key=lambda s: s.auc) if fit else None  # max keeps the first of equals: uniform
    return SoupOutcome(member_auc, uniform, greedy, kept, tuple(soup_of(members, kept.ingredients)) if kept else None)


def cv_evaluator(score: Callable[[int, StateDict], np.ndarray], labels: np.ndarray, folds: np.ndarray) -> Evaluate:
    """An `Evaluate`: `score(fold, state)` scores fold `fold`'s val rows (in their order in `labels`) with
    weights `state`, the i-th state for the i-th fold of `np.unique(folds)`; AUC of the pooled scores."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    fold_ids = np.unique(folds)

    def evaluate(states: Sequence[StateDict]) -> float:
        if len(states) != len(fold_ids):
            raise BadInput(f"{len(states)} state dicts for {len(fold_ids)} folds")
        pooled = np.empty(len(labels))
        for fold, state in zip(fold_ids, states):
            pooled[folds == fold] = score(int(fold), state)
        return float(column_aucs(pooled[:, None], labels)[0])

    return evaluate
