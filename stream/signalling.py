"""WebRTC plumbing shared by /offer, WHIP and WHEP: ICE set-up, SDP negotiation and the control channel.

No trickle ICE anywhere: aiortc gathers every candidate before ``setLocalDescription`` returns, so
one HTTP round trip carries the full answer (what WHIP/WHEP clients and the browser page expect).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from stream.filters import FilterError
from stream.pipeline import FramePipeline

log = logging.getLogger(__name__)


class SignallingError(ValueError):
    """The client's SDP or message is unusable; the message is safe to return to it."""


# -- ICE --------------------------------------------------------------------------------------------
_LOOPBACK_V4 = "127.0.0.1"


def enable_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate (idempotent, process-wide).

    aioice's ``get_host_addresses`` skips 127.0.0.1, so on a machine (or container) whose only
    interface is loopback two peers have no candidate pair and ICE fails. aioice has no option for
    it (``Connection`` only takes ``use_ipv4``/``use_ipv6``), so we wrap the module function that
    ``Connection.gather_candidates`` looks up at call time. Remote peers simply fail the checks on
    this extra pair and use the others.
    """
    current = aioice.ice.get_host_addresses
    if getattr(current, "_rx_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = current(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        if use_ipv4 and _LOOPBACK_V4 not in addresses:
            addresses.append(_LOOPBACK_V4)
        return addresses

    get_host_addresses._rx_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


def make_peer_connection(ice_servers: tuple[str, ...] | list[str] = ()) -> RTCPeerConnection:
    """A peer connection that only uses the configured ICE servers (never aiortc's default public STUN)."""
    enable_loopback_candidates()
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in ice_servers]))


# -- SDP --------------------------------------------------------------------------------------------
def parse_offer(sdp: Any, type_: Any = "offer") -> RTCSessionDescription:
    """Check the cheap things aiortc would otherwise fail on obscurely."""
    if type_ != "offer":
        raise SignallingError(f"expected an SDP of type 'offer', got {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignallingError("missing SDP offer")
    if not sdp.lstrip().startswith("v=0"):
        raise SignallingError("malformed SDP: it must start with 'v=0'")
    if "m=video" not in sdp:
        raise SignallingError("the offer has no video section")
    return RTCSessionDescription(sdp=sdp, type="offer")


async def set_remote_offer(pc: RTCPeerConnection, offer: RTCSessionDescription) -> None:
    """``setRemoteDescription`` with aiortc/aioice parse errors mapped to SignallingError."""
    try:
        await pc.setRemoteDescription(offer)
    except Exception as e:  # aiortc raises ValueError/KeyError/IndexError/InvalidStateError on bad SDP
        raise SignallingError(f"malformed SDP offer: {type(e).__name__}: {e}") from e


async def answer(pc: RTCPeerConnection) -> str:
    """Create and apply the answer; returns its SDP with every ICE candidate in it."""
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:  # e.g. no codec in common with the offer
        raise SignallingError(f"cannot answer this offer: {type(e).__name__}: {e}") from e
    return pc.localDescription.sdp


# -- control data channel ---------------------------------------------------------------------------
def decode_message(raw: Any) -> dict[str, Any]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SignallingError("control messages must be UTF-8 JSON") from None
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        raise SignallingError("control message is not valid JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise SignallingError("control message must be a JSON object with a string 'type'")
    return msg


def apply_control(pipeline: FramePipeline, msg: dict[str, Any]) -> dict[str, Any]:
    """Apply one decoded control message to ``pipeline`` and return the reply. Runs off the event
    loop (building a chain may load models). Never raises: bad input becomes an ``error`` reply and
    leaves the pipeline as it was (set_chain and configure are all-or-nothing)."""
    try:
        kind = msg["type"]
        if kind == "ping":
            return {"type": "pong", "t": msg.get("t")}
        if kind == "set_filters":
            if "filters" not in msg:
                raise SignallingError("set_filters needs 'filters'")
            chain = pipeline.set_chain(msg["filters"])
            return {"type": "ack", "of": kind, "chain": chain}
        if kind == "configure":
            name, params = msg.get("name"), msg.get("params", {})
            if not isinstance(name, str) or not isinstance(params, dict):
                raise SignallingError("configure needs 'name' (string) and 'params' (object)")
            pipeline.configure(name, params)
            return {"type": "ack", "of": kind, "chain": pipeline.chain}
        raise SignallingError(f"unknown message type {kind!r} (set_filters, configure, ping)")
    except (SignallingError, FilterError) as e:
        return {"type": "error", "error": str(e)}
    except Exception as e:  # a filter's own constructor/configure failing must not kill the channel
        log.exception("control message failed")
        return {"type": "error", "error": f"{type(e).__name__}: {e}"}
