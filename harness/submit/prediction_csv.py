"""prediction.csv (header `video_name,score`, one row per template row in its order, no duplicates, every
score a probability with at least 6 decimals; written under a temporary name, read back and validated, only
then renamed: always whole and valid) and fallbacks.csv (the rows scored at the fallback, and why).
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

from harness.errors import JobFailed
from harness.fileio import atomic_write, csv_text, temp_name
from harness.predict import format_score
from harness.submit.checks import SubmitError

HEADER = ("video_name", "score")
FALLBACKS_HEADER = ("video_name", "reason", "detail", "score")
_SCORE_TEXT = re.compile(r"^[01]\.\d{6,}$")


class ValidationError(SubmitError, JobFailed):
    """A prediction CSV that breaks the template's rules (`file:line: ...`); our own output, so exit 1."""

    exit_code = JobFailed.exit_code


def write_prediction(path: Path, names: Sequence[str], scores: Sequence[float], *, shown_as: Path | None = None) -> Path:
    """Write `video_name,score` rows to `path` once they pass `validate_prediction`, else ValidationError."""
    if len(names) != len(scores):
        raise ValidationError(f"{len(names)} names but {len(scores)} scores")
    text = csv_text(HEADER, [(n, format_score(s) if math.isfinite(s) else str(s)) for n, s in zip(names, scores)])
    with atomic_write(path, "w", encoding="utf-8", sync=False) as f:  # durable with the submission folder
        f.write(text)
        f.flush()
        validate_prediction(temp_name(Path(path)), names, shown_as=shown_as or path)  # the bytes on disk
    return Path(path)


def validate_prediction(path: Path, expected: Sequence[str], *, shown_as: Path | None = None) -> int:
    """A prediction CSV's row count, checked against the template's names (ValidationError: `file:line: ...`)."""
    where = shown_as or path
    rows = list(csv.reader(Path(path).read_text(encoding="utf-8").splitlines()))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValidationError(f"{where}:1: header must be {','.join(HEADER)}")
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValidationError(f"{where}:{line}: expected 2 columns, found {len(row)}")
        name, text = row
        if name in seen:
            raise ValidationError(f"{where}:{line}: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = line
        i = line - 2
        if i >= len(expected) or name != expected[i]:
            want = repr(expected[i]) if i < len(expected) else "no more rows"
            raise ValidationError(f"{where}:{line}: found {name!r}, the template has {want} here")
        try:
            score = float(text)
        except ValueError:
            raise ValidationError(f"{where}:{line}: score {text!r} is not a number") from None
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValidationError(f"{where}:{line}: score {text} for {name!r} is not a probability in [0, 1]")
        if not _SCORE_TEXT.match(text):
            raise ValidationError(f"{where}:{line}: score {text!r} needs at least 6 decimals")
    if len(rows) - 1 != len(expected):
        raise ValidationError(f"{where}: {len(rows) - 1} rows, the template has {len(expected)}")
    return len(expected)


def write_fallbacks(path: Path, fallbacks: Sequence[tuple[str, str, str]], score: float) -> Path:
    """fallbacks.csv: `video_name,reason,detail,score` a fallback; a plain write (the staging folder is made durable)."""
    Path(path).write_text(csv_text(FALLBACKS_HEADER, [(n, r, d, format_score(score)) for n, r, d in fallbacks]),
                          encoding="utf-8")
    return Path(path)
