"""Pieces every HTTP handler shares: app keys, JSON errors, the Bearer-token check."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiortc.contrib.media import MediaRelay

from stream.config import ServerConfig
from stream.sessions import SessionRegistry

CONFIG = web.AppKey("config", ServerConfig)
SESSIONS = web.AppKey("sessions", SessionRegistry)
RELAY = web.AppKey("relay", MediaRelay)

RETRY_AFTER_S = 5


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def over_capacity(message: str) -> web.Response:
    return json_error(503, message, {"Retry-After": str(RETRY_AFTER_S)})


def check_bearer(request: web.Request, token: str | None) -> web.Response | None:
    """None when allowed; else the 401 to return (RFC 6750 challenge)."""
    if token is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    error = "invalid_token" if header else "invalid_request"
    return json_error(401, "missing or wrong Bearer token",
                      {"WWW-Authenticate": f'Bearer realm="rxstream", error="{error}"'})
