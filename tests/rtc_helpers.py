"""Loopback WebRTC test helpers: a real server on 127.0.0.1:0, synthetic tracks whose frames say which
frame they are, and an aiortc client that never contacts anything but loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from aiohttp import ClientSession, web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from stream.config import ServerConfig
from stream.server import create_app

VIDEO_CLOCK = 90_000
CODE_BITS = 8  # frame index mod 256, as 8 black/white stripes across the top half


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """RGB frame: top half encodes ``index`` in binary stripes (robust to lossy coding), bottom half a
    moving ramp so consecutive frames differ everywhere."""
    img = np.empty((height, width, 3), np.uint8)
    edges = np.linspace(0, width, CODE_BITS + 1).astype(int)
    top = height // 2
    for b in range(CODE_BITS):
        img[:top, edges[b]:edges[b + 1]] = 255 if (index >> (CODE_BITS - 1 - b)) & 1 else 0
    ramp = ((np.arange(width) * 255 // max(width - 1, 1) + 4 * index) % 256).astype(np.uint8)
    img[top:] = ramp[None, :, None]
    return img


def decode_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`pattern_frame` (index mod 256) from the centre of each stripe."""
    h, w = rgb.shape[:2]
    edges = np.linspace(0, w, CODE_BITS + 1).astype(int)
    value = 0
    for b in range(CODE_BITS):
        x0, x1 = edges[b], edges[b + 1]
        pad = (x1 - x0) // 4
        patch = rgb[h // 8: 3 * h // 8, x0 + pad: x1 - pad]
        value = (value << 1) | int(patch.mean() > 127)
    return value


class PatternTrack(MediaStreamTrack):
    """A real-time video source: frame ``i`` at ``start + i / fps``; remembers when each pts was sent."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 30.0, frames: int | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps, self.frames = width, height, fps, frames
        self.sent_at: dict[int, float] = {}  # pts -> time.monotonic() when recv() returned it
        self.index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live" or (self.frames is not None and self.index >= self.frames):
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.index / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(pattern_frame(self.index, self.width, self.height), format="rgb24")
        frame.pts = round(self.index * VIDEO_CLOCK / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.sent_at[frame.pts] = time.monotonic()
        self.index += 1
        return frame


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never aiortc's default public STUN


@dataclass
class Server:
    url: str
    app: web.Application
    http: ClientSession


@asynccontextmanager
async def running_server(config: ServerConfig | None = None) -> AsyncIterator[Server]:
    app = create_app(config or ServerConfig())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with ClientSession() as http:
        try:
            yield Server(f"http://127.0.0.1:{port}", app, http)
        finally:
            await runner.cleanup()  # runs on_shutdown: closes every peer


async def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def collect_frames(track: MediaStreamTrack, sink: list[np.ndarray], tasks: list[asyncio.Task[None]]) -> None:
    """Append every received frame (RGB) to ``sink`` until the track ends; the task is kept in ``tasks``."""

    async def consume() -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            sink.append(frame.to_ndarray(format="rgb24"))

    tasks.append(asyncio.ensure_future(consume()))
