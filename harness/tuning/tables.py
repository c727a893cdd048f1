"""How a study looks on the console: the live trials table (a terminal), one plain line per
finished trial (a log file, a pipe, a batch job), and the leaderboard at the end.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.tuning.results import Progress, StudyResult, TrialRow

if TYPE_CHECKING:
    from rich.console import RenderableType

_SHORT = {"backbone": lambda v: str(v).split(".")[0]}
_HEADER = {"weight_decay": "wd", "augment_strength": "aug", "batch_size": "bs", "input_size": "input",
           "label_smoothing": "ls", "optimizer": "opt"}
_STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "magenta"}
_ENDED = ("COMPLETE", "PRUNED", "FAIL")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def trials_table(progress: Progress, *, limit: int = 20) -> RenderableType:
    """The live table: the last `limit` trials with state, parameters, value and epoch reached,
    and a summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    first = progress.objectives[0]
    best = progress.best
    running = progress.count("RUNNING")
    caption = (f"{progress.finished}/{progress.target} finished ({progress.count('PRUNED')} pruned), "
               f"{progress.count('FAIL')} failed, {running} running, {progress.elapsed_s / 60:.1f} min")
    if best is not None:
        caption += f" - best {first} {best.value:.4f} (trial {best.number})"
    table = Table(title=f"study {progress.study}", title_justify="left", box=None, pad_edge=False)
    for name in ("#", "state", *progress.dimensions, first, "epoch", "s"):
        table.add_column(_HEADER.get(name, name), justify="left" if name in ("state", "backbone", "loss") else "right",
                         no_wrap=True)
    for r in progress.rows[-limit:]:
        style = _STATE_STYLE.get(r.state, "")
        params = [_SHORT.get(d, _fmt)(r.params[d]) if d in r.params else "" for d in progress.dimensions]
        value = "" if r.value is None else f"{r.value:.4f}"
        if best is not None and r.number == best.number:
            value = f"[bold green]{value}[/]"
        table.add_row(str(r.number), f"[{style}]{r.state.lower()}[/]", *params, value, str(r.epoch or ""),
                      "" if r.seconds is None else f"{r.seconds:.0f}")
    return Group(table, Text(caption))


def trial_line(row: TrialRow, objective: str, dimensions: tuple[str, ...] = ()) -> str:
    """One plain line for a finished trial: number, state, objective value, epochs, seconds, then
    its searched parameters and, for a failed one, the error.

    Example:
        >>> trial_line(TrialRow(3, "PRUNED", {"lr": 0.02}, None, 0.52, 3, "r", None, None, 8.0, "h:1"), "val_auc", ("lr",))
        'trial 3 PRUNED val_auc=0.5200 epochs=3 8s lr=0.02'
    """
    value = "-" if row.value is None else f"{row.value:.4f}"
    seconds = "-" if row.seconds is None else f"{row.seconds:.0f}s"
    params = " ".join(f"{d}={_fmt(row.params[d])}" for d in dimensions if d in row.params)
    line = f"trial {row.number} {row.state} {objective}={value} epochs={row.epoch} {seconds}"
    line += f" {params}" if params else ""
    return line + (f" error={row.error}" if row.error else "")


class TrialLines:
    """An `on_progress` for a non-terminal: writes `trial_line` once for each trial as it ends.

    Trials that had ended before the first call (a resumed study) are summed up in one line
    instead, so that every trial line in a log is news at the time it is written."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.seen: set[int] | None = None

    def __call__(self, progress: Progress) -> None:
        ended = [row for row in progress.rows if row.state in _ENDED]
        if self.seen is None:
            self.seen = {row.number for row in ended}
            if ended:
                self.write(f"study {progress.study}: resuming with {progress.finished}/{progress.target} finished "
                           f"({progress.count('PRUNED')} pruned), {progress.count('FAIL')} failed")
            return
        for row in ended:
            if row.number not in self.seen:
                self.seen.add(row.number)
                self.write(trial_line(row, progress.objectives[0], progress.dimensions))


def leaderboard_table(result: StudyResult, *, top: int = 10) -> RenderableType:
    """The best COMPLETE trials with their MLflow run ids, and a summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    finished = result.finished
    pruned = sum(r.state == "PRUNED" for r in result.rows)
    failed = sum(r.state == "FAIL" for r in result.rows)
    caption = (f"{finished}/{result.target} finished ({pruned} pruned), {failed} failed; {result.stopped}; "
               f"{result.epochs_trained} epochs trained; this session {result.seconds / 60:.1f} min; "
               f"parent run {result.parent_run_id}")
    table = Table(title=f"study {result.study}: leaderboard", title_justify="left", box=None, pad_edge=False)
    for name in ("rank", "#", *result.dimensions, *result.objectives, "epochs", "run id"):
        table.add_column(_HEADER.get(name, name), justify="left" if name in ("backbone", "loss", "run id") else "right",
                         no_wrap=True)
    for rank, r in enumerate(result.ranked()[:top], 1):
        params = [_fmt(r.params[d]) if d in r.params else "" for d in result.dimensions]
        table.add_row(str(rank), str(r.number), *params, *(f"{v:.4f}" for v in r.values or ()), str(r.epoch), r.run_id or "")
    return Group(table, Text(caption))
