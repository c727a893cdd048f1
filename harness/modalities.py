"""One model per modality, each a single `nn.Module` under the parameter cap.

  audio   a timm backbone on the 1-channel log-mel image (the backbone itself, so audio checkpoints
          keep timm's state-dict keys);
  video   `VideoNet`: one timm backbone run on every face crop of a clip, features averaged over
          time, one head; `image` is the same model on one crop per image;
  fusion  `FusionNet`: an audio backbone and a video backbone, a head on each and a joint head on
          both. A clip with both inputs is scored by the joint head; a clip whose video (or audio)
          could not be read is scored by the other branch's head, so it still gets a real score.
          In training, `modality_dropout` of the clips hide one input at random, which is what
          teaches the single-branch heads.

`build_model` makes the module for a RunConfig, `check_run` applies the competition's gates to the
whole module (thop and numel counts summed over the branches), `input_stats` gives the mean/std each
input is normalised with (timm's pretrained config of the branch's backbone).
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
    """(B, frames, 3, S, S) normalised crops -> (B, outputs) logits: shared backbone on every frame.

    `aggregate` "features": one head on the frames' mean feature. Otherwise the head scores each
    frame and the clip's logits are the frames' aggregated (`train.frame_aggregate`): `logit_mean` the
    mean logit, `mean` the logit of the mean probability, `max` the frame most sure the clip is fake.
    """

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
    """(B, K, outputs) per-frame logits -> (B, outputs) clip logits, by `how` (see VideoNet)."""
    if how == "logit_mean":
        return logits.mean(dim=1)
    two = logits.shape[-1] == 2  # a cross-entropy head: the fake probability is softmax(...)[1]
    if how == "max":
        fake = logits.softmax(-1)[..., 1] if two else logits[..., 0]
        pick = fake.argmax(dim=1)
        return logits[torch.arange(len(logits), device=logits.device), pick]
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
    """The module `cfg.modality` trains. `pretrained` None: as the config says (weights file or hub);
    False: random init, for loading a checkpoint into."""
    t = cfg.train
    use_weights = (t.pretrained or t.weights is not None) if pretrained is None else pretrained
    weights = t.weights if use_weights else None
    outputs = head_outputs(t.loss)
    if cfg.modality == "audio":
        return create_model(t.backbone, pretrained=use_weights, in_chans=1, num_classes=outputs, weights=weights,
                            drop_rate=t.drop_rate)
    # A --weights file holds one architecture's weights: `backbone`'s. A different video branch
    # (`video_backbone`) loads its own pretrained weights (bundled, cached or from the hub).
    if cfg.modality in ("video", "image"):
        backbone = create_model(_video_name(cfg), pretrained=use_weights, in_chans=3, num_classes=0,
                                weights=weights if _video_name(cfg) == t.backbone else None)
        return VideoNet(backbone, outputs, t.drop_rate, aggregate=t.frame_aggregate)
    audio = create_model(t.backbone, pretrained=use_weights, in_chans=1, num_classes=0, weights=weights)
    video = create_model(_video_name(cfg), pretrained=use_weights, in_chans=3, num_classes=0,
                         weights=weights if _video_name(cfg) == t.backbone else None)
    return FusionNet(audio, video, outputs, t.drop_rate)


def input_stats(cfg: RunConfig, model: nn.Module) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """(mean, std) per input, from timm's pretrained config of the backbone that reads it."""
    parts = {"audio": (model if cfg.modality == "audio" else getattr(model, "audio", None), 1),
             "video": (getattr(model, "backbone", None) or getattr(getattr(model, "video", None), "backbone", None), 3)}
    stats = {}
    for name in cfg.inputs:
        backbone, chans = parts[name]
        config = model_data_config(backbone, in_chans=chans)
        stats[name] = (tuple(config["mean"]), tuple(config["std"]))
    return stats


def check_run(cfg: RunConfig) -> ComplianceReport:
    """The competition's gates on the whole module: ImageNet-1k-only weights for each backbone and the
    parameter cap on the sum (thop and numel), MACs for one clip."""
    t = cfg.train
    pretrained = t.pretrained or t.weights is not None
    outputs = head_outputs(t.loss)
    if cfg.modality == "audio":
        return _per_clip(cfg, check_compliance(t.backbone, pretrained=pretrained, in_chans=1, input_size=cfg.features.shape,
                                               max_params=t.max_params, num_classes=outputs))
    v = cfg.features_for("video")
    video = check_compliance(_video_name(cfg), pretrained=pretrained, in_chans=3, input_size=(v.size, v.size),
                             max_params=t.max_params, num_classes=outputs)
    video = replace(video, name=f"{video.name} x{v.frames} frames", macs=video.macs * v.frames)
    if cfg.modality != "fusion":
        return video
    audio = _per_clip(cfg, check_compliance(t.backbone, pretrained=pretrained, in_chans=1, input_size=cfg.features.shape,
                                            max_params=t.max_params, num_classes=outputs))
    # Each count above includes its branch's head ((features + 1) * outputs); the joint head has
    # (features_a + features_v + 1) * outputs, i.e. the two heads together less one bias.
    joint = (audio.params - _headless(cfg, "audio")) + (video.params - _headless(cfg, "video")) - outputs
    params = audio.params + video.params + joint
    thop_params = audio.thop_params + video.thop_params + joint
    problems = tuple(p for p in audio.problems + video.problems if "exceed" not in p)
    if max(params, thop_params) > t.max_params:
        problems += (f"{max(params, thop_params) / 1e6:.1f}M parameters exceed the {t.max_params / 1e6:g}M cap",)
    return ComplianceReport(
        name=f"fusion({audio.name} + {video.name})", resolved=f"{audio.resolved}+{video.resolved}",
        pretrained=pretrained, params=params, thop_params=thop_params, macs=audio.macs + video.macs,
        input_size=audio.input_size, max_params=int(t.max_params), problems=problems,
    )


def _per_clip(cfg: RunConfig, audio: ComplianceReport) -> ComplianceReport:
    """The audio branch's report per clip: a windowed model runs once per evaluation window."""
    if not cfg.features.windowed:
        return audio
    k = cfg.features.eval_windows
    return replace(audio, name=f"{audio.name} x{k} windows", macs=audio.macs * k)


def _headless(cfg: RunConfig, branch: str) -> int:
    """Parameters of the branch without its head (numel on the meta device)."""
    from harness.models import _meta_model, _numel, resolve_name

    name = cfg.train.backbone if branch == "audio" else _video_name(cfg)
    return _numel(_meta_model(resolve_name(name), in_chans=1 if branch == "audio" else 3, num_classes=0))
