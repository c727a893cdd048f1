"""The data a run trained on, in MLflow's dataset tracking: each labelled split logged as an input named after
the dataset folder (digest over its label file and clip list, context `training` or `validation`, nothing
copied), so a different digest says the data differ before any score does.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def split_digest(label_file: Path | None, clips: Sequence[tuple[str, int | None]]) -> str:
    """Ten hex digits of SHA-256 over the split's label file (bytes) and its clip list (sorted)."""
    h = hashlib.sha256()
    if label_file is not None:
        h.update(Path(label_file).read_bytes())
    for name, label in sorted(clips, key=lambda c: c[0]):
        h.update(f"{name},{'' if label is None else label}\n".encode())
    return h.hexdigest()[:10]


def log_datasets(client: MlflowClient, run_id: str, *, name: str, source: Path,
                 splits: Mapping[str, Sequence[tuple[str, int | None]]],
                 label_files: Mapping[str, Path] | None = None) -> dict[str, str]:
    """Log each split (its clips as (name, label or None)) as an input of `run_id`; split -> digest."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    inputs, digests = [], {}
    for split, clips in splits.items():
        digests[split] = digest = split_digest((label_files or {}).get(split), clips)
        frame = pd.DataFrame({"video_name": [c[0] for c in clips],
                              "target": pd.array([c[1] for c in clips], dtype="Int64")})
        with warnings.catch_warnings():
            # "can be interpreted in multiple ways" (a local path), "integer columns cannot represent missing values".
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=str(Path(source).resolve()), targets="target", name=name, digest=digest)
            entity = dataset._to_mlflow_entity()  # infers the schema (the second warning)
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(split, split))]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return digests
