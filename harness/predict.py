"""Checkpoint + clips -> probability of fake: the one scoring path behind `harness predict`,
`harness submit` and a promoted bundle's `api.py`.

A `Predictor` is built from a run's settings and its safetensors checkpoint, from a recorded run
(`from_run`, through `harness.tracking`) or from a bundle folder (`from_bundle`, no MLflow at all:
this module imports neither mlflow nor harness.tracking until `from_run` is called). A bundle is
read through `harness.bundle.format`, which checks that its weights lie inside it, are safetensors
and match the sha256 its config.json records, before anything is loaded.

Scoring one clip:

  features  `harness.data.cache.extract` for each of the model's inputs: the function the feature
            cache runs, so a clip is scored from the very arrays training would have made of it
            (face crops that training read from JPEG storage go through the same JPEG encoding and
            the CPU decoder: the pixels the model learned on);
  model     `modalities.build_model(cfg, pretrained=False)` with the checkpoint loaded strictly from
            safetensors (nothing unpickles), in eval mode under `torch.inference_mode`, fp32, each
            input normalised by its backbone's pretrained mean/std;
  TTA       audio models only: with `tta=N` (N > 1) the probability is the mean over N circular
            shifts of the log-mel's time axis,
            evenly spaced over the shifts training saw: from -m to +m columns, m = the run's
            `augment.time_shift * augment.strength` times the image width (over the whole width,
            k * W / N, when training did not shift). N = 1 (the default) scores the image as it is.
  windows   a windowed audio model (`features.window_seconds`) scores `features.eval_windows` evenly
            spaced windows of the clip's whole log-mel (`features.eval_windows`, a short clip tiled)
            and aggregates them by `train.aggregate`, exactly as validation in training does; TTA
            shifts do not apply (the windows are its test-time augmentation), so tta is recorded as 1.

Input paths given on a command line go through `check_paths` first: one that does not exist or
cannot be read is a usage error (exit 2), never a row at the fallback score.
Clips without usable features (missing, empty, undecodable, no audio or video, truncated, too
short, silent) make `score` raise a `MediaError`; the batch form `score_many` catches it, scores the
clip `FALLBACK_SCORE` and says why in the `Scored` row. A fusion model raises only when neither input
can be made: with one, the other branch's head scores the clip.

Fallback: 0.5, the uninformative score. AUC, the challenge's metric, ranks clips: 0.5 puts a clip we
cannot judge in the middle of the ranking rather than betting on either class (the train prior would
rank it as confidently as the class mix happens to be, and 0 or 1 would put it at an extreme).
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
from harness.data.media import is_media
from harness.data.media import MediaError
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
    writer = csv.writer(stream, lineterminator="\n")
    for row in rows:
        writer.writerow([row.path, format_score(row.score)])


def check_paths(paths: Iterable[str | Path]) -> None:
    """Refuse, before any scoring, an input path that does not exist or cannot be read: a typo is a
    usage error, not a clip to score at the fallback (that is for files that exist but do not decode).

    Raises:
        NotFound: a path that does not exist.
        BadInput: a path this process may not read (a folder: may not list).
    """
    for p in map(Path, paths):
        if not p.exists():
            raise NotFound(f"{p}: no such file or folder")
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            raise BadInput(f"{p}: permission denied (cannot read it)")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their extension); folders replaced by the clips and audio files they
    hold, recursively, in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # The dataset's own rule for what a clip or face image is (harness.data.media).
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_media(f) and not f.name.startswith(".")))
        else:
            out.append(p)
    return out


def tta_shifts(cfg: RunConfig, n: int) -> list[int]:
    """The circular time shifts (columns) averaged over for `n`-fold TTA; [0] for n = 1."""
    if n < 1:
        raise ValueError(f"tta must be at least 1, got {n}")
    width = cfg.features.width
    if n == 1:
        return [0]
    aug = cfg.train.augment
    reach = aug.time_shift * aug.strength * width
    if reach >= 1:
        return [round(float(s)) for s in np.linspace(-reach, reach, n)]
    return [round(k * width / n) for k in range(n)]


class Predictor:
    """A loaded model and its feature settings; `score(path)` and `score_many(paths)`."""

    def __init__(
        self,
        cfg: RunConfig,
        weights: Path | str,
        *,
        tta: int = 1,
        device: str = "cpu",
        stats: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
        fallback: float = FALLBACK_SCORE,
        batch_size: int = BATCH_SIZE,
        source: str = "",
    ) -> None:
        import torch
        from safetensors.torch import load_file

        from harness.engine import Inputs, pick_device
        from harness.modalities import build_model, input_stats

        if not 0.0 <= fallback <= 1.0:
            raise ValueError(f"fallback score must lie in [0, 1], got {fallback}")
        self.cfg = cfg
        self.weights = Path(weights)
        # TTA shifts the log-mel's time axis: it applies to models that read audio; others score as is
        # (and record tta = 1, so that a bundle or a report never claims shifts that were not made).
        shifted = "audio" in cfg.inputs and not cfg.features.windowed
        self.shifts = tta_shifts(cfg, tta) if shifted else [0]
        self.tta = tta if shifted else 1
        self.fallback = float(fallback)
        self.batch_size = max(1, batch_size)
        self.source = source or str(self.weights)
        try:
            self.device = pick_device(device)
        except RuntimeError as e:  # no CUDA, or a device name torch does not know
            raise BadInput(f"--device {device}: {e}") from None
        if self.device.type == "cpu":
            _use_available_cpus(torch)
        model = build_model(cfg, pretrained=False)
        try:
            model.load_state_dict(load_file(str(self.weights)), strict=True)  # safetensors: tensors only, no pickle
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0].rstrip(":")
            raise WeightsMismatch(f"{self.weights}: the weights do not fit a {cfg.train.backbone} {cfg.modality} "
                                  f"model ({first})") from None
        # timm's pretrained config (data, works offline) unless the bundle recorded its own
        stats = stats or input_stats(cfg, model)
        self.stats = {name: (tuple(float(v) for v in m), tuple(float(v) for v in s)) for name, (m, s) in stats.items()}
        self.model = model.to(self.device).eval()
        self.inputs = Inputs(self.stats).to(self.device)

    # ----------------------------------------------------------------------------------- builders

    @classmethod
    def from_run(cls, run: str, *, tta: int = 1, device: str = "cpu") -> Predictor:
        """The best checkpoint of a recorded run (downloaded once into .cache/runs).

        Args:
            run: a run id, or `best` / `last` (see `harness.tracking.resolve_run_id`).

        Raises:
            NotFound: an unknown run, or one without a checkpoint.
            BadInput: text that cannot be a run id (`../../x`).
        """
        from harness import tracking  # lazy: the only import of mlflow on this path
        from harness.tracking import registry

        client = tracking.setup()
        run_id = registry.find_run(client, run).info.run_id
        cfg, weights = tracking.load_run_config(client, run_id)
        return cls(cfg, weights, tta=tta, device=device, source=f"run {run_id}")

    @classmethod
    def from_bundle(cls, folder: Path | str, *, tta: int | None = None, device: str = "cpu") -> Predictor:
        """A promoted bundle (see `harness.bundle.format`), its config and weights checked first.
        `tta` None: the bundle's own, the setting its prediction.csv was made with.

        Raises:
            NotABundle: no config.json (also a FileNotFoundError).
            BundleError: weights outside the bundle, not safetensors, or not the recorded sha256.
        """
        from harness.bundle.format import read_config

        bundle = read_config(folder)
        return cls(
            bundle.run_config, bundle.weights, tta=bundle.tta if tta is None else tta, device=device,
            stats=bundle.stats, fallback=bundle.fallback, source=f"bundle {bundle.folder} (run {bundle.run_id})",
        )

    # ------------------------------------------------------------------------------------ scoring

    def features(self, path: Path | str) -> dict[str, np.ndarray]:
        """The uint8 inputs of one clip (or face image), as the cache would hold them.

        A fusion model gets `<input>_present` flags and zeros for an input that failed, so a clip with
        unreadable video still gets a score from its audio (and the reverse). Raises a MediaError
        (MissingFile when there is no file) when no input can be made.
        """
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
        return name == "audio" and self.cfg.features.windowed

    def input_shape(self, name: str) -> tuple[int, ...]:
        """One clip's array of input `name` as `features` makes it: (K, H, W) windows for windowed audio."""
        shape = tuple(self.cfg.features_for(name).shape)
        return (self.cfg.features.eval_windows, *shape) if self._windowed(name) else shape

    def score_inputs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Probability of fake for a batch of stacked inputs (as `features` makes them, stacked along
        a first axis), TTA applied; float64 (N,)."""
        import torch

        from harness.engine import aggregate_scores, call_model, fake_probability

        for name in self.cfg.inputs:
            want = self.input_shape(name)
            if batch[name].shape[1:] != tuple(want):
                raise ValueError(f"expected {name} inputs of shape (N, {', '.join(map(str, want))}), got {batch[name].shape}")
        n = len(batch[self.cfg.inputs[0]])
        out = np.empty(n, dtype=np.float64)
        windows = self.cfg.features.eval_windows if self._windowed("audio") else 1
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
        """Probability of fake for a single-input model's stacked inputs: (N, H, W) log-mels or
        (N, frames, size, size, 3) face crops."""
        if len(self.cfg.inputs) != 1:
            raise ValueError(f"a {self.cfg.modality} model reads {' and '.join(self.cfg.inputs)}: use score_inputs")
        return self.score_inputs({self.cfg.inputs[0]: np.asarray(images)})

    def score(self, path: Path | str) -> float:
        """Probability of fake for one clip. Raises a MediaError when it has no usable input."""
        return float(self.score_inputs({k: v[None] for k, v in self.features(path).items()})[0])

    def score_many(
        self, paths: Sequence[Path | str], *, on_progress: Callable[[int, int], None] | None = None
    ) -> list[Scored]:
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
            if len(pending) >= self.batch_size:
                flush()
            if on_progress:
                on_progress(i + 1, len(paths))
        if pending:
            flush()
        return rows  # type: ignore[return-value] - every slot is filled


def _use_available_cpus(torch) -> None:  # noqa: ANN001 - the torch module
    """Use every CPU this process may run on (torch's default may count physical cores only), unless
    OMP_NUM_THREADS says otherwise (on a machine shared with other busy processes, 1 thread is faster)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 1
    if torch.get_num_threads() < available:
        torch.set_num_threads(available)
