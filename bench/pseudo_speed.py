"""What pseudo-fakes cost training: samples/s with them on against off, measured side by side.

For `blend` (a video model) and `vocode` (an audio model) on the demo's cached clips (or --data),
each round trains one epoch with the pseudo-fakes and one without (alternating which goes first),
and the engine's own samples/s of each are compared; printed per kind as the median ratio over the
rounds (goal >= 0.8x). The vocoded copies are made once per run before the first epoch: their cost is
printed apart, in seconds a training real.

  python bench/pseudo_speed.py [--rounds 3] [--clips 64] [--backbone tf_efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import RunConfig, TrainConfig, with_changes  # noqa: E402

KINDS = {"blend": "video", "vocode": "audio"}


def samples_per_s(cfg: RunConfig, ready, hooked: bool, clips: int) -> tuple[float, float]:  # noqa: ANN001 - preflight.Ready
    """One epoch's training samples/s, and the seconds `for_training` took a training real (the vocoded copies)."""
    from harness.engine import fit, seed_everything
    from harness.modalities import build_model, input_stats
    from harness.pseudo import for_training
    from harness.run import official_splits

    from harness.data.folds import subset

    train, val = official_splits(ready)
    train, val = subset(train, np.arange(min(clips, len(train)))), subset(val, np.arange(min(clips // 2, len(val))))
    start = time.perf_counter()
    train, hook = for_training(cfg, train) if hooked else (train, None)
    setup = (time.perf_counter() - start) / max(1, int((train.labels == 0).sum()))
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        result = fit(cfg.train, model, train=train, val=val, stats=input_stats(cfg, model), out_dir=Path(tmp), hook=hook)
    return result.history[-1].metrics["samples_per_s"], setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: the demo)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--kinds", default="blend,vocode")
    ap.add_argument("--clips", type=int, default=64, help="training clips an epoch (the first of the split)")
    args = ap.parse_args()
    import torch

    from harness.paths import cache_dir, demo_data_dir
    from harness.preflight import preflight

    data = args.data or demo_data_dir()
    for kind in args.kinds.split(","):
        base = RunConfig(modality=KINDS[kind], train=TrainConfig(backbone=args.backbone, pretrained=False, epochs=1,
                                                                 device="cpu", patience=0))
        on = with_changes(base, {"train.pseudo_fakes": kind})
        ready = preflight(data, on, cache_root=cache_dir())
        ratios, setups = [], []
        for round_ in range(args.rounds):
            rates = {}
            for hooked in ((True, False) if round_ % 2 else (False, True)):
                rates[hooked], setup = samples_per_s(on if hooked else base, ready, hooked, args.clips)
                setups += [setup] if hooked else []
            ratios.append(rates[True] / rates[False])
            print(f"  {kind} round {round_ + 1}: on {rates[True]:.2f} samples/s, off {rates[False]:.2f} samples/s")
        print(f"{kind} ({KINDS[kind]}, {args.backbone}, cpu x{torch.get_num_threads()} threads): pseudo-fakes on/off "
              f"samples/s = {statistics.median(ratios):.2f}x (median of {args.rounds} rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}); set-up {statistics.median(setups):.3f} s a training real")


if __name__ == "__main__":
    main()
