"""Pack selection on out-of-fold scores: aligning the candidates' tables (and refusing ones that do not
line up), greedy selection with replacement under a cap and a latency budget, the nested estimate and
the group bootstrap."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.analysis import paired_auc_difference
from harness.crossval import FoldPlan, write_oof
from harness.data.dataset import SplitArrays
from harness.errors import BadInput
from harness.pack import Limits, OofMatrix, align, column_aucs, estimate_pack, read_oof, select


def write_run(folder: Path, names: list[str], labels: np.ndarray, scores: np.ndarray, folds: np.ndarray, *,
              groups: np.ndarray | None = None, splits: list[str] | None = None) -> Path:
    """oof.csv and folds.csv written by the cross-validation's own writer."""
    splits = splits or ["train"] * len(names)
    plan = FoldPlan(SplitArrays({}, np.asarray(labels), list(names)), [f"{sp}/{n}" for sp, n in zip(splits, names)],
                    np.arange(len(names)) if groups is None else np.asarray(groups), np.asarray(folds))
    folder.mkdir(parents=True, exist_ok=True)
    write_oof(folder, plan, np.asarray(scores, dtype=float))
    return folder


@pytest.fixture
def clips() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 60
    labels = np.repeat([0, 1], n // 2)
    return [f"c{i:03d}.mp4" for i in range(n)], labels, np.arange(n) % 3, rng.random((n, 2)) + 0.3 * labels[:, None]


# ------------------------------------------------------------------------------------------- reading

def test_tables_align_into_one_matrix_in_the_first_runs_order(tmp_path: Path, clips) -> None:
    names, labels, folds, scores = clips
    groups = np.arange(len(names)) // 2  # pairs of near-duplicates
    write_run(tmp_path / "a", names, labels, scores[:, 0], folds, groups=groups)
    back = np.arange(len(names))[::-1]  # the second run lists its clips the other way round
    write_run(tmp_path / "b", [names[i] for i in back], labels[back], scores[back, 1], folds[back], groups=groups[back])
    m = align([read_oof(tmp_path / "a", "run-a"), read_oof(tmp_path / "b", "run-b")])
    assert m.names == ("run-a", "run-b") and m.keys[0] == f"train/{names[0]}"
    np.testing.assert_allclose(m.scores, np.round(scores, 6))
    assert np.array_equal(m.labels, labels) and np.array_equal(m.folds, folds + 1) and np.array_equal(m.groups, groups)  # write_oof numbers folds 1..K


def test_a_run_with_other_clips_is_refused_in_one_line_naming_it(tmp_path: Path, clips) -> None:
    names, labels, folds, scores = clips
    write_run(tmp_path / "a", names, labels, scores[:, 0], folds)
    write_run(tmp_path / "b", names[:-3], labels[:-3], scores[:-3, 1], folds[:-3])
    with pytest.raises(BadInput) as e:
        align([read_oof(tmp_path / "a", "run-a"), read_oof(tmp_path / "b", "run-b")])
    message = str(e.value)
    assert "\n" not in message and message.startswith("run run-b: lacks 3 of the 60 clips of run run-a")
    assert f"e.g. train/{names[-3]}" in message


def test_a_run_with_other_folds_is_refused_with_a_count_and_an_example(tmp_path: Path, clips) -> None:
    names, labels, folds, scores = clips
    moved = folds.copy()
    moved[[4, 7]] = (moved[[4, 7]] + 1) % 3
    write_run(tmp_path / "a", names, labels, scores[:, 0], folds)
    write_run(tmp_path / "b", names, labels, scores[:, 1], moved)
    with pytest.raises(BadInput) as e:
        align([read_oof(tmp_path / "a", "A"), read_oof(tmp_path / "b", "B")])
    message = str(e.value)
    assert "\n" not in message and "run B: puts 2 of 60 clips in another fold than run A" in message
    assert f"train/{names[4]}: fold {moved[4] + 1}, not {folds[4] + 1}" in message  # oof.csv numbers folds 1..K


def test_a_clip_is_its_split_and_name(tmp_path: Path) -> None:
    labels = np.array([0, 1, 0, 1])
    write_run(tmp_path / "a", ["x.mp4", "x.mp4", "y.mp4", "z.mp4"], labels, np.array([.1, .9, .2, .8]),
              np.array([0, 1, 0, 1]), splits=["train", "val", "train", "val"])
    table = read_oof(tmp_path / "a", "A")
    assert table.keys == ("train/x.mp4", "val/x.mp4", "train/y.mp4", "val/z.mp4")


@pytest.mark.parametrize("edit, expected", [
    (lambda rows: rows.replace(",0.", ",oops0.", 1), "oof.csv line 2: score 'oops0."),
    (lambda rows: rows + rows.splitlines()[1] + "\n", "oof.csv lists train/c000.mp4 twice"),
    (lambda rows: rows.replace("target", "label"), "oof.csv lacks column(s) target"),
])
def test_a_malformed_oof_csv_is_named(tmp_path: Path, clips, edit, expected: str) -> None:
    names, labels, folds, scores = clips
    folder = write_run(tmp_path / "a", names, labels, scores[:, 0], folds)
    (folder / "oof.csv").write_text(edit((folder / "oof.csv").read_text()))
    with pytest.raises(BadInput, match="^run A: " + expected.replace("(", r"\(").replace(")", r"\)")):
        read_oof(folder, "A")


def test_folds_csv_that_disagrees_with_oof_csv_is_refused(tmp_path: Path, clips) -> None:
    names, labels, folds, scores = clips
    folder = write_run(tmp_path / "a", names, labels, scores[:, 0], folds)
    text = (folder / "folds.csv").read_text().splitlines()
    text[1] = text[1][:-1] + str((int(text[1][-1]) + 1) % 3)
    (folder / "folds.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(BadInput, match="run A: oof.csv puts 1 of 60 clips in another fold than folds.csv"):
        read_oof(folder, "A")


# ----------------------------------------------------------------------------------------- selection

def test_column_aucs_are_sklearns_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random((500, 4)) + 0.2 * y[:, None], 1)  # many ties
    assert column_aucs(s, y) == pytest.approx([roc_auc_score(y, s[:, j]) for j in range(4)], abs=1e-12)


def complementary(n: int = 2000, seed: int = 0) -> tuple[OofMatrix, int]:
    """Two experts, each sure about one half of the fakes and blind to the other, and a generalist a
    little better than either alone: the pair beats the best single."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    kind = rng.integers(0, 2, n)  # which expert sees this fake
    a = rng.random(n) + 2.0 * (y * (kind == 0))
    b = rng.random(n) + 2.0 * (y * (kind == 1))
    generalist = rng.random(n) + 0.4 * y
    return OofMatrix.from_arrays(np.stack([generalist, a, b], axis=1) / 3, y, np.arange(n) % 5,
                                 names=["generalist", "expert_a", "expert_b"]), 0


def test_a_complementary_pair_beats_the_best_single_member() -> None:
    m, generalist = complementary()
    sel = select(m, size=4)
    assert sel.best_single == generalist and max(sel.single_auc) == sel.single_auc[generalist]
    assert {1, 2} <= set(sel.members) and sel.auc > sel.single_auc[generalist] + 0.05
    weights = np.zeros(3)
    for step in sel.steps:  # the trace's AUC is the weighted mean's, as sklearn computes it
        weights[step.member] += 1
        assert step.auc == pytest.approx(roc_auc_score(m.labels, m.scores @ weights / weights.sum()), abs=1e-12)


def test_picking_with_replacement_weights_a_stronger_member_more() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 4000)
    strong = y + rng.normal(0, 1.0, len(y))
    weak = y + rng.normal(0, 1.5, len(y))  # inverse-variance weights 1 : 0.44, about 2 : 1
    m = OofMatrix.from_arrays(np.stack([weak, strong], axis=1), y, np.arange(len(y)) % 5)
    sel = select(m, size=6)
    assert sel.weights == {1: 2, 0: 1}
    assert sel.kept == 3 and sel.auc == max(s.auc for s in sel.steps) and len(sel.steps) == 6
    np.testing.assert_allclose(sel.combine(m.scores), (2 * strong + weak) / 3)


def test_a_cap_that_fits_one_member_but_not_two_stops_at_one_naming_the_cap() -> None:
    m, _ = complementary()
    params = [150e6, 120e6, 120e6]
    sel = select(m, size=4, limits=Limits(params=params, max_params=200e6))
    assert sel.members == (0,) and sel.weights == {0: 1} and sel.params == 150e6
    assert [s.member for s in sel.steps] == [0, 0, 0, 0]
    for step in sel.steps[1:]:
        assert {k.name for k in step.skipped} == {"expert_a", "expert_b"}
        assert all("270.00M parameters, over the 200M cap" in k.reason for k in step.skipped)
    # A callable counts the set (here: a shared part counted once) and sees each set once.
    calls: list[frozenset[int]] = []

    def counted(members: frozenset[int]) -> int:
        calls.append(members)
        return 90_000_000 + 60_000_000 * len(members)

    sel = select(m, size=4, limits=Limits(params=counted, max_params=200e6))
    assert sel.members == (0,) and sel.skipped[1] == "the pack would hold 210.00M parameters, over the 200M cap"
    assert len(calls) == len(set(calls))


def test_a_latency_budget_skips_the_slow_candidate() -> None:
    m, generalist = complementary()
    sel = select(m, size=4, limits=Limits(ms_per_clip=[40.0, 8.0, 9.0], max_ms_per_clip=20.0))
    assert generalist not in sel.members and set(sel.members) == {1, 2}
    assert sel.skipped[generalist] == "the pack would take 40.00 ms per clip, over the 20 ms budget"
    assert sel.ms_per_clip == 17.0 and sel.steps[0].skipped[0].name == "generalist"
    with pytest.raises(BadInput, match="needs each candidate's ms_per_clip"):
        select(m, limits=Limits(max_ms_per_clip=20.0))
    with pytest.raises(BadInput, match="params: 2 values for 3 candidates"):
        select(m, limits=Limits(params=[1, 2]))


def test_ties_go_to_a_member_already_in_the_pack_then_to_the_first_listed() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 100)
    s = rng.random(200) + 0.5 * y
    m = OofMatrix.from_arrays(np.stack([s, s, s], axis=1), y, np.arange(200) % 2)
    sel = select(m, size=3)
    assert [step.member for step in sel.steps] == [0, 0, 0] and sel.kept == 1 and sel.weights == {0: 1}
    assert select(m, size=3) == sel


# ------------------------------------------------------------------------------------------ estimate

def test_the_nested_estimate_sees_through_a_pack_of_noise() -> None:
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 200)
    m = OofMatrix.from_arrays(rng.random((400, 60)), y, rng.permutation(400) % 5)  # 60 candidates of pure noise
    est = estimate_pack(m, size=8, n_boot=200)
    assert est.optimistic_auc > 0.6 and est.best_single_auc > 0.55  # the selection fitted the noise
    assert abs(est.nested_auc - 0.5) < 0.07 and abs(est.nested_single_auc - 0.5) < 0.07
    assert est.optimistic_auc - est.nested_auc > 0.08


def test_the_nested_estimate_keeps_a_real_gain() -> None:
    m, _ = complementary()
    est = estimate_pack(m, size=4, n_boot=200)
    assert est.nested_auc > est.nested_single_auc + 0.05 and est.nested_auc == pytest.approx(est.optimistic_auc, abs=0.02)
    assert est.comparison.better and est.comparison.clips == len(m.labels)
    assert [f.fold for f in est.folds] == [0, 1, 2, 3, 4] and all(f.single == "generalist" for f in est.folds)
    record = est.to_dict()
    json.dumps(record, allow_nan=False)
    assert record["weights"] == est.weights and record["steps"][0]["name"] == "generalist"
    assert any("nested pack - best member" in line for line in est.summary())


def test_the_group_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1], 100)
    a, b = rng.random(200) + 0.6 * y, rng.random(200) + 0.4 * y
    as_clips = paired_auc_difference(y, a, b, n_boot=300, seed=1)
    assert paired_auc_difference(y, a, b, groups=np.arange(200), n_boot=300, seed=1) == as_clips
    # Five copies of every clip: a clip bootstrap takes them for 1000 independent clips, a group one does not.
    copies = np.repeat(np.arange(200), 5)
    by_clip = paired_auc_difference(y[copies], a[copies], b[copies], n_boot=300, seed=1)
    by_group = paired_auc_difference(y[copies], a[copies], b[copies], groups=copies, n_boot=300, seed=1)
    assert by_group.difference == by_clip.difference == pytest.approx(as_clips.difference)
    assert (by_group.high - by_group.low) > 1.8 * (by_clip.high - by_clip.low)
    assert by_group.high - by_group.low == pytest.approx(as_clips.high - as_clips.low, rel=0.25)


def test_estimate_refuses_a_single_fold_and_limits_nothing_fits() -> None:
    m, _ = complementary(200)
    with pytest.raises(BadInput, match="at least 2 folds"):
        estimate_pack(OofMatrix.from_arrays(m.scores, m.labels, np.zeros(200)), size=2)
    with pytest.raises(BadInput, match="no candidate fits the limits: step 1: every candidate breaks"):
        estimate_pack(m, size=2, limits=Limits(params=[3e8, 3e8, 3e8]))


def test_pack_study_takes_the_complete_trials_runs_of_a_cross_validated_study(tmp_path: Path) -> None:
    """`harness pack --study`: the candidates are the MLflow runs of the study's COMPLETE trials, as stored."""
    import optuna

    from harness.cli.pack import _study_runs
    from tests.tuning_helpers import write_spec

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = write_spec(tmp_path, "packed", study_extra="folds = 2", objectives='["oof_auc"]')
    study = optuna.create_study(study_name="packed", storage=url, direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for state, run_id in ((optuna.trial.TrialState.COMPLETE, "run-a"), (optuna.trial.TrialState.PRUNED, "run-b"),
                          (optuna.trial.TrialState.COMPLETE, "run-c")):
        study.add_trial(optuna.trial.create_trial(state=state, params={"lr": 0.005}, distributions={"lr": lr},
                                                  value=0.7 if state == optuna.trial.TrialState.COMPLETE else None,
                                                  intermediate_values={1: 0.6},
                                                  user_attrs={"mlflow_run_id": run_id}))
    ids, experiment = _study_runs(str(spec), url)
    assert ids == ["run-a", "run-c"] and experiment == "tune-packed"
    plain = write_spec(tmp_path, "plain")
    with pytest.raises(BadInput, match="study plain is not cross-validated"):
        _study_runs(str(plain), url)
    missing = tmp_path / "elsewhere" / "none.db"
    with pytest.raises(BadInput, match=f"no study database at {missing}"):
        _study_runs(str(spec), f"sqlite:///{missing}")
    assert not missing.parent.exists()  # refused, nothing made
