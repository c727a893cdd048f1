"""`harness score PREDICTION.csv`: any `video_name,score` file scored against labels, overall and per method.

By default against the demo's hidden test answers (`.answers/test_label.txt`, `.answers/methods.csv`), the
method training never showed marked; elsewhere `--labels FILE` (and `--methods FILE`, else a methods.csv beside
the labels). Every clip labelled must be scored and vice versa, each score finite: else one line naming the
file (exit 2).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import DataOption, MethodsOption, app, resolve_data


@app.command()
def score(
    prediction: Annotated[Path, typer.Argument(help="A video_name,score CSV (a submission's prediction.csv).")],
    labels: Annotated[Optional[Path], typer.Option(help="video_name,target file to score against. Default: the "
                                                   "dataset's hidden test answers, .answers/test_label.txt.")] = None,
    methods: MethodsOption = None, data: DataOption = None,
) -> None:
    """Score predictions: AUC and TPR at FPR 1e-3 with 95% bootstrap intervals, and the AUC per method."""
    import numpy as np

    from harness.analysis import tpr_intervals
    from harness.data.labels import DatasetError, load_dataset, read_listing
    from harness.data.methods import find_methods, read_methods
    from harness.metrics import bootstrap_auc_interval, classification_metrics
    from harness.slices import run_slices

    root = resolve_data(data) if labels is None or data is not None else None
    labels = labels or root / ".answers" / "test_label.txt"
    if not labels.is_file():
        raise DatasetError(labels, "no such labels file (give --labels FILE)")
    truth = {name: int(target) for _, name, target in read_listing(labels, labelled=True)}
    scored = {}
    for line, name, text in read_listing(prediction, labelled=False):
        try:
            scored[name] = float(text)
        except ValueError:
            raise DatasetError(prediction, f"score {text!r} is not a number", line) from None
        if not math.isfinite(scored[name]):
            raise DatasetError(prediction, f"score {text!r} for {name!r} is not finite", line)
    # Every labelled clip scored, every scored clip labelled: the file at fault named, with an example.
    for file, other, extra in ((labels, prediction, set(truth) - set(scored)), (prediction, labels, set(scored) - set(truth))):
        if extra:
            raise DatasetError(file, f"{len(extra)} of its clips {'have no score' if file == labels else 'are not labelled'} "
                               f"in {other} (e.g. {sorted(extra)[0]!r})")
    names = list(truth)
    y, s = np.array([truth[n] for n in names]), np.array([scored[n] for n in names])
    point = classification_metrics(y, s)
    low, high = bootstrap_auc_interval(y, s)
    tpr_low, tpr_high = tpr_intervals(y, s, (1e-3,))[1e-3]
    typer.echo(f"{prediction} against {labels}: {len(y)} clips ({int((y == 0).sum())} real, {int(y.sum())} fake)")
    typer.echo(f"AUC {point['auc']:.4f} (95% bootstrap interval {low:.4f} to {high:.4f})")
    typer.echo(f"TPR at FPR 1e-3 {point['tpr_fpr1e-3']:.4f} (95% bootstrap interval {tpr_low:.4f} to {tpr_high:.4f})")
    found = find_methods(labels.parent, methods)
    if found is None:
        typer.echo("per method: no methods file (give --methods FILE, or put methods.csv beside the labels)")
        return
    table, warnings = read_methods(found, truth)
    for w in warnings:
        typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
    seen = {m.name for m in load_dataset(root).methods.values()} if root is not None else None
    typer.echo(f"per method and fake modality (reals against those fakes; {found}):")
    typer.echo(f"{'slice':32} {'reals':>5} {'fakes':>5} {'AUC':>7}  95% interval")
    for sl in run_slices(names, y, s, table, n_boot=1000):
        unseen = seen is not None and sl.name.startswith("method.") and sl.name[7:] not in seen
        typer.echo(f"{sl.name:32} {sl.reals:5d} {sl.fakes:5d} {sl.auc:7.4f}  {sl.low:.4f} to {sl.high:.4f}"
                   + ("  (in no train or val clip)" if unseen else ""))
