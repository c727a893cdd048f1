"""`harness audit`: what a competitor should know about a dataset before trusting any score on it.

Data flows `probe` (one clip, worker side) -> `table` (parallel, cached) -> `faces` (from the feature
cache) -> `stats`, `duplicates` -> `analysis` (`audit_dataset`) -> `report`, `plots`. Light to import
(numpy only; the table's workers import it), so this face is eager.
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

__all__ = ["AuditResult", "AuditSettings", "Pair", "TableSettings", "audit_dataset", "dataset_groups", "groups",
           "headline_metrics", "render", "summary", "to_json", "write_outputs"]


def dataset_groups(ds: Dataset, *, cache_root: Path, workers: int = 2, settings: AuditSettings | None = None) -> dict[str, int]:
    """Each clip's near-duplicate group (`split/name` -> id) for grouped cross-validation, from the cached table."""
    settings = settings or AuditSettings()
    table = build_table(ds, settings.table, cache_root=cache_root, workers=workers)
    pairs = table_duplicates(table, face_columns(ds, table.keys, cache_root), settings)
    return groups(pairs, table.keys)
