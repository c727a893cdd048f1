"""Distributed data-parallel training on torch's own stack: torchrun's elastic launcher, DDP, gloo/NCCL.

- `group`: the process group a rank lives in (`process_group`, `current`, `World`), the collectives
  training needs (`agree`, `sum_over_ranks`, `gather_shards`) and `announce_run`. The engine uses it;
  outside a launcher it is a world of one and changes nothing.
- `launch`: `launch_ranks`, what `harness train --nproc N` runs: N ranks through
  `torch.distributed.run`, and a `LaunchOutcome` saying which rank failed first and how.

Both are light to import on top of torch (the launcher's modules load when it is called).
"""
from __future__ import annotations

from harness.distributed.group import (
    DEFAULT_TIMEOUT_S,
    RUN_ID_FILE_ENV,
    TIMEOUT_ENV,
    World,
    agree,
    announce_run,
    collective_timeout,
    current,
    gather_shards,
    launched,
    process_group,
    sum_over_ranks,
)
from harness.distributed.launch import LaunchOutcome, RankFailure, launch_ranks

__all__ = [
    "DEFAULT_TIMEOUT_S", "RUN_ID_FILE_ENV", "TIMEOUT_ENV", "LaunchOutcome", "RankFailure", "World", "agree",
    "announce_run", "collective_timeout", "current", "gather_shards", "launch_ranks", "launched",
    "process_group", "sum_over_ranks",
]
