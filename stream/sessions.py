"""Live sessions: one peer connection each, with its own pipeline (and face tracker) and track.

Caps (documented policy): browser (/offer) and WHIP publisher sessions process video, so together
they count against ``ServerConfig.max_sessions``. WHEP viewers share the publisher's processed
frames through a MediaRelay (processing happens once) but each still costs an encoder, so they have
their own cap, ``ServerConfig.max_viewers``. A slot is reserved before negotiation starts, so
concurrent requests cannot overshoot a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole

from stream.pipeline import FramePipeline
from stream.processed_track import ProcessedTrack

log = logging.getLogger(__name__)

SessionKind = Literal["browser", "whip", "whep"]


class CapacityError(RuntimeError):
    """Over the session cap; the HTTP layer answers 503 with Retry-After."""


@dataclass(eq=False)
class Session:
    id: str
    kind: SessionKind
    remote: str
    pc: RTCPeerConnection
    pipeline: FramePipeline | None = None
    track: ProcessedTrack | None = None
    channel: RTCDataChannel | None = None
    publisher_id: str | None = None  # WHEP: whose processed track this viewer watches
    started_s: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    blackhole: MediaBlackhole = field(default_factory=MediaBlackhole)
    closed: bool = False

    def send(self, message: dict[str, Any]) -> bool:
        """Send one JSON object on the control channel if it is open."""
        ch = self.channel
        if ch is None or ch.readyState != "open":
            return False
        try:
            ch.send(json.dumps(message, default=str))
        except Exception as e:  # the channel may close between the check and the send
            log.debug("session %s: control send failed: %s", self.id, e)
            return False
        return True

    def stats_message(self) -> dict[str, Any]:
        stats = self.track.stats.snapshot() if self.track else {}
        chain = self.pipeline.chain if self.pipeline else []
        models = self.pipeline.models() if self.pipeline else {}
        return {"type": "stats", **stats, "chain": chain, "models": models}


class SessionRegistry:
    def __init__(self, max_sessions: int, max_viewers: int) -> None:
        self.max_sessions = max_sessions
        self.max_viewers = max_viewers
        self._sessions: dict[str, Session] = {}
        self._reserved = {"processing": 0, "viewer": 0}
        self.publisher_id: str | None = None  # the newest live WHIP publisher: the WHEP relay source

    @staticmethod
    def _pool(kind: SessionKind) -> str:
        return "viewer" if kind == "whep" else "processing"

    def count(self, kind: SessionKind | None = None) -> int:
        return sum(1 for s in self._sessions.values() if kind is None or s.kind == kind)

    def _in_pool(self, pool: str) -> int:
        return sum(1 for s in self._sessions.values() if self._pool(s.kind) == pool) + self._reserved[pool]

    @contextlib.contextmanager
    def reserve(self, kind: SessionKind):  # type: ignore[no-untyped-def]
        """Hold a slot while negotiating; raises CapacityError when the pool is full."""
        pool = self._pool(kind)
        cap = self.max_viewers if pool == "viewer" else self.max_sessions
        if self._in_pool(pool) >= cap:
            what = "WHEP viewers" if pool == "viewer" else "sessions"
            raise CapacityError(f"server full: {cap} {what} already running")
        self._reserved[pool] += 1
        try:
            yield
        finally:
            self._reserved[pool] -= 1

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(12)

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        if session.kind == "whip":
            self.publisher_id = session.id
        log.info("session start id=%s kind=%s remote=%s", session.id, session.kind, session.remote)

    def get(self, session_id: str, kind: SessionKind | None = None) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None or (kind is not None and s.kind != kind):
            return None
        return s

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    @property
    def publisher(self) -> Session | None:
        return self._sessions.get(self.publisher_id) if self.publisher_id else None

    async def close(self, session: Session, reason: str) -> None:
        """Tear a session down (idempotent). A publisher takes its viewers with it."""
        if session.closed:
            return
        session.closed = True
        self._sessions.pop(session.id, None)
        if self.publisher_id == session.id:
            newer = [s for s in self._sessions.values() if s.kind == "whip"]
            self.publisher_id = max(newer, key=lambda s: s.started_s).id if newer else None
        for t in session.tasks:
            t.cancel()
        # Stop what we send too: a WHEP viewer's relay proxy stays subscribed to the relay until stopped.
        for sender in session.pc.getSenders():
            if sender.track is not None:
                sender.track.stop()
        if session.track is not None:
            session.track.stop()
        with contextlib.suppress(Exception):
            await session.blackhole.stop()
        try:
            await session.pc.close()
        except Exception as e:
            log.warning("session %s: closing peer connection failed: %s", session.id, e)
        log.info("session end id=%s kind=%s remote=%s reason=%s duration=%.1fs", session.id, session.kind,
                 session.remote, reason, time.monotonic() - session.started_s)
        if session.kind == "whip":
            viewers = [s for s in self._sessions.values() if s.publisher_id == session.id]
            await asyncio.gather(*(self.close(v, "publisher ended") for v in viewers))

    async def close_all(self, reason: str = "server shutdown") -> None:
        await asyncio.gather(*(self.close(s, reason) for s in self.all()))
