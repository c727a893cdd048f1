"""Pseudo-fakes made from a run's training reals, on the fly, so a model meets forgery traces that no
method in the training fakes taught it (issue 21): `blend` (self-blended faces), `vocode` (vocoded audio),
`shift` (audio out of step with the face, fusion only).

`for_training` gives the training split and the batch hook for `harness.data.dataset.batches`: a share
`train.pseudo_rate` of each batch's fakes becomes pseudo-fakes of its reals; with no real fakes, half the
reals on average become their own pseudo-fakes (SBI's balanced pairs). Draws come from the batch
generator (seeded by `train.seed`); validation, test and predict never pass through here.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from harness.config import PSEUDO_FAKES, RunConfig, pseudo_kinds
from harness.data.dataset import SplitArrays
from harness.data.folds import subset
from harness.errors import BadInput

@dataclasses.dataclass
class PseudoFakes:
    """The training batches' hook: `(idx, inputs, labels, rng) -> (inputs, labels)` with pseudo-fakes in."""

    data: SplitArrays
    kinds: tuple[str, ...]
    rate: float
    reals_only: bool  # train.train_fakes = none
    frames_per_second: float
    vocoded: np.ndarray | None = None  # the split's audio array with its reals vocoded (vocode)

    @property
    def reals(self) -> np.ndarray:
        return np.flatnonzero(self.data.labels == 0)

    # One generator per kind: the chosen samples' inputs (changed in place), their split indices, the rng.
    def _blend(self, inputs: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator) -> None:
        from harness.pseudo.blend import blend

        inputs["video"][:] = blend(inputs["video"], self.data.face_points(idx)[0], rng)

    def _vocode(self, inputs: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator) -> None:
        rows = idx if self.data.rows is None else self.data.rows[idx]
        assert self.vocoded is not None, "vocoded copies are made when the hook is"
        inputs["audio"][:] = (self.vocoded[self.data.window_index(rows, rng)[0]].transpose(0, 2, 1) if self.data.window
                              else self.vocoded[rows])

    def _shift(self, inputs: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator) -> None:
        from harness.pseudo.shift import shift

        donors = self.data.arrays(rng.choice(self.reals, len(idx)), rng)["audio"]
        inputs["audio"][:] = shift(inputs["audio"], donors, self.frames_per_second, rng)

    def __call__(self, idx: np.ndarray, batch: dict[str, torch.Tensor], y: torch.Tensor,
                 rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        labels = y.numpy()
        reals = np.flatnonzero(labels == 0)
        if self.reals_only:
            slots = sources = reals[rng.random(len(reals)) < 0.5]
        else:
            fakes = np.flatnonzero(labels == 1)
            slots = fakes[rng.random(len(fakes)) < self.rate] if len(reals) else fakes[:0]
            sources = rng.choice(reals, len(slots)) if len(slots) else slots
        if not len(slots):
            return batch, y
        arrays = {name: t.cpu().numpy() for name, t in batch.items()}  # fresh copies of the rows: writable
        kind_of = rng.integers(len(self.kinds), size=len(slots))
        for k, kind in enumerate(self.kinds):  # slots and sources are disjoint, or the same distinct rows
            if (pick := kind_of == k).any():
                part = {name: a[sources[pick]] for name, a in arrays.items()}
                getattr(self, f"_{kind}")(part, idx[sources[pick]], rng)
                for name, a in arrays.items():
                    a[slots[pick]] = part[name]
        labels[slots] = 1.0
        return {name: torch.from_numpy(a) for name, a in arrays.items()}, y


def for_training(cfg: RunConfig, train: SplitArrays) -> tuple[SplitArrays, PseudoFakes | None]:
    """The training split as `train.train_fakes` asks and the `train.pseudo_fakes` hook (None: none asked)."""
    t = cfg.train
    if t.train_fakes == "none":
        train = subset(train, np.flatnonzero(train.labels == 0))
    if not (kinds := pseudo_kinds(t.pseudo_fakes)):
        return train, None
    hook = PseudoFakes(train, kinds, t.pseudo_rate, t.train_fakes == "none",
                       cfg.audio.sample_rate / cfg.audio.hop_length)
    if not len(hook.reals):
        raise BadInput(f"train.pseudo_fakes {t.pseudo_fakes}: the training split has no real clips to make them from")
    if "vocode" in kinds:
        from harness.pseudo.vocode import vocode_split

        rows = hook.reals if train.rows is None else train.rows[hook.reals]
        hook.vocoded = vocode_split(train.inputs["audio"], rows, cfg.audio, t.seed, train.spans)
    return train, hook


assert all(hasattr(PseudoFakes, f"_{kind}") for kind in PSEUDO_FAKES), "a generator per name in config.PSEUDO_FAKES"
