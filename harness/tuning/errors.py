"""The errors of tuning, each carrying its exit code through `harness.errors`.

- `SpecError` (exit 2): the study spec, or the study it names in the storage, cannot be used.
- `StorageError` (exit 2): the `--storage` URL is malformed or names something unusable.
- `StorageUnavailable` (exit 1): a well-formed PostgreSQL URL whose server cannot be reached now
  (refused, unreachable, no answer within the connect timeout). The input may be right and the
  server down, so it is a failed job, not bad input: rerunning once the server is up works.
- `StudyError` (exit 1): a worker process crashed; `result` holds what the session did all the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import ConfigError, JobFailed

if TYPE_CHECKING:
    from harness.tuning.results import StudyResult


class SpecError(ConfigError):
    """The study spec (or the study it names in the storage) cannot be used as it is."""


class StorageError(ConfigError):
    """The Optuna storage URL cannot be used: malformed, an unsupported database, no driver."""


class StorageUnavailable(JobFailed):
    """The storage's database server did not answer (refused, unreachable, connect timeout)."""


class StudyError(JobFailed):
    """A worker process crashed. `result` holds what the session did all the same."""

    def __init__(self, message: str, *, result: StudyResult | None = None) -> None:
        super().__init__(message)
        self.result = result
