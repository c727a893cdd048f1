"""What packing costs (issue 22), measured side by side in one run:

  select   pack selection on synthetic out-of-fold scores (seeded): C candidates of mixed strength
           and correlation on N clips in K folds; seconds for the selection on every row (optimistic)
           and for `estimate_pack` (that selection, the nested one per fold and the group bootstrap).
  score    a PackedModel of small members (a whole-clip audio model, a windowed one scored over its
           windows, a face model) against the sum of its members' times each alone, on the same zero
           clips, alternating pack / members for --rounds rounds after a warm-up; the ratio per round
           and the median. Model forward only (normalisation included, feature extraction not).
  predict  the same pack saved and loaded as `harness predict` loads it (`PackPredictor`), scoring real
           clips from their files (features included) against its members' `Predictor`s each alone,
           alternating for --clip-rounds rounds; skipped when --real (default: the shared sample) is absent.

    python bench/pack_speed.py [--rows 10000] [--candidates 50] [--size 10] [--folds 5] [--rounds 5] [--clips 16]
                               [--device cpu] [--real DIR] [--clip-rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.pack import OofMatrix, estimate_pack, select  # noqa: E402


def synthetic_oof(rows: int, candidates: int, folds: int, seed: int = 0) -> OofMatrix:
    """Candidates that share part of their noise (trials of one study are correlated) and differ in
    strength; scores squashed into probabilities and rounded to oof.csv's 6 decimals."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    shared = rng.standard_normal(rows)
    strength = rng.uniform(0.2, 1.2, candidates)
    raw = y[:, None] * strength + 0.6 * shared[:, None] + rng.standard_normal((rows, candidates))
    groups = rng.integers(0, rows // 3, rows)  # about 3 clips per source
    return OofMatrix.from_arrays(np.round(1 / (1 + np.exp(-raw)), 6), y, groups % folds, groups=groups)


def selection_costs(rows: int, candidates: int, size: int, folds: int) -> None:
    m = synthetic_oof(rows, candidates, folds)
    start = time.perf_counter()
    sel = select(m, size=size)
    optimistic = time.perf_counter() - start
    start = time.perf_counter()
    est = estimate_pack(m, size=size)
    whole = time.perf_counter() - start
    print(f"select, {candidates} candidates x {rows} out-of-fold rows, {folds} folds, size {size}:")
    print(f"  select (optimistic)                          {optimistic:6.2f} s  ({len(sel.steps)} steps, "
          f"{len(sel.members)} members, AUC {sel.auc:.4f}, best single {max(sel.single_auc):.4f})")
    print(f"  estimate_pack (that + {folds} nested + bootstrap) {whole:6.2f} s  (nested AUC {est.nested_auc:.4f}, "
          f"nested best single {est.nested_single_auc:.4f})")


def timed_ratios(rounds: int, pack, members) -> tuple[list[float], list[float]]:  # noqa: ANN001 - callables
    """Seconds of `pack()` and of the members' calls summed, alternating, `rounds` times after a warm-up."""
    pack(), [m() for m in members]
    packed, summed = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        pack()
        packed.append(time.perf_counter() - start)
        total = 0.0
        for m in members:
            start = time.perf_counter()
            m()
            total += time.perf_counter() - start
        summed.append(total)
    return packed, summed


def predict_costs(real: Path, rounds: int, configs: list) -> None:  # noqa: ANN001
    import tempfile

    from harness.pack import MemberSpec, PackedModel
    from harness.predict import PackPredictor

    clips = sorted(p for p in real.rglob("*.mp4"))
    with tempfile.TemporaryDirectory() as tmp:
        PackedModel.build([MemberSpec(f"m{i}", 1, cfg) for i, cfg in enumerate(configs)]).save(Path(tmp))
        pack = PackPredictor(Path(tmp) / "pack.safetensors")
        packed, summed = timed_ratios(rounds, lambda: pack.score_many(clips),
                                      [lambda m=m: m.score_many(clips) for m in pack.members])
    ratios = [p / s for p, s in zip(packed, summed)]
    print(f"predict, that pack from {len(clips)} real clips' files (features included), {rounds} rounds (ms per clip):")
    print(f"  pack           {' '.join(f'{1000 * t / len(clips):8.1f}' for t in packed)}")
    print(f"  members summed {' '.join(f'{1000 * t / len(clips):8.1f}' for t in summed)}")
    print(f"  ratio pack / sum of members per round {' '.join(f'{r:.3f}' for r in ratios)}  median {statistics.median(ratios):.3f}")


def scoring_costs(rounds: int, clips: int, device: str) -> list:
    import torch

    from harness.config import AudioFeatures, RunConfig, TrainConfig, VideoFeatures
    from harness.pack import MemberSpec, PackedModel, example_inputs

    small = dict(pretrained=False, device="cpu")
    configs = [
        RunConfig(modality="audio", train=TrainConfig(backbone="test_efficientnet.r160_in1k", **small)),
        RunConfig(modality="audio", audio=AudioFeatures(window_seconds=1.0, eval_windows=3),
                  train=TrainConfig(backbone="test_efficientnet.r160_in1k", **small)),
        RunConfig(modality="video", video=VideoFeatures(frames=4, size=64),
                  train=TrainConfig(backbone="test_byobnet.r160_in1k", **small)),
    ]
    specs = [MemberSpec(f"m{i}", 1, cfg) for i, cfg in enumerate(configs)]
    pack = PackedModel.build(specs).to(device).eval()
    alone = [PackedModel.build([s]).to(device).eval() for s in specs]
    for single, member in zip(alone, pack.members):  # the same weights, so the same arithmetic
        single.members[0].load_state_dict(member.state_dict())
    batches = example_inputs(configs, clips=clips, device=device)

    def timed(fn) -> float:  # noqa: ANN001
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        pack(batches), [m([b]) for m, b in zip(alone, batches)]  # warm-up
        packed, summed = [], []
        for _ in range(rounds):
            packed.append(timed(lambda: pack(batches)))
            summed.append(sum(timed(lambda m=m, b=b: m([b])) for m, b in zip(alone, batches)))
    ratios = [p / s for p, s in zip(packed, summed)]
    print(f"score, a pack of {len(configs)} members ({sum(p.numel() for p in pack.parameters()) / 1e6:.2f}M parameters), "
          f"{clips} clips a call on {device}, {torch.get_num_threads()} threads, {rounds} rounds (ms per clip):")
    print(f"  pack           {' '.join(f'{1000 * t / clips:7.2f}' for t in packed)}")
    print(f"  members summed {' '.join(f'{1000 * t / clips:7.2f}' for t in summed)}")
    print(f"  ratio pack / sum of members per round {' '.join(f'{r:.3f}' for r in ratios)}  "
          f"median {statistics.median(ratios):.3f}")
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "ffdv-phase1-sample")
    parser.add_argument("--clip-rounds", type=int, default=2)
    args = parser.parse_args()
    selection_costs(args.rows, args.candidates, args.size, args.folds)
    configs = scoring_costs(args.rounds, args.clips, args.device)
    if args.real.is_dir():
        predict_costs(args.real, args.clip_rounds, configs)
    else:
        print(f"predict: skipped, no real clips at {args.real}")


if __name__ == "__main__":
    main()
