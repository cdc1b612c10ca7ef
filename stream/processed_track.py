"""A video track that runs a FramePipeline on another track's frames, newest frame first.

Real-time rule: latency must not grow when processing is slower than the camera. A reader task
drains the source into a one-slot mailbox (a newer frame replaces an unprocessed one and the old
one counts as dropped); a processor task always takes the newest frame, runs conversion and the
pipeline on a dedicated single-thread executor (mediapipe is not thread-safe and must never block
the event loop), and leaves the result in a one-slot output mailbox that ``recv()`` awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream.frame_convert import from_rgb, to_rgb
from stream.pipeline import FramePipeline, FrameResult

log = logging.getLogger(__name__)


class RollingWindow:
    """Timestamped samples over the last ``span_s`` seconds: moving median/p95 and event rate."""

    def __init__(self, span_s: float = 2.0) -> None:
        self.span_s = span_s
        self._items: deque[tuple[float, float]] = deque()

    def add(self, value: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._items.append((now, float(value)))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.span_s:
            self._items.popleft()

    def percentiles(self, now: float | None = None) -> dict[str, float | None]:
        self._trim(time.monotonic() if now is None else now)
        if not self._items:
            return {"p50": None, "p95": None}
        vals = np.fromiter((v for _, v in self._items), dtype=np.float64, count=len(self._items))
        p50, p95 = np.percentile(vals, [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}

    def rate(self, now: float | None = None) -> float:
        """Events per second over the window (0 with fewer than two events)."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._items) < 2:
            return 0.0
        # n events span n-1 intervals; using the window's real extent avoids a ramp-up bias.
        return (len(self._items) - 1) / max(self._items[-1][0] - self._items[0][0], 1e-6)


@dataclass
class TrackStats:
    """Counters and moving windows of one processed track (event-loop thread only)."""

    span_s: float = 2.0
    frames_in: int = 0
    frames_processed: int = 0
    frames_out: int = 0
    dropped: int = 0
    convert_errors: int = 0
    resolution: tuple[int, int] | None = None
    last_result: FrameResult | None = None
    arrivals: RollingWindow = field(init=False)
    outputs: RollingWindow = field(init=False)
    processing_ms: RollingWindow = field(init=False)
    e2e_ms: RollingWindow = field(init=False)
    stages_ms: dict[str, RollingWindow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrivals = RollingWindow(self.span_s)
        self.outputs = RollingWindow(self.span_s)
        self.processing_ms = RollingWindow(self.span_s)
        self.e2e_ms = RollingWindow(self.span_s)

    def add_stages(self, timings_ms: dict[str, float], now: float) -> None:
        for name, ms in timings_ms.items():
            self.stages_ms.setdefault(name, RollingWindow(self.span_s)).add(ms, now)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able summary (the data channel's ``stats`` message body)."""
        now = time.monotonic()
        stages = {k: w.percentiles(now) for k, w in self.stages_ms.items()}
        res = self.last_result
        return {
            "fps_in": round(self.arrivals.rate(now), 2),
            "fps_out": round(self.outputs.rate(now), 2),
            "dropped": self.dropped,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "stages_ms": {k: v for k, v in stages.items() if v["p50"] is not None},
            "processing_ms": self.processing_ms.percentiles(now),
            "e2e_ms": self.e2e_ms.percentiles(now),
            "faces": [
                {"id": f.face_id, "yaw": round(f.pose.yaw_deg, 1), "pitch": round(f.pose.pitch_deg, 1),
                 "roll": round(f.pose.roll_deg, 1)}
                for f in (res.faces if res else [])
            ],
            "errors": list(res.errors) if res else [],
            "resolution": list(self.resolution) if self.resolution else None,
        }


@dataclass
class _Stamped:
    frame: av.VideoFrame
    arrival_s: float  # time.monotonic() when the reader got the source frame


def _log_close_error(fut: Future[None]) -> None:
    if fut.exception() is not None:
        log.error("closing the pipeline failed: %s", fut.exception())


def _process_frame(pipeline: FramePipeline, frame: av.VideoFrame, timestamp_s: float
                   ) -> tuple[av.VideoFrame, FrameResult, float, float]:
    """Worker-thread body: decode to RGB, run the chain, encode back; returns conversion times (ms)."""
    t0 = time.perf_counter()
    rgb = to_rgb(frame)
    t1 = time.perf_counter()
    out_rgb, result = pipeline.process(rgb, timestamp_s)
    t2 = time.perf_counter()
    # Untouched (passthrough, no face): send the decoded frame itself, no conversion back.
    out = frame if out_rgb is rgb else from_rgb(out_rgb, like=frame)
    t3 = time.perf_counter()
    return out, result, (t1 - t0) * 1e3, (t3 - t2) * 1e3


class ProcessedTrack(MediaStreamTrack):
    """``source`` frames run through ``pipeline``; newest frame wins at both mailboxes."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, pipeline: FramePipeline, *, stats_span_s: float = 2.0,
                 name: str = "rx") -> None:
        super().__init__()
        if source.kind != "video":
            raise ValueError(f"ProcessedTrack needs a video source, got {source.kind!r}")
        self.source = source
        self.pipeline = pipeline
        self.stats = TrackStats(span_s=stats_span_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pipeline-{name}")
        self._inbox: _Stamped | None = None
        self._inbox_event = asyncio.Event()
        self._outbox: _Stamped | None = None
        self._outbox_event = asyncio.Event()
        self._source_ended = False
        self._processor_done = False
        self._closed = False
        self._reader = asyncio.ensure_future(self._read_loop())
        self._processor = asyncio.ensure_future(self._process_loop())

    # -- tasks ------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    break
                now = time.monotonic()
                self.stats.frames_in += 1
                self.stats.arrivals.add(0.0, now)
                if self._inbox is not None:
                    self.stats.dropped += 1  # the processor was busy: skip the stale frame
                self._inbox = _Stamped(frame, now)
                self._inbox_event.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the source track failed")
        finally:
            self._source_ended = True
            self._inbox_event.set()

    async def _process_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Decide on state, not on the event: the end signal may arrive with the last frame.
                if self._inbox is None:
                    if self._source_ended:
                        break
                    self._inbox_event.clear()
                    await self._inbox_event.wait()
                    continue
                item, self._inbox = self._inbox, None
                frame = item.frame
                # Monotonic timestamps for the tracker's smoothing; media time when the frame has one.
                ts = float(frame.time) if frame.pts is not None and frame.time_base is not None else item.arrival_s
                t0 = time.perf_counter()
                try:
                    out, result, cin_ms, cout_ms = await loop.run_in_executor(
                        self._executor, _process_frame, self.pipeline, frame, ts)
                except (ValueError, TypeError, av.FFmpegError) as e:
                    # A frame PyAV cannot convert is lost alone; the stream keeps running.
                    self.stats.convert_errors += 1
                    log.warning("frame conversion failed: %s", e)
                    continue
                now = time.monotonic()
                st = self.stats
                st.frames_processed += 1
                st.processing_ms.add((time.perf_counter() - t0) * 1e3, now)
                st.add_stages({"convert_in": cin_ms, **result.timings_ms, "convert_out": cout_ms}, now)
                st.last_result = result
                st.resolution = (frame.width, frame.height)
                if self._outbox is not None:
                    st.dropped += 1  # nobody consumed the previous result in time
                self._outbox = _Stamped(out, item.arrival_s)
                self._outbox_event.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("processing loop failed")
        finally:
            self._processor_done = True
            self._outbox_event.set()

    # -- MediaStreamTrack -------------------------------------------------------------------------
    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._outbox is not None:
                item, self._outbox = self._outbox, None
                now = time.monotonic()
                self.stats.frames_out += 1
                self.stats.outputs.add(0.0, now)
                self.stats.e2e_ms.add((now - item.arrival_s) * 1e3, now)
                return item.frame
            if self._processor_done:
                self.stop()  # source ended and everything was delivered: end cleanly
                raise MediaStreamError
            self._outbox_event.clear()
            await self._outbox_event.wait()

    def stop(self) -> None:
        super().stop()
        if self._closed:
            return
        self._closed = True
        self._outbox_event.set()  # wake a waiting recv() so it sees the ended state
        for task in (self._reader, self._processor):
            task.cancel()
        # Close the pipeline on its own thread once any in-flight frame is done (never block the loop).
        fut = self._executor.submit(self.pipeline.close)
        fut.add_done_callback(_log_close_error)
        self._executor.shutdown(wait=False)

    async def wait_closed(self) -> None:
        """Await the tasks' cancellation (tests, shutdown)."""
        for task in (self._reader, self._processor):
            with contextlib.suppress(asyncio.CancelledError):
                await task
