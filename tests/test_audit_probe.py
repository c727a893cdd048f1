"""One clip's metadata and fingerprint: silence, loudness, container fields, robustness of the bits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.audit.probe import TableSettings, audio_measures, fingerprint, probe_clip
from tests.test_audit_support import reencode, speech_like, write_av

S = TableSettings()
RATE = S.sample_rate


def _share(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_leading_and_trailing_silence_are_measured_to_the_frame() -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)
    audio = np.concatenate([np.zeros(int(0.25 * RATE), np.float32), tone, np.zeros(int(0.5 * RATE), np.float32)])
    measures, active = audio_measures(audio, S)
    assert measures["leading_silence"] == pytest.approx(0.25, abs=0.011)
    assert measures["trailing_silence"] == pytest.approx(0.5, abs=0.011)
    assert measures["duration_audio"] == pytest.approx(1.75)
    assert active is not None and active[0] == pytest.approx(0.25 * RATE, abs=160)
    # A sine of amplitude 0.5: peak -6.02 dBFS; RMS 0.5/sqrt(2) over 1 s of the 1.75 s
    assert measures["peak"] == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert measures["loudness"] == pytest.approx(10 * np.log10(0.125 / 1.75), abs=0.05)


def test_quiet_noise_below_the_level_counts_as_silence_but_speech_does_not() -> None:
    rng = np.random.default_rng(0)
    speech = speech_like(3, 1.0)
    hiss = (1e-4 * rng.standard_normal(int(0.4 * RATE))).astype(np.float32)  # -80 dBFS RMS: -70 dB re the peak
    measures, _ = audio_measures(np.concatenate([hiss, speech]), S)
    assert measures["leading_silence"] == pytest.approx(0.4, abs=0.05)
    louder, _ = audio_measures(np.concatenate([100 * hiss, speech]), S)  # -30 dB re the peak: above the -40 dB level
    assert louder["leading_silence"] < 0.3


def test_all_silent_audio_has_no_active_span() -> None:
    measures, active = audio_measures(np.zeros(RATE, np.float32), S)
    assert active is None and measures["leading_silence"] == measures["trailing_silence"] == 1.0


def test_fingerprint_ignores_gain_and_separates_other_clips() -> None:
    a = speech_like(11, 3.0)
    bits = fingerprint(a, S)
    assert bits.dtype == bool and bits.shape == (S.fingerprint_bits,)
    assert np.array_equal(fingerprint(0.25 * a, S), bits)  # -12 dB: every cell moves alike
    others = [_share(bits, fingerprint(speech_like(seed, 3.0), S)) for seed in range(20, 30)]
    assert max(others) < 0.7 and 0.4 < float(np.mean(others)) < 0.6


def test_a_steady_tone_gets_no_fingerprint() -> None:
    """Its bits would be codec noise: two different tones agreed in about 0.9 of them."""
    tone = 0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * RATE) / RATE).astype(np.float32)
    assert fingerprint(tone, S) is None
    assert fingerprint(tone * np.repeat([1.0, 0.3], RATE).astype(np.float32), S) is not None  # a step in level is structure


def test_probe_reads_the_container_and_survives_reencoding(tmp_path: Path) -> None:
    src = write_av(tmp_path / "a.mp4", speech_like(5, 2.0))
    row, packed = probe_clip(src, S)
    assert row["error"] == "" and row["audio_codec"] == "aac" and row["audio_sample_rate"] == 16000
    assert row["audio_channels"] == 1 and row["video_codec"] == "h264" and (row["width"], row["height"]) == (32, 32)
    assert row["fps"] == 10 and row["container"] == "mov" and row["file_size"] == src.stat().st_size
    assert row["duration_audio"] == pytest.approx(2.0, abs=0.1) and row["duration_container"] == pytest.approx(2.0, abs=0.15)
    assert len(row["sha256"]) == 64 and packed is not None and packed.shape == (S.fingerprint_bits // 8,)
    copy = reencode(src, tmp_path / "b.mp4", codec="libmp3lame", bitrate=48000, gain_db=-9)
    row2, packed2 = probe_clip(copy, S)
    assert row2["audio_codec"].startswith("mp3") and row2["sha256"] != row["sha256"]
    assert row2["peak"] == pytest.approx(row["peak"] - 9, abs=1.5)
    assert _share(np.unpackbits(packed), np.unpackbits(packed2)) > 0.85


def test_broken_and_empty_files_get_a_row_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 50)
    empty, fp_empty = probe_clip(tmp_path / "empty.mp4", S)
    junk, fp_junk = probe_clip(tmp_path / "junk.mp4", S)
    assert empty["error"].startswith("empty file") and empty["file_size"] == 0 and fp_empty is None
    assert junk["error"].startswith("undecodable") and junk["file_size"] == 900 and fp_junk is None
    assert junk["sha256"] and "audio_codec" not in junk


def test_a_clip_without_audio_keeps_its_video_fields(tmp_path: Path) -> None:
    from tests.conftest import write_clip

    row, packed = probe_clip(write_clip(tmp_path / "v.mp4", audio=False), S)
    assert row["error"] == "" and row["video_codec"] == "h264" and packed is None
    assert "loudness" not in row


def test_settings_key_changes_with_the_settings() -> None:
    assert TableSettings().key() == TableSettings().key()
    assert TableSettings(silence_db=-50).key() != TableSettings().key()
    assert TableSettings().key().startswith("audit-")
