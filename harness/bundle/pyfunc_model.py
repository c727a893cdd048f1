"""The champion as an MLflow "models from code" pyfunc model: this file IS the model's code.

MLflow logs this file (`harness.tracking.pyfunc`; nothing pickled) and runs it on load; the harness never
imports it, so it may import mlflow. It loads the `bundle` artifact through `Predictor.from_bundle`
(sha256 checked) and maps a string column `path` to a double column `score`, as `harness predict` scores.
Loading needs the harness package importable (the model's requirements pin its dependencies).
"""
from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from harness.bundle_format import PYFUNC_ARTIFACT, PYFUNC_INPUT, PYFUNC_OUTPUT


class HarnessDetector(PythonModel):
    """A deepfake detector promoted by `harness submit`: clip paths in, fake probabilities out."""

    def load_context(self, context: Any) -> None:
        from harness.predict import Predictor

        self.predictor = Predictor.from_bundle(context.artifacts[PYFUNC_ARTIFACT])

    # A DataFrame hint: MLflow infers no signature from it and, unlike no hint, prints no "Add type hints" warning.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """A DataFrame with column `score` (float64), one row per row of `model_input["path"]`."""
        rows = self.predictor.score_many([str(p) for p in model_input[PYFUNC_INPUT]])
        return pd.DataFrame({PYFUNC_OUTPUT: [float(r.score) for r in rows]})


mlflow.models.set_model(HarnessDetector())
