"""Log a promoted run's bundle as an MLflow pyfunc model ("models from code", `pyfunc_model.py`)
under the run's `model/` artifacts, so the registry version's source is a real MLflow model: the UI
shows its schema, `mlflow.pyfunc.load_model("models:/NAME@champion")` loads it and `mlflow models
serve` serves it. Only the bundle's config.json and safetensors weights are copied in; no pickle.

Saved with `mlflow.pyfunc.save_model` into a temporary folder and logged with the client's
explicit run id (the harness never uses mlflow's active-run stack).
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.tracking import pyfunc_model

MODEL_ARTIFACTS = "model"  # the run's artifact folder holding the MLmodel


def log_pyfunc_model(client: MlflowClient, run_id: str, bundle: Path, *, requirements: Path | None = None) -> str:
    """Log the bundle at `bundle` as a pyfunc model of run `run_id`; returns the model's source URI
    (`<artifact uri>/model`) to register.

    Args:
        client: the store's client.
        run_id: the promoted run.
        bundle: the bundle folder (its config.json and weights are used).
        requirements: a pinned requirements.txt (the bundle's); None lets MLflow infer them.
    """
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from harness.bundle import format as F

    signature = ModelSignature(inputs=Schema([ColSpec("string", pyfunc_model.PATH_COLUMN)]),
                               outputs=Schema([ColSpec("double", pyfunc_model.SCORE_COLUMN)]))
    with tempfile.TemporaryDirectory(prefix="harness-pyfunc-") as tmp:
        staged = Path(tmp) / "bundle"
        for name in (F.CONFIG, F.WEIGHTS):
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(bundle) / name, staged / name)
        saved = Path(tmp) / MODEL_ARTIFACTS
        with warnings.catch_warnings():
            # MLflow suggests type hints and an input example; the explicit signature above says the
            # same, and an example would mean shipping a clip inside the model.
            warnings.filterwarnings("ignore", message=".*(type hint|input example|input_example).*")
            mlflow.pyfunc.save_model(
                str(saved), python_model=pyfunc_model.__file__, artifacts={pyfunc_model.BUNDLE_ARTIFACT: str(staged)},
                signature=signature, pip_requirements=str(requirements) if requirements else None,
            )
        client.log_artifacts(run_id, str(saved), MODEL_ARTIFACTS)
    return f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACTS}"
