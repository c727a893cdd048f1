"""Do pseudo-fakes teach traces that carry over to forgeries never seen? (issue 21, Done-when)

On the demo (or --data), four small CPU runs: a face model trained on reals and self-blended crops
only (`--train-fakes none --pseudo-fakes blend`) against one trained on the real fakes, and an audio
model on reals and vocoded reals (`--pseudo-fakes vocode`) against one on the real fakes. Each
prints its val AUC, the demo's val fakes scored against its reals, with a 95% bootstrap interval
(`harness.metrics.bootstrap_auc_interval`); a pseudo-fake run's interval should lie above 0.5.
On the demo a fake may be fake in its audio, its video or both (`.answers/clips.csv`), so each run
also prints the AUC against the val fakes that carry its own modality's artefact.
The val AUC is the best epoch's (the engine keeps the best by val AUC): a little optimistic.
Runs are recorded in MLflow (experiment `pseudo-transfer`) under $HARNESS_HOME.

  python bench/pseudo_transfer.py [--epochs 5] [--real-epochs 3] [--frames 4] [--backbone tf_efficientnet_lite0.in1k]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import RunConfig, TrainConfig, VideoFeatures, with_changes  # noqa: E402

RUNS = {  # name -> (modality, settings)
    "video, reals + blend": ("video", {"train.train_fakes": "none", "train.pseudo_fakes": "blend"}),
    "video, real fakes": ("video", {}),
    "audio, reals + vocode": ("audio", {"train.train_fakes": "none", "train.pseudo_fakes": "vocode"}),
    "audio, real fakes": ("audio", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo, built on first use)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the pseudo-fake runs (reals only: 72 clips)")
    ap.add_argument("--real-epochs", type=int, default=3, help="epochs of the real-fake runs (144 clips: as many steps)")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0.in1k")
    ap.add_argument("--frames", type=int, default=4, help="face frames per clip")
    ap.add_argument("--only", default="", help="run only those whose name holds all these comma-separated words (audio; video,real fakes)")
    args = ap.parse_args()
    from harness.metrics import bootstrap_auc_interval, classification_metrics
    from harness.paths import cache_dir, demo_data_dir
    from harness.preflight import preflight
    from harness.run import train_run

    data = args.data or demo_data_dir()
    if args.data is None:
        from harness.data.demo import make_demo_dataset

        make_demo_dataset(data)
    for name, (modality, changes) in RUNS.items():
        if args.only and not all(word in name for word in args.only.split(",")):
            continue
        base = RunConfig(modality=modality, video=VideoFeatures(frames=args.frames), train=TrainConfig(
            backbone=args.backbone, epochs=args.epochs if changes else args.real_epochs, device="cpu", patience=0))
        cfg = with_changes(base, changes)
        start = time.perf_counter()
        run = train_run(preflight(data, cfg, cache_root=cache_dir()), experiment="pseudo-transfer",
                        run_name=f"transfer-{name.replace(', ', '-').replace(' + ', '-')}")
        fit = run.fit
        assert fit is not None
        auc = classification_metrics(fit.val_labels, fit.val_scores)["auc"]
        low, high = bootstrap_auc_interval(fit.val_labels, fit.val_scores)
        verdict = "above 0.5" if low > 0.5 else "NOT above 0.5"
        print(f"{name:24s} val AUC {auc:.3f}  95% CI [{low:.3f}, {high:.3f}] ({verdict}); best epoch {fit.best_epoch}"
              f"/{cfg.train.epochs}, {len(fit.val_labels)} val clips, {time.perf_counter() - start:.0f} s, run {run.run_id[:8]}",
              flush=True)
        if (faked := with_artefact(data, modality)) is not None:
            keep = np.array([label == 0 or n in faked for n, label in zip(fit.val_names, fit.val_labels)])
            labels, scores = fit.val_labels[keep], fit.val_scores[keep]
            low, high = bootstrap_auc_interval(labels, scores)
            print(f"{'':24s} against the {int(labels.sum())} val fakes with a {modality} artefact: AUC "
                  f"{classification_metrics(labels, scores)['auc']:.3f}  95% CI [{low:.3f}, {high:.3f}]", flush=True)


def with_artefact(data: Path, modality: str) -> set[str] | None:
    """The demo's clips whose `modality` is faked (its answers file), or None for other data."""
    answers = data / ".answers" / "clips.csv"
    if not answers.exists():
        return None
    with answers.open() as f:
        return {row["video_name"] for row in csv.DictReader(f) if float(row[f"{modality}_artefact"]) > 0}


if __name__ == "__main__":
    main()
