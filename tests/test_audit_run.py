"""The audit's MLflow run as a queued record (`harness.tracking.audit_run`): a recorder killed after
it began the run leaves it to the next command, which completes that run rather than beginning a
second; a record that a live process holds is left to it. `test_audit_cli.py` drives the command."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, isolated_home

pytestmark = pytest.mark.slow  # a recorder process that imports MLflow

# The recorder as `python -m harness.tracking.audit_run RECORD` runs it, killed (kill -9) once it
# has begun the run and logged its metrics: logging the artifacts is where it dies.
DIES_AFTER_BEGINNING = (
    "import os, sys\n"
    "from mlflow.tracking import MlflowClient\n"
    "MlflowClient.log_artifacts = lambda *a, **kw: os.kill(os.getpid(), 9)\n"
    "from harness.tracking.audit_run import main\n"
    "main(sys.argv[1:])\n"
)


def test_a_run_begun_by_a_recorder_that_died_is_completed_once_by_the_next_command(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (audit_dir / "audit.json").write_text('{"findings": ["one finding"]}\n')
    with isolated_home(tmp_path / "home"):
        from harness import tracking
        from harness.fileio import FileLock
        from harness.tracking.audit_run import queue_audit, record_pending
        from harness.tracking.lifecycle import open_run

        record = queue_audit(audit_dir, experiment="audits", dataset_path="/data/x", dataset_fingerprint="fp",
                             dataset_id="x-1", metrics={"clips": 3.0, "nan": float("nan")}, params={"threshold": 0.75},
                             findings=["one finding"], run_name="audit x")
        done = subprocess.run([sys.executable, "-c", DIES_AFTER_BEGINNING, str(record)], check=False, cwd=ROOT,
                              timeout=300, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == -signal.SIGKILL, done.stderr
        client = tracking.setup()
        experiment_id = client.get_experiment_by_name("audits").experiment_id
        (begun,) = client.search_runs([experiment_id])
        assert begun.info.status == "RUNNING" and begun.data.metrics == {"clips": 3.0}
        assert json.loads((audit_dir / "run.json").read_text())["status"] == "recording"

        with FileLock(record):  # a live recorder holds its record: left to it
            assert record_pending(client) == []
        with open_run(client, "audit", experiment_id=experiment_id, run_name="the next command"):
            pass  # the first run this process opens on the store heals it: dead runs closed, records recorded

        runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
        assert set(runs) == {"audit x", "the next command"}
        run = runs["audit x"]
        assert run.info.run_id == begun.info.run_id and run.info.status == "FINISHED"  # the same run, completed
        assert "orphaned" not in run.data.tags and run.data.tags["mlflow.note.content"] == "- one finding"
        assert run.data.tags["harness.pid"] == str(os.getpid())  # completed by this process
        assert run.data.params == {"threshold": "0.75"} and run.data.metrics == {"clips": 3.0}
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["audit.json"]
        receipt = json.loads((audit_dir / "run.json").read_text())
        assert (receipt["status"], receipt["run_id"]) == ("FINISHED", run.info.run_id) and not record.exists()
        assert record_pending(client) == []  # nothing left to record


def test_harness_ui_heals_the_store_like_every_other_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness ui` goes through `lifecycle.heal_once`: a queued audit run whose recorder never ran is recorded."""
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.tracking.ui import UiServer

    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (audit_dir / "audit.json").write_text("{}\n")
    monkeypatch.setattr(UiServer, "serve", lambda self, on_ready: None)  # the store's clean-up is what is tested
    with isolated_home(tmp_path / "home"):
        from harness import tracking
        from harness.tracking.audit_run import queue_audit

        record = queue_audit(audit_dir, experiment="audits", dataset_path="/data/x", dataset_fingerprint="fp",
                             dataset_id="x-1", metrics={"clips": 3.0}, params={}, findings=[], run_name="queued")
        result = CliRunner().invoke(app, ["ui", "--port", str(free_port())])
        assert result.exit_code == 0, result.output
        (run,) = tracking.setup().search_runs([tracking.setup().get_experiment_by_name("audits").experiment_id])
        assert run.info.run_name == "queued" and run.info.status == "FINISHED" and not record.exists()
