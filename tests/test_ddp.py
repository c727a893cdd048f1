"""DDP training: the per-rank deal of samples, the collectives, the launcher's verdict, and whole runs
over 2 CPU processes (gloo) started by `harness train --nproc 2` and by torchrun itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pytest
import typer

from harness.data.dataset import Shard, batch_indices
from harness.distributed import LaunchOutcome, RankFailure
from tests.conftest import ROOT, isolated_home, wait_until, write_clip, write_labels

TINY = ["--device", "cpu", "--backbone", "test_byobnet.r160_in1k", "--no-pretrained", "--batch-size", "4"]


# ---------------------------------------------------------------------------------- the deal


@pytest.mark.parametrize("n", [10, 11, 12, 13])
def test_training_shards_are_equal_and_cover_the_split(n: int) -> None:
    order = np.random.default_rng(0).permutation(n)
    shares = [Shard(r, 4).take(order, pad=True) for r in range(4)]
    assert len({len(s) for s in shares}) == 1  # the same number of steps on every rank
    assert set(np.concatenate(shares)) == set(range(n))
    assert sum(map(len, shares)) - n < 4  # padding repeats fewer samples than there are ranks


@pytest.mark.parametrize("n", [7, 8, 9])
def test_validation_shards_take_each_sample_once(n: int) -> None:
    shares = [Shard(r, 3).take(np.arange(n), pad=False) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(n))


def test_ranks_deal_one_permutation_per_epoch() -> None:
    def epoch(seed_epoch: list[int], rank: int) -> np.ndarray:
        got = batch_indices(20, 4, shuffle=True, generator=np.random.default_rng(seed_epoch), shard=Shard(rank, 2))
        return np.concatenate(got)

    first = [epoch([0, 1], r) for r in range(2)]
    assert not set(first[0]) & set(first[1]) and len(first[0]) == len(first[1]) == 10
    assert not np.array_equal(epoch([0, 2], 0), first[0])  # reshuffled next epoch
    assert np.array_equal(epoch([0, 1], 0), first[0])  # the same on every rank that deals it


def test_one_process_keeps_the_old_batches() -> None:
    a = batch_indices(11, 5, shuffle=True, generator=np.random.default_rng(3))
    b = batch_indices(11, 5, shuffle=True, generator=np.random.default_rng(3), shard=Shard())
    assert [x.tolist() for x in a] == [x.tolist() for x in b] and sum(map(len, a)) == 10  # batch of one dropped


# ---------------------------------------------------------------------------------- settings and verdicts


def test_collective_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.distributed import collective_timeout
    from harness.errors import ConfigError

    monkeypatch.delenv("HARNESS_COLLECTIVE_TIMEOUT", raising=False)
    assert collective_timeout().total_seconds() == 300
    monkeypatch.setenv("HARNESS_COLLECTIVE_TIMEOUT", "7.5")
    assert collective_timeout().total_seconds() == 7.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("HARNESS_COLLECTIVE_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="HARNESS_COLLECTIVE_TIMEOUT"):
            collective_timeout()


def test_outside_a_launcher_the_world_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import distributed

    for key in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    with distributed.process_group("cpu") as world:
        assert (world.rank, world.size, world.active, world.is_main) == (0, 1, False, True)
        assert distributed.agree("stop", world) == "stop"
        assert distributed.sum_over_ranks([1.0, 2.0], world) == [1.0, 2.0]


def test_the_cause_comes_first_in_the_verdict() -> None:
    from harness.distributed.launch import _failures

    class Seen:  # what torch's ChildFailedError carries: rank -> ProcessFailure
        def __init__(self, failures: dict) -> None:
            self.failures = failures

    class Failure:
        def __init__(self, exitcode: int, timestamp: int) -> None:
            self.exitcode, self.timestamp = exitcode, timestamp

    found = _failures(Seen({0: Failure(1, 100), 1: Failure(-9, 100), 2: Failure(130, 99)}))
    outcome = LaunchOutcome(run_id="r", failures=found)
    assert outcome.reason.startswith("rank 2 exited with status 130; rank 1 exited with signal 9 (SIGKILL)")
    found = _failures(Seen({0: Failure(1, 100), 1: Failure(-9, 100)}))
    assert LaunchOutcome(run_id="r", failures=found).reason == (
        "rank 1 exited with signal 9 (SIGKILL); rank 0 exited with status 1")
    assert LaunchOutcome(None, [RankFailure(0, 2, 1), RankFailure(1, 2, 1)]).exit_code == 2
    assert LaunchOutcome(None, [RankFailure(0, 2, 1), RankFailure(1, -9, 1)]).exit_code == 1
    assert LaunchOutcome(None, interrupted=True).exit_code == 130 and LaunchOutcome(None).ok


def test_ranks_get_the_options_that_were_given(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from harness.distributed.launch import given_options

    seen: list[list[str]] = []
    app = typer.Typer()

    @app.command()
    def train(ctx: typer.Context,
              data: Annotated[Optional[Path], typer.Option()] = None,
              lr: Annotated[Optional[float], typer.Option()] = None,
              pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained")] = None,
              epochs: Annotated[int, typer.Option()] = 6,
              nproc: Annotated[Optional[int], typer.Option()] = None) -> None:
        seen.append(given_options(ctx, drop=("nproc",)))

    result = CliRunner().invoke(app, ["--lr", "0.01", "--no-pretrained", "--data", "rel", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert seen[0] == ["--data", str(Path("rel").absolute()), "--lr", "0.01", "--no-pretrained"]  # no defaults


def test_nproc_inside_torchrun_is_refused(small_dataset: Path, tmp_path: Path) -> None:
    from harness.cli import main

    with isolated_home(tmp_path) as mp:
        mp.setenv("RANK", "0")
        mp.setenv("WORLD_SIZE", "2")
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--data", str(small_dataset), "--nproc", "2", *TINY])
    assert exit_.value.code == 2


@pytest.fixture
def recorded_run(store):
    """A RUNNING run in a throwaway store, as rank 0 leaves it when it dies."""
    client, experiment_id, _ = store
    return client, client.create_run(experiment_id).info.run_id


def test_a_dead_rank_fails_the_run_with_its_reason(recorded_run) -> None:
    from harness.tracking import close_after_ranks

    client, run_id = recorded_run
    reason = close_after_ranks(LaunchOutcome(run_id, [RankFailure(1, -9, 5), RankFailure(0, 1, 5)]))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == reason
    assert reason == "rank 1 exited with signal 9 (SIGKILL); rank 0 exited with status 1"


def test_rank_zero_s_own_error_stands_when_it_failed_first(recorded_run) -> None:
    from harness.tracking import close_after_ranks

    client, run_id = recorded_run
    client.set_tag(run_id, "error", "TrainingDiverged: train loss became nan in epoch 1")
    client.set_terminated(run_id, status="FAILED")
    reason = close_after_ranks(LaunchOutcome(run_id, [RankFailure(0, 1, 5), RankFailure(1, 1, 5)]))
    assert reason == "TrainingDiverged: train loss became nan in epoch 1"
    assert client.get_run(run_id).data.tags["error"] == reason


def test_an_interrupt_closes_a_run_rank_zero_left_running(recorded_run) -> None:
    from harness.tracking import close_after_ranks

    client, run_id = recorded_run
    assert close_after_ranks(LaunchOutcome(run_id, interrupted=True)) == "interrupted"
    assert client.get_run(run_id).info.status == "KILLED"
    assert close_after_ranks(LaunchOutcome(run_id)) is None  # all went well: nothing to say


# ---------------------------------------------------------------------------------- whole runs (slow)


def _collectives(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from harness import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=3)
    world = distributed.current()
    n = 8  # shares of 3, 3 and 2
    local = np.arange(n, dtype=np.float64)[rank::3] * 10
    gathered = distributed.gather_shards(local, n, world)
    decided = distributed.agree("early stopping" if rank == 0 else "not mine", world)
    total = distributed.sum_over_ranks([1.0, float(rank)], world)
    np.save(Path(out_dir) / f"{rank}.npy", np.array([*gathered, decided == "early stopping", *total]))
    dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_over_three_gloo_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_collectives, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=3, join=True)
    for rank in range(3):
        got = np.load(tmp_path / f"{rank}.npy")
        assert got[:8].tolist() == [i * 10.0 for i in range(8)]  # whole split, in order, on every rank
        assert got[8] == 1.0 and got[9:].tolist() == [3.0, 3.0]


@pytest.fixture(scope="module")
def ddp_home(tmp_path_factory: pytest.TempPathFactory):
    """A 24-clip dataset, prepared once, and a store per test under one home."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "ds"
    for split, n in (("train", 16), ("val", 8), ("test", 2)):
        for i in range(n):
            write_clip(data / f"{split}set" / f"{split}{i}.mp4", seconds=1.0, freq=300 + 60 * i)
    write_labels(data / "train_label.txt", [(f"train{i}.mp4", i % 2) for i in range(16)])
    write_labels(data / "val_label.txt", [(f"val{i}.mp4", i % 2) for i in range(8)])
    (data / "test_template.csv").write_text("video_name,score\ntest0.mp4,0\ntest1.mp4,0\n")
    return root, data


def _env(home: Path, store: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    env.update({"HARNESS_HOME": str(home), "HARNESS_CACHE": str(home / "cache"), "PYTHONPATH": str(ROOT),
                "MLFLOW_TRACKING_URI": f"sqlite:///{home / store}", "HARNESS_COLLECTIVE_TIMEOUT": "30", **extra})
    return env


def _runs(env: dict[str, str]) -> list:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        from harness import tracking

        client = tracking.setup()
        experiment = client.get_experiment_by_name("ddp")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return [(r, {k: [m.step for m in client.get_metric_history(r.info.run_id, k)] for k in ("epoch/val_auc", "epoch/train_loss")},
                 [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")]) for r in runs]


def _check_one_finished_run(env: dict[str, str], epochs: int) -> None:
    runs = _runs(env)
    assert len(runs) == 1, [r.info.status for r, _, _ in runs]
    run, steps, checkpoint = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert steps == {"epoch/val_auc": list(range(1, epochs + 1)), "epoch/train_loss": list(range(1, epochs + 1))}
    assert "checkpoint/best.safetensors" in checkpoint


@pytest.mark.slow
def test_nproc_2_records_one_finished_run(ddp_home) -> None:
    home, data = ddp_home
    env = _env(home, "nproc.db")
    done = subprocess.run([sys.executable, "-m", "harness", "train", "--data", str(data), "--nproc", "2", "--epochs", "2",
                           "--experiment", "ddp", *TINY], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run id:") == 1  # rank 1's stdout is not on the console
    _check_one_finished_run(env, epochs=2)
    from safetensors.torch import load_file

    from harness import tracking

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mp.setenv("HARNESS_HOME", str(home))
        run_id = done.stdout.split("run id:")[1].split()[0]
        weights = tracking.resolve_run(tracking.setup(), run_id).weights
    assert not any(k.startswith("module.") for k in load_file(str(weights)))  # the unwrapped module


@pytest.mark.slow
def test_a_users_torchrun_records_one_run(ddp_home) -> None:
    home, data = ddp_home
    env = _env(home, "torchrun.db", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "harness", "train", "--data", str(data), "--epochs", "2", "--experiment", "ddp", *TINY],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_one_finished_run(env, epochs=2)


def _ranks_of(parent: int) -> dict[int, int]:
    """rank -> pid of the processes `parent` started with RANK in their environment."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(proc.name)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits, undelivered, on process `pid` (a stopped process holds its signals)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    pending = (int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("ShdPnd:", "SigPnd:")))
    return any(mask >> (signal.SIGTERM - 1) & 1 for mask in pending)


def _start_long_run(home: Path, data: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict[int, int]]:
    """`harness train --nproc 2` for many epochs; returns once epoch 1 is recorded (training is on).

    No early stopping: these tiny epochs reach val AUC 1.0 in a few, and on a quiet machine the run
    could end (patience spent) before the test stopped or killed a rank."""
    config = home / "no-early-stopping.toml"
    config.write_text("[train]\npatience = 0\n")
    parent = subprocess.Popen([sys.executable, "-m", "harness", "train", "--data", str(data), "--nproc", "2",
                               "--config", str(config), "--epochs", "200", "--experiment", "ddp", *TINY], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def first_epoch_logged() -> bool:
        assert parent.poll() is None, parent.stderr.read()[-3000:]
        runs = _runs(env)
        return bool(runs and runs[0][1]["epoch/val_auc"])

    try:
        wait_until(first_epoch_logged, 300, interval=1, what="the run's first epoch")
    except AssertionError:
        parent.kill()
        raise
    ranks = _ranks_of(parent.pid)
    assert sorted(ranks) == [0, 1]
    return parent, ranks


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_leaves_no_process(ddp_home) -> None:
    home, data = ddp_home
    env = _env(home, "kill.db")
    parent, ranks = _start_long_run(home, data, env)
    killed_at = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = parent.communicate(timeout=120)
    took = time.monotonic() - killed_at
    assert parent.returncode == 1, stderr[-3000:]
    assert "rank 1 exited with signal 9 (SIGKILL)" in stderr.splitlines()[-1]
    assert took < 30  # within the collective timeout: the launcher saw the death at once
    assert not any(_alive(pid) for pid in ranks.values())
    (run, steps, _), = _runs(env)
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("rank 1 exited with signal 9 (SIGKILL)")
    assert run.data.params["world_size"] == "2" and steps["epoch/val_auc"]


@pytest.mark.slow
def test_a_hung_rank_times_out_and_fails_the_run(ddp_home) -> None:
    home, data = ddp_home
    # A stopped rank is alive to its launcher: only the collective timeout can end the run.
    env = _env(home, "hang.db", HARNESS_COLLECTIVE_TIMEOUT="8")
    parent, ranks = _start_long_run(home, data, env)
    stopped_at = time.monotonic()
    os.kill(ranks[1], signal.SIGSTOP)
    try:
        # Rank 0's collective times out and it exits; the launcher then SIGTERMs the stuck rank, which a
        # stopped process holds pending. Resumed, it acts on it: torch's launcher would otherwise wait its
        # fixed 30 s (its _stop_workers ignores --shutdown-timeout) before a SIGKILL, half this test's time.
        wait_until(lambda: _sigterm_pending(ranks[1]) or not _alive(ranks[1]), 8 + 60, 0.2,
                   what="the launcher to SIGTERM the stopped rank after the collective timeout")
        took = time.monotonic() - stopped_at
        assert not _alive(ranks[0])  # rank 0 ended first: the timeout, not the launcher, ended the run
        os.kill(ranks[1], signal.SIGCONT)
        _, stderr = parent.communicate(timeout=120)
    finally:
        if _alive(ranks[1]):
            os.kill(ranks[1], signal.SIGKILL)
    assert parent.returncode == 1, stderr[-3000:]
    assert took < 8 + 40, took  # the collective timeout, and slack for a busy machine
    assert not any(_alive(pid) for pid in ranks.values())
    (run, _, _), = _runs(env)
    # Rank 0 failed first, with its own error: the collective that timed out.
    assert run.info.status == "FAILED" and "timed out" in run.data.tags["error"].lower(), run.data.tags["error"]
    assert "rank 0 exited with status 1" in stderr.splitlines()[-1] or "timed out" in stderr.splitlines()[-1].lower()


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_kills_the_run_and_keeps_its_checkpoint(ddp_home) -> None:
    home, data = ddp_home
    env = _env(home, "ctrl-c.db")
    parent, ranks = _start_long_run(home, data, env)
    parent.send_signal(signal.SIGINT)
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 130, stderr[-3000:]
    assert not any(_alive(pid) for pid in ranks.values())
    (run, _, checkpoint), = _runs(env)
    said = (run.info.status, run.data.tags.get("error"), stderr[-2000:])
    assert run.info.status == "KILLED" and run.data.tags.get("stopped_by") == "interrupted", said
    assert "checkpoint/best.safetensors" in checkpoint  # rank 0 ended it as one process would
