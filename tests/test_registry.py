"""The registry's side of `harness submit` and `harness champion`, on a real MLflow store with recorded
runs (no training): a run is one version (submitted again it reuses it), the alias moves only when earned
or on purpose, and a version's description says which, keeping the gate's verdict as history."""
from __future__ import annotations

import re
from typing import Any

import pytest

from harness.config import RunConfig
from harness.tracking import registry
from tests.conftest import Store

NAME = "harness-registry-tests"
WITHHELD = ("not distinguishably better than the champion harness-registry-tests version 1 (run x): the AUC "
            "difference's interval -0.0123 to +0.0456 does not lie above 0")
DATE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def recorded_run(store: Store, name: str) -> Any:  # an mlflow Run
    from harness import tracking

    rec = tracking.RunRecorder(store.client, experiment_id=store.experiment_id, run_name=name, config=RunConfig())
    rec.finish("FINISHED")
    return store.client.get_run(rec.run_id)


def description(store: Store, version: str) -> str:
    return store.client.get_model_version(NAME, version).description


def versions(store: Store) -> list[str]:
    return sorted(str(v.version) for v in store.client.search_model_versions(f"name = '{NAME}'"))


def champion(store: Store) -> str:
    return str(store.client.get_model_version_by_alias(NAME, "champion").version)


def test_one_version_a_run_and_the_alias_moves_only_when_earned_or_on_purpose(store: Store) -> None:
    first, second = recorded_run(store, "first"), recorded_run(store, "second")
    assert registry.registered_version(store.client, NAME, first.info.run_id) is None  # no model yet
    assert registry.register_model(store.client, first, NAME) == "1"
    assert registry.register_model(store.client, second, NAME, withheld=WITHHELD) == "2"
    assert champion(store) == "1"
    withheld = description(store, "2")
    assert withheld.startswith(f"**Not made the champion**: {WITHHELD}. To make it the champion on purpose: "
                               f"`harness champion {NAME} 2`.\n\n[run second]")
    assert registry.registered_version(store.client, NAME, first.info.run_id) == "1"
    assert registry.registered_version(store.client, NAME, second.info.run_id) == "2"
    assert registry.registered_version(store.client, "harness-other", first.info.run_id) is None

    # Submitted again: the champion's run stays the champion; a withheld one stays withheld, its text untouched.
    assert registry.reuse_version(store.client, NAME, "1", withheld=None) == ("1", False)
    assert registry.reuse_version(store.client, NAME, "2", withheld=WITHHELD) == ("1", False)
    assert versions(store) == ["1", "2"] and champion(store) == "1" and description(store, "2") == withheld

    # Moved by hand: the description says so first, the gate's verdict below it as history, the rest kept.
    assert registry.set_champion(store.client, NAME, "2") == "1"
    moved = description(store, "2")
    head, history, rest = moved.split("\n\n", 2)
    assert re.fullmatch(rf"\*\*Made the champion by hand\*\* on {DATE} \(`harness champion {NAME} 2`\)\.", head), head
    assert history == f"When submitted, the promotion gate did not make it the champion: {WITHHELD}."
    assert rest == withheld.split("\n\n", 1)[1] and "**Not made the champion**" not in moved
    assert registry.set_champion(store.client, NAME, "2") == "2" and description(store, "2") == moved  # no move, no line

    assert registry.set_champion(store.client, NAME, "1") == "2"  # and back: v1 says so, v2 keeps its history
    assert description(store, "1").startswith("**Made the champion by hand** on ") and description(store, "2") == moved
    assert registry.set_champion(store.client, NAME, "2") == "1"
    again = description(store, "2")
    assert again.count("Made the champion by hand") == 1 and again.count(WITHHELD) == 1  # replaced, not stacked

    # A non-champion version resubmitted and earning it now: the alias moves to it and its description says how.
    registry.set_champion(store.client, NAME, "1")
    assert registry.reuse_version(store.client, NAME, "2", withheld=None) == ("2", True)
    earned = description(store, "2")
    assert champion(store) == "2" and versions(store) == ["1", "2"]
    assert re.match(rf"\*\*Made the champion\*\* by `harness submit` on {DATE}: the run was submitted again", earned)
    assert earned.count(WITHHELD) == 1 and earned.endswith(rest)


@pytest.mark.parametrize("separator", ["\n\n", " "], ids=["current", "older-one-paragraph"])
def test_the_gates_verdict_is_kept_as_history_in_either_description_format(separator: str) -> None:
    written = (f"**Not made the champion**: {WITHHELD}. To make it the champion on purpose: `harness champion {NAME} 2`."
               f"{separator}[run second](http://x/#/runs/1), backbone b, best val AUC 0.9000. The run's checkpoint folder.")
    got = registry.made_champion_description(written, "**Made the champion by hand** on D.")
    assert got == (f"**Made the champion by hand** on D.\n\nWhen submitted, the promotion gate did not make it the champion: "
                   f"{WITHHELD}.\n\n[run second](http://x/#/runs/1), backbone b, best val AUC 0.9000. The run's checkpoint folder.")
    assert registry.made_champion_description("plain", "L.") == "L.\n\nplain"
