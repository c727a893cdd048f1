"""The MLflow run tree of a hyperparameter study, fed plain values by `harness.tuning` (nothing here knows Optuna).

The parent (`harness.kind=study`) is found by the run id the study remembers, else by its tags, else created
(under the study lock); each `harness tune` session reopens and ends it. It carries the best trial so far
(metrics `best_trial/...`, never picked by `--run-id best`; tags `best.*`, as params cannot change), trial
counts at step = finished trials, and `study/` figures. Trial runs keep `optuna.state` in step with their status.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.fileio import write_bytes, write_text
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.lifecycle import TrackedRun, close_dead_runs, end_run, open_run, readable, reopen_run, result_note
from harness.tracking.links import markdown_link, run_page
from harness.tracking.store import get_or_create_experiment, setup

_LEADERS = 5  # rows of the leaderboard in the parent's description


@dataclass(frozen=True)
class BestTrial:
    """The best trial so far, as the parent run shows it."""

    number: int
    run_id: str | None
    values: dict[str, float]  # objective -> value
    params: dict[str, Any] = field(default_factory=dict)


def trial_tags(study: str, number: int, *, retry_of: int | None = None) -> dict[str, str]:
    """The tags a trial's run starts with (state RUNNING until the trial ends)."""
    retry = {T.OPTUNA_RETRY_OF: str(retry_of)} if retry_of is not None else {}
    return {T.OPTUNA_STUDY: study, T.OPTUNA_TRIAL_NUMBER: str(number), T.OPTUNA_STATE: "RUNNING", **retry}


class StudyRuns:
    """The run tree of the studies in one MLflow experiment."""

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client, self.experiment_id = client, experiment_id

    @classmethod
    def open(cls, experiment: str) -> StudyRuns:
        """The project's store, experiment `experiment` created when missing."""
        client = setup()
        return cls(client, get_or_create_experiment(client, experiment))

    @classmethod
    def attach(cls, experiment_id: str) -> StudyRuns:
        """The project's store, an experiment known to exist (in worker processes)."""
        return cls(setup(), experiment_id)

    def find_or_create_parent(self, *, study: str, storage: str, known_run_id: str | None,
                              params: Mapping[str, Any], space_hash: str, spec_text: str) -> str:
        """The study's parent run id: `known_run_id` if active here, else the oldest tagged `study`, `storage`, else new."""
        if known_run_id:
            with contextlib.suppress(MlflowException):
                run = self.client.get_run(known_run_id)
                if run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active":
                    return known_run_id
        query = f"tags.`{T.STUDY}` = '{_quote(study)}' and tags.`{T.STUDY_STORAGE}` = '{_quote(storage)}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query,
                                        order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0].info.run_id
        tags = {T.STUDY: study, T.STUDY_STORAGE: storage, T.SPACE_HASH: space_hash,
                T.MLFLOW_NOTE: f"Optuna study `{study}` in `{storage}`; one child run per trial."}
        parent = open_run(self.client, T.STUDY_KIND, experiment_id=self.experiment_id, run_name=f"study-{study}",
                          tags=tags, params=params)
        with parent.ended_on_error():
            parent.call(self.client.log_text, parent.run_id, spec_text, "study/spec.toml")
        return parent.run_id  # RUNNING, owned by this process: `start_session` reopens it

    def start_session(self, parent_run_id: str, *, target: int) -> TrackedRun:
        """The parent, RUNNING for this session with its target; the session `end`s or `release`s it."""
        parent = reopen_run(self.client, parent_run_id, T.STUDY_KIND)
        with parent.ended_on_error():
            parent.set_tags({T.TRIALS_TARGET: target})
        return parent

    def record_progress(self, parent_run_id: str, *, states: Mapping[int, str], epochs_trained: int, target: int,
                        best: BestTrial | None, leaders: Sequence[BestTrial] = ()) -> None:
        """Trial counts, the best trial and the description (`leaders`, best first) on the parent; `best=true` on its run."""
        counts = Counter(states.values())
        step = counts["COMPLETE"] + counts["PRUNED"]
        values: dict[str, float] = {M.TRIALS + "complete": counts["COMPLETE"], M.TRIALS + "pruned": counts["PRUNED"],
                                    M.TRIALS + "failed": counts["FAIL"], M.TRIALS + "finished": step,
                                    M.TRIALS + "epochs_trained": epochs_trained}
        tags = {T.TRIALS_TARGET: str(target)}
        if best is not None:
            # Copies, rounded as people read them; the trial's own run keeps the exact value.
            values.update({f"{M.BEST_TRIAL}{o}": round(v, 4) for o, v in best.values.items() if math.isfinite(v)})
            tags.update({T.BEST_TRIAL_NUMBER: str(best.number), T.BEST_RUN_ID: best.run_id or ""})
            tags.update({f"{T.BEST_PARAM_PREFIX}{k}": readable(v) for k, v in best.params.items()})
        on_parent = self.client.get_run(parent_run_id).data.tags
        tags[T.MLFLOW_NOTE] = study_description(on_parent.get(T.STUDY, ""), on_parent.get(T.STUDY_STORAGE, ""),
                                                self.experiment_id, counts, target, best, leaders or ([best] if best else []),
                                                best_result=self._result_of(best))
        parent = TrackedRun(self.client, parent_run_id, run_name="", experiment_id=self.experiment_id)
        parent.log_metrics(values, step=step, tags=tags)  # one call, one timestamp
        if best is not None and best.run_id:
            self._move_best_tag(parent_run_id, best.run_id)

    def _result_of(self, best: BestTrial | None) -> str:
        """The best trial's one-line result with its interval, as its own run's description says it
        ('val AUC 0.7101 [0.5553, 0.85], best epoch 1 of 1'; out of fold for a cross-validated trial), or ""."""
        if best is None or not best.run_id:
            return ""
        with contextlib.suppress(MlflowException):
            note = result_note(self.client.get_run(best.run_id).data.tags.get(T.MLFLOW_NOTE, ""))
            return note if note and "\n" not in note else ""  # one line, or none said yet
        return ""

    def _move_best_tag(self, parent_run_id: str, best_run_id: str) -> None:
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.BEST_CHILD}` = 'true'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=100):
            if run.info.run_id != best_run_id:
                self.client.delete_tag(run.info.run_id, T.BEST_CHILD)
        self.client.set_tag(best_run_id, T.BEST_CHILD, "true")

    def log_study_artifacts(self, parent_run_id: str, *, pngs: Mapping[str, bytes], trials_csv: str,
                            skipped: Mapping[str, str]) -> None:
        """Figures (`<name>.png`), `trials.csv` and `plots_skipped.json` (name -> why) under the parent's `study/`."""
        with tempfile.TemporaryDirectory(prefix="harness-study-") as tmp:
            (out := Path(tmp) / "study").mkdir()
            write_text(out / "trials.csv", trials_csv)
            for name, png in pngs.items():
                write_bytes(out / f"{name}.png", png)
            if skipped:
                write_text(out / "plots_skipped.json", json.dumps(dict(skipped), indent=2))
            self.client.log_artifacts(parent_run_id, str(out), "study")

    def trial_run(self, parent_run_id: str, number: int) -> str | None:
        """The run of trial `number` under the parent, or None (it failed before its run existed)."""
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.OPTUNA_TRIAL_NUMBER}` = '{number}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    def mark_trial(self, run_id: str, state: str, *, error: str | None = None, pruner: str | None = None) -> None:
        """Set a trial run's `optuna.state`; `error` (no usable objective): end it FAILED; PRUNED: its name says so."""
        if error is not None:
            end_run(self.client, run_id, T.FAILED, error=error)
        if state == "PRUNED":
            self._say_pruned(run_id, pruner)
        self.client.set_tag(run_id, T.OPTUNA_STATE, state)

    def _say_pruned(self, run_id: str, pruner: str | None) -> None:
        run = self.client.get_run(run_id)
        if T.PRUNED_AT_FOLD in run.data.tags:  # a cross-validated trial stops between folds
            where, when = f"after fold {run.data.tags[T.PRUNED_AT_FOLD]}", "after that fold"
        else:
            where, when = f"at epoch {run.data.tags.get(T.PRUNED_AT_EPOCH, '?')}", "at that epoch"
        name = run.info.run_name or "trial"
        by = f" by the {pruner}" if pruner else ""
        note = run.data.tags.get(T.MLFLOW_NOTE, "")
        tags = []
        if not note.startswith("Pruned"):  # above what it reached before (val AUC so far)
            result = result_note(note)
            text = f"Pruned {where}{by}: its best value so far fell behind the study's other trials {when}, so it stopped"
            tags.append(RunTag(T.MLFLOW_NOTE, f"{text} training. Not a failure." + (f"\n\n{result}" if result else "")))
        if pruner:
            tags.append(RunTag(T.PRUNED_BY, pruner))
        if "(pruned" not in name:
            tags.append(RunTag(T.MLFLOW_RUN_NAME, f"{name} (pruned {where})"))
        self.client.log_batch(run_id, tags=tags)

    def close_orphaned_trials(self, parent_run_id: str, states: Mapping[int, str]) -> list[str]:
        """Close the runs of trials whose worker died (by `states`) and bring `optuna.state` in step; the ids closed."""
        closed = close_dead_runs(self.client, study_parent=parent_run_id, trial_states=states)
        # Runs closed by anyone still say optuna.state=RUNNING: they get their trial's final state.
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.OPTUNA_STATE}` = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=5000):
            number = run.data.tags.get(T.OPTUNA_TRIAL_NUMBER, "")
            state = states.get(int(number)) if number.isdigit() else None
            if run.info.status != T.RUNNING and state is not None and state not in ("RUNNING", "WAITING"):
                self.client.set_tag(run.info.run_id, T.OPTUNA_STATE, state)
        return closed


def study_description(study: str, storage: str, experiment_id: str, counts: Mapping[str, int], target: int,
                      best: BestTrial | None, leaders: Sequence[BestTrial], *, best_result: str = "") -> str:
    """The parent run's description (markdown): the best trial's link, its one-line result with its interval
    (`best_result`, from its run) and a leaderboard, relative links (any UI host)."""
    lines = [f"Optuna study `{study}` in `{storage}`; one child run per trial.", ""]
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    lines.append(f"**{finished} of {target} trials finished**: {counts.get('COMPLETE', 0)} complete, "
                 f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed.")
    if best is None:
        return "\n".join(lines)
    objectives = list(best.values)
    shown = ", ".join(f"{o} **{v:.4f}**" for o, v in best.values.items())
    lines += ["", f"Best: {_trial_link(best, experiment_id)}, {shown}" + (f"; {best_result}" if best_result else ""), "",
              "| rank | trial | " + " | ".join(objectives) + " | params |",
              "|---|---|" + "---|" * len(objectives) + "---|"]
    for rank, row in enumerate(leaders[:_LEADERS], 1):
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={str(v).replace('|', '/')[:40]}"
                           for k, v in row.params.items())
        values = " | ".join(f"{row.values.get(o, float('nan')):.4f}" for o in objectives)
        lines.append(f"| {rank} | {_trial_link(row, experiment_id)} | {values} | {params} |")
    return "\n".join(lines)


def _trial_link(trial: BestTrial, experiment_id: str) -> str:
    label = f"trial {trial.number}"
    return markdown_link(label, run_page(experiment_id, trial.run_id)) if trial.run_id else label


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
