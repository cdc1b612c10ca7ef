"""RGB -> video frame conversion: OpenCV's I420 path matches libswscale's and keeps timing."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

from stream.frame_convert import from_rgb, to_rgb


def _rgb(h: int, w: int, noise: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) // 5 % 256], axis=2)
    return np.clip(smooth + rng.integers(-noise, noise + 1, (h, w, 3)), 0, 255).astype(np.uint8)


def test_even_frames_become_yuv420p_matching_swscale() -> None:
    rgb = _rgb(480, 640, noise=0)
    like = av.VideoFrame(640, 480, "yuv420p")
    like.pts, like.time_base = 12345, Fraction(1, 90000)
    out = from_rgb(rgb, like=like)
    assert out.format.name == "yuv420p" and (out.width, out.height) == (640, 480)
    assert out.pts == 12345 and out.time_base == Fraction(1, 90000)
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    diff = np.abs(out.to_ndarray().astype(int) - ref.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.1  # same BT.601 limited-range matrix as libswscale
    # With fine detail the two chroma down-samplers differ (box vs swscale's filter); luma still agrees.
    # Image-like detail (noise blurred to a camera's resolution), not white noise, for the colour loss.
    noisy = cv2.GaussianBlur(_rgb(480, 640, noise=60), (0, 0), 1.2)
    y_cv = from_rgb(noisy).to_ndarray()[:480]
    y_sws = av.VideoFrame.from_ndarray(noisy, format="rgb24").reformat(format="yuv420p").to_ndarray()[:480]
    assert np.abs(y_cv.astype(int) - y_sws.astype(int)).max() <= 1
    err_cv = np.abs(to_rgb(from_rgb(noisy)).astype(int) - noisy.astype(int)).mean()
    sws = av.VideoFrame.from_ndarray(noisy, format="rgb24").reformat(format="yuv420p")
    err_sws = np.abs(to_rgb(sws).astype(int) - noisy.astype(int)).mean()
    # OpenCV box-filters chroma while libswscale's up-sampler expects its own filter: a little more
    # colour loss at fine colour detail, well under one level on average.
    assert err_cv <= err_sws + 1.0


def test_real_frames_lose_no_more_than_libswscale(clip_frames) -> None:
    frame = np.ascontiguousarray(clip_frames("liveportrait_d12", n=1).frames[0])
    err_cv = np.abs(to_rgb(from_rgb(frame)).astype(int) - frame.astype(int)).mean()
    sws = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
    err_sws = np.abs(to_rgb(sws).astype(int) - frame.astype(int)).mean()
    assert err_cv <= 1.1 * err_sws


def test_odd_frames_stay_rgb() -> None:
    rgb = _rgb(479, 641)
    out = from_rgb(rgb)
    assert out.format.name == "rgb24" and (out.width, out.height) == (641, 479)
    assert np.array_equal(to_rgb(out), rgb)
