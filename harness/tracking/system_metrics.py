"""System metrics of a training run (CPU, memory, disk, network; GPU where NVML finds one) by MLflow's own
`SystemMetricsMonitor`, as `system/...` metrics. Given the run id and tracking URI explicitly (never the
active-run stack), it samples on its own thread every `interval_s()` seconds until the run is no longer
RUNNING; `stop` logs one last sample. Cost: 10-25 ms a sample, 0.1-0.25% of a core (`bench/system_metrics_cost.py`).
"""
from __future__ import annotations

import logging
import os
from typing import Any

_ENV = "HARNESS_SYSTEM_METRICS_S"
DEFAULT_INTERVAL_S = 10.0


def interval_s() -> float:
    """Seconds between samples: `HARNESS_SYSTEM_METRICS_S` when set (0 turns monitoring off), else 10."""
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        return max(float(raw), 0.0)
    except ValueError:
        from harness.errors import ConfigError

        raise ConfigError(f"{_ENV}={raw!r}: expected a number of seconds (0 turns system metrics off)") from None


class SystemMetrics:
    """MLflow's system-metrics monitor on one run; `start` and `stop` never raise (no psutil: no system metrics)."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self.run_id, self.tracking_uri, self.interval = run_id, tracking_uri, interval_s()
        self._monitor: Any = None

    def start(self) -> SystemMetrics:
        """Start sampling (nothing when the interval is 0 or psutil is missing)."""
        if self.interval <= 0:
            return self
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # two INFO lines a run otherwise
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
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as e:  # noqa: BLE001
            logging.getLogger(__name__).warning("system metrics of run %s: last sample lost: %s", self.run_id, e)
