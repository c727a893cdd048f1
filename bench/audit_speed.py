"""How long `harness audit` takes against `harness prepare` on the same clips, each into a new cache.

The criterion (issue 12): the audit takes at most 1.5x the time of `harness prepare` on the same
clips with a new cache. Two levels, each alternating prepare and audit --rounds times (this shared
machine moves a 1-2 s figure by 10% or more, and by far more while other jobs run), printing every
round's wall-time ratio and their median, and the median ratio of CPU time (the command or this
process plus its workers: steadier when the machine is shared, since waiting for a core is not counted):

  library   in one process with one warm worker pool, as bench/prepare_speed.py measures prepare:
            `prepare_features` (default audio settings) against `audit_dataset` + `write_outputs`
            (the table, every statistic, audit.json, the CSVs and any plots; not the MLflow run);
  command   the commands as a user types them, start-up included, each into a new cache: `harness
            prepare --data D --cache NEW` against `harness audit --data D --cache NEW --out TMP` three
            ways: `--no-track`; as by default, its MLflow run recorded by a detached process (the
            command's own time, then how long until run.json names the run, waited for untimed so
            that the recorder does not slow the next command); and `--wait`, the run recorded
            before the command exits (a store made beforehand, as after a first run). The criterion
            (issue 23 item 14): the whole command with its MLflow run at most 1.5x prepare. The
            CPU ratio of the detached variant leaves out the recorder's CPU time (it runs after).

Sets: the 10 shared real clips, and the demo dataset (`--demo-clips`, 240 like `harness demo-data`).

    python bench/audit_speed.py [--rounds 5] [--workers 2] [--demo-clips 240] [--no-command] [--no-library]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from harness.audit import audit_dataset, write_outputs  # noqa: E402
from harness.config import AudioFeatures  # noqa: E402
from harness.data.cache import make_pool, prepare_features  # noqa: E402
from harness.data.labels import load_dataset  # noqa: E402


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by this process and the processes `pids` (Linux /proc)."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def timed(call, pids: list[int]) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process and the workers) of `call()`."""
    cpu, start = _cpu_seconds(pids), time.perf_counter()
    call()
    return time.perf_counter() - start, _cpu_seconds(pids) - cpu


def library_rounds(data: Path, tmp: Path, rounds: int, workers: int) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """((prepare wall, CPU), (audit wall, CPU)) seconds per round, in one warm pool, each into a new cache."""
    def prepare(cache: Path) -> None:
        report = prepare_features(load_dataset(data), AudioFeatures(), cache_root=cache, pool=pool)
        assert not report.failures, report.failures

    def audit(cache: Path, out: Path) -> None:
        write_outputs(audit_dataset(load_dataset(data), cache_root=cache, pool=pool), out)

    times = []
    with make_pool(workers) as pool:
        prepare(tmp / "warm-p")  # workers start and import what each job needs, before any timing
        audit(tmp / "warm-a", tmp / "warm-out")
        pids = list(pool._processes)  # the workers' CPU time counts too
        for r in range(rounds):
            p = timed(lambda r=r: prepare(tmp / f"lib-p{r}"), pids)
            a = timed(lambda r=r: audit(tmp / f"lib-a{r}", tmp / f"lib-out{r}"), pids)
            times.append((p, a))
    return times


def command_rounds(data: Path, tmp: Path, rounds: int, workers: int) -> dict[str, list[tuple[float, float]]]:
    """Whole commands per round, each as (wall seconds, CPU seconds of the command and its workers):
    prepare; audit --no-track; audit (its MLflow run recorded by a detached process: the command's
    time, then untimed until run.json names the run, so that the recorder does not slow the next
    command); audit --wait (the run recorded before the command exits). "recorded" is the time from
    the start of `audit` until its run was recorded (its CPU time is not measured: 0)."""
    script = Path(sys.executable).parent / "harness"
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from harness.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_HOME": str(tmp / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'home' / 'mlflow.db'}"}

    def run(*args: str) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants: the command and its workers
        start = time.perf_counter()
        done = subprocess.run([*command, *args, "--data", str(data), "--workers", str(workers)], env=env,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def recorded(out: Path, start: float) -> tuple[float, float]:
        deadline = time.monotonic() + 600
        while "run_id" not in json.loads((out / "run.json").read_text()):
            if time.monotonic() > deadline:
                raise SystemExit(f"no run recorded for {out} after 600 s; see {tmp / 'home' / 'mlruns' / 'pending-runs'}")
            time.sleep(0.05)
        return time.perf_counter() - start, 0.0

    run("audit", "--cache", str(tmp / "cmd-warm"), "--out", str(tmp / "cmd-out"), "--wait")  # makes the MLflow store
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in ("prepare", "no-track", "run", "recorded", "wait")}
    for r in range(rounds):
        times["prepare"].append(run("prepare", "--cache", str(tmp / f"cmd-p{r}")))
        times["no-track"].append(run("audit", "--cache", str(tmp / f"cmd-a{r}"), "--out", str(tmp / f"cmd-out{r}"),
                                     "--no-track"))
        start = time.perf_counter()
        times["run"].append(run("audit", "--cache", str(tmp / f"cmd-t{r}"), "--out", str(tmp / f"cmd-tout{r}")))
        times["recorded"].append(recorded(tmp / f"cmd-tout{r}", start))
        times["wait"].append(run("audit", "--cache", str(tmp / f"cmd-w{r}"), "--out", str(tmp / f"cmd-wout{r}"), "--wait"))
    return times


def line(label: str, prepare: list[tuple[float, float]], audit: list[tuple[float, float]]) -> str:
    """Medians of wall time, the per-round wall ratios and their median, and the CPU ratio's median."""
    walls = [a[0] / p[0] for p, a in zip(prepare, audit)]
    cpus = [a[1] / p[1] for p, a in zip(prepare, audit)]
    return (f"{label}: prepare {np.median([p[0] for p in prepare]):.2f} s, audit {np.median([a[0] for a in audit]):.2f} s "
            f"(medians); audit/prepare time ratio median {np.median(walls):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in walls)}); "
            f"CPU-time ratio median {np.median(cpus):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--demo-clips", type=int, default=240, help="generated demo clips (0 to skip the demo set)")
    ap.add_argument("--no-command", action="store_true", help="skip the whole-command measurements")
    ap.add_argument("--no-library", action="store_true", help="skip the in-process measurements")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sets = {"real 10": SHARED / "data" / "ffdv-phase1-sample"}
        if args.demo_clips:
            from harness.data.demo import make_demo_dataset

            sets[f"demo {args.demo_clips}"] = make_demo_dataset(tmp / "demo", clips=args.demo_clips)
        print(f"workers={args.workers}, cores={os.cpu_count()}, rounds={args.rounds}")
        for label, data in sets.items():
            work = tmp / label.replace(" ", "-")
            if not args.no_library:
                lib = library_rounds(data, work, args.rounds, args.workers)
                print(line(f"{label:>8} library", [p for p, _ in lib], [a for _, a in lib]))
            if not args.no_command:
                cmd = command_rounds(data, work, args.rounds, args.workers)
                print(line(f"{label:>8} command --no-track", cmd["prepare"], cmd["no-track"]))
                print(line(f"{label:>8} command with its MLflow run (detached recorder)", cmd["prepare"], cmd["run"]))
                recorded = [t for t, _ in cmd["recorded"]]
                print(f"{label:>8}   its run recorded {np.median(recorded):.2f} s after the command started (median; "
                      f"rounds: {', '.join(f'{x:.2f}' for x in recorded)})")
                print(line(f"{label:>8} command --wait (run recorded before exit)", cmd["prepare"], cmd["wait"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
