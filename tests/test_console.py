"""The training table: a header that fits 80 columns and names the model once, readable rows in a pipe."""
from __future__ import annotations

import io

from rich.console import Console

from harness.callbacks import EpochReport
from harness.console import EpochTable, plain_outside_terminal

INFO = {"device": "cpu", "precision": "fp32", "train_clips": 144, "val_clips": 48, "modality": "audio",
        "backbone": "tf_efficientnet_lite0.in1k", "params": 3_372_000, "thop_params": 3_372_000, "macs": 198_000_000,
        "input_size": "1x128x256"}


def _run(table: EpochTable, lrs: list[float]) -> list[str]:
    table.on_start(INFO)
    for epoch, lr in enumerate(lrs, 1):
        table.on_epoch(EpochReport(epoch=epoch, metrics={"train_loss": 0.69, "val_auc": 0.7, "lr": lr,
                                                         "samples_per_s": 120.0, "epoch_seconds": 3.0}, improved=True))
    return table.console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def _terminal() -> Console:
    return Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)


def test_the_header_names_the_model_once_and_fits_80_columns() -> None:
    lines = _run(EpochTable(_terminal()), [1e-3, 9e-4, 6.7e-5])
    assert lines[:2] == ["tf_efficientnet_lite0.in1k: 3.37M params, 198M MACs",
                         "audio 1x128x256; cpu fp32; 144 train / 48 val clips"]
    assert len(lines) == 2 + 1 + 3 and all(len(line) <= 80 for line in lines)  # nothing wrapped
    folds = _run(EpochTable(Console(file=io.StringIO(), width=80), title="fold 1/3 tf_efficientnet_lite0.in1k"), [])
    assert folds[0] == "fold 1/3 tf_efficientnet_lite0.in1k: 3.37M params, 198M MACs"
    extra = EpochTable(Console(file=io.StringIO(), width=80))
    extra.on_start({**INFO, "ranks": 2, "best_weights": "raw", "thop_params": 3_400_000})
    assert extra.console.file.getvalue().splitlines()[:2] == [  # type: ignore[attr-defined]
        "tf_efficientnet_lite0.in1k: 3.37M params (thop 3.4M), 198M MACs",
        "audio 1x128x256; cpu fp32 x2 ranks; 144 train / 48 val clips; best_weights=raw"]


def test_the_lr_column_shows_each_epochs_rate_as_reported() -> None:
    # The engine reports the rate each epoch trained at (what MLflow records as train/lr): shown as is.
    rows = _run(EpochTable(Console(file=io.StringIO(), width=80)), [1e-3, 7.5e-4, 2.5e-4])[3:]
    assert [row.split()[7] for row in rows] == ["0.001", "0.00075", "0.00025"]


def test_in_a_pipe_every_row_is_one_line_under_its_header() -> None:
    lines = _run(EpochTable(Console(file=io.StringIO(), force_terminal=False)), [1e-3, 5e-4])
    header, rows = lines[2], lines[3:]
    assert header.split() == ["epoch", "train", "loss", "val", "AUC", "TPR@1e-3", "EER", "F1", "log", "loss", "lr",
                              "samples/s", "s"]
    assert len(rows) == 2 and all(len(row) == len(header) for row in rows)
    assert "\x1b[" not in "\n".join(lines)  # no colour codes in a log file
    for name in ("val AUC", "lr", "samples/s"):  # each value ends where its column's name ends
        end = header.index(name) + len(name)
        assert all(row[end - 1] != " " and (end == len(row) or row[end] == " ") for row in rows), name


def test_one_rule_for_every_commands_lines_whole_in_a_log_wrapped_by_rich_in_a_terminal() -> None:
    line = "prepared audio of 240 clips: 240 done, 0 reused, 0 failed; 86.8 clips/s; cache " + "/tmp/home" * 12
    log = plain_outside_terminal(Console(file=io.StringIO()))  # a pipe or a file: rich would wrap at 80
    log.print(f"[yellow]failed:[/] {line}")
    assert log.file.getvalue() == f"failed: {line}\n"  # type: ignore[attr-defined]
    terminal = plain_outside_terminal(_terminal())
    terminal.print(line)
    lines = terminal.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) > 1 and all(len(row) <= 80 for row in lines)
