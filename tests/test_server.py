"""`harness server` and `harness ui`: their one launcher (a taken port refused before anything is made, a
killed harness leaves no server, the server's chatter in a log file), the saved view the UI's runs
page opens on; and, for `harness server`, the command line it builds and tune (two coordinators, as on two
machines) -> submit through a throwaway server on PostgreSQL (required under CI; SQLite where tests/pg.py
cannot start one), which then also holds the study's Optuna database; checked from outside: the checkpoints lie in the server's
artifact folder, the study's run tree is on the server, and stopping the command stops the whole
server."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, isolated_home, port_free, wait_until, write_clip, write_labels
from tests.pg import required_postgres, why_unavailable
from tests.tuning_helpers import write_spec


def test_the_server_command_line(tmp_path: Path) -> None:
    from harness.tracking.server import tracking_server

    served = tracking_server(backend_store="postgresql://u:p@db/mlflow", artifacts=tmp_path, host="127.0.0.1", port=5123)
    joined = " ".join(served.command)
    # the installed driver is named, as for Optuna storage (SQLAlchemy 2.1 would ask for psycopg 3)
    assert "--backend-store-uri postgresql+psycopg2://u:p@db/mlflow" in joined and "--workers 4" in joined
    assert f"--serve-artifacts --artifacts-destination {tmp_path}" in joined and "--port 5123" in joined
    assert "--allowed-hosts" not in joined  # loopback: MLflow's defaults are right
    assert served.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and served.env["MLFLOW_TRACKING_URI"] is None
    sqlite = tracking_server(backend_store="sqlite:///x.db", artifacts="a", host="0.0.0.0", port=5000).command
    assert sqlite[sqlite.index("--workers") + 1] == "1"  # one writer for one SQLite file
    allowed = sqlite[sqlite.index("--allowed-hosts") + 1].split(",")
    assert socket.gethostname() in allowed and "10.*" in allowed  # other machines reach it by name


def test_a_file_store_is_refused() -> None:
    from harness.errors import ConfigError
    from harness.tracking.server import tracking_server

    with pytest.raises(ConfigError, match="--backend-store ./mlruns: give a database URL"):
        tracking_server(backend_store="./mlruns", artifacts="a", host="127.0.0.1", port=5000)


@pytest.mark.parametrize("command", ["server", "ui"])
def test_a_taken_port_is_refused_at_once_and_nothing_is_made(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from harness.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with isolated_home(tmp_path / "home"):
            # a wildcard bind collides with the loopback listener; `harness ui` serves on 127.0.0.1 only
            for host in ("127.0.0.1", "0.0.0.0") if command == "server" else ("127.0.0.1",):
                host_option = ["--host", host] if command == "server" else []
                result = CliRunner().invoke(app, [command, *host_option, "--port", str(port)])
                assert result.exit_code == 2, result.output
                assert [line for line in result.output.splitlines() if line.strip()] == [
                    f"error: port {port} on {host} is in use (another `harness ui` or server?); stop it or pass --port"]
    assert not (tmp_path / "home").exists()  # no database, no artifact folder, no log


def test_the_url_to_export() -> None:
    from harness.tracking.server import public_url

    assert public_url("127.0.0.1", 5001) == "http://127.0.0.1:5001"
    assert public_url("0.0.0.0", 5001) == f"http://{socket.getfqdn()}:5001"
    assert public_url("::1", 80) == "http://[::1]:80"


def test_the_ui_saves_the_best_first_view_on_every_experiment_and_links_to_it(tmp_path: Path) -> None:
    import json

    from harness import tracking
    from harness.tracking.links import BEST_FIRST, VIEW_TAG_PREFIX
    from harness.tracking.metric_names import BEST_VAL_AUC
    from harness.tracking.ui import show_best_first, ui_url

    with isolated_home(tmp_path):
        client = tracking.setup()
        study = tracking.get_or_create_experiment(client, "study")
        other = tracking.get_or_create_experiment(client, "other")
        parent = client.create_run(study).info.run_id
        trials = {}
        for auc in (0.7, 0.9, 0.8):
            run = client.create_run(study, tags={"mlflow.parentRunId": parent}).info.run_id
            client.log_metric(run, BEST_VAL_AUC, auc)
            trials[run] = auc
        show_best_first(client)
        key = VIEW_TAG_PREFIX + BEST_FIRST
        saved = client.get_experiment(study).tags[key]
        envelope = json.loads(saved)
        assert client.get_experiment(other).tags[key] == saved
        assert envelope["name"] == "harness: best val AUC first"
        state = json.loads(envelope["state"])
        assert state["selectedColumns"][0] == state["orderByKey"] == f"metrics.`{BEST_VAL_AUC}`" and state["orderByAsc"] is False
        # The server's order for that sort: best first, the parent (no AUC) last.
        order = client.search_runs([study], order_by=[f"{state['orderByKey']} DESC"])
        assert [r.info.run_id for r in order] == [*sorted(trials, key=trials.get, reverse=True), parent]
        client.set_experiment_tag(study, key, "{not json")  # a view someone broke is saved anew
        show_best_first(client)
        assert client.get_experiment(study).tags[key] == saved
    assert ui_url("0.0.0.0", 5001, study) == (f"http://127.0.0.1:5001/#/experiments/{study}/runs"
                                             f"?workflowType=machine_learning&viewStateShareKey={BEST_FIRST}")


# ---------------------------------------------------------------------------------- end to end (slow)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _server_pgid(parent: int) -> int:
    """The process group of the `mlflow server` that `harness server` (pid `parent`) started."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                return int(fields[2])
    raise AssertionError("harness server started no process")


@pytest.mark.slow
def test_a_killed_harness_leaves_no_server_and_its_terminal_holds_only_its_own_lines(tmp_path: Path) -> None:
    """`harness server` killed with SIGKILL (no handler runs): the kernel's parent-death signal stops
    `mlflow server`, which stops its uvicorn; the port is free again. While it ran, the terminal held only
    the harness's lines; MLflow's and uvicorn's went to the log file. `harness ui` starts the server through
    the same launcher (`harness.tracking.launcher`); its terminal is checked in tests/test_ui_browser.py."""
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "HARNESS_HOME": str(home), "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    out, err = (tmp_path / "stdout").open("w+"), (tmp_path / "stderr").open("w+")
    harness = subprocess.Popen([sys.executable, "-m", "harness", "server", "--port", str(port)], env=env, stdout=out,
                               stderr=err, text=True, start_new_session=True)
    pgid = None
    try:
        def printed() -> bool:
            assert harness.poll() is None, (tmp_path / "stderr").read_text()
            return "export MLFLOW_TRACKING_URI=" in (tmp_path / "stdout").read_text()

        wait_until(printed, 180, 0.2, what="harness server to print its URL")
        pgid = _server_pgid(harness.pid)
        harness.kill()
        harness.wait(timeout=10)
        wait_until(lambda: not _group_alive(pgid) and port_free(port), 30, 0.2,
                   what=f"the server's process group {pgid} to end and port {port} to be free")
    finally:
        for group in (harness.pid, pgid):  # whatever a failing test left behind
            if group is not None and _group_alive(group):
                os.killpg(group, signal.SIGKILL)
    log = home / "mlruns" / "server.log"
    lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if line.strip()]
    assert lines[0] == f"the server's own output: {log}", lines
    assert all(line.startswith("tip: ") for line in lines[1:]), lines
    assert "Uvicorn running on" in log.read_text()


@pytest.mark.slow
def test_a_server_that_exits_before_answering_says_why_in_its_own_words(tmp_path: Path) -> None:
    from harness.errors import JobFailed
    from harness.tracking.launcher import ServerProcess

    log = tmp_path / "mlruns" / "server.log"
    server = ServerProcess(["--no-such-option"], host="127.0.0.1", port=free_port(), log=log)
    with pytest.raises(JobFailed, match=r"exited with status 2 before answering on port \d+: "
                                        r"Error: No such option '--no-such-option'.*\(its log: .*server.log\)"):
        server.serve(on_ready=lambda: None)
    assert server.process.poll() == 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("server") / "ds"
    for split, n in (("train", 6), ("val", 4), ("test", 2)):
        for i in range(n):
            write_clip(root / f"{split}set" / f"{split}{i}.mp4", seconds=1.0, freq=300 + 90 * i)
    write_labels(root / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(6)])
    write_labels(root / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(4)])
    (root / "test_template.csv").write_text("video_name,score\ntest1.mp4,0\ntest0.mp4,0\n")
    return root


@pytest.mark.slow
def test_two_machines_tune_then_submit_through_a_server(dataset: Path, tmp_path: Path) -> None:
    """tune (two coordinators on one study, as on two machines) -> submit through `harness server`
    on PostgreSQL, the team layout (required under CI), or on SQLite where PostgreSQL cannot run here. The
    client's side is the same on either: a second pass on the other backend cost CI 60-100 s and tested
    nothing the first did not. The trials are training runs, so `harness train` through a server is not run
    again on its own; `harness predict` finds a run and its weights by the door submit uses
    (`tracking.resolve_run`), so it is not run through the server again either."""
    postgres = why_unavailable() is None or os.environ.get("CI") == "true"
    with required_postgres("mlflow") if postgres else _sqlite(tmp_path) as store:
        _drive(dataset, tmp_path, store, _study_storage(store, tmp_path))


def _study_storage(store: str, tmp_path: Path) -> str:
    """The Optuna storage beside the server's store: a SQLite file, or a database `optuna` in the
    same PostgreSQL server (the README's layout; MLflow's and Optuna's tables cannot share one)."""
    if store.startswith("sqlite:"):
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(store)
    connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
    finally:
        connection.close()
    return url.set(database="optuna").render_as_string(hide_password=False)


class _sqlite:
    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'server.db'}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None


def _drive(dataset: Path, tmp_path: Path, store: str, study_storage: str) -> None:
    home, artifacts, port = tmp_path / "home", tmp_path / "served-artifacts", free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HARNESS_HOME=str(home), HARNESS_CACHE=str(home / "cache"), PYTHONPATH=str(ROOT))
    harness = [sys.executable, "-m", "harness"]
    log = (tmp_path / "server.log").open("w")  # a file, not a pipe nobody reads that could fill and stall the server
    server = subprocess.Popen([*harness, "server", "--backend-store", store, "--artifacts", str(artifacts),
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        export = _read_export_line(server, tmp_path / "server.log")
        assert export == f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
        client_env = {**env, "MLFLOW_TRACKING_URI": export.split("=", 1)[1]}

        def harness_run(*args: str) -> str:
            done = subprocess.run([*harness, *args], check=False, env=client_env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{args[0]}: {done.stderr[-3000:]}"
            return done.stdout

        best_run = _tune(client_env, dataset, tmp_path, study_storage, export.split("=", 1)[1], artifacts)
        # nothing fell back to a local store: mlruns/ holds only the server's log
        assert [p.name for p in (home / "mlruns").iterdir()] == ["server.log"]
        submitted = harness_run("submit", "--run-id", best_run, "--data", str(dataset), "--out", str(tmp_path / "out"))
        assert "registered: harness-ds version 1, alias champion" in submitted
        pgid = _server_pgid(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            server.kill()
    log.close()
    assert server.returncode == 130, (tmp_path / "server.log").read_text()[-3000:]
    wait_until(lambda: not _group_alive(pgid), 20, what=f"process group {pgid} (launcher and workers) to end")


def _tune(env: dict[str, str], dataset: Path, tmp_path: Path, study_storage: str, server: str, artifacts: Path) -> str:
    """Two `harness tune` coordinators, as on two machines, on one study through the server: the team
    layout. Checks the study's one run tree on the server and every trial's checkpoint in `artifacts`
    (proxied: through the server), and returns the best trial's run id."""
    from mlflow.tracking import MlflowClient

    # 2 epochs a trial, as the two-machine study always had: with shorter trials the machine whose worker
    # started first could finish all four before the other's worker asked for one
    spec = write_spec(tmp_path, "served", trials=4, workers=1, epochs=2, lrs=(3e-3, 6e-3))
    command = [sys.executable, "-m", "harness", "tune", "--study", str(spec), "--data", str(dataset),
               "--storage", study_storage]
    machines = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outputs = [m.communicate(timeout=600) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], [err[-3000:] for _, err in outputs]
    for out, err in outputs:  # outside a terminal: a plain line a trial, the leaderboard, then the pick
        lines = err.splitlines()
        trial_lines = [line for line in lines if line.startswith("trial ")]
        assert trial_lines and all(re.match(r"trial \d+ COMPLETE val_auc=[01]\.\d{4} epochs=2 \d+s ", line)
                                   for line in trial_lines), lines
        assert next(i for i, line in enumerate(lines) if "study served: leaderboard" in line) > lines.index(trial_lines[-1])
        assert re.search(r"^\d/4 finished", err, re.M), err  # the other machine's trials may still run
        # the pick, with its interval and how many trials it was the best of (the promotion gate's selection count)
        assert re.search(r"^next: harness submit --run-id \w+ --data \S+  \(trial \d of \d: val AUC [01]\.\d{3} "
                         r"\[[01]\.\d{3}, [01]\.\d{3}\]\)$", out, re.M), out
    client = MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("tune-served")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied: through the server
    runs = client.search_runs([experiment.experiment_id])
    parent, = (r for r in runs if "mlflow.parentRunId" not in r.data.tags)  # one study parent for both machines
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    best_run = parent.data.tags["best.run_id"]
    # the coordinator that wrapped up last (it saw every trial) named it
    assert parent.info.status == "FINISHED" and best_run in {out.split("best: trial ")[1].splitlines()[0].rsplit(" run ", 1)[1]
                                                             for out, _ in outputs}
    finished = [r for r in trials if r.data.tags["optuna.state"] == "COMPLETE"]
    numbers = [r.data.tags["optuna.trial_number"] for r in trials]
    assert len(finished) == 4 and len(numbers) == len(set(numbers)) == len(runs) - 1  # each trial run once
    assert all(r.info.status == "FINISHED" for r in finished)
    for run in finished:  # each trial's checkpoint, and the study's files, in the server's destination
        assert [p for p in artifacts.rglob("best.safetensors") if run.info.run_id in p.parts]
    assert [p for p in artifacts.rglob("trials.csv") if parent.info.run_id in p.parts]
    import optuna

    from harness.tuning import normalise_storage

    study = optuna.load_study(study_name="served", storage=normalise_storage(study_storage))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both machines ran trials
    return best_run


def _read_export_line(server: subprocess.Popen, log: Path) -> str:
    """The line to export; the server prints it once it answers (readline waits for it)."""
    for line in server.stdout:
        if line.startswith("export "):
            return line.strip()
    server.wait(timeout=30)
    raise AssertionError(f"harness server exited {server.returncode}: {log.read_text()[-3000:]}")
