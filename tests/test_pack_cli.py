"""`harness pack` end to end: two real cross-validations (one audio, one face model, 2 folds, 1 epoch,
30 demo clips) packed into one run of kind pack, a cap that stops it at one member, candidates whose
folds differ refused, and the pack promoted: bundle `api.predict` == `harness predict`, and the
registered champion loads with `mlflow.pyfunc.load_model`. Slow: it trains.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.predict import expand_paths
from tests.conftest import isolated_home
from tests.run_main import run_main

pytestmark = pytest.mark.slow
TINY = ("--backbone", "test_byobnet.r160_in1k", "--no-pretrained", "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--folds", "2", "--group-by", "none", "--experiment", "pack-tests")
VIDEO = ("--modality", "video", "--frames", "2", "--face-size", "64")


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory):
    """A home of the module's own, a small demo dataset, and an audio and a video cross-validation in it."""
    from harness.data.demo import make_demo_dataset

    home = tmp_path_factory.mktemp("pack")
    with isolated_home(home):
        data = make_demo_dataset(home / "demo", clips=30, seconds=1.5)
        ids = []
        for extra in ((), VIDEO):
            code, out, err = run_main("train", "--data", str(data), *TINY, *extra)
            assert code == 0, err[-2000:]
            ids.append(out.split("parent run id: ")[1].split()[0])
        yield home, data, ids


@pytest.fixture(scope="module")
def packed(cv):
    home, data, ids = cv
    code, out, err = run_main("pack", "--runs", ",".join(ids), "--data", str(data), "--size", "4")
    assert code == 0, err[-2000:]
    return out.split("pack run id: ")[1].split()[0], err


def _client():
    from harness import tracking

    return tracking.setup()


def test_pack_makes_one_run_of_kind_pack_with_its_members_or_says_why_one(cv, packed) -> None:
    _, _, ids = cv
    run_id, err = packed
    run = _client().get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["harness.kind"] == "pack"
    members = tags["pack.members"].split(",")
    assert set(tags["pack.candidates"].split(",")) == set(ids)
    table = json.loads(Path(_client().download_artifacts(run_id, "checkpoint/pack.json")).read_text())
    assert [m["run_id"] for m in table["members"]] == members
    if len(members) == 2:
        assert {m["config"]["modality"] for m in table["members"]} == {"audio", "video"}
    else:
        said = " ".join(err.split())  # the report wraps at the terminal's width
        assert "one member only" in said and "alone scores best out of fold" in said
    # each member is a FINISHED train run of its candidate's settings, found again rather than retrained
    for member in members:
        trained = _client().get_run(member)
        assert trained.info.status == "FINISHED" and trained.data.tags["harness.kind"] == "train"
    # scored like a training run (what `--run-id best` and the gate read), and the selection's estimates
    assert 0 <= metrics["summary/best_val_auc"] <= 1 and metrics["model/params"] > 0
    assert metrics["pack/oof_auc_nested"] <= 1 and metrics["pack/nested_gain_low"] <= metrics["pack/nested_gain_high"]
    assert {"pack/report.json", "pack/pack_size.png", "val_predictions.csv"} <= \
        {a.path for d in ("pack", "") for a in _client().list_artifacts(run_id, d or None)}
    note = tags["mlflow.note.content"]
    assert all(m[:8] in note for m in members) and "nested" in note and "weight" in note
    # its result in one line with its interval, on the page and in the terminal, beside its members' alone
    interval = f"[{metrics['summary/val_auc_ci_low']:.4g}, {metrics['summary/val_auc_ci_high']:.4g}]"
    said = next(line for line in err.splitlines() if line.startswith("pack: val AUC"))
    assert interval in note.splitlines()[0] and interval in said and "alone val AUC" in said
    report = err.split("nested pack - best member")[0]  # what pack prints before the members train
    assert "member added" in report and "OOF AUC" in report, report
    table = [line for line in report.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line.rstrip()) for line in table) <= 80, report  # fits an 80-column terminal
    # in a pipe or a log the sentences under it are whole, never broken mid-sentence
    assert any(line.startswith("OOF AUC ") and "nested; best member" in line for line in report.splitlines()), report


def test_a_cap_that_fits_one_member_but_not_two_stops_at_one_naming_it(cv) -> None:
    from harness.pack import count_pack
    from harness.tracking import resolve_run

    _, data, ids = cv
    configs = [resolve_run(_client(), i, weights=False).config for i in ids]
    alone = [count_pack([c])[1] for c in configs]
    cap = max(alone) + 1  # each fits alone, the two together do not
    assert count_pack(configs)[1] > cap
    code, out, err = run_main("pack", "--runs", ",".join(ids), "--data", str(data), "--size", "3",
                              "--max-params", str(cap))
    assert code == 0, err[-2000:]
    assert "skipped" in err and f"over the {cap / 1e6:g}M cap" in " ".join(err.split())
    run = _client().get_run(out.split("pack run id: ")[1].split()[0])
    assert len(run.data.tags["pack.members"].split(",")) == 1


def test_runs_whose_folds_differ_are_refused_naming_the_run(cv, tmp_path: Path) -> None:
    """A cross-validation whose folds.csv / oof.csv put two clips in other folds cannot be packed with the others."""
    from harness.tracking import get_or_create_experiment
    from harness.tracking.lifecycle import open_run

    _, data, ids = cv
    client = _client()
    folder = tmp_path / "moved"
    folder.mkdir()
    for name in ("oof.csv", "folds.csv", "config.json"):
        client.download_artifacts(ids[0], name, str(folder))
    for name in ("oof.csv", "folds.csv"):
        rows = list(csv.DictReader(io.StringIO((folder / name).read_text())))
        for row in rows[:2]:
            row["fold"] = "2" if row["fold"] == "1" else "1"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (folder / name).write_text(buf.getvalue())
    with open_run(client, "cv", experiment_id=get_or_create_experiment(client, "pack-tests"), run_name="moved") as run:
        client.log_artifacts(run.run_id, str(folder))
    code, out, err = run_main("pack", "--runs", f"{ids[0]},{run.run_id}", "--data", str(data))
    assert code == 2 and not out
    line = err.strip()
    assert len(line.splitlines()) == 1 and run.run_id in line and "in another fold than run " + ids[0] in line


def test_submit_the_pack_bundle_api_equals_predict_and_the_champion_loads(cv, packed, shared_sample: Path) -> None:
    import mlflow
    import pandas as pd

    home, data, _ = cv
    run_id, _ = packed
    code, out, err = run_main("submit", "--run-id", run_id, "--data", str(data), "--out", str(home / "sub"))
    assert code == 0, err[-2000:]
    bundle = home / "sub" / "bundle"
    config = json.loads((bundle / "config.json").read_text())
    members = config["model"]["members"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Pack members" in card and all(m["run_id"] in card for m in members)
    assert "PackedModel.build" in (bundle / "train.py").read_text() and "pack: nested out-of-fold AUC" in out
    assert f"(a pack of {len(members)} members: each member, then the pack)" in (bundle / "train.sh").read_text()

    clips = [str(p) for p in expand_paths([shared_sample])]
    code, out, err = run_main("predict", *clips, "--run-id", run_id)
    assert code == 0, err[-2000:]
    predicted = [float(score) for _, score in csv.reader(out.splitlines())]
    script = f"import api, json; print(json.dumps(api.predict_batch({clips!r})))"
    done = subprocess.run([sys.executable, "-c", script], cwd=bundle, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == pytest.approx(predicted, abs=1e-6)
    name = f"harness-{data.name}"
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.predict(pd.DataFrame({"path": clips}))["score"].tolist() == pytest.approx(predicted, abs=1e-6)
