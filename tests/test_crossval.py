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
        assert sorted(r.data.tags["cv.fold"] for r in children) == ["1", "2", "3"]  # as the terminal numbers them
        assert sorted(r.info.run_name for r in children) == [f"{parent.info.run_name}-fold{i}" for i in (1, 2, 3)]
        assert all(r.info.status == "FINISHED" and M.BEST_VAL_AUC in r.data.metrics for r in children)
        assert {r.data.tags["harness.kind"] for r in children} == {"fold"}
        # every run carries the low-FPR analysis: intervals as metrics, the confidently wrong clips as artifacts
        child = children[0]
        assert child.data.metrics["summary/val_tpr_fpr1e-3_ci_low"] <= child.data.metrics["summary/val_tpr_fpr1e-3_ci_high"]
        assert {"analysis/confidently_wrong.csv", "analysis/confidently_wrong.png", "analysis/low_fpr.json"} <= \
            {a.path for a in client.list_artifacts(child.info.run_id, "analysis")}
        assert {"oof/tpr_fpr1e-3_ci_low", "oof/tpr_fpr1e-2_ci_high"} <= set(parent.data.metrics)
        assert "analysis/confidently_wrong.png" in {a.path for a in client.list_artifacts(parent_id, "analysis")}
        m = parent.data.metrics
        aucs = [r.data.metrics[M.BEST_VAL_AUC] for r in children]
        assert m["cv/val_auc_mean"] == pytest.approx(np.mean(aucs)) and m["cv/val_auc_std"] == pytest.approx(np.std(aucs))
        assert {"cv/val_tpr_fpr1e-3_mean", "cv/val_tpr_fpr1e-3_std", "oof/auc", "oof/tpr_fpr1e-3"} <= set(m)
        assert m["oof/auc_ci_low"] <= m["oof/auc"] <= m["oof/auc_ci_high"]
        # sectioned; `--run-id best` never picks a parent. No methods file here: the slices are clip lengths
        assert {k.split("/")[0] for k in m} == {"cv", "fold", "oof", "slice"}
        assert any(k.startswith("slice/duration.") for k in m)
        assert [h.step for h in client.get_metric_history(parent_id, "fold/auc")] == [1, 2, 3]
        # its description: the out-of-fold AUC with its interval, and each fold's, as printed
        fold_aucs = "/".join(f"{h.value:.3g}" for h in client.get_metric_history(parent_id, "fold/auc"))
        assert parent.data.tags["mlflow.note.content"] == (
            f"out-of-fold AUC {m['oof/auc']:.4g} [{m['oof/auc_ci_low']:.4g}, {m['oof/auc_ci_high']:.4g}]; folds {fold_aucs}")
        assert "fold 1/3" in err + out  # the terminal numbers folds the same way

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
        assert code == 2 and "not auto, none, method or an existing" in err
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
        assert parent.info.status == "FINISHED" and parent.data.params["audio.window_seconds"] == "1.0"
        assert parent.data.params["audio.codec_variants"] == "1"
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        assert sorted(r.data.tags["cv.fold"] for r in children) == ["1", "2"]
        assert all(r.info.status == "FINISHED" and r.data.params["audio.window_seconds"] == "1.0" for r in children)
        assert 0.0 <= parent.data.metrics["oof/auc"] <= 1.0
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


def test_leave_method_out_cv_records_unseen_method_aucs_on_the_parent(tmp_path: Path, capsys) -> None:
    from harness.data.demo import make_demo_dataset

    data = make_demo_dataset(tmp_path / "demo", clips=20, seconds=1.0)
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["train", "--data", str(data), "--folds", "2", "--group-by", "method", *TINY], capsys)
        assert code == 0, err
        assert "unseen-method AUC mean" in out and "worst slice (out-of-fold): " in out
        from harness import tracking

        client = tracking.setup()
        parent = client.get_run(out.split("parent run id: ")[1].split()[0])
        m = parent.data.metrics
        unseen = {k: v for k, v in m.items() if k.startswith("unseen/") and k.endswith("/auc")}
        methods = {line.split(",")[1] for line in (data / "methods.csv").read_text().splitlines()[1:]} - {"real"}
        assert {k.split("/")[1] for k in unseen} == methods  # every method held out once
        assert m["unseen_auc_mean"] == pytest.approx(np.mean(list(unseen.values())))
        assert m["unseen_auc_min"] == min(unseen.values())
        assert any(k.startswith("slice/method.") for k in m)  # per-slice on the out-of-fold scores
        folds = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(parent.info.run_id, "folds.csv")).read_text())))
        method = {line.split(",")[0]: line.split(",")[1] for line in (data / "methods.csv").read_text().splitlines()[1:]}
        fold_methods = [{method[r["video_name"]] for r in folds if r["fold"] == f} - {"real"} for f in ("1", "2")]
        assert fold_methods[0] and fold_methods[1] and not fold_methods[0] & fold_methods[1]
    code, _, err = _run(["train", "--data", str(data), "--folds", "3", "--group-by", "method", "--methods",
                         str(tmp_path / "none.csv"), *TINY], capsys)
    assert code == 2 and "none.csv: no such file" in err
