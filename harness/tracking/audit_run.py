"""The MLflow run of one `harness audit` (`harness.kind=audit`): numbers as metrics, settings as params,
findings as its description, the audit folder as artifacts.

Recorded by a process of its own, so the command does not wait for MLflow (about 3 s; measured with
`bench/audit_speed.py`: the command 1.09-1.21x `harness prepare`, with `--wait` 2.3-2.8x). `queue_audit` (no
mlflow) writes a record under `mlruns/pending-runs/<id>/` and `run.json` in the audit folder, `start_recorder`
records it detached (log: `pending-runs/recorder.log`), `record_queued` here; `run.json` then names the run.
A record whose recorder died is recorded by the next command that opens a run on its store, once (an flock;
`audit.record=<id>` on the run, so one begun is completed), done once its run is FINISHED or FAILED (not KILLED).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import paths
from harness.fileio import FileLock, atomic_dir, remove_stale_temporaries, write_text
from harness.provenance import checkout
from harness.tracking import links
from harness.tracking import tags as T

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RECORD = "record.json"  # the run's plain values, in the record's folder
ARTIFACTS = "artifacts"  # the copy of the audit folder, in the record's folder
RECEIPT = "run.json"  # in the audit folder: {"status": "recording", ...}, then the run's id
LOG = "recorder.log"  # the recorders' output, in `pending_dir()`


def pending_dir() -> Path:
    """Where queued runs wait for their recorder: one folder each, and the recorders' log."""
    return paths.mlruns_dir() / "pending-runs"


def queue_audit(out_dir: Path, *, experiment: str, dataset_path: str, dataset_fingerprint: str, dataset_id: str,
                metrics: dict[str, float], params: dict[str, Any], findings: list[str], run_name: str | None = None) -> Path:
    """The audit's run queued as a record (`out_dir` copied as its artifacts, `run.json` written in it); its folder."""
    record_id = uuid.uuid4().hex[:16]
    note = "\n".join(f"- {line}" for line in findings) if findings else "No findings."
    tags = {T.DATA_PATH: dataset_path, T.DATA_FINGERPRINT: dataset_fingerprint, T.AUDIT_DATASET_ID: dataset_id,
            T.AUDIT_FINDINGS: str(len(findings)), T.AUDIT_DIR: str(out_dir), T.MLFLOW_NOTE: note, T.AUDIT_RECORD: record_id}
    values = {"tracking_uri": paths.tracking_uri(), "experiment": experiment, "run_name": run_name, "tags": tags,
              "params": {k: str(v) for k, v in params.items()}, "receipt": str(Path(out_dir, RECEIPT).resolve()),
              "metrics": {k: float(v) for k, v in metrics.items() if math.isfinite(v)}}
    with atomic_dir(pending_dir() / record_id) as stage:
        shutil.copytree(out_dir, stage / ARTIFACTS)  # a later audit may replace the folder before it is logged
        (stage / RECORD).write_text(json.dumps(values, indent=2), encoding="utf-8")
    write_text(values["receipt"], json.dumps({"status": "recording", "record": record_id,
                                              "log": str(pending_dir() / LOG)}, indent=2) + "\n")
    return pending_dir() / record_id


def start_recorder(record: Path) -> int:
    """Start `main` on `record` detached (its own session, output in the recorders' log); its pid."""
    log = os.open(pending_dir() / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    # The harness this process runs, whatever the recorder's working folder or installed copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(checkout()), os.environ.get("PYTHONPATH"))))}
    try:
        # posix_spawn, not Popen: nobody waits for it, and a Popen left running warns when collected.
        return os.posix_spawn(sys.executable, [sys.executable, "-m", "harness.tracking.audit_run", str(record)], env,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)], setsid=True)
    finally:
        os.close(log)


def record_queued(record: Path) -> str | None:
    """Record the queued run `record` here, or wait for whoever records it now; its run id (None: unknown any more)."""
    from harness.tracking.store import setup

    try:
        values = _values(record)
    except FileNotFoundError:
        return None  # recorded already: its run.json may have been replaced since
    with _claim(record, wait=True) as mine:
        if mine:
            return _record(setup(tracking_uri=values["tracking_uri"]), record, values)
    with contextlib.suppress(OSError, ValueError):
        receipt = json.loads(Path(values["receipt"]).read_text(encoding="utf-8"))
        if receipt.get("record") == record.name:
            return receipt.get("run_id")
    return None


def record_pending(client: MlflowClient) -> list[str]:
    """Record every queued run of `client`'s store whose recorder died; their run ids (a failure is only logged)."""
    folder = pending_dir()
    if not folder.is_dir():
        return []
    remove_stale_temporaries(folder, recursive=False)  # records whose writer died half-way
    recorded = []
    for record in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        with _claim(record, wait=False) as mine:
            try:
                values = _values(record) if mine else None
                if values is not None and values["tracking_uri"] == client.tracking_uri:
                    recorded.append(_record(client, record, values))
            except Exception as e:  # noqa: BLE001 - one bad record must not stop the command healing
                logging.getLogger(__name__).warning("queued run %s not recorded: %s: %s", record, type(e).__name__, e)
    return recorded


def _values(record: Path) -> dict[str, Any]:
    return json.loads((record / RECORD).read_text(encoding="utf-8"))


@contextlib.contextmanager
def _claim(record: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the flock on `record`'s folder: True while this process may record it; False: gone, or held (unless `wait`)."""
    try:
        fd = os.open(record, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
        else:
            yield (record / RECORD).is_file()  # the one before us may have recorded it while we waited
    finally:
        os.close(fd)


def _record(client: MlflowClient, record: Path, values: dict[str, Any]) -> str:
    """Record `values` as a run (or complete the run a dead recorder began), then mark the record done."""
    from mlflow.entities import Param

    from harness.tracking.lifecycle import open_run, reopen_run
    from harness.tracking.store import get_or_create_experiment

    experiment_id = get_or_create_experiment(client, values["experiment"])
    begun = client.search_runs([experiment_id], f"tags.`{T.AUDIT_RECORD}` = '{record.name}'", max_results=1)
    if begun and begun[0].info.status in (T.FINISHED, T.FAILED):  # it ended before its recorder said so
        return _done(record, values, experiment_id, begun[0].info.run_id, begun[0].info.status)
    if begun:
        run = reopen_run(client, begun[0].info.run_id, T.AUDIT_KIND)
        with run.ended_on_error():
            run.set_tags(values["tags"])
            if not begun[0].data.params:  # it died between creating the run and logging them
                run.call(client.log_batch, run.run_id, params=[Param(k, v) for k, v in values["params"].items()])
    else:
        run = open_run(client, T.AUDIT_KIND, experiment_id=experiment_id, run_name=values["run_name"],
                       tags=values["tags"], params=values["params"])
    try:
        with run:
            run.log_metrics(values["metrics"])
            run.call(client.log_artifacts, run.run_id, str(record / ARTIFACTS))
    except Exception:
        _done(record, values, experiment_id, run.run_id, T.FAILED)
        raise
    return _done(record, values, experiment_id, run.run_id, T.FINISHED)


def _done(record: Path, values: dict[str, Any], experiment_id: str, run_id: str, status: str) -> str:
    """Name the run in `run.json` (unless a later audit replaced the folder), delete the record; `run_id`."""
    receipt = Path(values["receipt"])
    # Locked while an audit swaps a new folder in (`atomic_dir`): the receipt read is the one written.
    with contextlib.suppress(OSError, ValueError), FileLock(receipt.parent.parent):
        if json.loads(receipt.read_text(encoding="utf-8")).get("record") == record.name:
            url = links.run_page(experiment_id, run_id, base=links.UI_BASE)
            write_text(receipt, json.dumps({"status": status, "run_id": run_id, "experiment_id": experiment_id,
                                            "url": url, "record": record.name}, indent=2) + "\n")
    shutil.rmtree(record)
    return run_id


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.tracking.audit_run RECORD`: the detached recorder of one queued run."""
    os.nice(10)  # background work: the command that started it, and the user's next one, go first
    record = Path((sys.argv[1:] if argv is None else argv)[0])
    start = time.perf_counter()
    run_id = record_queued(record)
    what = f"run {run_id} recorded" if run_id else "recorded by another command"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.name}: {what} in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
