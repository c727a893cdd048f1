"""Time of the bundle's test API, `predict(path) -> float`, per 10 s clip, split into its stages.

  decode    PyAV demux + decode of the audio track, mono, soxr resample (`media.decode_audio`)
  features  checks (truncated / too short / silent) + log-mel image (`media.check_audio`, `features.mel_image`)
  model     normalise + forward + sigmoid on one image, TTA included (`Predictor.score_images`)
  api       the whole `Predictor.score_many([path])` call, which is what a bundle's api.predict runs

The 10 s clip is the first 10 s of the longest shared real clip (h264 384x384 + MP3 44.1 kHz stereo),
stream-copied into a temporary mp4, so decoding costs what a real test clip costs. The model is
random-initialised (speed does not depend on the weights) unless --bundle names a promoted bundle,
whose own model and settings are then timed. Medians over --repeats calls after --warmup calls.

  python bench/api_speed.py                         # resnet18, the default feature settings
  python bench/api_speed.py --backbone tf_efficientnet_lite0 --tta 4
  python bench/api_speed.py --bundle submissions/<run>/bundle
  python bench/api_speed.py --threads 1             # on a shared, busy machine: no threads waiting on each other

Wall time is what a caller waits; CPU time (all threads) is the work, and stays put when other
processes compete for the cores (then wall grows, and threads spinning at sync points inflate both).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "ffdv-phase1-sample"


def ten_second_clip(src: Path, dest: Path, seconds: float = 10.0) -> Path:
    """The first `seconds` of `src`, every stream copied packet for packet (no re-encoding)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dest), "w", format="mp4") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("audio", "video")}
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None or packet.pts is None:
                continue
            if float(packet.pts * packet.time_base) >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dest


def median_ms(fn, repeats: int, warmup: int) -> tuple[float, float]:  # noqa: ANN001
    """Median (wall, CPU) milliseconds per call. CPU time sums every thread of the process, so it
    barely moves when other processes share the cores, where wall time grows."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def build_predictor(args: argparse.Namespace, work: Path):  # noqa: ANN201
    """(predictor, seconds to build it: model construction + weights load, as api.load() does)."""
    from harness.config import RunConfig, TrainConfig
    from harness.predict import Predictor

    if args.bundle:
        start = time.perf_counter()
        return Predictor.from_bundle(args.bundle, tta=args.tta), time.perf_counter() - start
    import timm
    from safetensors.torch import save_file

    cfg = RunConfig(train=TrainConfig(backbone=args.backbone, pretrained=False))
    model = timm.create_model(args.backbone, pretrained=False, in_chans=1, num_classes=1)
    weights = work / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    start = time.perf_counter()
    return Predictor(cfg, weights, tta=args.tta or 1), time.perf_counter() - start


def cold_start(bundle: Path, clip: Path) -> tuple[float, float]:
    """A fresh interpreter in the bundle folder: (seconds to `import api` + `api.load()`, first predict)."""
    code = ("import time; t = time.perf_counter(); import api; api.load(); t1 = time.perf_counter(); "
            f"api.predict({str(clip)!r}); print(t1 - t, time.perf_counter() - t1)")
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, check=True).stdout
    load, first = map(float, out.split())
    return load, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--bundle", type=Path, help="time this promoted bundle's model and settings instead")
    parser.add_argument("--tta", type=int, default=None, help="TTA shifts (default 1, or the bundle's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every CPU available)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"the shared real clips are not at {SHARED}")

    import numpy as np
    import torch

    from harness.data.features import mel_image
    from harness.data.media import check_audio, decode_audio

    clips = sorted(SHARED.glob("*set/*.mp4"))
    with tempfile.TemporaryDirectory(prefix="api-speed-") as tmp:
        work = Path(tmp)
        predictor, load_s = build_predictor(args, work)
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = predictor.cfg.audio
        longest = max(clips, key=lambda p: decode_audio(p, cfg.sample_rate)[1])
        clip = ten_second_clip(longest, work / "clip10s.mp4")
        audio, declared = decode_audio(clip, cfg.sample_rate)
        image = mel_image(audio, cfg)

        def features() -> None:
            check_audio(clip, audio, cfg.sample_rate, declared, min_seconds=cfg.min_seconds,
                        truncated_ratio=cfg.truncated_ratio, silence_dbfs=cfg.silence_dbfs)
            mel_image(audio, cfg)

        stages = {
            "decode": median_ms(lambda: decode_audio(clip, cfg.sample_rate), args.repeats, args.warmup),
            "features": median_ms(features, args.repeats, args.warmup),
            "model": median_ms(lambda: predictor.score_images(image[None]), args.repeats, args.warmup),
        }
        api_ms = median_ms(lambda: predictor.score_many([clip]), args.repeats, args.warmup)
        cold = cold_start(args.bundle, clip) if args.bundle else None
        per_clip = []
        for path in clips:  # the real clips as they come, 3.8-18.8 s
            per_clip.append(median_ms(lambda p=path: predictor.score(p), max(3, args.repeats // 4), 1)[0])

    name = args.bundle or args.backbone
    total = sum(wall for wall, _ in stages.values())
    print(f"bundle API time, {name}, TTA {predictor.tta}, {torch.get_num_threads()} torch threads, "
          f"clip {len(audio) / cfg.sample_rate:.1f} s ({longest.name} cut), features {cfg.shape[0]}x{cfg.shape[1]}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  {'stage':<9} {'wall ms':>8}  {'share':>6}  {'CPU ms':>8}")
    for stage, (wall, cpu) in stages.items():
        print(f"  {stage:<9} {wall:8.1f}  {100 * wall / total:5.1f}%  {cpu:8.1f}")
    print(f"  {'api':<9} {api_ms[0]:8.1f}  {'':>6}  {api_ms[1]:8.1f}   per 10 s clip, end to end "
          "(goal <= 300 ms wall for a resnet18-class model)")
    print(f"  10 shared clips as they are: median {np.median(per_clip):.1f} ms, max {max(per_clip):.1f} ms")
    print(f"  one-off: building the model and loading its weights {1000 * load_s:.0f} ms (not per clip)")
    if cold:
        print(f"  fresh process in the bundle: import api + load {cold[0]:.1f} s, then the first predict {1000 * cold[1]:.0f} ms")


if __name__ == "__main__":
    main()
