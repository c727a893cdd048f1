"""Promotion of a run: refuse -> score -> CSV -> bundle -> register.

`submit(run_id, data_dir=..., out_dir=...)` in that order, so that nothing is written for a run or a
dataset that is refused:

1. refuse (`checks`): a run that did not finish, has no checkpoint or breaks the compliance gates;
   a dataset of the other track or without test clips; then the promotion gate (`gate`): the run's
   intervals, how many runs it was picked from, the dataset's audit findings, the paired comparison
   with the champion; its warnings refuse the run under `strict`;
2. score (`scoring`): every template row, in its order, from the feature cache; clips that cannot
   be used score the fallback and are listed;
3. CSV (`prediction_csv`): prediction.csv validated against the template before it exists, and
   fallbacks.csv;
4. bundle (`harness.bundle.build`): the bundle folder and its archive;
5. register (`harness.tracking.registry`): a new model version aliased `champion`, the submission's
   files logged under the run's `submission/` artifacts, the run tagged `promoted.*`.

Steps 3 and 4 write into one staging folder that is committed into OUT as a whole, with a
completion marker naming the run (`output`): a killed submit never leaves OUT mixing two runs.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths, tracking
from harness.bundle.build import build_bundle, write_archive
from harness.bundle.card import now
from harness.bundle.format import ARCHIVE, FOLDER, MANIFEST, MODEL_CARD, REQUIREMENTS
from harness.predict import Predictor
from harness.submit import output
from harness.submit.checks import check_compliance, check_dataset, check_promotable
from harness.submit.gate import GateReport, enforce, evaluate_gate
from harness.submit.prediction_csv import write_fallbacks, write_prediction
from harness.submit.scoring import Fallback, score_test_split
from harness.tracking import registry


@dataclass
class SubmitReport:
    """What `submit` did: where the files are, the fallbacks, the registered version."""

    run_id: str
    out: Path
    csv: Path
    rows: int
    fallbacks: list[Fallback]
    fallback_score: float
    tta: int
    bundle: Path | None = None
    archive: Path | None = None
    model_name: str | None = None
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    gate: GateReport | None = None


def submit(
    run_id: str,
    *,
    data_dir: Path,
    out_dir: Path | None,
    cache_root: Path,
    tta: int = 1,
    model_name: str | None = None,
    register: bool = True,
    bundle: bool = True,
    workers: int = 2,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    strict: bool = False,
    on_gate: Callable[[GateReport], None] | None = None,
) -> SubmitReport:
    """Promote `run_id` (an id, `best` or `last`); see the module docstring.

    Args:
        run_id: the run to promote.
        data_dir: the dataset whose test split (or template) is scored.
        out_dir: the submission folder; None: submissions/<run id> in the project.
        cache_root: the feature cache.
        tta: circular time shifts averaged per clip (audio models).
        model_name: registry name; None: `harness-<dataset folder>`.
        register: register the model, move `champion`, tag the run.
        bundle: write bundle/ and bundle.tar.gz.
        workers, device, on_progress: feature extraction processes, scoring device, progress callback.
        strict: refuse the run when the promotion gate warns (GateRefused, exit 1), before anything is written.
        on_gate: called with the gate's report as soon as it is known (the CLI prints it).

    Raises:
        NotFound: an unknown run, or one without a checkpoint.
        BadInput: text that cannot be a run id.
        SubmitError: a refused run or dataset (ValidationError, exit 1: a CSV that fails its checks).
        GateRefused: `strict` and the gate warned (exit 1), every reason named.
        DatasetError: a malformed dataset or template.
        OSError: an I/O error writing OUT (named); OUT is left as it was.
    """
    start = time.perf_counter()
    client = tracking.setup()
    run = registry.find_run(client, run_id)
    run_id = run.info.run_id
    check_promotable(run)
    cfg, weights = tracking.load_run_config(client, run_id)
    compliance = check_compliance(cfg, run_id)
    test = check_dataset(data_dir, cfg, run)
    model_name = model_name or registry.default_model_name(test.dataset.root)
    gate = evaluate_gate(client, run, ds=test.dataset, model_name=model_name, cache_root=cache_root, workers=workers)
    if on_gate is not None:
        on_gate(gate)
    if strict:
        enforce(gate, run_id)

    predictor = Predictor(cfg, weights, tta=tta, device=device, source=f"run {run_id}")
    scores, fallbacks = score_test_split(test.dataset, predictor, test.names, cache_root=cache_root,
                                         workers=workers, on_progress=on_progress)

    out = Path(out_dir) if out_dir is not None else paths.project_root() / "submissions" / run_id
    with output.staged(out) as stage:
        write_prediction(stage / output.PREDICTION, test.names, scores, shown_as=out / output.PREDICTION)
        write_fallbacks(stage / output.FALLBACKS, fallbacks, predictor.fallback)
        if bundle:
            build_bundle(stage / FOLDER, run=run, cfg=cfg, weights=weights, predictor=predictor,
                         compliance=compliance, fallbacks=len(fallbacks), test_rows=len(test.names), gate=gate.to_dict())
            write_archive(stage / FOLDER, stage / ARCHIVE)
        output.write_marker(stage, run_id, created=now(), rows=len(test.names), fallbacks=len(fallbacks))
    report = SubmitReport(run_id=run_id, out=out, csv=out / output.PREDICTION, rows=len(test.names),
                          fallbacks=fallbacks, fallback_score=predictor.fallback, tta=tta,
                          warnings=test.warnings, gate=gate)
    if bundle:
        report.bundle, report.archive = out / FOLDER, out / ARCHIVE

    if register:
        report.model_name = model_name
        source = None
        if report.bundle is not None:  # the champion as a real MLflow model (pyfunc from the bundle)
            from harness.tracking.pyfunc import log_pyfunc_model

            source = log_pyfunc_model(client, run_id, report.bundle, requirements=report.bundle / REQUIREMENTS)
        report.model_version = registry.register_model(client, run, report.model_name, source=source)
        files = [report.csv, out / output.FALLBACKS]
        if report.bundle is not None:
            files += [report.bundle / MANIFEST, report.bundle / MODEL_CARD]
        registry.record_promotion(client, run_id, model=report.model_name, version=report.model_version,
                                  fallbacks=len(fallbacks), at=now(), files=files)
    report.seconds = time.perf_counter() - start
    return report
