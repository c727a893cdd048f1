"""A promoted bundle: the folder `harness submit` writes so that a run's model stands alone.

`build` (the folder, checked by loading it; the archive), `source` (the code at the run's commit),
`requirements`, `card` (MODEL_CARD.md), `templates` (README.md, Dockerfile, scripts), `api.py` (copied
into each bundle), `pyfunc_model.py` (run by MLflow only). File names, config.json and its checks:
`harness.bundle_format`. This `__init__` imports nothing.
"""
