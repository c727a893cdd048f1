"""Log an MLflow pyfunc model ("models from code") under a run's `model/` artifacts, so a registry version
is a real MLflow model (`mlflow.pyfunc.load_model("models:/NAME@champion")`, `mlflow models serve`). Only
paths and plain values come in: the model itself is the bundle's (`harness/bundle/pyfunc_model.py`).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from mlflow.tracking import MlflowClient

MODEL_ARTIFACTS = "model"  # the run's artifact folder holding the MLmodel


def log_pyfunc_model(client: MlflowClient, run_id: str, *, code: Path, artifacts: dict[str, Path],
                     columns: tuple[str, str], requirements: Path | None = None) -> str:
    """Log the model whose file `code` calls `mlflow.models.set_model` as a pyfunc model of `run_id`; its source URI."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", columns[0])]),
                               outputs=Schema([ColSpec("double", columns[1])]))
    with tempfile.TemporaryDirectory(prefix="harness-pyfunc-") as tmp:
        saved = Path(tmp) / MODEL_ARTIFACTS
        with warnings.catch_warnings():
            # No input example: the signature says what goes in, and an example would ship a clip in the model.
            warnings.filterwarnings("ignore", message=".*(type hint|input example|input_example).*")
            mlflow.pyfunc.save_model(str(saved), python_model=str(code), artifacts={k: str(v) for k, v in artifacts.items()},
                                     signature=signature, pip_requirements=str(requirements) if requirements else None)
        client.log_artifacts(run_id, str(saved), MODEL_ARTIFACTS)
    return f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACTS}"
