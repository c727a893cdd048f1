"""System metrics of a training run by MLflow's own monitor, with explicit run ids: the run page's
"System metrics" tab fills, the monitor stops with the run, and one sample costs well under 1% of
the sampling interval."""
from __future__ import annotations

import time

import pytest

from harness.config import RunConfig
from harness.errors import ConfigError
from tests.conftest import wait_until


def test_a_recorded_run_logs_cpu_and_memory_until_it_ends(store, monkeypatch):
    from harness import tracking

    client, experiment_id, _ = store
    monkeypatch.setenv("HARNESS_SYSTEM_METRICS_S", "0.2")
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="sys", config=RunConfig()) as rec:
        assert rec.run.monitor.interval == 0.2
        # at least two samples while the run is open (the monitor's thread may start late on a loaded machine)
        wait_until(lambda: len(client.get_metric_history(rec.run_id, "system/cpu_utilization_percentage")) >= 2,
                   timeout=30, what="two system-metrics samples during the run")
    run = client.get_run(rec.run_id)
    keys = set(run.data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage"} <= keys
    cpu = client.get_metric_history(rec.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 3 and [m.step for m in cpu] == list(range(len(cpu)))  # sampled all along, plus the last
    assert all(0 <= m.value <= 100 for m in cpu)
    assert 0 < run.data.metrics["system/system_memory_usage_megabytes"]
    count = len(cpu)
    time.sleep(0.6)  # the run has ended: nothing more is logged
    assert len(client.get_metric_history(rec.run_id, "system/cpu_utilization_percentage")) == count


def test_zero_turns_it_off_and_a_bad_value_is_named(store, monkeypatch):
    from harness import tracking
    from harness.tracking.system_metrics import interval_s

    client, experiment_id, _ = store
    monkeypatch.setenv("HARNESS_SYSTEM_METRICS_S", "0")
    with tracking.RunRecorder(client, experiment_id=experiment_id, run_name="off", config=RunConfig()) as rec:
        pass
    assert not [k for k in client.get_run(rec.run_id).data.metrics if k.startswith("system/")]
    monkeypatch.setenv("HARNESS_SYSTEM_METRICS_S", "often")
    with pytest.raises(ConfigError, match="HARNESS_SYSTEM_METRICS_S='often'"):
        interval_s()
    monkeypatch.delenv("HARNESS_SYSTEM_METRICS_S")
    assert interval_s() == 10.0


