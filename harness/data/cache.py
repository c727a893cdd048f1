"""The feature cache: each clip decoded once, in parallel, written atomically, verified, packed for training.

Layout under `<cache root>/<dataset id>/<feature key>/`:

    settings.json                 the feature settings that the key names
    shards/<split>/<id>.npz       one file per chunk of up to 8 clips (`harness.data.shards`): each
                                  clip's <id> (a hash of its name, size and mtime: an edited clip is
                                  recomputed), its array or its failure (reason, detail)
    <split>.npy, <split>.csv      the packed split and its index (`harness.data.packs`); face crops
                                  stored as JPEG pack their blobs end to end (`harness.data.jpeg_crops`)
    failures.csv                  split,name,reason,detail of every clip without features
    manifest.json                 size, mtime and CRC-32 of every shard and pack (`harness.data.integrity`)
    .lock                         held by the `prepare_features` at work on this folder

The feature key (`audio-…` or `video-…`) names the settings, so audio and face features of one
dataset live side by side.

Shards are the durable record (a second run skips the clips they hold; an interrupted run leaves
only temporary files, removed next time); the packed arrays are derived from them. One file per
chunk rather than per clip: creating and renaming a file costs about 0.23 ms of kernel time here,
2% of a clip's whole cost. Failed clips keep a row (zeros, ok=0) so that a test clip without
features still gets a score at submission.

Safe to share: `prepare_features` holds an exclusive lock on the folder (flock: the kernel drops it
when the process dies) while it computes and packs, so a second caller on the same folder (another
study worker, another terminal) waits, then finds the work done. Every file is written to a
temporary, fsynced, then renamed; a shard or pack that does not match its record is recomputed and
named in `PrepareReport.repairs`. Interrupted (Ctrl-C, SIGTERM), the pool's workers are terminated
at once and their temporaries removed; killed (`kill -9`), the workers exit by themselves
(`harness.data.workers`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
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
from harness.fileio import dict_csv_text, remove_stale_temporaries

__all__ = ["CHUNK", "INDEX_FIELDS", "Failure", "PrepareReport", "dataset_id", "extract", "feature_dir", "init_worker",
           "load_split", "make_pool", "plan_tasks", "prepare_features", "stop_pool"]

Features = AudioFeatures | VideoFeatures
CHUNK = 8  # clips per task: amortises inter-process overhead, keeps the progress bar lively
IN_FLIGHT = 64  # tasks submitted ahead (4 a worker up to 16 workers): none waits, the parent's queue stays short
SHARDS = "shards"
LOCK = ".lock"
# Log-mels kept in memory for packing, in bytes (1024 log-mels at 128x256); later ones are read back
# from their shards, still in the page cache: that costs 0.05 ms of CPU a clip (of about 3 ms), and
# a budget in clips grew the command's peak memory with the clip count up to 256 MB (8192 clips;
# windowed log-mels, a length per clip, had no bound in bytes at all).
FRESH_BYTES = 32 << 20


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
    digest = hashlib.sha1(str(ds.root).encode()).hexdigest()[:8]
    return f"{ds.root.name}-{digest}"


def feature_dir(ds: Dataset, cfg: Features, cache_root: Path) -> Path:
    if isinstance(cfg, VideoFeatures):
        # The sampler's and detector's code make the crops too: a new revision of either is a new entry.
        from harness.data.faces import crops_revision

        return cache_root / dataset_id(ds) / f"{cfg.key()}-r{crops_revision(cfg)}"
    return cache_root / dataset_id(ds) / cfg.key()


def _item_stem(sample: Sample) -> str:
    st = sample.path.stat()
    return hashlib.sha1(f"{sample.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock; a second holder waits. Released on exit or process death."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def prepare_features(
    ds: Dataset,
    cfg: Features,
    *,
    cache_root: Path,
    workers: int = 2,
    splits: tuple[str, ...] = ("train", "val", "test"),
    on_progress: Callable[[int, int], None] | None = None,
    pool: Executor | None = None,
    verify: bool = False,
) -> PrepareReport:
    """Make sure every clip of `splits` has an intact entry in the cache, then pack each split.

    Returns a report of what was computed, reused, failed and repaired. Clip failures never raise;
    an I/O error (no space, read-only) raises OSError naming the path, leaving no temporary.
    `pool` lends an executor (benchmarks pass a warm one from `make_pool`); otherwise one is made
    for the run and stopped with it. Files are checked against the manifest quickly (a stat each;
    see `harness.data.integrity`); `verify` reads every CRC-32 of the cache as well.

    Example:
        >>> report = prepare_features(load_dataset("data/demo"), AudioFeatures(), cache_root=Path(".cache"))  # doctest: +SKIP
        >>> report.done + report.reused == report.total  # doctest: +SKIP
        True
    """
    out = feature_dir(ds, cfg, cache_root)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        remove_stale_temporaries(out)
        settings = json.dumps(cfg.cache_settings(), indent=2).encode()
        if not (out / "settings.json").exists() or (out / "settings.json").read_bytes() != settings:
            write_file(out / "settings.json", settings)
        manifest = Manifest.load(out)
        report = PrepareReport(cache=out)

        todo: list[tuple[str, tuple[str, str]]] = []  # (shard folder, (clip, id)) of every clip to compute
        stems_of: dict[str, list[str]] = {}  # split -> each sample's id, in label-file order
        entries_of: dict[str, dict[str, Entry]] = {}  # shard folder -> id -> its entry
        damaged: list[DamagedShard] = []
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
                else:
                    todo.append((str(folder), (str(s.path), stem)))
        report.repairs += _damage_notes(damaged, {stem for _, (_, stem) in todo})
        jobs, computing = plan_tasks(todo, workers), len(todo)
        del todo, damaged  # a few hundred bytes a clip, not needed while packing

        start = time.perf_counter()
        fresh: dict[str, np.ndarray] = {}  # id -> the log-mel just computed
        if on_progress:
            on_progress(0, computing)
        if jobs:
            if pool is None:
                report.done = _run_own_pool(out, workers, cfg, jobs, on_progress, fresh, entries_of, manifest)
            else:
                report.done = _run_pool(pool, cfg, jobs, on_progress, fresh, entries_of, manifest, drain=True)
        report.seconds = time.perf_counter() - start
        del jobs
        for split in splits:
            entries = entries_of[str(out / SHARDS / split)]
            packed = pack_split(ds, cfg, out, split, entries=entries, stems=stems_of[split], manifest=manifest, fresh=fresh,
                                full=verify)
            report.failures += packed.failures
            if packed.repaired:
                report.repairs.append(packed.repaired)
        # Once, after packing (each save is an fsync or two). A run killed before it leaves shards
        # without a record (parsed in full next time) or a pack unlike its record (repacked, and said so).
        manifest.save(out)
        _write_failures(out, report.failures)
        for split in splits:
            if isinstance(cfg, VideoFeatures) and (out / f"{split}.csv").exists():
                _, index = load_split(out, split)
                used = [r for r in index if r["ok"] == "1"]
                report.frames += cfg.frames * len(used)
                report.fallback_frames += sum(int(r["fallback"] or 0) for r in used)
        return report


def _damage_notes(damaged: list[DamagedShard], computing: set[str]) -> list[str]:
    """'recomputed 8 clips: shard train/ab12.npz damaged (...)', one line per damaged shard."""
    notes = []
    for shard in damaged:
        if shard.ids is None:
            notes.append(f"recomputed its clips: shard {SHARDS}/{shard.key} damaged ({shard.problem})")
        else:
            count = len(set(shard.ids) & computing)
            notes.append(f"recomputed {count} clip{'s' * (count != 1)}: shard {SHARDS}/{shard.key} damaged ({shard.problem})")
    return notes


def plan_tasks(todo: list[tuple[str, tuple[str, str]]], workers: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """Group clips into tasks of up to CHUNK clips of one split (a task writes one shard).

    Tasks shrink over the last few so that the workers finish together: with fixed chunks one
    worker sat idle for half a chunk on average while another ran the last one (about 2% of a
    200-clip run on 2 cores)."""
    jobs: list[tuple[str, list[tuple[str, str]]]] = []
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


def _run_own_pool(out: Path, workers: int, cfg: Features, jobs: list[tuple[str, list[tuple[str, str]]]],
                  on_progress: Callable[[int, int], None] | None, fresh: dict[str, np.ndarray],
                  entries: dict[str, dict[str, Entry]], manifest: Manifest) -> int:
    """`_run_pool` in a pool made for it; on any error or interrupt its workers are terminated at once,
    and what they were writing is removed."""
    try:
        with worker_pool(workers, init_worker) as pool:
            return _run_pool(pool, cfg, jobs, on_progress, fresh, entries, manifest, in_flight=max(IN_FLIGHT, 4 * workers))
    except BaseException:
        remove_stale_temporaries(out)  # the terminated workers' half-written shards
        raise


def _run_pool(pool: Executor, cfg: Features, jobs: list[tuple[str, list[tuple[str, str]]]],
              on_progress: Callable[[int, int], None] | None, fresh: dict[str, np.ndarray],
              entries: dict[str, dict[str, Entry]], manifest: Manifest, *, drain: bool = False,
              in_flight: int = IN_FLIGHT) -> int:
    """Run the tasks; record each new shard (per shard folder, and in the manifest) and the log-mels sent back.

    On an error or interrupt the queued tasks are cancelled; with `drain` (a lent pool, which is not
    ours to terminate) the running ones are waited for, so that no shard is being written once the
    folder's lock is released."""
    finished, total = 0, sum(len(chunk) for _, chunk in jobs)
    # A bounded window of tasks in flight, topped up as they finish: `wait` looks at every pending
    # future, so submitting all 12,500 tasks of 100k clips at once made the parent's bookkeeping
    # quadratic (minutes of CPU) and held every task in memory.
    queued = iter(jobs)
    pending: dict[Future, tuple[str, list[tuple[str, str]]]] = {}
    kept = sum(a.nbytes for a in fresh.values())  # bytes of log-mels in `fresh`

    def top_up() -> None:
        for folder, chunk in itertools.islice(queued, max(0, in_flight - len(pending))):
            # Once the budget is spent the workers stop sending their log-mels back (a pipe write and
            # an unpickled copy each, thrown away); the few tasks already in flight still send theirs.
            send = kept < FRESH_BYTES
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
    """The settings a split's clips are extracted with: codec variants for training clips only
    (validation and test never see them)."""
    if isinstance(cfg, AudioFeatures) and cfg.codec_variants and Path(folder).name != "train":
        return replace(cfg, codec_variants=0)
    return cfg


def _write_failures(out: Path, failures: list[Failure]) -> None:
    text = dict_csv_text([asdict(f) for f in failures], ("split", "name", "reason", "detail")).encode()
    path = out / "failures.csv"
    if not path.exists() or path.read_bytes() != text:  # a run that changed nothing writes nothing
        write_file(path, text)
