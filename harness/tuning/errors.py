"""The errors of tuning, each carrying its exit code through `harness.errors`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import ConfigError, JobFailed

if TYPE_CHECKING:
    from harness.tuning.results import StudyResult


class SpecError(ConfigError):
    """Exit 2: the study spec (or the study it names in the storage) cannot be used as it is."""


class StorageError(ConfigError):
    """Exit 2: the Optuna storage URL cannot be used: malformed, an unsupported database, no driver."""


class StorageUnavailable(JobFailed):
    """Exit 1: the storage's database server did not answer (refused, unreachable, connect timeout).
    The input may be right and the server down: rerunning once it is up works."""


class StudyError(JobFailed):
    """Exit 1: a worker process crashed. `result` holds what the session did all the same."""

    def __init__(self, message: str, *, result: StudyResult | None = None) -> None:
        super().__init__(message)
        self.result = result
