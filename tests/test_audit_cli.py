"""`harness audit` end to end: worker processes, audit.json, the MLflow run (recorded in the
background, or with --wait; a killed recorder's run recorded by the next command), --strict, the cache."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import isolated_home, wait_until, write_labels
from tests.test_audit_support import planted_dataset, speech_like, write_av

pytestmark = pytest.mark.slow  # worker processes and an MLflow store: several seconds a command


def receipt(audit_dir: Path) -> dict:
    return json.loads((audit_dir / "run.json").read_text())


def recorded(audit_dir: Path) -> dict:
    """The audit folder's run.json once it names the run (the background recorder imports MLflow first)."""
    return wait_until(lambda: "run_id" in (found := receipt(audit_dir)) and found, 180, what=f"the run in {audit_dir}")


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_audit_writes_its_report_records_a_run_and_strict_fails_on_findings(tmp_path: Path, capsys) -> None:
    names = planted_dataset(tmp_path / "ds")
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["audit", "--data", str(tmp_path / "ds")], capsys)
        assert code == 0, err  # findings alone do not fail the command
        audit_dir = next((tmp_path / "home" / "audits").iterdir())
        data = json.loads((audit_dir / "audit.json").read_text())
        assert {"features", "shortcuts", "duplicates", "adversarial_auc", "adversarial_top"} <= set(data)
        assert {"feature": "leading_silence", "split": "train", "auc": 1.0, "low": 1.0, "high": 1.0} .items() <= \
            next(f for f in data["shortcuts"] if f["feature"] == "leading_silence" and f["split"] == "train").items()
        assert [[p["a"], p["b"]] for p in data["duplicates"] if p["a"].split("/")[0] != p["b"].split("/")[0]] == \
            [names["copies"][:2], names["copies"][2:]]
        assert data["adversarial_auc"] >= 0.95 and "audio_sample_rate" in [f["feature"] for f in data["adversarial_top"]]
        assert "SHORTCUT" in out and "leading_silence" in out and f"audit: {audit_dir / 'audit.json'}" in out
        assert (data["table"]["probed"], data["table"]["reused"]) == (44, 0)

        pid = int(re.search(r"^run: being recorded in the background \(pid (\d+)\); its id will be in ", out, re.MULTILINE)[1])
        assert f"its id will be in {audit_dir / 'run.json'}" in out and receipt(audit_dir)["status"] == "recording"
        done = recorded(audit_dir)
        run_id = done["run_id"]
        os.waitpid(pid, 0)  # the recorder, this process's child here, has exited: reaped
        from harness import tracking

        client = tracking.setup()
        run = client.get_run(run_id)
        assert done["status"] == run.info.status == "FINISHED" and run.data.tags["harness.kind"] == "audit"
        assert run.data.tags["audit.record"] == done["record"] and done["url"].endswith(f"{run_id}?workflowType=machine_learning")
        assert not (tmp_path / "home" / "mlruns" / "pending-runs" / done["record"]).exists()  # done: the record is gone
        assert run.data.tags["audit.findings"] == str(len(data["findings"]))
        assert "leading_silence" in run.data.tags["mlflow.note.content"]
        assert run.data.metrics["adversarial_auc"] == pytest.approx(data["adversarial_auc"], abs=1e-4)
        assert run.data.metrics["duplicate_pairs_across_splits"] == 2 and run.data.params["threshold"] == "0.75"
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"audit.json", "table.csv", "duplicates.csv", "plots"} <= artifacts and "run.json" not in artifacts
        logged = Path(client.download_artifacts(run_id, "audit.json", str(tmp_path)))
        assert json.loads(logged.read_text()) == data
        assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]  # recorded once

        code, out, err = _run(["audit", "--data", str(tmp_path / "ds"), "--strict", "--no-track"], capsys)
        assert code == 1 and "run id" not in out and "being recorded" not in out
        assert not (audit_dir / "run.json").exists()  # --no-track: the folder holds no run
        again = json.loads((audit_dir / "audit.json").read_text())
        assert (again["table"]["probed"], again["table"]["reused"]) == (0, 44)  # the cached table, no decoding
        assert again["findings"] == data["findings"]
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and lines[0].startswith(f"error: --strict: {len(data['findings'])} audit finding(s)")
        assert "leading_silence" in lines[0]


def test_strict_passes_a_clean_dataset_and_out_picks_the_folder(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    for offset, (split, count) in enumerate((("train", 6), ("val", 4))):
        for i in range(count):
            write_av(root / f"{split}set" / f"{split}{i}.mp4", speech_like(100 * offset + i, 1.5))
        write_labels(root / f"{split}_label.txt", [(f"{split}{i}.mp4", i % 2) for i in range(count)])
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["audit", "--data", str(root), "--strict", "--no-track", "--out", str(tmp_path / "a"),
                               "--workers", "1"], capsys)
    assert code == 0, err
    assert "No findings." in out and json.loads((tmp_path / "a" / "audit.json").read_text())["findings"] == []
    assert not (tmp_path / "home" / "mlflow.db").exists()  # --no-track: no store touched


def test_identical_files_across_splits_fail_strict(small_dataset: Path, tmp_path: Path, capsys) -> None:
    """conftest's small dataset writes the same 300 Hz clip as train0, val0 and test0 (and 400 Hz as
    train1, val1, test1): byte-identical files. Steady tones get no fingerprint, so nothing else pairs."""
    with isolated_home(tmp_path / "home"):
        code, _, err = _run(["audit", "--data", str(small_dataset), "--strict", "--no-track", "--out", str(tmp_path / "a")],
                            capsys)
    pairs = json.loads((tmp_path / "a" / "audit.json").read_text())["duplicates"]
    assert code == 1 and "6 duplicate pair(s) across splits" in err
    assert {(p["a"], p["b"]) for p in pairs} == {
        (f"{x}/{x}{i}.mp4", f"{y}/{y}{i}.mp4") for i in (0, 1) for x, y in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    assert {p["kind"] for p in pairs} == {"identical"}


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["audit", "--data", str(tmp_path / "missing"), "--no-track"], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'missing'}: dataset folder not found"
    code, _, err = _run(["audit", "--data", str(tmp_path), "--threshold", "0.3"], capsys)
    assert code == 2 and "threshold" in err


def test_a_killed_recorders_run_is_recorded_once_by_the_next_command(tmp_path: Path, capsys) -> None:
    """The recorder is killed long before it could record (it spends seconds importing MLflow); the
    next command that opens a run on the store (`audit --wait` here) records it, once, and its own."""
    root = tmp_path / "ds"
    for offset, (split, count) in enumerate((("train", 6), ("val", 4))):
        for i in range(count):
            write_av(root / f"{split}set" / f"{split}{i}.mp4", speech_like(200 + 100 * offset + i, 1.0))
        write_labels(root / f"{split}_label.txt", [(f"{split}{i}.mp4", i % 2) for i in range(count)])
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["audit", "--data", str(root), "--out", str(tmp_path / "a"), "--workers", "1"], capsys)
        assert code == 0, err
        pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        first = receipt(tmp_path / "a")
        assert first["status"] == "recording"  # killed before it recorded anything: else this test would prove nothing

        code, out, err = _run(["audit", "--data", str(root), "--out", str(tmp_path / "b"), "--workers", "1", "--wait"],
                              capsys)
        assert code == 0, err
        second = receipt(tmp_path / "b")  # --wait: named before the command returns
        assert out.splitlines()[-1] == f"run id: {second['run_id']}" and second["status"] == "FINISHED"
        healed = receipt(tmp_path / "a")
        assert healed["status"] == "FINISHED" and healed["record"] == first["record"]
        from harness import tracking

        client = tracking.setup()
        runs = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
        assert sorted((r.info.run_id, r.data.tags["audit.record"], r.info.status) for r in runs) == sorted(
            [(healed["run_id"], first["record"], "FINISHED"), (second["run_id"], second["record"], "FINISHED")])
        first_run = client.get_run(healed["run_id"])
        assert first_run.data.tags["audit.dir"] == str(tmp_path / "a") and first_run.data.metrics["clips"] == 10
        assert {"audit.json", "table.csv", "duplicates.csv"} <= {a.path for a in client.list_artifacts(healed["run_id"])}
        assert [p.name for p in (tmp_path / "home" / "mlruns" / "pending-runs").iterdir()] == ["recorder.log"]
