"""`harness pack`'s library: one model from many cross-validated trials, chosen on out-of-fold scores
under the parameter cap, estimated honestly, saved as one module.

  oof       read candidates' oof.csv / folds.csv and align them (refusing different clips or folds)
  select    greedy forward selection with replacement (Caruana et al. 2004) under a cap and a latency budget
  estimate  the optimistic AUC beside a nested one, and a group bootstrap against the best single member
  model     PackedModel: members in a ModuleList, integer weights, mean of probabilities; save/load; the rules
  soup      uniform and greedy weight soups (Wortsman et al. 2022), kept only when not worse than the best member
"""
from harness.pack.estimate import FoldPick, PackEstimate, estimate_pack
from harness.pack.model import (MemberSpec, PackedModel, check_pack, count_pack, example_inputs, member_ms_per_clip,
                                pack_params, read_members)
from harness.pack.oof import OofMatrix, OofTable, align, read_oof
from harness.pack.select import Limits, Selection, Skip, Step, column_aucs, select
from harness.pack.soup import SoupOutcome, average_states, cv_evaluator, greedy_soup, soup_groups, soup_of, try_soups

__all__ = [
    "FoldPick", "Limits", "MemberSpec", "OofMatrix", "OofTable", "PackEstimate", "PackedModel", "Selection", "Skip",
    "SoupOutcome", "Step", "align", "average_states", "check_pack", "column_aucs", "count_pack", "cv_evaluator",
    "estimate_pack", "example_inputs", "greedy_soup", "member_ms_per_clip", "pack_params", "read_members", "read_oof",
    "select", "soup_groups", "soup_of", "try_soups",
]
