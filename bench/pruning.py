"""Does pruning pay? The demo study with and without its pruner: same sampler seed, same trial count.

Each arm runs `harness.tuning.run_study` to N finished trials in its own throwaway Optuna and MLflow
stores (a temporary folder), on the same data and feature cache. Prints, per arm, the epochs trained
(summed over all trials), the wall time and the best val AUC, then the ratios.

Goal: pruned/unpruned compute <= 0.5 (epochs, and wall time) with the best val AUC within 0.01.
A third line replays the unpruned arm's own learning curves through the pruner: it separates the
pruner's decisions from the sampler's path (in the live arm, pruned trials change what TPE proposes).
Wall time includes each run's fixed cost (~2 s on this machine: run set-up, evaluation plots,
artifacts), which weighs more on short pruned trials than on full ones.

CPU (this machine):  python bench/pruning.py                       (demo study, 12 trials each, ~6 min)
Other study/data:    python bench/pruning.py --study ffdv-audio --data /path/to/ffdv --trials 24
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="demo", help="study name or TOML file (default: demo)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo dataset)")
    parser.add_argument("--trials", type=int, default=12, help="finished trials per arm")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes per arm (default 1: the same trial sequence on every run)")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway stores and print where")
    args = parser.parse_args()

    # One torch thread per worker unless told otherwise: on a busy machine idle OpenMP threads spin.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-pruning-"))
    # Throwaway MLflow store; set before harness.tracking reads it (workers inherit it).
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"

    from harness import paths, tuning
    from harness.data.demo import make_demo_dataset

    spec = tuning.load_spec(args.study)
    data = args.data or make_demo_dataset(paths.demo_data_dir())
    arms = {
        "unpruned": dataclasses.replace(spec, name=f"{spec.name}-unpruned", experiment=f"bench-{spec.name}-unpruned",
                                        pruner=tuning.NoPruning()),
        "pruned": dataclasses.replace(spec, name=f"{spec.name}-pruned", experiment=f"bench-{spec.name}-pruned"),
    }
    print(f"study {spec.name}: {args.trials} trials per arm, {args.workers} worker(s), sampler {spec.sampler}, "
          f"pruner {spec.pruner}; data {data}", flush=True)
    results = {}
    for arm, arm_spec in arms.items():
        start = time.perf_counter()
        result = tuning.run_study(arm_spec, data_dir=data, storage=f"sqlite:///{tmp / (arm + '.db')}",
                                  trials=args.trials, workers=args.workers)
        wall = time.perf_counter() - start
        best = result.best
        results[arm] = (result, wall)
        pruned = sum(r.state == "PRUNED" for r in result.rows)
        failed = sum(r.state == "FAIL" for r in result.rows)
        print(f"{arm:>9}: {result.finished} finished ({pruned} pruned, {failed} failed), "
              f"{result.epochs_trained} epochs, {wall:.0f} s, best val AUC "
              f"{best.value if best else float('nan'):.4f} (trial {best.number if best else '-'}: "
              f"{best.params if best else ''})", flush=True)

    (full, full_wall), (cut, cut_wall) = results["unpruned"], results["pruned"]
    epoch_ratio = cut.epochs_trained / max(1, full.epochs_trained)
    wall_ratio = cut_wall / full_wall
    best_full = full.best.value if full.best else float("nan")
    best_cut = cut.best.value if cut.best else float("nan")
    gap = best_full - best_cut
    print(f"compute pruned/unpruned: epochs {epoch_ratio:.2f}x, wall time {wall_ratio:.2f}x (goal <= 0.5x)")
    print(f"best val AUC: unpruned {best_full:.4f}, pruned {best_cut:.4f}, "
          f"unpruned - pruned = {gap:+.4f} (goal <= 0.01)")

    # The live arms differ in two ways: the pruner stops trials, and the sampler, seeing pruned
    # trials, proposes different ones. Replaying the unpruned arm's own learning curves through the
    # pruner measures the first alone: what it would have cut, and whether the best trial survives.
    curves = unpruned_curves(full, spec.objectives[0])
    replay_epochs, replay_best = tuning.replay_pruning(spec, curves)
    print(f"replay of the unpruned arm's {len(curves)} curves through the pruner: epochs "
          f"{replay_epochs / max(1, full.epochs_trained):.2f}x, best kept {replay_best:.4f} "
          f"(gap {best_full - replay_best:+.4f})")
    misses = [name for name, ok in (("epochs", epoch_ratio <= 0.5), ("wall time", wall_ratio <= 0.5),
                                    ("best val AUC", gap <= 0.01)) if not ok]
    verdict = not misses
    print("PASS" if verdict else f"MISS ({', '.join(misses)})")
    if args.keep:
        print(f"stores kept in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if verdict else 1


def unpruned_curves(result, metric: str) -> list[list[float]]:  # noqa: ANN001 - tuning.StudyResult
    """Per-epoch `metric` of each trial run of a study, in trial order, from its MLflow runs."""
    from harness import tracking

    client = tracking.setup()
    curves = []
    for row in sorted(result.rows, key=lambda r: r.number):
        if row.run_id and row.state in ("COMPLETE", "PRUNED"):
            history = sorted(client.get_metric_history(row.run_id, metric), key=lambda m: m.step)
            curves.append([m.value for m in history])
    return curves


if __name__ == "__main__":
    sys.exit(main())
