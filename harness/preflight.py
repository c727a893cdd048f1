"""The pre-flight: everything a run needs before its first step, made once and handed on.

`preflight(data, cfg)` loads the dataset (a bad one fails here, before any run exists), applies the track
rule (`config.fit_track`: on a face-image dataset a `video` model is an `image` model), refuses a backbone
timm does not know (a typo is not a failed run worth recording) and prepares every input the modality reads
into the feature cache. `train_run`, CV folds, tuning trials and the CLI take its `Ready` and redo none.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import RunConfig, fit_track
from harness.data.cache import PrepareReport, feature_dir, prepare_features
from harness.data.labels import Dataset, load_dataset

TRAINING_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Ready:
    """A dataset and settings checked against each other, with the features prepared."""

    dataset: Dataset
    config: RunConfig  # after the track rule
    cache_root: Path
    features: dict[str, Path]  # input name ("audio", "video") -> its feature folder
    reports: dict[str, PrepareReport] = field(default_factory=dict)  # what preparing each input did

    def durations(self, splits: Sequence[str] = TRAINING_SPLITS) -> dict[str, float]:
        """Clip name -> decoded length in seconds from the audio cache's pack index (`harness.slices`' duration
        slices); empty without an audio input."""
        from harness.data.packs import clip_seconds

        folder = self.features.get("audio")
        return {} if folder is None else {k: v for split in splits for k, v in clip_seconds(folder, split).items()}


def backbones(cfg: RunConfig) -> list[str]:
    """The timm names the model of `cfg.modality` is built from (as modalities.build_model does)."""
    video = cfg.train.video_backbone or cfg.train.backbone
    return {"audio": [cfg.train.backbone], "fusion": [cfg.train.backbone, video]}.get(cfg.modality, [video])


def preflight(data: Path | Dataset, cfg: RunConfig, *, cache_root: Path, workers: int = 2,
              splits: Sequence[str] = TRAINING_SPLITS, on_progress: Callable[[str, int, int], None] | None = None,
              check_models: bool = True) -> Ready:
    """Load (`data`: a folder or a loaded dataset), check and prepare `splits` with `workers` decoders,
    reporting `on_progress(input, done, total)`. Raises DatasetError (a dataset that does not load),
    ConfigError (settings unfit for the track) or ModelRuleError (a backbone timm does not know).
    `check_models` False (`harness prepare`, which trains nothing): no backbone check, so no timm import,
    about 4 s of a 10-clip prepare's 5.6."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    cfg = fit_track(cfg, ds.track, where=ds.root)
    if check_models:
        from harness.models import resolve_name  # after the cheap checks: the timm import, a registry lookup

        for name in dict.fromkeys(backbones(cfg)):
            resolve_name(name)
    features, reports = {}, {}
    for name in cfg.inputs:
        settings = cfg.features_for(name)
        progress = None if on_progress is None else (lambda done, total, name=name: on_progress(name, done, total))
        reports[name] = prepare_features(ds, settings, cache_root=cache_root, workers=workers, splits=tuple(splits),
                                         on_progress=progress)
        features[name] = feature_dir(ds, settings, cache_root)
    return Ready(dataset=ds, config=cfg, cache_root=Path(cache_root), features=features, reports=reports)
