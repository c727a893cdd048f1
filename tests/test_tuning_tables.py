"""What a study shows: the live table, the plain per-trial lines of a non-terminal, the
leaderboard; and the pruning callback and replay that decide what a trial reports."""
from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from harness import tuning
from harness.callbacks import EpochReport, StopTraining

ROWS = (
    tuning.TrialRow(0, "COMPLETE", {"backbone": "test_resnet.r160_in1k", "lr": 0.00312}, (0.75,), 0.75, 12, "run0", None, None, 30.0, "h:1"),
    tuning.TrialRow(1, "PRUNED", {"backbone": "test_vit.r160_in1k", "lr": 0.02}, None, 0.52, 3, "run1", None, None, 8.0, "h:2"),
    tuning.TrialRow(2, "FAIL", {"backbone": "test_vit.r160_in1k", "lr": 1e30}, None, None, 1, "run2", None, "TrainingDiverged: nan", 2.0, "h:1"),
    tuning.TrialRow(3, "RUNNING", {"backbone": "test_byobnet.r160_in1k"}, None, 0.61, 2, None, 1, None, 5.0, "h:2"),
)


def test_tables_render():
    from rich.console import Console

    progress = tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, ROWS, 65.0)
    assert progress.finished == 2 and progress.best.number == 0
    console = Console(width=150, record=True)
    console.print(tuning.trials_table(progress))
    text = console.export_text()
    assert "2/50 finished (1 pruned), 1 failed, 1 running" in text and "test_resnet" in text and "0.7500" in text
    result = tuning.StudyResult("demo", "sqlite:///x.db", "1", "parent", ("val_auc",), ("backbone", "lr"), 50, ROWS, 65.0,
                                18, "target reached", (0, 0))
    console.print(tuning.leaderboard_table(result))
    assert "run0" in console.export_text() and [r.number for r in result.ranked()] == [0]
    assert "worst slice" not in console.export_text()  # no column when the data names no methods
    sliced = dataclasses.replace(result, rows=(dataclasses.replace(ROWS[0], worst_slice="method.tts AUC 0.6100 [0.4, 0.8]"),))
    console.print(tuning.leaderboard_table(sliced))
    assert "worst slice" in (text := console.export_text()) and "method.tts AUC 0.6100 [0.4, 0.8]" in text


# The demo study's seven dimensions, a worst slice and whole run ids: wider than 160 columns.
DEMO_DIMENSIONS = ("backbone", "lr", "loss", "weight_decay", "batch_size", "augment_strength", "input_size")
DEMO_ROWS = tuple(
    tuning.TrialRow(n, "COMPLETE", {"backbone": "test_efficientnet.r160_in1k", "lr": 0.00112 * (n + 1), "loss": "focal",
                                    "weight_decay": 0.000123, "batch_size": 16, "augment_strength": 1.23,
                                    "input_size": "128x128"}, (0.6 + n / 100,), 0.6, 18, f"{n}5799e18dcc14d839b3b12bed3caba1",
                    None, None, 30.0, "h:1", worst_slice=f"method.vocoder AUC 0.{n}667 [0.0330, 0.7301]")
    for n in range(3))
DEMO = tuning.StudyResult("demo", "sqlite:///x.db", "1", "parent", ("val_auc",), DEMO_DIMENSIONS, 50, DEMO_ROWS, 65.0,
                          54, "target reached", (0, 0))


def _printed(table: object, console: Console) -> list[str]:
    console.print(table)
    return console.file.getvalue().splitlines()


def test_in_a_log_or_a_pipe_the_leaderboard_shows_every_cell_whole():
    from harness.console import plain_outside_terminal

    lines = _printed(tuning.leaderboard_table(DEMO), plain_outside_terminal(Console(file=io.StringIO())))
    text = "\n".join(lines)
    assert "…" not in text and len(lines) == 1 + 1 + 3 + 1  # title, header, a line a trial, caption
    assert lines[1].split() == ["rank", "#", "backbone", "lr", "loss", "wd", "bs", "aug", "input", "val_auc", "epochs",
                                "worst", "slice", "run", "id"]
    for row, line in zip(DEMO_ROWS[::-1], lines[2:5]):  # best first, each value whole: a run id to copy from a log
        assert line.split()[:3] == [str(3 - row.number), str(row.number), "test_efficientnet.r160_in1k"]
        assert line.endswith(f"  {row.worst_slice}  {row.run_id}") and f" {row.params['lr']:.4g} " in line


def test_in_an_80_column_terminal_the_study_tables_leave_columns_out_and_cut_no_cell():
    def terminal() -> Console:
        return Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)

    lines = _printed(tuning.leaderboard_table(DEMO, width=80), terminal())
    text = "\n".join(lines)
    assert "…" not in text and all(len(line) <= 80 for line in lines), text
    assert lines[1].split() == ["#", "backbone", "val_auc", "run", "id"]  # the rest named in the caption
    assert all(line.split()[-1] == row.run_id for row, line in zip(DEMO_ROWS[::-1], lines[2:5]))
    assert "left out to fit 80 columns: rank, epochs, worst slice, input, aug, bs, wd, loss, lr" in " ".join(text.split())
    progress = tuning.Progress("demo", ("val_auc",), DEMO_DIMENSIONS, 50, (*DEMO_ROWS, dataclasses.replace(
        DEMO_ROWS[0], number=3, state="RUNNING", values=None)), 65.0)
    lines = _printed(tuning.trials_table(progress, width=80), terminal())
    assert "…" not in (text := "\n".join(lines)) and all(len(line) <= 80 for line in lines), text
    assert lines[1].split() == ["#", "state", "backbone", "lr", "loss", "wd", "bs", "aug", "val_auc"]
    assert lines[2].split() == ["0", "complete", "test_efficientnet", "0.00112", "focal", "0.000123", "16", "1.23", "0.6000"]
    assert lines[5].split()[:2] == ["3", "running"] and "left out to fit 80 columns: s, epoch, input" in text


def test_trial_lines_say_each_finished_trial_once():
    lines: list[str] = []
    log = tuning.TrialLines(lines.append)
    first = tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, ROWS[3:], 1.0)
    log(first)
    log(first)  # nothing ended: nothing written
    log(tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, ROWS, 20.0))
    log(tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, ROWS, 21.0))  # nothing new
    assert lines == [
        "trial 0 COMPLETE val_auc=0.7500 epochs=12 30s backbone=test_resnet.r160_in1k lr=0.00312",
        "trial 1 PRUNED val_auc=0.5200 epochs=3 8s backbone=test_vit.r160_in1k lr=0.02",
        "trial 2 FAIL val_auc=- epochs=1 2s backbone=test_vit.r160_in1k lr=1e+30 error=TrainingDiverged: nan",
    ]


def test_trial_lines_sum_up_a_resumed_study_in_one_line():
    lines: list[str] = []
    log = tuning.TrialLines(lines.append)
    log(tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, ROWS[:2], 1.0))
    done = tuning.TrialRow(4, "COMPLETE", {"lr": 0.01}, (0.7,), 0.7, 6, "run4", None, None, 12.0, "h:1")
    log(tuning.Progress("demo", ("val_auc",), ("backbone", "lr"), 50, (*ROWS[:2], done), 9.0))
    assert lines == ["study demo: resuming with 2/50 finished (1 pruned), 0 failed",
                     "trial 4 COMPLETE val_auc=0.7000 epochs=6 12s lr=0.01"]


def test_ranking_follows_the_objective_direction():
    rows = (ROWS[0], tuning.TrialRow(4, "COMPLETE", {}, (0.25,), 0.25, 2, "run4", None, None, 3.0, "h:1"))
    eer = tuning.StudyResult("demo", "s", "1", "p", ("val_eer",), (), 5, rows, 1.0, 14, "target reached", (0,))
    assert [r.number for r in eer.ranked()] == [4, 0] and eer.best.number == 4
    auc = tuning.StudyResult("demo", "s", "1", "p", ("val_auc",), (), 5, rows, 1.0, 14, "target reached", (0,))
    assert [r.number for r in auc.ranked()] == [0, 4] and auc.best.number == 0


class StubTrial:
    """Records reports; the pruner says "prune" on its `prune_at`-th question."""

    def __init__(self, prune_at: int) -> None:
        self.reported: list[tuple[float, int]] = []
        self.asked = 0
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        self.asked += 1
        return self.asked >= self.prune_at


def test_pruning_callback_reports_best_so_far_and_stops():
    trial = StubTrial(prune_at=3)
    cb = tuning.PruningCallback(trial)
    cb.on_epoch(EpochReport(1, {"val_auc": 0.6}, True))
    cb.on_epoch(EpochReport(2, {"val_auc": 0.55}, False))
    with pytest.raises(StopTraining, match="pruned at epoch 3"):
        cb.on_epoch(EpochReport(3, {"val_auc": float("nan")}, False))
    assert trial.reported == [(0.6, 1), (0.6, 2)]


def test_pruning_callback_minimises_a_minimised_objective():
    trial = StubTrial(prune_at=99)
    cb = tuning.PruningCallback(trial, metric="val_eer")
    for epoch, eer in enumerate((0.4, 0.3, 0.35), 1):
        cb.on_epoch(EpochReport(epoch, {"val_eer": eer}, False))
    assert trial.reported == [(0.4, 1), (0.3, 2), (0.3, 3)]


def test_replay_pruning_cuts_curves_below_the_rung(tmp_path):
    from .tuning_helpers import write_spec

    path = write_spec(tmp_path, "replay", epochs=9, pruner='kind = "successive_halving"\nmin_resource = 1\nreduction_factor = 3')
    spec = tuning.load_spec(path, check_models=False)
    good = [0.6 + 0.03 * i for i in range(9)]
    bad = [0.5] * 9
    epochs, best = tuning.replay_pruning(spec, [good, bad, bad, bad])
    assert best == pytest.approx(good[-1]) and epochs < 4 * 9  # the flat curves are stopped early
    unpruned = tuning.replay_pruning(dataclass_replace(spec, pruner=tuning.NoPruning()), [good, bad, bad, bad])
    assert unpruned == (36, pytest.approx(good[-1]))


def dataclass_replace(spec, **changes):  # noqa: ANN001, ANN201
    import dataclasses

    return dataclasses.replace(spec, **changes)
