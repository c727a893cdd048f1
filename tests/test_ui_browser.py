"""The MLflow UI as a new user meets it, in a real browser (headless Chromium driven by Playwright).

A small store is built the way a user builds one: `harness tune` runs a 3-trial study (2 epochs each) of a tiny
model on a generated data set, `harness submit --run-id best` registers the champion as a pyfunc
model. Then `harness ui` starts as a subprocess and the URL it prints is opened: the study's runs
are in the "Model training" view, the trials flat and best first with the val AUC and its interval as
columns (the saved view `harness.tracking.links.BEST_FIRST`), a trial's "Model metrics" tab starts with the per-epoch curves
(`epoch/val_auc` among them), the parent run's description links to the best trial, and the
champion version in the registry shows its signature. Stopping `harness ui` leaves no process.

Skipped, with the reason, where Playwright (the dev extra) or a Chromium binary is missing, and
failed instead under CI (`CI=true`; `.ci/run` installs Chromium). Playwright's own browser download
is not needed: the system Chromium is used (`HARNESS_CHROMIUM`, default /usr/bin/chromium).
Screenshots of the four key pages are written to `HARNESS_UI_SHOTS` when set (for a person to look
at), else to the test's temporary folder.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.tracking.links import BEST_FIRST_COLUMNS, BEST_FIRST_NAME, model_version_page
from tests.conftest import free_port, isolated_home, port_free, require, wait_until
from tests.run_main import run_main
from tests.tuning_helpers import CLI, write_spec

pytestmark = pytest.mark.slow  # trains a study, starts a server and a browser: about 2 minutes

CHROMIUM = Path(os.environ.get("HARNESS_CHROMIUM", "/usr/bin/chromium"))

ROOT = Path(__file__).resolve().parent.parent
STUDY = "browser"
# Flags that keep a headless Chromium quiet and offline on a CI box; Playwright adds --headless and a
# fresh --user-data-dir of its own (it refuses one in `args`).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 90_000  # a React app on a shared 2-core VM: generous, each wait ends as soon as the text shows
SECTION_HEADER = "experiment-view-compare-runs-section-header"  # MLflow's test ids for chart sections and cards
CHART_CARD = "experiment-view-compare-runs-card"


@dataclass(frozen=True)
class Store:
    home: Path
    experiment_id: str
    parent_run_id: str
    trial_names: dict[str, str]  # run id -> run name (a pruned one says so in its name)
    best_run_id: str  # the study's best trial (tag best=true on it)
    complete_run_ids: frozenset[str]  # trials that finished (not pruned): the parent's leaderboard rows
    val_aucs: dict[str, float | None]  # run id -> its best val AUC (None: the parent, a pruned trial)
    model_name: str
    champion_version: str
    champion_run_id: str


@dataclass
class Ui:
    process: subprocess.Popen
    url: str
    seconds_to_url: float
    processes: list[tuple[int, int, str]]  # (pid, RSS KiB, command) of `harness ui` and its descendants


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("HARNESS_UI_SHOTS") or tmp_path_factory.mktemp("ui-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A 3-trial study (median pruner from the 2nd trial on, so a trial may be pruned) and its champion."""
    from mlflow.tracking import MlflowClient

    from harness.data.demo import make_demo_dataset

    home = tmp_path_factory.mktemp("ui-home")
    with isolated_home(home) as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # one torch thread: much the fastest on a busy machine
        data = make_demo_dataset(home / "data", clips=24, seconds=1.5)
        spec = write_spec(home, STUDY, trials=3, epochs=2, pruner='kind = "median"\nn_startup_trials = 1\nn_warmup_steps = 0')
        # In this process, through `harness.cli.main` as the console script runs it: the store is the same,
        # and two interpreters' imports (about 15 s on a busy machine) are saved.
        for args in (("tune", "--study", str(spec), "--data", str(data)),
                     ("submit", "--run-id", "best", "--data", str(data), "--workers", "1")):
            code, out, err = run_main(*args)
            assert code == 0, f"harness {' '.join(args)} exited {code}:\n{out}\n{err}"

        # the store this module made (an earlier test may have left mlflow pointed at its own)
        client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(f"tune-{STUDY}")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parent = next(r for r in runs if r.data.tags.get("harness.kind") == "study")
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(trials) == 3
        best = [r.info.run_id for r in trials if r.data.tags.get("best") == "true"]
        assert best == [parent.data.tags["best.run_id"]]
        model_name = f"harness-{data.name}"
        champion = client.get_model_version_by_alias(model_name, "champion")
        aucs = {r.info.run_id: r.data.metrics.get(BEST_FIRST_COLUMNS[0]) for r in runs}
        yield Store(home=home, experiment_id=experiment.experiment_id, parent_run_id=parent.info.run_id,
                    trial_names={r.info.run_id: r.info.run_name for r in trials}, best_run_id=best[0], val_aucs=aucs,
                    complete_run_ids=frozenset(r.info.run_id for r in trials
                                               if r.data.tags.get("optuna.state") == "COMPLETE"),
                    model_name=model_name, champion_version=str(champion.version), champion_run_id=champion.run_id)


def process_tree(root: int) -> list[tuple[int, int, str]]:
    """(pid, RSS in KiB, command) of `root` and every descendant, from ps."""
    table = subprocess.run(["ps", "-ww", "-e", "-o", "pid=,ppid=,rss=,args="], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in table.splitlines():
        pid, ppid, rss, args = line.split(None, 3)
        rows[int(pid)] = (int(ppid), int(rss), args)
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        if pid in rows:
            tree.append((pid, rows[pid][1], rows[pid][2]))
            frontier += [child for child, (ppid, _, _) in rows.items() if ppid == pid]
    return tree


def stop(process: subprocess.Popen, pids: list[int]) -> None:
    """SIGTERM `harness ui` (as a Ctrl-C or a service manager would); it stops its server's process
    group itself. Whatever is still alive after 30 s is killed, so a failing test leaks nothing."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(AssertionError):  # still alive after 15 s: killed below
        wait_until(lambda: not any(alive(pid) for pid in pids), 15, interval=0.2, what=f"processes {pids} to end")
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) no longer holds anything.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def ui(store: Store, shots: Path) -> Iterator[Ui]:
    """`harness ui --port FREE` in a session of its own; the URL it prints, how long that took, and
    the processes serving; stopped (whole tree) at the end of the module."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_HOME": str(store.home),
           "HARNESS_CACHE": str(store.home / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{store.home / 'mlflow.db'}"}
    log = (shots / "harness-ui.stderr").open("w")
    started = time.monotonic()
    process = subprocess.Popen([*CLI, "ui", "--port", str(port)], cwd=store.home, env=env, stdout=subprocess.PIPE,
                               stderr=log, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    pids: list[int] = []
    try:
        url = None
        while url is None and time.monotonic() - started < 180:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, f"harness ui exited {process.returncode}: {(shots / 'harness-ui.stderr').read_text()}"
                continue
            if found := re.search(r"MLflow UI: (\S+)", line):
                url = found.group(1)
        seconds = time.monotonic() - started
        assert url is not None, "harness ui printed no URL within 180 s"
        tree = process_tree(process.pid)
        pids = [pid for pid, _, _ in tree]
        summary = "\n".join(f"{pid:>7} {rss / 1024:7.0f} MiB  {args[:160]}" for pid, rss, args in tree)
        (shots / "harness-ui-processes.txt").write_text(
            f"{url}\nprinted after {seconds:.1f} s; {len(tree)} processes, {sum(r for _, r, _ in tree) / 1024:.0f} MiB RSS\n{summary}\n")
        yield Ui(process=process, url=url, seconds_to_url=seconds, processes=tree)
    finally:
        stop(process, pids or [pid for pid, _, _ in process_tree(process.pid)])
        log.close()


@pytest.fixture(scope="module", autouse=True)
def browser() -> Iterator:
    """Headless Chromium for the module. Autouse, so set up first: no Playwright, no Chromium or one
    that does not start (a snap stub, a missing library) skips the module (fails it under CI) before
    a study is trained for it."""
    require("Playwright", importlib.util.find_spec("playwright") is not None, "pip install -e '.[dev]' installs it")
    require("Chromium", CHROMIUM.is_file(), f"nothing at {CHROMIUM} (apt-get install chromium, or set HARNESS_CHROMIUM)")
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except sync_api.Error as e:
            require("Chromium", False, f"{CHROMIUM} does not start: {str(e).strip().splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile per test (no workflow type remembered in localStorage), 1400x900."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    context.close()


def base_of(url: str) -> str:
    return url.split("#", 1)[0]


def open_study_runs(page, ui: Ui, store: Store) -> None:
    """The printed URL: the study's trials, flat (no parent row to expand)."""
    page.goto(ui.url)
    for name in store.trial_names.values():
        page.get_by_role("link", name=name, exact=True).wait_for()


def table_rows(page) -> list[dict[str, str]]:
    """The runs table as shown, top to bottom: per row, each cell's text by the grid's column id
    (a row's cells may lie in several containers: pinned columns and the scrolled rest)."""
    cells = page.eval_on_selector_all(".ag-row[row-index] .ag-cell[col-id]", """els => els.map(e => [
        e.closest('.ag-row').getAttribute('row-index'), e.getAttribute('col-id'), e.innerText.trim()])""")
    rows: dict[int, dict[str, str]] = {}
    for index, column, text in cells:
        rows.setdefault(int(index), {})[column] = text
    return [rows[i] for i in sorted(rows)]


def test_harness_ui_is_ready_when_it_prints_and_runs_no_job_workers(ui: Ui, store: Store, shots: Path):
    with urllib.request.urlopen(f"{base_of(ui.url)}health", timeout=5) as answer:  # at once: no retry
        assert answer.status == 200
    # the page it opens: the newest experiment's runs, in the saved best-first view
    assert ui.url.endswith(f"/#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"
                           "&viewStateShareKey=harness-best-first"), ui.url
    # its terminal holds only its own lines: MLflow's and uvicorn's go to the log file it names
    lines = [line for line in (shots / "harness-ui.stderr").read_text().splitlines() if line.strip()]
    log = store.home / "mlruns" / "ui.log"
    assert lines[0] == f"the server's own output: {log}" and all(line.startswith("tip: ") for line in lines[1:]), lines
    assert "Uvicorn running on" in log.read_text()
    # harness ui, mlflow server, one uvicorn worker; MLflow's 8 background job workers would make it 11.
    commands = "\n".join(args for _, _, args in ui.processes)
    assert len(ui.processes) <= 4, commands
    assert "--workers 1" in commands


def test_printed_url_lists_the_trials_best_first_with_their_auc_in_the_model_training_view(page, ui: Ui, store: Store,
                                                                                              shots: Path):
    assert f"#/experiments/{store.experiment_id}/runs?" in ui.url and "workflowType=machine_learning" in ui.url
    open_study_runs(page, ui, store)
    assert "workflowType=machine_learning" in page.url  # the app kept the view it was asked for
    # The "Model training" side navigation (Runs, Models, Model registry), not the GenAI one
    # (Overview, Observability, Sessions, Evaluation ...).
    nav = page.get_by_role("navigation").first
    for link in ("Runs", "Models", "Model registry"):
        assert nav.get_by_text(link, exact=True).is_visible(), link
    assert page.get_by_text("Observability", exact=True).count() == 0
    assert page.get_by_text("Sessions", exact=True).count() == 0
    page.get_by_text(BEST_FIRST_NAME).first.wait_for()  # the saved view, named in the views menu
    # Every run on its own row (the trials are not folded under the study's row), best val AUC
    # first, the runs without one (the study's parent, a pruned trial) last; the AUC and both ends
    # of its interval are columns.
    columns = [f"metrics.`{name}`" for name in BEST_FIRST_COLUMNS]
    for name in BEST_FIRST_COLUMNS:
        page.get_by_role("columnheader", name=name).first.wait_for()
    rows = table_rows(page)
    names = {name: run_id for run_id, name in store.trial_names.items()} | {f"study-{STUDY}": store.parent_run_id}
    shown = [names[row["attributes.`Run Name`"].splitlines()[-1]] for row in rows]
    assert sorted(shown) == sorted(store.val_aucs), rows
    expected = sorted((v for v in store.val_aucs.values() if v is not None), reverse=True)
    values = [row[columns[0]] for row in rows]
    assert [float(v) for v in values[:len(expected)]] == pytest.approx(expected, abs=1e-6), rows
    assert values[len(expected):] == ["-"] * (len(rows) - len(expected)) and shown[-1] == store.parent_run_id
    assert store.val_aucs[shown[0]] == max(expected)
    for row in rows[:len(expected)]:  # the interval's ends: low <= high
        assert float(row[columns[1]]) <= float(row[columns[2]]), row
    page.screenshot(path=shots / "1-study-runs.png")


def test_a_trial_page_starts_with_the_per_epoch_curves(page, ui: Ui, store: Store, shots: Path):
    """Clicked through as a user does: the runs page, a trial, its "Model metrics" tab. The first
    chart section is `epoch` and holds the val_auc curve; summary values and model facts come after."""
    name = store.trial_names[store.best_run_id]
    open_study_runs(page, ui, store)
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_text(f"{name} (epoch/val_auc)").wait_for()  # the chart's legend: run name and metric
    assert store.best_run_id in page.url
    headers = page.get_by_test_id(SECTION_HEADER)
    titles = [t.strip().splitlines()[0] for t in headers.all_inner_texts()]  # "epoch", "(9)", "Add chart"
    assert titles[0] == "epoch", titles
    assert {"summary", "model"} <= set(titles), titles
    # The val_auc card lies inside the first section: below its header, above the second header.
    card = page.get_by_test_id(CHART_CARD).filter(has_text=f"{name} (epoch/val_auc)")
    assert card.count() == 1
    top_of = lambda locator: locator.bounding_box()["y"]  # noqa: E731
    assert top_of(headers.nth(0)) < top_of(card) < top_of(headers.nth(1))
    assert card.get_by_text("val_auc", exact=True).is_visible()
    page.screenshot(path=shots / "2-trial-metrics.png")


def test_the_study_parent_run_links_to_its_best_trial(page, ui: Ui, store: Store, shots: Path):
    open_study_runs(page, ui, store)
    page.get_by_role("link", name=f"study-{STUDY}", exact=True).click()
    page.get_by_text("About this run").wait_for()
    description = page.get_by_text(re.compile(r"^Optuna study browser")).first
    description.wait_for(state="visible")  # the description renders after the run's header
    best = page.get_by_role("link", name=re.compile(r"^trial \d+$"))  # "Best: trial N" and the leaderboard's ranks
    hrefs = {best.nth(i).get_attribute("href") for i in range(best.count())}
    # each opens in the "Model training" view, as every link the harness writes (tracking/links.py)
    assert all(h and h.endswith("?workflowType=machine_learning") for h in hrefs), hrefs
    assert any(f"/runs/{store.best_run_id}?" in h for h in hrefs), hrefs
    # every complete trial has its leaderboard row; a pruned one (the median pruner may stop one) has none
    linked = {m.group(1) for h in hrefs if (m := re.search(r"/runs/(\w+)\?", h or ""))}
    assert linked == store.complete_run_ids, (hrefs, store.trial_names)
    page.screenshot(path=shots / "3-parent-run.png")
    # Next to the assistant panel the overview is one column: the description comes below the fold.
    best.last.scroll_into_view_if_needed()  # the leaderboard's last row
    page.screenshot(path=shots / "3-parent-run-description.png")


def test_the_registry_champion_version_shows_its_signature(page, ui: Ui, store: Store, shots: Path):
    page.goto(model_version_page(store.model_name, store.champion_version, base=base_of(ui.url)))
    page.get_by_text("champion", exact=False).first.wait_for()
    # The source run's link renders after the version's own fields (its run is fetched next): wait for it.
    page.get_by_role("link", name=store.trial_names[store.champion_run_id], exact=True).wait_for(state="visible")
    page.get_by_text("Inputs (1)").click()
    page.get_by_text("Outputs (1)").click()
    schema = page.get_by_text("Schema", exact=True).locator("xpath=ancestor::*[.//*[contains(text(), 'Outputs')]][1]")
    text = schema.inner_text()
    assert re.search(r"Inputs \(1\)\s+path \(required\)\s+string", text), text
    assert re.search(r"Outputs \(1\)\s+score \(required\)\s+double", text), text
    page.screenshot(path=shots / "4-registry-version.png", full_page=True)


def test_stopping_harness_ui_stops_every_process_and_frees_the_port(ui: Ui):
    port = int(re.search(r":(\d+)/", ui.url).group(1))
    pids = [pid for pid, _, _ in ui.processes]
    stop(ui.process, [])  # no SIGKILL safety net here: what SIGTERM leaves behind is the failure
    assert ui.process.returncode == 130  # SIGTERM is an interrupt
    wait_until(lambda: not any(alive(p) for p in pids) and port_free(port), 15, interval=0.2,
               what=f"processes {pids} to end and port {port} to be free")
