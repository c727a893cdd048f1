"""Folds for grouped cross-validation: the labelled clips pooled, split K ways by label and by group.

`pool` joins the cached splits without a copy (`StackedRows` over the memmaps), each split's index rows (clips, then
codec-variant copies) after the earlier splits' (a gap where an input has fewer); windowed audio's frames end to end.
`assign_folds` keeps every group (audit near-duplicates, a group file's speaker) in one fold. Keys: `split/name`.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.data.dataset import SplitArrays
from harness.errors import BadInput

GROUP_HEADER = ("video_name", "group")


class StackedRows:
    """Arrays of equal row shape read as one (`a[idx]`) without concatenating them, part i from row `starts[i]`
    (default: end to end) of `length`; a gap between parts raises IndexError, and reads as zeros in `np.asarray`."""

    def __init__(self, parts: Sequence[np.ndarray], starts: Sequence[int] | None = None, length: int | None = None) -> None:
        if len({(p.shape[1:], np.dtype(p.dtype)) for p in parts}) != 1:
            raise ValueError("stacked arrays must share their row shape and dtype")
        self.parts = list(parts)
        begins = np.cumsum([0] + [len(p) for p in parts[:-1]]) if starts is None else np.asarray(starts, dtype=np.int64)
        total = int(begins[-1] + len(parts[-1])) if length is None else int(length)
        overlap = (np.diff(begins) < [len(p) for p in parts[:-1]]).any()
        if len(begins) != len(parts) or overlap or begins[-1] + len(parts[-1]) > total:
            raise ValueError("stacked arrays overlap or overrun the stacked length")
        self.starts = np.append(begins, total)
        self.shape = (total, *parts[0].shape[1:])
        self.dtype = np.dtype(parts[0].dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the parts (a gap holds none)."""
        return int(sum(p.nbytes for p in self.parts))

    def __getitem__(self, idx: np.ndarray | slice) -> np.ndarray:
        """Rows `idx` (a slice or an index array of any shape: windows index (clips, frames))."""
        picked = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        rows = picked.reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            if p < 0 or p >= len(self.parts):
                raise IndexError(f"rows {rows[where][:3].tolist()} lie outside the stacked arrays ({len(self)} rows)")
            local = rows[where] - self.starts[p]
            if local.max() >= len(self.parts[p]):
                raise IndexError(f"row {int(rows[where][local.argmax()])} lies in a gap between stacked arrays")
            out[where] = self.parts[p][local]
        return out.reshape(*picked.shape, *self.shape[1:])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("stacked arrays cannot be read as one array without a copy")
        out = np.zeros(self.shape, dtype=self.dtype)
        for part, start in zip(self.parts, self.starts):
            out[start : start + len(part)] = part[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def _index_rows(split: SplitArrays) -> int:
    """How many index rows `split`'s `rows`, `variants` and `spans` run over."""
    sizes = [len(a) for name, a in split.inputs.items() if not (name == "audio" and split.window)]
    sizes += [len(t) for t in (split.spans, split.variants) if t is not None]
    return max(sizes)


def _placed(tables: Sequence[np.ndarray | None], starts: np.ndarray, total: int, width: int, fill: int) -> np.ndarray:
    """(total, width) int64 filled with `fill`, with table i's rows (if any) from row `starts[i]`."""
    out = np.full((total, width), fill, dtype=np.int64)
    for table, start in zip(tables, starts):
        if table is not None:
            out[start : start + len(table), : table.shape[1]] = table
    return out


def pool(splits: Mapping[str, SplitArrays]) -> tuple[SplitArrays, list[str]]:
    """The labelled splits as one, in order, and each clip's key `split/name`; ValueError when their inputs differ."""
    parts = list(splits.values())
    first = parts[0]
    if any(set(p.inputs) != set(first.inputs) or (p.window, p.eval_windows) != (first.window, first.eval_windows)
           or (p.spans is None) != (first.spans is None) for p in parts):
        raise ValueError(f"cannot pool splits {', '.join(splits)}: their inputs or window settings differ")
    starts = np.cumsum([0] + [_index_rows(p) for p in parts])  # each split's first index row in the pool
    total = int(starts[-1])
    inputs = {}
    for name in first.inputs:
        arrays = [p.inputs[name] for p in parts]
        frames = name == "audio" and first.window  # frames end to end, found through `spans`
        inputs[name] = StackedRows(arrays) if frames else StackedRows(arrays, starts[:-1], total)
    rows = np.concatenate([(np.arange(len(p)) if p.rows is None else p.rows) + start for p, start in zip(parts, starts)])
    spans = None
    if first.spans is not None:
        frame_starts = np.cumsum([0] + [len(p.inputs["audio"]) for p in parts])
        shifted = [p.spans + [[offset, 0]] for p, offset in zip(parts, frame_starts)]
        spans = _placed(shifted, starts, total, 2, 0)  # a gap row: no frames
    variants = None
    if any(p.variants is not None for p in parts):
        tables = [None if p.variants is None else np.where(p.variants >= 0, p.variants + s, -1) for p, s in zip(parts, starts)]
        variants = _placed(tables, starts, total, max(t.shape[1] for t in tables if t is not None), -1)
    present = {name: np.concatenate([p.present.get(name, np.ones(len(p), bool)) for p in parts])
               for name in {n for p in parts for n in p.present}}
    pooled = SplitArrays(inputs=inputs, labels=np.concatenate([p.labels for p in parts]),
                         names=[n for p in parts for n in p.names], present=present, rows=rows, spans=spans,
                         window=first.window, variants=variants, eval_windows=first.eval_windows,
                         decode_device=first.decode_device)
    return pooled, [f"{split}/{n}" for split, p in splits.items() for n in p.names]


def subset(data: SplitArrays, idx: np.ndarray) -> SplitArrays:
    """Samples `idx` of `data`, reading the same arrays (no copy), with its windows and variants."""
    idx = np.asarray(idx, dtype=np.int64)
    rows = idx if data.rows is None else data.rows[idx]
    return dataclasses.replace(data, labels=data.labels[idx], names=[data.names[i] for i in idx],
                               present={k: m[idx] for k, m in data.present.items()}, rows=rows)


def read_group_file(path: Path) -> dict[str, str]:
    """A `video_name,group` CSV as {name: group} (`split/name` or a bare name); BadInput naming the line if bad."""
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


def check_group_file(path: Path, keys: Sequence[str]) -> list[str]:
    """Warnings for a group file against the clips (`split/name` keys); BadInput if bad or no name is a clip."""
    groups = read_group_file(path)
    names = set(keys) | {key.split("/", 1)[1] for key in keys}  # a file names a clip as split/name or name
    grouped = [key for key in keys if key in groups or key.split("/", 1)[1] in groups]
    if groups and keys and not grouped:
        raise BadInput(f"--group-by {path}: none of its {len(groups)} names is a clip of the dataset (the file has "
                       f"{next(iter(groups))!r}, the dataset {keys[0]!r} or {keys[0].split('/', 1)[1]!r})")
    lines = []
    if len(grouped) < len(keys):
        lines.append(f"--group-by {path}: {len(keys) - len(grouped)} of {len(keys)} clips are in no group there "
                     "(each is a group of its own)")
    if unknown := [name for name in groups if name not in names]:
        lines.append(f"--group-by {path}: {len(unknown)} of its {len(groups)} names match no clip (e.g. {unknown[0]!r})")
    return lines


def group_ids(keys: Sequence[str], groups: Mapping[str, object] | None) -> np.ndarray:
    """An integer group per clip: `groups` looked up by `split/name`, then by bare name, else a group of its own."""
    ids: dict[object, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        found = None if groups is None else groups.get(key, groups.get(key.split("/", 1)[1]))
        out[i] = ids.setdefault(("clip", key) if found is None else ("group", found), len(ids))
    return out


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Each sample's fold (0..k-1) by label and whole group; BadInput where a fold's AUC would be undefined."""
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
