"""System metrics (CPU, memory, disk, network; GPU utilisation and memory where NVML finds a GPU) of
a training run, by MLflow's own `SystemMetricsMonitor`, as `system/...` metrics that fill the run
page's "System metrics" tab.

The monitor is given the run id and tracking URI explicitly, so it works with the harness's
client-based runs (mlflow's active-run stack is never touched). It samples on a thread of its own
every `interval_s()` seconds (default 10; `HARNESS_SYSTEM_METRICS_S` overrides, 0 turns it off), and
stops by itself once the run is no longer RUNNING. `stop` joins it, then logs one last sample, so a
run shorter than the interval still shows where it ended.

Cost (measured on the 2-core CI machine, SQLite store): one sample, i.e. psutil's reads, one
`get_run` and one `log_batch`, takes about 10-25 ms of a thread that mostly waits; at 10 s that is
0.1-0.25% of one core, well under 1% of any epoch time (see the report of issue #15 and
`tests/test_tracking_system_metrics.py`, which measures it).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

_ENV = "HARNESS_SYSTEM_METRICS_S"
DEFAULT_INTERVAL_S = 10.0


def interval_s() -> float:
    """Seconds between samples: `HARNESS_SYSTEM_METRICS_S` when set (0 turns monitoring off), else 10."""
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        from harness.errors import ConfigError

        raise ConfigError(f"{_ENV}={raw!r}: expected a number of seconds (0 turns system metrics off)") from None
    return max(value, 0.0)


class SystemMetrics:
    """MLflow's system-metrics monitor on one run; `start` and `stop` never raise (a monitor that
    cannot start, e.g. without psutil, leaves the run without system metrics, nothing more)."""

    def __init__(self, run_id: str, tracking_uri: str, *, interval: float | None = None) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.interval = interval_s() if interval is None else interval
        self._monitor: Any = None
        self.sample_seconds: list[float] = []  # wall time of each sample taken here (collect + log)

    def start(self) -> SystemMetrics:
        """Start sampling (nothing when the interval is 0 or psutil is missing)."""
        if self.interval <= 0:
            return self
        # The monitor logs "Started monitoring ..." and "Skip logging GPU metrics" at INFO per run.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval,
                                                 samples_before_logging=1, tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 - monitoring must never stop a training run
            logging.getLogger(__name__).warning("system metrics off for run %s: %s", self.run_id, e)
            self._monitor = None
        return self

    def stop(self) -> None:
        """Stop sampling, and log one last sample (before the run is ended, so it lands in it)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            start = time.perf_counter()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
            self.sample_seconds.append(time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001
            logging.getLogger(__name__).warning("system metrics of run %s: last sample lost: %s", self.run_id, e)
