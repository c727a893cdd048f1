"""The data a run trained on, in MLflow's dataset tracking (the runs table's "Dataset" column).

Each labelled split the run reads is logged as an input of the run (`client.log_inputs`): name the
dataset folder's, digest of that split's label file and clip list, source the dataset folder,
context `training` or `validation`, and a profile with the split's size (number of clips). The
clip list itself (`video_name`, `target`) is the dataset's content, so its schema shows in the UI;
nothing is copied. Two runs with the same name and digest read the same clips with the same
labels; a different digest says the data differ before any score is compared.
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


def log_datasets(
    client: MlflowClient,
    run_id: str,
    *,
    name: str,
    source: Path,
    splits: Mapping[str, Sequence[tuple[str, int | None]]],
    label_files: Mapping[str, Path] | None = None,
) -> dict[str, str]:
    """Log each split in `splits` as an input of run `run_id`; returns split -> digest.

    Args:
        client: the store's client.
        run_id: the run.
        name: the dataset's name (its folder's name).
        source: the dataset folder (the dataset's source).
        splits: split ("train", "val", ...) -> its clips as (name, label or None).
        label_files: split -> its label file, hashed into the digest.
    """
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    inputs, digests = [], {}
    for split, clips in splits.items():
        digest = split_digest((label_files or {}).get(split), clips)
        frame = pd.DataFrame({"video_name": [c[0] for c in clips],
                              "target": pd.array([c[1] for c in clips], dtype="Int64")})
        with warnings.catch_warnings():
            # "can be interpreted in multiple ways" (a local path) and "integer columns cannot
            # represent missing values" (labels are never missing in a labelled split).
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=str(Path(source).resolve()), targets="target", name=name, digest=digest)
            entity = dataset._to_mlflow_entity()  # infers the schema (the second warning)
        context = CONTEXTS.get(split, split)
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
        digests[split] = digest
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return digests
