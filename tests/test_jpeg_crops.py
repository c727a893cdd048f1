"""Face crops stored as JPEG in the cache: smaller, decoded in training to the raw layout, never
confused with a raw cache, and scored by `predict` from the same pixels training read."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import RunConfig, TrainConfig, VideoFeatures
from harness.data.cache import PrepareReport, feature_dir, load_split, prepare_features
from harness.data.dataset import DeviceResident, batches, load_arrays
from harness.data.integrity import CacheDamaged
from harness.data.jpeg_crops import JpegCrops, encode_clip
from harness.data.labels import load_dataset
from harness.data.shards import extract
from tests.conftest import isolated_home
from tests.run_main import run_main

RAW = VideoFeatures(frames=4)  # 4 crops of 112x112 a clip: half the default's cost, the same code
JPEG = VideoFeatures(frames=4, crop_storage="jpeg")


def smooth_crops(clips: int, frames: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Low-frequency RGB crops (what JPEG keeps well), (clips, frames, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.integers(0, 256, (clips * frames, 3, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(clips, frames, size, size, 3).numpy()


def packed(crops: np.ndarray, quality: int = 90, empty: tuple[int, ...] = ()) -> JpegCrops:
    """The blobs of `crops` end to end, as a split's pack holds them; clips in `empty` have 0 bytes."""
    blobs = [np.zeros(0, np.uint8) if i in empty else encode_clip(c, quality) for i, c in enumerate(crops)]
    sizes = np.array([len(b) for b in blobs])
    spans = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1)
    return JpegCrops(np.concatenate(blobs), spans, crops.shape[1:])


# ------------------------------------------------------------------------------- the reader alone

def test_jpeg_crops_read_like_the_raw_array() -> None:
    crops = smooth_crops(6)
    stored = packed(crops, empty=(2,))
    assert stored.shape == crops.shape and len(stored) == 6 and stored.dtype == np.uint8
    assert stored.stored_nbytes < crops.nbytes / 3
    whole = stored[np.arange(6)]
    assert whole.shape == crops.shape and whole.dtype == np.uint8
    assert whole[2].max() == 0  # a clip without features reads as zeros, as in a raw pack
    kept = [0, 1, 3, 4, 5]
    # within a few grey levels (these random saturated colours lose more to chroma subsampling than faces do)
    assert np.abs(whole[kept].astype(int) - crops[kept]).mean() < 4.0
    # A row, a slice, rows out of order and repeated: each the same pixels as the whole read.
    assert np.array_equal(stored[4], whole[4])
    assert np.array_equal(stored[1:4], whole[1:4])
    assert np.array_equal(stored[np.array([5, 2, 0, 5])], whole[[5, 2, 0, 5]])
    assert np.array_equal(stored.decode(np.array([3, 1])).numpy(), whole[[3, 1]])
    # One clip's blob read alone gives back what the split's reader gives for it.
    blob = encode_clip(crops[3], 90)
    assert np.array_equal(JpegCrops(blob, np.array([[0, len(blob)]]), crops[3].shape)[0], whole[3])


def test_a_lower_quality_is_smaller_and_further_from_the_raw_crops() -> None:
    crops = smooth_crops(4, seed=1)
    fine, coarse = packed(crops, 95), packed(crops, 20)
    assert coarse.stored_nbytes < fine.stored_nbytes
    error = [np.abs(s[np.arange(4)].astype(int) - crops).mean() for s in (fine, coarse)]
    assert error[0] < error[1]


def test_a_damaged_blob_is_reported_as_a_damaged_cache() -> None:
    crops = smooth_crops(2)
    stored = packed(crops)
    cut = JpegCrops(stored.blobs, stored.spans - np.array([[0, 10], [0, 0]]), crops.shape[1:])  # first clip 10 bytes short
    with pytest.raises(CacheDamaged, match="does not hold 4 crops"):
        cut[0]
    garbled = stored.blobs.copy()
    garbled[stored.spans[1, 0] + 40 : stored.spans[1, 0] + 400] = 7  # inside the first JPEG of clip 1
    with pytest.raises(CacheDamaged, match="JPEG crops|JPEG crop of"):
        JpegCrops(garbled, stored.spans, crops.shape[1:])[1]


# ------------------------------------------------------------------------ prepared from real clips

@pytest.fixture(scope="module")
def prepared(shared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PrepareReport]:
    """The real clips' face crops prepared raw and as JPEG into one cache (a thread as the pool)."""
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(shared_sample)
    with ThreadPoolExecutor(1) as pool:
        return {name: prepare_features(ds, cfg, cache_root=cache, pool=pool, workers=1)
                for name, cfg in (("raw", RAW), ("jpeg", JPEG))}


def test_jpeg_storage_writes_far_fewer_bytes_and_decodes_close_to_raw(prepared: dict[str, PrepareReport]) -> None:
    raw, jpeg = prepared["raw"], prepared["jpeg"]
    assert not raw.failures and not jpeg.failures
    for split in ("train", "val"):
        crops, raw_index = load_split(raw.cache, split)
        stored, index = load_split(jpeg.cache, split)
        assert isinstance(stored, JpegCrops) and stored.shape == crops.shape == (5, *RAW.shape)
        assert [r["fallback"] for r in index] == [r["fallback"] for r in raw_index]  # the same faces found
        packs = [(f / f"{split}.npy").stat().st_size for f in (raw.cache, jpeg.cache)]
        assert packs[1] < packs[0] / 8, packs  # about 12x smaller at quality 90 on these faces
        error = np.abs(stored[np.arange(len(stored))].astype(int) - np.asarray(crops, dtype=int))
        assert error.mean() < 2.5 and error.mean(axis=(1, 2, 3, 4)).max() < 4.0  # a few grey levels at most
    whole_folders = [sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) for f in (raw.cache, jpeg.cache)]
    assert whole_folders[1] < whole_folders[0] / 6  # shards included


def test_a_raw_cache_is_never_read_as_jpeg(prepared: dict[str, PrepareReport], shared_sample: Path) -> None:
    raw, jpeg = prepared["raw"], prepared["jpeg"]
    assert raw.cache != jpeg.cache and jpeg.reused == 0 and jpeg.done == jpeg.total  # nothing taken from the raw one
    ds = load_dataset(shared_sample)
    assert feature_dir(ds, JPEG, raw.cache.parent.parent) == jpeg.cache
    other = VideoFeatures(frames=4, crop_storage="jpeg", crop_quality=75)
    assert len({RAW.key(), JPEG.key(), other.key()}) == 3  # the quality names its own cache too
    assert RAW.cache_settings() == asdict(RAW)  # one plain key of every setting
    assert '"crop_storage": "jpeg"' in (jpeg.cache / "settings.json").read_text()
    assert '"crop_storage": "raw"' in (raw.cache / "settings.json").read_text()


def test_training_batches_come_out_in_the_raw_layout(prepared: dict[str, PrepareReport]) -> None:
    raw = load_arrays({"video": prepared["raw"].cache}, "train")
    jpeg = load_arrays({"video": prepared["jpeg"].cache}, "train")
    assert isinstance(jpeg.inputs["video"], JpegCrops) and jpeg.nbytes == raw.nbytes
    got = list(batches(jpeg, 2, shuffle=True, generator=np.random.default_rng(3), readahead=2))
    want = list(batches(raw, 2, shuffle=True, generator=np.random.default_rng(3)))
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]
    for (g, _), (w, _) in zip(got, want):
        assert g["video"].dtype == torch.uint8 and g["video"].shape == w["video"].shape
        assert (g["video"].int() - w["video"].int()).abs().float().mean() < 2.5
    # The resident path decodes the whole split once, to the same pixels as the batches.
    resident = DeviceResident(jpeg, torch.device("cpu"))
    assert torch.equal(resident.inputs["video"], jpeg.take(np.arange(len(jpeg)))["video"])
    for batch, _ in resident.batches(2, generator=np.random.default_rng(0)):
        assert batch["video"].shape[1:] == (4, 112, 112, 3)


def test_cross_validation_folds_read_jpeg_crops(prepared: dict[str, PrepareReport]) -> None:
    from harness.data.folds import pool, subset

    splits = {s: load_arrays({"video": prepared["jpeg"].cache}, s) for s in ("train", "val")}
    pooled, keys = pool(splits)
    fold = subset(pooled, np.array([1, 6, 8]))
    got = fold.arrays(np.arange(3))["video"]
    assert got.shape == (3, *JPEG.shape) and keys[6].startswith("val/")
    assert np.array_equal(got[1], splits["val"].inputs["video"][1])


def test_predict_scores_the_pixels_training_read(prepared: dict[str, PrepareReport], shared_sample: Path,
                                                 tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from harness.modalities import build_model
    from harness.predict import Predictor

    cfg = RunConfig(modality="video", video=JPEG, train=TrainConfig(backbone="test_byobnet.r160_in1k", pretrained=False))
    torch.manual_seed(0)
    weights = tmp_path / "best.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(cfg, pretrained=False).state_dict().items()}, str(weights))
    predictor = Predictor(cfg, weights)
    stored, index = load_split(prepared["jpeg"].cache, "val")
    clips = [shared_sample / "valset" / r["name"] for r in index[:2]]
    for clip, row in zip(clips, index):
        # Exactly the decoded cache row: the same face crops, encoder and decoder.
        assert np.array_equal(predictor.features(clip)["video"], stored[int(row["row"])])
        assert np.array_equal(extract(clip, JPEG)[0], stored[int(row["row"])])
    scores = [row.score for row in predictor.score_many(clips)]
    assert scores == pytest.approx(predictor.score_images(stored[np.arange(2)]).tolist(), abs=1e-9)
    assert all(0.0 < s < 1.0 for s in scores)


# -------------------------------------------------------------------------------- the commands

def test_a_bad_crop_storage_is_refused_naming_the_key(tmp_path: Path) -> None:
    with isolated_home(tmp_path):  # refused before anything is made: no demo, no cache, no store
        bad = run_main("prepare", "--modality", "video", "--crop-storage", "png")
        assert bad.exit_code == 2 and "video.crop_storage: unknown crop storage 'png'; choose from raw, jpeg" in bad.stderr
        low = run_main("train", "--modality", "video", "--crop-quality", "0")
        assert low.exit_code == 2 and "video.crop_quality: must lie in [1, 100], got 0" in low.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a model
def test_train_and_predict_on_jpeg_crops(shared_sample: Path, tmp_path: Path) -> None:
    with isolated_home(tmp_path):
        trained = run_main("train", "--data", str(shared_sample), "--modality", "video", "--crop-storage", "jpeg",
                           "--crop-quality", "85", "--backbone", "test_byobnet.r160_in1k", "--no-pretrained",
                           "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--experiment", "t")
        assert trained.exit_code == 0, trained.stderr
        run_id = trained.stdout.split("run id: ")[1].split()[0]
        from harness import tracking

        run = tracking.setup().get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["video.crop_storage"] == "jpeg" and run.data.params["video.crop_quality"] == "85"
        assert any(p.name.startswith("video-") and '"crop_quality": 85' in (p / "settings.json").read_text()
                   for p in (tmp_path / "cache").glob("*/video-*"))
        clip = sorted((shared_sample / "valset").glob("*.mp4"))[0]
        scored = run_main("predict", str(clip), "--run-id", run_id)
        assert scored.exit_code == 0, scored.stderr
        score = float(scored.stdout.strip().rsplit(",", 1)[1])
        assert 0.0 <= score <= 1.0
