"""Label files and test templates -> validated samples.

A dataset folder holds the splits `trainset/`, `valset/`, `testset/` (any may be absent), label files
in either of the challenge's naming forms (`train_label.txt` or `trainset_label.txt`, and likewise for
val), and for the test split an optional template (`video_name,score`). What a clip is (video
containers and audio-only files) and what a face image is (.jpg/.png: the image track, with the same
label files) is `harness.data.media`'s rule, applied alike to listing, validation and the
"not listed" warning.

Every problem is a `DatasetError` whose message is one line naming the file (and line) at fault.
Problems that do not stop the work (files present but not listed) become warnings.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.data.media import is_clip, is_image
from harness.errors import BadInput

SPLITS = ("train", "val", "test")
LABEL_HEADER = ("video_name", "target")
TEMPLATE_HEADER = ("video_name", "score")

# Both naming forms seen in the challenge's releases; the first one found wins.
LABEL_FILES = {
    "train": ("train_label.txt", "trainset_label.txt"),
    "val": ("val_label.txt", "valset_label.txt"),
    "test": ("test_label.txt", "testset_label.txt"),
}
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

    def split(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])

    def fingerprint(self) -> str:
        """Hash of the label files and template: names the data a run was trained on."""
        h = hashlib.sha1()
        for p in sorted(self.label_files):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:12]


def split_dir(root: Path, split: str) -> Path:
    return root / f"{split}set"


def find_label_file(root: Path, split: str) -> Path | None:
    for name in LABEL_FILES[split]:
        if (root / name).is_file():
            return root / name
    return None


def find_template(root: Path) -> Path | None:
    for name in TEMPLATE_FILES:
        if (root / name).is_file():
            return root / name
    return None


def _check_name(name: str, path: Path, line: int) -> None:
    """Refuse names that would read outside the split folder."""
    if not name:
        raise DatasetError(path, "empty video_name", line)
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(path, f"absolute path not allowed: {name!r}", line)
    if ".." in p.parts:
        raise DatasetError(path, f"name leaves the split folder: {name!r}", line)


def _read_rows(path: Path, header: tuple[str, str]) -> list[tuple[int, list[str]]]:
    """CSV rows after checking the header; each row with its 1-based line number."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(path, "not UTF-8 text") from None
    if not text.strip():
        raise DatasetError(path, "empty file", 1)
    rows = list(csv.reader(text.splitlines()))
    got = tuple(c.strip() for c in rows[0])
    if got != header:
        raise DatasetError(path, f"header must be {','.join(header)!r}, found {','.join(got)!r}", 1)
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise DatasetError(path, f"expected 2 columns, found {len(row)}", i)
        out.append((i, [c.strip() for c in row]))
    return out


def _read_listing(path: Path, split: str, folder: Path, files: dict[str, Path], accepts: Accepts, *, labelled: bool) -> list[Sample]:
    """A label file (`video_name,target`) or a test template (`video_name,score`) as samples."""
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, (name, second) in _read_rows(path, LABEL_HEADER if labelled else TEMPLATE_HEADER):
        _check_name(name, path, line)
        if name in seen:
            raise DatasetError(path, f"duplicate name {name!r} (first on line {seen[name]})", line)
        seen[name] = line
        if labelled and second not in ("0", "1"):
            raise DatasetError(path, f"target must be 0 or 1, found {second!r}", line)
        samples.append(_sample(name, split, folder, files, int(second) if labelled else None, path, line, accepts))
    return samples


def _sample(name: str, split: str, folder: Path, files: dict[str, Path], label: int | None, src: Path, line: int,
            accepts: Accepts) -> Sample:
    clip = folder / name
    if not accepts(clip):
        raise DatasetError(src, f"unsupported extension {clip.suffix or '(none)'!r} for {name!r}", line)
    if name not in files and not clip.is_file():  # is_file for names written another way ("./a.mp4")
        raise DatasetError(src, f"listed file is missing: {clip}", line)
    return Sample(name=name, split=split, path=clip, label=label)


def _media_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` (not hidden ones), by its name relative to the folder, in name order.

    One directory walk in which the kernel's entry types stand in for a stat per file (a linked file
    is still followed to its target), serving the track guess, the listed-but-missing check and the unlisted warning."""
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


def _detect_track(listings: dict[str, dict[str, Path]]) -> str:
    """Clips or face images, judged by what the split folders hold."""
    clips = images = 0
    for files in listings.values():
        for p in files.values():
            clips += is_clip(p)
            images += is_image(p)
    return "image" if images > clips else "video"


def load_dataset(root: Path | str) -> Dataset:
    """Read and validate a dataset folder. Raises DatasetError on the first fatal problem."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    listings = {s: _media_files(split_dir(root, s)) for s in SPLITS if split_dir(root, s).is_dir()}
    track = _detect_track(listings)
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
        ds.label_files.append(label_file)
        ds.samples[split] = _read_listing(label_file, split, folder, files, accepts, labelled=True)
        _warn_unlisted(ds, folder, files, ds.samples[split], label_file, accepts)
    if not any(ds.samples.values()):
        raise DatasetError(root, "no trainset/, valset/ or testset/ with clips")
    return ds


def _load_test_split(ds: Dataset, folder: Path, files: dict[str, Path], accepts: Accepts) -> None:
    template = find_template(ds.root)
    if template is not None:
        if not folder.is_dir():
            raise DatasetError(template, f"template given but folder {folder.name}/ is missing")
        ds.label_files.append(template)
        ds.samples["test"] = _read_listing(template, "test", folder, files, accepts, labelled=False)
        ds.template = [s.name for s in ds.samples["test"]]
        _warn_unlisted(ds, folder, files, ds.samples["test"], template, accepts)
    elif folder.is_dir():
        # No template: every media file is a test clip, in name order.
        ds.samples["test"] = [
            Sample(name=name, split="test", path=p, label=None) for name, p in files.items() if accepts(p)
        ]


def _warn_unlisted(ds: Dataset, folder: Path, files: dict[str, Path], listed: list[Sample], src: Path,
                   accepts: Accepts) -> None:
    names = {s.name for s in listed}
    extra = [p for name, p in files.items() if name not in names and accepts(p)]
    if extra:
        shown = ", ".join(p.name for p in extra[:3]) + (" ..." if len(extra) > 3 else "")
        ds.warnings.append(f"{folder}: {len(extra)} file(s) not listed in {src.name}, ignored: {shown}")

