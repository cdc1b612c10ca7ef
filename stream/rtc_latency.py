"""Low-latency receive for aiortc: release a video frame as soon as its last packet is in.

aiortc's ``JitterBuffer._remove_frame`` only knows a video frame is complete when the first packet of the
*next* frame (a new RTP timestamp) arrives, so every aiortc receiver holds each frame for one frame interval
(33 ms at 30 fps) - once at the server, once more at an aiortc viewer. RFC 7741 (VP8) and RFC 6184 (H.264)
set the RTP marker bit on the last packet of a frame / access unit, so a frame whose packets run without a
gap from the buffer's origin (the packet after the previous released frame) to a marker packet is whole and
can go to the decoder at once. Everything else is aiortc's: misorder handling, capacity overflow and
``smart_remove``, PLI flags, the timestamp-change rule as a fallback when a marker never comes, and audio
(``is_video=False``, or any prefetch) goes through the unchanged base class.

Install with :func:`enable_low_latency_receive` before the peer connections' receivers are created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiortc.rtcrtpreceiver as _receiver_module
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

_AIORTC_JITTER_BUFFER = JitterBuffer  # what aiortc's receiver constructs by default


@dataclass(frozen=True)
class FrameSpan:
    """A whole frame found in the buffer: ``count`` packets from the origin, and its RTP timestamp."""

    count: int
    timestamp: int
    data: bytes


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's JitterBuffer, but a video frame is released on its marker packet, not on the next frame.

    Same constructor and ``add`` contract (``(pli_flag, frame or None)``, at most one frame per packet), so
    ``RTCRtpReceiver`` uses it unchanged.
    """

    @property
    def marker_release(self) -> bool:
        # aiortc never prefetches video; with a prefetch the caller wants frames held, so keep aiortc's rule.
        return self._is_video and self._prefetch == 0

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self.marker_release:
            return super()._remove_frame(sequence_number)
        while True:
            span = self._first_frame()
            if span is None:
                return None
            self.remove(span.count)
            if span.data:
                return JitterFrame(data=span.data, timestamp=span.timestamp)
            # Payload-less packets (padding for bandwidth probing) make no frame: drop them and look again,
            # since a decoder handed b"" reports an error and triggers a needless PLI.

    def _first_frame(self) -> FrameSpan | None:
        """The frame at the origin if it is complete: contiguous packets of one timestamp ending on a marker
        packet, or (aiortc's rule, when the marker is lost/absent) followed by a packet of another timestamp."""
        assert self._origin is not None
        timestamp: int | None = None
        packets: list[RtpPacket] = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a gap: wait for the retransmission, or for overflow to drop the frame
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                return FrameSpan(count, timestamp, _join(packets))
            packets.append(packet)
            if packet.marker:
                return FrameSpan(count + 1, timestamp, _join(packets))
        return None


def _join(packets: list[RtpPacket]) -> bytes:
    # ``_data`` is the depayloaded bitstream (VP8 descriptor stripped, H.264 NALs with start codes) that
    # RTCRtpReceiver attaches before calling add(); sequence order is frame order.
    return b"".join(p._data for p in packets)  # type: ignore[attr-defined]


def enable_low_latency_receive() -> None:
    """Make every RTCRtpReceiver created from now on release video frames on their marker packet.

    Why: saves one frame interval per aiortc receiver (the server's, and an aiortc client's). aiortc has no
    option for it; its receiver looks ``JitterBuffer`` up in its module namespace at construction, so we
    swap that name. Idempotent; affects receivers created afterwards only.
    """
    if _receiver_module.JitterBuffer is not MarkerJitterBuffer:
        _receiver_module.JitterBuffer = MarkerJitterBuffer  # type: ignore[misc]
        log.debug("aiortc low-latency receive enabled (video frames released on the RTP marker bit)")


def disable_low_latency_receive() -> None:
    """Restore aiortc's own jitter buffer for receivers created from now on (for A/B measurements)."""
    _receiver_module.JitterBuffer = _AIORTC_JITTER_BUFFER  # type: ignore[misc]


def low_latency_receive_enabled() -> bool:
    return _receiver_module.JitterBuffer is MarkerJitterBuffer
