"""Study specs: the shipped ones load, dimensions map onto run settings, and every mistake is
refused when the spec loads, naming the key (types, ranges, an empty space, backbones)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import tuning
from harness.config import RunConfig
from harness.tuning.space import Categorical, Fixed, FloatRange, IntRange, parse_dimension
from harness.validation import type_problem

from .tuning_helpers import write_spec

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_specs_load():
    demo = tuning.load_spec("demo")
    assert demo.name == "demo" and demo.objectives == ("val_auc",)
    assert {"backbone", "lr", "loss", "weight_decay", "batch_size", "augment_strength", "input_size", "epochs"} <= dict(demo.space).keys()
    assert isinstance(demo.sampler, tuning.TPE) and not isinstance(demo.pruner, tuning.NoPruning)
    assert demo.base.train.pretrained is False
    assert len(demo.feature_configs()) == len(dict(demo.space)["input_size"].choices)
    ffdv = tuning.load_spec(ROOT / "studies" / "ffdv-audio.toml", check_models=False)
    assert ffdv.base.train.pretrained is True and ffdv.base.train.max_params <= 200e6
    fusion = tuning.load_spec("demo-fusion", check_models=False)
    assert fusion.modalities() == ["audio", "video", "fusion"] and fusion.base.video.frames == 4


def test_spec_maps_dimensions_onto_run_settings(tmp_path: Path):
    spec = tuning.load_spec(write_spec(tmp_path, "maps"), check_models=False)
    cfg = spec.config_for({"backbone": "test_byobnet.r160_in1k", "lr": 0.004, "loss": "ce", "input_size": "64x96"})
    assert (cfg.train.backbone, cfg.train.lr, cfg.train.loss) == ("test_byobnet.r160_in1k", 0.004, "ce")
    assert cfg.audio.shape == (64, 96) and cfg.train.epochs == 2 and cfg.train.batch_size == 8
    assert cfg.train.max_params == 1e6 and cfg.train.patience == 0
    assert spec.config_for({"input_size": "128x64"}).audio.height is None  # 128 = n_mels: no resize, one cache
    assert spec.space_hash() == tuning.load_spec(write_spec(tmp_path, "maps"), check_models=False).space_hash()
    assert spec.searched == ("lr", "loss")  # one-choice lists and scalars are fixed, not searched


def test_a_study_can_search_over_modality(tmp_path: Path):
    path = write_spec(tmp_path, "modal")
    text = path.read_text().replace("[space]", '[space]\nmodality = ["audio", "video", "fusion"]\nframes = [2, 4]', 1)
    path.write_text(text + '\n[base.video]\nsize = 32\n')
    spec = tuning.load_spec(path, check_models=True)  # each backbone checked on log-mels and on face crops
    cfg = spec.config_for({"modality": "fusion", "frames": 4})
    assert cfg.modality == "fusion" and cfg.inputs == ("audio", "video") and cfg.video.frames == 4
    prepared = spec.prepare_configs()
    assert {c.modality for c in prepared} == {"audio", "video"}
    assert {c.video.frames for c in prepared if c.modality == "video"} == {2, 4}
    path.write_text(text.replace('["audio", "video", "fusion"]', '["audio", "image"]'))
    with pytest.raises(tuning.SpecError, match="image"):
        tuning.load_spec(path, check_models=False)


def test_a_study_fits_its_dataset_track(tmp_path: Path):
    spec = tuning.load_spec(write_spec(tmp_path, "track"), check_models=False)
    tuning.check_dataset(spec, "audio-video")
    with pytest.raises(tuning.SpecError, match='image-track dataset.*set modality = "image"'):
        tuning.check_dataset(spec, "image", where="/data/faces")


@pytest.mark.parametrize(("backbone", "max_params", "message"), [
    ("test_resnet.r160_in1k", 1e5, "exceed the 0.1M cap"),
    ("vit_tiny_patch16_224.augreg_in21k", 200e6, "not ImageNet-1k only"),
    ("resnet18", 200e6, "give the pretrained tag too"),
    ("resnet_does_not_exist.a1_in1k", 200e6, "unknown timm model"),
])
def test_spec_refuses_backbone_at_load(tmp_path: Path, backbone: str, max_params: float, message: str):
    path = write_spec(tmp_path, "refused", backbones=("test_byobnet.r160_in1k", backbone), max_params=max_params)
    with pytest.raises(tuning.SpecError, match=message):
        tuning.load_spec(path)


@pytest.mark.parametrize(("change", "message"), [
    (("[space]", "[space]\nbogus = [1, 2]"), "bogus"),
    (("[study]", "[study]\ncolour = 1"), "unknown key"),
    (('["val_auc"]', '["val_auc", "val_tpr_fpr1e-3"]'), "pruning needs a single objective"),
    (('["val_auc"]', '["accuracy"]'), "unknown objective"),
    (("epochs = 2", "epochs = { low = 3, high = 1 }"), "need low < high"),
    (('input_size = ["64x64"]', 'input_size = ["64 by 64"]'), "is not \"HxW\""),
])
def test_spec_errors(tmp_path: Path, change: tuple[str, str], message: str):
    path = write_spec(tmp_path, "bad", pruner='kind = "median"')
    path.write_text(path.read_text().replace(*change, 1))
    with pytest.raises(tuning.SpecError, match=message):
        tuning.load_spec(path, check_models=False)


# Issue #16 item 5: a value of the wrong type is refused at load, naming the key; never read as
# something else ("false" as true) nor reported as a comparison between a str and a float.
@pytest.mark.parametrize(("change", "message"), [
    (("pretrained = false", 'pretrained = "false"'), '[study] pretrained: expected true or false, got "false"'),
    (("trials = 4", 'trials = "4"'), '[study] trials: expected an integer, got "4"'),
    (("max_params = 1000000.0", 'max_params = "1e6"'), '[study] max_params: expected a number, got "1e6"'),
    (('objectives = ["val_auc"]', "objectives = [1]"), "[study] objectives: expected a string or a list of strings"),
    (("lr = { low = 1e-3,", 'lr = { low = "1e-3",'), '[space] lr.low: expected a number, got "1e-3"'),
    (("epochs = 2", 'epochs = { low = 1.5, high = 3 }'), "[space] epochs.low: expected an integer, got 1.5"),
    (("epochs = 2", 'epochs = "2"'), '[space] epochs: expected an integer, got "2"'),
    (("batch_size = 8", 'batch_size = [8, "16"]'), '[space] batch_size: expected an integer, got "16"'),
    (("log = true", 'log = "yes"'), '[space] lr.log: expected true or false, got "yes"'),
    (('loss = ["bce", "ce", "focal"]', "loss = [1, 2]"), "[space] loss: expected a string, got 1"),
    (("seed = 0", 'seed = "0"'), '[sampler] (random): seed: expected an integer, got "0"'),
    (("interval = 1", "interval = 1.5"), "[heartbeat]: interval: expected an integer, got 1.5"),
    (("[base.train]", "[base.train]\nepochs = 3\n[base.nope]"), "[base]"),
    (("patience = 0", 'patience = "0"'), '[base]: train.patience: expected an integer, got "0"'),
    (("patience = 0", "patience = 0\n[base.train.augment]\nhflip = 1"), "[base]: train.augment.hflip: expected true or false, got 1"),
    (("patience = 0", "patience = 0\n[base.audio]\nfmax = \"8000\""), '[base]: audio.fmax: expected a number, got "8000"'),
    (("[space]", "space = 3\n[spaces]"), "unknown key(s) spaces"),
])
def test_spec_value_types_are_checked_at_load(tmp_path: Path, change: tuple[str, str], message: str):
    path = write_spec(tmp_path, "typed", max_params=1e6)
    text = path.read_text()
    assert change[0] in text, change
    path.write_text(text.replace(*change, 1))
    with pytest.raises(tuning.SpecError) as caught:
        tuning.load_spec(path, check_models=False)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "not supported between" not in str(caught.value)


def test_strategy_values_are_checked_at_load(tmp_path: Path):
    path = write_spec(tmp_path, "halving", pruner='kind = "successive_halving"\nreduction_factor = 1')
    with pytest.raises(tuning.SpecError, match=r"\[pruner\]: .*reduction_factor"):
        tuning.load_spec(path, check_models=False)


@pytest.mark.parametrize("space", ["", 'backbone = ["test_byobnet.r160_in1k"]\nlr = 0.01\nepochs = 2'])
def test_a_space_with_nothing_to_search_is_refused(tmp_path: Path, space: str):
    """Issue #16 item 10: an empty [space] (or one of fixed values only) would run identical trials."""
    path = write_spec(tmp_path, "empty")
    text = path.read_text()
    head, rest = text.split("[space]", 1)
    path.write_text(head + "[space]\n" + space + "\n\n[base.train]" + rest.split("[base.train]", 1)[1])
    with pytest.raises(tuning.SpecError, match=r"\[space\]: nothing to search .*every trial would be identical"):
        tuning.load_spec(path, check_models=False)


def test_unknown_study_name_lists_the_known_ones():
    with pytest.raises(tuning.SpecError, match="no study named 'nope'.*known: .*demo"):
        tuning.load_spec("nope")


# ------------------------------------------------------------------------------- space parsing

def test_parse_dimension_kinds_follow_the_setting_type():
    base = RunConfig()
    assert parse_dimension("lr", {"low": 1e-4, "high": 1e-2, "log": True}, base) == FloatRange(1e-4, 1e-2, log=True)
    assert parse_dimension("lr", {"low": 1, "high": 2}, base) == FloatRange(1.0, 2.0)  # an int where a float goes
    assert parse_dimension("epochs", {"low": 2, "high": 8, "step": 2}, base) == IntRange(2, 8, step=2)
    assert parse_dimension("loss", ["bce", "ce"], base) == Categorical(("bce", "ce"))
    assert parse_dimension("loss", ["bce"], base) == Fixed("bce")
    assert parse_dimension("train.optimizer", "sgd", base) == Fixed("sgd")
    assert parse_dimension("video_backbone", ["test_vit.r160_in1k"], base) == Fixed("test_vit.r160_in1k")  # str | None
    assert parse_dimension("input_size", ["64x64", "128x256"], base) == Categorical(("64x64", "128x256"))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("train.seed", [1, 2], "study setting"),
    ("train.augment", [1, 2], "group of settings"),
    ("audio.n_mels", {"low": 64, "high": 128}, "take a list of choices"),
    ("loss", {"low": 1, "high": 2}, "needs a numeric setting"),
    ("lr", {"low": 1e-3}, "needs low and high"),
    ("lr", {"low": 0.0, "high": 1.0, "log": True}, "low > 0 with log"),
    ("lr", {"low": 0.1, "high": 1.0, "step": -0.1}, "step > 0"),
    ("lr", {"low": 0.1, "high": 1.0, "step": 0.1, "log": True}, "a log range takes no step"),
    ("lr", {"low": 0.1, "high": 1.0, "mode": "x"}, "unknown key(s) mode"),
    ("lr", [], "an empty list"),
    ("lr", [[1]], "strings, numbers or booleans"),
    ("modality", ["audio", "smell"], "choose from audio"),
    ("colour", [1, 2], "not a modality, train, audio or video setting"),
])
def test_parse_dimension_refuses(name: str, value: object, message: str):
    with pytest.raises(tuning.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_dimension(name, value, RunConfig())


def test_one_type_check_for_settings_and_specs():
    """The spec's values are checked by the settings' own check, with its words."""
    assert type_problem(True, bool) is None and type_problem(1, bool) == "expected true or false, got 1"
    assert type_problem(3, float) is None and type_problem(True, float) == "expected a number, got true"
    assert type_problem(3.0, int) == "expected an integer, got 3.0"
    assert type_problem(None, int | None) is None and type_problem("x", int | None) == 'expected an integer, got "x"'
    assert type_problem(["a"], str | list[str]) is None and type_problem(["a", 1], list[str]) is not None
    assert type_problem({}, dict) is None and type_problem([], dict) == "expected a table, got []"
