"""The packed model: one `nn.Module` of every member, scoring a clip by the weighted mean of the members'
probabilities of fake (timm experts in a ModuleList, as the image track's winners shipped), each member
scoring its cached inputs exactly as validation and `harness.predict` do.

On disk: `pack.safetensors` (the whole state dict, loaded without unpickling) and `pack.json` (each
member's settings, source run id and weight). `check_pack`: ImageNet-1k-only weights for every backbone
and the parameter cap on the packed module, counted (thop and numel) on a meta-device twin.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.checkpoint import PACK_TABLE, PACK_WEIGHTS, save_weights
from harness.config import RunConfig, from_dict, to_dict
from harness.engine import Inputs, clip_probabilities
from harness.errors import BadInput, NotFound
from harness.fileio import write_text
from harness.modalities import build_model, check_run, input_stats
from harness.models import MAX_PARAMS, ComplianceReport

FORMAT = "harness-pack/1"

Batch = dict[str, torch.Tensor]  # one member's inputs: input name -> (B, ...) uint8, plus `<name>_present`


@dataclass(frozen=True)
class MemberSpec:
    """One row of the member table: what to build, where it came from, how much it counts."""

    run_id: str
    weight: int
    config: RunConfig

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise BadInput(f"member {self.run_id}: weight must be a positive integer, got {self.weight!r}")

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "weight": self.weight, "config": to_dict(self.config)}


def example_inputs(configs: Sequence[RunConfig], *, clips: int = 1, device: str | torch.device = "cpu") -> list[Batch]:
    """Zero batches of `clips` clips per member, to count or time (the cost does not depend on the values)."""
    def zeros(cfg: RunConfig, name: str) -> torch.Tensor:
        windows = (cfg.audio.eval_windows,) if name == "audio" and cfg.audio.windowed else ()
        return torch.zeros((clips, *windows, *cfg.features_for(name).shape), dtype=torch.uint8, device=device)

    return [{name: zeros(cfg, name) for name in cfg.inputs} for cfg in configs]


class PackMember(nn.Module):
    """One member: its inputs as cached -> (B,) float64 probability of fake per clip."""

    def __init__(self, cfg: RunConfig, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs = Inputs(input_stats(cfg, model))
        self.names = cfg.inputs
        self.aggregate = cfg.train.aggregate

    def forward(self, batch: Batch) -> torch.Tensor:
        device = next(self.inputs.buffers()).device
        return clip_probabilities(self.model, self.inputs(batch, device), len(batch[self.names[0]]), self.aggregate)


class PackedModel(nn.Module):
    """The members in a ModuleList, their integer weights as a buffer; forward: their weighted mean P(fake)."""

    def __init__(self, specs: Sequence[MemberSpec], models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not specs or len(specs) != len(models):
            raise ValueError(f"a pack needs one model per member spec, got {len(models)} models for {len(specs)} specs")
        self.specs = tuple(specs)
        self.members = nn.ModuleList(PackMember(s.config, m) for s, m in zip(specs, models))
        self.register_buffer("weights", torch.tensor([s.weight for s in specs], dtype=torch.int64))

    def forward(self, batches: Sequence[Batch]) -> torch.Tensor:
        if len(batches) != len(self.members):
            raise ValueError(f"the pack has {len(self.members)} members and was given {len(batches)} batches")
        probs = torch.stack([member(batch) for member, batch in zip(self.members, batches)], dim=1)
        w = self.weights.to(probs.dtype)
        return probs @ w / w.sum()

    @classmethod
    def build(cls, specs: Sequence[MemberSpec], checkpoints: Sequence[Path | str] | None = None) -> PackedModel:
        """The pack of `specs` from their checkpoints (None: random init); BadInput names a checkpoint that misfits."""
        models = [build_model(s.config, pretrained=False) for s in specs]
        for spec, model, path in zip(specs, models, checkpoints or ()):
            _load_strict(model, path, f"{path} (run {spec.run_id})")
        return cls(specs, models)

    def save(self, folder: Path | str) -> Path:
        """`folder/pack.safetensors` and `folder/pack.json`, each written atomically; returns `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(self, folder / PACK_WEIGHTS)
        table = {"format": FORMAT, "members": [s.to_dict() for s in self.specs]}
        write_text(folder / PACK_TABLE, json.dumps(table, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> PackedModel:
        """A saved pack: built from pack.json, filled strictly from pack.safetensors (NotFound, BadInput)."""
        folder = Path(folder)
        specs = read_members(folder)
        if not (folder / PACK_WEIGHTS).is_file():
            raise NotFound(f"{folder}: no {PACK_WEIGHTS}")
        pack = cls(specs, [build_model(s.config, pretrained=False) for s in specs])
        _load_strict(pack, folder / PACK_WEIGHTS, str(folder / PACK_WEIGHTS))
        return pack


def read_members(folder: Path | str) -> tuple[MemberSpec, ...]:
    """The member table of a saved pack (`folder/pack.json`), each member's settings checked."""
    path = Path(folder) / PACK_TABLE
    if not path.is_file():
        raise NotFound(f"{Path(folder)}: no {PACK_TABLE} (not a saved pack)")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: cannot read the member table ({e})") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT or not isinstance(table.get("members"), list):
        raise BadInput(f"{path}: not a {FORMAT} member table")
    specs = []
    for i, row in enumerate(table["members"]):
        where = f"{path} member {i + 1}"
        if not isinstance(row, dict) or not {"run_id", "weight", "config"} <= set(row):
            raise BadInput(f"{where}: needs run_id, weight and config")
        config = from_dict(RunConfig, row["config"], where=where)
        try:
            specs.append(MemberSpec(str(row["run_id"]), row["weight"], config))
        except BadInput as e:
            raise BadInput(f"{where}: {e}") from None
    return tuple(specs)


def _load_strict(module: nn.Module, path: Path | str, where: str) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0].rstrip(":")
        raise BadInput(f"{where}: the weights do not fit the model its settings build ({first})") from None


def count_pack(configs: Sequence[RunConfig]) -> tuple[int, int, int]:
    """(numel, thop parameters, MACs per clip) of the packed module, on a meta-device twin (else CPU zeros)."""
    import thop

    specs = [MemberSpec("", 1, cfg) for cfg in configs]
    for device in ("meta", "cpu"):
        with torch.device(device):
            pack = PackedModel.build(specs)
        try:
            macs, params = thop.profile(pack, inputs=(example_inputs(configs, device=device),), verbose=False)
            break
        except (NotImplementedError, RuntimeError) as e:
            if device == "cpu" or "meta" not in str(e):
                raise
    return sum(p.numel() for p in pack.parameters()), int(params), int(macs)


def pack_params(configs: Sequence[RunConfig]) -> Callable[[frozenset[int]], int]:
    """For `Limits(params=...)`: a set of candidate positions -> the thop count of their packed module."""
    return lambda members: count_pack([configs[j] for j in sorted(members)])[1]


def check_pack(configs: Sequence[RunConfig], *, max_params: float = MAX_PARAMS) -> ComplianceReport:
    """The rules on the whole pack: every backbone ImageNet-1k only, the packed module within `max_params`."""
    reports = [check_run(cfg) for cfg in configs]
    # A member's own cap check is replaced by the pack's: the cap is on the one module shipped.
    problems = tuple(f"member {i + 1}: {p}" for i, r in enumerate(reports) for p in r.problems if "exceed" not in p)
    try:
        params, thop_params, macs = count_pack(configs)
    except Exception as e:  # a member's forward fails at its input size (its own report says so too)
        params = thop_params = sum(r.params for r in reports)
        macs = 0
        problems += (f"the pack's forward failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}",)
    if max(params, thop_params) > max_params:
        problems += (f"the pack's {max(params, thop_params) / 1e6:.1f}M parameters exceed the {max_params / 1e6:g}M cap",)
    return ComplianceReport(
        name=f"pack({' + '.join(r.name for r in reports)})", resolved="+".join(r.resolved for r in reports),
        pretrained=any(r.pretrained for r in reports), params=params, thop_params=thop_params, macs=macs,
        input_size=reports[0].input_size, max_params=int(max_params), problems=problems)


def member_ms_per_clip(cfg: RunConfig, *, clips: int = 8, rounds: int = 3, device: str = "cpu") -> float:
    """Median ms per clip of one member's forward (not the feature extraction) on zero clips, after a warm-up."""
    member = PackedModel.build([MemberSpec("", 1, cfg)]).to(device).eval()
    batch = example_inputs([cfg], clips=clips, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(rounds + 1):
            start = time.perf_counter()
            member(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2] / clips
