"""WHIP ingest (RFC 9725) and WHEP egress over the processing pipeline.

- ``POST /whip`` (application/sdp offer, optional ``?filters=a+b``) -> 201, Location ``/whip/{id}``,
  answer SDP with all candidates (no trickle). The newest publisher becomes the WHEP source.
- ``POST /whep`` (recvonly offer) -> 201, Location ``/whep/{id}``; viewers share the publisher's
  processed track through a MediaRelay, so frames are processed once whatever the viewer count.
  With no publisher yet the answer is **409 Conflict** (``Retry-After``): the viewer retries. A
  viewer stays on the publisher it joined; when that publisher ends, its viewers are closed too.
- ``DELETE /whip|whep/{id}`` -> 200; ``PATCH`` (trickle ICE / ICE restart) -> 405;
  ``OPTIONS`` -> 204 with Allow / Accept-Post.
"""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web
from aiortc import MediaStreamTrack

from stream.codec_fit import fit_senders_to_codec
from stream.filters import FilterError
from stream.http_util import CONFIG, RELAY, RETRY_AFTER_S, SESSIONS, check_bearer, json_error, over_capacity
from stream.session_setup import start_processing_session, watch_connection
from stream.sessions import CapacityError, Session
from stream.signalling import SignallingError, answer, make_peer_connection, parse_offer, set_remote_offer

log = logging.getLogger(__name__)

SDP = "application/sdp"
Endpoint = Literal["whip", "whep"]


async def _read_offer(request: web.Request) -> str | web.Response:
    """The offer body, or the error response (401 before 415: never tell strangers more)."""
    denied = check_bearer(request, request.app[CONFIG].whip_token)
    if denied is not None:
        return denied
    if request.content_type != SDP:
        return json_error(415, f"Content-Type must be {SDP}, got {request.content_type or 'none'}",
                          {"Accept-Post": SDP})
    try:
        return await request.text()
    except UnicodeDecodeError:
        return json_error(400, "SDP body is not valid UTF-8")


def _created(endpoint: Endpoint, session_id: str, answer_sdp: str) -> web.Response:
    return web.Response(status=201, text=answer_sdp, content_type=SDP,
                        headers={"Location": f"/{endpoint}/{session_id}"})


async def post_whip(request: web.Request) -> web.Response:
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    config, registry = request.app[CONFIG], request.app[SESSIONS]
    chain = request.query.get("filters") or list(config.default_filters)
    try:
        with registry.reserve("whip"):
            session, answer_sdp = await start_processing_session(
                registry, config, "whip", request.remote or "?", offer, chain)
    except CapacityError as e:
        return over_capacity(str(e))
    except (SignallingError, FilterError) as e:
        log.warning("WHIP offer from %s refused: %s", request.remote, e)
        return json_error(400, str(e))
    return _created("whip", session.id, answer_sdp)


async def post_whep(request: web.Request) -> web.Response:
    offer_sdp = await _read_offer(request)
    if isinstance(offer_sdp, web.Response):
        return offer_sdp
    config, registry, relay = request.app[CONFIG], request.app[SESSIONS], request.app[RELAY]
    try:
        offer = parse_offer(offer_sdp)
    except SignallingError as e:
        return json_error(400, str(e))
    publisher = registry.publisher
    if publisher is None or publisher.track is None:
        return json_error(409, "no WHIP publisher yet: publish to /whip first, then retry",
                          {"Retry-After": str(RETRY_AFTER_S)})
    try:
        with registry.reserve("whep"):
            pc = make_peer_connection(config.ice_servers)
            session = Session(id=registry.new_id(), kind="whep", remote=request.remote or "?", pc=pc,
                              publisher_id=publisher.id)

            @pc.on("track")
            def _on_track(track: MediaStreamTrack) -> None:
                session.blackhole.addTrack(track)  # a viewer has nothing to send; drain whatever it does

            try:
                await set_remote_offer(pc, offer)
                if not any(t.kind == "video" for t in pc.getTransceivers()):
                    raise SignallingError("the offer has no video to receive")
                # buffered=False: each viewer gets the newest processed frame, never a backlog.
                pc.addTrack(relay.subscribe(publisher.track, buffered=False))
                answer_sdp = await answer(pc)
                fit_senders_to_codec(pc, answer_sdp)
                await session.blackhole.start()
            except BaseException:
                await pc.close()
                raise
            watch_connection(registry, session)
            registry.add(session)
    except CapacityError as e:
        return over_capacity(str(e))
    except SignallingError as e:
        log.warning("WHEP offer from %s refused: %s", request.remote, e)
        return json_error(400, str(e))
    return _created("whep", session.id, answer_sdp)


def _delete(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        denied = check_bearer(request, request.app[CONFIG].whip_token)
        if denied is not None:
            return denied
        registry = request.app[SESSIONS]
        session = registry.get(request.match_info["id"], endpoint)
        if session is None:
            return json_error(404, f"no {endpoint.upper()} session {request.match_info['id']!r}")
        await registry.close(session, "DELETE")
        return web.Response(status=200)

    return handler


async def patch_resource(request: web.Request) -> web.Response:
    return json_error(405, "trickle ICE and ICE restarts are not supported: the answer already has every candidate",
                      {"Allow": "DELETE"})


async def options_endpoint(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": SDP})


def add_routes(app: web.Application) -> None:
    for endpoint, post in (("whip", post_whip), ("whep", post_whep)):
        app.router.add_post(f"/{endpoint}", post)
        app.router.add_route("OPTIONS", f"/{endpoint}", options_endpoint)
        app.router.add_delete(f"/{endpoint}/{{id}}", _delete(endpoint))  # type: ignore[arg-type]
        app.router.add_patch(f"/{endpoint}/{{id}}", patch_resource)
