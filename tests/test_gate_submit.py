"""The promotion gate through `harness submit`: --strict refuses a run on a dataset with audit findings,
naming them, and writes nothing; without --strict it warns and the model card carries the warnings;
a second promotion is compared with the champion. Trains two tiny models: slow."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import isolated_home
from tests.test_audit_support import planted_dataset

pytestmark = pytest.mark.slow

from tests.test_crossval import TINY, _run  # noqa: E402 - one tiny CLI run helper for both


def test_strict_refuses_on_audit_findings_and_the_card_carries_the_warnings(tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    planted_dataset(data, per_class=5)  # fakes start with silence, val holds re-encoded train clips
    with isolated_home(tmp_path / "home"):
        code, out, err = _run(["train", "--data", str(data), *TINY], capsys)
        assert code == 0, err
        first = out.split("run id: ")[1].split()[0]

        code, out, err = _run(["submit", "--run-id", first, "--data", str(data), "--out", str(tmp_path / "strict"), "--strict"], capsys)
        assert code == 1
        error = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and f"--strict: run {first} not promoted" in error[0]
        assert "audit has" in error[0] and "duplicate" in error[0]  # the findings, named
        assert "promotion gate:" in out and "val AUC" in out and "selected as the best of 1" in out
        assert not (tmp_path / "strict").exists()
        assert (tmp_path / "home" / "audits").is_dir()  # the audit was run for the gate

        code, out, err = _run(["submit", "--run-id", first, "--data", str(data), "--out", str(tmp_path / "warned")], capsys)
        assert code == 0, err
        assert "gate warning:" in err and "audit has" in err
        card = (tmp_path / "warned" / "bundle" / "MODEL_CARD.md").read_text()
        assert "## Promotion gate" in card and "- WARNING: the dataset's audit has" in card
        assert "val TPR at FPR 1e-3" in card and "champion: none yet" in card

        # a second run on the same data: picked among 2, compared with the champion on the same val clips
        code, out, err = _run(["train", "--data", str(data), "--seed", "1", *TINY], capsys)
        assert code == 0, err
        second = out.split("run id: ")[1].split()[0]
        code, out, err = _run(["submit", "--run-id", second, "--data", str(data), "--out", str(tmp_path / "second")], capsys)
        assert code == 0, err
        card = (tmp_path / "second" / "bundle" / "MODEL_CARD.md").read_text()
        assert "selected as the best of 2 finished runs on the same data" in card
        assert f"(run {first})" in card and "paired bootstrap 95% interval" in card
