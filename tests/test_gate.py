"""The promotion gate's parts that need no trained model: the champion comparison on shared clips,
intervals from predictions, --strict's refusal, the audit read or redone, the model card section."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harness.bundle.card import gate_section
from harness.errors import EXIT_FAILED
from harness.submit.gate import GateRefused, GateReport, audit_findings, compare_with_champion, enforce, run_intervals


def _predictions(names: list[str], labels: np.ndarray, scores: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    return names, np.asarray(labels), np.asarray(scores, dtype=float)


def test_champion_is_compared_on_the_shared_clips_only() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    noise = rng.standard_normal(200)
    names = [f"c{i}" for i in range(200)]
    candidate = _predictions(names, labels, labels * 2.0 + noise)
    # the champion scored half the clips (another val split), plus a clip the candidate never saw
    champion = _predictions(names[::2] + ["other"], np.r_[labels[::2], 1], np.r_[labels[::2] * 0.3 + noise[::2], 0.9])
    found = compare_with_champion(candidate, champion)
    assert found.clips == 100 and found.better and found.low > 0
    assert compare_with_champion(candidate, _predictions(["x", "y"], np.array([0, 1]), np.array([0.1, 0.9]))) is None
    equal = compare_with_champion(candidate, candidate)
    assert equal.difference == 0 and not equal.better


def test_intervals_come_from_predictions_when_the_run_lacks_them() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 50)
    scores = rng.random(100) + 0.4 * labels
    old_run = SimpleNamespace(data=SimpleNamespace(metrics={"summary/best_val_auc": 0.7}))
    v = run_intervals(old_run, _predictions([str(i) for i in range(100)], labels, scores))
    assert v["auc_low"] <= v["auc"] <= v["auc_high"] and v["tpr_low"] <= v["tpr"] <= v["tpr_high"]
    recorded = {"best_val_auc": 0.9, "val_auc_ci_low": 0.8, "val_auc_ci_high": 0.95, "best_val_tpr_fpr1e-3": 0.2,
                "val_tpr_fpr1e-3_ci_low": 0.1, "val_tpr_fpr1e-3_ci_high": 0.3}
    new_run = SimpleNamespace(data=SimpleNamespace(metrics={f"summary/{k}": v for k, v in recorded.items()}))
    assert run_intervals(new_run, None) == {"auc": 0.9, "auc_low": 0.8, "auc_high": 0.95, "tpr": 0.2, "tpr_low": 0.1,
                                            "tpr_high": 0.3}
    assert math.isnan(run_intervals(old_run, None)["tpr"])


def test_strict_refuses_with_every_reason_and_passes_a_clean_gate() -> None:
    enforce(GateReport(facts=["val AUC 0.9"]), "abc")  # no warnings: nothing raised
    with pytest.raises(GateRefused) as refused:
        enforce(GateReport(warnings=["the dataset's audit has 1 finding(s): leading_silence", "not better"]), "abc")
    message = str(refused.value)
    assert refused.value.exit_code == EXIT_FAILED
    assert "run abc not promoted, 2 gate warning(s)" in message and "(1) the dataset's audit" in message and "(2) not better" in message


@pytest.mark.slow  # the audit's worker processes
def test_audit_json_is_read_when_current_and_redone_when_labels_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.data.cache import dataset_id
    from harness.data.labels import load_dataset
    from tests.test_audit_support import planted_dataset

    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    planted_dataset(tmp_path / "ds", per_class=3)
    ds = load_dataset(tmp_path / "ds")
    folder = tmp_path / "home" / "audits" / dataset_id(ds)
    folder.mkdir(parents=True)
    (folder / "audit.json").write_text(json.dumps({"findings": ["a planted finding"]}))
    assert audit_findings(ds, cache_root=tmp_path / "cache") == (["a planted finding"], folder / "audit.json")
    # label files newer than the audit: audited again (this dataset's planted re-encoded copies)
    old = (folder / "audit.json").stat().st_mtime - 60
    os.utime(folder / "audit.json", (old, old))
    found, _ = audit_findings(ds, cache_root=tmp_path / "cache", workers=1)
    assert found and "a planted finding" not in found and any("duplicate" in line for line in found), found


def test_card_section_lists_facts_and_warnings() -> None:
    lines = gate_section({"facts": ["val AUC 0.9 (95% bootstrap interval 0.8 to 0.95)"], "warnings": ["audit: 2 findings"]})
    text = "\n".join(lines)
    assert text.startswith("## Promotion gate") and "- val AUC 0.9" in text and "- WARNING: audit: 2 findings" in text
    assert "No warnings." in "\n".join(gate_section({"facts": [], "warnings": []})) and gate_section(None) == []
