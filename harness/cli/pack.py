"""`harness pack`: one model from cross-validated runs (or a study's trials) chosen on out-of-fold scores
(`harness.pack`), members trained on the official split, recorded as a run of kind `pack`."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli import CacheOption, DataOption, app, resolve_data
from harness.errors import BadInput


@app.command()
def pack(
    study: Annotated[Optional[str], typer.Option("--study", help="A cross-validated study spec (a name in studies/ "
                                                 "or a TOML file): its finished trials are the candidates.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage of --study. Default: studies/NAME.db.")] = None,
    runs: Annotated[Optional[str], typer.Option("--runs", help="Candidates: cross-validation run ids (harness.kind=cv), "
                                                "comma separated, instead of --study.")] = None,
    data: DataOption = None,
    max_params: Annotated[float, typer.Option(help="Parameter cap on the packed module (thop count).")] = 200e6,
    max_ms_per_clip: Annotated[Optional[float], typer.Option(min=0, help="Budget: the members' summed model time "
                                                             "per clip on this machine's CPU, in ms.")] = None,
    size: Annotated[int, typer.Option(min=1, help="Greedy picks (with replacement); the best prefix is kept.")] = 10,
    soup: Annotated[bool, typer.Option("--soup", help="Also try weight soups of members of one architecture and "
                                       "pretrained start; kept only when not below the best member out of fold.")] = False,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment of the members and the pack. "
                                                      "Default: the study's, else harness.")] = None,
    cache: CacheOption = None,
) -> None:
    """Pack trials into one model: greedy selection on out-of-fold AUC under the cap, an honest nested
    estimate, the members trained on the official split (reusing finished train runs of the same
    settings and data), one MLflow run of kind pack."""
    from rich.table import Table

    from harness import tracking
    from harness.console import make_console
    from harness.pack import Limits, align, estimate_pack, member_ms_per_clip, pack_params, read_oof
    from harness.tracking.pack_run import candidates as find_candidates

    if (study is None) == (runs is None):
        raise BadInput("give exactly one of --study and --runs")
    refs, study_experiment = _study_runs(study, storage) if study is not None else ([r.strip() for r in runs.split(",")], None)
    if not (refs := [r for r in refs if r]):
        raise BadInput("--runs: no run ids given")
    experiment = experiment or study_experiment or "harness"
    data_dir = resolve_data(data)
    console = make_console()
    client = tracking.setup()
    with tempfile.TemporaryDirectory(prefix="harness-pack-") as tmp:
        found = find_candidates(client, refs, Path(tmp) / "oof")
        matrix = align([read_oof(c.folder, c.run_id) for c in found])
        configs = [c.config for c in found]
        ms = [member_ms_per_clip(cfg) for cfg in configs] if max_ms_per_clip is not None else None
        limits = Limits(params=pack_params(configs), max_params=max_params, ms_per_clip=ms, max_ms_per_clip=max_ms_per_clip)
        estimate = estimate_pack(matrix, size=size, limits=limits)
        label = {c.run_id: f"{c.run_id[:8]} {c.run_name}"[:34] for c in found}  # the report fits 80 columns
        table = Table(title="pack selection (greedy, with replacement)", title_justify="left")
        for col in ("step", "member added", "OOF AUC", "params", "kept"):
            table.add_column(col, justify="left" if col == "member added" else "right")
        for step in estimate.selection.steps:
            table.add_row(str(step.step), label[step.name], f"{step.auc:.4f}", f"{step.params / 1e6:.2f}M",
                          "yes" if step.step <= estimate.selection.kept else "")
        console.print(table)
        for line in estimate.summary(label):
            console.print(line, highlight=False)
        picks = [(next(c for c in found if c.run_id == name), weight) for name, weight in estimate.weights.items()]
        run_id = _build_and_record(client, picks, estimate, data_dir=data_dir, experiment=experiment, cache=cache,
                                   max_params=max_params, folder=Path(tmp) / "pack", soup=matrix if soup else None,
                                   params={"pack.size": size, "pack.max_params": max_params,
                                           "pack.max_ms_per_clip": max_ms_per_clip, "pack.soup": soup,
                                           "pack.study": study or ""})
    typer.echo(f"pack run id: {run_id}")
    typer.echo(f"next: harness submit --run-id {run_id}" + (f" --data {data}" if data else ""))


def _study_runs(study: str, storage: str | None) -> tuple[list[str], str]:
    """The MLflow runs of a cross-validated study's COMPLETE trials (each a `cv` run), and its experiment."""
    from harness import tuning

    url = tuning.normalise_storage(storage) if storage is not None else None
    spec = tuning.load_spec(study, check_models=False)
    if not spec.folds:
        raise BadInput(f"study {spec.name} is not cross-validated (no folds in [study]): a pack is chosen on "
                       "out-of-fold scores")
    rows = tuning.study_rows(spec, storage=tuning.check_storage(url))
    if not (ids := [r.run_id for r in rows if r.state == "COMPLETE" and r.run_id]):
        raise BadInput(f"study {spec.name} has no complete trial to pack yet")
    return ids, spec.experiment


def _build_and_record(client, picks, estimate, *, data_dir: Path, experiment: str, cache: Path | None,  # noqa: ANN001
                      max_params: float, folder: Path, soup, params: dict) -> str:  # noqa: ANN001 - OofMatrix or None
    """Train (or reuse) each member on the official split, soup them when asked, pack, check, score val, record."""
    from functools import partial

    import numpy as np

    from harness import tracking
    from harness.checkpoint import PACK_WEIGHTS
    from harness.cli.prepare import run_prepare
    from harness.cli.training import run_train
    from harness.config import settings_digest
    from harness.models import ModelRuleError
    from harness.pack import MemberSpec, PackedModel, check_pack
    from harness.predict import PackPredictor
    from harness.run import data_fingerprint
    from harness.submit.scoring import score_test_split
    from harness.tracking import tags as T
    from harness.tracking.pack_run import Member, record_pack, reusable_train_run

    ready_for = partial(run_prepare, data_dir, cache=cache, workers=2, quiet=True, splits=("train", "val"))
    rows = []
    for candidate, weight in picks:
        ready = ready_for(candidate.config)
        run_id = reusable_train_run(client, settings=settings_digest(ready.config),
                                    data=data_fingerprint(ready.dataset, ready.config))
        if run_id is None:
            typer.echo(f"training member {candidate.run_id[:8]} ({candidate.run_name}) on the official split", err=True)
            run_id = run_train(ready, experiment=experiment)
        else:
            typer.echo(f"member {candidate.run_id[:8]}: reusing train run {run_id} (same settings and data)", err=True)
        found = tracking.resolve_run(client, run_id)
        rows.append((candidate, MemberSpec(run_id, weight, found.config), found.weights))
    notes: list[str] = []
    if soup is not None:
        from harness.cli.pack_soup import apply_soups

        folder.mkdir(parents=True, exist_ok=True)
        rows, notes = apply_soups(client, rows, soup, ready_for, lambda line: typer.echo(line, err=True), folder)
        if not notes:
            notes = ["soup: no two members share an architecture and a start; nothing to soup"]
            typer.echo(notes[0], err=True)
    specs, checkpoints = [spec for _, spec, _ in rows], [path for _, _, path in rows]
    members = [Member(spec.run_id, spec.weight, c.run_id, client.get_run(spec.run_id.split("+")[0]).info.experiment_id)
               for c, spec, _ in rows]
    report = check_pack([s.config for s in specs], max_params=max_params)
    if not report.ok:
        raise ModelRuleError(report.summary())
    PackedModel.build(specs, checkpoints).save(folder)
    ds = ready.dataset
    val = ds.split("val")
    names = [s.name for s in val]
    scores, _ = score_test_split(ds, PackPredictor(folder / PACK_WEIGHTS), names, cache_root=ready.cache_root,
                                 workers=2, on_progress=None, split="val")
    labels = np.array([s.label for s in val], dtype=np.int64)
    tags = {T.DATA_PATH: str(ds.root), T.DATA_FINGERPRINT: data_fingerprint(ds, specs[0].config)}
    run_id, line = record_pack(client, experiment=experiment, folder=folder, estimate=estimate, members=members,
                               val=(names, labels, np.asarray(scores)), compliance=report, tags=tags, params=params,
                               notes=notes)
    typer.echo(f"pack: {line}", err=True)
    return run_id
