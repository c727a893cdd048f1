"""The refusals of `harness submit`, before any scoring or writing, one line each: a run not FINISHED; a
model breaking the competition rules (they may have tightened since); a dataset of the other track or without
test clips. Another dataset than the run's (`data.fingerprint`) is a warning only.
"""
from __future__ import annotations

from collections.abc import Sequence
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
    """SubmitError for a run that did not end FINISHED, naming why (pruned, interrupted, orphaned, failed)."""
    if (why := why_not_finished(run.info.status, run.data.tags)) is not None:
        raise SubmitError(f"run {run.info.run_id} {why}; only a FINISHED run can be promoted")


def check_compliance(cfg: RunConfig, run_id: str, *, pack: Sequence[RunConfig] = ()) -> Any:
    """The run's model (a pack: its members) against the competition rules again: its `ComplianceReport`, or SubmitError."""
    from harness.models import ModelRuleError
    from harness.run import check_rules

    try:
        if not pack:
            return check_rules(cfg)
        from harness.pack import check_pack

        if not (report := check_pack(pack)).ok:
            raise ModelRuleError(report.summary())
        return report
    except ModelRuleError as e:
        raise SubmitError(f"run {run_id} breaks the competition rules: {e}") from None


def check_dataset(data_dir: Path, cfg: RunConfig, run: Any) -> TestSet:
    """The dataset, checked to fit the run, and its test names (the template's, else every test clip's, sorted)."""
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
