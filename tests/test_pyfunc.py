"""The champion as a real MLflow model: `submit` logs a "models from code" pyfunc (bundle config +
safetensors, no pickle) with a signature and registers it; MLflow's own loader and server score the
shared real clips as `harness predict` does. Slow: trains a tiny model, submits, starts a server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness.config import RunConfig, TrainConfig
from tests.conftest import free_port, isolated_home, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CFG = RunConfig(train=TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False, epochs=1, batch_size=8, device="cpu"))
MODEL = "harness-demo"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, shared_sample: Path):
    from harness.data.demo import make_demo_dataset
    from harness.preflight import preflight
    from harness.run import train_run
    from harness.submit import submit

    home = tmp_path_factory.mktemp("home")
    with isolated_home(home):
        data = make_demo_dataset(home / "demo", clips=16, seconds=1.5)
        run = train_run(preflight(data, CFG, cache_root=home / "cache"), experiment="pyfunc")
        report = submit(run.run_id, data_dir=data, out_dir=home / "out", cache_root=home / "cache")
        clips = sorted(str(p) for p in shared_sample.glob("*set/*.mp4"))
        yield run.run_id, report, clips


def harness_scores(run_id: str, clips: list[str]) -> list[float]:
    """What `harness predict --run-id RUN` scores (same Predictor, same TTA default)."""
    from harness.predict import Predictor

    return [r.score for r in Predictor.from_run(run_id).score_many(clips)]


def test_registered_version_is_a_pyfunc_model_with_a_schema_and_scores_like_harness_predict(champion):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    run_id, report, clips = champion
    assert len(clips) == 10
    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert version.source.endswith(f"{run_id}/artifacts/model") and str(version.version) == report.model_version
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    signature = model.metadata.signature
    assert signature.inputs.to_dict() == [{"type": "string", "name": "path", "required": True}]
    assert signature.outputs.to_dict() == [{"type": "double", "name": "score", "required": True}]
    assert model.metadata.flavors["python_function"].get("loader_module") == "mlflow.pyfunc.loaders.code_model"  # models from code: no pickle
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/requirements.txt"} <= logged and not any(p.endswith(".pkl") for p in logged)
    got = model.predict(pd.DataFrame({"path": clips}))
    assert list(got.columns) == ["score"]
    assert got["score"].tolist() == pytest.approx(harness_scores(run_id, clips), abs=1e-6)


def test_mlflow_models_serve_answers_invocations_with_the_same_scores(champion):
    run_id, _, clips = champion
    port = free_port()
    # The server runs `uvicorn` from PATH: the interpreter's own bin folder first (a venv not activated).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                return True
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                return False

        wait_until(answers, 180, interval=1, what="the model server to answer /ping")
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[c] for c in clips]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        scores = [row["score"] for row in answer["predictions"]]
        assert scores == pytest.approx(harness_scores(run_id, clips), abs=1e-6)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
