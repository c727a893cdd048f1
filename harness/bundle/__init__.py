"""A promoted bundle: the folder `harness submit` writes so that a run's model stands alone.

- `format`: the one home of the bundle's file names and config.json layout, and the checks a reader
  makes (weights inside the bundle, safetensors, the recorded sha256). Read by the builder, by
  `harness.predict.Predictor.from_bundle` and so by the bundle's own api.py.
- `build`: stage the folder, load its model once in a fresh interpreter, swap it in; the archive.
- `source`: the harness source at the run's commit. `requirements`: requirements.txt, pinned.
- `card`: MODEL_CARD.md. `templates`: Dockerfile, entrypoint.sh, train.sh, train.py as text.
- `api.py`: copied as it is into each bundle (its test API).

This `__init__` imports nothing, so that reading a bundle (`format`) stays light.
"""
