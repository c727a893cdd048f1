"""The demo clip's container: H.264 + AAC in mp4, encoded so the bytes depend on the content alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.demo.clip import FPS, SAMPLE_RATE, SIZE


def _encode(path: Path, video: np.ndarray, audio: np.ndarray) -> None:
    """Write H.264 + AAC mp4, single-threaded, so the bytes depend on the content alone."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"  # FFmpeg builds without GPL parts
    with av.open(str(path), "w", format="mp4") as container:
        options = {"threads": "1"}
        if codec == "libx264":
            # Without macroblock-tree rate control: with it, this x264 build was measured to give other
            # bytes for the same frames now and then, depending on what the process encoded before.
            options |= {"crf": "26", "x264-params": "mbtree=0"}
        vstream = container.add_stream(codec, rate=FPS, options=options)
        if codec == "mpeg4":
            vstream.bit_rate = 64_000  # its default, 200 kb/s, is far more than 96x96 needs
        vstream.width = vstream.height = SIZE
        vstream.pix_fmt = "yuv420p"
        vstream.thread_count = 1
        astream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        astream.bit_rate = 48_000  # below ~40 kb/s FFmpeg's AAC encoder low-passes under 8 kHz
        for i, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        for start in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            container.mux(astream.encode(frame))
        container.mux(astream.encode())
