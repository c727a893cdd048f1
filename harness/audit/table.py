"""The audit's per-clip table, computed in parallel and cached beside the features.

Layout under `<cache root>/<dataset id>/<table key>/` (the dataset id is the feature cache's; the
key, `audit-…`, names the `TableSettings` and the probe's revision):

    settings.json               the settings that the key names
    shards/<split>/<id>.npz     one file per chunk of up to 8 clips: `meta`, a JSON list with each
                                clip's <id> (a hash of its name, size and mtime, as the feature cache
                                keys its entries: an edited clip is probed again) and its row; `fp`,
                                the packed fingerprints (a zero row where a clip has none)

The design is the feature cache's: the same worker pool (`make_pool`, one BLAS thread a process), the
same task plan (`plan_tasks`, chunks shrinking at the end), shards written whole under temporary
names that carry the writer's pid (`harness.fileio.temp_name`; leftovers removed by
`remove_stale_temporaries`) and renamed into place, a second run reusing every shard it can read. The table itself is
assembled in label-file order on every run (cheap: it is read from the shards).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.audit.probe import PROBE_COLUMNS, TableSettings, probe_clip
from harness.data.cache import dataset_id, make_pool, plan_tasks
from harness.data.labels import Dataset, Sample
from harness.fileio import remove_stale_temporaries, temp_name, write_text

SHARDS = "shards"
# The table's columns, in the CSV's order.
COLUMNS = ("split", "name", "label", *PROBE_COLUMNS, "face_found_rate")


@dataclass
class Table:
    """Every clip of the dataset's splits, in split then label-file order.

    `rows[i]` is a dict of COLUMNS (None where a value is unknown); `fingerprints[i]` its packed
    fingerprint and `has_fingerprint[i]` whether it has one.
    """

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
    """A clip's cache id: its name, size and mtime, so an edited clip is probed again (the
    feature cache's rule)."""
    st = sample.path.stat()
    return hashlib.sha1(f"{sample.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


# ---- worker side -------------------------------------------------------------------------------

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
    """Write under fileio's temporary name, then rename: a reader sees the whole shard or none.

    Not fsynced, as the feature cache's shards are not: a shard can always be computed again, and
    one damaged by a power cut fails to load and is (`_read_shards`). Waiting for the disk once per
    8 clips measurably slowed the table on this shared machine, where other processes keep it busy.
    """
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), fp=prints)
    tmp = temp_name(path)
    try:
        tmp.write_bytes(buf.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


# ---- parent side -------------------------------------------------------------------------------

def build_table(
    ds: Dataset,
    settings: TableSettings,
    *,
    cache_root: Path,
    workers: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
    pool: Executor | None = None,
) -> Table:
    """Probe every clip of every split that is not cached yet, and return the whole table.

    Args:
        ds: the dataset (from `harness.data.labels.load_dataset`).
        settings: what to compute; its key names the cache entry.
        cache_root: the feature cache root (`harness.paths.cache_dir()` by default in the CLI).
        workers: worker processes when `pool` is not given.
        on_progress: called with (done, total) clips as chunks finish.
        pool: an executor made with `harness.data.cache.make_pool` (benchmarks lend a warm one).

    Returns:
        The table; broken clips have a row whose `error` says why. Never raises for a clip.
    """
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

    table = Table(rows=[], fingerprints=np.zeros((0, 0), np.uint8), has_fingerprint=np.zeros(0, bool), cache=out)
    start = time.perf_counter()
    if on_progress:
        on_progress(0, len(todo))
    if todo:
        jobs = plan_tasks(todo, workers)
        if pool is None:
            with make_pool(workers) as own:
                _run(own, settings, jobs, entries, on_progress)
        else:
            _run(pool, settings, jobs, entries, on_progress)
    table.seconds = time.perf_counter() - start
    table.done = len(todo)
    table.reused = sum(len(v) for v in stems.values()) - len(todo)
    _assemble(table, ds, settings, stems, {split: entries[str(out / SHARDS / split)] for split in ds.samples})
    return table


def _run(pool: Executor, settings: TableSettings, jobs: list[tuple[str, list[tuple[str, str]]]],
         entries: dict[str, dict[str, tuple[dict, np.ndarray]]], on_progress: Callable[[int, int], None] | None) -> None:
    finished, total = 0, sum(len(chunk) for _, chunk in jobs)
    pending = {pool.submit(probe_chunk, settings, folder, chunk): (folder, chunk) for folder, chunk in jobs}
    try:
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                meta, prints = fut.result()  # a worker crash (not a clip failure) is a real error: let it raise
                folder, chunk = pending.pop(fut)
                entries[folder].update((m["id"], (m, prints[i])) for i, m in enumerate(meta))
                finished += len(chunk)
                if on_progress:
                    on_progress(finished, total)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _assemble(table: Table, ds: Dataset, settings: TableSettings, stems: dict[str, list[str]],
              entries: dict[str, dict[str, tuple[dict, np.ndarray]]]) -> None:
    width = -(-settings.fingerprint_bits // 8)
    prints: list[np.ndarray] = []
    has: list[bool] = []
    for split, samples in ds.samples.items():
        for sample, stem in zip(samples, stems[split]):
            meta, bits = entries[split][stem]
            row = dict.fromkeys(COLUMNS)
            row.update(meta["row"], split=split, name=sample.name, label=sample.label)
            table.rows.append(row)
            prints.append(bits if meta["fp"] else np.zeros(width, np.uint8))
            has.append(bool(meta["fp"]))
    table.fingerprints = np.array(prints, np.uint8).reshape(len(prints), width)
    table.has_fingerprint = np.array(has, bool)
