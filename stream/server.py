"""The HTTP side of the service: browser page, filter list, health, /offer sessions, WHIP/WHEP.

Every client error is a JSON ``{"error": ...}`` with a 4xx status and leaves the server serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc.contrib.media import MediaRelay

from stream import filters
from stream import whip as whip_routes
from stream.config import ServerConfig, TrackerConfig
from stream.filters import FilterError
from stream.http_util import CONFIG, RELAY, SESSIONS, json_error, over_capacity
from stream.model_asset import ModelAssetError, model_path
from stream.rtc_latency import enable_low_latency_receive
from stream.session_setup import start_processing_session
from stream.sessions import CapacityError, SessionRegistry
from stream.signalling import SignallingError, enable_loopback_candidates
from stream.suggest_frames import FrameSuggester, SuggestError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SUGGESTER = web.AppKey("suggester", FrameSuggester)
MAX_BODY = 1 << 20  # SDP offers are a few kB; a face photo for /api/suggest_frames fits in 1 MiB


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return json_error(404, "the browser page is not installed (stream/static/index.html)")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    path = (STATIC_DIR / name).resolve()
    # Only plain files directly under static/ (no traversal, no sub-directories, no dotfiles).
    if path.parent != STATIC_DIR or name.startswith(".") or not path.is_file():
        return json_error(404, f"no static file {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def api_filters(request: web.Request) -> web.Response:
    return web.json_response(filters.describe(), dumps=lambda o: json.dumps(o, default=str))


async def api_health(request: web.Request) -> web.Response:
    registry, config = request.app[SESSIONS], request.app[CONFIG]
    return web.json_response({
        "ok": True,
        "sessions": registry.count(),
        "by_kind": {k: registry.count(k) for k in ("browser", "whip", "whep")},
        "max_sessions": config.max_sessions,
        "max_viewers": config.max_viewers,
        "publisher": registry.publisher_id is not None,
    })


async def post_offer(request: web.Request) -> web.Response:
    config, registry = request.app[CONFIG], request.app[SESSIONS]
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, "body must be JSON {sdp, type, filters?}")
    if not isinstance(body, dict) or "sdp" not in body or "type" not in body:
        return json_error(400, "body must be a JSON object with 'sdp' and 'type'")
    if body["type"] != "offer":
        return json_error(400, f"'type' must be 'offer', got {body['type']!r}")
    chain = body.get("filters")
    if chain is None:
        chain = list(config.default_filters)
    try:
        with registry.reserve("browser"):
            session, answer_sdp = await start_processing_session(
                registry, config, "browser", request.remote or "?", body["sdp"], chain)
    except CapacityError as e:
        return over_capacity(str(e))
    except (SignallingError, FilterError) as e:
        log.warning("offer from %s refused: %s", request.remote, e)
        return json_error(400, str(e))
    return web.json_response({"sdp": answer_sdp, "type": "answer", "session_id": session.id})


async def get_suggest_frames(request: web.Request) -> web.Response:
    """Whether frame suggestions work on this server, and how to ask for them."""
    info = await asyncio.get_running_loop().run_in_executor(None, FrameSuggester.availability)  # imports torch
    usage = "POST a face photo (JPEG, PNG or WebP, at most 1 MiB); optional ?k_faces=8&gallery=200&seed=0&tau=0.1&top=5"
    return web.json_response({**info, "usage": usage})


async def post_suggest_frames(request: web.Request) -> web.Response:
    """Catalogue frames that suit faces like the one in the posted photo (``stream.suggest_frames``)."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"photo too large (at most {MAX_BODY} bytes)")
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(None, request.app[SUGGESTER].suggest, body, dict(request.query))
    except SuggestError as e:
        return over_capacity(str(e)) if e.status == 503 else json_error(e.status, str(e))
    except Exception as e:  # a model failure must not take the server down
        log.exception("frame suggestion failed")
        return json_error(500, f"frame suggestion failed: {type(e).__name__}: {e}")
    return web.json_response(result)


async def delete_session(request: web.Request) -> web.Response:
    registry = request.app[SESSIONS]
    session = registry.get(request.match_info["id"])
    if session is None:
        return json_error(404, f"no session {request.match_info['id']!r}")
    await registry.close(session, "DELETE")
    return web.json_response({"ok": True})


async def _on_shutdown(app: web.Application) -> None:
    await app[SESSIONS].close_all()


def create_app(config: ServerConfig | None = None) -> web.Application:
    config = config or ServerConfig()
    enable_loopback_candidates()
    # aiortc holds each received video frame until the next one starts (+1 frame interval); release on the
    # RTP marker bit instead. Here (not per peer connection) so a benchmark can switch it back for A/B runs.
    enable_low_latency_receive()
    app = web.Application(client_max_size=MAX_BODY)
    app[CONFIG] = config
    app[SESSIONS] = SessionRegistry(config.max_sessions, config.max_viewers)
    app[RELAY] = MediaRelay()
    app[SUGGESTER] = FrameSuggester()
    app.router.add_get("/", index)
    app.router.add_get("/static/{file}", static_file)
    app.router.add_get("/api/filters", api_filters)
    app.router.add_get("/api/health", api_health)
    app.router.add_post("/offer", post_offer)
    app.router.add_delete("/session/{id}", delete_session)
    app.router.add_get("/api/suggest_frames", get_suggest_frames)
    app.router.add_post("/api/suggest_frames", post_suggest_frames)
    whip_routes.add_routes(app)
    app.on_shutdown.append(_on_shutdown)
    return app


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        max_viewers=getattr(args, "max_viewers", None) or ServerConfig.max_viewers,
        ice_servers=tuple(args.ice_server or ()),
        whip_token=args.whip_token,
        tracker=TrackerConfig(max_faces=args.max_faces),
        overlap=not getattr(args, "no_overlap", False),
    )


def run_server(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.max_sessions < 1:
        log.error("--max-sessions must be at least 1")
        return 2
    try:  # say it once, at start: without the model, face filters pass frames through
        model_path(config.tracker.model_path)
    except ModelAssetError as e:
        log.error("%s; filters that need faces will pass frames through until then", e)
    log.info("serving http://%s:%d/ (ICE servers: %s)", config.host, config.port,
             ", ".join(config.ice_servers) or "none, loopback/host candidates only")
    try:
        web.run_app(create_app(config), host=config.host, port=config.port, print=log.info)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, e)
        return 2
    return 0
