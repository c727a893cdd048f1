"""`harness audit`'s findings on a dataset with planted problems: a leading-silence shortcut,
re-encoded copies across splits, a test split at another sample rate. The table is computed in a
thread pool here (no worker processes to start); test_audit_cli.py runs the real command."""
from __future__ import annotations

import dataclasses
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.audit import AuditResult, Pair, audit_dataset, dataset_groups, groups, render, to_json, write_outputs
from harness.audit.stats import MODEL_FEATURE
from harness.data.labels import load_dataset
from tests.conftest import write_labels
from tests.test_audit_support import planted_dataset, speech_like, write_av


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]], AuditResult]:
    root = tmp_path_factory.mktemp("planted")
    names = planted_dataset(root / "ds")
    with ThreadPoolExecutor(2) as pool:
        result = audit_dataset(load_dataset(root / "ds"), cache_root=root / "cache", pool=pool)
    return root, names, result


def test_leading_silence_is_named_as_a_shortcut_with_its_auc(planted) -> None:
    _, _, result = planted
    found = {(f.feature, f.split): f for f in result.shortcuts}
    for split in ("train", "val"):
        silence = found[("leading_silence", split)]
        assert silence.auc == 1.0 and silence.low == 1.0 and silence.direction == "higher in fakes"
    assert any(line.startswith("shortcut in train: leading_silence separates fakes from reals with AUC 1.000")
               for line in result.findings)
    # Only the silence was planted: clip length, size of picture, codecs tell nothing.
    assert not {"duration_audio", "duration_container", "video_frames", "width", "audio_sample_rate"} & {f for f, _ in found}


def test_reencoded_copies_across_splits_are_listed_as_pairs(planted) -> None:
    _, names, result = planted
    planted_pairs = set(zip(names["copies"][::2], names["copies"][1::2]))
    across = {(p.a, p.b): p for p in result.duplicates if p.across_splits}
    assert set(across) == planted_pairs  # both copies, and no other clip
    assert all(p.kind == "audio" and p.similarity >= 0.8 for p in across.values())
    assert any(line.startswith("2 duplicate pair(s) across splits") for line in result.findings)


def test_a_test_split_at_another_sample_rate_is_a_shift_named_by_that_property(planted) -> None:
    _, _, result = planted
    assert result.adversarial is not None and result.adversarial.split == "train~test"
    assert result.adversarial.auc >= 0.95 and result.shifted
    top = {f.feature: f for f in result.adversarial_top}
    assert top["audio_sample_rate"].auc == 1.0 and top["audio_sample_rate"].direction == "lower in test"
    assert any(line.startswith("shift:") and "audio_sample_rate" in line for line in result.findings)


def test_audit_json_holds_the_documented_keys_and_plots_the_flagged_features(planted) -> None:
    root, _, result = planted
    data = to_json(result)
    assert {"features", "shortcuts", "duplicates", "adversarial_auc", "adversarial_top"} <= set(data)
    assert all({"feature", "split", "auc", "low", "high"} <= set(f) for f in data["features"] + data["shortcuts"])
    assert all(set(p) == {"a", "b", "kind", "similarity"} for p in data["duplicates"])
    assert data["adversarial_auc"] == pytest.approx(result.adversarial.auc, abs=1e-4)
    out = write_outputs(result, root / "out")
    assert (out / "plots" / "shortcut_train_leading_silence.png").stat().st_size > 1000
    assert (out / "plots" / "shift_audio_sample_rate.png").is_file()
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 1 + len(result.table.rows) and table[0].startswith("split,name,label,error,file_size")
    assert len((out / "duplicates.csv").read_text().splitlines()) == 1 + len(result.duplicates)


@pytest.mark.parametrize("terminal", [True, False], ids=["80-column terminal", "pipe"])
def test_the_report_fits_80_columns_without_folding_a_name(planted, terminal: bool) -> None:
    """Issue 23 item 8: in a log file or an 80-column terminal the tables split names mid-word and
    ended with an empty column. Challenge clip names are 32 hex digits (a pair of them is 84
    characters wide), and duration_audio_declared is the longest feature name."""
    _, _, result = planted
    longest = dataclasses.replace(result.shortcuts[0], feature="duration_audio_declared")
    pairs = [Pair("train/2359ab528cd84d273ca9db9719fadde9.mp4", "val/4268ee7e106040e43df97caa70f69829.mp4", "audio", 0.934)]
    flagged = dataclasses.replace(result, features=[longest, *result.features], shortcuts=[longest, *result.shortcuts],
                                  duplicates=pairs + result.duplicates)
    clean = dataclasses.replace(result, shortcuts=[], findings=[])
    for shown in (flagged, clean):
        stream = io.StringIO()
        render(shown, Console(file=stream, width=80, force_terminal=terminal))
        text = stream.getvalue()
        assert ("\x1b[" in text) == terminal  # colour on a terminal only
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
        assert max(map(len, lines)) <= 80
        top = next(i for i, line in enumerate(lines) if line.startswith("feature "))
        assert lines[top].split()[-1] == ("verdict" if shown.shortcuts else "direction")  # no empty column at the end
        table = lines[top + 2 : lines.index("", top)]
        rows = {line[2:].split("  ")[0]: line.split() for line in table if line.startswith("  ") and line[2] != " "}
        splits = dict.fromkeys(f.split for f in shown.features)
        assert [line.strip() for line in table if not line.startswith(" ")] == list(splits)  # a row per split
        if shown.shortcuts:  # each on one line, its name whole, marked
            for f in shown.shortcuts:
                assert rows["all metadata (model)" if f.feature == MODEL_FEATURE else f.feature][-1] == "SHORTCUT"
        else:  # the three strongest of each split and the model, whole
            strongest = {f.feature for split in splits for f in [f for f in shown.features if f.split == split][:3]}
            assert set(rows) == strongest | {"all metadata (model)"}
        for p in shown.duplicates:  # a above b, each whole on its line
            at = next(i for i, line in enumerate(lines) if line.split() == [p.a, p.kind, f"{p.similarity:.3f}"])
            assert lines[at + 1].strip() == p.b


def test_a_second_audit_reuses_the_cached_table(planted) -> None:
    root, _, first = planted
    with ThreadPoolExecutor(1) as pool:
        again = audit_dataset(load_dataset(root / "ds"), cache_root=root / "cache", pool=pool)
    assert again.table.done == 0 and again.table.reused == len(first.table.rows)
    assert again.table.rows == first.table.rows and np.array_equal(again.table.fingerprints, first.table.fingerprints)


def test_groups_keep_copies_together(planted) -> None:
    root, names, result = planted
    found = groups(result.duplicates, result.keys)
    a, b = names["copies"][:2]
    assert found[a] == found[b] and len(set(found.values())) == len(result.keys) - 2
    assert dataset_groups(load_dataset(root / "ds"), cache_root=root / "cache") == found  # from the cache: no pool


def test_an_edited_clip_is_probed_again(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(4):
        write_av(root / "trainset" / f"c{i}.mp4", speech_like(40 + i, 1.0))
    write_labels(root / "train_label.txt", [(f"c{i}.mp4", i % 2) for i in range(4)])
    with ThreadPoolExecutor(1) as pool:
        first = audit_dataset(load_dataset(root), cache_root=tmp_path / "cache", pool=pool)
        write_av(root / "trainset" / "c0.mp4", speech_like(40, 1.5))
        second = audit_dataset(load_dataset(root), cache_root=tmp_path / "cache", pool=pool)
    assert (first.table.done, second.table.done, second.table.reused) == (4, 1, 3)
    assert second.table.rows[0]["duration_audio"] == pytest.approx(1.5, abs=0.1)
    assert first.findings == [] and first.adversarial is None  # 2 reals and 2 fakes, one split: nothing to say


def test_an_unreadable_clip_is_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(3):
        write_av(root / "trainset" / f"c{i}.mp4", speech_like(50 + i, 1.0))
    (root / "trainset" / "c1.mp4").write_bytes(b"\x00" * 100)
    write_labels(root / "train_label.txt", [(f"c{i}.mp4", i % 2) for i in range(3)])
    with ThreadPoolExecutor(1) as pool:
        result = audit_dataset(load_dataset(root), cache_root=tmp_path / "cache", pool=pool)
    assert [r["name"] for r in result.table.failures()] == ["c1.mp4"]
    assert to_json(result)["failures"] == [{"clip": "train/c1.mp4", "error": result.table.rows[1]["error"]}]
    assert result.table.rows[1]["error"].startswith("undecodable")


def _texture(seed: int, count: int = 20, side: int = 64) -> np.ndarray:
    """Frames of a smooth random picture (it survives re-encoding), drifting a pixel a frame."""
    import cv2

    rng = np.random.default_rng(seed)
    picture = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (side + count, side),
                         interpolation=cv2.INTER_CUBIC)
    return np.stack([picture[:, i : i + side] for i in range(count)])


def test_prepared_face_crops_give_the_face_rate_and_a_visual_duplicate(tmp_path: Path) -> None:
    from harness.config import VideoFeatures
    from harness.data.cache import feature_dir, load_split, prepare_features
    from tests.test_audit_support import reencode

    root = tmp_path / "ds"
    for i in range(4):
        write_av(root / "trainset" / f"t{i}.mp4", speech_like(60 + i, 2.0), frames=_texture(i))
    reencode(root / "trainset" / "t0.mp4", root / "valset" / "copy.mp4", codec="aac", bitrate=24000)
    write_av(root / "valset" / "v1.mp4", speech_like(70, 2.0), frames=_texture(9))
    write_labels(root / "train_label.txt", [(f"t{i}.mp4", i % 2) for i in range(4)])
    write_labels(root / "val_label.txt", [("copy.mp4", 0), ("v1.mp4", 1)])
    ds = load_dataset(root)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        before = audit_dataset(ds, cache_root=cache, pool=pool)
        faces = VideoFeatures(frames=4, size=32)
        prepare_features(ds, faces, cache_root=cache, pool=pool)
        after = audit_dataset(ds, cache_root=cache, pool=pool)
    assert before.face_folder is None and all(r["face_found_rate"] is None for r in before.table.rows)
    assert after.face_folder == feature_dir(ds, faces, cache) and after.table.done == 0  # the table itself was cached
    _, index = load_split(after.face_folder, "train")
    assert [r["face_found_rate"] for r in after.table.rows[:4]] == [1 - int(r["fallback"]) / 4 for r in index]
    kinds = {p.kind: p for p in after.duplicates if (p.a, p.b) == ("train/t0.mp4", "val/copy.mp4")}
    assert set(kinds) == {"audio", "faces"} and kinds["faces"].similarity >= 0.92
    assert [p for p in after.duplicates if p.b != "val/copy.mp4"] == []  # the other textures differ


def test_a_damaged_shard_or_a_stale_temporary_is_recomputed_or_removed(tmp_path: Path) -> None:
    from harness.audit.probe import TableSettings
    from harness.audit.table import build_table, table_dir

    root = tmp_path / "ds"
    for i in range(3):
        write_av(root / "trainset" / f"c{i}.mp4", speech_like(80 + i, 1.0))
    write_labels(root / "train_label.txt", [(f"c{i}.mp4", i % 2) for i in range(3)])
    ds = load_dataset(root)
    with ThreadPoolExecutor(1) as pool:
        first = build_table(ds, TableSettings(), cache_root=tmp_path / "cache", pool=pool, workers=1)
        shards = sorted((table_dir(ds, TableSettings(), tmp_path / "cache") / "shards" / "train").glob("*.npz"))
        shards[0].write_bytes(shards[0].read_bytes()[:50])  # cut short, as a crash mid-write without rename could not
        stale = shards[0].with_name(".x.npz.tmp-999999999")  # a writer that is gone
        stale.write_bytes(b"half")
        second = build_table(ds, TableSettings(), cache_root=tmp_path / "cache", pool=pool, workers=1)
    assert second.done >= 1 and second.done + second.reused == 3 and second.rows == first.rows
    assert not stale.exists()
