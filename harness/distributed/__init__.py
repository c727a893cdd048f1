"""Distributed data-parallel training on torch's own stack: torchrun's elastic launcher, DDP, gloo/NCCL.

`group`: the process group a rank lives in and the collectives training needs (outside a launcher a world
of one). `launch`: `launch_ranks`, what `harness train --nproc N` runs, and its `LaunchOutcome`. Both are
light on top of torch, so the face is eager (the rule in `harness`).
"""
from __future__ import annotations

from harness.distributed.group import (World, agree, announce_run, collective_timeout, current, gather_shards, launched,
                                       process_group, sum_over_ranks)
from harness.distributed.launch import LaunchOutcome, RankFailure, launch_ranks

__all__ = ["LaunchOutcome", "RankFailure", "World", "agree", "announce_run", "collective_timeout", "current", "gather_shards",
           "launch_ranks", "launched", "process_group", "sum_over_ranks"]
