"""Which forgery method made each fake: an optional `video_name,method[,modality]` file (`DATA/methods.csv` or
`--methods`). Reals are `real` (or absent); `modality` (audio, video, both) says which track a fake is fake in.
Problems are one line naming file and line (BadInput); names matching no clip are counted in a warning.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from harness.errors import BadInput

METHODS_FILE = "methods.csv"
REAL = "real"
MODALITIES = ("audio", "video", "both")
HEADERS = (("video_name", "method"), ("video_name", "method", "modality"))


class Method(NamedTuple):
    name: str  # `real` for a genuine clip
    modality: str  # audio | video | both, "" when unknown (and for reals)


def read_methods(path: Path, labels: Mapping[str, int | None]) -> tuple[dict[str, Method], list[str]]:
    """The methods of the clips in `labels` (name -> target) and warning lines; BadInput naming the line if bad."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read the methods file ({type(e).__name__})") from None
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    if header not in HEADERS:
        raise BadInput(f"{path}:1: header must be 'video_name,method' or 'video_name,method,modality', "
                       f"found {','.join(header)!r}")
    methods: dict[str, Method] = {}
    lines: dict[str, int] = {}
    unknown = 0
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != len(header) or not all(cells[:2]):
            raise BadInput(f"{path}:{line}: expected {','.join(header)} with a name and a method, found {','.join(row)!r}")
        name, method, modality = cells[0], cells[1], cells[2] if len(cells) > 2 else ""
        if name in lines:
            raise BadInput(f"{path}:{line}: duplicate name {name!r} (first on line {lines[name]})")
        lines[name] = line
        if modality and modality not in MODALITIES:
            raise BadInput(f"{path}:{line}: modality must be one of {', '.join(MODALITIES)}, found {modality!r}")
        if name not in labels:
            unknown += 1
            continue
        target = labels[name]
        if target == 1 and method == REAL:
            raise BadInput(f"{path}:{line}: {name!r} is labelled fake, its method cannot be {REAL!r}")
        if target == 0 and method != REAL:
            raise BadInput(f"{path}:{line}: {name!r} is labelled real, its method must be {REAL!r}, found {method!r}")
        methods[name] = Method(method, "" if method == REAL else modality)
    warnings = []
    if unknown:
        warnings.append(f"{path}: {unknown} of its {len(lines)} names match no clip of the dataset, ignored")
    fakes = [n for n, t in labels.items() if t == 1]
    if missing := sum(n not in methods for n in fakes):
        warnings.append(f"{path}: {missing} of {len(fakes)} fakes have no method (left out of the per-method slices)")
    return methods, warnings


def find_methods(root: Path, given: Path | None = None) -> Path | None:
    """The methods file: `given` (must exist), else `root/methods.csv` when present."""
    if given is not None:
        if not Path(given).is_file():
            raise BadInput(f"--methods {given}: no such file")
        return Path(given)
    default = Path(root) / METHODS_FILE
    return default if default.is_file() else None
