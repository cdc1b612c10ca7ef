"""/api/suggest_frames: parameter and upload checks, JSON errors, one computation at a time.

The ranking itself (``models.latent.retrieval``) needs trained weights and the shared gallery; here it is a
fake ranker with the same signature, so these tests check the HTTP side only.
"""

from __future__ import annotations

import struct
import threading
import zlib

import cv2
import numpy as np
import pytest

from stream.suggest_frames import MAX_PIXELS, FrameSuggester, SuggestError, SuggestParams, decode_image
from tests.rtc_helpers import running_server


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` with no pixel data (IHDR, an empty IDAT, IEND): a few bytes
    that would decode to a huge image, the decompression-bomb case."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_params_from_query() -> None:
    assert SuggestParams.from_query({}) == SuggestParams()
    p = SuggestParams.from_query({"k_faces": "4", "tau": "0.5", "top": "3"})
    assert (p.k_faces, p.tau, p.top, p.gallery) == (4, 0.5, 3, 200)
    for bad, match in (({"k": "3"}, "unknown"), ({"k_faces": "0"}, "outside"), ({"gallery": "1e9"}, "integer"),
                       ({"tau": "x"}, "number")):  # fmt: skip
        with pytest.raises(SuggestError, match=match) as e:
            SuggestParams.from_query(bad)
        assert e.value.status == 400


def test_decode_image() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(rgb)), rgb)  # RGB order kept, lossless
    for body, match in ((b"", "post a photo"), (b"not an image", "not a readable"),
                        (png_header_only(5000, 5000), "too large")):  # fmt: skip
        with pytest.raises(SuggestError, match=match) as e:
            decode_image(body)
        assert e.value.status == 400
    assert MAX_PIXELS < 5000 * 5000  # the probe really is over the limit


def test_one_suggestion_at_a_time() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(rgb: np.ndarray, p: SuggestParams) -> list[dict]:
        entered.set()
        release.wait(10)
        return [{"frame": "round", "score": 1.0, "lookalikes": []}]

    s = FrameSuggester(slow)
    body = png_bytes(np.zeros((8, 8, 3), np.uint8))
    t = threading.Thread(target=s.suggest, args=(body, {}))
    t.start()
    try:
        assert entered.wait(10)
        with pytest.raises(SuggestError, match="another") as e:
            s.suggest(body, {})
        assert e.value.status == 503
    finally:
        release.set()
        t.join(10)
    assert s.suggest(body, {})["suggestions"][0]["frame"] == "round"  # free again


def test_model_errors_map_to_statuses() -> None:
    body = png_bytes(np.zeros((8, 8, 3), np.uint8))

    def raising(exc: Exception):  # type: ignore[no-untyped-def]
        def rank(rgb: np.ndarray, p: SuggestParams) -> list[dict]:
            raise exc

        return rank

    for exc, status in ((FileNotFoundError("weights not found"), 503), (ValueError("bad face"), 400),
                        (SuggestError(400, "no face found in the photo"), 400)):  # fmt: skip
        with pytest.raises(SuggestError) as e:
            FrameSuggester(raising(exc)).suggest(body, {})
        assert e.value.status == status and str(exc) in str(e.value)


async def test_endpoint_json_answers() -> None:
    from stream.server import SUGGESTER

    seen: list[tuple[tuple[int, ...], SuggestParams]] = []

    def fake(rgb: np.ndarray, p: SuggestParams) -> list[dict]:
        seen.append((rgb.shape, p))
        return [{"frame": "aviator", "score": 0.7, "lookalikes": ["000001.jpg"]}]

    async with running_server() as server:
        url = f"{server.url}/api/suggest_frames"
        async with server.http.get(url) as r:
            info = await r.json()
            assert r.status == 200 and isinstance(info["available"], bool) and "POST" in info["usage"]
        server.app[SUGGESTER]._ranker = fake  # the real ranker needs trained weights and the gallery
        body = png_bytes(np.full((20, 16, 3), 90, np.uint8))
        async with server.http.post(url + "?top=2&k_faces=3", data=body) as r:
            assert r.status == 200
            got = await r.json()
        assert got["suggestions"][0]["frame"] == "aviator" and got["params"]["k_faces"] == 3
        assert seen == [((20, 16, 3), SuggestParams(k_faces=3, top=2))]
        for data, query, status in ((b"garbage", "", 400), (body, "?bogus=1", 400), (b"x" * (2 << 20), "", 413)):
            async with server.http.post(url + query, data=data) as r:
                assert r.status == status and "error" in await r.json()
        async with server.http.get(f"{server.url}/api/health") as r:
            assert r.status == 200  # still serving
