"""`harness audit` end to end: worker processes, audit.json, the MLflow run, --strict, the cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import isolated_home, write_labels
from tests.test_audit_support import planted_dataset, speech_like, write_av

pytestmark = pytest.mark.slow  # worker processes and an MLflow store: several seconds a command


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

        run_id = out.split("run id: ")[1].split()[0]
        from harness import tracking

        client = tracking.setup()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["harness.kind"] == "audit"
        assert run.data.tags["audit.findings"] == str(len(data["findings"]))
        assert "leading_silence" in run.data.tags["mlflow.note.content"]
        assert run.data.metrics["adversarial_auc"] == pytest.approx(data["adversarial_auc"], abs=1e-4)
        assert run.data.metrics["duplicate_pairs_across_splits"] == 2 and run.data.params["threshold"] == "0.75"
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"audit.json", "table.csv", "duplicates.csv", "plots"} <= artifacts

        code, out, err = _run(["audit", "--data", str(tmp_path / "ds"), "--strict", "--no-track"], capsys)
        assert code == 1 and "run id" not in out
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
