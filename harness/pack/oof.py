"""Candidates' out-of-fold tables, read and aligned into the one matrix that pack selection reads.

A cv run logs `oof.csv` (`video_name,target,score,fold,split`, each clip scored by the fold model that
never saw it) and `folds.csv` (`video_name,split,group,fold`). Runs pack only when their tables hold the
same clips (keyed `split/video_name`) in the same folds, else a score may come from a model that trained
on the clip; `align` refuses others in one line. Rows follow the first table's order.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import BadInput, NotFound

OOF_COLUMNS = ("video_name", "target", "score", "fold", "split")
FOLDS_COLUMNS = ("video_name", "split", "group", "fold")


@dataclass(frozen=True)
class OofTable:
    """One run's out-of-fold scores as read: a row per clip."""

    name: str  # the run id (or the folder) that messages name
    keys: tuple[str, ...]  # split/video_name
    labels: np.ndarray  # (N,) 0 real, 1 fake
    scores: np.ndarray  # (N,) probability of fake, float64
    folds: np.ndarray  # (N,) the fold that held the clip out
    groups: np.ndarray | None  # (N,) from folds.csv; None without one


@dataclass(frozen=True)
class OofMatrix:
    """Several candidates' out-of-fold scores on the same clips: rows clips, columns candidates."""

    names: tuple[str, ...]  # candidates (run ids), one per column
    keys: tuple[str, ...]  # clips, one per row
    scores: np.ndarray  # (clips, candidates) float64
    labels: np.ndarray  # (clips,) int
    folds: np.ndarray  # (clips,) int
    groups: np.ndarray  # (clips,) int; each clip its own group when no table had folds.csv

    def __post_init__(self) -> None:
        n, c = np.shape(self.scores)
        if c != len(self.names) or not len(self.keys) == len(self.labels) == len(self.folds) == len(self.groups) == n:
            raise ValueError(f"an OofMatrix of {n} clips x {c} candidates needs {c} names and {n} keys, labels, "
                             f"folds and groups; got {len(self.names)}, {len(self.keys)}, {len(self.labels)}, "
                             f"{len(self.folds)}, {len(self.groups)}")

    def rows(self, mask: np.ndarray) -> OofMatrix:
        """The clips where `mask` is true (or at the given positions), every candidate."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return OofMatrix(self.names, tuple(self.keys[i] for i in idx), self.scores[idx], self.labels[idx],
                         self.folds[idx], self.groups[idx])

    @classmethod
    def from_arrays(cls, scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
                    groups: np.ndarray | None = None, names: Sequence[str] | None = None) -> OofMatrix:
        """A matrix from arrays (synthetic data, a bench); clips keyed by position, candidates `c0, c1, ...`."""
        scores = np.asarray(scores, dtype=np.float64)
        n, c = scores.shape
        return cls(tuple(names) if names is not None else tuple(f"c{j}" for j in range(c)), tuple(map(str, range(n))),
                   scores, np.asarray(labels, dtype=np.int64), np.asarray(folds, dtype=np.int64),
                   np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64))


def read_oof(folder: Path | str, name: str = "") -> OofTable:
    """`folder/oof.csv` (and `folder/folds.csv` when there) of one run, called `name` (default: the folder) in
    messages. NotFound without oof.csv; BadInput on a bad column or value, a repeated clip, a disagreeing folds.csv."""
    folder = Path(folder)
    label = f"run {name}" if name else str(folder)
    if not (folder / "oof.csv").is_file():
        raise NotFound(f"{label}: no oof.csv in {folder} (is it a cross-validated run, harness.kind=cv?)")
    oof, keys = _read_rows(folder / "oof.csv", OOF_COLUMNS, label)
    labels = _numbers(oof, "target", "oof.csv", label, int)
    if not np.isin(labels, (0, 1)).all():
        raise BadInput(f"{label}: oof.csv target must be 0 or 1, found {sorted(set(labels.tolist()) - {0, 1})[:3]}")
    scores = _numbers(oof, "score", "oof.csv", label, float)
    if not np.isfinite(scores).all():
        raise BadInput(f"{label}: oof.csv has {np.count_nonzero(~np.isfinite(scores))} non-finite scores")
    folds = _numbers(oof, "fold", "oof.csv", label, int)
    groups = None
    if (folder / "folds.csv").is_file():
        rows, listed = _read_rows(folder / "folds.csv", FOLDS_COLUMNS, label)
        if problem := _difference(keys, folds, listed, _numbers(rows, "fold", "folds.csv", label, int), "folds.csv"):
            raise BadInput(f"{label}: oof.csv {problem}")
        group_of = dict(zip(listed, _numbers(rows, "group", "folds.csv", label, int).tolist()))
        groups = np.array([group_of[k] for k in keys], dtype=np.int64)
    return OofTable(name or str(folder), keys, labels, scores, folds, groups)


def align(tables: Sequence[OofTable]) -> OofMatrix:
    """One matrix from several runs' tables (the first's row order); BadInput on a run listed twice or differing."""
    if not tables:
        raise BadInput("no candidate runs to pack")
    first = tables[0]
    if twice := next((name for name, n in Counter(t.name for t in tables).items() if n > 1), None):
        raise BadInput(f"run {twice} is listed twice among the candidates")
    columns = []
    groups = None  # the first folds.csv's; each clip its own group when there is none
    for t in tables:
        if problem := _difference(t.keys, t.folds, first.keys, first.folds, f"run {first.name}"):
            raise BadInput(f"run {t.name}: {problem}; packing needs the same clips in the same folds "
                           "(cross-validate every candidate with the same --folds, --group-by and data)")
        position = {k: i for i, k in enumerate(t.keys)}
        order = np.array([position[k] for k in first.keys])
        if len(wrong := np.flatnonzero(t.labels[order] != first.labels)):
            k = first.keys[wrong[0]]
            raise BadInput(f"run {t.name}: {len(wrong)} clips have another target than in run {first.name} (e.g. {k}: "
                           f"{t.labels[order][wrong[0]]}, not {first.labels[wrong[0]]})")
        columns.append(t.scores[order])
        if groups is None and t.groups is not None:
            groups = t.groups[order]
    return OofMatrix(tuple(t.name for t in tables), first.keys, np.stack(columns, axis=1), first.labels.astype(np.int64),
                     first.folds.astype(np.int64), np.arange(len(first.keys)) if groups is None else groups.astype(np.int64))


def _difference(keys: Sequence[str], folds: np.ndarray, other_keys: Sequence[str], other_folds: np.ndarray,
                other: str) -> str:
    """'' when the (keys, folds) agree with `other`'s, else what differs, with a count and an example."""
    mine, theirs = set(keys), set(other_keys)
    problems = []
    if missing := sorted(theirs - mine):
        problems.append(f"lacks {len(missing)} of the {len(theirs)} clips of {other} (e.g. {missing[0]})")
    if extra := sorted(mine - theirs):
        problems.append(f"has {len(extra)} clips that {other} has not (e.g. {extra[0]})")
    if problems:
        return "; ".join(problems)
    fold_of = dict(zip(other_keys, other_folds.tolist()))
    if moved := sorted(k for k, f in zip(keys, folds.tolist()) if fold_of[k] != f):
        mine_of = dict(zip(keys, folds.tolist()))
        return (f"puts {len(moved)} of {len(keys)} clips in another fold than {other} "
                f"(e.g. {moved[0]}: fold {mine_of[moved[0]]}, not {fold_of[moved[0]]})")
    return ""


def _read_rows(path: Path, columns: Sequence[str], label: str) -> tuple[list[dict[str, str]], tuple[str, ...]]:
    """The rows of a csv file with `columns`, and their clips' keys, each listed once."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{label}: cannot read {path.name} ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    if lacking := [c for c in columns if c not in (reader.fieldnames or ())]:
        raise BadInput(f"{label}: {path.name} lacks column(s) {', '.join(lacking)}")
    if not (rows := list(reader)):
        raise BadInput(f"{label}: {path.name} has no rows")
    keys = tuple(f"{r['split']}/{r['video_name']}" for r in rows)
    if twice := next((k for k, n in Counter(keys).items() if n > 1), None):
        raise BadInput(f"{label}: {path.name} lists {twice} twice")
    return rows, keys


def _numbers(rows: list[dict[str, str]], column: str, file: str, label: str, kind: type) -> np.ndarray:
    out = []
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        try:
            out.append(kind(r[column]))
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise BadInput(f"{label}: {file} line {line}: {column} {r[column]!r} is not {what}") from None
    return np.array(out, dtype=np.int64 if kind is int else np.float64)
