"""MODEL_CARD.md of a promoted bundle, built from its config.json alone (plus requirement notes, the
fallback count and the gate), so the card never says what the config does not hold."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def now() -> str:
    """UTC time to the second, ISO 8601: the promotion time in the card, the manifest and the tags."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def model_card(config: dict[str, Any], requirement_notes: list[str], *, fallbacks: int, test_rows: int,
               gate: dict[str, Any] | None = None) -> str:
    """MODEL_CARD.md from config.json, `pinned_requirements`' notes, the test clips at the fallback (`fallbacks`
    of `test_rows`) and the promotion gate's report (`facts`, `warnings`)."""
    metrics, model, scoring, code = config["metrics"], config["model"], config["scoring"], config["code"]
    run_config = config["run_config"]
    train, features, video = run_config["train"], run_config["audio"], run_config.get("video", {})
    modality = run_config.get("modality", "audio")
    best_weights = model.get("best_weights", "raw")
    reads = {"audio": "the audio of a clip (log-mel image)", "video": "the faces of a clip (face crops over time)",
             "fusion": "the audio and the faces of a clip", "image": "a face image"}[modality]

    def metric(name: str) -> str:
        value = metrics.get(name)
        return "n/a" if value is None else f"{value:.4f}"

    auc = f"{metric('best_val_auc')} (95% bootstrap interval {metric('val_auc_ci_low')} to {metric('val_auc_ci_high')})"
    rows = [("val_auc", auc)] + [(k.removeprefix("best_"), metric(k)) for k in sorted(metrics)
                                 if k.startswith("best_val_") and k != "best_val_auc"]
    shifts = ", ".join(map(str, scoring["tta_shifts"]))
    lines = [
        f"# Model card: run {config['run_id']} ({config['run_name']})", "",
        f"Binary deepfake detector ({modality}) on {reads}: `{model['backbone']}` (timm), output the probability "
        f"that it is fake. Promoted by `harness submit` on {now()}.", "",
        "## Validation metrics (best epoch)", "", "| metric | value |", "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        f"| best epoch | {int(metrics['best_epoch']) if 'best_epoch' in metrics else 'n/a'} |", "",
        *gate_section(gate),
        "## Model", "",
        f"- backbone `{model['backbone']}`, pretrained on ImageNet-1k: {train['pretrained'] or train['weights'] is not None}; "
        f"loss {train['loss']}, {model['num_classes']} output(s)",
        f"- parameters {model['params']:,} (thop count {model['thop_params']:,}; cap {train['max_params']:,.0f}), "
        f"{model['macs'] / 1e9:.3f} GMACs per clip at {'x'.join(map(str, model['input_size']))}",
        f"- weights `{model['weights']}` (safetensors, sha256 {model['sha256'][:16]}...); inputs: "
        + "; ".join(f"{name} {'x'.join(map(str, v['shape']))} uint8, normalised by mean {v['mean']} / std {v['std']}"
                    for name, v in model["inputs"].items()),
        *(["", "## Pack members", "", "The clip's score is the weighted mean of these members' probabilities of fake "
           "(each reads its own inputs; settings in `weights/pack.json`):", "", "| run | weight | modality | backbone |",
           "| --- | --- | --- | --- |", *(f"| {m['run_id']} | {m['weight']} | {m['modality']} | `{m['backbone']}` |"
                                       for m in model["members"])] if model.get("members") else []),
        "", "## Data and features", "",
        f"- trained on the dataset `{config['data'].get('name')}`, fingerprint `{config['data']['fingerprint']}` "
        "(label files and template, feature key)"
        + (": the synthetic demo dataset, so its scores on real clips mean nothing" if config["data"].get("demo") else ""),
        *([f"- audio features: {features['sample_rate']} Hz mono, n_fft {features['n_fft']}, hop {features['hop_length']}, "
           f"{features['n_mels']} mels from {features['fmin']} to {features['fmax']} Hz, top_db {features['top_db']}, "
           + (f"whole log-mel at the native hop, scored as {features['eval_windows']} evenly spaced windows of "
              f"{features['window_seconds']} s (a shorter clip tiled)" if features.get("window_seconds") else
              f"width {features['width']} ({features['interpolation']} resize)")
           + (f"; leading and trailing silence below -{features['trim_db']} dB of the loudest 10 ms trimmed first"
              if features.get("trim_silence") else "")
           + "; full settings in config.json `run_config.audio`"]
          if "audio" in model["inputs"] else []),
        *([f"- face features: {video.get('frames')} frames evenly spread over the clip (1 per image on the image track), "
           f"the largest face found by the `{video.get('detector')}` detector cut out square with margin {video.get('margin')} "
           f"and resized to {video.get('size')} px; a frame without a face falls back to a centre square of "
           f"{video.get('fallback_crop')} of the shorter side"
           + (f"; crops stored as JPEG quality {video.get('crop_quality')} in training, and sent through the same "
              "JPEG encoding here before scoring" if video.get("crop_storage") == "jpeg" else "")
           + "; full settings in config.json `run_config.video`"]
          if "video" in model["inputs"] else []),
        "", "## Scoring", "",
        *([f"- windows: a clip's score is the {train.get('aggregate', 'mean')} over its windows' probabilities"
           + (" (probability of the mean logit)" if train.get("aggregate") == "logit_mean" else "")]
          if features.get("window_seconds") and "audio" in model["inputs"] else []),
        *([f"- weights: {'the exponential moving average' if best_weights == 'ema' else 'the trained weights, not their EMA'}"
           f" (EMA decay {train['ema_decay']}), whichever scored the better val AUC"] if train.get("ema_decay") else []),
        "- test-time augmentation: " + ("none, each clip's image is scored as it is" if scoring["tta"] == 1 else
                                        f"{scoring['tta']}-fold, the mean probability over circular time shifts "
                                        f"of {shifts} columns"),
        f"- fallback: a clip none of whose inputs can be used (missing, empty, undecodable, no audio or video track, "
        f"truncated, too short, silent) scores {scoring['fallback_score']}, the uninformative score: it ranks the clip in "
        f"the middle for AUC instead of betting on either class. This submission: {fallbacks} of {test_rows} test clips "
        "fell back (listed in fallbacks.csv beside the bundle).",
        "", "## Code and environment", "",
        f"- harness source: {code['source']}",
        f"- git commit `{code['git_commit']}`, uncommitted changes: {code['git_dirty']}",
        f"- Python {code['python']}; run versions: " + ", ".join(f"{k} {v}" for k, v in code["versions"].items()),
        "- requirements.txt pins every runtime dependency" + ("; " + "; ".join(requirement_notes) if requirement_notes else ""),
        "", "How to build, run and retrain it: README.md.", "",
    ]
    return "\n".join(lines)


def gate_section(gate: dict[str, Any] | None) -> list[str]:
    """The card's "Promotion gate" lines: what the promotion was judged by, and every warning it raised."""
    if gate is None:
        return []
    lines = ["## Promotion gate", "", *(f"- {fact}" for fact in gate.get("facts", [])), ""]
    if gate.get("withheld"):
        lines += [f"**Not made the champion** (the registry's `champion` alias stayed where it was): {gate['withheld']}.", ""]
    if warnings := gate.get("warnings", []):
        return lines + ["**Warnings** (promoted without `--strict`, which would have refused it):", "",
                        *(f"- WARNING: {w}" for w in warnings), ""]
    return lines + ["No warnings.", ""]
