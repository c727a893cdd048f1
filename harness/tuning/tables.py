"""How a study looks on the console: the live trials table (a terminal), one plain line per
finished trial (a log file, a pipe, a batch job), and the leaderboard at the end. No cell is ever cut:
in a log or a pipe a table is as wide as its content, in a terminal it leaves columns out to fit.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from harness.tuning.results import Progress, StudyResult, TrialRow

if TYPE_CHECKING:
    from rich.console import RenderableType

_HEADER = {"weight_decay": "wd", "augment_strength": "aug", "batch_size": "bs", "input_size": "input",
           "label_smoothing": "ls", "optimizer": "opt"}
_LEFT = ("state", "backbone", "loss", "run id", "worst slice")  # columns of words, the others of numbers
_STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "magenta"}
_ENDED = ("COMPLETE", "PRUNED", "FAIL")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def _counts(rows: Progress | StudyResult) -> str:
    return f"{rows.finished}/{rows.target} finished ({rows.count('PRUNED')} pruned), {rows.count('FAIL')} failed"


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], caption: str, *, width: int | None = None,
           droppable: Sequence[str] = ()) -> RenderableType:
    """A borderless table of whole cells. `width` None (a log, a pipe): every column, as wide as its content.
    A terminal's `width`: the `droppable` columns left out, first named first, until the rest fits; the caption
    names them. Should even the rest not fit, its cells fold onto more lines, never cut with an ellipsis."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = [list(row) for row in rows]
    names = [_HEADER.get(name, name) for name in columns]
    widths = [max([len(name), *(Text.from_markup(row[i]).cell_len for row in rows)]) for i, name in enumerate(names)]
    kept = list(range(len(columns)))
    left_out = []
    for name in droppable:
        if width is None or sum(widths[i] + 2 for i in kept) - 2 <= width:  # 2 columns of padding between cells
            break
        if name in columns:
            kept.remove(columns.index(name))
            left_out.append(names[columns.index(name)])
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for i in kept:
        table.add_column(names[i], justify="left" if columns[i] in _LEFT else "right", overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    if left_out:
        caption += f"; left out to fit {width} columns: {', '.join(left_out)} (a log or a pipe shows them)"
    return Group(table, Text(caption))


def trials_table(progress: Progress, *, limit: int = 20, width: int | None = None) -> RenderableType:
    """The live table: the last `limit` trials with state, parameters, value and epoch, and a summary line;
    in a terminal `width` wide, the seconds, epochs and the last parameters are left out until it fits."""
    first, best = progress.objectives[0], progress.best
    caption = f"{_counts(progress)}, {progress.count('RUNNING')} running, {progress.elapsed_s / 60:.1f} min"
    if best is not None:
        caption += f" - best {first} {best.value:.4f} (trial {best.number})"
    rows = []
    for r in progress.rows[-limit:]:
        params = [(str(r.params[d]).split(".")[0] if d == "backbone" else _fmt(r.params[d])) if d in r.params else ""
                  for d in progress.dimensions]
        value = "" if r.value is None else f"{r.value:.4f}"
        if best is not None and r.number == best.number:
            value = f"[bold green]{value}[/]"
        rows.append([str(r.number), f"[{_STATE_STYLE.get(r.state, '')}]{r.state.lower()}[/]", *params, value,
                     str(r.epoch or ""), "" if r.seconds is None else f"{r.seconds:.0f}"])
    return _table(f"study {progress.study}", ("#", "state", *progress.dimensions, first, "epoch", "s"), rows, caption,
                  width=width, droppable=("s", "epoch", *reversed(progress.dimensions)))


def trial_line(row: TrialRow, objective: str, dimensions: tuple[str, ...] = ()) -> str:
    """One plain line for a finished trial, the error last for a failed one.

    >>> trial_line(TrialRow(3, "PRUNED", {"lr": 0.02}, None, 0.52, 3, "r", None, None, 8.0, "h:1"), "val_auc", ("lr",))
    'trial 3 PRUNED val_auc=0.5200 epochs=3 8s lr=0.02'
    """
    value = "-" if row.value is None else f"{row.value:.4f}"
    seconds = "-" if row.seconds is None else f"{row.seconds:.0f}s"
    params = "".join(f" {d}={_fmt(row.params[d])}" for d in dimensions if d in row.params)
    return f"trial {row.number} {row.state} {objective}={value} epochs={row.epoch} {seconds}{params}" + (
        f" error={row.error}" if row.error else "")


class TrialLines:
    """An `on_progress` for a non-terminal: writes `trial_line` once for each trial as it ends. Trials ended
    before the first call (a resumed study) are summed up in one line, so every trial line in a log is news."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.seen: set[int] | None = None

    def __call__(self, progress: Progress) -> None:
        ended = [row for row in progress.rows if row.state in _ENDED]
        if self.seen is None:
            self.seen = {row.number for row in ended}
            if ended:
                self.write(f"study {progress.study}: resuming with {_counts(progress)}")
            return
        for row in (r for r in ended if r.number not in self.seen):
            self.seen.add(row.number)
            self.write(trial_line(row, progress.objectives[0], progress.dimensions))


def leaderboard_table(result: StudyResult, *, top: int = 10, width: int | None = None) -> RenderableType:
    """The best COMPLETE trials with their whole MLflow run ids, and a summary line. Every column when `width` is
    None (a log, a pipe); in a terminal `width` wide, the columns worth least are left out until the rest fits:
    rank (the row order says it), epochs, worst slice, then the parameters from the last. The trial number, the
    objectives and the run id always stay."""
    caption = (f"{_counts(result)}; {result.stopped}; {result.epochs_trained} epochs trained; "
               f"this session {result.seconds / 60:.1f} min; parent run {result.parent_run_id}")
    ranked = result.ranked()[:top]
    slices = any(r.worst_slice for r in ranked)  # a column only when the data names its methods
    columns = ("rank", "#", *result.dimensions, *result.objectives, "epochs", *(["worst slice"] * slices), "run id")
    rows = ([str(rank), str(r.number), *(_fmt(r.params[d]) if d in r.params else "" for d in result.dimensions),
             *(f"{v:.4f}" for v in r.values or ()), str(r.epoch), *([r.worst_slice or ""] * slices), r.run_id or ""]
            for rank, r in enumerate(ranked, 1))
    return _table(f"study {result.study}: leaderboard", columns, rows, caption, width=width,
                  droppable=("rank", "epochs", "worst slice", *reversed(result.dimensions)))
