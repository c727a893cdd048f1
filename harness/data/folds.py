"""Folds for grouped cross-validation: the labelled clips pooled, split K ways by label and by group.

`pool` joins the cached train and val splits into one `SplitArrays` without copying a byte: each
input becomes a `StackedRows` over the two memmaps, and `SplitArrays.rows` maps a pooled sample to
its row there. `subset` then picks a fold's samples by index, as `SplitArrays.rows` allows.

`assign_folds` uses sklearn's StratifiedGroupKFold: every fold holds about the same share of fakes,
and the clips of one group (near-duplicates from the audit, a speaker or source video from a
group file) always land in the same fold, so no fold is validated on copies of what it trained on.
Pooled clips are keyed `split/name`, the audit's key, so a name used in both splits stays two clips.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.data.dataset import SplitArrays
from harness.errors import BadInput

GROUP_HEADER = ("video_name", "group")


class StackedRows:
    """Rows of several arrays of equal row shape read as one array (`a[idx]` with an index array or a
    slice), without concatenating them: the memmaps of the cache stay on disk."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if len({(p.shape[1:], p.dtype) for p in parts}) != 1:
            raise ValueError("stacked arrays must share their row shape and dtype")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray | slice) -> np.ndarray:
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            out[where] = self.parts[p][rows[where] - self.starts[p]]
        return out


def pool(splits: Mapping[str, SplitArrays]) -> tuple[SplitArrays, list[str]]:
    """The labelled splits as one (in the given order) and each pooled clip's key, `split/name`."""
    parts = list(splits.values())
    inputs, rows, offset = {}, [], 0
    for name in parts[0].inputs:
        inputs[name] = StackedRows([p.inputs[name] for p in parts])
    for p in parts:
        own = np.arange(len(p)) if p.rows is None else p.rows
        rows.append(own + offset)
        offset += len(next(iter(p.inputs.values())))
    present = {}
    for name in {n for p in parts for n in p.present}:
        present[name] = np.concatenate([p.present.get(name, np.ones(len(p), bool)) for p in parts])
    pooled = SplitArrays(inputs=inputs, labels=np.concatenate([p.labels for p in parts]),
                         names=[n for p in parts for n in p.names], present=present, rows=np.concatenate(rows))
    keys = [f"{split}/{n}" for split, p in splits.items() for n in p.names]
    return pooled, keys


def subset(data: SplitArrays, idx: np.ndarray) -> SplitArrays:
    """Samples `idx` of `data`, reading the same arrays (no copy)."""
    idx = np.asarray(idx, dtype=np.int64)
    rows = idx if data.rows is None else data.rows[idx]
    return SplitArrays(inputs=data.inputs, labels=data.labels[idx], names=[data.names[i] for i in idx],
                       present={k: m[idx] for k, m in data.present.items()}, rows=rows)


def read_group_file(path: Path) -> dict[str, str]:
    """A `video_name,group` CSV as {name: group}. A name may be `split/name` or a bare name (then it
    stands for that name in every split).

    Raises:
        BadInput: a missing file, another header, an empty cell or a name listed twice (line named).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        raise BadInput(f"--group-by {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--group-by {path}: cannot read it ({e})") from None
    if not lines or tuple(c.strip() for c in lines[0]) != GROUP_HEADER:
        raise BadInput(f"{path}: line 1: expected the header {','.join(GROUP_HEADER)}")
    groups: dict[str, str] = {}
    for number, row in enumerate(lines[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise BadInput(f"{path}: line {number}: expected video_name,group, got {','.join(row)!r}")
        name = row[0].strip()
        if name in groups:
            raise BadInput(f"{path}: line {number}: {name!r} listed twice")
        groups[name] = row[1].strip()
    return groups


def group_ids(keys: Sequence[str], groups: Mapping[str, object] | None) -> np.ndarray:
    """An integer group per clip: `groups` looked up by `split/name`, then by bare name; a clip found
    under neither (or `groups` None) is a group of its own."""
    ids: dict[object, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        bare = key.split("/", 1)[1]
        found = None if groups is None else groups.get(key, groups.get(bare))
        label = ("clip", key) if found is None else ("group", found)
        out[i] = ids.setdefault(label, len(ids))
    return out


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Each sample's fold (0..k-1), stratified by label, whole groups per fold.

    Args:
        labels: (N,) 0/1 labels.
        groups: (N,) group ids; samples of one group always share a fold.
        k: the number of folds, at least 2.
        seed: shuffles the groups before they are dealt out (the same seed, the same folds).

    Raises:
        BadInput: fewer than 2 folds, fewer groups than folds, or a class with fewer groups than folds
            (a fold would validate on one class and its AUC would be undefined).

    Example:
        >>> assign_folds(np.array([0, 1] * 6), np.arange(12), 3).tolist().count(0)
        4
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if k < 2:
        raise BadInput(f"--folds must be at least 2, got {k}")
    for cls, word in ((0, "real"), (1, "fake")):
        n = len(np.unique(groups[labels == cls]))
        if n < k:
            raise BadInput(f"--folds {k}: only {n} group(s) hold {word} clips; every fold needs both classes "
                           f"(use fewer folds or finer groups)")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held_out] = fold
    return folds
