"""The audit's per-clip table, computed in parallel (the feature cache's pool and plan) and cached beside it.

Under `<cache root>/<dataset id>/audit-<settings key>/`: settings.json and `shards/<split>/<id>.npz` of up
to 8 clips (`meta`: JSON of each clip's id and row; `fp`: packed fingerprints); readable shards are reused.
"""
from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.audit.probe import PROBE_COLUMNS, TableSettings, probe_clip
from harness.data.cache import dataset_id, make_pool, plan_tasks
from harness.data.labels import Dataset, Sample
from harness.fileio import atomic_write, remove_stale_temporaries, write_text

SHARDS = "shards"
COLUMNS = ("split", "name", "label", *PROBE_COLUMNS, "face_found_rate")


@dataclass
class Table:
    """Every clip in split then label-file order: `rows[i]` a dict of COLUMNS (None: unknown), `fingerprints[i]`
    its packed fingerprint if `has_fingerprint[i]`."""

    rows: list[dict[str, Any]]
    fingerprints: np.ndarray
    has_fingerprint: np.ndarray
    cache: Path
    done: int = 0  # clips probed by this run
    reused: int = 0  # clips read from the cache
    seconds: float = 0.0  # wall time of the probing

    @property
    def keys(self) -> list[str]:
        """Each clip as `split/name`, the way audit reports name clips."""
        return [f"{r['split']}/{r['name']}" for r in self.rows]

    def splits(self) -> list[str]:
        return list(dict.fromkeys(r["split"] for r in self.rows))

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["error"]]


def table_dir(ds: Dataset, settings: TableSettings, cache_root: Path) -> Path:
    return Path(cache_root) / dataset_id(ds) / settings.key()


def item_id(sample: Sample) -> str:
    """A clip's cache id from its name, size and mtime: an edited clip is probed again."""
    st = sample.path.stat()
    return hashlib.sha1(f"{sample.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


def probe_chunk(settings: TableSettings, folder: str, jobs: list[tuple[str, str]]) -> tuple[list[dict], np.ndarray]:
    """Probe each (clip, id) of one split, write them as one shard, return its meta and fingerprints."""
    meta: list[dict[str, Any]] = []
    prints = np.zeros((len(jobs), -(-settings.fingerprint_bits // 8)), np.uint8)
    for i, (clip, stem) in enumerate(jobs):
        row, bits = probe_clip(clip, settings)
        meta.append({"id": stem, "row": row, "fp": bits is not None})
        if bits is not None:
            prints[i] = bits
    _write_shard(Path(folder) / f"{jobs[0][1]}.npz", meta, prints)
    return meta, prints


def _write_shard(path: Path, meta: list[dict[str, Any]], prints: np.ndarray) -> None:
    """Renamed into place whole. Not fsynced: a shard a power cut damaged fails to load and is probed again,
    and an fsync every 8 clips measurably slowed the table on a busy machine."""
    with atomic_write(path, "wb", sync=False) as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), fp=prints)


def _read_shards(folder: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """id -> (meta entry, packed fingerprint) for every clip in a split's shards."""
    entries: dict[str, tuple[dict, np.ndarray]] = {}
    for shard in sorted(folder.glob("*.npz")):
        try:
            with np.load(shard) as z:
                meta, prints = json.loads(z["meta"].tobytes()), z["fp"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # damaged or not ours: its clips are probed again
            continue
        entries.update((m["id"], (m, prints[i])) for i, m in enumerate(meta))
    return entries


def build_table(ds: Dataset, settings: TableSettings, *, cache_root: Path, workers: int = 2,
                on_progress: Callable[[int, int], None] | None = None, pool: Executor | None = None) -> Table:
    """Probe every clip not cached yet (`workers` processes or a warm `pool`) and return the whole table; a
    broken clip gets a row whose `error` says why."""
    out = table_dir(ds, settings, cache_root)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    text = json.dumps(asdict(settings), indent=2)
    if not (out / "settings.json").is_file() or (out / "settings.json").read_text() != text:
        write_text(out / "settings.json", text)

    todo: list[tuple[str, tuple[str, str]]] = []
    stems: dict[str, list[str]] = {}
    entries: dict[str, dict[str, tuple[dict, np.ndarray]]] = {}  # shard folder -> id -> entry
    for split, samples in ds.samples.items():
        folder = out / SHARDS / split
        folder.mkdir(parents=True, exist_ok=True)
        found = entries[str(folder)] = _read_shards(folder)
        stems[split] = [item_id(s) for s in samples]
        todo += [(str(folder), (str(s.path), stem)) for s, stem in zip(samples, stems[split]) if stem not in found]

    start = time.perf_counter()
    if on_progress:
        on_progress(0, len(todo))
    if todo:
        with make_pool(workers) if pool is None else nullcontext(pool) as running:
            _run(running, settings, plan_tasks(todo, workers), entries, on_progress)
    table = _assemble(ds, settings, stems, {split: entries[str(out / SHARDS / split)] for split in ds.samples}, out)
    table.seconds, table.done = time.perf_counter() - start, len(todo)
    table.reused = sum(len(v) for v in stems.values()) - len(todo)
    return table


def _run(pool: Executor, settings: TableSettings, jobs: list[tuple[str, list[tuple[str, str]]]],
         entries: dict[str, dict[str, tuple[dict, np.ndarray]]], on_progress: Callable[[int, int], None] | None) -> None:
    finished, total = 0, sum(len(chunk) for _, chunk in jobs)
    pending = {pool.submit(probe_chunk, settings, folder, chunk): (folder, chunk) for folder, chunk in jobs}
    try:
        for fut in as_completed(pending):
            meta, prints = fut.result()  # a worker crash (not a clip failure) is a real error: let it raise
            folder, chunk = pending[fut]
            entries[folder].update((m["id"], (m, prints[i])) for i, m in enumerate(meta))
            finished += len(chunk)
            if on_progress:
                on_progress(finished, total)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _assemble(ds: Dataset, settings: TableSettings, stems: dict[str, list[str]],
              entries: dict[str, dict[str, tuple[dict, np.ndarray]]], cache: Path) -> Table:
    width = -(-settings.fingerprint_bits // 8)
    rows, prints, has = [], [], []
    for split, samples in ds.samples.items():
        for sample, stem in zip(samples, stems[split]):
            meta, bits = entries[split][stem]
            rows.append({**dict.fromkeys(COLUMNS), **meta["row"], "split": split, "name": sample.name, "label": sample.label})
            prints.append(bits if meta["fp"] else np.zeros(width, np.uint8))
            has.append(bool(meta["fp"]))
    return Table(rows, np.array(prints, np.uint8).reshape(len(prints), width), np.array(has, bool), cache)
