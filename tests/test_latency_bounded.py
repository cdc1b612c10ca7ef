"""Newest frame wins: with an 80 ms filter behind a 30 fps source, delay stays bounded and frames are
dropped instead of queued (20 s in real time, as the issue asks; nothing else slow in this file)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from stream import filters
from stream.face import NUM_LANDMARKS, Face
from stream.filters.base import Filter, FrameContext
from stream.pipeline import FramePipeline
from stream.pose import HeadPose
from stream.processed_track import ProcessedTrack, RollingWindow
from tests.rtc_helpers import VIDEO_CLOCK, PatternTrack, decode_index

SLOW_MS = 80.0
FPS = 30.0
SECONDS = 20.0


class Slow80(Filter):
    name = "test_slow80"
    description = "test only: sleeps 80 ms, returns the frame"

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        time.sleep(SLOW_MS / 1e3)
        return image


@pytest.fixture
def slow_filter() -> Iterator[str]:
    filters.register(Slow80)
    try:
        yield Slow80.name
    finally:
        filters.REGISTRY.pop(Slow80.name, None)


def test_rolling_window_percentiles_and_rate() -> None:
    w = RollingWindow(span_s=2.0)
    for i in range(101):
        w.add(float(i), now=10.0 + i * 0.01)  # 100 intervals over 1 s
    assert w.percentiles(now=11.0) == {"p50": 50.0, "p95": 95.0}
    assert w.rate(now=11.0) == pytest.approx(100.0)
    assert w.percentiles(now=14.0) == {"p50": None, "p95": None}  # everything aged out
    assert w.rate(now=14.0) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_delay_bounded_and_frames_dropped(slow_filter: str) -> None:
    source = PatternTrack(width=160, height=120, fps=FPS, frames=int(SECONDS * FPS))
    track = ProcessedTrack(source, FramePipeline(slow_filter))
    start = time.monotonic()
    delays: list[tuple[float, float]] = []  # (seconds since start, ms from source send to recv return)
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = time.monotonic()
            # pts and time_base survive processing, and the pixels belong to that very frame.
            assert frame.time_base == Fraction(1, VIDEO_CLOCK)
            assert frame.pts in source.sent_at
            index = round(frame.pts * FPS / VIDEO_CLOCK)
            assert decode_index(frame.to_ndarray(format="rgb24")) == index % 256
            delays.append((now - start, (now - source.sent_at[frame.pts]) * 1e3))
    finally:
        track.stop()
        await track.wait_closed()
    assert track.readyState == "ended"

    elapsed = time.monotonic() - start
    st = track.stats
    assert elapsed == pytest.approx(SECONDS, abs=2.0)
    assert st.frames_in == int(SECONDS * FPS)
    # ~12 processed per second of ~30 in: the rest are dropped, never queued.
    processed_rate = st.frames_out / elapsed
    assert 6.0 < processed_rate < 1e3 / SLOW_MS + 0.5
    assert st.dropped >= st.frames_in - st.frames_out - 1
    assert st.dropped / elapsed > FPS - 1e3 / SLOW_MS - 6

    t = np.array([d[0] for d in delays])
    ms = np.array([d[1] for d in delays])
    first, last = ms[t <= 5.0], ms[t >= elapsed - 5.0]
    assert len(first) > 20 and len(last) > 20
    p95_first, p95_last = np.percentile(first, 95), np.percentile(last, 95)
    print(f"\ndelay ms: first-5s p95 {p95_first:.1f}, last-5s p95 {p95_last:.1f}, max {ms.max():.1f}, "
          f"median {np.median(ms):.1f}; out {processed_rate:.1f} fps, dropped {st.dropped}/{st.frames_in}")
    assert p95_last <= p95_first + 40.0  # no growth: a queue would add ~55 ms every second
    assert ms.max() < 300.0
    assert np.median(ms) >= SLOW_MS  # sanity: the delay really includes the filter


async def test_source_end_ends_track_and_closes_pipeline() -> None:
    source = PatternTrack(width=64, height=48, fps=100.0, frames=5)
    pipeline = FramePipeline("passthrough")
    closed = asyncio.Event()
    original_close = pipeline.close
    loop = asyncio.get_running_loop()

    def close() -> None:
        original_close()
        loop.call_soon_threadsafe(closed.set)

    pipeline.close = close  # type: ignore[method-assign]
    track = ProcessedTrack(source, pipeline)
    got = 0
    with pytest.raises(MediaStreamError):
        while True:
            await asyncio.wait_for(track.recv(), 5)
            got += 1
    assert 1 <= got <= 5 and track.readyState == "ended"
    await asyncio.wait_for(closed.wait(), 5)
    with pytest.raises(MediaStreamError):
        await track.recv()


class _FakeTracker:
    """Stands in for mediapipe: one face with a known pose on every frame."""

    def __init__(self, cfg: object) -> None:
        self.threads: set[int] = set()

    def track(self, rgb: np.ndarray, timestamp_s: float) -> list[Face]:
        import threading

        self.threads.add(threading.get_ident())
        h, w = rgb.shape[:2]
        pts = np.zeros((NUM_LANDMARKS, 3), np.float32)
        pts[:, 0], pts[:, 1] = w / 2, h / 2
        pose = HeadPose(12.34, -5.0, 3.0, np.eye(3), np.array([0.0, 0.0, 500.0]))
        return [Face(7, pts, pose, (w, h))]

    def close(self) -> None:
        pass


async def test_odd_resolution_faces_in_stats_and_one_worker_thread() -> None:
    trackers: list[_FakeTracker] = []

    def factory(cfg: object) -> _FakeTracker:
        trackers.append(_FakeTracker(cfg))
        return trackers[-1]

    source = PatternTrack(width=641, height=479, fps=100.0, frames=8)
    track = ProcessedTrack(source, FramePipeline("landmarks", tracker_factory=factory))
    frames = []
    with pytest.raises(MediaStreamError):
        while True:
            frames.append(await asyncio.wait_for(track.recv(), 5))
    assert frames and all((f.width, f.height) == (641, 479) for f in frames)
    snap = track.stats.snapshot()
    assert snap["resolution"] == [641, 479]
    assert snap["faces"] == [{"id": 7, "yaw": 12.3, "pitch": -5.0, "roll": 3.0}]
    assert {"convert_in", "track", "landmarks", "convert_out"} <= set(snap["stages_ms"])
    assert snap["frames_in"] == 8 and snap["frames_out"] == len(frames)
    # mediapipe is not thread-safe: every frame of a session runs on the same worker thread.
    assert len(trackers) == 1 and len(trackers[0].threads) == 1
