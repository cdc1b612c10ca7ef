"""Loopback WebRTC glass-to-glass latency, per filter chain, against the real server.

    python -m benchmarks.webrtc_latency --filters passthrough landmarks --seconds 20 \\
        --out benchmarks/results/webrtc_latency.json

The server (``stream.server.create_app``) runs in-process on 127.0.0.1. An aiortc client sends a
640x480, 30 fps track looped from a shared talking-head clip, each frame stamped with its number
(:mod:`benchmarks.framecode`) and its send time recorded when the sender takes it; the client
reads the number back from every processed frame it decodes. Glass-to-glass = receive time -
send time for the same number: encode, RTP over loopback, server decode + filter + re-encode,
and client decode, as a real viewer would see it (minus camera exposure and display scan-out).

Both aiortc receivers (server and client) release video frames on the RTP marker bit
(:mod:`stream.rtc_latency`); ``--aiortc-default-receive`` measures aiortc's own jitter buffer instead,
which holds every frame until the next one starts. The JSON records which (``low_latency_receive``).

Each filter gets its own session, one after the other, in the same run, so the landmarks /
passthrough ratios compare like with like. Client and server share one process (and the GIL):
absolute numbers include that contention; compare ratios, and rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import framecode
from benchmarks.stats import machine_info, summarize, write_json

log = logging.getLogger("webrtc_latency")

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = PROJECT / ".." / "shared" / "data" / "video" / "liveportrait_d12.mp4"


@dataclass(frozen=True)
class BenchConfig:
    filters: tuple[str, ...] = ("passthrough", "landmarks")
    seconds: float = 20.0
    warmup_s: float = 3.0  # after the first processed frame: encoder ramp-up, bandwidth estimation
    grace_s: float = 1.0  # wait this long after the window for frames still in flight
    width: int = 640
    height: int = 480
    fps: int = 30
    clip: Path = DEFAULT_CLIP
    connect_timeout_s: float = 30.0
    # Video frames released on the RTP marker bit at both aiortc receivers (server and this client), see
    # stream.rtc_latency; False measures aiortc's own jitter buffer (one frame interval more per receiver).
    low_latency_receive: bool = True


@dataclass
class Trace:
    """Send and receive times (time.perf_counter) by frame number, for one session."""

    sent: dict[int, float] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    unreadable: int = 0
    out_of_order: int = 0
    last_number: int = -1
    first_received: asyncio.Event = field(default_factory=asyncio.Event)

    def on_received(self, number: int | None, t: float) -> None:
        if number is None:
            self.unreadable += 1
            return
        if number in self.received:
            self.duplicates += 1  # the server re-sent a frame (e.g. its output mailbox was read twice)
            return
        if number < self.last_number:
            self.out_of_order += 1
        self.last_number = max(self.last_number, number)
        self.received[number] = t
        self.first_received.set()


# -- the clip ----------------------------------------------------------------------------------------
def load_clip_yuv(path: Path, width: int, height: int, max_frames: int = 300) -> list[np.ndarray]:
    """Decode ``path``, centre-crop to the target aspect, resize, and return yuv420p arrays ((H*3/2) x W).

    The stamp area is pre-painted grey so its chroma is neutral: per frame only luma is rewritten.
    """
    import av
    import cv2

    if not path.is_file():
        raise SystemExit(f"webrtc_latency: clip {path} not found (shared data lives in ../shared/data); "
                         "pass --clip PATH")
    out = []
    layout = framecode.StampLayout()
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= max_frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            ch, cw = (h, round(h * width / height)) if w * height >= h * width else (round(w * height / width), w)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            rgb = cv2.resize(rgb[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)
            rgb[layout.y:layout.y + layout.height, layout.x:layout.x + layout.width] = 128
            out.append(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray())
    if not out:
        raise SystemExit(f"webrtc_latency: no frames decoded from {path}")
    return out


def read_stamp(frame: Any) -> int | None:
    """Frame number from a decoded av.VideoFrame, reading luma in place where the layout allows."""
    layout = framecode.StampLayout()
    if frame.width < layout.width or frame.height < layout.height:
        return None
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:layout.height, :layout.width]
        return framecode.decode(y, layout)
    return framecode.decode(frame.to_ndarray(format="gray"), layout)


def make_source_track(frames: list[np.ndarray], fps: int, trace: Trace) -> Any:
    import av
    from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamTrack

    class StampedTrack(MediaStreamTrack):
        """Paced at ``fps``; each frame carries its number; the send time is taken as the sender pulls it."""

        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._n = 0
            self._t0: float | None = None

        async def recv(self) -> av.VideoFrame:
            n = self._n
            self._n += 1
            if self._t0 is None:
                self._t0 = time.perf_counter()
            delay = self._t0 + n / fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            arr = frames[n % len(frames)].copy()
            h = arr.shape[0] * 2 // 3
            framecode.stamp(arr[:h], n)
            vf = av.VideoFrame.from_ndarray(arr, format="yuv420p")
            vf.pts = round(n * VIDEO_CLOCK_RATE / fps)
            vf.time_base = Fraction(1, VIDEO_CLOCK_RATE)
            trace.sent[n] = time.perf_counter()
            return vf

    return StampedTrack()


def negotiated_codec(sdp: str) -> str:
    """The first (preferred) codec of the answer's video section."""
    m = re.search(r"^m=video \d+ \S+ (\d+)", sdp, re.M)
    if not m:
        return "?"
    pt = m.group(1)
    r = re.search(rf"^a=rtpmap:{pt} ([^/\s]+)", sdp, re.M)
    return r.group(1) if r else "?"


# -- one session -------------------------------------------------------------------------------------
async def run_session(base_url: str, chain: str, frames: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    trace = Trace()
    server_stats: list[dict[str, Any]] = []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(make_source_track(frames, cfg.fps, trace), direction="sendrecv")
    channel = pc.createDataChannel("control")

    @channel.on("message")
    def _on_message(raw: Any) -> None:
        with contextlib.suppress(ValueError, TypeError):
            msg = json.loads(raw)
            if isinstance(msg, dict) and msg.get("type") == "stats":
                server_stats.append(msg)

    reader: asyncio.Task[None] | None = None

    async def read(track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                t = time.perf_counter()
                trace.on_received(read_stamp(frame), t)
        except MediaStreamError:
            pass

    @pc.on("track")
    def _on_track(track: Any) -> None:
        nonlocal reader
        if track.kind == "video" and reader is None:
            reader = asyncio.ensure_future(read(track))

    session_id = None
    async with aiohttp.ClientSession() as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers all candidates here
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "filters": chain}
            async with http.post(f"{base_url}/offer", json=body) as r:
                reply = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"POST /offer ({chain}): HTTP {r.status}: {reply.get('error')}")
            session_id = reply["session_id"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type=reply["type"]))
            try:
                await asyncio.wait_for(trace.first_received.wait(), cfg.connect_timeout_s)
            except TimeoutError:
                raise RuntimeError(f"{chain}: no stamped frame came back within {cfg.connect_timeout_s} s "
                                   f"(sent {len(trace.sent)}, unreadable {trace.unreadable})") from None
            t_first = time.perf_counter()
            start, end = t_first + cfg.warmup_s, t_first + cfg.warmup_s + cfg.seconds
            await asyncio.sleep(end - time.perf_counter() + cfg.grace_s)
        finally:
            if session_id is not None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.delete(f"{base_url}/session/{session_id}"):
                        pass
            await pc.close()
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    window = [n for n, t in trace.sent.items() if start <= t < end]
    lat = [(trace.received[n] - trace.sent[n]) * 1e3 for n in window if n in trace.received]
    lost = len(window) - len(lat)
    last = server_stats[-1] if server_stats else {}
    return {
        "chain": chain,
        "codec": negotiated_codec(reply["sdp"]),
        "latency_ms": summarize(lat),
        "sent": len(window),
        "received": len(lat),
        "lost": lost,
        "lost_fraction": lost / len(window) if window else float("nan"),
        "received_fps": len(lat) / cfg.seconds,
        "unreadable_frames": trace.unreadable,
        "duplicates": trace.duplicates,
        "out_of_order": trace.out_of_order,
        "server_stats_last": {k: last.get(k) for k in ("processing_ms", "stages_ms", "e2e_ms", "dropped",
                                                        "fps_in", "fps_out", "resolution")},
        "_samples_ms": lat,
    }


# -- the run -----------------------------------------------------------------------------------------
async def run(cfg: BenchConfig) -> dict[str, Any]:
    from aiohttp import web

    from stream.config import ServerConfig
    from stream.rtc_latency import disable_low_latency_receive, enable_low_latency_receive
    from stream.server import create_app

    frames = await asyncio.get_running_loop().run_in_executor(
        None, load_clip_yuv, cfg.clip, cfg.width, cfg.height)
    runner = web.AppRunner(create_app(ServerConfig(host="127.0.0.1", port=0)))
    # After create_app (which enables it): one process-wide switch for the server's and the client's receivers.
    (enable_low_latency_receive if cfg.low_latency_receive else disable_low_latency_receive)()
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    results = {}
    try:
        for chain in cfg.filters:
            log.info("%s: %.0f s warm-up + %.0f s measured", chain, cfg.warmup_s, cfg.seconds)
            results[chain] = await run_session(base_url, chain, frames, cfg)
            s = results[chain]["latency_ms"]
            log.info("%s: n=%d p50=%.1f ms p95=%.1f ms lost=%d", chain, s["count"], s["p50"], s["p95"],
                     results[chain]["lost"])
    finally:
        await runner.cleanup()
    return results


def compare(results: dict[str, Any], baseline: str) -> dict[str, Any]:
    """Each chain vs the baseline chain, same run: p50/p95 ratios and differences in ms."""
    if baseline not in results:
        return {}
    b = results[baseline]["latency_ms"]
    out = {}
    for name, r in results.items():
        if name == baseline:
            continue
        s = r["latency_ms"]
        out[f"{name}/{baseline}"] = {
            "p50_ratio": s["p50"] / b["p50"] if b["p50"] else float("nan"),
            "p95_ratio": s["p95"] / b["p95"] if b["p95"] else float("nan"),
            "p50_diff_ms": s["p50"] - b["p50"],
            "p95_diff_ms": s["p95"] - b["p95"],
        }
    return out


def plot(results: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_box) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = list(results)
    data = [np.sort(np.asarray(results[n]["_samples_ms"])) for n in names]
    for name, d in zip(names, data, strict=True):
        if d.size:
            s = results[name]["latency_ms"]
            ax_cdf.plot(d, np.arange(1, d.size + 1) / d.size, lw=1.8,
                        label=f"{name}: p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms (n={d.size})")
    ax_cdf.axhline(0.5, color="0.75", lw=0.8, ls="--")
    ax_cdf.axhline(0.95, color="0.75", lw=0.8, ls="--")
    ax_cdf.set_xlabel("glass-to-glass latency (ms)")
    ax_cdf.set_ylabel("fraction of frames")
    ax_cdf.set_title("CDF")
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")
    ax_box.boxplot([d if d.size else [np.nan] for d in data], tick_labels=names, whis=(5, 95), showfliers=False)
    ax_box.set_ylabel("ms (whiskers p5-p95)")
    ax_box.set_title("per filter")
    ax_box.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.webrtc_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BenchConfig()
    p.add_argument("--filters", nargs="+", default=list(d.filters),
                   help="filter chains to measure, one session each (e.g. passthrough landmarks 'a+b'); "
                        "the first is the baseline of the ratios")
    p.add_argument("--seconds", type=float, default=d.seconds, help="measured seconds per chain")
    p.add_argument("--warmup", type=float, default=d.warmup_s, help="seconds dropped after the first frame")
    p.add_argument("--clip", type=Path, default=d.clip, help="source video (looped, cropped, resized)")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--fps", type=int, default=d.fps)
    p.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "webrtc_latency.json")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    p.add_argument("--aiortc-default-receive", action="store_true",
                   help="use aiortc's own jitter buffer (a frame is released when the next one starts) instead "
                        "of marker-bit release, to compare")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'loaded machine')")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.seconds <= 0 or args.warmup < 0 or args.fps <= 0:
        raise SystemExit("webrtc_latency: --seconds and --fps must be positive, --warmup >= 0")
    cfg = BenchConfig(filters=tuple(args.filters), seconds=args.seconds, warmup_s=args.warmup,
                      width=args.width, height=args.height, fps=args.fps, clip=args.clip,
                      low_latency_receive=not args.aiortc_default_receive)
    results = asyncio.run(run(cfg))
    plot_path = args.plot or args.out.with_suffix(".png")
    info = machine_info()
    receive = "marker-bit receive" if cfg.low_latency_receive else "aiortc default receive"
    plot(results, plot_path, f"loopback WebRTC glass-to-glass, {cfg.width}x{cfg.height}@{cfg.fps}, {receive}, "
                             f"{info['cpu_count']} CPUs, load {info.get('load_avg_1_5_15', '?')}")
    for r in results.values():
        r.pop("_samples_ms")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    doc = {
        "benchmark": "webrtc_latency",
        "what": "glass-to-glass ms per frame: client send (stamped) -> server filter chain -> client decode",
        "note": args.note,
        "low_latency_receive": cfg.low_latency_receive,
        "machine": info,
        "config": config,
        "results": results,
        "baseline": cfg.filters[0],
        "comparison": compare(results, cfg.filters[0]),
        "plot": str(plot_path),
    }
    write_json(args.out, doc)
    print(json.dumps({"low_latency_receive": cfg.low_latency_receive,
                      "results": {k: {**v["latency_ms"], "lost": v["lost"]} for k, v in results.items()},
                      "comparison": doc["comparison"]}, indent=2))
    print(f"wrote {args.out} and {plot_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
