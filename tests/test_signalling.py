"""/offer sessions with a real aiortc client over loopback: processed video back, the control channel,
and clean 4xx answers to bad input (the server keeps serving after each)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCSessionDescription

from stream.config import ServerConfig
from stream.pipeline import FramePipeline
from stream.signalling import SignallingError, apply_control, decode_message, enable_loopback_candidates, parse_offer
from tests.rtc_helpers import (
    PatternTrack,
    Server,
    client_pc,
    collect_frames,
    decode_index,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


def test_loopback_candidates_are_gathered() -> None:
    enable_loopback_candidates()
    enable_loopback_candidates()  # idempotent: no double wrapping
    addrs = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert addrs.count("127.0.0.1") == 1
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True)


async def test_connects_when_loopback_is_the_only_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the loopback candidate a loopback-only host gathers no candidate at all and ICE fails."""
    real = aioice.ice.ifaddr.get_adapters

    def loopback_only(*args: Any, **kwargs: Any) -> list[Any]:
        return [a for a in real(*args, **kwargs) if a.name == "lo"]

    monkeypatch.setattr(aioice.ice.ifaddr, "get_adapters", loopback_only)
    async with running_server() as server:
        pc = client_pc()
        pc.addTransceiver(PatternTrack(fps=30), direction="sendrecv")
        frames: list[Any] = []
        tasks: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: collect_frames(track, frames, tasks))
        await pc.setLocalDescription(await pc.createOffer())
        assert "a=candidate:" in pc.localDescription.sdp
        async with server.http.post(f"{server.url}/offer", json={"sdp": pc.localDescription.sdp,
                                                                 "type": "offer"}) as r:
            assert r.status == 200, await r.text()
            answer_sdp = (await r.json())["sdp"]
        candidates = [ln for ln in answer_sdp.splitlines() if ln.startswith("a=candidate:")]
        assert candidates and all(" 127.0.0.1 " in c for c in candidates), candidates
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        await wait_for(lambda: len(frames) >= 5, timeout_s=15, what="processed frames over 127.0.0.1")
        assert pc.connectionState == "connected"
        await pc.close()


async def _offer_sdp(with_video: bool = True) -> tuple[Any, str]:
    pc = client_pc()
    if with_video:
        pc.addTransceiver(PatternTrack(), direction="sendrecv")
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def _assert_serving(server: Server) -> None:
    async with server.http.get(f"{server.url}/api/health") as r:
        assert r.status == 200 and (await r.json())["ok"] is True


async def test_api_filters_and_health() -> None:
    async with running_server() as server:
        async with server.http.get(f"{server.url}/api/filters") as r:
            assert r.status == 200
            names = {f["name"] for f in await r.json()}
        assert {"passthrough", "landmarks"} <= names
        async with server.http.get(f"{server.url}/api/health") as r:
            body = await r.json()
        assert body["ok"] is True and body["sessions"] == 0


async def test_static_routes() -> None:
    async with running_server() as server:
        async with server.http.get(f"{server.url}/") as r:
            if r.status == 200:  # A2's page is present
                assert "html" in r.content_type and "<" in await r.text()
            else:
                assert r.status == 404 and "error" in await r.json()
        for bad in ("nope.js", "..%2Fserver.py", ".hidden"):
            async with server.http.get(f"{server.url}/static/{bad}") as r:
                assert r.status == 404, bad
        await _assert_serving(server)


async def test_offer_session_control_channel_and_video() -> None:
    async with running_server(ServerConfig(stats_interval_s=0.2)) as server:
        pc = client_pc()
        source = PatternTrack(width=320, height=240, fps=15)
        pc.addTransceiver(source, direction="sendrecv")
        channel = pc.createDataChannel("control")
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        stats: list[dict[str, Any]] = []

        @channel.on("message")
        def _on_message(raw: str) -> None:
            msg = json.loads(raw)
            (stats.append if msg["type"] == "stats" else inbox.put_nowait)(msg)

        frames: list[Any] = []
        tasks: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: collect_frames(track, frames, tasks))

        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", "filters": ["passthrough"]}
        async with server.http.post(f"{server.url}/offer", json=offer) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["type"] == "answer" and body["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        await wait_for(lambda: channel.readyState == "open", what="control channel open")

        async def ask(message: str | dict[str, Any]) -> dict[str, Any]:
            channel.send(message if isinstance(message, str) else json.dumps(message))
            return await asyncio.wait_for(inbox.get(), 5)

        assert await ask({"type": "ping", "t": 1234.5}) == {"type": "pong", "t": 1234.5}
        assert await ask({"type": "set_filters", "filters": "passthrough"}) == {
            "type": "ack", "of": "set_filters", "chain": ["passthrough"]}
        assert (await ask("{not json"))["type"] == "error"
        err = await ask({"type": "set_filters", "filters": ["no_such_filter"]})
        assert err["type"] == "error" and "no_such_filter" in err["error"]
        assert (await ask({"type": "configure", "name": "passthrough", "params": {"bogus": 1}}))["type"] == "error"
        assert (await ask({"type": "configure", "name": "landmarks", "params": {}}))["type"] == "error"
        assert (await ask({"type": "teleport"}))["type"] == "error"
        # The session survived every bad message: still answering, chain unchanged, video flowing.
        assert (await ask({"type": "ping", "t": 1}))["type"] == "pong"
        await wait_for(lambda: len(frames) >= 10 and len(stats) >= 3, timeout_s=15, what="video and stats")
        last = stats[-1]
        for key in ("fps_in", "fps_out", "dropped", "frames_in", "frames_out", "stages_ms", "processing_ms",
                    "e2e_ms", "faces", "chain", "errors", "resolution"):
            assert key in last, key
        assert last["chain"] == ["passthrough"] and last["resolution"] == [320, 240]
        assert last["frames_out"] > 0 and last["fps_in"] > 5
        assert {"convert_in", "passthrough", "convert_out"} <= set(last["stages_ms"])
        assert last["e2e_ms"]["p50"] is not None and last["e2e_ms"]["p50"] < 200
        # What came back is what was sent (passthrough): frame indices in order, each one really sent.
        received = [decode_index(f) for f in frames[-5:]]
        assert received == sorted(received) and len(set(received)) >= 3
        assert set(received) <= set(range(source.index))

        sid = body["session_id"]
        async with server.http.delete(f"{server.url}/session/{sid}") as r:
            assert r.status == 200
        async with server.http.delete(f"{server.url}/session/{sid}") as r:
            assert r.status == 404
        async with server.http.get(f"{server.url}/api/health") as r:
            assert (await r.json())["sessions"] == 0
        await pc.close()


async def test_offer_bad_requests_then_good_one() -> None:
    async with running_server(ServerConfig(max_sessions=1)) as server:
        pc, sdp = await _offer_sdp()
        bad: list[tuple[Any, int]] = [
            (b"{nope", 400),
            ([1, 2], 400),
            ({"type": "offer"}, 400),
            ({"sdp": sdp, "type": "answer"}, 400),
            ({"sdp": "v=0\r\nthis is not sdp\r\n", "type": "offer"}, 400),
            ({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}, 400),
            ({"sdp": sdp, "type": "offer", "filters": ["no_such_filter"]}, 400),
            ({"sdp": sdp, "type": "offer", "filters": 42}, 400),
        ]
        for payload, status in bad:
            data = payload if isinstance(payload, bytes) else json.dumps(payload)
            async with server.http.post(f"{server.url}/offer", data=data) as r:
                assert r.status == status, (payload, await r.text())
                assert "error" in await r.json()
            await _assert_serving(server)
        async with server.http.post(f"{server.url}/offer", json={"sdp": sdp, "type": "offer"}) as r:
            assert r.status == 200, await r.text()
            sid = (await r.json())["session_id"]
        pc2, sdp2 = await _offer_sdp()
        async with server.http.post(f"{server.url}/offer", json={"sdp": sdp2, "type": "offer"}) as r:
            assert r.status == 503 and r.headers["Retry-After"]
        async with server.http.delete(f"{server.url}/session/{sid}") as r:
            assert r.status == 200
        async with server.http.post(f"{server.url}/offer", json={"sdp": sdp2, "type": "offer"}) as r:
            assert r.status == 200, await r.text()  # the slot was freed
        async with server.http.delete(f"{server.url}/session/unknown") as r:
            assert r.status == 404
        await pc.close()
        await pc2.close()


@pytest.mark.parametrize("sdp, needle", [
    (None, "missing"), ("", "missing"), ("hello", "v=0"), ("v=0\r\nm=audio 9 RTP/AVP 0\r\n", "no video"),
])
def test_parse_offer_rejects_with_reason(sdp: Any, needle: str) -> None:
    with pytest.raises(SignallingError, match=needle):
        parse_offer(sdp)


def test_apply_control_is_all_or_nothing() -> None:
    pipeline = FramePipeline("passthrough")
    try:
        assert apply_control(pipeline, {"type": "set_filters", "filters": "passthrough+passthrough"})["chain"] == [
            "passthrough", "passthrough"]
        for bad in ({"type": "set_filters", "filters": ["passthrough", "nope"]}, {"type": "set_filters"},
                    {"type": "configure", "name": "passthrough", "params": {"x": 1}},
                    {"type": "configure", "name": 3}, {"type": "what"}):
            reply = apply_control(pipeline, bad)
            assert reply["type"] == "error" and reply["error"], bad
        assert pipeline.chain == ["passthrough", "passthrough"]
        assert apply_control(pipeline, {"type": "ping", "t": 5}) == {"type": "pong", "t": 5}
    finally:
        pipeline.close()


@pytest.mark.parametrize("raw", ["{", b"\xff", "[1]", '{"t": 1}', '{"type": 3}', "null"])
def test_decode_message_rejects(raw: Any) -> None:
    with pytest.raises(SignallingError):
        decode_message(raw)


def test_serve_arguments_build_the_server_config() -> None:
    from stream.cli import build_parser
    from stream.server import config_from_args

    args = build_parser().parse_args(["serve", "--port", "9000", "--max-sessions", "2", "--max-faces", "3",
                                      "--ice-server", "stun:127.0.0.1:3478", "--whip-token", "t0k"])
    cfg = config_from_args(args)
    assert (cfg.host, cfg.port, cfg.max_sessions, cfg.whip_token) == ("127.0.0.1", 9000, 2, "t0k")
    assert cfg.ice_servers == ("stun:127.0.0.1:3478",) and cfg.tracker.max_faces == 3
    assert config_from_args(build_parser().parse_args(["serve"])).ice_servers == ()  # no public STUN by default
    assert cfg.overlap and not config_from_args(build_parser().parse_args(["serve", "--no-overlap"])).overlap
