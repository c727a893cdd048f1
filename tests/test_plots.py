"""Evaluation plots: four readable, non-blank PNGs, with or without both classes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.plots import save_evaluation_plots

NAMES = ["roc.png", "pr.png", "confusion.png", "score_hist.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_readable_png(path: Path) -> None:
    from matplotlib.image import imread
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(path).ndim == 3  # matplotlib decodes it
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
    assert min(rgb.shape[:2]) > 100
    # Not blank: a drawn figure has many distinct colours and plenty of non-white ink.
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert len(np.unique(packed)) > 10, f"{path.name} looks blank"
    assert np.mean(packed != 0xFFFFFF) > 0.01, f"{path.name} looks blank"


def scores(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(rng.normal(size=n) + 2 * (y - 0.5))))


def test_writes_four_pngs(tmp_path):
    y, s = scores()
    out = tmp_path / "nested" / "eval"  # created on demand
    paths = save_evaluation_plots(y, s, out, threshold=0.4, title="unit test")
    assert paths == [out / name for name in NAMES]
    for path in paths:
        assert_readable_png(path)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_still_writes_files(tmp_path, label):
    y = np.full(40, label)
    s = np.linspace(0.0, 1.0, 40)
    paths = save_evaluation_plots(y, s, tmp_path)
    assert [p.name for p in paths] == NAMES
    for path in paths:
        assert_readable_png(path)


def test_rewrites_existing_files(tmp_path):
    y, s = scores()
    first = [p.read_bytes() for p in save_evaluation_plots(y, s, tmp_path)]
    second = [p.read_bytes() for p in save_evaluation_plots(y, 1 - s, tmp_path)]
    assert all(a != b for a, b in zip(first, second))


def test_invalid_input_raises(tmp_path):
    with pytest.raises(ValueError, match="length"):
        save_evaluation_plots(np.array([0, 1]), np.array([0.5]), tmp_path)
    assert not list(tmp_path.iterdir())


def test_no_pyplot_and_lazy_matplotlib(tmp_path):
    # In a fresh interpreter: importing the module loads no matplotlib, and plotting never
    # touches pyplot, so no global figure state can leak between calls.
    code = (
        "import sys, numpy as np, pathlib\n"
        "import harness.plots as p\n"
        "assert 'matplotlib' not in sys.modules\n"
        "y, s = np.array([0, 1, 0, 1]), np.array([.1, .8, .4, .6])\n"
        f"p.save_evaluation_plots(y, s, pathlib.Path({str(tmp_path)!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "pr.png", "roc.png", "score_hist.png"]
