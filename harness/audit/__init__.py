"""`harness audit`: what a competitor should know about a dataset before trusting any score on it.

Public face (the modules behind it, in the order the data flows):

- `probe`: one clip's metadata row and audio fingerprint (worker side);
- `table`: the per-clip table, computed in parallel and cached beside the features;
- `faces`: the face-found rate and face-crop hashes, read from the feature cache when prepared;
- `stats`: single-feature AUCs with bootstrap intervals, a small cross-validated model;
- `duplicates`: identical files, audio and face near-duplicates, and `groups` (union-find);
- `analysis`: `audit_dataset`, the findings (shortcuts, duplicates, train/test shift);
- `report` and `plots`: audit.json, CSV, figures and the terminal report.

Importing the package is light (numpy): sklearn and matplotlib are imported where they are used,
because the table's worker processes import this package too.
"""
from __future__ import annotations

from pathlib import Path

from harness.audit.analysis import AuditResult, AuditSettings, audit_dataset, summary, table_duplicates
from harness.audit.duplicates import Pair, groups
from harness.audit.faces import face_columns
from harness.audit.probe import TableSettings
from harness.audit.report import headline_metrics, render, to_json, write_outputs
from harness.audit.table import build_table
from harness.data.labels import Dataset

__all__ = [
    "AuditResult", "AuditSettings", "Pair", "TableSettings", "audit_dataset", "dataset_groups", "groups",
    "headline_metrics", "render", "summary", "to_json", "write_outputs",
]


def dataset_groups(ds: Dataset, *, cache_root: Path, workers: int = 2, settings: AuditSettings | None = None) -> dict[str, int]:
    """Each clip's near-duplicate group (`split/name` -> group id) for grouped cross-validation.

    Builds the audit table when it is not cached yet (the same cache `harness audit` uses), finds
    the duplicate pairs and joins them (`groups`). Clips without a near-duplicate are alone.
    """
    settings = settings or AuditSettings()
    table = build_table(ds, settings.table, cache_root=cache_root, workers=workers)
    pairs = table_duplicates(table, face_columns(ds, table.keys, cache_root), settings)
    return groups(pairs, table.keys)
