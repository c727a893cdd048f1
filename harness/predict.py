"""Checkpoint + clips -> probability of fake: the one scoring path behind `harness predict`,
`harness submit` and a promoted bundle's `api.py`.

A `Predictor` comes from a run's settings and safetensors checkpoint, a recorded run (`from_run`, the only
path importing mlflow) or a bundle folder (`from_bundle`, checked by `harness.bundle_format` first). A clip
is scored from the arrays the feature cache would make of it (`harness.data.cache.extract`, JPEG-stored
crops re-encoded alike), by `modalities.build_model` with strictly loaded weights, in eval mode, fp32.
TTA (audio, `tta=N` > 1) averages N circular time shifts spread over training's +-`time_shift * strength`
of the width (over the whole width when training did not shift); a windowed audio model instead
aggregates `eval_windows` evenly spaced windows by `train.aggregate`, as validation does (tta 1).

A missing or unreadable command-line path is a usage error (`check_paths`, exit 2). A clip without usable
features makes `score` raise a `MediaError`; `score_many` gives it `FALLBACK_SCORE` and the reason (a
fusion model only when neither input can be made). 0.5 puts a clip we cannot judge mid-ranking for AUC.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from harness.config import RunConfig
from harness.data.media import MediaError, is_media
from harness.errors import BadInput, NotFound

FALLBACK_SCORE = 0.5
SCORE_DECIMALS = 8  # the challenge asks for at least 6
BATCH_SIZE = 16


class MissingFile(MediaError):
    reason = "missing"


class WeightsMismatch(BadInput, RuntimeError):
    """Weights that do not fit the model the settings build (another backbone, another head)."""


@dataclass(frozen=True)
class Scored:
    path: str
    score: float  # probability of fake; FALLBACK_SCORE when not ok
    ok: bool
    reason: str = ""  # MediaError.reason when not ok
    detail: str = ""


def format_score(score: float) -> str:
    return f"{score:.{SCORE_DECIMALS}f}"


def write_scores(rows: Iterable[Scored], stream: IO[str]) -> None:
    """`path,score` lines, CSV-quoted where a path needs it: what `harness predict` and `api.py` print."""
    csv.writer(stream, lineterminator="\n").writerows([row.path, format_score(row.score)] for row in rows)


def check_paths(paths: Iterable[str | Path]) -> None:
    """Refuse, before scoring, a path that does not exist or cannot be read: a usage error, not a fallback."""
    for p in map(Path, paths):
        if not p.exists():
            raise NotFound(f"{p}: no such file or folder")
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            raise BadInput(f"{p}: permission denied (cannot read it)")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the media files they hold, recursively, in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_media(f) and not f.name.startswith("."))
                   if p.is_dir() else [p])
    return out


def tta_shifts(cfg: RunConfig, n: int) -> list[int]:
    """The circular time shifts (columns) averaged over for `n`-fold TTA; [0] for n = 1."""
    if n < 1:
        raise ValueError(f"tta must be at least 1, got {n}")
    if n == 1:
        return [0]
    width = cfg.audio.width
    reach = cfg.train.augment.time_shift * cfg.train.augment.strength * width
    if reach >= 1:
        return [round(float(s)) for s in np.linspace(-reach, reach, n)]
    return [round(k * width / n) for k in range(n)]


def is_demo_data(folder: str | Path | None) -> bool:
    """Whether `folder` holds the synthetic demo dataset (`harness demo-data` marks it)."""
    from harness.data.demo.dataset import MARKER

    return folder is not None and (Path(folder) / MARKER).is_file()


class Predictor:
    """A loaded model and its feature settings; `score(path)` and `score_many(paths)`."""

    demo = False  # trained on the synthetic demo dataset (set by from_run and from_bundle)

    def __init__(self, cfg: RunConfig, weights: Path | str, *, tta: int = 1, device: str = "cpu",
                 stats: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                 fallback: float = FALLBACK_SCORE, batch_size: int = BATCH_SIZE, source: str = "",
                 state: dict | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        from harness.engine import Inputs, pick_device
        from harness.modalities import build_model, input_stats

        if not 0.0 <= fallback <= 1.0:
            raise ValueError(f"fallback score must lie in [0, 1], got {fallback}")
        self.cfg = cfg
        self.weights = Path(weights)
        # Only audio is shifted; other models record tta = 1, so no report claims shifts never made.
        shifted = "audio" in cfg.inputs and not cfg.audio.windowed
        self.shifts = tta_shifts(cfg, tta) if shifted else [0]
        self.tta = tta if shifted else 1
        self.fallback = float(fallback)
        self.batch_size = max(1, batch_size)
        self.source = source or str(self.weights)
        try:
            self.device = pick_device(device)
        except RuntimeError as e:  # no CUDA, or a device name torch does not know
            raise BadInput(f"--device {device}: {e}") from None
        if self.device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            # every CPU this process may run on (torch may count physical cores only; sched_getaffinity: Linux)
            available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            if torch.get_num_threads() < available:
                torch.set_num_threads(available)
        model = build_model(cfg, pretrained=False)
        try:  # safetensors: tensors only, no pickle (a pack hands each member its part of its file)
            model.load_state_dict(load_file(str(self.weights)) if state is None else state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0].rstrip(":")
            raise WeightsMismatch(f"{self.weights}: the weights do not fit a {cfg.train.backbone} {cfg.modality} "
                                  f"model ({first})") from None
        stats = stats or input_stats(cfg, model)  # timm's pretrained config (offline) unless the bundle has its own
        self.stats = {name: (tuple(float(v) for v in m), tuple(float(v) for v in s)) for name, (m, s) in stats.items()}
        self.model = model.to(self.device).eval()
        self.inputs = Inputs(self.stats).to(self.device)

    @classmethod
    def from_run(cls, run: str, *, tta: int = 1, device: str = "cpu") -> Predictor | PackPredictor:
        """The best checkpoint of run `run` (an id, `best` or `last`), or a pack's `PackPredictor`."""
        from harness import tracking  # lazy: the only import of mlflow on this path
        from harness.tracking.tags import DATA_PATH

        found = tracking.resolve_run(tracking.setup(), run)
        source = f"run {found.run_id}"
        predictor = PackPredictor(found.weights, device=device, source=source) if found.pack else \
            cls(found.config, found.weights, tta=tta, device=device, source=source)
        predictor.demo = is_demo_data(found.run.data.tags.get(DATA_PATH))
        return predictor

    @classmethod
    def from_bundle(cls, folder: Path | str, *, tta: int | None = None, device: str = "cpu") -> Predictor | PackPredictor:
        """A promoted bundle, checked first, or a pack's `PackPredictor`; `tta` None: the bundle's own."""
        from harness.bundle_format import read_config

        bundle = read_config(folder)
        source = f"bundle {bundle.folder} (run {bundle.run_id})"
        predictor = PackPredictor(bundle.weights, device=device, fallback=bundle.fallback, source=source) if bundle.pack \
            else cls(bundle.run_config, bundle.weights, tta=bundle.tta if tta is None else tta, device=device,
                     stats=bundle.stats, fallback=bundle.fallback, source=source)
        predictor.demo = bundle.demo
        return predictor

    def features(self, path: Path | str) -> dict[str, np.ndarray]:
        """One clip's uint8 inputs as the cache would hold them; fusion: zeros and `<input>_present` for a failed one."""
        from harness.data.cache import extract
        from harness.data.features import eval_windows

        if not Path(path).is_file():
            raise MissingFile(path, "no such file")
        out: dict[str, np.ndarray] = {}
        errors: list[MediaError] = []
        for name in self.cfg.inputs:
            settings = self.cfg.features_for(name)
            try:
                array = extract(path, settings)[0]
                out[name] = eval_windows(array, settings) if self._windowed(name) else array
            except MediaError as e:
                if len(self.cfg.inputs) == 1:
                    raise
                errors.append(e)
                out[name] = np.zeros(self.input_shape(name), dtype=np.uint8)
                out[f"{name}_present"] = np.array(False)
        if len(errors) == len(self.cfg.inputs):
            raise errors[0]
        if len(self.cfg.inputs) > 1:
            for name in self.cfg.inputs:
                out.setdefault(f"{name}_present", np.array(True))
        return out

    def _windowed(self, name: str) -> bool:
        return name == "audio" and self.cfg.audio.windowed

    def input_shape(self, name: str) -> tuple[int, ...]:
        """One clip's array of input `name` as `features` makes it: (K, H, W) windows for windowed audio."""
        shape = tuple(self.cfg.features_for(name).shape)
        return (self.cfg.audio.eval_windows, *shape) if self._windowed(name) else shape

    def score_inputs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Probability of fake (float64) for stacked inputs as `features` makes them, TTA applied."""
        import torch

        from harness.engine import aggregate_scores, call_model, fake_probability

        for name in self.cfg.inputs:
            if batch[name].shape[1:] != (want := self.input_shape(name)):
                raise ValueError(f"expected {name} inputs of shape (N, {', '.join(map(str, want))}), got {batch[name].shape}")
        n = len(batch[self.cfg.inputs[0]])
        out = np.empty(n, dtype=np.float64)
        windows = self.cfg.audio.eval_windows if self._windowed("audio") else 1
        step = max(1, self.batch_size // (len(self.shifts) * windows))
        with torch.inference_mode():
            for start in range(0, n, step):
                chunk = {k: torch.from_numpy(np.ascontiguousarray(v[start : start + step])) for k, v in batch.items()}
                size = len(chunk[self.cfg.inputs[0]])
                x = self.inputs(chunk, self.device)
                if self.shifts != [0]:
                    x = {k: torch.cat([torch.roll(v, s, dims=3) for s in self.shifts]) if k == "audio"
                         else torch.cat([v] * len(self.shifts)) for k, v in x.items()}
                probs = fake_probability(call_model(self.model, x)).view(len(self.shifts), size, windows).mean(dim=0)
                out[start : start + size] = aggregate_scores(probs, self.cfg.train.aggregate).cpu().numpy()
        return out

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Probability of fake for a single-input model's stacked inputs (log-mels or face crops)."""
        if len(self.cfg.inputs) != 1:
            raise ValueError(f"a {self.cfg.modality} model reads {' and '.join(self.cfg.inputs)}: use score_inputs")
        return self.score_inputs({self.cfg.inputs[0]: np.asarray(images)})

    def score(self, path: Path | str) -> float:
        """Probability of fake for one clip. Raises a MediaError when it has no usable input."""
        return float(self.score_inputs({k: v[None] for k, v in self.features(path).items()})[0])

    def score_many(self, paths: Sequence[Path | str], *,
                   on_progress: Callable[[int, int], None] | None = None) -> list[Scored]:
        """One row per path, in order; clips without features get the fallback score and the reason."""
        rows: list[Scored | None] = [None] * len(paths)
        pending: list[tuple[int, dict[str, np.ndarray]]] = []

        def flush() -> None:
            stacked = {k: np.stack([inputs[k] for _, inputs in pending]) for k in pending[0][1]}
            for (i, _), score in zip(pending, self.score_inputs(stacked)):
                rows[i] = Scored(str(paths[i]), float(score), True)
            pending.clear()

        for i, path in enumerate(paths):
            try:
                pending.append((i, self.features(path)))
            except MediaError as e:
                rows[i] = Scored(str(path), self.fallback, False, e.reason, e.detail)
            if len(pending) >= self.batch_size or (pending and i == len(paths) - 1):
                flush()
            if on_progress:
                on_progress(i + 1, len(paths))
        return rows  # type: ignore[return-value] - every slot is filled


class PackPredictor:
    """A saved pack as one scorer: a `Predictor` per member (no TTA), combined by `combine_members`."""

    demo = False
    tta, shifts = 1, [0]

    def __init__(self, weights: Path | str, *, device: str = "cpu", fallback: float = FALLBACK_SCORE,
                 source: str = "") -> None:
        from safetensors.torch import load_file

        from harness.pack.model import read_members

        self.weights = Path(weights)
        self.specs = read_members(self.weights.parent)
        state = load_file(str(self.weights))
        self.source = source or str(self.weights)
        self.fallback = float(fallback)
        self.members = []
        for i, spec in enumerate(self.specs):
            prefix = f"members.{i}.model."  # PackedModel's keys: members.<i>.model.<the member's own>
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            self.members.append(Predictor(spec.config, self.weights, device=device, fallback=fallback, state=own,
                                          source=f"{self.source} member {i + 1}"))
        self.member_weights = np.array([s.weight for s in self.specs], dtype=np.float64)
        self.cfg = self.specs[0].config  # the first member's settings: track and dataset checks

    def score_many(self, paths: Sequence[Path | str], *,
                   on_progress: Callable[[int, int], None] | None = None) -> list[Scored]:
        """One row per path, in order, as `Predictor.score_many`."""
        rows = [m.score_many(paths, on_progress=on_progress) for m in self.members]
        ok = np.array([[r.ok for r in member] for member in rows]).T
        scores = combine_members(np.array([[r.score for r in member] for member in rows]).T, ok,
                                 self.member_weights, self.fallback)
        first = rows[0]  # a clip no member could read: the first member's reason
        return [Scored(str(p), float(s), True) if ok[i].any() else
                Scored(str(p), float(s), False, first[i].reason, first[i].detail) for i, (p, s) in enumerate(zip(paths, scores))]


def combine_members(scores: np.ndarray, ok: np.ndarray, weights: np.ndarray, fallback: float) -> np.ndarray:
    """Per clip, the weighted mean of the members (columns) that could score it (`ok`), else `fallback`."""
    w = ok * np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    return np.where(total > 0, (scores * w).sum(axis=1) / np.where(total > 0, total, 1), fallback)
