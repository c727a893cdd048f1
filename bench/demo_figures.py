"""The README's demo figures, from one script: the honest path run as a new user runs it.

    python bench/demo_figures.py            # prepare, audit, train, train --folds 3, submit, score
    python bench/demo_figures.py --modalities   # also a video and a fusion run (about 10 minutes more)

Runs every command in a fresh HARNESS_HOME (a temporary folder: the demo is generated there, nothing of
yours is read or written), times each one, reads the results back from the MLflow store and prints them
with the machine they were measured on. The README quotes what this prints; rerun it to check them.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def harness(home: Path, *args: str) -> tuple[float, str]:
    """Run one harness command in `home`; its wall time and its output (exit on failure)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=home, text=True, capture_output=True,
                          env={**os.environ, "HARNESS_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"harness {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def latest(home: Path, kind: str) -> tuple[dict[str, float], list[float]]:
    """The newest run of `kind` in the store: its metrics, and its folds' AUCs (fold 1..K) for a CV parent."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    from mlflow import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(ids, f"tags.`harness.kind` = '{kind}'", order_by=["attributes.start_time DESC"],
                                max_results=1)
    history = sorted(client.get_metric_history(run.info.run_id, "fold/auc"), key=lambda point: point.step)
    return run.data.metrics, [point.value for point in history]


def interval(m: dict[str, float], value: str, low: str, high: str) -> str:
    return f"{m[value]:.3f} [{m[low]:.3f}, {m[high]:.3f}]"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modalities", action="store_true", help="also train a video and a fusion model")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="harness-figures-"))
    print(f"machine: {machine()}\nHARNESS_HOME={home}")
    lines: list[str] = []

    def step(label: str, *command: str) -> str:
        seconds, out = harness(home, *command)
        lines.append(f"{label:<34} {seconds:6.0f} s")
        print(f"harness {' '.join(command)}: {seconds:.0f} s", flush=True)
        return out

    step("prepare (demo generated + features)", "prepare")
    audit = step("audit", "audit")
    lines += ["  " + line.strip() for line in audit.splitlines()
              if "finding" in line.lower() or line.startswith("Shift:")][:4]
    step("train (defaults)", "train")
    m, _ = latest(home, "train")
    tpr = interval(m, "summary/best_val_tpr_fpr1e-3", "summary/val_tpr_fpr1e-3_ci_low", "summary/val_tpr_fpr1e-3_ci_high")
    lines.append(f"  val AUC {interval(m, 'summary/best_val_auc', 'summary/val_auc_ci_low', 'summary/val_auc_ci_high')}, "
                 f"TPR at FPR 1e-3 {tpr}")
    step("train --folds 3 --epochs 1", "train", "--folds", "3", "--epochs", "1")
    m, fold_aucs = latest(home, "cv")
    folds = ", ".join(f"{auc:.3f}" for auc in fold_aucs)
    lines.append(f"  folds {folds or '-'}; mean {m.get('cv/val_auc_mean', float('nan')):.3f} "
                 f"+- {m.get('cv/val_auc_std', float('nan')):.3f}; OOF AUC "
                 f"{interval(m, 'oof/auc', 'oof/auc_ci_low', 'oof/auc_ci_high')}")
    if args.modalities:
        for modality in ("video", "fusion"):
            step(f"train --modality {modality}", "train", "--modality", modality)
            m, _ = latest(home, "train")
            lines.append(f"  val AUC {interval(m, 'summary/best_val_auc', 'summary/val_auc_ci_low', 'summary/val_auc_ci_high')}")
    step("submit --run-id best", "submit", "--run-id", "best", "--out", "submissions/demo")
    prediction = home / "submissions" / "demo" / "prediction.csv"
    score = subprocess.run([sys.executable, "-m", "harness", "score", str(prediction)], cwd=home, text=True,
                           capture_output=True, env={**os.environ, "HARNESS_HOME": str(home), "NO_COLOR": "1"})
    if score.returncode == 0:
        lines += ["  score: " + line.strip() for line in score.stdout.splitlines() if line.strip()][:12]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
