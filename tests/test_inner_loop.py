"""The test commands themselves: plain `pytest` leaves the slow tests out, a test named by its node id
runs even when slow, and under CI (`CI=true`) a missing tool fails a test instead of skipping it.

Each case runs pytest in a subprocess on tests/test_ui_browser.py, whose tests are all slow and
whose module imports nothing heavy; HARNESS_CHROMIUM points at nothing, so no browser starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # starts pytest in subprocesses
BROWSER = "tests/test_ui_browser.py"
NAMED = f"{BROWSER}::test_stopping_harness_ui_stops_every_process_and_frees_the_port"


def pytest_run(*args: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env.update(PYTHONPATH=str(ROOT), HARNESS_CHROMIUM="/nonexistent/chromium", **({"CI": "true"} if ci else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plain_pytest_leaves_slow_tests_out_and_a_named_one_runs() -> None:
    plain = pytest_run("--collect-only", BROWSER)
    assert plain.returncode == 5 and "no tests collected (6 deselected)" in plain.stdout, plain.stdout
    named = pytest_run("--collect-only", NAMED)
    assert named.returncode == 0 and "1 test collected" in named.stdout, named.stdout
    chosen = pytest_run("--collect-only", "-m", "not slow", NAMED)  # a filter the user gives stands
    assert chosen.returncode == 5 and "1 deselected" in chosen.stdout, chosen.stdout


def test_a_missing_browser_skips_here_and_fails_under_ci() -> None:
    local = pytest_run(NAMED)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert "no Chromium: nothing at /nonexistent/chromium" in local.stdout
    ci = pytest_run(NAMED, ci=True)
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout
    assert "Chromium is required under CI=true: nothing at /nonexistent/chromium" in ci.stdout
