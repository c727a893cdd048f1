"""One model per modality, each a single `nn.Module` under the parameter cap: audio, a timm backbone on
the log-mel; video/image, `VideoNet` (one backbone on every face crop, one head); fusion, `FusionNet`
(both backbones, a head on each and a joint head; a clip missing an input is scored by the other
branch's head, which `modality_dropout` teaches in training). `build_model` makes the module,
`check_run` applies the competition's gates, `input_stats` gives each input's mean/std.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from harness.config import RunConfig
from harness.models import ComplianceReport, check_compliance, create_model, model_data_config


def head_outputs(loss: str) -> int:
    """Cross-entropy trains a two-logit head; the others a single fake logit."""
    return 2 if loss == "ce" else 1


def _head(features: int, outputs: int) -> nn.Linear:
    head = nn.Linear(features, outputs)
    nn.init.trunc_normal_(head.weight, std=0.01)  # logits start near 0 (see models._small_head)
    nn.init.zeros_(head.bias)
    return head


class VideoNet(nn.Module):
    """(B, frames, 3, S, S) crops -> (B, outputs) logits: one backbone on every frame, then a head on the
    frames' mean feature (`aggregate` "features") or per frame, aggregated as `aggregate_logits` says."""

    def __init__(self, backbone: nn.Module, outputs: int, drop_rate: float = 0.0, aggregate: str = "features") -> None:
        super().__init__()
        self.backbone = backbone  # built with num_classes=0: pooled features
        self.drop = nn.Dropout(drop_rate)
        self.head = _head(backbone.num_features, outputs)
        self.aggregate = aggregate

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        b, k = video.shape[:2]
        return self.backbone(video.flatten(0, 1)).view(b, k, -1)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        return self.frame_features(video).mean(dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if self.aggregate == "features":
            return self.head(self.drop(self.features(video)))
        return aggregate_logits(self.head(self.drop(self.frame_features(video))), self.aggregate)


def aggregate_logits(logits: torch.Tensor, how: str) -> torch.Tensor:
    """(B, K, outputs) frame logits -> (B, outputs): `logit_mean`, `mean` (of probabilities) or `max` (most fake)."""
    if how == "logit_mean":
        return logits.mean(dim=1)
    two = logits.shape[-1] == 2  # a cross-entropy head: the fake probability is softmax(...)[1]
    if how == "max":
        fake = logits.softmax(-1)[..., 1] if two else logits[..., 0]
        return logits[torch.arange(len(logits), device=logits.device), fake.argmax(dim=1)]
    if two:  # log of the mean class probabilities: their softmax is that mean
        return (logits.log_softmax(-1).exp().mean(dim=1)).clamp_min(1e-12).log()
    p = torch.sigmoid(logits.float()).mean(dim=1).clamp(1e-7, 1 - 1e-7)
    return torch.logit(p).to(logits.dtype)


class FusionNet(nn.Module):
    """Audio and video branches, late-fused; see the module docstring for missing inputs."""

    def __init__(self, audio: nn.Module, video: nn.Module, outputs: int, drop_rate: float = 0.0,
                 modality_dropout: float = 0.3) -> None:
        super().__init__()
        self.audio = audio  # timm backbone, num_classes=0
        self.video = VideoNet(video, outputs, drop_rate)
        self.drop = nn.Dropout(drop_rate)
        self.audio_head = _head(audio.num_features, outputs)
        self.joint_head = _head(audio.num_features + video.num_features, outputs)
        self.modality_dropout = modality_dropout

    def forward(self, audio: torch.Tensor, video: torch.Tensor, audio_present: torch.Tensor | None = None,
                video_present: torch.Tensor | None = None) -> torch.Tensor:
        b = audio.shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=audio.device)
        has_audio = ones if audio_present is None else audio_present.bool()
        has_video = ones if video_present is None else video_present.bool()
        if self.training and self.modality_dropout > 0:
            # Hide one input of a random share of the clips that have both, half of them each way.
            r = torch.rand(b, device=audio.device)
            both = has_audio & has_video
            has_audio = has_audio & ~(both & (r < self.modality_dropout / 2))
            has_video = has_video & ~(both & (r >= 1 - self.modality_dropout / 2))
        fa = self.drop(self.audio(audio))
        fv = self.drop(self.video.features(video))
        joint = self.joint_head(torch.cat([fa, fv], dim=1))
        alone = torch.where(has_audio[:, None], self.audio_head(fa), self.video.head(fv))
        return torch.where((has_audio & has_video)[:, None], joint, alone)


def _video_name(cfg: RunConfig) -> str:
    return cfg.train.video_backbone or cfg.train.backbone


def build_model(cfg: RunConfig, *, pretrained: bool | None = None) -> nn.Module:
    """The module `cfg.modality` trains; `pretrained` None: as the config says, False: random init."""
    t = cfg.train
    use_weights = (t.pretrained or t.weights is not None) if pretrained is None else pretrained
    weights = t.weights if use_weights else None
    outputs = head_outputs(t.loss)
    if cfg.modality == "audio":
        return create_model(t.backbone, pretrained=use_weights, in_chans=1, num_classes=outputs, weights=weights,
                            drop_rate=t.drop_rate)
    # Audio first (the seed's draws in order); a --weights file is `backbone`'s, not `video_backbone`'s.
    audio = create_model(t.backbone, pretrained=use_weights, in_chans=1, num_classes=0, weights=weights) \
        if cfg.modality == "fusion" else None
    video = create_model(_video_name(cfg), pretrained=use_weights, in_chans=3, num_classes=0,
                         weights=weights if _video_name(cfg) == t.backbone else None)
    if audio is None:
        return VideoNet(video, outputs, t.drop_rate, aggregate=t.frame_aggregate)
    return FusionNet(audio, video, outputs, t.drop_rate)


def input_stats(cfg: RunConfig, model: nn.Module) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """(mean, std) per input, from timm's pretrained config of the backbone that reads it."""
    parts = {"audio": (model if cfg.modality == "audio" else getattr(model, "audio", None), 1),
             "video": (getattr(model, "backbone", None) or getattr(getattr(model, "video", None), "backbone", None), 3)}
    configs = {name: model_data_config(parts[name][0], in_chans=parts[name][1]) for name in cfg.inputs}
    return {name: (tuple(c["mean"]), tuple(c["std"])) for name, c in configs.items()}


def check_run(cfg: RunConfig) -> ComplianceReport:
    """The competition's gates on the whole module: ImageNet-1k weights, the parameter cap on the sum."""
    t = cfg.train
    pretrained = t.pretrained or t.weights is not None
    outputs = head_outputs(t.loss)
    if cfg.modality in ("audio", "fusion"):
        audio = check_compliance(t.backbone, pretrained=pretrained, in_chans=1, input_size=cfg.audio.shape,
                                 max_params=t.max_params, num_classes=outputs)
        if cfg.audio.windowed:  # a windowed model runs once per evaluation window
            k = cfg.audio.eval_windows
            audio = replace(audio, name=f"{audio.name} x{k} windows", macs=audio.macs * k)
        if cfg.modality == "audio":
            return audio
    v = cfg.features_for("video")
    video = check_compliance(_video_name(cfg), pretrained=pretrained, in_chans=3, input_size=(v.size, v.size),
                             max_params=t.max_params, num_classes=outputs)
    video = replace(video, name=f"{video.name} x{v.frames} frames", macs=video.macs * v.frames)
    if cfg.modality != "fusion":
        return video
    # Each count includes its branch's head; the joint head is the two heads' size less one bias.
    joint = (audio.params - _headless(cfg, "audio")) + (video.params - _headless(cfg, "video")) - outputs
    params = audio.params + video.params + joint
    thop_params = audio.thop_params + video.thop_params + joint
    problems = tuple(p for p in audio.problems + video.problems if "exceed" not in p)
    if max(params, thop_params) > t.max_params:
        problems += (f"{max(params, thop_params) / 1e6:.1f}M parameters exceed the {t.max_params / 1e6:g}M cap",)
    return ComplianceReport(name=f"fusion({audio.name} + {video.name})", resolved=f"{audio.resolved}+{video.resolved}",
                            pretrained=pretrained, params=params, thop_params=thop_params, macs=audio.macs + video.macs,
                            input_size=audio.input_size, max_params=int(t.max_params), problems=problems)


def _headless(cfg: RunConfig, branch: str) -> int:
    """Parameters of the branch without its head (numel on the meta device)."""
    from harness.models import _meta_model, _numel, resolve_name

    name = cfg.train.backbone if branch == "audio" else _video_name(cfg)
    return _numel(_meta_model(resolve_name(name), in_chans=1 if branch == "audio" else 3, num_classes=0))
