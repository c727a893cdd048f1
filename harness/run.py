"""One training run: the pre-flight's features -> the competition rules -> model -> engine, recorded in MLflow.

`harness.kind` is train, fold (a CV fold) or trial (`harness tune`). A run ends FINISHED; KILLED on Ctrl-C
or when pruned (tag `pruned_at_epoch`); FAILED with the error as a tag. A model that breaks a competition
rule is a FAILED run (a study shows which picks were refused); bad settings, data and backbone names are
the pre-flight's, refused before a run exists. Under a launcher (torchrun, `--nproc N`) every rank runs
`train_run`, rank 0 alone records the run (param `world_size`); `harness.tracking.close_after_ranks` ends
it FAILED with the first rank's failure.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from harness.callbacks import Callback, FitResult
from harness.config import RunConfig, settings_digest
from harness.data.dataset import SplitArrays, load_arrays
from harness.data.labels import Dataset, DatasetError
from harness.distributed import agree, announce_run, process_group
from harness.engine import fit, seed_everything
from harness.preflight import Ready, backbones
from harness.pseudo import for_training

PRUNED_PREFIX = "pruned"
# Feature folders (one per input) -> (train, val): how a run picks its samples (a CV fold passes its own).
SplitChooser = Callable[[dict[str, Path]], tuple[SplitArrays, SplitArrays]]


@dataclass
class RunResult:
    run_id: str
    status: str
    fit: FitResult | None
    run_name: str = ""


def data_fingerprint(ds: Dataset, cfg: RunConfig) -> str:
    """The label files and the feature settings a run reads: what `submit` compares a dataset with."""
    return "-".join([ds.fingerprint(), *(cfg.features_for(name).key() for name in cfg.inputs)])


def readable_run_name(cfg: RunConfig, when: float | None = None) -> str:
    """A readable run name: backbone, modality, local month-day-hour-minute (`lite0-audio-1201-0130`)."""
    names = "+".join(dict.fromkeys(_short_backbone(name) for name in backbones(cfg)))
    return f"{names}-{cfg.modality}-{time.strftime('%m%d-%H%M', time.localtime(when))}"


def _short_backbone(name: str) -> str:
    # tf_efficientnet_lite0.in1k -> lite0, efficientnet_b0.ra_in1k -> effnet_b0, resnet18.a1_in1k -> resnet18.
    arch = name.split(".")[0].removeprefix("tf_")
    return arch.replace("efficientnet_lite", "lite").replace("efficientnet", "effnet")


def official_splits(ready: Ready) -> tuple[SplitArrays, SplitArrays]:
    """The dataset's own train and val splits, usable clips only (the audio settings say how windows are cut)."""
    audio = ready.config.audio
    return load_arrays(ready.features, "train", audio=audio), load_arrays(ready.features, "val", audio=audio)


def low_fpr_analysis(val: SplitArrays, *, title: str) -> Callable[[FitResult, Path], dict[str, float]]:
    """The recorder's end-of-run low-FPR analysis (`harness.analysis`), with thumbnails of `val`."""
    from harness.analysis import split_thumbnails, write_low_fpr_analysis

    def analyse(result: FitResult, folder: Path) -> dict[str, float]:
        found = write_low_fpr_analysis(folder, result.val_names, result.val_labels, result.val_scores,
                                       thumbnails=split_thumbnails(val), title=title)
        # The point values are the best epoch's `best_val_tpr_fpr1e-*` already: only the intervals are new.
        return {k: v for k, v in found.items() if "_ci_" in k}

    return analyse


def check_rules(cfg: RunConfig):  # noqa: ANN201 - ComplianceReport
    """The competition rules (parameter cap, ImageNet-1k weights) checked; raises ModelRuleError."""
    from harness.modalities import check_run
    from harness.models import ModelRuleError

    report = check_run(cfg)
    if not report.ok:
        raise ModelRuleError(report.summary())
    return report


def train_run(ready: Ready, *, experiment: str, run_name: str | None = None, parent_run_id: str | None = None,
              callbacks: Sequence[Callback] = (), tags: dict[str, str] | None = None, splits: SplitChooser | None = None,
              kind: str = "train") -> RunResult:
    """Train one model on `ready`'s dataset and settings and record it as a `kind` run (train, fold, trial);
    errors are recorded on the run, then raised. `run_name` None: a readable one; `splits` None: the official
    train and val. In a DDP run only rank 0 records and runs `callbacks`; every rank returns the run id."""
    from harness import tracking
    from harness.modalities import build_model, input_stats

    with process_group(ready.config.train.device) as world:
        T = tracking.tags
        cfg, ds = ready.config, ready.dataset
        recorder = None
        if world.is_main:
            client = tracking.setup()
            recorder = tracking.RunRecorder(
                client, experiment_id=tracking.get_or_create_experiment(client, experiment),
                run_name=run_name or readable_run_name(cfg), config=cfg, kind=kind, parent_run_id=parent_run_id,
                tags={T.DATA_PATH: str(ds.root), **(tags or {}), T.DATA_FINGERPRINT: data_fingerprint(ds, cfg),
                      T.SETTINGS_DIGEST: settings_digest(cfg)}, params={"world_size": world.size})
            announce_run(recorder.run_id)
        else:
            callbacks = ()  # rank 0 reports, prunes and prints; its decisions reach this rank through fit
        # Rank 0's run ends as the block does (FINISHED, KILLED on Ctrl-C, FAILED with the error).
        with recorder or nullcontext():
            run_id = agree(recorder.run_id if recorder else "", world, startup=True)
            if recorder:
                # the runs table's Dataset column (name, digest, split sizes); clip lengths slice a dataset without methods
                recorder.log_dataset(ds, durations=None if ds.methods else ready.durations())
            report = check_rules(cfg)
            train, val = splits(ready.features) if splits else official_splits(ready)
            if not len(train) or not len(val):
                raise DatasetError(f"no usable {'/'.join(cfg.inputs)} features to train on (train={len(train)}, "
                                   f"val={len(val)}); see failures.csv in {', '.join(map(str, ready.features.values()))}")
            train, hook = for_training(cfg, train)  # train.train_fakes and the pseudo-fakes' batch hook
            t = cfg.train
            seed_everything(t.seed)  # before the head is initialised: same seed, same run
            model = build_model(cfg)
            info = {"modality": cfg.modality, "backbone": report.resolved, "params": report.params,
                    "thop_params": report.thop_params, "macs": report.macs, "input_size": "x".join(map(str, report.input_size))}
            if cfg.modality != "audio":
                info["faces"] = "x".join(map(str, cfg.features_for("video").shape))
            if recorder:
                recorder.analyse = low_fpr_analysis(val, title=recorder.run_name)
            with tempfile.TemporaryDirectory(prefix="harness-run-") as work:
                result = fit(t, model, train=train, val=val, stats=input_stats(cfg, model), out_dir=Path(work),
                             callbacks=[*([recorder] if recorder else []), *callbacks], info=info, hook=hook)
            pruned = bool(result.stopped_by and result.stopped_by.startswith(PRUNED_PREFIX))
            if pruned and recorder:
                recorder.finish(T.KILLED, extra_tags={T.PRUNED_AT_EPOCH: str(result.history[-1].epoch)})
        return RunResult(run_id, T.KILLED if pruned else T.FINISHED, result, recorder.run_name if recorder else "")
