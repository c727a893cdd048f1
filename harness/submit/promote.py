"""Promotion of a run, in an order that writes nothing for a refused run or dataset: 1. refuse (`checks`,
then the `gate`, whose warnings refuse under `strict`); 2. score every template row (`scoring`); 3. write
prediction.csv (validated first) and fallbacks.csv; 4. the bundle and its archive; 5. register the bundle as
a pyfunc model version (`champion` only when earned), its files under the run's `submission/`, `promoted.*`.
Steps 3 and 4 write one staging folder that replaces OUT whole (`output`): never two runs mixed.

A run already registered under the model name is not registered again (steps 1 to 4 run as always): the
champion's own run leaves the alias where it is; a run registered as another version reuses that version
(the newest if several), which gets the alias only when the gate says it earned it now. The reused version
keeps the model first registered with it (a resubmit with another --tta changes the bundle, not the version).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import bundle_format as F
from harness import paths, tracking
from harness.bundle.build import build_bundle, write_archive
from harness.bundle.card import now
from harness.bundle.source import check_commit
from harness.predict import PackPredictor, Predictor
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
    champion: str | None = None  # the version alias `champion` names after the submit
    champion_moved: bool = False  # this submit moved the alias (to `model_version`)
    reused: bool = False  # the run already was `model_version`: nothing new was registered
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    gate: GateReport | None = None


def submit(run_id: str, *, data_dir: Path, out_dir: Path | None, cache_root: Path, tta: int = 1,
           model_name: str | None = None, register: bool = True, bundle: bool = True, workers: int = 2,
           device: str = "cpu", on_progress: Callable[[int, int], None] | None = None, strict: bool = False,
           on_gate: Callable[[GateReport], None] | None = None) -> SubmitReport:
    """Promote `run_id` (an id, `best` or `last`) on `data_dir`'s test split into `out_dir` (None: submissions/<run
    id>); `tta`: circular time shifts averaged a clip; `on_gate` sees the gate's report as soon as it is known.
    Raises NotFound, BadInput, BundleError (the run's commit unavailable), SubmitError (ValidationError: a CSV
    failed its checks), GateRefused (`strict`), DatasetError, or an OSError naming OUT (left as it was)."""
    start = time.perf_counter()
    client = tracking.setup()
    found = tracking.resolve_run(client, run_id, check=check_promotable)
    run, run_id, cfg, weights = found.run, found.run_id, found.config, found.weights
    if bundle:
        check_commit(run)  # the code the bundle must carry: refused now rather than after scoring
    out = Path(out_dir) if out_dir is not None else paths.project_root() / "submissions" / run_id
    output.check_folder(out)
    if found.pack:
        from harness.pack.model import read_members
    members = read_members(weights.parent) if found.pack else ()
    compliance = check_compliance(cfg, run_id, pack=[m.config for m in members])
    test = check_dataset(data_dir, cfg, run)
    model_name = model_name or registry.default_model_name(test.dataset.root)
    gate = evaluate_gate(client, run, ds=test.dataset, model_name=model_name, cache_root=cache_root, workers=workers)
    if on_gate is not None:
        on_gate(gate)
    if strict:
        enforce(gate, run_id)

    predictor = (PackPredictor(weights, device=device, source=f"run {run_id}") if found.pack
                 else Predictor(cfg, weights, tta=tta, device=device, source=f"run {run_id}"))
    scores, fallbacks = score_test_split(test.dataset, predictor, test.names, cache_root=cache_root,
                                         workers=workers, on_progress=on_progress)

    with output.staged(out) as stage:
        write_prediction(stage / output.PREDICTION, test.names, scores, shown_as=out / output.PREDICTION)
        write_fallbacks(stage / output.FALLBACKS, fallbacks, predictor.fallback)
        if bundle:
            build_bundle(stage / F.FOLDER, run=run, cfg=cfg, weights=weights, predictor=predictor,
                         compliance=compliance, fallbacks=len(fallbacks), test_rows=len(test.names), gate=gate.to_dict())
            write_archive(stage / F.FOLDER, stage / F.ARCHIVE)
        output.write_marker(stage, run_id, created=now(), rows=len(test.names), fallbacks=len(fallbacks))
    report = SubmitReport(run_id=run_id, out=out, csv=out / output.PREDICTION, rows=len(test.names), fallbacks=fallbacks,
                          fallback_score=predictor.fallback, tta=tta, warnings=test.warnings, gate=gate,
                          bundle=out / F.FOLDER if bundle else None, archive=out / F.ARCHIVE if bundle else None)
    if register:
        _register(client, run, report, model_name, gate)
    report.seconds = time.perf_counter() - start
    return report


def _register(client: Any, run: Any, report: SubmitReport, model_name: str, gate: GateReport) -> None:
    """Register the model (the bundle as a pyfunc model) unless the run already is a version of it, move
    `champion` when earned, record the promotion."""
    report.model_name = model_name
    if (existing := registry.registered_version(client, model_name, report.run_id)) is not None:
        report.reused, report.model_version = True, existing
        report.champion, report.champion_moved = registry.reuse_version(client, model_name, existing, withheld=gate.withheld)
    else:
        _register_new(client, run, report, model_name, gate)
        report.champion_moved = gate.withheld is None
    bundled = [report.bundle / F.MANIFEST, report.bundle / F.MODEL_CARD] if report.bundle is not None else []
    files = [report.csv, report.out / output.FALLBACKS, *bundled]
    registry.record_promotion(client, report.run_id, model=model_name, version=report.model_version,
                              fallbacks=len(report.fallbacks), at=now(), files=files)


def _register_new(client: Any, run: Any, report: SubmitReport, model_name: str, gate: GateReport) -> None:
    """A new version: the bundle logged as a pyfunc model (else the run's checkpoint folder), `champion` when earned."""
    source = None
    if report.bundle is not None:
        from harness.tracking.pyfunc import log_pyfunc_model

        with tempfile.TemporaryDirectory(prefix="harness-pyfunc-") as tmp:  # only config.json and the weights travel
            for name in F.PYFUNC_FILES + ((F.PACK_TABLE,) if (report.bundle / F.PACK_TABLE).is_file() else ()):
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(report.bundle / name, Path(tmp) / name)
            source = log_pyfunc_model(client, report.run_id, code=F.PYFUNC_CODE, artifacts={F.PYFUNC_ARTIFACT: Path(tmp)},
                                      columns=(F.PYFUNC_INPUT, F.PYFUNC_OUTPUT), requirements=report.bundle / F.REQUIREMENTS)
    v = gate.values.get("val", {})
    interval = (v["auc_low"], v["auc_high"]) if all(math.isfinite(v.get(k, math.nan)) for k in ("auc_low", "auc_high")) else None
    report.model_version = registry.register_model(client, run, model_name, source=source, withheld=gate.withheld,
                                                   interval=interval)
    report.champion = report.model_version if gate.withheld is None else (gate.values.get("champion") or {}).get("version")
