from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.labels import DatasetError, load_dataset
from tests.conftest import write_labels


def test_real_sample_with_trainset_label_naming(shared_sample: Path) -> None:
    ds = load_dataset(shared_sample)
    assert ds.track == "video"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [5, 5, 0]
    assert {s.label for s in ds.split("val")} == {0, 1}
    assert all(s.path.is_file() for s in ds.split("train"))
    assert ds.split("train")[0].name == "6e14a72bccaaf5567209fc356ce04ab9.mp4"  # label-file order kept
    assert not ds.warnings


def test_template_order_and_fingerprint(small_dataset: Path) -> None:
    ds = load_dataset(small_dataset)
    assert ds.template == ["test1.mp4", "test0.mp4"]
    assert [s.name for s in ds.split("test")] == ds.template
    before = ds.fingerprint()
    write_labels(small_dataset / "val_label.txt", [("val0.mp4", 1), ("val1.mp4", 1)])
    assert load_dataset(small_dataset).fingerprint() != before


def test_test_split_without_template_lists_the_folder(small_dataset: Path) -> None:
    (small_dataset / "test_template.csv").unlink()
    ds = load_dataset(small_dataset)
    assert ds.template is None
    assert [s.name for s in ds.split("test")] == ["test0.mp4", "test1.mp4"]


def _error(root: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name,label\ntrain0.mp4,0\n", "train_label.txt:1: header must be 'video_name,target'"),
        ("video_name,target\ntrain0.mp4,2\n", "train_label.txt:2: target must be 0 or 1, found '2'"),
        ("video_name,target\ntrain0.mp4,0\ntrain0.mp4,1\n", "train_label.txt:3: duplicate name 'train0.mp4' (first on line 2)"),
        ("video_name,target\n../val0.mp4,0\n", "train_label.txt:2: name leaves the split folder: '../val0.mp4'"),
        ("video_name,target\n/etc/passwd.mp4,0\n", "train_label.txt:2: absolute path not allowed"),
        ("video_name,target\nnothere.mp4,1\n", "train_label.txt:2: listed file is missing"),
        ("video_name,target\ntrain0.txt,1\n", "train_label.txt:2: unsupported extension '.txt'"),
        ("video_name,target\ntrain0.mp4,1,extra\n", "train_label.txt:2: expected 2 columns, found 3"),
        ("", "train_label.txt:1: empty file"),
    ],
)
def test_bad_label_files(small_dataset: Path, content: str, expected: str) -> None:
    (small_dataset / "train_label.txt").write_text(content)
    assert expected in _error(small_dataset)


def test_missing_label_file_names_both_forms(small_dataset: Path) -> None:
    (small_dataset / "val_label.txt").unlink()
    message = _error(small_dataset)
    assert "val_label.txt: missing label file for valset/" in message and "valset_label.txt" in message


def test_template_duplicates_and_missing_files(small_dataset: Path) -> None:
    (small_dataset / "test_template.csv").write_text("video_name,score\ntest0.mp4,0\ntest0.mp4,0\n")
    assert "test_template.csv:3: duplicate name" in _error(small_dataset)
    (small_dataset / "test_template.csv").write_text("video_name,score\ntest9.mp4,0\n")
    assert "test_template.csv:2: listed file is missing" in _error(small_dataset)


def test_unlisted_files_are_a_warning(small_dataset: Path) -> None:
    (small_dataset / "trainset" / "stray.mp4").write_bytes((small_dataset / "trainset" / "train0.mp4").read_bytes())
    ds = load_dataset(small_dataset)
    assert len(ds.split("train")) == 4
    assert any("1 file(s) not listed in train_label.txt" in w and "stray.mp4" in w for w in ds.warnings)


def test_an_empty_split_is_a_warning(small_dataset: Path) -> None:
    for clip in (small_dataset / "valset").iterdir():
        clip.unlink()
    write_labels(small_dataset / "val_label.txt", [])  # the header only
    ds = load_dataset(small_dataset)
    assert ds.split("val") == [] and len(ds.split("train")) == 4
    assert ds.warnings == [f"{small_dataset / 'val_label.txt'}: lists no clips: the val split is empty"]


def test_missing_folder_and_empty_dataset(tmp_path: Path) -> None:
    assert "dataset folder not found" in _error(tmp_path / "nope")
    (tmp_path / "labels.csv").write_text("video_name,target\n")
    assert _error(tmp_path / "labels.csv") == (f"{tmp_path / 'labels.csv'}: a file, not a dataset folder "
                                                "(trainset/, valset/, testset/ and label files)")
    (tmp_path / "empty").mkdir()
    assert "no trainset/, valset/ or testset/" in _error(tmp_path / "empty")


def test_image_track_is_detected(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    root = tmp_path / "faces"
    (root / "trainset").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "trainset" / f"f{i}.jpg"), np.full((16, 16, 3), 40 * i, np.uint8))
    write_labels(root / "trainset_label.txt", [(f"f{i}.jpg", i % 2) for i in range(3)])
    ds = load_dataset(root)
    assert ds.track == "image" and len(ds.split("train")) == 3


# ---- one rule for what a clip is (issue 16, item 12) ----------------------------------------------

def write_audio_file(path: Path, seconds: float = 1.0, freq: float = 440.0) -> Path:
    """An audio-only file: PCM in .wav, AAC in .m4a (mp4 family), 16 kHz mono."""
    import av
    import numpy as np

    rate = 16000
    wave = (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    with av.open(str(path), "w", format="wav" if codec == "pcm_s16le" else "mp4") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        samples = (wave * 32767).astype(np.int16) if fmt == "s16" else wave
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_the_media_rule() -> None:
    from harness.data.media import is_clip, is_image, is_media

    assert all(is_clip(n) for n in ("a.mp4", "b.MKV", "c.wav", "d.M4A", "e.mp3", "dir/f.flac"))
    assert not any(is_clip(n) for n in ("a.jpg", "b.txt", "c", "d.mp4.part"))
    assert is_image("x.JPG") and is_image("y.png") and not is_image("z.mp4")
    assert all(is_media(n) for n in ("a.mp4", "b.wav", "c.jpeg")) and not is_media("notes.txt")


def test_audio_only_files_are_clips_everywhere(small_dataset: Path) -> None:
    """Listed: accepted. Present but unlisted: the same warning as any clip. Without a template: test clips."""
    train = small_dataset / "trainset"
    write_audio_file(train / "voice.wav")
    write_audio_file(train / "VOICE2.M4A", freq=300)
    write_audio_file(train / "stray.wav")
    write_audio_file(train / "stray.m4a")
    (train / "notes.txt").write_text("not media: never a clip, never warned about")
    rows = [(f"train{i}.mp4", i % 2) for i in range(4)] + [("voice.wav", 1), ("VOICE2.M4A", 0)]
    write_labels(small_dataset / "train_label.txt", rows)
    write_audio_file(small_dataset / "testset" / "extra.wav")
    (small_dataset / "test_template.csv").unlink()

    ds = load_dataset(small_dataset)
    assert ds.track == "video"
    assert [s.name for s in ds.split("train")][-2:] == ["voice.wav", "VOICE2.M4A"]
    [warning] = [w for w in ds.warnings if "train_label.txt" in w]
    assert "2 file(s) not listed in train_label.txt" in warning and "stray.wav" in warning and "stray.m4a" in warning
    assert "notes.txt" not in warning
    assert [s.name for s in ds.split("test")] == ["extra.wav", "test0.mp4", "test1.mp4"]


def test_a_folder_of_audio_files_is_a_clip_dataset(tmp_path: Path) -> None:
    root = tmp_path / "voices"
    (root / "trainset").mkdir(parents=True)
    for i in range(3):
        write_audio_file(root / "trainset" / f"v{i}.wav", freq=200 + 100 * i)
    write_labels(root / "train_label.txt", [(f"v{i}.wav", i % 2) for i in range(3)])
    ds = load_dataset(root)
    assert ds.track == "video" and [s.name for s in ds.split("train")] == ["v0.wav", "v1.wav", "v2.wav"]


def test_an_audio_file_gives_audio_features_and_no_faces(tmp_path: Path) -> None:
    from harness.config import AudioFeatures, VideoFeatures
    from harness.data.cache import extract
    from harness.data.media import NoVideo

    clip = write_audio_file(tmp_path / "a.wav", seconds=1.5)
    image, fallback = extract(clip, AudioFeatures(width=64))
    assert image.shape == (128, 64) and image.max() > 0 and fallback is None
    with pytest.raises(NoVideo):
        extract(clip, VideoFeatures(frames=2, size=32))
