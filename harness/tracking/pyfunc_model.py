"""The champion as an MLflow "models from code" pyfunc model: this file IS the model's code.

MLflow logs this file as the model (no pickled Python object); `load_context` reads the bundle's
config.json and safetensors weights (logged as the model's `bundle` artifact) through
`harness.predict.Predictor.from_bundle`, which checks the weights' sha256. `predict` takes a
DataFrame with a string column `path` (clip files on the scoring machine) and returns a DataFrame
with a double column `score`, the probability that each clip is fake, as `harness predict` scores
it (a clip without usable inputs gets the bundle's fallback score).

Loading it needs the harness package importable (the registered model's requirements pin its
dependencies; `mlflow models serve --env-manager local` uses the current environment).
"""
from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

PATH_COLUMN = "path"
SCORE_COLUMN = "score"
BUNDLE_ARTIFACT = "bundle"


class HarnessDetector(PythonModel):
    """A deepfake detector promoted by `harness submit`: clip paths in, fake probabilities out."""

    def load_context(self, context: Any) -> None:
        from harness.predict import Predictor

        self.predictor = Predictor.from_bundle(context.artifacts[BUNDLE_ARTIFACT])

    # No type hints on predict: MLflow would read them as a (list-typed) signature of its own.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """A DataFrame with column `score` (float64), one row per row of `model_input["path"]`."""
        import pandas as pd

        paths = [str(p) for p in model_input[PATH_COLUMN]]
        rows = self.predictor.score_many(paths)
        return pd.DataFrame({SCORE_COLUMN: [float(r.score) for r in rows]})


mlflow.models.set_model(HarnessDetector())
