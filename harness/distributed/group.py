"""The process group one DDP run lives in: who this process is, and the few collectives training needs.

A process started by torch's elastic launcher (`torchrun`, `harness train --nproc N`) joins its group in
`process_group` (gloo on CPU, NCCL on GPU); any other process is a world of one where every helper is the
identity. Every collective has a timeout (`HARNESS_COLLECTIVE_TIMEOUT`, 300 s): a peer that hangs or dies
unseen by its launcher makes the survivors raise instead of waiting for ever.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harness.data.dataset import Shard
from harness.errors import ConfigError
from harness.fileio import write_text

TIMEOUT_ENV = "HARNESS_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
# Rank 0 writes the MLflow run id there, so the `--nproc` launcher can close the run if rank 0 dies first.
RUN_ID_FILE_ENV = "HARNESS_RUN_ID_FILE"
# A gloo group with at least the default timeout, for the start-up handshake only: it waits on rank 0
# creating its MLflow run (seconds of imports on a loaded machine, longer than a tight collective timeout).
_startup_group: Any = None


@dataclass(frozen=True)
class World:
    """This process's place in the run. `active`: a process group is up (even of size 1, so that
    `--nproc 1` measures DDP's own cost); `rank` 0 is the one that records and decides."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)


def launched() -> bool:
    """True in a process that torch's elastic launcher started (torchrun, `harness train --nproc`)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def collective_timeout() -> timedelta:
    """The collectives' timeout: `HARNESS_COLLECTIVE_TIMEOUT` seconds, else 300."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (> 0)")
    return timedelta(seconds=seconds)


def current() -> World:
    """The world of the process group this process is in (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), active=True)


@contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join the launcher's process group for the block (NCCL when `device` is CUDA, else gloo); outside a
    launcher, or with a group already up (the caller's), only yield the current world."""
    if not launched() or dist.is_initialized():
        yield current()
        return
    timeout = collective_timeout()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" or device.startswith("cuda:") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)  # before NCCL starts: one GPU per rank
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    global _startup_group
    _startup_group = dist.new_group(backend="gloo", timeout=max(timeout, timedelta(seconds=DEFAULT_TIMEOUT_S)))
    try:
        yield current()
    finally:
        _startup_group = None
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collective tensors must live: the rank's GPU under NCCL, else the host."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree(value: Any, world: World, *, startup: bool = False) -> Any:
    """Rank 0's `value` (any picklable object) on every rank: its decisions (stop, the run id) bind all.
    `startup`: the start-up handshake, over the group whose timeout is not the collectives' own."""
    if not world.active or world.size == 1:
        return value
    box = [value]
    handshake = startup and _startup_group is not None
    dist.broadcast_object_list(box, src=0, group=_startup_group if handshake else None,
                               device=torch.device("cpu") if handshake else _device())
    return box[0]


def sum_over_ranks(values: list[float], world: World) -> list[float]:
    """Each value summed over the ranks (float64): the epoch's loss and sample counts."""
    if not world.active or world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_shards(local: np.ndarray, n: int, world: World) -> np.ndarray:
    """The whole split's values, from each rank's `Shard.take(..., pad=False)` share of `n` samples:
    every rank gets all `n`, in the split's order, so metrics are computed once over the whole split."""
    if not world.active or world.size == 1:
        return local
    width = -(-n // world.size)  # the largest share; shorter ones are padded to it for all_gather
    padded = torch.zeros(width, dtype=torch.float64, device=_device())
    padded[: len(local)] = torch.from_numpy(np.asarray(local, dtype=np.float64)).to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    # Row r holds samples r, r + size, ...: column-major order is the split's, the padding past `n`.
    return torch.stack(parts).cpu().numpy().T.reshape(-1)[:n]


def announce_run(run_id: str) -> None:
    """Rank 0: tell the `--nproc` launcher (when there is one) which MLflow run this is."""
    if target := os.environ.get(RUN_ID_FILE_ENV):
        write_text(Path(target), run_id)
