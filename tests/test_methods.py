"""Method labels (harness.data.methods), per-slice scores (harness.slices), leave-method-out folds and
`harness score` on files: fast, no training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.crossval import clip_groups, method_groups, unseen_method_metrics
from harness.data.folds import assign_folds, group_ids
from harness.data.labels import Dataset, Sample, load_dataset
from harness.data.methods import Method, read_methods
from harness.errors import BadInput
from harness.slices import duration_groups, run_slices, slice_metrics, worst, worst_from_metrics

LABELS = {"r1.mp4": 0, "r2.mp4": 0, "f1.mp4": 1, "f2.mp4": 1}


def _methods(tmp_path: Path, text: str) -> tuple[dict, list[str]]:
    path = tmp_path / "methods.csv"
    path.write_text(text)
    return read_methods(path, LABELS)


@pytest.mark.parametrize(("text", "expected"), [
    ("name,method\n", "methods.csv:1: header must be 'video_name,method' or 'video_name,method,modality'"),
    ("", "methods.csv:1: header must be"),
    ("video_name,method\nf1.mp4\n", "methods.csv:2: expected video_name,method with a name and a method"),
    ("video_name,method\nf1.mp4,\n", "methods.csv:2: expected video_name,method"),
    ("video_name,method\nf1.mp4,a\nf1.mp4,b\n", "methods.csv:3: duplicate name 'f1.mp4' (first on line 2)"),
    ("video_name,method,modality\nf1.mp4,a,sound\n", "methods.csv:2: modality must be one of audio, video, both"),
    ("video_name,method\nf1.mp4,real\n", "methods.csv:2: 'f1.mp4' is labelled fake, its method cannot be 'real'"),
    ("video_name,method\nr1.mp4,vocoder\n", "methods.csv:2: 'r1.mp4' is labelled real, its method must be 'real'"),
])
def test_bad_methods_files_are_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(BadInput) as info:
        _methods(tmp_path, text)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_methods_file_read_with_counts_of_what_matches_nothing(tmp_path: Path) -> None:
    methods, warnings = _methods(tmp_path, "video_name,method,modality\nr1.mp4,real,\nf1.mp4,vocoder,audio\n"
                                           "other.mp4,vocoder,audio\nmore.mp4,x,\n")
    assert methods == {"r1.mp4": Method("real", ""), "f1.mp4": Method("vocoder", "audio")}
    assert warnings == [f"{tmp_path / 'methods.csv'}: 2 of its 4 names match no clip of the dataset, ignored",
                        f"{tmp_path / 'methods.csv'}: 1 of 2 fakes have no method (left out of the per-method slices)"]


def test_dataset_loads_its_methods_csv_or_the_given_file(small_dataset: Path, tmp_path: Path) -> None:
    (small_dataset / "methods.csv").write_text("video_name,method\ntrain1.mp4,swap\ntrain3.mp4,tts\nval1.mp4,swap\n")
    assert load_dataset(small_dataset).methods["train3.mp4"] == Method("tts", "")
    given = tmp_path / "m.csv"
    given.write_text("video_name,method\ntrain1.mp4,other\n")
    ds = load_dataset(small_dataset, given)
    assert ds.methods == {"train1.mp4": Method("other", "")} and any("3 fakes have no method" in w for w in ds.warnings)
    with pytest.raises(BadInput, match="--methods .*nope.csv: no such file"):
        load_dataset(small_dataset, tmp_path / "nope.csv")


def test_slices_match_sklearn_on_each_subset() -> None:
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(60)]
    labels = np.array([0] * 30 + [1] * 30)
    kinds = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    scores = rng.random(60) + np.r_[np.zeros(30), [0.6] * 10, [0.1] * 10, [0.3] * 10]
    methods = {n: Method(k, "audio" if k != "b" else "video") for n, k in zip(names[30:], kinds)}
    got = {s.name: s for s in run_slices(names, labels, scores, methods)}
    assert set(got) == {"method.a", "method.b", "method.c", "modality.audio", "modality.video"}
    for name, pick in (("method.b", slice(40, 50)), ("modality.audio", np.r_[30:40, 50:60])):
        fakes = scores[pick]
        expected = roc_auc_score([0] * 30 + [1] * len(fakes), np.r_[scores[:30], fakes])
        assert got[name].auc == pytest.approx(expected) and (got[name].reals, got[name].fakes) == (30, len(fakes))
        assert got[name].low <= got[name].auc <= got[name].high
    assert worst(list(got.values())).name == "method.b"
    back = worst_from_metrics({**slice_metrics(got.values()), "summary/best_val_auc": 0.1})
    assert (back.name, back.auc, back.low) == ("method.b", got["method.b"].auc, got["method.b"].low)


def test_without_methods_the_slices_are_duration_buckets_scored_within_each() -> None:
    rng = np.random.default_rng(1)
    names = [f"c{i}" for i in range(80)]
    labels = np.tile([0, 1], 40)
    lengths = np.r_[np.full(40, 1.5), np.full(30, 6.0), np.full(10, 20.0)]
    scores = rng.random(80) + labels * np.r_[np.full(40, 0.8), np.full(30, 0.1), np.full(10, 0.5)]
    seconds = {n: float(x) for n, x in zip(names, lengths)} | {"unknown": 3.0}
    seconds.pop("c79")  # a clip of unknown length is in no bucket
    got = {s.name: s for s in run_slices(names, labels, scores, {}, seconds=seconds)}
    assert set(got) == {"duration.0-2s", "duration.4-8s", "duration.16s-up"}
    for name, pick in (("duration.0-2s", slice(0, 40)), ("duration.4-8s", slice(40, 70)), ("duration.16s-up", slice(70, 79))):
        y, s = labels[pick], scores[pick]
        assert got[name].auc == pytest.approx(roc_auc_score(y, s))  # the bucket's reals against its fakes
        assert (got[name].reals, got[name].fakes) == (int((y == 0).sum()), int(y.sum()))
    assert worst(list(got.values())).name == "duration.4-8s"
    assert "slice/duration.16s-up/auc" in slice_metrics(got.values())
    # known methods come first: a dataset with them is sliced by method, never by length
    methods = {n: Method("m", "audio") for n, y in zip(names, labels) if y == 1}
    assert {s.name for s in run_slices(names, labels, scores, methods, seconds=seconds)} == {"method.m", "modality.audio"}
    assert duration_groups(names, {}) == {}


def test_the_audio_cache_records_each_clips_decoded_length(small_dataset: Path, tmp_path: Path) -> None:
    from harness.config import RunConfig
    from harness.preflight import preflight

    ready = preflight(small_dataset, RunConfig(), cache_root=tmp_path / "cache", workers=1)
    lengths = ready.durations()
    assert sorted(lengths) == sorted(f"{s}{i}.mp4" for s, n in (("train", 4), ("val", 2)) for i in range(n))
    assert all(abs(x - 1.0) < 0.05 for x in lengths.values()), lengths  # the clips are 1 s long
    assert set(ready.durations(("val",))) == {"val0.mp4", "val1.mp4"}


def _dataset(methods_per_fake: list[str], reals: int) -> Dataset:
    train = [Sample(f"f{i}.mp4", "train", Path("x"), 1) for i in range(len(methods_per_fake))]
    train += [Sample(f"r{i}.mp4", "train", Path("x"), 0) for i in range(reals)]
    methods = {f"f{i}.mp4": Method(m, "audio") for i, m in enumerate(methods_per_fake)}
    return Dataset(root=Path("ds"), track="video", samples={"train": train, "val": []}, methods=methods)


def test_leave_method_out_folds_never_train_on_the_method_they_validate_on() -> None:
    fakes = [m for m in ("a", "b", "c", "d", "e") for _ in range(4)]
    ds = _dataset(fakes, reals=20)
    near = {"train/r0.mp4": 7, "train/f0.mp4": 7, "train/r1.mp4": 8, "train/r2.mp4": 8}  # r0 is a copy of fake f0
    groups = method_groups(ds, near)
    keys = [f"train/{s.name}" for s in ds.split("train")]
    labels = np.array([s.label for s in ds.split("train")])
    folds = assign_folds(labels, group_ids(keys, groups), 3, seed=0)
    method_of = {f"train/f{i}.mp4": m for i, m in enumerate(fakes)}
    for fold in range(3):
        held = {method_of[k] for k, f in zip(keys, folds) if f == fold and k in method_of}
        trained = {method_of[k] for k, f in zip(keys, folds) if f != fold and k in method_of}
        assert held and not held & trained
        assert {labels[i] for i in np.flatnonzero(folds == fold)} == {0, 1}
    fold_of = dict(zip(keys, folds))
    assert fold_of["train/r0.mp4"] == fold_of["train/f0.mp4"] and fold_of["train/r1.mp4"] == fold_of["train/r2.mp4"]


def test_unseen_method_metrics_per_held_out_method() -> None:
    from harness.crossval import FoldPlan

    class Data:  # the two fields the metric reads
        names = ["r0", "r1", "fa", "r2", "r3", "fb"]
        labels = np.array([0, 0, 1, 0, 0, 1])

    plan = FoldPlan(data=Data(), keys=[], groups=np.arange(6), folds=np.array([0, 0, 0, 1, 1, 1]))
    scores = np.array([0.1, 0.5, 0.4, 0.2, 0.3, 0.9])
    m = unseen_method_metrics(plan, scores, {"fa": Method("a", ""), "fb": Method("b", "")})
    assert (m["unseen/a/auc"], m["unseen/b/auc"]) == (0.5, 1.0)  # each against its own fold's reals only
    assert (m["unseen_auc_mean"], m["unseen_auc_min"]) == (0.75, 0.5)


def test_group_by_method_refused_without_methods_or_with_fewer_methods_than_folds(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="0 fake method"):
        clip_groups(_dataset(["a"] * 2, 2).__class__(root=Path("ds"), track="video", samples={}), "method",
                    cache_root=tmp_path, folds=2)
    with pytest.raises(BadInput, match=r"2 fake method\(s\) in train and val, fewer than --folds 3"):
        clip_groups(_dataset(["a", "b", "b"], 3), "method", cache_root=tmp_path, folds=3)


def test_unseen_objectives_need_leave_method_out_studies(tmp_path: Path) -> None:
    from harness.tuning.spec import SpecError, load_spec

    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nname = "x"\nobjectives = ["unseen_auc_min"]\nfolds = 2\n[space]\nlr = [1e-4, 1e-2]\n')
    with pytest.raises(SpecError, match="unseen_auc_min.*group_by = \"method\""):
        load_spec(spec)
    spec.write_text(spec.read_text().replace("folds = 2", 'folds = 2\ngroup_by = "method"'))
    assert load_spec(spec).objectives == ("unseen_auc_min",)


def test_score_a_file_against_given_labels_and_methods(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    (tmp_path / "labels.csv").write_text("video_name,target\n" + "".join(f"r{i},0\nf{i},1\n" for i in range(6)))
    (tmp_path / "methods.csv").write_text("video_name,method\n" + "".join(f"f{i},{'ab'[i % 2]}\n" for i in range(6)))
    rows = "".join(f"r{i},{i / 10}\nf{i},{0.25 + i / 10 if i % 2 else 0.9}\n" for i in range(6))
    (tmp_path / "p.csv").write_text("video_name,score\n" + rows)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_:
            main(["score", *args])
        out = capsys.readouterr()
        return exit_.value.code, out.out, out.err

    code, out, _ = run(str(tmp_path / "p.csv"), "--labels", str(tmp_path / "labels.csv"))
    reals, fakes = [i / 10 for i in range(6)], [0.25 + i / 10 if i % 2 else 0.9 for i in range(6)]
    assert code == 0 and "12 clips (6 real, 6 fake)" in out and "TPR at FPR 1e-3" in out
    assert f"AUC {roc_auc_score([0] * 6 + [1] * 6, reals + fakes):.4f} (95% bootstrap interval" in out
    b = roc_auc_score([0] * 6 + [1] * 3, reals + fakes[1::2])
    assert any(line.split()[:4] == ["method.a", "6", "3", "1.0000"] for line in out.splitlines())
    assert any(line.split()[:4] == ["method.b", "6", "3", f"{b:.4f}"] for line in out.splitlines())
    (tmp_path / "p.csv").write_text("video_name,score\n" + rows.replace("r0,0.0", "r0,nan"))
    code, _, err = run(str(tmp_path / "p.csv"), "--labels", str(tmp_path / "labels.csv"))
    assert code == 2 and "p.csv:2: score 'nan' for 'r0' is not finite" in err
    (tmp_path / "p.csv").write_text("video_name,score\n" + rows + "x,0.5\n")
    code, _, err = run(str(tmp_path / "p.csv"), "--labels", str(tmp_path / "labels.csv"))
    assert code == 2 and "p.csv: 1 of its clips are not labelled in" in err and "'x'" in err
    (tmp_path / "p.csv").write_text("video_name,score\n" + rows.replace("r0,0.0", "r0,high"))
    code, _, err = run(str(tmp_path / "p.csv"), "--labels", str(tmp_path / "labels.csv"))
    assert code == 2 and "p.csv:2: score 'high' is not a number" in err
