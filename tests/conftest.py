"""Shared fixtures. Data under ../shared/data is read in place (never copied) and is optional:
tests that need it skip with a reason where it is absent, e.g. on a user's fresh checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# -- shared data ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (relative to the project root), or skip the test."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA.resolve()} (only on the project's dev machines)")
    return SHARED_DATA.resolve()


@dataclass(frozen=True)
class Clip:
    """Decoded frames of a clip: RGB uint8 (read-only: the cache is shared) and their times."""

    frames: list[np.ndarray]
    times_s: list[float]
    fps: float
    path: Path


_CLIP_CACHE: dict[tuple[str, int | None], Clip] = {}


def decode_clip(path: Path, n: int | None = None) -> Clip:
    import av

    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            rgb.flags.writeable = False
            frames.append(rgb)
            times.append(float(frame.time))
            if n is not None and len(frames) >= n:
                break
        fps = float(stream.average_rate or 0)
    return Clip(frames, times, fps, path)


@pytest.fixture(scope="session")
def clip_frames(shared_data: Path) -> Callable[..., Clip]:
    """``clip_frames("liveportrait_d12", n=None)``: the first ``n`` frames (all if None), cached per session."""

    def get(name: str, n: int | None = None) -> Clip:
        key = (name, n)
        if key not in _CLIP_CACHE:
            path = shared_data / "video" / f"{name}.mp4"
            if not path.is_file():
                pytest.skip(f"shared clip {path} not found")
            _CLIP_CACHE[key] = decode_clip(path, n)
        return _CLIP_CACHE[key]

    return get


# -- models --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def landmarker_model() -> Path:
    """The cached, sha-verified face landmarker, or skip (tests never download it)."""
    from stream.model_asset import ModelAssetError, model_path

    try:
        return model_path()
    except ModelAssetError as e:
        pytest.skip(f"face landmarker model unavailable: {e}")


# -- browser: a fake-camera clip -----------------------------------------------------------------
def write_y4m(frames: list[np.ndarray], fps: float, path: Path) -> Path:
    """Write RGB frames as raw yuv420p ``.y4m``: what Chromium's fake camera (--use-file-for-fake-video-capture)
    plays, in a loop."""
    from fractions import Fraction

    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def to_4x3(rgb: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """Centre-crop to 4:3 and resize: a webcam-shaped frame, so a page asking for 640x480 gets it unscaled."""
    import cv2

    h, w = rgb.shape[:2]
    ch, cw = (h, h * 4 // 3) if w * 3 >= h * 4 else (w * 3 // 4, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(rgb[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="session")
def d12_y4m(clip_frames: Callable[..., Clip], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3 s of liveportrait_d12 (25 fps, the most head motion), cropped to 640x480, as a fake-camera
    ``.y4m`` in a session temp dir (never in the repo); skips where the shared data is absent."""
    clip = clip_frames("liveportrait_d12", n=75)
    frames = [to_4x3(f) for f in clip.frames]
    return write_y4m(frames, clip.fps or 25.0, tmp_path_factory.mktemp("y4m") / "liveportrait_d12.y4m")
