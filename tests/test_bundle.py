"""The bundle format and its checks, on bundles made by hand from a random-initialised tiny model (no training).

What a reader refuses: no config.json, another format, weights outside the bundle (absolute, `..`,
a link leading out), weights that are not safetensors, weights whose sha256 is not the recorded one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import bundle_format as F
from harness.bundle.build import write_archive
from harness.bundle.source import copy_source
from harness.config import to_dict
from harness.fileio import sha256
from harness.predict import Predictor
from tests.conftest import write_clip
from tests.run_main import run_main

ROOT = Path(__file__).resolve().parent.parent
# The untrained test_byobnet checkpoint and its predictor, shared with the predict tests.
from tests.test_predict import CFG, predictor, weights  # noqa: E402, F401 - fixtures


def make_bundle(folder: Path, weights: Path, predictor: Predictor, *, tta: int = 1, **model: object) -> Path:
    """config.json (through `format.make_config`, as the builder writes it) and the weights."""
    (folder / F.WEIGHTS).parent.mkdir(parents=True)
    shutil.copyfile(weights, folder / F.WEIGHTS)
    inputs = {name: {"shape": list(CFG.features_for(name).shape), "mean": list(m), "std": list(s)}
              for name, (m, s) in predictor.stats.items()}
    config = F.make_config(
        run_id="r" * 32, run_name="hand-made", run_config=to_dict(CFG),
        model={"backbone": CFG.train.backbone, "inputs": inputs}, weights_sha256=sha256(folder / F.WEIGHTS),
        scoring={"tta": tta, "fallback_score": 0.5}, metrics={}, data={}, code={},
    )
    config["model"].update(model)
    (folder / F.CONFIG).write_text(json.dumps(config))
    return folder


def edit_config(folder: Path, **model: object) -> None:
    config = json.loads((folder / F.CONFIG).read_text())
    config["model"].update(model)
    (folder / F.CONFIG).write_text(json.dumps(config))


def test_a_bundle_reads_back_and_scores_like_its_checkpoint(weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", weights, predictor, tta=3)
    read = F.read_config(bundle)
    assert read.run_config == CFG and read.weights == bundle / F.WEIGHTS and read.tta == 3 and read.fallback == 0.5
    loaded = Predictor.from_bundle(bundle)
    assert loaded.tta == 3 and loaded.source == f"bundle {bundle} (run {'r' * 32})" and not loaded.demo
    config = json.loads((bundle / F.CONFIG).read_text())
    (bundle / F.CONFIG).write_text(json.dumps({**config, "data": {"name": "demo", "demo": True}}))
    assert F.read_config(bundle).demo  # `harness predict --bundle` warns that the scores mean nothing on real clips
    clip = write_clip(tmp_path / "c.mp4", seconds=1.5)
    assert Predictor.from_bundle(bundle, tta=1).score(clip) == pytest.approx(predictor.score(clip), abs=1e-6)


def test_not_a_bundle_or_another_format(tmp_path: Path, weights: Path, predictor: Predictor) -> None:
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        F.read_config(tmp_path)
    bundle = make_bundle(tmp_path / "b", weights, predictor)
    config = json.loads((bundle / F.CONFIG).read_text())
    (bundle / F.CONFIG).write_text(json.dumps({**config, "format": 2}))
    with pytest.raises(F.BundleError, match="bundle format 2, this code reads 1"):
        F.read_config(bundle)
    (bundle / F.CONFIG).write_text("{not json")
    with pytest.raises(F.BundleError, match="not valid JSON"):
        F.read_config(bundle)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "link"])
def test_weights_outside_the_bundle_are_refused(where: str, weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", weights, predictor)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(weights, outside)
    if where == "absolute":
        edit_config(bundle, weights=str(outside))
        message = "points outside the bundle"
    elif where == "dotdot":
        edit_config(bundle, weights="../elsewhere.safetensors")
        message = "points outside the bundle"
    else:
        (bundle / F.WEIGHTS).unlink()
        (bundle / F.WEIGHTS).symlink_to(outside)
        message = "leads outside the bundle"
    with pytest.raises(F.BundleError, match=message):
        F.read_config(bundle)


def test_weights_are_checked_against_the_recorded_sha256(weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", weights, predictor)
    data = bytearray((bundle / F.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF  # one tensor byte: still a valid safetensors file, other weights
    (bundle / F.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(F.BundleError, match="sha256 .* differs from the .* that .*config.json records"):
        F.read_config(bundle)
    edit_config(bundle, sha256=None)
    with pytest.raises(F.BundleError, match="model.sha256 is missing"):
        F.read_config(bundle)


def test_weights_that_are_not_safetensors_are_refused(weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    import torch

    bundle = make_bundle(tmp_path / "b", weights, predictor)
    torch.save({"w": torch.ones(2)}, bundle / F.WEIGHTS)  # a pickle, the thing a bundle must never load
    edit_config(bundle, sha256=sha256(bundle / F.WEIGHTS))
    with pytest.raises(F.BundleError, match="not a safetensors file"):
        F.read_config(bundle)


def test_cli_predict_refuses_a_bad_bundle_in_one_line(weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", weights, predictor)
    clip = write_clip(tmp_path / "c.mp4", seconds=1.5)
    (bundle / F.WEIGHTS).write_bytes(b"\x80\x04pickle, not safetensors")
    edit_config(bundle, sha256=sha256(bundle / F.WEIGHTS))
    result = run_main("predict", str(clip), "--bundle", str(bundle))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: {bundle / F.WEIGHTS}: not a safetensors file "
                                                  "(Error while deserializing header: header too large)"]
    edit_config(bundle, weights="/etc/passwd")
    outside = run_main("predict", str(clip), "--bundle", str(bundle))
    assert outside.exit_code == 2 and len(outside.stderr.strip().splitlines()) == 1
    assert "model.weights '/etc/passwd' points outside the bundle" in outside.stderr


def test_archive_is_reproducible(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "w.bin").write_bytes(b"\x00" * 10)
    (folder / "a.txt").write_text("a")
    first = write_archive(folder, tmp_path / "one.tar.gz").read_bytes()
    (folder / "a.txt").touch()  # a newer mtime changes nothing
    assert write_archive(folder, tmp_path / "two.tar.gz").read_bytes() == first
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        assert [m.name for m in tar.getmembers()] == ["bundle/a.txt", "bundle/weights", "bundle/weights/w.bin"]
        assert {m.uid for m in tar.getmembers()} == {0} and {m.mtime for m in tar.getmembers()} == {0}
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def head_run(commit: str | None = None) -> SimpleNamespace:
    """A run recorded at `commit` (default: this checkout's HEAD), as the bundle reads it."""
    if commit is None:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    return SimpleNamespace(info=SimpleNamespace(run_id="r" * 32), data=SimpleNamespace(tags={"git.commit": commit,
                                                                                           "git.dirty": "false"}))


def test_source_comes_from_the_runs_commit_or_the_bundle_is_refused(tmp_path: Path) -> None:
    run = head_run()
    note = copy_source(tmp_path, run)
    assert note == f"git archive of commit {run.data.tags['git.commit']}"
    assert (tmp_path / "pyproject.toml").is_file() and (tmp_path / "harness" / "predict.py").is_file()
    assert (tmp_path / "harness" / "bundle" / "build.py").is_file()
    assert not (tmp_path / "README.md").exists()  # the bundle writes its own, not the project's
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in {".py", ".toml", ".md"}]
    # No copy of today's tree instead: a run without a usable commit is refused, saying what to do.
    with pytest.raises(F.BundleError, match=r"^run r{32} records no git commit .*harness train --like r{32}"):
        copy_source(tmp_path / "unknown", head_run("unknown"))
    with pytest.raises(F.BundleError, match=r"^run r{32} trained at commit 0{40}, which .* does not hold: fetch it"):
        copy_source(tmp_path / "elsewhere", head_run("0" * 40))
    assert not (tmp_path / "unknown").exists() and not (tmp_path / "elsewhere").exists()


def test_bundle_api_refuses_a_missing_path_before_loading(weights: Path, predictor: Predictor, tmp_path: Path) -> None:
    """`python api.py PATH...` (the image's `predict` entry point): a typo is exit 2 and one line, no row."""
    import sys

    bundle = make_bundle(tmp_path / "b", weights, predictor)
    copy_source(bundle, head_run())
    shutil.copyfile(ROOT / "harness" / "bundle" / "api.py", bundle / F.API)
    clip = write_clip(tmp_path / "c.mp4", seconds=1.5)
    done = subprocess.run([sys.executable, "api.py", str(clip), str(tmp_path / "typo.mp4")], cwd=bundle,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'typo.mp4'}: no such file or folder"]


def test_the_pyfunc_model_code_runs_without_mlflows_type_hint_warning() -> None:
    """MLflow runs harness/bundle/pyfunc_model.py when it saves and loads the model; it used to print
    MLflow's "Add type hints" UserWarning, in raw ANSI escapes, twice on every submit."""
    import sys

    code = f"import runpy; runpy.run_path({str(F.PYFUNC_CODE)!r})"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "type hints" not in done.stderr and "\x1b[" not in done.stderr, done.stderr[-2000:]
