"""Synthetic degradations for training restoration: x = JPEG_q((y ⊛ k_σ)↓r + n_δ), and video-codec artefacts.

Everything is numpy/OpenCV/PyAV on RGB uint8 images and deterministic given a seed (``numpy.random.Generator``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import cv2
import numpy as np


@dataclass(frozen=True)
class DegradeRanges:
    """Uniform sampling ranges (GFPGAN/CodeFormer-style classical degradation)."""

    sigma: tuple[float, float] = (0.2, 10.0)  # gaussian blur std, px at full resolution
    scale: tuple[float, float] = (1.0, 8.0)  # downsampling factor r
    noise: tuple[float, float] = (0.0, 15.0)  # gaussian noise std δ on the 0-255 scale
    jpeg_quality: tuple[int, int] = (60, 100)


@dataclass(frozen=True)
class DegradeParams:
    sigma: float
    scale: float
    noise: float
    jpeg_quality: int

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.scale >= 1 and self.noise >= 0 and 1 <= self.jpeg_quality <= 100):
            raise ValueError(f"invalid degradation parameters {self}")


def sample_params(rng: np.random.Generator, ranges: DegradeRanges = DegradeRanges()) -> DegradeParams:
    return DegradeParams(
        sigma=float(rng.uniform(*ranges.sigma)),
        scale=float(rng.uniform(*ranges.scale)),
        noise=float(rng.uniform(*ranges.noise)),
        jpeg_quality=int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1)),
    )


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur with a ±3σ gaussian kernel (float32 in, float32 out); sigma 0 is a no-op."""
    if sigma <= 0:
        return image.astype(np.float32)
    k = 2 * math.ceil(3.0 * sigma) + 1
    return cv2.GaussianBlur(
        image.astype(np.float32), (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )


def add_gaussian_noise(image: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """Independent per-channel (colour) gaussian noise of std ``delta`` (0-255 scale), float32 out."""
    x = image.astype(np.float32)
    if delta <= 0:
        return x
    return x + rng.normal(0.0, delta, size=x.shape).astype(np.float32)


def downsampled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width / scale)), max(1, round(height / scale))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through OpenCV's libjpeg at ``quality`` (RGB in, RGB out)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def degrade(image: np.ndarray, params: DegradeParams, rng: np.random.Generator, resize_back: bool = True) -> np.ndarray:
    """x = JPEG_q((y ⊛ k_σ)↓r + n_δ), optionally resized back to y's size (what a restorer takes in).

    The blur is explicit, so the downsampling is plain bilinear (no extra anti-aliasing), as in the model.
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    x = gaussian_blur(image, params.sigma)
    size = downsampled_size(w, h, params.scale)
    if size != (w, h):
        x = cv2.resize(x, size, interpolation=cv2.INTER_LINEAR)
    x = add_gaussian_noise(x, params.noise, rng)
    x = jpeg(np.clip(np.rint(x), 0, 255).astype(np.uint8), params.jpeg_quality)
    if resize_back and x.shape[:2] != (h, w):
        x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    return x


def random_degrade(
    image: np.ndarray, seed: int, ranges: DegradeRanges = DegradeRanges(), resize_back: bool = True
) -> tuple[np.ndarray, DegradeParams]:
    """Sample parameters and degrade; the same seed gives the same output."""
    rng = np.random.default_rng(seed)
    params = sample_params(rng, ranges)
    return degrade(image, params, rng, resize_back), params


# -- video codecs ------------------------------------------------------------------------------------
Codec = Literal["libvpx", "libx264"]
_CONTAINER = {"libvpx": "webm", "libx264": "mp4"}


def jittered_sequence(
    image: np.ndarray, n_frames: int, rng: np.random.Generator, max_shift_px: float = 1.5, max_rot_deg: float = 1.0
) -> list[np.ndarray]:
    """The image repeated with small random sub-pixel similarity jitter: enough motion for the codec's
    motion compensation and inter-frame artefacts, from a single still."""
    _check_rgb(image)
    h, w = image.shape[:2]
    frames = [image]
    for _ in range(n_frames - 1):
        angle = rng.uniform(-max_rot_deg, max_rot_deg)
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        m[:, 2] += rng.uniform(-max_shift_px, max_shift_px, size=2)
        frames.append(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101))
    return frames


def codec_roundtrip(
    frames: Sequence[np.ndarray], codec: Codec = "libx264", bitrate_kbps: int = 200, fps: int = 25
) -> list[np.ndarray]:
    """Encode ``frames`` (RGB uint8, one size) at a low constant bitrate in memory and decode them back.

    Odd sizes are padded by edge replication (4:2:0 needs even sizes) and cropped back. Single-threaded
    encoders so that the output is bit-reproducible.
    """
    if codec not in _CONTAINER:
        raise ValueError(f"codec must be one of {sorted(_CONTAINER)}, got {codec!r}")
    if not frames:
        raise ValueError("no frames to encode")
    for f in frames:
        _check_rgb(f)
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError("all frames must share one size")
    ph, pw = h + h % 2, w + w % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_CONTAINER[codec]) as out:
        stream = out.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.bit_rate = bitrate_kbps * 1000
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8", "threads": "1", "lag-in-frames": "0"}
        for i, f in enumerate(frames):
            padded = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    decoded: list[np.ndarray] = []
    with av.open(buf, mode="r") as inp:
        for frame in inp.decode(video=0):
            decoded.append(np.ascontiguousarray(frame.to_ndarray(format="rgb24")[:h, :w]))
    if len(decoded) != len(frames):
        raise RuntimeError(f"{codec}: decoded {len(decoded)} of {len(frames)} frames")
    return decoded


def codec_degrade(
    image: np.ndarray, seed: int, codec: Codec = "libx264", n_frames: int = 6, bitrate_kbps: int = 200
) -> np.ndarray:
    """Codec artefacts on a still: encode a jittered sequence ending on the unjittered image and return
    that last, inter-coded frame (aligned with ``image``, so usable as a (degraded, clean) pair)."""
    rng = np.random.default_rng(seed)
    seq = jittered_sequence(image, n_frames, rng)
    seq[-1] = image  # the target frame is the unjittered one, so (degraded, clean) stay aligned
    return codec_roundtrip(seq, codec, bitrate_kbps)[-1]
