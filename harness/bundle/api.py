"""Test API of this promoted bundle: a clip (audio file, face image) path in, probability of fake out.

    import api
    api.predict("clip.mp4")                -> float in [0, 1], the probability that the clip is fake
    api.predict_batch(["a.mp4", "b.mp4"])  -> list[float], in the same order
    python api.py PATH...                  prints `path,score` rows (folders are expanded)

This folder's own `harness` (the run's code) is imported, first on sys.path; the model loads on first use.

`python api.py` refuses a missing or unreadable path (exit 2). A clip without usable input (undecodable, no
track, silent, ...) scores the fallback (`scoring.fallback_score`, 0.5) with a warning: one never stops a run.
Device: HARNESS_DEVICE (cpu, cuda or auto; default cpu); OMP_NUM_THREADS=1 is fastest on a busy machine.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path[:1]:
    sys.path.insert(0, str(HERE))
_loaded = getattr(sys.modules.get("harness"), "__file__", None)
if _loaded is not None and not Path(_loaded).resolve().is_relative_to(HERE):
    raise ImportError(f"harness is already imported from {_loaded}; import api in a fresh process "
                      f"so that the bundle's own copy in {HERE} is used")

from harness.predict import Predictor, Scored, expand_paths, write_scores  # noqa: E402

__all__ = ["load", "predict", "predict_batch", "score_batch"]


@lru_cache(maxsize=1)
def load() -> Predictor:
    """The bundle's model, loaded once per process."""
    return Predictor.from_bundle(HERE, device=os.environ.get("HARNESS_DEVICE", "cpu"))


def score_batch(paths: list[str]) -> list[Scored]:
    """One `Scored(path, score, ok, reason, detail)` per path; failures warned on stderr."""
    rows = load().score_many([str(p) for p in paths])
    for row in rows:
        if not row.ok:
            print(f"warning: {row.path}: {row.reason} ({row.detail}); scored {row.score}", file=sys.stderr)
    return rows


def predict(path: str) -> float:
    """Probability that the clip at `path` is fake, in [0, 1]."""
    return score_batch([path])[0].score


def predict_batch(paths: list[str]) -> list[float]:
    """`predict` for many paths, batched through the model; same order as `paths`."""
    return [row.score for row in score_batch(paths)]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python api.py PATH...   (clips, audio files or folders; prints path,score)", file=sys.stderr)
        return 0 if argv else 2
    # A missing path is a typo, not a clip to score at the fallback. Checked here, not through
    # harness.predict, because an older run's harness copy lacks that check.
    for path in argv:
        if not os.path.exists(path) or not os.access(path, os.R_OK):
            why = "no such file or folder" if not os.path.exists(path) else "permission denied"
            print(f"error: {path}: {why}", file=sys.stderr)
            return 2
    write_scores(score_batch([str(p) for p in expand_paths(argv)]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
