"""The packed model: one module whose forward is the weighted mean of its members' probabilities (as
`harness.predict` scores each member), saved as one safetensors file and a member table, loaded back
bit-exact without unpickling, and counted and checked as a whole."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.config import AudioFeatures, RunConfig, TrainConfig, VideoFeatures
from harness.errors import BadInput, NotFound
from harness.modalities import build_model, check_run
from harness.pack import Limits, MemberSpec, OofMatrix, PackedModel, check_pack, count_pack, example_inputs, pack_params, select
from harness.predict import Predictor

TINY = dict(pretrained=False, device="cpu")
WHOLE = RunConfig(modality="audio", audio=AudioFeatures(width=64),
                  train=TrainConfig(backbone="test_efficientnet.r160_in1k", **TINY))
# Windowed log-mels, scored by their most confident window; and a two-logit (cross-entropy) face model.
WINDOWS = RunConfig(modality="audio", audio=AudioFeatures(window_seconds=0.64, eval_windows=3),
                    train=TrainConfig(backbone="test_efficientnet.r160_in1k", aggregate="max", **TINY))
FACES = RunConfig(modality="video", video=VideoFeatures(frames=2, size=32),
                  train=TrainConfig(backbone="test_byobnet.r160_in1k", loss="ce", **TINY))
FUSION = RunConfig(modality="fusion", audio=AudioFeatures(width=64), video=VideoFeatures(frames=2, size=32),
                   train=TrainConfig(backbone="test_efficientnet.r160_in1k", **TINY))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint per member settings: random weights, with the heads moved off their near-zero init
    so that the members disagree."""
    folder = tmp_path_factory.mktemp("members")
    out = {}
    for i, (name, cfg) in enumerate({"whole": WHOLE, "windows": WINDOWS, "faces": FACES, "fusion": FUSION}.items()):
        torch.manual_seed(i)
        model = build_model(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:  # linear heads
                    p.normal_(0, 0.5)
        out[name] = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out[name]))
    return out


def inputs(configs: list[RunConfig], clips: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.integers(0, 256, size=v.shape, dtype=np.uint8) for k, v in batch.items()}
            for batch in example_inputs(configs, clips=clips)]


def test_the_pack_scores_the_weighted_mean_of_its_members_probabilities(checkpoints: dict[str, Path]) -> None:
    members = [("whole", WHOLE, 2), ("windows", WINDOWS, 1), ("faces", FACES, 3), ("fusion", FUSION, 1)]
    specs = [MemberSpec(f"run-{name}", w, cfg) for name, cfg, w in members]
    pack = PackedModel.build(specs, [checkpoints[name] for name, _, _ in members]).eval()
    batches = inputs([cfg for _, cfg, _ in members], clips=5)
    with torch.inference_mode():
        got = pack([{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]).numpy()
    alone = np.stack([Predictor(cfg, checkpoints[name]).score_inputs(batch)
                      for (name, cfg, _), batch in zip(members, batches)], axis=1)
    weights = np.array([w for _, _, w in members], dtype=float)
    assert got.dtype == np.float64 and got.shape == (5,)
    np.testing.assert_allclose(got, alone @ weights / weights.sum(), rtol=0, atol=1e-7)
    assert alone.std(axis=0).max() > 1e-3 and alone.std(axis=1).min() > 1e-4  # clips and members differ


def test_save_and_load_are_bit_exact_and_never_unpickle(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    specs = [MemberSpec("run-a", 2, WHOLE), MemberSpec("run-b", 1, FACES), MemberSpec("run-c", 1, FUSION)]
    pack = PackedModel.build(specs, [checkpoints["whole"], checkpoints["faces"], checkpoints["fusion"]]).eval()
    folder = pack.save(tmp_path / "pack")
    assert sorted(p.name for p in folder.iterdir()) == ["pack.json", "pack.safetensors"]
    table = json.loads((folder / "pack.json").read_text())
    assert [(m["run_id"], m["weight"], m["config"]["modality"]) for m in table["members"]] == [("run-a", 2, "audio"),
                                                                                              ("run-b", 1, "video"),
                                                                                              ("run-c", 1, "fusion")]
    saved = load_file(str(folder / "pack.safetensors"))  # a plain safetensors file: the whole module's state
    assert saved.keys() == pack.state_dict().keys() and saved["weights"].tolist() == [2, 1, 1]
    back = PackedModel.load(folder).eval()
    assert back.specs == pack.specs
    for key, value in pack.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in inputs([WHOLE, FACES, FUSION], clips=3)]
    with torch.inference_mode():
        assert torch.equal(pack(batches), back(batches))
    for key in ("members.0.model.conv_stem.weight",):  # a member's weights are its checkpoint's
        assert torch.equal(saved[key], load_file(str(checkpoints["whole"]))[key.removeprefix("members.0.model.")])


def test_weights_that_do_not_fit_are_refused_naming_the_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"faces\.safetensors \(run r\): the weights do not fit"):
        PackedModel.build([MemberSpec("r", 1, WHOLE)], [checkpoints["faces"]])
    with pytest.raises(NotFound, match="no pack.json"):
        PackedModel.load(tmp_path)
    (tmp_path / "pack.json").write_text(json.dumps({"format": "harness-pack/1", "members": [{"run_id": "r", "weight": 0,
                                                                                            "config": {}}]}))
    with pytest.raises(BadInput, match=r"pack\.json member 1: member r: weight must be a positive integer, got 0"):
        PackedModel.load(tmp_path)


def test_the_pack_is_counted_as_one_module_and_the_cap_applies_to_the_whole() -> None:
    configs = [WHOLE, WINDOWS, FACES, FUSION]
    numel, thop_params, macs = count_pack(configs)
    members = [check_run(cfg) for cfg in configs]
    real = PackedModel.build([MemberSpec("", 1, cfg) for cfg in configs])
    assert numel == thop_params == sum(r.thop_params for r in members) == sum(p.numel() for p in real.parameters())
    assert macs > 0
    report = check_pack(configs)
    assert report.ok and report.thop_params == thop_params and report.name.startswith("pack(")
    # a cap that each member meets alone but the pack does not
    capped = check_pack(configs, max_params=thop_params - 1)
    assert not capped.ok and capped.problems == (f"the pack's {thop_params / 1e6:.1f}M parameters exceed the "
                                                 f"{(thop_params - 1) / 1e6:g}M cap",)


def test_every_member_must_be_imagenet_1k_only() -> None:
    other_data = RunConfig(modality="video", video=VideoFeatures(frames=1, size=224),
                           train=TrainConfig(backbone="vit_tiny_patch16_224.augreg_in21k", pretrained=True, device="cpu"))
    report = check_pack([WHOLE, other_data])
    assert not report.ok and len(report.problems) == 1
    assert report.problems[0].startswith("member 2: vit_tiny_patch16_224.augreg_in21k: tag 'augreg_in21k' was "
                                         "pretrained on in21k")
    # A member that cannot run at its input size is reported, not a crash of the check.
    small = RunConfig(modality="image", video=VideoFeatures(size=32),
                      train=TrainConfig(backbone="vit_tiny_patch16_224", pretrained=False, device="cpu"))
    problems = check_pack([WHOLE, small]).problems
    assert problems[0].startswith("member 2: forward at 3x32x32 failed") and problems[1].startswith("the pack's forward failed")


def test_selection_under_the_cap_counted_on_the_packed_module() -> None:
    configs = [WHOLE, FACES, WINDOWS]
    per_member = [count_pack([cfg])[1] for cfg in configs]
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    kind = rng.integers(0, 2, 400)
    scores = np.stack([rng.random(400) + 0.4 * y, rng.random(400) + 2 * y * kind, rng.random(400) + 2 * y * (1 - kind)], 1)
    m = OofMatrix.from_arrays(scores, y, np.arange(400) % 4, names=["whole", "faces", "windows"])
    cap = per_member[0] + per_member[1] - 1  # whole fits, whole + faces does not
    sel = select(m, size=3, limits=Limits(params=pack_params(configs), max_params=cap))
    assert sel.members == (0, 2) and sel.params == count_pack([WHOLE, WINDOWS])[1] == per_member[0] + per_member[2]
    assert sel.skipped[1] == (f"the pack would hold {(per_member[0] + per_member[1]) / 1e6:.2f}M parameters, "
                              f"over the {cap / 1e6:g}M cap")


def test_the_pack_scores_real_clips_as_its_members_do(checkpoints: dict[str, Path], shared_sample: Path) -> None:
    """On the shared real clips, with each member's inputs made as `harness predict` makes them."""
    clips = sorted((shared_sample / "trainset").glob("*.mp4"))[:3]
    members = [("whole", WHOLE, 1), ("windows", WINDOWS, 2)]
    pack = PackedModel.build([MemberSpec(name, w, cfg) for name, cfg, w in members],
                             [checkpoints[name] for name, _, _ in members]).eval()
    predictors = [Predictor(cfg, checkpoints[name]) for name, cfg, _ in members]
    batches = [{k: torch.from_numpy(np.stack([p.features(c)[k] for c in clips])) for k in p.cfg.inputs} for p in predictors]
    with torch.inference_mode():
        got = pack(batches).numpy()
    alone = np.array([[p.score(c) for p in predictors] for c in clips])
    np.testing.assert_allclose(got, alone @ np.array([1, 2]) / 3, rtol=0, atol=1e-7)


def test_pack_predictor_loads_a_saved_pack_and_scores_as_its_forward(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """`harness predict --run-id <pack>`'s scorer: each member from its part of pack.safetensors, the
    weighted mean over the members that could read a clip, the fallback when none could."""
    from harness.predict import PackPredictor, combine_members

    members = [("whole", WHOLE, 2), ("faces", FACES, 1)]
    pack = PackedModel.build([MemberSpec(name, w, cfg) for name, cfg, w in members],
                             [checkpoints[name] for name, _, _ in members]).eval()
    pack.save(tmp_path)
    loaded = PackPredictor(tmp_path / "pack.safetensors")
    batches = inputs([cfg for _, cfg, _ in members], clips=4, seed=3)
    with torch.inference_mode():
        want = pack([{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]).numpy()
    scores = np.stack([m.score_inputs(b) for m, b in zip(loaded.members, batches)], axis=1)
    ok = np.ones_like(scores, dtype=bool)
    np.testing.assert_allclose(combine_members(scores, ok, loaded.member_weights, 0.5), want, rtol=0, atol=1e-7)
    ok[1, 1] = False  # no faces in clip 1: its audio member alone; clip 2 unreadable by both: the fallback
    ok[2] = False
    got = combine_members(scores, ok, loaded.member_weights, 0.5)
    assert got[1] == pytest.approx(scores[1, 0]) and got[2] == 0.5 and got[0] == pytest.approx(want[0], abs=1e-7)
