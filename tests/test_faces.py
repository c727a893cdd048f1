"""Face crops: detection on the real clips, frame sampling, the counted fallback, the image track."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config import VideoFeatures, replace
from harness.data.cache import load_split, prepare_features
from harness.data.faces import centre_box, crop_faces, detector, square_crop, video_features
from harness.data.labels import load_dataset
from harness.data.media import NoVideo, display_matrix, sample_frames
from tests.conftest import write_clip, write_labels

FACES = VideoFeatures(frames=4, size=48)


@pytest.mark.parametrize("name", ["yunet", "haar"])
def test_a_face_is_found_in_at_least_95_percent_of_the_real_clips_frames(shared_sample: Path, name: str) -> None:
    cfg = VideoFeatures(detector=name)  # otherwise the defaults: 8 frames a clip
    find = detector(cfg)
    clips = sorted(shared_sample.glob("*set/*.mp4"))
    frames = [f for c in clips for f in sample_frames(c, cfg.frames)]
    faces = [find.largest_face(f) for f in frames]
    found = [(face.box, f) for face, f in zip(faces, frames) if face is not None]
    assert len(frames) == 10 * cfg.frames
    assert len(found) >= 0.95 * len(frames), f"faces found in {len(found)} of {len(frames)} frames"
    for (x0, y0, x1, y1), f in found:  # a face in these clips spans about half the frame
        assert 0.25 < (x1 - x0) / f.shape[1] < 0.9 and 0 <= x0 < x1 <= f.shape[1] + 1


def test_frames_are_spread_over_the_clip_in_order(tmp_path: Path) -> None:
    # write_clip paints frame i with grey level 7 * i: the picks' grey levels say which frames they are
    clip = write_clip(tmp_path / "c.mp4", seconds=4.0, audio=False)
    picks = sample_frames(clip, 4)
    levels = [int(round(p.mean() / 7)) for p in picks]
    assert len(picks) == 4 and levels == sorted(levels) and len(set(levels)) == 4
    assert levels[0] <= 10 and levels[-1] >= 30  # from the first quarter to the last (40 frames)


def test_a_short_clip_gives_what_it_has_and_crops_fill_up(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "short.mp4", seconds=0.2, audio=False)  # two frames
    assert len(sample_frames(clip, 8)) <= 2
    crops = video_features(clip, VideoFeatures(frames=8, size=32))
    assert crops.crops.shape == (8, 32, 32, 3) and crops.crops.dtype == np.uint8


def test_frames_without_a_face_fall_back_to_the_centre_and_are_counted(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "flat.mp4", seconds=2.0, audio=False)  # flat grey frames: no face
    result = video_features(clip, FACES)
    assert result.fallback == FACES.frames
    frame = sample_frames(clip, FACES.frames)[0]
    expected = square_crop(frame, centre_box(frame, FACES.fallback_crop), 0.0, FACES.size)
    assert np.array_equal(result.crops[0], expected)


def test_a_crop_near_the_border_keeps_the_face_in_place() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:20, :20] = 255  # a "face" in the corner
    crop = square_crop(rgb, (0, 0, 20, 20), 0.5, 40)
    assert crop.shape == (40, 40, 3)
    assert crop[20, 20].mean() == 255  # the box's centre stays at the crop's centre


@pytest.mark.slow  # spawns a worker pool
def test_a_clip_without_video_is_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_clip(root / "trainset" / "av.mp4", seconds=1.0)
    write_clip(root / "trainset" / "audio_only.mp4", seconds=1.0, video=False)
    (root / "trainset" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_labels(root / "train_label.txt", [("av.mp4", 0), ("audio_only.mp4", 1), ("garbage.mp4", 0)])
    with pytest.raises(NoVideo):
        sample_frames(root / "trainset" / "audio_only.mp4", 2)
    report = prepare_features(load_dataset(root), FACES, cache_root=tmp_path / "cache", workers=1)
    reasons = {f.name: f.reason for f in report.failures}
    assert reasons == {"audio_only.mp4": "no video stream", "garbage.mp4": "undecodable"}
    crops, index = load_split(report.cache, "train")
    assert crops.shape == (3, *FACES.shape)
    assert [r["ok"] for r in index] == ["1", "0", "0"] and index[0]["fallback"] == str(FACES.frames)
    assert report.frames == FACES.frames and report.fallback_frames == FACES.frames


@pytest.mark.slow  # spawns a worker pool
def test_the_image_track_prepares_one_crop_per_image(shared_sample: Path, tmp_path: Path) -> None:
    import cv2

    root = tmp_path / "images"
    frames = sample_frames(sorted(shared_sample.glob("trainset/*.mp4"))[0], 2)
    (root / "trainset").mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(root / "trainset" / f"face{i}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (root / "trainset" / "broken.png").write_bytes(b"not an image at all")
    write_labels(root / "train_label.txt", [("face0.jpg", 0), ("face1.jpg", 1), ("broken.png", 1)])
    ds = load_dataset(root)
    assert ds.track == "image"
    cfg = VideoFeatures(frames=1, size=64)
    report = prepare_features(ds, cfg, cache_root=tmp_path / "cache", workers=1)
    crops, index = load_split(report.cache, "train")
    assert crops.shape == (3, 1, 64, 64, 3)
    assert [r["ok"] for r in index] == ["1", "1", "0"] and report.failures[0].reason == "undecodable"
    assert report.fallback_frames == 0  # real faces, found
    # the crop is the detected face, not the centre fallback of the whole picture
    whole = square_crop(frames[0], centre_box(frames[0], cfg.fallback_crop), 0.0, 64)
    assert not np.array_equal(crops[0, 0], whole)


def test_crop_faces_counts_per_frame(shared_sample: Path) -> None:
    frames = sample_frames(sorted(shared_sample.glob("valset/*.mp4"))[0], 3)
    blank = np.full_like(frames[0], 128)
    result = crop_faces([frames[0], blank, frames[2]], VideoFeatures(frames=3, size=32))
    assert result.fallback == 1 and result.crops.shape == (3, 32, 32, 3)


def test_a_stream_without_a_declared_length_is_sampled_by_frame_count(tmp_path: Path) -> None:
    import av

    clip = write_clip(tmp_path / "c.mp4", seconds=4.0, audio=False)
    raw = tmp_path / "c.h264"  # an elementary stream: no container, no duration
    with av.open(str(clip)) as src, av.open(str(raw), "w", format="h264") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with av.open(str(raw)) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    levels = lambda frames: [int(round(f.mean() / 7)) for f in frames]  # noqa: E731
    assert levels(sample_frames(raw, 4)) == levels(sample_frames(clip, 4)) == [5, 15, 25, 35]


# ---- the display matrix (issue 16, item 4) ---------------------------------------------------------

def write_turned_clip(path: Path, upright_frames: list[np.ndarray], degrees: int, hflip: bool = False,
                      vflip: bool = False) -> Path:
    """A clip as a phone writes one: the pixels stored turned, with a display matrix that shows them upright.

    `set_display_rotation` means: show the stored picture turned `degrees` counter-clockwise, then
    mirrored. So the stored picture is the upright one un-mirrored, then turned back clockwise."""
    import av

    stored = []
    for frame in upright_frames:
        frame = frame[:, ::-1] if hflip else frame
        frame = frame[::-1] if vflip else frame
        stored.append(np.ascontiguousarray(np.rot90(frame, -degrees // 90)))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast", "crf": "12"})
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for image in stored:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as check:  # the matrix is really in the file, as written
        frame = next(check.decode(video=0))
        assert (frame.height, frame.width) == stored[0].shape[:2] and display_matrix(frame) is not None
        assert hflip or vflip or frame.rotation == (degrees + 180) % 360 - 180
    return path


def _marked_frame() -> np.ndarray:
    """64 high, 96 wide: red block top-left, green top-right, blue bottom-left: every turn and flip differs."""
    rgb = np.full((64, 96, 3), 128, np.uint8)
    rgb[:16, :16] = (255, 0, 0)
    rgb[:16, -16:] = (0, 255, 0)
    rgb[-16:, :16] = (0, 0, 255)
    return rgb


@pytest.mark.parametrize(("degrees", "hflip", "vflip"),
                         [(90, False, False), (-90, False, False), (180, False, False), (0, True, False),
                          (0, False, True), (90, True, False), (-90, True, False)])
def test_frames_come_out_as_players_show_them(tmp_path: Path, degrees: int, hflip: bool, vflip: bool) -> None:
    upright = _marked_frame()
    clip = write_turned_clip(tmp_path / "turned.mp4", [upright] * 4, degrees, hflip, vflip)
    frames = sample_frames(clip, 2)
    assert frames and all(f.shape == upright.shape for f in frames)  # a quarter turn's H and W swapped back
    assert all(np.abs(f.astype(int) - upright).mean() < 6 for f in frames)  # the markers in their corners


def test_a_phone_clip_gives_upright_faces(shared_sample: Path, tmp_path: Path) -> None:
    """Real faces stored sideways with a display matrix: found as often as in the upright clip."""
    cfg = VideoFeatures(frames=6, size=48)
    source = sorted(shared_sample.glob("*set/*.mp4"))[0]
    upright = sample_frames(source, cfg.frames)
    clip = write_turned_clip(tmp_path / "portrait.mp4", upright, degrees=-90)  # stored turned, as phones do
    frames = sample_frames(clip, cfg.frames)
    sideways = [np.ascontiguousarray(np.rot90(f, 1)) for f in frames]  # what decoding without the matrix gave
    haar = detector(replace(cfg, detector="haar"))  # it misses sideways faces; YuNet is only less sure of them
    assert sum(haar.largest_face(f) is not None for f in frames) >= cfg.frames - 1
    assert sum(haar.largest_face(f) is not None for f in sideways) < sum(haar.largest_face(f) is not None for f in frames)
    upright, turned = crop_faces(frames, cfg), crop_faces(sideways, cfg)
    assert upright.fallback <= 1 and np.isfinite(upright.confidence).all()
    assert np.nanmax(turned.confidence) < np.nanmin(upright.confidence)
