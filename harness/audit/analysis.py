"""The audit of one dataset: the table, then shortcuts, duplicates and train/test shift, as findings.

Shortcuts: a feature's (or the small model's) AUC per labelled split at the threshold, not by chance.
Duplicates across splits (a leak) and within one (they inflate CV unless grouped). Shift: metadata telling
train from test (else val) at the threshold (0.5 is good), naming the most telling features.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.audit.duplicates import Pair, find_duplicates
from harness.audit.faces import FaceColumns, face_columns
from harness.audit.probe import TableSettings
from harness.audit.stats import FeatureAUC, feature_aucs, feature_matrix, is_finding, model_auc
from harness.audit.table import Table, build_table
from harness.data.cache import dataset_id
from harness.data.labels import Dataset

TOP = 5  # features named for the train/test shift


@dataclass(frozen=True)
class AuditSettings:
    """What the audit computes and what it calls a finding."""

    table: TableSettings = field(default_factory=TableSettings)
    threshold: float = 0.75  # AUC at or above which a feature (or the shift) is a finding
    audio_duplicate: float = 0.8  # share of fingerprint bits two clips must share to be near-duplicates
    faces_duplicate: float = 0.92  # share of face-crop hash bits, likewise (see harness.audit.faces)
    n_boot: int = 1000  # bootstrap resamples per interval
    seed: int = 0


@dataclass
class AuditResult:
    dataset: Path
    dataset_id: str
    settings: AuditSettings
    table: Table
    face_folder: Path | None
    features: list[FeatureAUC]  # every feature on every labelled split, best first per split
    models: list[FeatureAUC]  # the metadata model per labelled split
    shortcuts: list[FeatureAUC]  # the features and models that are findings
    duplicates: list[Pair]
    adversarial: FeatureAUC | None  # the train-vs-test model (None: no second split to compare)
    adversarial_top: list[FeatureAUC]  # the features that separate train and test most
    findings: list[str]  # one line each
    shifted: bool = False  # the train/test shift is a finding
    seconds: float = 0.0

    @property
    def keys(self) -> list[str]:
        return self.table.keys


def audit_dataset(ds: Dataset, settings: AuditSettings | None = None, *, cache_root: Path, workers: int = 2,
                  on_progress: Callable[[int, int], None] | None = None, pool: Executor | None = None) -> AuditResult:
    """Audit `ds`: build (or reuse from `cache_root`, which holds the face data too) its metadata table with
    `workers` processes or a warm `pool`, then look for shortcuts, duplicates and shift."""
    settings = settings or AuditSettings()
    start = time.perf_counter()
    table = build_table(ds, settings.table, cache_root=cache_root, workers=workers, on_progress=on_progress, pool=pool)
    faces = face_columns(ds, table.keys, cache_root)
    for row, rate in zip(table.rows, faces.found_rate):
        row["face_found_rate"] = None if np.isnan(rate) else float(rate)
    names, matrix = feature_matrix(table.rows)
    features, models, shortcuts = _shortcuts(table, names, matrix, settings)
    adversarial, top = _shift(table, names, matrix, settings)
    result = AuditResult(
        dataset=ds.root, dataset_id=dataset_id(ds), settings=settings, table=table, face_folder=faces.folder,
        features=features, models=models, shortcuts=shortcuts, duplicates=table_duplicates(table, faces, settings),
        adversarial=adversarial, adversarial_top=top, findings=[],
        shifted=adversarial is not None and is_finding(adversarial, settings.threshold, 1))
    result.findings = findings(result)
    result.seconds = time.perf_counter() - start
    return result


def table_duplicates(table: Table, faces: FaceColumns, settings: AuditSettings) -> list[Pair]:
    """The duplicate pairs among the table's clips (identical, audio, faces)."""
    return find_duplicates(
        table.keys, [r["sha256"] for r in table.rows], table.fingerprints, table.has_fingerprint, faces.hashes,
        faces.has_hash, audio_threshold=settings.audio_duplicate, faces_threshold=settings.faces_duplicate,
    )


def _shortcuts(table: Table, names: list[str], matrix: np.ndarray,
               settings: AuditSettings) -> tuple[list[FeatureAUC], list[FeatureAUC], list[FeatureAUC]]:
    features: list[FeatureAUC] = []
    models: list[FeatureAUC] = []
    shortcuts: list[FeatureAUC] = []
    for split in table.splits():
        if any(r["label"] is None for r in table.rows if r["split"] == split):
            continue  # an unlabelled split (test) has no shortcut to find
        rows = np.array([r["split"] == split for r in table.rows])
        y = np.array([r["label"] for r in table.rows if r["split"] == split], dtype=int)
        found = feature_aucs(names, matrix[rows], y, split, n_boot=settings.n_boot, seed=settings.seed)
        features += found
        shortcuts += [f for f in found if is_finding(f, settings.threshold, len(found))]
        if (model := model_auc(names, matrix[rows], y, split, seed=settings.seed, n_boot=settings.n_boot)) is not None:
            models.append(model[0])
            if is_finding(model[0], settings.threshold, 1):
                shortcuts.append(model[0])
    return features, models, shortcuts


def _shift(table: Table, names: list[str], matrix: np.ndarray,
           settings: AuditSettings) -> tuple[FeatureAUC | None, list[FeatureAUC]]:
    """Train against the test split (or val without one): the model's AUC and the top features."""
    splits = table.splits()
    other = "test" if "test" in splits else "val" if "val" in splits else None
    if "train" not in splits or other is None:
        return None, []
    split = np.array([r["split"] for r in table.rows])
    rows = (split == "train") | (split == other)
    is_other = (split[rows] == other).astype(int)
    where = f"train~{other}"
    top = feature_aucs(names, matrix[rows], is_other, where, positive=other, n_boot=settings.n_boot, seed=settings.seed,
                       best=TOP)
    model = model_auc(names, matrix[rows], is_other, where, seed=settings.seed, n_boot=settings.n_boot)
    return (model[0] if model else None), top


def findings(result: AuditResult) -> list[str]:
    """Every finding as one line (shortcuts, duplicates across and within splits, shift)."""
    lines = []
    for f in result.shortcuts:
        what = "all metadata together (logistic regression, out of fold)" if f.feature == "metadata_model" else f.feature
        lines.append(f"shortcut in {f.split}: {what} separates fakes from reals with AUC {f.auc:.3f} "
                     f"[{f.low:.3f}, {f.high:.3f}] ({f.direction}; {f.n} clips)")
    across = [p for p in result.duplicates if p.across_splits]
    within = [p for p in result.duplicates if not p.across_splits]
    for pairs, where in ((across, "across splits (a leak)"), (within, "within a split (group them in cross-validation)")):
        if pairs:
            first = pairs[0]
            lines.append(f"{len(pairs)} duplicate pair(s) {where}, e.g. {first.a} ~ {first.b} "
                         f"({first.kind}, similarity {first.similarity:.3f})")
    shift = result.adversarial
    if shift is not None and result.shifted:
        named = ", ".join(f"{f.feature} ({f.auc:.3f}, {f.direction})" for f in result.adversarial_top[:3])
        lines.append(f"shift: metadata tells {shift.split.replace('~', ' from ')} clips with AUC {shift.auc:.3f} "
                     f"[{shift.low:.3f}, {shift.high:.3f}]; most telling: {named}")
    return lines


def summary(result: AuditResult) -> str:
    """The findings in one short line: shortcut features per split, duplicate counts, the shift."""
    parts = []
    for split in dict.fromkeys(f.split for f in result.shortcuts):
        named = ", ".join(f"{f.feature} {f.auc:.2f}" for f in result.shortcuts if f.split == split)
        parts.append(f"shortcuts in {split}: {named}")
    across = sum(p.across_splits for p in result.duplicates)
    if across:
        parts.append(f"{across} duplicate pair(s) across splits")
    if len(result.duplicates) > across:
        parts.append(f"{len(result.duplicates) - across} duplicate pair(s) within splits")
    if result.shifted and result.adversarial is not None:
        top = result.adversarial_top[0].feature if result.adversarial_top else "?"
        parts.append(f"shift {result.adversarial.split} AUC {result.adversarial.auc:.2f} (most: {top})")
    return "; ".join(parts)
