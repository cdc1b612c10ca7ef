"""Fit frames to the negotiated encoder: aiortc's H.264 encoder (libx264, yuv420p) refuses odd widths or
heights, while VP8 takes any size. When a peer negotiates H.264, odd frames are padded by one replicated
edge row/column (content is kept whole; the receiver sees at most 1 px more)."""

from __future__ import annotations

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack


def negotiated_video_codec(sdp: str) -> str | None:
    """MIME subtype (e.g. ``"VP8"``, ``"H264"``) of the first payload of the first video section, or None."""
    in_video = False
    first_pt: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_video:
                break
            parts = line.split()
            in_video = parts[0] == "m=video"
            first_pt = parts[3] if in_video and len(parts) > 3 else None
        elif in_video and first_pt is not None and line.startswith(f"a=rtpmap:{first_pt} "):
            return line.split(" ", 1)[1].split("/", 1)[0].upper()
    return None


def needs_even_size(codec: str | None) -> bool:
    return codec == "H264"


def pad_to_even(rgb: np.ndarray) -> np.ndarray:
    """Replicate the last row/column where height/width is odd; even frames are returned as they are."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class EvenSizeTrack(MediaStreamTrack):
    """Forwards ``source``'s frames, padding odd-sized ones to even (keeps pts/time_base)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.recv()
        if frame.width % 2 == 0 and frame.height % 2 == 0:
            return frame
        out = av.VideoFrame.from_ndarray(pad_to_even(frame.to_ndarray(format="rgb24")), format="rgb24")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def stop(self) -> None:
        super().stop()
        self.source.stop()


def fit_senders_to_codec(pc: RTCPeerConnection, answer_sdp: str) -> bool:
    """After answering: wrap the video senders' tracks in EvenSizeTrack if H.264 was negotiated."""
    if not needs_even_size(negotiated_video_codec(answer_sdp)):
        return False
    for sender in pc.getSenders():
        if sender.track is not None and sender.track.kind == "video" and not isinstance(sender.track, EvenSizeTrack):
            sender.replaceTrack(EvenSizeTrack(sender.track))
    return True
