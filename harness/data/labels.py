"""Label files and test templates -> validated samples: `trainset/`, `valset/`, `testset/` (any may be absent), label
files in either naming form (`train_label.txt`, `trainset_label.txt`), an optional test template. Every problem is a
one-line `DatasetError` naming the file (and line); files present but not listed are warnings.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.data.media import is_clip, is_image
from harness.data.methods import Method, find_methods, read_methods
from harness.errors import BadInput

SPLITS = ("train", "val", "test")
LABEL_HEADER = ("video_name", "target")
TEMPLATE_HEADER = ("video_name", "score")

# Both naming forms seen in the challenge's releases; the first one found wins.
LABEL_FILES = {split: (f"{split}_label.txt", f"{split}set_label.txt") for split in SPLITS}
TEMPLATE_FILES = ("test_template.csv", "testset_template.csv", "prediction_template.csv", "sample_submission.csv")
Accepts = Callable[[Path], bool]  # the track's rule: media.is_clip or media.is_image


class DatasetError(BadInput):
    """A dataset problem, as one line: `path:line: problem`."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True, slots=True)  # no __dict__ a clip: a million of them are held while preparing
class Sample:
    name: str  # as written in the label file, relative to the split folder
    split: str
    path: Path
    label: int | None  # None for unlabelled test clips


@dataclass
class Dataset:
    root: Path
    track: str  # "video" (clips) or "image" (face images)
    samples: dict[str, list[Sample]]
    template: list[str] | None = None  # test names in the template's order
    label_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    methods: dict[str, Method] = field(default_factory=dict)  # name -> forgery method, where known (data.methods)

    def split(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])

    def fingerprint(self) -> str:
        """Hash of the label files and template: names the data a run was trained on."""
        h = hashlib.sha1()
        for p in sorted(self.label_files):
            h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()[:12]


def split_dir(root: Path, split: str) -> Path:
    return root / f"{split}set"


def find_label_file(root: Path, split: str) -> Path | None:
    return next((root / n for n in LABEL_FILES[split] if (root / n).is_file()), None)


def _check_name(name: str, path: Path, line: int) -> None:
    """Refuse names that would read outside the split folder."""
    if not name:
        raise DatasetError(path, "empty video_name", line)
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(path, f"absolute path not allowed: {name!r}", line)
    if ".." in p.parts:
        raise DatasetError(path, f"name leaves the split folder: {name!r}", line)


def read_listing(path: Path, *, labelled: bool) -> list[tuple[int, str, str]]:
    """(line, name, target or score) of a `video_name,target` or `video_name,score` file, names checked and unique."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(path, "not UTF-8 text") from None
    if not text.strip():
        raise DatasetError(path, "empty file", 1)
    rows = list(csv.reader(text.splitlines()))
    header, got = LABEL_HEADER if labelled else TEMPLATE_HEADER, tuple(c.strip() for c in rows[0])
    if got != header:
        raise DatasetError(path, f"header must be {','.join(header)!r}, found {','.join(got)!r}", 1)
    out: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            raise DatasetError(path, f"expected 2 columns, found {len(row)}", line)
        name, second = (c.strip() for c in row)
        _check_name(name, path, line)
        if name in seen:
            raise DatasetError(path, f"duplicate name {name!r} (first on line {seen[name]})", line)
        seen[name] = line
        if labelled and second not in ("0", "1"):
            raise DatasetError(path, f"target must be 0 or 1, found {second!r}", line)
        out.append((line, name, second))
    return out


def _read_listing(ds: Dataset, path: Path, split: str, files: dict[str, Path], accepts: Accepts, *, labelled: bool) -> None:
    """A label file or test template as `split`'s samples in `ds`, warning of an empty label file and unlisted files."""
    folder, samples = split_dir(ds.root, split), []
    for line, name, second in read_listing(path, labelled=labelled):
        clip = folder / name
        if not accepts(clip):
            raise DatasetError(path, f"unsupported extension {clip.suffix or '(none)'!r} for {name!r}", line)
        if name not in files and not clip.is_file():  # is_file for names written another way ("./a.mp4")
            raise DatasetError(path, f"listed file is missing: {clip}", line)
        samples.append(Sample(name=name, split=split, path=clip, label=int(second) if labelled else None))
    ds.label_files.append(path)
    ds.samples[split] = samples
    if labelled and not samples:
        ds.warnings.append(f"{path}: lists no clips: the {split} split is empty")
    names = {s.name for s in samples}
    if extra := [p for name, p in files.items() if name not in names and accepts(p)]:
        shown = ", ".join(p.name for p in extra[:3]) + (" ..." if len(extra) > 3 else "")
        ds.warnings.append(f"{folder}: {len(extra)} file(s) not listed in {path.name}, ignored: {shown}")


def _media_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` but hidden ones, by relative name, in rglob's order, with no stat per file."""
    files: dict[str, Path] = {}

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):  # as rglob: linked folders are not walked (no cycles)
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file() and not entry.name.startswith("."):
                    files[prefix + entry.name] = Path(entry.path)

    walk(str(folder), "")
    return dict(sorted(files.items(), key=lambda item: PurePosixPath(item[0]).parts))  # rglob's order: by path parts


def load_dataset(root: Path | str, methods: Path | None = None) -> Dataset:
    """A validated dataset folder with its methods file (`methods`, else `root/methods.csv`); else DatasetError."""
    root = Path(root).expanduser().resolve()
    if root.is_file():
        raise DatasetError(root, "a file, not a dataset folder (trainset/, valset/, testset/ and label files)")
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    listings = {s: _media_files(split_dir(root, s)) for s in SPLITS if split_dir(root, s).is_dir()}
    paths = [p for files in listings.values() for p in files.values()]
    track = "image" if sum(map(is_image, paths)) > sum(map(is_clip, paths)) else "video"  # what the folders hold
    accepts = is_image if track == "image" else is_clip
    ds = Dataset(root=root, track=track, samples={})
    for split in SPLITS:
        folder = split_dir(root, split)
        files = listings.get(split, {})
        label_file = find_label_file(root, split)
        if split == "test" and label_file is None:
            _load_test_split(ds, folder, files, accepts)
            continue
        if not folder.is_dir():
            if label_file is not None:
                raise DatasetError(label_file, f"labels given but folder {folder.name}/ is missing")
            continue
        if label_file is None:
            raise DatasetError(root / LABEL_FILES[split][0], f"missing label file for {folder.name}/ (also looked for {LABEL_FILES[split][1]})")
        _read_listing(ds, label_file, split, files, accepts, labelled=True)
    if not any(ds.samples.values()):
        raise DatasetError(root, "no trainset/, valset/ or testset/ with clips")
    if (found := find_methods(root, methods)) is not None:
        ds.methods, more = read_methods(found, {s.name: s.label for split in ds.samples.values() for s in split})
        ds.warnings.extend(more)
    return ds


def _load_test_split(ds: Dataset, folder: Path, files: dict[str, Path], accepts: Accepts) -> None:
    template = next((ds.root / n for n in TEMPLATE_FILES if (ds.root / n).is_file()), None)
    if template is not None:
        if not folder.is_dir():
            raise DatasetError(template, f"template given but folder {folder.name}/ is missing")
        _read_listing(ds, template, "test", files, accepts, labelled=False)
        ds.template = [s.name for s in ds.samples["test"]]
    elif folder.is_dir():  # no template: every media file is a test clip, in name order
        ds.samples["test"] = [Sample(name=name, split="test", path=p, label=None) for name, p in files.items() if accepts(p)]

