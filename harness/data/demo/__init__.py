"""A deterministic synthetic data set in the layout of the 2024 Global Multimedia Deepfake Detection
challenge (audio-video track), so that every command can be run end to end without the real data.

Layout (what `harness.data.labels` reads):

    OUT/trainset/*.mp4  OUT/valset/*.mp4  OUT/testset/*.mp4
    OUT/train_label.txt  OUT/val_label.txt     video_name,target   (1 = deepfake)
    OUT/test_template.csv                      video_name,score    (0.5 for every test clip)
    OUT/.answers/test_label.txt                the hidden test labels, to score a submission
    OUT/.answers/clips.csv                     which artefacts each clip carries, at what strength
    OUT/.demo.json                             the parameters; written last, so it marks a complete set

Each clip is a small mp4 (H.264 96x96 at 12 fps, AAC mono 16 kHz): speech-like audio (a harmonic
source with gliding pitch, formant resonances, syllable envelopes, fricative bursts) and a face-like
picture whose mouth opens with the audio envelope. Genuine clips vary in the nuisances of real
recordings (room, microphone colouration, noise, hum, level, camera blur and noise), so that no single
trivial feature separates the classes. As in the challenge, a fake may be fake in its audio, its video
or both. Audio fakes carry a vocoder's mark (harmonics smeared across frequency, phase partly random),
often with band-limiting, spectral holes or a faint tonal buzz; video fakes a blended inner face with a
colour and sharpness seam, sometimes jittering against the head or with its mouth out of step with the
audio. Each fake's artefacts have one of a few strengths, from barely there to plain.
"""
from __future__ import annotations

from harness.data.demo.clip import FPS, SAMPLE_RATE, SIZE
from harness.data.demo.dataset import FORMAT, MARKER, make_demo_dataset

__all__ = ["FORMAT", "FPS", "MARKER", "SAMPLE_RATE", "SIZE", "make_demo_dataset"]
