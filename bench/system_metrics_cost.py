"""What one sample of MLflow's system-metrics monitor costs a training run: psutil's reads, the
run-status check and one log_batch, timed `--samples` times on a throwaway SQLite store; printed as
milliseconds a sample and as a share of the default 10 s interval (goal: under 1% of a core).

  python bench/system_metrics_cost.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from harness import tracking
    from harness.tracking.system_metrics import DEFAULT_INTERVAL_S

    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        client = tracking.setup(tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment_id = tracking.get_or_create_experiment(client, "bench", artifact_location=Path(tmp).as_uri())
        run_id = client.create_run(experiment_id, run_name="cost").info.run_id
        monitor = SystemMetricsMonitor(run_id, tracking_uri=client.tracking_uri)
        seconds = []
        for _ in range(args.samples):
            start = time.perf_counter()
            monitor.collect_metrics()
            client.get_run(run_id)
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
            seconds.append(time.perf_counter() - start)
        client.set_terminated(run_id)
    median = statistics.median(seconds)
    print(f"system metrics: {median * 1000:.1f} ms a sample (median of {args.samples}), "
          f"{median / DEFAULT_INTERVAL_S:.3%} of the {DEFAULT_INTERVAL_S:.0f} s interval")


if __name__ == "__main__":
    main()
