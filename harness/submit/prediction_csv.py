"""The submission's CSV files: prediction.csv (written only once it passes the template's rules) and
fallbacks.csv (the rows scored at the fallback, and why).

prediction.csv: header `video_name,score`, one row per template row in the template's order, no
duplicates, every score a finite probability in [0, 1] written with at least 6 decimals (we write
`SCORE_DECIMALS`). The file is written under a temporary name, read back and validated, and only
then renamed onto its path: a prediction.csv is always whole and valid.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

from harness.errors import JobFailed
from harness.fileio import atomic_write, csv_text, temp_name, write_text
from harness.predict import format_score
from harness.submit.checks import SubmitError

HEADER = ("video_name", "score")
FALLBACKS_HEADER = ("video_name", "reason", "detail", "score")
_SCORE_TEXT = re.compile(r"^[01]\.\d{6,}$")


class ValidationError(SubmitError, JobFailed):
    """A prediction CSV that breaks the template's rules; one line naming the file and line.
    Our own output failed its check, so the job failed (exit 1), not the input."""

    exit_code = JobFailed.exit_code


def write_prediction(path: Path, names: Sequence[str], scores: Sequence[float], *, shown_as: Path | None = None) -> Path:
    """Write `video_name,score` rows to `path` once they pass `validate_prediction`.

    Args:
        path: where to write.
        names: the template's names, in order.
        scores: one probability per name.
        shown_as: the path error messages name (when `path` is a staging copy).

    Raises:
        ValidationError: the rows break a rule; `path` is left as it was.
    """
    if len(names) != len(scores):
        raise ValidationError(f"{len(names)} names but {len(scores)} scores")
    text = csv_text(HEADER, [(n, format_score(s) if math.isfinite(s) else str(s)) for n, s in zip(names, scores)])
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        validate_prediction(temp_name(Path(path)), names, shown_as=shown_as or path)  # the bytes on disk
    return Path(path)


def validate_prediction(path: Path, expected: Sequence[str], *, shown_as: Path | None = None) -> int:
    """Check a prediction CSV against the template's names; return its row count.

    Raises:
        ValidationError: the first broken rule, as `file:line: problem`.
    """
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
    """fallbacks.csv: `video_name,reason,detail,score` for each (name, reason, detail) scored `score`."""
    return write_text(path, csv_text(FALLBACKS_HEADER, [(n, r, d, format_score(score)) for n, r, d in fallbacks]))
