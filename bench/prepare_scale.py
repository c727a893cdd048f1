"""Does `harness prepare` stay flat as the clip count grows? Per-clip cost and peak memory at N clips.

A dataset of N entries is built from 10 source clips as symbolic links under new names (each entry
is its own cache item: the cache keys items by name, size and mtime): the shared real clips, or with
`--source demo` ten generated 1-second demo clips, whose decoding is cheap enough for 100k entries
on a laptop and leaves the per-item bookkeeping (listing, keys, manifest, shards) in view. Then the whole
command `harness prepare --data D --cache NEW` runs as a child process, timed with `os.wait4`: wall
seconds, CPU seconds of the command and every worker it reaped (steadier than wall time on a shared
machine), and the peak resident memory of the command's own process (the workers' is flat: each
holds one chunk at a time). Sizes alternate over rounds so drift on a noisy machine hits both.

    python bench/prepare_scale.py                   # 500 and 5000 clips, 2 rounds
    python bench/prepare_scale.py --sizes 500 5000 50000 --rounds 1
    python bench/prepare_scale.py --source demo --sizes 1000 100000 --rounds 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "ffdv-phase1-sample"


def source_clips(source: str, work: Path) -> list[Path]:
    """The 10 clips every entry links to: the shared real ones, or generated 1-second demo clips."""
    if source == "real":
        if not SAMPLE.is_dir():
            raise SystemExit(f"the shared real clips are not at {SAMPLE}")
        return sorted((SAMPLE / "trainset").glob("*.mp4")) + sorted((SAMPLE / "valset").glob("*.mp4"))
    sys.path.insert(0, str(ROOT))
    from harness.data.demo import make_demo_dataset

    demo = make_demo_dataset(work / "demo-source", clips=10, seconds=1.0)
    return sorted(p for p in demo.rglob("*.mp4"))[:10]


def make_dataset(root: Path, n: int, clips: list[Path]) -> Path:
    """N train entries (links to `clips`) and a 2-clip val split, with label files."""
    (root / "trainset").mkdir(parents=True)
    (root / "valset").mkdir()
    rows = []
    for i in range(n):
        name = f"c{i:07d}.mp4"
        os.symlink(clips[i % len(clips)], root / "trainset" / name)
        rows.append(f"{name},{i % 2}\n")
    (root / "trainset_label.txt").write_text("video_name,target\n" + "".join(rows))
    for i, clip in enumerate(clips[:2]):
        os.symlink(clip, root / "valset" / f"v{i}.mp4")
    (root / "valset_label.txt").write_text("video_name,target\nv0.mp4,0\nv1.mp4,1\n")
    return root


def prepare_once(data: Path, cache: Path, workers: int) -> tuple[float, float, float]:
    """(wall s, CPU s of the command and its workers, peak RSS MB of the command's process)."""
    harness = Path(sys.executable).with_name("harness")
    start = time.perf_counter()
    proc = subprocess.Popen([str(harness), "prepare", "--data", str(data), "--cache", str(cache), "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"harness prepare failed on {data}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--source", choices=("real", "demo"), default="real",
                        help="what the entries link to: the 10 shared real clips, or 10 generated 1-second demo clips")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare-scale-"))
    try:
        clips = source_clips(args.source, work)
        data = {n: make_dataset(work / f"d{n}", n, clips) for n in args.sizes}
        results: dict[int, list[tuple[float, float, float]]] = {n: [] for n in args.sizes}
        for r in range(args.rounds):
            for n in args.sizes if r % 2 == 0 else reversed(args.sizes):
                cache = work / f"cache-{n}-{r}"
                results[n].append(prepare_once(data[n], cache, args.workers))
                shutil.rmtree(cache)
                wall, cpu, rss = results[n][-1]
                print(f"round {r + 1}: {n:>6} clips  wall {wall:6.1f} s  {1e3 * wall / n:6.2f} ms/clip  "
                      f"CPU {1e3 * cpu / n:6.2f} ms/clip  peak RSS {rss:6.0f} MB", flush=True)
        base = args.sizes[0]
        med = {n: [statistics.median(x[k] for x in results[n]) for k in range(3)] for n in args.sizes}
        for n in args.sizes[1:]:
            print(f"{n} vs {base} clips: wall per clip {med[n][0] / n / (med[base][0] / base):.2f}x, "
                  f"CPU per clip {med[n][1] / n / (med[base][1] / base):.2f}x, peak RSS {med[n][2] / med[base][2]:.2f}x "
                  f"(medians of {args.rounds} rounds)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
