"""Marker-bit frame release (stream.rtc_latency): synthetic RTP packets against aiortc's own buffer, and two
real aiortc peers on loopback decoding multi-packet frames correctly with the patch installed."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, ClassVar

import aiortc.rtcrtpreceiver as receiver_module
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from stream.rtc_latency import (
    FrameSpan,
    MarkerJitterBuffer,
    disable_low_latency_receive,
    enable_low_latency_receive,
    low_latency_receive_enabled,
)
from stream.session_setup import _stats_loop
from stream.sessions import Session
from stream.signalling import enable_loopback_candidates
from tests.rtc_helpers import client_pc, decode_index, pattern_frame, wait_for

TS_STEP = 3000  # 90 kHz clock at 30 fps


def pkt(seq: int, ts: int, marker: bool = False, data: bytes | None = None) -> RtpPacket:
    """An RTP packet as RTCRtpReceiver hands it to the jitter buffer: ``_data`` is the depayloaded bytes."""
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq & 0xFFFF, timestamp=ts)
    p._data = f"<{seq & 0xFFFF}>".encode() if data is None else data  # type: ignore[attr-defined]
    p.payload = p._data  # type: ignore[attr-defined]
    return p


def video_buffers(capacity: int = 128) -> tuple[MarkerJitterBuffer, JitterBuffer]:
    return MarkerJitterBuffer(capacity=capacity, is_video=True), JitterBuffer(capacity=capacity, is_video=True)


@pytest.fixture
def restore_receive() -> Iterator[None]:
    """Leave aiortc's receiver as this test found it (other tests in the process must not be affected)."""
    before = receiver_module.JitterBuffer
    try:
        yield
    finally:
        receiver_module.JitterBuffer = before  # type: ignore[misc]


# -- release rule ----------------------------------------------------------------------------------------
def test_single_packet_frame_with_marker_is_released_at_once() -> None:
    ours, theirs = video_buffers()
    pli, frame = ours.add(pkt(100, 9000, marker=True, data=b"key"))
    assert not pli and frame is not None
    assert (frame.data, frame.timestamp) == (b"key", 9000)
    assert theirs.add(pkt(100, 9000, marker=True, data=b"key")) == (False, None)  # aiortc waits a frame
    assert ours.add(pkt(101, 12000, marker=True, data=b"next"))[1].data == b"next"  # type: ignore[union-attr]


def test_three_packet_frame_released_on_marker_in_sequence_order() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buf.add(pkt(10, 0, data=b"aa")) == (False, None)
    assert buf.add(pkt(11, 0, data=b"bb")) == (False, None)
    pli, frame = buf.add(pkt(12, 0, marker=True, data=b"cc"))
    assert not pli and frame is not None and frame.data == b"aabbcc" and frame.timestamp == 0


def test_out_of_order_inside_a_frame_is_released_when_the_gap_fills() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buf.add(pkt(20, 0, data=b"1")) == (False, None)
    assert buf.add(pkt(23, 0, marker=True, data=b"4")) == (False, None)
    assert buf.add(pkt(22, 0, data=b"3")) == (False, None)  # 21 still missing
    pli, frame = buf.add(pkt(21, 0, data=b"2"))
    assert not pli and frame is not None and frame.data == b"1234"


def test_missing_packet_prevents_release() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    buf.add(pkt(30, 0, data=b"a"))
    assert buf.add(pkt(32, 0, marker=True, data=b"c")) == (False, None)
    # The next frame is complete, but it sits behind the hole: nothing goes to the decoder half-made.
    assert buf.add(pkt(33, TS_STEP, marker=True, data=b"d")) == (False, None)
    assert buf.add(pkt(34, 2 * TS_STEP, marker=True, data=b"e")) == (False, None)
    _, frame = buf.add(pkt(31, 0, data=b"b"))  # retransmission arrives
    assert frame is not None and frame.data == b"abc"


def test_sequence_number_wraparound() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buf.add(pkt(65534, 0, data=b"x")) == (False, None)
    assert buf.add(pkt(65535, 0, data=b"y")) == (False, None)
    _, frame = buf.add(pkt(0, 0, marker=True, data=b"z"))
    assert frame is not None and frame.data == b"xyz"
    _, frame = buf.add(pkt(1, TS_STEP, marker=True, data=b"w"))
    assert frame is not None and frame.data == b"w"


def test_late_duplicate_of_a_released_frame_is_dropped() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    buf.add(pkt(40, 0, data=b"a"))
    assert buf.add(pkt(41, 0, marker=True, data=b"b"))[1] is not None
    assert buf.add(pkt(40, 0, data=b"a")) == (False, None)  # e.g. a late RTX copy: misordered, ignored
    assert buf.add(pkt(42, TS_STEP, marker=True, data=b"c"))[1].data == b"c"  # type: ignore[union-attr]


def test_without_a_marker_the_next_timestamp_still_ends_the_frame() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    buf.add(pkt(50, 0, data=b"a"))
    buf.add(pkt(51, 0, data=b"b"))  # marker lost / sender does not set it
    _, frame = buf.add(pkt(52, TS_STEP, data=b"c"))
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 0


def test_padding_only_packets_make_no_frame() -> None:
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buf.add(pkt(60, 0, marker=True, data=b"f0"))[1] is not None
    assert buf.add(pkt(61, 0, data=b"")) == (False, None)  # probe padding after the frame, same timestamp
    _, frame = buf.add(pkt(62, TS_STEP, marker=True, data=b"f1"))
    assert frame is not None and frame.data == b"f1"


def test_first_frame_span_reports_what_is_removed() -> None:
    buf = MarkerJitterBuffer(capacity=16, is_video=True)
    for p in (pkt(5, 0, data=b"a"), pkt(6, 0, marker=True, data=b"b"), pkt(7, TS_STEP, data=b"c")):
        buf._packets[p.sequence_number % 16] = p
    buf._origin = 5
    assert buf._first_frame() == FrameSpan(count=2, timestamp=0, data=b"ab")


# -- aiortc's behaviour kept ------------------------------------------------------------------------------
def test_capacity_overflow_behaves_like_aiortc() -> None:
    """A lost packet nobody retransmits: once the buffer overflows, both drop the broken frame whole, flag a
    PLI, and go on with the same frame."""
    ours, theirs = video_buffers(capacity=4)
    sequence = [pkt(0, 0, data=b"lost-frame-head"),  # seq 1 (its marker packet) never arrives
                pkt(2, TS_STEP, marker=True, data=b"f1"),
                pkt(3, 2 * TS_STEP, marker=True, data=b"f2"),
                pkt(4, 3 * TS_STEP, marker=True, data=b"f3")]
    results = [(ours.add(p), theirs.add(p)) for p in sequence]
    for (pli_ours, _), (pli_theirs, _) in results[:-1]:
        assert pli_ours == pli_theirs is False
    (pli_ours, frame_ours), (pli_theirs, frame_theirs) = results[-1]
    assert pli_ours is pli_theirs is True
    assert frame_ours is not None and frame_theirs is not None
    assert frame_ours.data == frame_theirs.data == b"f1"
    assert ours._origin == 3 and theirs._origin == 3


def test_far_misorder_resets_like_aiortc() -> None:
    ours, theirs = video_buffers()
    for p in (pkt(1000, 0), pkt(1001, 0)):
        ours.add(p)
        theirs.add(p)
    stale = pkt(500, 0)  # >= MAX_MISORDER behind: both reset to it and ask for a keyframe
    assert ours.add(stale)[0] is True and theirs.add(stale)[0] is True
    assert ours._origin == theirs._origin == 500


def _stream(rng: random.Random, frames: int, reorder: int, markers: bool) -> tuple[list[RtpPacket], list[RtpPacket]]:
    """Frames of 1-5 packets, as sent and as received (each packet displaced by at most ``reorder`` places)."""
    packets, seq = [], rng.randrange(65536)
    for f in range(frames):
        n = rng.randint(1, 5)
        for i in range(n):
            packets.append(pkt(seq, f * TS_STEP, marker=markers and i == n - 1, data=bytes([f % 256, i]) * 3))
            seq += 1
    keys = [i + rng.uniform(0, reorder) for i in range(len(packets))]
    return packets, [p for _, p in sorted(zip(keys, packets, strict=True), key=lambda kp: kp[0])]


@pytest.mark.parametrize("seed", range(5))
def test_without_markers_identical_to_aiortc(seed: int) -> None:
    """No marker bits (e.g. a sender that never sets them): decisions are aiortc's, packet for packet."""
    rng = random.Random(seed)
    ours, theirs = video_buffers(capacity=64)
    for p in _stream(rng, frames=60, reorder=4, markers=False)[1]:
        a, b = ours.add(p), theirs.add(p)
        assert a[0] == b[0]
        assert (a[1] and (a[1].data, a[1].timestamp)) == (b[1] and (b[1].data, b[1].timestamp))


@pytest.mark.parametrize("seed", range(5))
def test_reordered_stream_releases_every_frame_whole_in_order_and_no_later(seed: int) -> None:
    rng = random.Random(seed)
    sent, stream = _stream(rng, frames=80, reorder=3, markers=True)
    expected: dict[int, bytes] = {}
    for p in sent:
        expected[p.timestamp] = expected.get(p.timestamp, b"") + p._data  # type: ignore[attr-defined]
    # Start both buffers on the first frame's first packet so neither sees a truncated first frame.
    stream.remove(sent[0])
    stream.insert(0, sent[0])
    ours, theirs = video_buffers(capacity=64)
    out_ours: dict[int, int] = {}
    out_theirs: dict[int, int] = {}
    for i, p in enumerate(stream):
        for buf, out in ((ours, out_ours), (theirs, out_theirs)):
            pli, frame = buf.add(p)
            assert not pli
            if frame is not None:
                assert frame.data == expected[frame.timestamp]  # never a partial or mixed frame
                out[frame.timestamp] = i
    assert list(out_ours) == sorted(out_ours)  # decode order
    # aiortc holds the last frame forever (no next frame); ours releases at most one frame per packet, but
    # never later than aiortc and, for most frames, strictly earlier.
    assert len(out_ours) >= len(out_theirs)
    assert all(out_ours[ts] <= out_theirs[ts] for ts in out_theirs)
    assert sum(out_ours[ts] < out_theirs[ts] for ts in out_theirs) > len(out_theirs) // 2


def test_audio_and_prefetch_use_aiortc_rule() -> None:
    rng = random.Random(7)
    stream = _stream(rng, frames=40, reorder=2, markers=True)[1]
    pairs = ((MarkerJitterBuffer(16, prefetch=4), JitterBuffer(16, prefetch=4)),  # aiortc's audio buffer
             (MarkerJitterBuffer(64, prefetch=2, is_video=True), JitterBuffer(64, prefetch=2, is_video=True)))
    for ours, theirs in pairs:
        assert not ours.marker_release
        for p in stream:
            a, b = ours.add(p), theirs.add(p)
            assert a[0] == b[0] and (a[1] and a[1].data) == (b[1] and b[1].data)


def test_enable_is_idempotent_and_reversible(restore_receive: None) -> None:
    disable_low_latency_receive()
    assert receiver_module.JitterBuffer is JitterBuffer and not low_latency_receive_enabled()
    enable_low_latency_receive()
    enable_low_latency_receive()
    assert receiver_module.JitterBuffer is MarkerJitterBuffer and low_latency_receive_enabled()
    disable_low_latency_receive()
    assert receiver_module.JitterBuffer is JitterBuffer


# -- end to end -------------------------------------------------------------------------------------------
class NoisyPatternTrack(MediaStreamTrack):
    """``pattern_frame`` (frame number in the top half) with fresh noise in the bottom half, so that every
    frame spans several RTP packets; real-time paced."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 30.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.index = 0
        self._rng = np.random.default_rng(0)
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = pattern_frame(self.index, self.width, self.height)
        img[self.height // 2:] = self._rng.integers(0, 256, img[self.height // 2:].shape, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = round(self.index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
        self.index += 1
        return frame


class CountingBuffer(MarkerJitterBuffer):
    """Records how many packets each released frame had (proves multi-packet frames were exercised)."""

    packets_per_frame: ClassVar[list[int]] = []

    def _first_frame(self) -> FrameSpan | None:
        span = super()._first_frame()
        if span is not None and span.data:
            CountingBuffer.packets_per_frame.append(span.count)
        return span


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_two_aiortc_peers_decode_correct_frames(codec: str, restore_receive: None) -> None:
    enable_loopback_candidates()
    enable_low_latency_receive()
    receiver_module.JitterBuffer = CountingBuffer  # type: ignore[misc]  # the patched class, plus a counter
    CountingBuffer.packets_per_frame = []
    sender, receiver = client_pc(), client_pc()
    source = NoisyPatternTrack()
    transceiver = sender.addTransceiver(source, direction="sendonly")
    transceiver.setCodecPreferences([c for c in transceiver.receiver.getCapabilities("video").codecs
                                     if c.mimeType == f"video/{codec}"])
    decoded: list[tuple[int, int]] = []  # (frame number from pts, number read from pixels)
    tasks: list[asyncio.Task[None]] = []

    def on_track(track: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                decoded.append((frame.pts, decode_index(frame.to_ndarray(format="rgb24"))))

        tasks.append(asyncio.ensure_future(consume()))

    receiver.on("track", on_track)
    try:
        await _connect(sender, receiver)
        await wait_for(lambda: len(decoded) >= 40, timeout_s=30, what=f"40 decoded {codec} frames")
        rx = receiver.getReceivers()[0]
        assert isinstance(rx._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)  # type: ignore[attr-defined]
    finally:
        await sender.close()
        await receiver.close()
        for t in tasks:
            t.cancel()
    assert max(CountingBuffer.packets_per_frame) >= 3, "frames should span several packets"
    # The receiver's pts are rebased to its first frame: check the pixels tell consecutive, matching numbers.
    numbers = [n for _, n in decoded]
    first = numbers[0]
    pts0 = decoded[0][0]
    for pts, n in decoded:
        frame_no = round((pts - pts0) * 30 / VIDEO_CLOCK_RATE)
        assert n == (first + frame_no) % 256, "decoded pixels do not belong to the frame's timestamp"
    assert len(set(numbers)) == len(numbers), "a frame was decoded twice"


async def _connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


# -- stats loop -------------------------------------------------------------------------------------------
class FakeChannel:
    def __init__(self) -> None:
        self.readyState = "open"
        self.sent: list[dict[str, Any]] = []

    def send(self, raw: str) -> None:
        self.sent.append(json.loads(raw))


class FlakyStats:
    """stats_message that fails in two different ways, repeatedly, between good snapshots."""

    def __init__(self, fail: bool = True) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if not self.fail:
            return {"type": "stats", "n": self.calls}
        if self.calls % 3 == 1:
            raise RuntimeError("window mutated during snapshot")
        if self.calls % 3 == 2:
            raise ZeroDivisionError("fps over an empty window")
        return {"type": "stats", "n": self.calls}


def _session_with(channel: FakeChannel, stats: FlakyStats) -> Session:
    session = Session(id="s1", kind="browser", remote="127.0.0.1", pc=None)  # type: ignore[arg-type]
    session.channel = channel  # type: ignore[assignment]
    session.stats_message = stats  # type: ignore[method-assign]
    return session


async def test_stats_loop_survives_errors_and_logs_each_once(caplog: pytest.LogCaptureFixture) -> None:
    channel, stats = FakeChannel(), FlakyStats()
    task = asyncio.ensure_future(_stats_loop(_session_with(channel, stats), interval_s=0.001))
    try:
        await wait_for(lambda: stats.calls >= 30, timeout_s=10, what="30 stats ticks")
    finally:
        task.cancel()
    errors = [r for r in caplog.records if r.name == "stream.session_setup" and r.levelno >= logging.ERROR]
    assert sorted(r.exc_info[1].__class__.__name__ for r in errors) == ["RuntimeError", "ZeroDivisionError"]
    assert len(channel.sent) >= 9 and all(m["n"] % 3 == 0 for m in channel.sent)  # good ticks still sent


async def test_stats_loop_ends_quietly_when_the_channel_closes(caplog: pytest.LogCaptureFixture) -> None:
    channel, stats = FakeChannel(), FlakyStats(fail=False)
    task = asyncio.ensure_future(_stats_loop(_session_with(channel, stats), interval_s=0.001))
    await wait_for(lambda: len(channel.sent) >= 1, timeout_s=10, what="a stats message")
    channel.readyState = "closed"
    await asyncio.wait_for(task, timeout=5)  # returns by itself: no exception, no cancellation needed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
