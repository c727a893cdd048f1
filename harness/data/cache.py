"""The feature cache: each clip decoded once, in parallel, written atomically, verified, packed for training.

Layout under `<cache root>/<dataset id>/<feature key>/` (the key, `audio-…` or `video-…`, names the settings):
settings.json (for face crops with the detector's model digest); `shards/<split>/<id>.npz`, up to 8 clips a
file (`harness.data.shards`; an id hashes a clip's name, size and mtime, so an edited clip is recomputed);
`<split>.npy` / `.csv` / `.faces.npz`, the packed split (`harness.data.packs`; a failed clip keeps a zero
row so a test clip still gets a score); failures.csv; manifest.json (`harness.data.integrity`); `.lock`.

Safe to share: a flock on the folder makes a second caller wait, then find the work done. Every file is written
atomically; one unlike its record is recomputed and named in `PrepareReport.repairs`. Interrupted, the
workers are terminated, temporaries removed; killed, they exit too.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.config import AudioFeatures, VideoFeatures
from harness.data.integrity import Manifest, write_file
from harness.data.labels import Dataset, Sample
from harness.data.packs import INDEX_FIELDS, Failure, load_split, pack_split
from harness.data.shards import (DamagedShard, Entry, ShardResult, extract, extract_chunk, init_worker, item_array,
                                 read_shards, shard_key)
from harness.data.workers import spawn_pool, stop_pool, worker_pool
from harness.fileio import FileLock, dict_csv_text, remove_stale_temporaries

__all__ = ["CHUNK", "INDEX_FIELDS", "Failure", "PrepareReport", "dataset_id", "extract", "feature_dir", "init_worker",
           "load_split", "make_pool", "plan_tasks", "prepare_features", "stop_pool"]

Features = AudioFeatures | VideoFeatures
CHUNK = 8  # clips per task: amortises inter-process overhead, keeps the progress bar lively
IN_FLIGHT = 64  # tasks submitted ahead (4 a worker up to 16 workers): none waits, the parent's queue stays short
SHARDS = "shards"
LOCK = ".lock"
# Log-mels kept in memory for packing, in bytes (1024 log-mels at 128x256); later ones are read back from
# their shards in the page cache, 0.05 ms of CPU a clip (of about 3 ms).
FRESH_BYTES = 32 << 20
Task = tuple[str, list[tuple[str, str]]]  # (shard folder, [(clip, id)]): one shard's worth of clips


@dataclass
class PrepareReport:
    cache: Path
    total: int = 0
    done: int = 0
    reused: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    frames: int = 0  # face features: frames cropped, over every usable clip of the prepared splits
    fallback_frames: int = 0  # ... of which no face was found (centre square used)
    repairs: list[str] = field(default_factory=list)  # one line per damaged file found and remade

    @property
    def clips_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else float("nan")


def dataset_id(ds: Dataset) -> str:
    """The dataset's folder name and a digest of its path: one cache folder per dataset."""
    return f"{ds.root.name}-{hashlib.sha1(str(ds.root).encode()).hexdigest()[:8]}"


def feature_dir(ds: Dataset, cfg: Features, cache_root: Path) -> Path:
    if isinstance(cfg, VideoFeatures):
        # The sampler's and detector's code make the crops too: a new revision of either is a new entry.
        from harness.data.faces import crops_revision

        return cache_root / dataset_id(ds) / f"{cfg.key()}-r{crops_revision(cfg)}"
    return cache_root / dataset_id(ds) / cfg.key()


def _settings(cfg: Features) -> dict:
    """settings.json: the settings the key names, and for face crops the detector's model digest."""
    if isinstance(cfg, VideoFeatures):
        from harness.data.faces import cache_settings

        return cache_settings(cfg)
    return cfg.cache_settings()


def _write_changed(path: Path, data: bytes) -> None:
    """Write `data` unless the file holds it already: a run that changed nothing writes nothing."""
    if not path.exists() or path.read_bytes() != data:
        write_file(path, data)


def _item_stem(sample: Sample) -> str:
    st = sample.path.stat()
    return hashlib.sha1(f"{sample.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


def prepare_features(ds: Dataset, cfg: Features, *, cache_root: Path, workers: int = 2,
                     splits: tuple[str, ...] = ("train", "val", "test"),
                     on_progress: Callable[[int, int], None] | None = None, pool: Executor | None = None,
                     verify: bool = False) -> PrepareReport:
    """Give every clip of `splits` an intact cache entry, pack each split, report (clip failures are never raised;
    OSError names a path). `pool`: a warm executor (`make_pool`); `verify`: read every CRC-32, not a stat."""
    out = feature_dir(ds, cfg, cache_root)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / LOCK):  # a second holder waits; released on exit or process death
        remove_stale_temporaries(out)
        _write_changed(out / "settings.json", json.dumps(_settings(cfg), indent=2).encode())
        manifest = Manifest.load(out)
        report = PrepareReport(cache=out)

        todo: list[tuple[str, tuple[str, str]]] = []  # (shard folder, (clip, id)) of every clip to compute
        stems_of: dict[str, list[str]] = {}  # split -> each sample's id, in label-file order
        entries_of: dict[str, dict[str, Entry]] = {}  # shard folder -> id -> its entry
        damaged: list[DamagedShard] = []
        reused: set[tuple[str, str]] = set()  # (split, name) of the clips found in the cache
        for split in splits:
            folder = out / SHARDS / split
            folder.mkdir(parents=True, exist_ok=True)
            entries, broken = read_shards(folder, split, manifest, full=verify)
            entries_of[str(folder)] = entries
            damaged += broken
            stems = stems_of[split] = [_item_stem(s) for s in ds.split(split)]
            report.total += len(stems)
            for s, stem in zip(ds.split(split), stems):
                if stem in entries:
                    report.reused += 1
                    reused.add((split, s.name))
                else:
                    todo.append((str(folder), (str(s.path), stem)))
        todo_ids = {stem for _, (_, stem) in todo}
        for shard in damaged:  # "recomputed 8 clips: shard shards/train/ab12.npz damaged (...)"
            n = None if shard.ids is None else len(set(shard.ids) & todo_ids)
            clips = "its clips" if n is None else f"{n} clip{'s' * (n != 1)}"
            report.repairs.append(f"recomputed {clips}: shard {SHARDS}/{shard.key} damaged ({shard.problem})")
        jobs, computing = plan_tasks(todo, workers), len(todo)
        del todo, damaged  # a few hundred bytes a clip, not needed while packing

        start = time.perf_counter()
        fresh: dict[str, np.ndarray] = {}  # id -> the log-mel just computed
        if on_progress:
            on_progress(0, computing)
        if jobs and pool is None:
            try:
                with worker_pool(workers, init_worker) as own:
                    report.done = _run_pool(own, cfg, jobs, on_progress, fresh, entries_of, manifest,
                                            in_flight=max(IN_FLIGHT, 4 * workers))
            except BaseException:
                remove_stale_temporaries(out)  # the terminated workers' half-written shards
                raise
        elif jobs:
            report.done = _run_pool(pool, cfg, jobs, on_progress, fresh, entries_of, manifest, drain=True)
        report.seconds = time.perf_counter() - start
        del jobs
        for split in splits:
            packed = pack_split(ds, cfg, out, split, entries=entries_of[str(out / SHARDS / split)], stems=stems_of[split],
                                manifest=manifest, fresh=fresh, full=verify)
            report.failures += packed.failures
            if packed.repaired:
                report.repairs.append(packed.repaired)
        # A clip that failed counts as failed, not as done or reused: done + reused + failed = total.
        failed_before = sum((f.split, f.name) in reused for f in report.failures)
        report.done, report.reused = report.done - (len(report.failures) - failed_before), report.reused - failed_before
        # Once, after packing (a save is an fsync or two); a run killed before it is parsed or repacked next time.
        manifest.save(out)
        _write_changed(out / "failures.csv", dict_csv_text([asdict(f) for f in report.failures],
                                                           ("split", "name", "reason", "detail")).encode())
        for split in splits:
            if isinstance(cfg, VideoFeatures) and (out / f"{split}.csv").exists():
                _, index = load_split(out, split)
                used = [r for r in index if r["ok"] == "1"]
                report.frames += cfg.frames * len(used)
                report.fallback_frames += sum(int(r["fallback"] or 0) for r in used)
        return report


def plan_tasks(todo: list[tuple[str, tuple[str, str]]], workers: int) -> list[Task]:
    """Tasks of up to CHUNK clips of one split, shrinking at the end so the workers finish together (2% of a
    200-clip run on 2 cores)."""
    jobs: list[Task] = []
    i = 0
    while i < len(todo):
        folder = todo[i][0]
        size = max(1, min(CHUNK, (len(todo) - i) // (2 * max(1, workers))))
        chunk = [job for f, job in todo[i : i + size] if f == folder]
        i += len(chunk)  # a chunk ends early where the next split starts: its shard folder differs
        jobs.append((folder, chunk))
    return jobs


def make_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for feature extraction, one BLAS thread each, that exit when this process dies."""
    return spawn_pool(workers, init_worker)


def _run_pool(pool: Executor, cfg: Features, jobs: list[Task], on_progress: Callable[[int, int], None] | None,
              fresh: dict[str, np.ndarray], entries: dict[str, dict[str, Entry]], manifest: Manifest, *,
              drain: bool = False, in_flight: int = IN_FLIGHT) -> int:
    """Run the tasks, recording each new shard and the log-mels sent back. On an error the queued tasks are
    cancelled; `drain` (a lent pool) awaits the running ones, so none writes once the lock is released."""
    finished, total = 0, sum(len(chunk) for _, chunk in jobs)
    # A bounded window of tasks in flight: `wait` looks at every pending future, so all 12,500 tasks of
    # 100k clips at once made the parent's bookkeeping quadratic (minutes of CPU).
    queued = iter(jobs)
    pending: dict[Future, Task] = {}
    kept = sum(a.nbytes for a in fresh.values())  # bytes of log-mels in `fresh`

    def top_up() -> None:
        for folder, chunk in itertools.islice(queued, max(0, in_flight - len(pending))):
            send = kept < FRESH_BYTES  # past the budget, log-mels sent back would be a pipe write and a copy thrown away
            pending[pool.submit(extract_chunk, _for_split(cfg, folder), folder, chunk, send_data=send)] = (folder, chunk)

    try:
        top_up()
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                result: ShardResult = fut.result()  # a worker crash or I/O error (not a clip failure) raises
                folder, chunk = pending.pop(fut)
                shard = Path(result.path)
                own = {stem: stem for _, stem in chunk}  # the ids this process holds already: kept once
                ids = [own.get(m["id"], m["id"]) for m in result.meta]
                found = [Entry.of(shard, m) for m in result.meta]
                entries[folder].update(zip(ids, found))
                manifest.add_shard(shard_key(shard.parent.name, shard), result.record, ids)
                if result.data is not None and kept < FRESH_BYTES:
                    fresh.update((i, item_array(result.data, e)) for i, e in zip(ids, found) if e.ok)
                    kept += result.data.nbytes
                finished += len(chunk)
                if on_progress:
                    on_progress(finished, total)
            top_up()
    except BaseException:
        for fut in pending:
            fut.cancel()
        if drain:
            wait(pending)
        raise
    return finished


def _for_split(cfg: Features, folder: str) -> Features:
    """Codec variants for training clips only."""
    drop = isinstance(cfg, AudioFeatures) and cfg.codec_variants and Path(folder).name != "train"
    return replace(cfg, codec_variants=0) if drop else cfg
