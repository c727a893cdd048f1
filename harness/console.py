"""Terminal output: every command's console (`make_console`, one rule for a terminal and for a log or a pipe),
and a training run's: two lines of facts, then a table that grows by one row per epoch, printed as the epoch
ends (no live redraw), so a log or a pipe gets the same aligned text as a terminal.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from harness.callbacks import EpochReport, FitResult

# Outside a terminal: wider than any table, so each is as wide as its content (rich's default there is 80).
UNBOUNDED = 10_000

# (name, metric, format, width): a row is 78 characters, one line of an 80-column terminal.
COLUMNS = (
    ("epoch", "epoch", "{:d}", 5),
    ("train loss", "train_loss", "{:.4f}", 10),
    ("val AUC", "val_auc", "{:.4f}", 7),
    ("TPR@1e-3", "val_tpr_fpr1e-3", "{:.3f}", 8),
    ("EER", "val_eer", "{:.3f}", 5),
    ("F1", "val_f1", "{:.3f}", 5),
    ("log loss", "val_logloss", "{:.3f}", 8),
    ("lr", "lr", "{:.2g}", 7),
    ("samples/s", "samples_per_s", "{:.0f}", 9),
    ("s", "epoch_seconds", "{:.1f}", 5),
)
# Facts the header writes in words; any other key of the run's facts follows as key=value.
_WORDED = ("backbone", "params", "thop_params", "macs", "modality", "input_size", "faces", "device", "precision",
           "ranks", "train_clips", "val_clips")


def make_console(*, stderr: bool = True) -> Console:
    """A console for a command's output on stderr (or stdout), under `plain_outside_terminal`."""
    return plain_outside_terminal(Console(stderr=stderr))


def plain_outside_terminal(console: Console) -> Console:
    """The one rule for every command's lines and tables: in a terminal rich wraps them at its width; in a log
    or a pipe nothing is wrapped or cut, so a line can be searched for and a value (a run id, a path) copied:
    a line prints whole, a table as wide as its content."""
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = UNBOUNDED
    return console


class EpochTable:
    """A Callback printing the run's facts, then a row per epoch. Column `lr` is the epoch's rate as the engine
    reports (and MLflow records) it: the highest its steps used, the warm-up peak in a first epoch."""

    def __init__(self, console: Console | None = None, *, title: str = "") -> None:
        self.console = plain_outside_terminal(console or Console(stderr=True))  # a row a line in a log
        self.title = title

    def on_start(self, info: dict[str, Any]) -> None:
        for line in header(info, self.title):
            self.console.print(line, highlight=False, markup=False)
        self.console.print(_table(header=True))

    def on_epoch(self, report: EpochReport) -> None:
        values = {"epoch": report.epoch, **report.metrics}
        cells = [fmt.format(values[key]) if values.get(key) is not None else "-" for _, key, fmt, _ in COLUMNS]
        if report.improved:
            cells[2] = f"[green]{cells[2]}[/]"
        table = _table(header=False)
        table.add_row(*cells)
        self.console.print(table)

    def on_end(self, result: FitResult) -> None:
        why = f" ({result.stopped_by})" if result.stopped_by else ""
        self.console.print(f"best epoch {result.best_epoch}: val AUC {result.best_metrics.get('val_auc', float('nan')):.4f}{why}")
        if "worst_slice" in result.info:  # the recorder's (harness.slices), when the dataset names its methods
            self.console.print(f"worst slice: {result.info['worst_slice']}", highlight=False, markup=False)


def _table(*, header: bool) -> Table:
    table = Table(show_header=header, box=None, pad_edge=False, show_edge=False, padding=(0, 0, 0, 1))
    for name, _, _, width in COLUMNS:
        table.add_column(name, justify="right", min_width=width, no_wrap=True)
    return table


def header(info: dict[str, Any], title: str = "") -> list[str]:
    """Two lines: the model (after `title`) and its size ('resnet18: 11.2M params, 1.8G MACs'), then what it
    reads and where it trains ('audio 1x128x256; cpu fp32; 144 train / 48 val clips'), other facts as key=value."""
    get = info.get
    backbone = str(get("backbone", ""))
    name = title if backbone in title else " ".join(p for p in (title, backbone) if p)
    size = [f"{_count(get('params'))} params"] if get("params") is not None else []
    if get("thop_params") not in (None, get("params")):
        size[-1] += f" (thop {_count(get('thop_params'))})"
    if get("macs") is not None:
        size.append(f"{_count(get('macs'))} MACs")
    reads = " ".join(str(get(k)) for k in ("modality", "input_size") if get(k) is not None)
    reads += f", faces {get('faces')}" if get("faces") is not None else ""
    where = " ".join(str(get(k)) for k in ("device", "precision") if get(k) is not None)
    where += f" x{get('ranks')} ranks" if get("ranks") is not None else ""
    clips = f"{get('train_clips')} train / {get('val_clips')} val clips" if get("train_clips") is not None else ""
    rest = ", ".join(f"{k}={v}" for k, v in info.items() if k not in _WORDED)
    return [f"{name}: {', '.join(size)}" if size else name, "; ".join(p for p in (reads, where, clips, rest) if p)]


def _count(n: Any) -> str:
    """11200000 -> '11.2M', 1.8e9 -> '1.8G', 199681 -> '200k'."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:g}"
