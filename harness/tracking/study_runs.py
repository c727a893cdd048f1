"""The MLflow run tree of a hyperparameter study: one parent run per study, one child run per trial.

Fed plain values (strings, numbers, dicts) by `harness.tuning`; nothing here knows Optuna.

- The parent is found again by the run id the study remembers, else by its tags `harness.study` +
  `harness.study_storage`, else created (with the spec's params, its space hash and `spec.toml`).
  Callers hold the study lock, so two machines never make two parents.
- It carries the best trial so far: metrics `best_trial/<objective>` (not `summary/best_val_auc`, so
  `--run-id best` never picks the parent; names in `metric_names`), tags `best.*` (MLflow params cannot change once logged),
  trial counts at step = finished trials; and after each session the study's figures and trials.csv
  under `study/`.
- Trial runs (created by `harness.run.train_run` with `trial_tags`) keep the tag `optuna.state` in
  step with their status, as `harness.tracking.tags` says: COMPLETE -> FINISHED, PRUNED -> KILLED +
  `pruned_at_epoch`, FAIL -> FAILED + `error`, and a run whose worker died -> KILLED + `orphaned`.

Every call goes through an MlflowClient with explicit run ids (never mlflow's active-run stack, the
cause of optuna#5148).
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.fileio import write_bytes, write_text
from harness.tracking import metric_names as M
from harness.tracking import tags as T
from harness.tracking.store import close_orphans, get_or_create_experiment, setup

_MAX_PARAMS = 100  # MLflow's limit per log_batch call
_MAX_VALUE = 500  # characters kept of a param or tag value
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
    tags = {T.OPTUNA_STUDY: study, T.OPTUNA_TRIAL_NUMBER: str(number), T.OPTUNA_STATE: "RUNNING"}
    if retry_of is not None:
        tags[T.OPTUNA_RETRY_OF] = str(retry_of)
    return tags


class StudyRuns:
    """The run tree of the studies in one MLflow experiment."""

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id

    @classmethod
    def open(cls, experiment: str) -> StudyRuns:
        """The project's store, experiment `experiment` created when missing."""
        client = setup()
        return cls(client, get_or_create_experiment(client, experiment))

    @classmethod
    def attach(cls, experiment_id: str) -> StudyRuns:
        """The project's store, an experiment known to exist (in worker processes)."""
        return cls(setup(), experiment_id)

    # ------------------------------------------------------------------------------ parent

    def find_or_create_parent(self, *, study: str, storage: str, known_run_id: str | None,
                              params: Mapping[str, Any], space_hash: str, spec_text: str) -> str:
        """The study's parent run id: `known_run_id` when it is an active run of this experiment,
        else the oldest run tagged with this study and storage, else a new run. Call it under the
        study lock.

        Args:
            study: the study's name.
            storage: the storage, password hidden (the same text on every machine of the study).
            known_run_id: the run id the stored study remembers, if any.
            params: logged on a new parent (the first 100).
            space_hash: tagged on a new parent.
            spec_text: the spec's TOML, logged as `study/spec.toml` on a new parent.
        """
        if known_run_id:
            try:
                run = self.client.get_run(known_run_id)
                if run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active":
                    return known_run_id
            except MlflowException:
                pass
        query = f"tags.`{T.STUDY}` = '{_quote(study)}' and tags.`{T.STUDY_STORAGE}` = '{_quote(storage)}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query,
                                        order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0].info.run_id
        tags = {T.STUDY: study, T.STUDY_STORAGE: storage, T.KIND: T.STUDY_KIND,
                T.MLFLOW_NOTE: f"Optuna study `{study}` in `{storage}`; one child run per trial."}
        run_id = self.client.create_run(self.experiment_id, run_name=f"study-{study}", tags=tags).info.run_id
        logged = [Param(k, str(v)[:_MAX_VALUE]) for k, v in params.items()]
        self.client.log_batch(run_id, params=logged[:_MAX_PARAMS], tags=[RunTag(T.SPACE_HASH, space_hash)])
        self.client.log_text(run_id, spec_text, "study/spec.toml")
        return run_id

    def start_session(self, parent_run_id: str, *, target: int) -> None:
        """Mark the parent RUNNING (again, when a study resumes) with this session's target."""
        self.client.update_run(parent_run_id, status=T.RUNNING)
        self.client.set_tag(parent_run_id, T.TRIALS_TARGET, str(target))

    def end_session(self, parent_run_id: str, *, stopped_early: bool) -> None:
        """End the parent: KILLED when the session was interrupted or a worker crashed, else FINISHED."""
        self.client.set_terminated(parent_run_id, status=T.KILLED if stopped_early else T.FINISHED)

    def record_progress(self, parent_run_id: str, *, states: Mapping[int, str], epochs_trained: int, target: int,
                        best: BestTrial | None, leaders: Sequence[BestTrial] = ()) -> None:
        """Trial counts and the best trial so far on the parent (metrics at step = finished trials),
        the parent's description (a link to the best trial's run page and a short leaderboard), and
        the tag `best=true` on the best trial's run alone.

        Args:
            states: trial number -> state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING).
            epochs_trained: over every trial, failed and pruned ones included.
            target: finished trials wanted.
            best: the best COMPLETE trial, if any.
            leaders: the best few COMPLETE trials, best first (the description's leaderboard).
        """
        counts = Counter(states.values())
        step = counts["COMPLETE"] + counts["PRUNED"]
        values: dict[str, float] = {
            M.TRIALS + "complete": counts["COMPLETE"], M.TRIALS + "pruned": counts["PRUNED"],
            M.TRIALS + "failed": counts["FAIL"], M.TRIALS + "finished": step, M.TRIALS + "epochs_trained": epochs_trained,
        }
        tags = {T.TRIALS_TARGET: str(target)}
        if best is not None:
            values.update({f"{M.BEST_TRIAL}{o}": v for o, v in best.values.items() if math.isfinite(v)})
            tags.update({T.BEST_TRIAL_NUMBER: str(best.number), T.BEST_RUN_ID: best.run_id or ""})
            tags.update({f"{T.BEST_PARAM_PREFIX}{k}": str(v)[:_MAX_VALUE] for k, v in best.params.items()})
        parent = self.client.get_run(parent_run_id)
        study = parent.data.tags.get(T.STUDY, "")
        storage = parent.data.tags.get(T.STUDY_STORAGE, "")
        tags[T.MLFLOW_NOTE] = study_description(study, storage, self.experiment_id, counts, target,
                                                best, leaders or ([best] if best else []))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        if best is not None and best.run_id:
            self._move_best_tag(parent_run_id, best.run_id)

    def _move_best_tag(self, parent_run_id: str, best_run_id: str) -> None:
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.BEST_CHILD}` = 'true'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=100):
            if run.info.run_id != best_run_id:
                self.client.delete_tag(run.info.run_id, T.BEST_CHILD)
        self.client.set_tag(best_run_id, T.BEST_CHILD, "true")

    def log_study_artifacts(self, parent_run_id: str, *, pngs: Mapping[str, bytes], trials_csv: str,
                            skipped: Mapping[str, str]) -> None:
        """Figures (`<name>.png`), `trials.csv` and, when some figure could not be drawn,
        `plots_skipped.json` (name -> why) under `study/` on the parent."""
        with tempfile.TemporaryDirectory(prefix="harness-study-") as tmp:
            out = Path(tmp) / "study"
            out.mkdir()
            write_text(out / "trials.csv", trials_csv)
            for name, png in pngs.items():
                write_bytes(out / f"{name}.png", png)
            if skipped:
                write_text(out / "plots_skipped.json", json.dumps(dict(skipped), indent=2))
            self.client.log_artifacts(parent_run_id, str(out), "study")

    # ------------------------------------------------------------------------------ trials

    def trial_run(self, parent_run_id: str, number: int) -> str | None:
        """The run of trial `number` under the parent, or None (it failed before its run existed)."""
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.OPTUNA_TRIAL_NUMBER}` = '{number}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    def mark_trial(self, run_id: str, state: str, *, error: str | None = None, pruner: str | None = None) -> None:
        """Set a trial run's `optuna.state`. With `error` (a trial that trained but gave no usable
        objective), record it and end the run FAILED as well. A PRUNED trial's run says so in its
        name (`trial-007 (pruned at epoch 3)`) and description ("pruned at epoch 3 by the median
        pruner"), so the runs table tells it from a failure at a glance.

        Args:
            pruner: the pruner's name in words ("median pruner"), for a PRUNED trial.
        """
        if error is not None:
            self.client.set_tag(run_id, T.ERROR, " ".join(error.split())[:_MAX_VALUE])
            self.client.set_terminated(run_id, status=T.FAILED)
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
        tags = [RunTag(T.MLFLOW_NOTE, f"Pruned {where}{by}: its best value so far fell behind the "
                                      f"study's other trials {when}, so it stopped training. Not a failure.")]
        if pruner:
            tags.append(RunTag(T.PRUNED_BY, pruner))
        if "(pruned" not in name:
            tags.append(RunTag(T.MLFLOW_RUN_NAME, f"{name} (pruned {where})"))
        self.client.log_batch(run_id, tags=tags)

    def close_orphaned_trials(self, parent_run_id: str, states: Mapping[int, str]) -> list[str]:
        """Close the runs of trials whose worker died, and bring every trial run's `optuna.state`
        in step with its trial. Call it under the study lock; returns the ids closed.

        A run is left RUNNING only by a dead worker, but a run of a live worker on another machine
        looks the same from here. So runs are closed (KILLED, `orphaned=true`, by
        `harness.tracking.store.close_orphans`) only while no trial of the study is RUNNING: under
        the study lock no trial can start then, so no RUNNING run can be a live one. Runs closed by
        anyone (the store's own dead-process check included) still say `optuna.state=RUNNING`:
        once closed, they get their trial's final state.

        Args:
            states: trial number -> state, read under the same lock.
        """
        closed = []
        if "RUNNING" not in states.values():
            closed = close_orphans(self.client, self.experiment_id, parent_run_id=parent_run_id)
        query = f"tags.`{T.MLFLOW_PARENT}` = '{parent_run_id}' and tags.`{T.OPTUNA_STATE}` = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=5000):
            number = run.data.tags.get(T.OPTUNA_TRIAL_NUMBER, "")
            state = states.get(int(number)) if number.isdigit() else None
            if run.info.status != T.RUNNING and state is not None and state not in ("RUNNING", "WAITING"):
                self.client.set_tag(run.info.run_id, T.OPTUNA_STATE, state)
        return closed


def study_description(study: str, storage: str, experiment_id: str, counts: Mapping[str, int], target: int,
                      best: BestTrial | None, leaders: Sequence[BestTrial]) -> str:
    """The parent run's description (markdown): a link to the best trial's run page and a short
    leaderboard. Links are relative to the UI's hash router (`#/experiments/E/runs/R`), so they work
    whatever host and port the UI is served on."""
    lines = [f"Optuna study `{study}` in `{storage}`; one child run per trial.", ""]
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    lines.append(f"**{finished} of {target} trials finished**: {counts.get('COMPLETE', 0)} complete, "
                 f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed.")
    if best is None:
        return "\n".join(lines)
    objectives = list(best.values)
    shown = ", ".join(f"{o} **{v:.4f}**" for o, v in best.values.items())
    lines += ["", f"Best: {_trial_link(best, experiment_id)}, {shown}", "",
              "| rank | trial | " + " | ".join(objectives) + " | params |",
              "|---|---|" + "---|" * len(objectives) + "---|"]
    for rank, row in enumerate(leaders[:_LEADERS], 1):
        params = ", ".join(f"{k}={_short(v)}" for k, v in row.params.items())
        values = " | ".join(f"{row.values.get(o, float('nan')):.4f}" for o in objectives)
        lines.append(f"| {rank} | {_trial_link(row, experiment_id)} | {values} | {params} |")
    return "\n".join(lines)


def _trial_link(trial: BestTrial, experiment_id: str) -> str:
    label = f"trial {trial.number}"
    return f"[{label}](#/experiments/{experiment_id}/runs/{trial.run_id})" if trial.run_id else label


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace("|", "/")[:40]


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
