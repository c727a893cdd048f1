"""The refusal policy of `harness submit`: which runs and datasets may be promoted, each refusal one line.

Checked before any scoring or writing, in this order:

1. status: only a FINISHED run (the contract and its words: `harness.tracking.tags.why_not_finished`);
2. compliance: the run's model against the competition rules again (`harness.run.gate`; the rules
   may have tightened since it trained);
3. dataset: the track matches the model (`harness.config.check_track`), there are test clips, and
   a dataset other than the one the run trained on (label files, template, feature settings: the
   `data.fingerprint` tag) is a warning, not a refusal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig, check_track
from harness.errors import BadInput, ConfigError
from harness.tracking.tags import DATA_FINGERPRINT, why_not_finished


class SubmitError(BadInput):
    """A run that may not be promoted, or data it cannot be promoted with; one line."""


@dataclass(frozen=True)
class TestSet:
    """The dataset a run is promoted with: the test names in the template's order, and warnings."""

    dataset: Any  # harness.data.labels.Dataset
    names: list[str]
    warnings: list[str]


def check_promotable(run: Any) -> None:
    """Refuse a run that did not end FINISHED, naming why (pruned, interrupted, orphaned, failed, running).

    Raises:
        SubmitError: the run's status forbids promotion.
    """
    why = why_not_finished(run.info.status, run.data.tags)
    if why is not None:
        raise SubmitError(f"run {run.info.run_id} {why}; only a FINISHED run can be promoted")


def check_compliance(cfg: RunConfig, run_id: str) -> Any:
    """The run's model against the competition rules again; returns the `ComplianceReport`.

    Raises:
        SubmitError: the model breaks a rule (unknown backbone, non-ImageNet-1k weights, over the cap).
    """
    from harness.models import ModelRuleError
    from harness.run import gate

    try:
        return gate(cfg)
    except ModelRuleError as e:
        raise SubmitError(f"run {run_id} breaks the compliance gates: {e}") from None


def check_dataset(data_dir: Path, cfg: RunConfig, run: Any) -> TestSet:
    """Load the dataset and check it fits the run; the test names come from the template (else
    every test clip in name order).

    Raises:
        DatasetError: a malformed dataset or template.
        SubmitError: another track than the model's, or no test clips.
    """
    from harness.data.labels import load_dataset
    from harness.run import data_fingerprint

    run_id = run.info.run_id
    ds = load_dataset(data_dir)
    try:
        check_track(ds.track, cfg.modality, where=ds.root)
    except ConfigError as e:
        raise SubmitError(f"run {run_id} ({cfg.modality} model): {e}") from None
    names = ds.template if ds.template is not None else [s.name for s in ds.split("test")]
    if not names:
        raise SubmitError(f"{ds.root}: no test clips (testset/ is missing or empty)")
    warnings = list(ds.warnings)
    trained_on = run.data.tags.get(DATA_FINGERPRINT)
    if trained_on and trained_on != data_fingerprint(ds, cfg):
        warnings.append(f"{ds.root} differs from the dataset run {run_id} was trained on ({DATA_FINGERPRINT} "
                        f"{trained_on}): its label files or template changed, or it is another dataset")
    return TestSet(dataset=ds, names=names, warnings=warnings)
