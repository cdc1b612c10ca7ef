"""Negotiating a processing session (browser /offer or WHIP publisher): the part both share.

The caller has already reserved a slot. Everything created here is torn down again if
negotiation fails, so a bad offer leaks neither a peer connection nor a face tracker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection

from stream.codec_fit import fit_senders_to_codec
from stream.config import ServerConfig
from stream.pipeline import FramePipeline
from stream.processed_track import ProcessedTrack
from stream.sessions import Session, SessionKind, SessionRegistry
from stream.signalling import (
    SignallingError,
    answer,
    apply_control,
    decode_message,
    make_peer_connection,
    parse_offer,
    set_remote_offer,
)

log = logging.getLogger(__name__)


async def build_pipeline(config: ServerConfig, chain: Any) -> FramePipeline:
    """Create the chain off the event loop (filters may load models); raises FilterError."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: FramePipeline(chain, tracker_config=config.tracker,
                                                                      overlap=config.overlap))


def watch_connection(registry: SessionRegistry, session: Session) -> None:
    """End the session when ICE/DTLS fails or the peer closes."""
    pc = session.pc

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        log.debug("session %s: connection %s", session.id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await registry.close(session, f"connection {pc.connectionState}")


def _attach_control(session: Session, channel: RTCDataChannel) -> None:
    session.channel = channel
    lock = asyncio.Lock()  # one message at a time, in order: set_filters then configure must not race

    @channel.on("message")
    async def _on_message(raw: Any) -> None:
        try:
            msg = decode_message(raw)
        except SignallingError as e:
            session.send({"type": "error", "error": str(e)})
            return
        if msg["type"] == "ping":  # answered on the loop at once so the RTT measures the network
            session.send({"type": "pong", "t": msg.get("t")})
            return
        async with lock:
            loop = asyncio.get_running_loop()
            assert session.pipeline is not None
            reply = await loop.run_in_executor(None, apply_control, session.pipeline, msg)
        session.send(reply)


MAX_DISTINCT_STATS_ERRORS = 32  # bounds the memory of what was logged if error texts vary (ids, numbers)


async def _stats_loop(session: Session, interval_s: float) -> None:
    """Push a stats snapshot on the control channel every ``interval_s`` until the channel closes.

    Stats are a side show: a snapshot that raises is skipped and logged once per distinct error (not on
    every tick), and the next tick tries again; the video is never affected.
    """
    reported: set[tuple[str, str]] = set()
    while True:
        await asyncio.sleep(interval_s)
        channel = session.channel
        if session.closed or (channel is not None and channel.readyState in ("closing", "closed")):
            log.debug("session %s: control channel closed, stats loop ends", session.id)
            return
        try:
            session.send(session.stats_message())
        except Exception as e:
            key = (type(e).__name__, str(e))
            if key not in reported and len(reported) < MAX_DISTINCT_STATS_ERRORS:
                reported.add(key)
                log.exception("session %s: stats snapshot failed (logged once per distinct error)", session.id)


async def start_processing_session(
    registry: SessionRegistry, config: ServerConfig, kind: SessionKind, remote: str, offer_sdp: Any,
    chain: Any,
) -> tuple[Session, str]:
    """Negotiate ``offer_sdp``; returns the registered session and the answer SDP.

    Raises FilterError / SignallingError (client errors) after cleaning up.
    """
    offer = parse_offer(offer_sdp)
    pipeline = await build_pipeline(config, chain)
    pc: RTCPeerConnection = make_peer_connection(config.ice_servers)
    session = Session(id=registry.new_id(), kind=kind, remote=remote, pc=pc, pipeline=pipeline)

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and session.track is None:
            session.track = ProcessedTrack(track, pipeline, name=session.id[:6])
            if kind == "browser":
                # Re-uses the browser's sendrecv transceiver: the processed video goes back on it.
                pc.addTrack(session.track)
        else:
            session.blackhole.addTrack(track)  # drain audio/extra video: unread remote tracks queue forever

    @pc.on("datachannel")
    def _on_datachannel(channel: RTCDataChannel) -> None:
        if channel.label == "control" and kind == "browser":
            _attach_control(session, channel)

    try:
        await set_remote_offer(pc, offer)
        if session.track is None:
            raise SignallingError("the offer does not send video (need a sendrecv/sendonly video transceiver)")
        answer_sdp = await answer(pc)
        fit_senders_to_codec(pc, answer_sdp)
        await session.blackhole.start()
    except BaseException:
        if session.track is not None:
            session.track.stop()  # also closes the pipeline
        else:
            pipeline.close()
        await pc.close()
        raise
    watch_connection(registry, session)
    if kind == "browser":
        session.tasks.append(asyncio.ensure_future(_stats_loop(session, config.stats_interval_s)))
    registry.add(session)
    return session, answer_sdp
