"""The cache with real processes: two prepares on one folder, SIGTERM and kill -9 of `harness prepare`
(issue 11: the cache locks itself; issue 16, item 7: nothing left running).

Slow: each test starts interpreters and worker pools.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import AudioFeatures
from harness.data.cache import LOCK, feature_dir, load_split
from harness.data.labels import load_dataset
from tests.conftest import wait_until, write_labels

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HARNESS = [sys.executable, "-c", "import sys; sys.argv[0] = 'harness'; from harness.cli import main; main()"]


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def waiting_for_lock(path: Path) -> set[int]:
    """The processes blocked in flock() on `path`: the `->` lines of /proc/locks (pid, then dev:inode)."""
    inode = str(path.stat().st_ino)
    return {int(fields[5]) for fields in map(str.split, Path("/proc/locks").read_text().splitlines())
            if fields[1] == "->" and fields[6].rsplit(":", 1)[1] == inode}


def test_two_prepares_on_one_folder_compute_each_clip_once(small_dataset: Path, tmp_path: Path) -> None:
    """Both wait on the lock the test holds; released, one computes everything, the other reuses it."""
    cache = tmp_path / "c"
    folder = feature_dir(load_dataset(small_dataset), AudioFeatures(width=64), cache)
    folder.mkdir(parents=True)
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from harness.config import AudioFeatures\n"
            "from harness.data.cache import prepare_features\n"
            "from harness.data.labels import load_dataset\n"
            "print('ready', flush=True)\n"
            "r = prepare_features(load_dataset(sys.argv[1]), AudioFeatures(width=64), cache_root=Path(sys.argv[2]), workers=1)\n"
            "print(json.dumps([r.done, r.reused]), flush=True)\n")
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by "a third prepare" until both have started
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(small_dataset), str(cache)], env=ENV,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        wait_until(lambda: waiting_for_lock(folder / LOCK) == {p.pid for p in procs}, 60,
                   what="both prepares to wait at the lock")
    finally:
        os.close(fd)
    results = sorted(tuple(json.loads(p.communicate(timeout=120)[0].strip())) for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert results == [(0, 8), (8, 0)]  # (done, reused): every clip computed once
    assert load_split(folder, "train")[0].shape == (4, 128, 64)


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 demo clips (12 generated, each copied under 10 names) in one split: a run of several seconds."""
    from harness.data.demo import make_demo_dataset

    demo = make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", clips=12, seconds=1.0)
    root = tmp_path_factory.mktemp("many") / "ds"
    (root / "trainset").mkdir(parents=True)
    names = []
    for k in range(10):
        for clip in sorted(demo.glob("*set/*.mp4")):
            names.append(f"c{k}_{clip.name}")
            shutil.copyfile(clip, root / "trainset" / names[-1])
    write_labels(root / "train_label.txt", [(n, i % 2) for i, n in enumerate(names)])
    return root


def start_prepare(data: Path, cache: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([*HARNESS, "prepare", "--data", str(data), "--cache", str(cache), "--modality", "video",
                                 "--workers", "2"], env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_mid_run(data: Path, cache: Path, log: Path, sig: int) -> tuple[int, list[int]]:
    """Start `harness prepare`, send `sig` once its first shard is written; its exit status and the
    processes it had started."""
    proc = start_prepare(data, cache, log)
    try:
        wait_until(lambda: any(cache.glob("*/*/shards/train/*.npz")) or proc.poll() is not None, 120, what="the first shard")
        assert proc.poll() is None, f"prepare ended before it could be interrupted:\n{log.read_text()}"
        started = children(proc.pid)
        assert len(started) >= 3, started  # two workers and the resource tracker
        os.kill(proc.pid, sig)
        return proc.wait(timeout=60), started
    finally:
        if proc.poll() is None:
            proc.kill()


def resumed(data: Path, cache: Path) -> tuple[int, int]:
    """Run `harness prepare` again to the end: (done, reused) from its summary."""
    result = subprocess.run([*HARNESS, "prepare", "--data", str(data), "--cache", str(cache), "--modality", "video"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    done, reused = re.search(r"(\d+) done, (\d+) reused, 0 failed", " ".join(result.stderr.split())).groups()
    return int(done), int(reused)


def test_sigterm_stops_the_workers_and_a_rerun_resumes(many_clips: Path, tmp_path: Path) -> None:
    code, started = stop_mid_run(many_clips, tmp_path / "c", tmp_path / "log", signal.SIGTERM)
    assert code == 130, (tmp_path / "log").read_text()
    assert "Traceback" not in (tmp_path / "log").read_text()
    wait_until(lambda: not any(running(pid) for pid in started), 5, what=f"workers and resource tracker {started} to end")
    done, reused = resumed(many_clips, tmp_path / "c")
    assert reused >= 1 and done + reused == 120
    folder = next((tmp_path / "c").glob("*/video-*"))
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]
    images, index = load_split(folder, "train")
    assert len(images) == 120 and all(r["ok"] == "1" for r in index)


def test_workers_end_when_prepare_is_killed(many_clips: Path, tmp_path: Path) -> None:
    code, started = stop_mid_run(many_clips, tmp_path / "c", tmp_path / "log", signal.SIGKILL)
    assert code == -signal.SIGKILL
    wait_until(lambda: not any(running(pid) for pid in started), 10, what=f"orphaned workers {started} to end")
    done, reused = resumed(many_clips, tmp_path / "c")  # the lock died with its holder
    assert reused >= 1 and done + reused == 120
