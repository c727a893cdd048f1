"""`harness train --folds K` end to end: a parent run with K finished fold runs, the CV metrics, oof.csv,
and the planted re-encoded copies kept within one fold. Trains tiny models: slow."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from harness.tracking import metric_names as M

from harness.cli import main
from tests.conftest import isolated_home
from tests.test_audit_support import planted_dataset

pytestmark = pytest.mark.slow

TINY = ["--backbone", "test_byobnet.r160_in1k", "--no-pretrained", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_train_folds_makes_a_parent_with_finished_folds_metrics_and_oof(tmp_path: Path, capsys) -> None:
    names = planted_dataset(tmp_path / "ds", per_class=5)
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["train", "--data", str(tmp_path / "ds"), "--folds", "3", "--experiment", "cv", *TINY], capsys)
        assert code == 0, err
        parent_id = out.split("parent run id: ")[1].split()[0]
        from harness import tracking

        client = tracking.setup()
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.tags["harness.kind"] == "cv"
        assert parent.data.tags["cv.folds"] == "3" and parent.data.tags["cv.group_by"] == "auto"
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        assert sorted(r.data.tags["cv.fold"] for r in children) == ["0", "1", "2"]
        assert all(r.info.status == "FINISHED" and M.BEST_VAL_AUC in r.data.metrics for r in children)
        # every run carries the low-FPR analysis: intervals as metrics, the confidently wrong clips as artifacts
        child = children[0]
        assert child.data.metrics["summary/val_tpr_fpr1e-3_ci_low"] <= child.data.metrics["summary/val_tpr_fpr1e-3_ci_high"]
        assert {"analysis/confidently_wrong.csv", "analysis/confidently_wrong.png", "analysis/low_fpr.json"} <= \
            {a.path for a in client.list_artifacts(child.info.run_id, "analysis")}
        assert {"oof_tpr_fpr1e-3_ci_low", "oof_tpr_fpr1e-2_ci_high"} <= set(parent.data.metrics)
        assert "analysis/confidently_wrong.png" in {a.path for a in client.list_artifacts(parent_id, "analysis")}
        m = parent.data.metrics
        aucs = [r.data.metrics[M.BEST_VAL_AUC] for r in children]
        assert m["cv_val_auc_mean"] == pytest.approx(np.mean(aucs)) and m["cv_val_auc_std"] == pytest.approx(np.std(aucs))
        assert {"cv_val_tpr_fpr1e-3_mean", "cv_val_tpr_fpr1e-3_std", "oof_auc", "oof_tpr_fpr1e-3"} <= set(m)
        assert m["oof_auc_ci_low"] <= m["oof_auc"] <= m["oof_auc_ci_high"]
        assert not set(M.BEST_VAL_AUC_NAMES) & set(m)  # `--run-id best` never picks a parent

        oof_path = client.download_artifacts(parent_id, "oof.csv", str(tmp_path / "dl"))
        rows = list(csv.DictReader(io.StringIO(Path(oof_path).read_text())))
        assert list(rows[0]) == ["video_name", "target", "score", "fold", "split"]
        assert len(rows) == 2 * 5 + 2 * 3 + 2  # every labelled clip once: train, val, the two planted copies
        fold_of = {f"{r['split']}/{r['video_name']}": r["fold"] for r in rows}
        for a, b in zip(names["copies"][::2], names["copies"][1::2]):
            assert fold_of[a] == fold_of[b]
        # each clip's out-of-fold score is its fold run's val prediction
        for child in children:
            preds = Path(client.download_artifacts(child.info.run_id, "val_predictions.csv", str(tmp_path / child.info.run_id)))
            scored = {r["name"]: float(r["score"]) for r in csv.DictReader(io.StringIO(preds.read_text()))}
            mine = [r for r in rows if r["fold"] == child.data.tags["cv.fold"]]
            assert len(mine) == len(scored) and all(float(r["score"]) == pytest.approx(scored[r["video_name"]], abs=1e-6) for r in mine)


def test_bad_group_file_and_too_many_folds_are_refused_before_any_run(tmp_path: Path, capsys) -> None:
    planted_dataset(tmp_path / "ds", per_class=2)
    with isolated_home(tmp_path / "home"):
        code, _, err = _run(["train", "--data", str(tmp_path / "ds"), "--folds", "3", "--group-by", "nope.csv", *TINY], capsys)
        assert code == 2 and "not auto, none or an existing" in err
        code, _, err = _run(["train", "--data", str(tmp_path / "ds"), "--folds", "6", "--group-by", "none", *TINY], capsys)
        assert code == 2 and "every fold needs both classes" in err
        from harness import tracking

        client = tracking.setup()
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_windowed_folds_with_codec_variants_finish_and_score_every_clip(tmp_path: Path, capsys) -> None:
    """The competition-grade audio settings cross-validated: windows of 1 s scored as 5 windows a
    clip, one codec variant of each training clip drawn in training; the val split's clips, which
    have no variants, train as themselves in the folds that hold them."""
    planted_dataset(tmp_path / "ds", per_class=3)
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["train", "--data", str(tmp_path / "ds"), "--folds", "2", "--group-by", "none",
                               "--window-seconds", "1.0", "--codec-variants", "1", "--experiment", "cvwin", *TINY], capsys)
        assert code == 0, err
        parent_id = out.split("parent run id: ")[1].split()[0]
        from harness import tracking

        client = tracking.setup()
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.params["features.window_seconds"] == "1.0"
        assert parent.data.params["features.codec_variants"] == "1"
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        assert sorted(r.data.tags["cv.fold"] for r in children) == ["0", "1"]
        assert all(r.info.status == "FINISHED" and r.data.params["features.window_seconds"] == "1.0" for r in children)
        assert 0.0 <= parent.data.metrics["oof_auc"] <= 1.0
        rows = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(parent_id, "oof.csv", str(tmp_path / "dl"))).read_text())))
        assert sorted((r["split"], r["video_name"]) for r in rows) == sorted(
            [("train", n) for n in _names(tmp_path / "ds" / "train_label.txt")] + [("val", n) for n in _names(tmp_path / "ds" / "val_label.txt")])
        for child in children:  # each clip's out-of-fold score is its fold run's (windowed) val prediction
            preds = Path(client.download_artifacts(child.info.run_id, "val_predictions.csv", str(tmp_path / child.info.run_id)))
            scored = {r["name"]: float(r["score"]) for r in csv.DictReader(io.StringIO(preds.read_text()))}
            mine = [r for r in rows if r["fold"] == child.data.tags["cv.fold"]]
            assert len(mine) == len(scored) and all(float(r["score"]) == pytest.approx(scored[r["video_name"]], abs=1e-6) for r in mine)
        assert "analysis/confidently_wrong.png" in {a.path for a in client.list_artifacts(parent_id, "analysis")}


def _names(label_file: Path) -> list[str]:
    return [line.split(",")[0] for line in label_file.read_text().split()[1:]]
