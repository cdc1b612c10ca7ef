"""The real page in a real headless Chromium, against the real server, over loopback WebRTC.

Chromium's fake camera plays a shared talking-head clip; the test starts the ``landmarks`` filter
from the page, checks ON THE RETURNED FRAMES that the overlay's green landmark dots sit on the
face, that stats arrive on the data channel, then switches filters and parameters from the
control panel and sees each change in the video. Never downloads a browser: /usr/bin/chromium.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(150)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-default-browser-check",
    # One --disable-features only (Chromium keeps the last). Plain host candidates instead of mDNS names
    # so the server pairs with the page directly over loopback.
    "--disable-features=MediaRouter,OptimizationHints,Translate,WebRtcHideLocalIpsWithMdns",
]
# After VP8 both ways the landmark dots (pure RGB green, 2x2 px) are smeared but stay strongly green;
# skin, hair, glasses and background in the clip never are.
GREEN_MIN_G, GREEN_MIN_MARGIN = 140, 80


def green_mask(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.int16)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    return (g >= GREEN_MIN_G) & (g - np.maximum(r, b) >= GREEN_MIN_MARGIN)


@dataclass
class Green:
    count: int
    inside_face: float  # fraction of green pixels inside the face box


def measure_green(rgb: np.ndarray, face_box: tuple[float, float, float, float]) -> Green:
    """Count landmark-green pixels and how many fall in ``face_box`` (x0, y0, x1, y1 as fractions of the frame)."""
    m = green_mask(rgb)
    n = int(m.sum())
    h, w = m.shape
    x0, y0, x1, y1 = face_box
    inside = int(m[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].sum())
    return Green(n, inside / n if n else 0.0)


def face_box_of(rgb: np.ndarray, landmarker_model: Path) -> tuple[float, float, float, float]:
    """The face's landmark bounding box (fractions, padded 15 %) in a source frame, by the project's own tracker."""
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    tracker = FaceTracker(TrackerConfig(max_faces=1, smoothing=False, model_path=str(landmarker_model)))
    try:
        faces = tracker.track(rgb, 0.0)
    finally:
        tracker.close()
    assert faces, "no face in the test clip's first frame"
    h, w = rgb.shape[:2]
    xy = faces[0].landmarks_px[:, :2]
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    px, py = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    return (max(0.0, (x0 - px) / w), max(0.0, (y0 - py) / h), min(1.0, (x1 + px) / w), min(1.0, (y1 + py) / h))


def first_frame(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def png_to_rgb(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "undecodable frame grab"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    server = pytest.importorskip("stream.server", reason="stream.server (create_app) is not available")
    from aiohttp import web

    from stream.config import ServerConfig

    app = server.create_app(ServerConfig(host="127.0.0.1", port=0))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def page_factory(d12_y4m: Path) -> AsyncIterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package 'chromium')")
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={d12_y4m}"],
        )
        console: list[str] = []
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 820})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.console_log = console  # type: ignore[attr-defined]
            yield page
        finally:
            await browser.close()


async def grab(page: Any) -> np.ndarray:
    shot = await page.evaluate("window.rxstream.grabFrame()")
    assert shot is not None, "remote video has no frame"
    return png_to_rgb(shot["dataUrl"])


async def wait_green(page: Any, box: tuple[float, float, float, float], present: bool, timeout_s: float = 20.0,
                     ) -> Green:
    """Poll returned frames until landmark green is present (on the face) or absent; return the last reading."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    g = Green(0, 0.0)
    while asyncio.get_running_loop().time() < deadline:
        g = measure_green(await grab(page), box)
        if present and g.count >= 150 and g.inside_face >= 0.95:
            return g
        if not present and g.count <= 10:
            return g
        await asyncio.sleep(0.25)
    log = "\n".join(page.console_log[-10:])
    msgs = await page.evaluate("window.rxstream.messages.map(m => m.text)")
    raise AssertionError(f"landmark green {'never appeared' if present else 'never went away'}: {g}; "
                         f"messages {msgs[-6:]}; console:\n{log}")


async def wait_js(page: Any, expr: str, timeout_s: float) -> None:
    """``page.wait_for_function`` that, on timeout, says what the page's state was."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(expr, timeout=timeout_s * 1e3)
    except PlaywrightTimeout:
        state = await page.evaluate(
            "(r => ({state: r.state, error: r.error, frames: r.framesReceived, stats: r.lastStats,"
            " messages: r.messages.slice(-6).map(m => m.text)}))(window.rxstream)")
        raise AssertionError(f"timed out after {timeout_s} s waiting for {expr}; page: {state}; "
                             f"console: {page.console_log[-6:]}") from None


async def frames_after(page: Any, n: int, timeout_s: float = 20.0) -> None:
    start = await page.evaluate("window.rxstream.framesReceived")
    await wait_js(page, f"window.rxstream.framesReceived >= {start + n}", timeout_s)


async def test_page_runs_landmarks_and_switches_filters(
    server_url: str, page_factory: Any, d12_y4m: Path, landmarker_model: Path, tmp_path: Path,
) -> None:
    page = page_factory
    box = face_box_of(first_frame(d12_y4m), landmarker_model)

    await page.goto(server_url + "/")
    await wait_js(page, "window.rxstream && window.rxstream.filtersLoaded === true", 10)
    assert await page.locator("#status").get_attribute("data-state") == "idle"
    names = await page.evaluate("window.rxstream.filters.map(f => f.name)")
    assert {"passthrough", "landmarks"} <= set(names)

    # Start from the control panel with the landmarks filter.
    await page.select_option("#chain select.filter-select", "landmarks")
    assert await page.locator("fieldset.param-group[data-filter=landmarks] input[data-param=points]").is_checked()
    await page.click("#start")
    await wait_js(page, "window.rxstream.state === 'live' && window.rxstream.framesReceived >= 20", 45)
    assert await page.locator("#status").get_attribute("data-state") == "live"

    # Stats arrive on the data channel, with the tracked face's pose.
    await wait_js(page, "(s => s && s.fps_out > 0 && s.faces && s.faces.length > 0)(window.rxstream.lastStats)", 20)
    stats = await page.evaluate("window.rxstream.lastStats")
    face = stats["faces"][0]
    for k in ("id", "yaw", "pitch", "roll"):
        assert k in face, stats
    assert all(abs(float(face[k])) < 90 for k in ("yaw", "pitch", "roll")), face
    assert stats["frames_out"] > 0
    await wait_js(page, "window.rxstream.rttMs !== null", 10)
    assert 0 < await page.evaluate("window.rxstream.rttMs") < 2000
    assert await page.locator("#st-faces .r.face").count() >= 1  # the overlay shows it too

    # The filter really ran: landmark green on the returned frames, on the face.
    on = await wait_green(page, box, present=True)
    await page.screenshot(path=str(tmp_path / "page_live.png"))  # for a human looking at a failure

    # Switch to passthrough on the fly from the chain editor: the dots go away.
    await page.select_option("#chain select.filter-select", "passthrough")
    off = await wait_green(page, box, present=False)
    await wait_js(page, "JSON.stringify(window.rxstream.lastStats.chain).includes('passthrough')", 10)

    # And back; then parameters from the panel: without "points" and "axes" (its y axis is green too)
    # the green goes away while the filter stays in the chain.
    await page.select_option("#chain select.filter-select", "landmarks")
    await wait_green(page, box, present=True)
    group = page.locator("fieldset.param-group[data-filter=landmarks]")
    await group.locator("input[data-param=points]").uncheck()
    await group.locator("input[data-param=axes]").uncheck()
    await wait_green(page, box, present=False)
    assert "landmarks" in str(await page.evaluate("window.rxstream.lastStats.chain"))
    assert on.count > 20 * max(off.count, 1)

    # Bad input is reported and loses nothing: the stream keeps running.
    n_err = len(await page.evaluate("window.rxstream.errors"))
    await page.evaluate("window.rxstream.configure('landmarks', {axis_mm: 1e9})")
    await wait_js(page, f"window.rxstream.errors.length > {n_err}", 10)
    assert "axis_mm" in (await page.evaluate("window.rxstream.errors"))[-1]
    await frames_after(page, 10)
    # A refused chain rolls the panel back to what the server still runs.
    await page.evaluate("window.rxstream.setFilters(['no_such_filter'])")
    await wait_js(page, f"window.rxstream.errors.length > {n_err + 1}", 10)
    await wait_js(page, "document.querySelector('#chain select.filter-select').value === 'landmarks'", 5)
    assert not await group.locator("input[data-param=points]").is_checked()  # configured values kept
    await frames_after(page, 10)

    await page.click("#stop")
    assert await page.locator("#status").get_attribute("data-state") == "stopped"
    assert not [m for m in page.console_log if m.startswith("pageerror")], page.console_log


async def test_page_reports_refused_offer_and_recovers(server_url: str, page_factory: Any) -> None:
    page = page_factory
    await page.goto(server_url + "/")
    await wait_js(page, "window.rxstream && window.rxstream.filtersLoaded === true", 10)
    # A chain the server does not know (as if the filter list changed under the page): a clear error state.
    await page.evaluate("window.rxstream.chain = [{name: 'no_such_filter', params: {}}]")
    await page.click("#start")
    await wait_js(page, "window.rxstream.state === 'error'", 20)
    assert "no_such_filter" in (await page.evaluate("window.rxstream.error"))
    assert await page.locator("#status").get_attribute("data-state") == "error"
    assert "no_such_filter" in await page.locator("#log li.error").first.inner_text()
    # The camera was released and the page can start again with a good chain.
    assert await page.evaluate("document.getElementById('local').srcObject") is None
    await page.evaluate("window.rxstream.setFilters(['passthrough'])")
    await page.click("#start")
    await wait_js(page, "window.rxstream.state === 'live' && window.rxstream.framesReceived >= 10", 45)
    await page.click("#stop")
    assert not [m for m in page.console_log if m.startswith("pageerror")], page.console_log
