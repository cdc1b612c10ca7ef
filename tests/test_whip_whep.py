"""WHIP in, WHEP out, over loopback with aiortc clients: what the viewer sees is what the publisher sent
(odd 641x479 frames, through the pipeline and VP8 both ways), and every bad request gets a clean 4xx/5xx
while the server keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from stream.codec_fit import negotiated_video_codec, pad_to_even
from stream.config import ServerConfig
from stream.http_util import SESSIONS
from tests.rtc_helpers import (
    PatternTrack,
    Server,
    client_pc,
    collect_frames,
    decode_index,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

SDP = "application/sdp"
TOKEN = "s3cret-token"
_CONSUMERS: list[asyncio.Task[None]] = []  # keep consumer tasks referenced until their track ends


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())  # aiortc: all candidates, no trickle
    return pc.localDescription.sdp


async def _post_sdp(server: Server, path: str, sdp: str, token: str | None = None,
                    content_type: str = SDP) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": content_type, **_auth(token)}
    async with server.http.post(f"{server.url}{path}", data=sdp.encode(), headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def _publish(server: Server, source: PatternTrack, token: str | None = None, query: str = ""
                   ) -> tuple[RTCPeerConnection, str]:
    pc = client_pc()
    pc.addTransceiver(source, direction="sendonly")
    status, headers, body = await _post_sdp(server, f"/whip{query}", await _offer(pc), token)
    assert status == 201, body
    assert headers["Content-Type"].startswith(SDP) and headers["Location"].startswith("/whip/")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pc, headers["Location"]


async def _view(server: Server, token: str | None = None, codec: str | None = None
                ) -> tuple[RTCPeerConnection, str, list[Any]]:
    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    if codec is not None:  # offer only this codec (plus its RTX), as e.g. an H.264-only player would
        caps = RTCRtpReceiver.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType in (f"video/{codec}", "video/rtx")])
    frames: list[Any] = []
    pc.on("track", lambda track: collect_frames(track, frames, _CONSUMERS))

    status, headers, body = await _post_sdp(server, "/whep", await _offer(pc), token)
    assert status == 201, body
    assert headers["Location"].startswith("/whep/")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pc, headers["Location"], frames


async def _health(server: Server) -> dict[str, Any]:
    async with server.http.get(f"{server.url}/api/health") as r:
        assert r.status == 200
        return await r.json()


async def test_whip_publish_whep_view_odd_resolution() -> None:
    async with running_server() as server:
        source = PatternTrack(width=641, height=479, fps=15)
        pub, pub_loc = await _publish(server, source, query="?filters=passthrough")
        viewer, view_loc, frames = await _view(server)
        await wait_for(lambda: len(frames) >= 15, timeout_s=20, what="15 frames at the WHEP viewer")

        assert all(f.shape == (479, 641, 3) for f in frames)
        indices = [decode_index(f) for f in frames[-10:]]
        # Frames arrive in order, each one a frame the publisher really sent (index mod 256).
        assert indices == sorted(indices) and len(set(indices)) >= 5
        assert set(indices) <= {i % 256 for i in range(source.index)}
        assert (await _health(server))["by_kind"] == {"browser": 0, "whip": 1, "whep": 1}

        async with server.http.delete(f"{server.url}{view_loc}") as r:
            assert r.status == 200
        # A second viewer; ending the publisher ends its viewers too.
        viewer2, _, frames2 = await _view(server)
        await wait_for(lambda: len(frames2) >= 3, timeout_s=20, what="frames at the second viewer")
        # A viewer that just goes away (no DELETE) is cleaned up when its connection closes.
        await viewer2.close()
        await wait_for(lambda: server.app[SESSIONS].count("whep") == 0, timeout_s=15, what="viewer cleanup")
        # An H.264-only viewer: libx264 refuses odd sizes, so its frames are padded by one edge row/column.
        viewer3, _, frames3 = await _view(server, codec="H264")
        await wait_for(lambda: len(frames3) >= 5, timeout_s=20, what="H.264 frames at the third viewer")
        assert all(f.shape == (480, 642, 3) for f in frames3)
        h264_indices = [decode_index(f[:479, :641]) for f in frames3[-5:]]
        assert h264_indices == sorted(h264_indices) and set(h264_indices) <= {i % 256 for i in range(source.index)}
        async with server.http.delete(f"{server.url}{pub_loc}") as r:
            assert r.status == 200
        assert (await _health(server))["sessions"] == 0
        for loc in (pub_loc, view_loc):
            async with server.http.delete(f"{server.url}{loc}") as r:
                assert r.status == 404
        for pc in (pub, viewer, viewer3):
            await pc.close()


async def test_whip_whep_errors_keep_server_serving() -> None:
    config = ServerConfig(whip_token=TOKEN, max_sessions=1, max_viewers=1)
    async with running_server(config) as server:
        peers: list[RTCPeerConnection] = []

        async def fresh_offer(direction: str = "sendonly") -> str:
            pc = client_pc()
            peers.append(pc)
            if direction == "sendonly":
                pc.addTransceiver(PatternTrack(), direction="sendonly")
            else:
                pc.addTransceiver("video", direction="recvonly")
            return await _offer(pc)

        async def expect(status: int, got: tuple[int, dict[str, str], str]) -> dict[str, str]:
            assert got[0] == status, got
            assert (await _health(server))["ok"] is True  # still serving
            return got[1]

        whip_sdp = await fresh_offer()
        headers = await expect(401, await _post_sdp(server, "/whip", whip_sdp))
        assert headers["WWW-Authenticate"].startswith("Bearer")
        await expect(401, await _post_sdp(server, "/whip", whip_sdp, token="wrong"))
        await expect(415, await _post_sdp(server, "/whip", whip_sdp, TOKEN, content_type="application/json"))
        await expect(400, await _post_sdp(server, "/whip", "v=0\r\nnot really sdp\r\n", TOKEN))
        await expect(400, await _post_sdp(server, "/whip", "hello", TOKEN))
        await expect(400, await _post_sdp(server, "/whip?filters=no_such_filter", whip_sdp, TOKEN))
        whep_sdp = await fresh_offer("recvonly")
        headers = await expect(409, await _post_sdp(server, "/whep", whep_sdp, TOKEN))  # no publisher yet
        assert "Retry-After" in headers

        headers = await expect(201, await _post_sdp(server, "/whip", whip_sdp, TOKEN))
        whip_loc = headers["Location"]
        await expect(503, await _post_sdp(server, "/whip", await fresh_offer(), TOKEN))  # cap 1
        async with server.http.post(f"{server.url}/offer", json={"sdp": await fresh_offer(), "type": "offer"}) as r:
            assert r.status == 503 and "Retry-After" in r.headers  # browsers share the processing cap

        await expect(401, await _post_sdp(server, "/whep", whep_sdp))
        await expect(400, await _post_sdp(server, "/whep", "v=0\r\nm=video 9 RTP/AVP 0\r\n", TOKEN))
        headers = await expect(201, await _post_sdp(server, "/whep", whep_sdp, TOKEN))
        whep_loc = headers["Location"]
        await expect(503, await _post_sdp(server, "/whep", await fresh_offer("recvonly"), TOKEN))  # viewer cap 1

        async with server.http.patch(f"{server.url}{whip_loc}", headers=_auth(TOKEN)) as r:
            assert r.status == 405 and "error" in await r.json()
        async with server.http.options(f"{server.url}/whip") as r:
            assert r.status == 204 and "POST" in r.headers["Allow"] and r.headers["Accept-Post"] == SDP
        async with server.http.delete(f"{server.url}{whip_loc}") as r:
            assert r.status == 401  # deleting needs the token too
        async with server.http.delete(f"{server.url}/whip/unknown", headers=_auth(TOKEN)) as r:
            assert r.status == 404
        async with server.http.delete(f"{server.url}{whep_loc}", headers=_auth(TOKEN)) as r:
            assert r.status == 200
        async with server.http.delete(f"{server.url}{whip_loc}", headers=_auth(TOKEN)) as r:
            assert r.status == 200
        assert (await _health(server))["sessions"] == 0
        # Slots are free again: a good publish right after all of that.
        await expect(201, await _post_sdp(server, "/whip", await fresh_offer(), TOKEN))
        for pc in peers:
            await pc.close()


def test_negotiated_codec_and_even_padding() -> None:
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
           "m=video 9 UDP/TLS/RTP/SAVPF 102 96\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n")
    assert negotiated_video_codec(sdp) == "H264"
    assert negotiated_video_codec(sdp.replace("102 96", "96 102")) == "VP8"
    assert negotiated_video_codec("v=0\r\nm=audio 9 RTP/AVP 0\r\n") is None
    odd = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = pad_to_even(odd)
    assert padded.shape == (4, 6, 3)
    assert np.array_equal(padded[:3, :5], odd)
    assert np.array_equal(padded[3, :5], odd[2]) and np.array_equal(padded[:3, 5], odd[:, 4])
    even = np.zeros((4, 6, 3), np.uint8)
    assert pad_to_even(even) is even
