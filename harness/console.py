"""Terminal output for a training run: a rich table that grows by one row per epoch."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from harness.callbacks import EpochReport, FitResult

COLUMNS = (
    ("epoch", "epoch", "{:d}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("val AUC", "val_auc", "{:.4f}"),
    ("TPR@1e-3", "val_tpr_fpr1e-3", "{:.3f}"),
    ("EER", "val_eer", "{:.3f}"),
    ("F1", "val_f1", "{:.3f}"),
    ("log loss", "val_logloss", "{:.3f}"),
    ("lr", "lr", "{:.2e}"),
    ("samples/s", "samples_per_s", "{:.0f}"),
    ("s", "epoch_seconds", "{:.1f}"),
)


class EpochTable:
    """A Callback that prints the run's facts, then one table row per epoch as it ends."""

    def __init__(self, console: Console | None = None, *, title: str = "") -> None:
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 140)  # logs and pipes: keep each row on one line
        self.title = title

    def on_start(self, info: dict[str, Any]) -> None:
        facts = ", ".join(f"{k}={v}" for k, v in info.items())
        self.console.print(f"[bold]{self.title}[/] {facts}" if self.title else facts)
        self._header()

    def _table(self) -> Table:
        table = Table(show_header=False, box=None, pad_edge=False)
        for name, _, _ in COLUMNS:
            table.add_column(name, justify="right", min_width=max(len(name), 7))
        return table

    def _header(self) -> None:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for name, _, _ in COLUMNS:
            table.add_column(name, justify="right", min_width=max(len(name), 7))
        self.console.print(table)

    def on_epoch(self, report: EpochReport) -> None:
        values = {"epoch": report.epoch, **report.metrics}
        cells = [fmt.format(values[key]) if key in values else "-" for _, key, fmt in COLUMNS]
        if report.improved:
            cells[2] = f"[green]{cells[2]}[/]"
        table = self._table()
        table.add_row(*cells)
        self.console.print(table)

    def on_end(self, result: FitResult) -> None:
        why = f" ({result.stopped_by})" if result.stopped_by else ""
        self.console.print(f"best epoch {result.best_epoch}: val AUC {result.best_metrics.get('val_auc', float('nan')):.4f}{why}")
