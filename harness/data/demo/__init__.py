"""A deterministic synthetic data set laid out as the 2024 Global Multimedia Deepfake Detection challenge's:

    OUT/trainset/*.mp4  OUT/valset/*.mp4  OUT/testset/*.mp4
    OUT/train_label.txt  OUT/val_label.txt     video_name,target   (1 = deepfake)
    OUT/test_template.csv                      video_name,score    (0.5 for every test clip)
    OUT/methods.csv                            video_name,method,modality of train and val clips
    OUT/.answers/test_label.txt                the hidden test labels, to score a submission
    OUT/.answers/methods.csv                   the test clips' methods, one of them never in train or val
    OUT/.answers/clips.csv                     which artefacts each clip carries, at what strength
    OUT/.demo.json                             the parameters; written last, so it marks a complete set

Each clip (H.264 96x96 at 12 fps, AAC mono 16 kHz) holds synthetic speech and a face whose mouth follows it, with
a real recording's nuisances; a fake is fake in its audio, its video or both, by the methods of `dataset.METHODS`.
"""
from __future__ import annotations

from harness.data.demo.clip import FPS, SAMPLE_RATE, SIZE
from harness.data.demo.dataset import FORMAT, MARKER, make_demo_dataset

__all__ = ["FORMAT", "FPS", "MARKER", "SAMPLE_RATE", "SIZE", "make_demo_dataset"]
