"""Per-stage latency of the server's frame path, per filter chain, on a shared clip.

    python -m benchmarks.stage_latency --clip liveportrait_d12 --size 640x480 \\
        --filters passthrough landmarks --out benchmarks/results/stage_latency.json

Per frame: decode (PyAV) and resize to the camera size (stand-ins for the WebRTC receiver, shared by
all chains), then for every chain what the server adds: YUV -> RGB, face tracking, each filter,
RGB -> YUV, and encoding with aiortc's own VP8 and H.264 encoders (its realtime/zerolatency
settings, packetisation included). Chains run interleaved on the same frames, in a rotating order,
so a machine that others are loading affects every chain alike and the ratios stay meaningful.

Also the tracker alone, same frames: max_faces=1; max_faces=2 with the default search schedule (while
fewer faces than max_faces are tracked, mediapipe's detector looks for more every 30 frames) and
searching on every frame; and max_faces=1 with mediapipe's landmarker graph on every frame (the tracker
before stream.landmark_model), against the 15 ms budget.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.stats import machine_info, summarize, write_json
from stream.config import TrackerConfig
from stream.frame_convert import from_rgb, to_rgb
from stream.pipeline import FramePipeline
from stream.tracking import FaceTracker

SHARED_VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
BASELINE = "passthrough"
BUDGET_MS = 15.0  # per-frame server budget the project aims for
RTP_TIME_BASE = Fraction(1, 90000)
SERVER_STAGES = ("to_rgb", "track", "from_rgb")  # plus every filter: what the server adds to a relay


def resolve_clip(clip: str) -> Path:
    p = Path(clip)
    if p.suffix and p.is_file():
        return p
    shared = (SHARED_VIDEO / f"{clip}.mp4").resolve()
    if shared.is_file():
        return shared
    raise SystemExit(f"stage_latency: clip {clip!r} is neither a file nor a clip in {SHARED_VIDEO.resolve()}")


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return w, h


def timed_frames(path: Path, size: tuple[int, int], loops: int) -> Iterator[tuple[av.VideoFrame, float, float, float]]:
    """(yuv frame at ``size``, timestamp s, decode ms, resize ms), looping the clip with increasing time."""
    offset = 0.0
    for _ in range(loops):
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frames = c.decode(stream)
            last = 0.0
            while True:
                t0 = time.perf_counter()
                frame = next(frames, None)
                t1 = time.perf_counter()
                if frame is None:
                    break
                small = frame.reformat(width=size[0], height=size[1], format="yuv420p")
                t2 = time.perf_counter()
                last = float(frame.time or 0.0)
                yield small, offset + last, (t1 - t0) * 1e3, (t2 - t1) * 1e3
            offset += last + 1.0 / float(stream.average_rate or 30)


@dataclass
class ChainRun:
    """One filter chain with its own pipeline and encoders, as one WebRTC session would have."""

    spec: str
    pipeline: FramePipeline
    encoders: dict[str, Any]
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    frames_with_faces: int = 0
    errors: int = 0

    def step(self, yuv: av.VideoFrame, timestamp_s: float, index: int, record: bool) -> None:
        t0 = time.perf_counter()
        rgb = to_rgb(yuv)
        t1 = time.perf_counter()
        out, result = self.pipeline.process(rgb, timestamp_s)
        t2 = time.perf_counter()
        # As the server does (stream/processed_track.py): untouched frames go out as decoded.
        back = yuv if out is rgb else from_rgb(out).reformat(format="yuv420p")
        back.pts, back.time_base = round(timestamp_s / RTP_TIME_BASE), RTP_TIME_BASE
        t3 = time.perf_counter()
        enc_ms = {}
        for name, enc in self.encoders.items():
            e0 = time.perf_counter()
            enc.encode(back)
            enc_ms[name] = (time.perf_counter() - e0) * 1e3
        if not record:
            return
        s = self.samples
        s["to_rgb"].append((t1 - t0) * 1e3)
        for stage, ms in result.timings_ms.items():
            s[stage if stage == "track" else f"filter:{stage}"].append(ms)
        s["from_rgb"].append((t3 - t2) * 1e3)
        for name, ms in enc_ms.items():
            s[name].append(ms)
        server = (t3 - t0) * 1e3
        s["server_processing"].append(server)
        for name, ms in enc_ms.items():
            s[f"server_total_{name.removeprefix('encode_')}"].append(server + ms)
        self.frames_with_faces += bool(result.faces)
        self.errors += len(result.errors)

    def report(self) -> dict[str, Any]:
        n = len(self.samples["server_processing"])
        return {
            "stages": {k: summarize(v) for k, v in self.samples.items() if not k.startswith("server_")},
            **{k: summarize(v) for k, v in self.samples.items() if k.startswith("server_")},
            "frames": n,
            "faces_found_pct": 100.0 * self.frames_with_faces / n if n else 0.0,
            "pipeline_errors": self.errors,
            "within_budget_pct": 100.0 * float(np.mean(np.asarray(self.samples["server_processing"]) <= BUDGET_MS))
            if n else 0.0,
        }


def make_encoders() -> dict[str, Any]:
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    return {"encode_vp8": Vp8Encoder(), "encode_h264": H264Encoder()}


def ratios(chains: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    base = chains[BASELINE]
    out = {}
    for name, rep in chains.items():
        r = {}
        for metric in (k for k in rep if k.startswith("server_")):
            for q in ("p50", "p95"):
                r[f"{metric}_{q}"] = rep[metric][q] / base[metric][q] if base[metric][q] > 0 else float("nan")
        out[name] = r
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    clip = resolve_clip(args.clip)
    chains = list(dict.fromkeys([BASELINE, *args.filters]))  # the baseline always runs, once
    tcfg = TrackerConfig(max_faces=args.max_faces)
    runs = [ChainRun(c, FramePipeline(c, tcfg), make_encoders()) for c in chains]
    variants = {  # label -> tracker config; same frames, interleaved
        "max_faces=1": TrackerConfig(max_faces=1),
        "max_faces=1, mediapipe graph every frame": TrackerConfig(max_faces=1, direct_landmarks=False),
        "max_faces=2, search every 30": TrackerConfig(max_faces=2, search_every_n_frames=30),
        "max_faces=2, every frame": TrackerConfig(max_faces=2, search_every_n_frames=0),
    }
    trackers = {k: FaceTracker(c) for k, c in variants.items()} if args.max_faces_compare else {}
    tracker_ms: dict[str, list[float]] = defaultdict(list)
    tracker_faces: dict[str, int] = defaultdict(int)
    shared: dict[str, list[float]] = defaultdict(list)
    index = 0
    try:
        for yuv, ts, dec_ms, rs_ms in timed_frames(clip, args.size, args.loops):
            if args.frames and index >= args.frames + args.warmup:
                break
            record = index >= args.warmup
            if record:
                shared["decode"].append(dec_ms)
                shared["resize"].append(rs_ms)
            k = index % len(runs)
            for r in runs[k:] + runs[:k]:  # rotate: no chain always runs first (cold caches) or last
                r.step(yuv, ts, index, record)
            if trackers:
                rgb = yuv.to_ndarray(format="rgb24")
                keys = list(trackers)
                for n in keys[index % len(keys):] + keys[:index % len(keys)]:
                    t0 = time.perf_counter()
                    faces = trackers[n].track(rgb, ts)
                    if record:
                        tracker_ms[n].append((time.perf_counter() - t0) * 1e3)
                        tracker_faces[n] += len(faces)
            index += 1
    finally:
        for r in runs:
            r.pipeline.close()
        for t in trackers.values():
            t.close()

    reports = {r.spec: r.report() for r in runs}
    result: dict[str, Any] = {
        "benchmark": "stage_latency",
        "machine": machine_info(),
        "config": {
            "clip": clip.name, "size": list(args.size), "frames_measured": max(0, index - args.warmup),
            "warmup_frames": args.warmup, "loops": args.loops, "chains": chains, "max_faces": args.max_faces,
            "budget_ms": BUDGET_MS,
            "encoders": "aiortc Vp8Encoder (libvpx realtime, cpu-used -6, CBR 500 kbps) and H264Encoder "
                        "(libx264 zerolatency, baseline, 1 Mbps)",
        },
        "definitions": {
            "server_processing": "to_rgb + track + filters + from_rgb: what processing adds to a WebRTC relay",
            "server_total_<codec>": "server_processing + encoding (incl. RTP packetisation) with that codec",
            "decode/resize": "stand-ins for the receiver side; same frames for every chain",
        },
        "shared_stages": {k: summarize(v) for k, v in shared.items()},
        "chains": reports,
        "ratio_vs_passthrough": ratios(reports),
    }
    if trackers:
        base = summarize(tracker_ms["max_faces=1"])
        variants_out: dict[str, Any] = {}
        for k in trackers:
            sk = summarize(tracker_ms[k])
            variants_out[k] = {**sk, "mean_faces": tracker_faces[k] / max(1, len(tracker_ms[k])),
                               "within_budget_pct": 100.0 * float(np.mean(np.asarray(tracker_ms[k]) <= BUDGET_MS)),
                               "ratio_p50_vs_max_faces_1": sk["p50"] / base["p50"] if base["p50"] else float("nan"),
                               "ratio_p95_vs_max_faces_1": sk["p95"] / base["p95"] if base["p95"] else float("nan")}
        result["landmarker_max_faces"] = {
            "note": "same frames, interleaved. Tracked faces are followed by the landmark network run directly "
                    "(stream.landmark_model); mediapipe searches (detector + landmarks) on the first frame, when "
                    "a face is lost, and while fewer than max_faces are tracked every 30 frames ('search every "
                    "30') or every frame ('every frame'). 'mediapipe graph every frame': the tracker before "
                    "that, mediapipe's VIDEO graph on every frame",
            "variants": variants_out,
        }
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked p50 bars per stage for each chain, a whisker to the p95 of the totals; tracker box plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = result["chains"]
    names = list(chains)
    seen = list(dict.fromkeys(s for c in chains.values() for s in c["stages"]))
    # Pipeline order, VP8 only: one session encodes with one codec (H.264 is the whisker marked "+").
    stages = ["to_rgb", "track", *[s for s in seen if s.startswith("filter:")], "from_rgb", "encode_vp8"]
    has_tracker = "landmarker_max_faces" in result
    fig, axes = plt.subplots(1, 2 if has_tracker else 1, figsize=(12 if has_tracker else 8, 5), squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for stage in stages:
        vals = np.array([chains[n]["stages"].get(stage, {"p50": 0.0})["p50"] for n in names])
        ax.bar(x, vals, 0.6, bottom=bottom, label=stage)
        bottom += vals
    for key, marker, dx in (("server_processing", "_", -0.2), ("server_total_vp8", "x", 0.0),
                            ("server_total_h264", "+", 0.2)):
        p50 = [chains[n][key]["p50"] for n in names]
        p95 = [chains[n][key]["p95"] for n in names]
        ax.errorbar(x + dx, p50, yerr=[np.zeros(len(names)), np.subtract(p95, p50)],
                    fmt=marker, color="black", capsize=4, label=f"{key} p50 → p95")
    ax.axhline(BUDGET_MS, color="red", linestyle="--", linewidth=1, label=f"{BUDGET_MS:.0f} ms budget")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per frame")
    cfg = result["config"]
    ax.set_title(f"{cfg['clip']} at {cfg['size'][0]}x{cfg['size'][1]}: p50 per stage")
    ax.legend(fontsize=7, loc="upper left")
    if has_tracker:
        ax2 = axes[0][1]
        lm = result["landmarker_max_faces"]["variants"]
        labels = list(lm)
        p50 = [lm[k]["p50"] for k in labels]
        p95 = [lm[k]["p95"] for k in labels]
        xs = list(range(len(labels)))
        ax2.bar(xs, p50, 0.5, color="tab:blue")
        ax2.errorbar(xs, p50, yerr=[[0] * len(xs), [b - a for a, b in zip(p50, p95, strict=True)]],
                     fmt="none", color="black", capsize=6)
        ax2.axhline(BUDGET_MS, color="red", linestyle="--", linewidth=1)
        ax2.set_xticks(xs, [k.replace(", ", "\n") for k in labels], fontsize=7)
        ax2.set_title("landmarker: p50 with p95 whisker")
        ax2.set_ylabel("ms per frame")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="liveportrait_d12", help="shared clip name or a video path")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="camera size WxH")
    p.add_argument("--filters", nargs="+", default=["landmarks"], help="filter chains (passthrough is always added)")
    p.add_argument("--frames", type=int, default=0, help="measure at most this many frames (0: the whole clip)")
    p.add_argument("--warmup", type=int, default=10, help="frames processed but not measured")
    p.add_argument("--loops", type=int, default=1, help="play the clip this many times")
    p.add_argument("--max-faces", type=int, default=2, help="max_faces of the chains' tracker (the server default)")
    p.add_argument("--no-max-faces-compare", dest="max_faces_compare", action="store_false")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/stage_latency.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    write_json(args.out, result)
    png = args.plot or args.out.with_suffix(".png")
    plot(result, png)
    print(f"wrote {args.out} and {png}")
    for name, rep in result["chains"].items():
        sp, vp8 = rep["server_processing"], rep["server_total_vp8"]
        print(f"{name:<24} server p50 {sp['p50']:6.2f} p95 {sp['p95']:6.2f} ms | +vp8 p50 {vp8['p50']:6.2f} "
              f"p95 {vp8['p95']:6.2f} ms | x{result['ratio_vs_passthrough'][name]['server_processing_p50']:.1f}")
    if "landmarker_max_faces" in result:
        for k, v in result["landmarker_max_faces"]["variants"].items():
            print(f"landmarker {k:<30} p50 {v['p50']:6.2f} p95 {v['p95']:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
