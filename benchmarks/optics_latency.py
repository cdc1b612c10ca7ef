"""Latency of the prescription optics (tryon / remove) at 640x480 with one face, vs baselines.

    python -m benchmarks.optics_latency --clip liveportrait_d12 --frames 150

Frames of a shared clip, letterboxed to 640x480, run through one FramePipeline per chain
(tracking included), chains interleaved frame by frame so machine load hits all alike:
passthrough, landmarks and landmarks_mediapipe (baselines; the last tracks with mediapipe's graph
on every frame, as before stream.landmark_model), tryon with refraction only ("tryon_optics"), full tryon
(frame + tint drawn), remove with a known prescription; "tryon_optics_numpy" and "remove_numpy" run
the numpy forms instead of the numba kernels of models/optics/kernels.py. Reported: per-frame wall time of the whole
pipeline and of the filter stage alone (p50/p95), with ratios vs the baselines of the same run.
Writes benchmarks/results/optics_latency.json and a plot beside it (.png).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from benchmarks.stats import machine_info, summarize, write_json
from models.optics import kernels
from stream.config import TrackerConfig
from stream.pipeline import FilterSpec, FramePipeline

SHARED_VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
OUT = Path(__file__).resolve().parent / "results" / "optics_latency.json"
CHAINS: dict[str, list[FilterSpec]] = {
    "passthrough": [FilterSpec("passthrough")],
    "landmarks": [FilterSpec("landmarks")],
    "landmarks_mediapipe": [FilterSpec("landmarks")],
    "tryon_optics": [FilterSpec("tryon", {"rx": "-6.00 -1.00 x 20", "draw_frame": False})],
    "tryon_optics_numpy": [FilterSpec("tryon", {"rx": "-6.00 -1.00 x 20", "draw_frame": False})],
    "tryon_full": [FilterSpec("tryon", {"rx": "-6.00 -1.00 x 20", "tint": "#50607080", "gradient": 0.6})],
    "remove": [FilterSpec("remove", {"rx": "-6.00 -1.00 x 20", "fit_frames": 3})],  # fit during warm-up
    "remove_numpy": [FilterSpec("remove", {"rx": "-6.00 -1.00 x 20", "fit_frames": 3})],
}

TRACKERS: dict[str, TrackerConfig] = {"landmarks_mediapipe": TrackerConfig(direct_landmarks=False)}
NUMPY_OPTICS = {"tryon_optics_numpy", "remove_numpy"}  # baseline: the optics' numpy forms instead of the numba kernels


def letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to fit and pad with the edge pixels (a webcam-like 4:3 frame from a square clip)."""
    h, w = rgb.shape[:2]
    s = min(width / w, height / h)
    nw, nh = round(w * s), round(h * s)
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    return cv2.copyMakeBorder(small, y0, height - nh - y0, x0, width - nw - x0, cv2.BORDER_REPLICATE)


def load_frames(clip: str, n: int, width: int, height: int) -> tuple[list[np.ndarray], float]:
    path = (SHARED_VIDEO / f"{clip}.mp4").resolve()
    if not path.is_file():
        raise SystemExit(f"optics_latency: {path} not found (shared data is only on the dev machines)")
    frames = []
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate or 25)
        for f in c.decode(video=0):
            frames.append(letterbox(f.to_ndarray(format="rgb24"), width, height))
            if len(frames) >= n:
                break
    return frames, fps


def run(clip: str, n: int, warmup: int, width: int, height: int) -> dict[str, Any]:
    frames, fps = load_frames(clip, n + warmup, width, height)
    pipes = {name: FramePipeline(chain, TRACKERS.get(name)) for name, chain in CHAINS.items()}
    total: dict[str, list[float]] = {k: [] for k in pipes}
    stage: dict[str, list[float]] = {k: [] for k in pipes}
    track: dict[str, list[float]] = {k: [] for k in pipes}
    errors: dict[str, int] = dict.fromkeys(pipes, 0)
    faces_seen = 0
    names = list(pipes)
    compiled = kernels.AVAILABLE
    for i, frame in enumerate(frames):
        names = names[1:] + names[:1]  # rotate the order: no chain always runs first on a warm cache
        for name in names:
            kernels.AVAILABLE = compiled and name not in NUMPY_OPTICS
            t0 = time.perf_counter()
            _, res = pipes[name].process(frame, i / fps)
            dt = (time.perf_counter() - t0) * 1e3
            kernels.AVAILABLE = compiled
            if i < warmup:
                continue
            total[name].append(dt)
            filt = CHAINS[name][0].name
            stage[name].append(res.timings_ms.get(filt, float("nan")))
            track[name].append(res.timings_ms.get("track", 0.0))
            errors[name] += len(res.errors)
            faces_seen += name == "tryon_optics" and len(res.faces) == 1
    for p in pipes.values():
        p.close()
    out: dict[str, Any] = {"chains": {}}
    for name in pipes:
        out["chains"][name] = {"total_ms": summarize(total[name]), "filter_ms": summarize(stage[name]),
                               "track_ms": summarize(track[name]), "errors": errors[name],
                               "params": CHAINS[name][0].params}
    p50 = {k: out["chains"][k]["total_ms"]["p50"] for k in pipes}
    p95 = {k: out["chains"][k]["total_ms"]["p95"] for k in pipes}
    out["ratios_total_p50_vs_landmarks"] = {k: p50[k] / p50["landmarks"] for k in pipes}
    out["ratios_total_p95_vs_landmarks"] = {k: p95[k] / p95["landmarks"] for k in pipes}
    out["ratios_total_p50_vs_landmarks_mediapipe"] = {k: p50[k] / p50["landmarks_mediapipe"] for k in pipes}
    out["ratios_total_p95_vs_landmarks_mediapipe"] = {k: p95[k] / p95["landmarks_mediapipe"] for k in pipes}
    out["ratios_total_p50_vs_passthrough"] = {k: p50[k] / p50["passthrough"] for k in pipes}
    out["frames_with_one_face"] = faces_seen
    out["optics_kernels"] = {"numba": compiled}
    targets: dict[str, bool] = {}
    for k in ("tryon_optics", "remove"):  # the optics alone: these chains' filter stage is nothing else
        opt, ref = out["chains"][k]["filter_ms"], out["chains"][f"{k}_numpy"]["filter_ms"]
        out["optics_kernels"][k] = {"filter_p50_ratio_vs_numpy": opt["p50"] / ref["p50"],
                                    "filter_p95_ratio_vs_numpy": opt["p95"] / ref["p95"]}
        targets |= {f"{k}_filter_p50_ms<=5": opt["p50"] <= 5.0, f"{k}_filter_p95_ms<=5": opt["p95"] <= 5.0}
    out["targets"] = targets | {f"{k}_total_p95_ms<=20": p95[k] <= 20.0 for k in ("tryon_optics", "tryon_full",
                                                                                     "remove")}
    return out


def plot(res: dict[str, Any], path: Path) -> Path:
    """Per chain: the filter stage and the whole pipeline, p50 bars with p95 whiskers, and the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in res["chains"] if k != "passthrough"]
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 0.42 * len(names) + 1.4), sharey=True)
    y = np.arange(len(names))
    for ax, key, target, title in ((axes[0], "filter_ms", 5.0, "filter stage (the optics alone for tryon_optics, "
                                    "remove)"), (axes[1], "total_ms", 20.0, "whole pipeline, tracking included")):
        p50 = np.array([res["chains"][k][key]["p50"] for k in names])
        p95 = np.array([res["chains"][k][key]["p95"] for k in names])
        colours = ["#bbbbbb" if k.endswith("_numpy") or k.startswith("landmarks") else "#4c72b0" for k in names]
        ax.barh(y, p50, color=colours, xerr=np.vstack([np.zeros_like(p95), p95 - p50]), capsize=3)
        ax.axvline(target, color="#d62728", ls=":", lw=1)
        ax.set_title(f"{title}\n(bar p50, whisker p95; dotted: {target:g} ms target)", fontsize=9)
        ax.set_xlabel("ms per frame")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"optics latency, {res['clip']} {res['size'][0]}x{res['size'][1]}, {res['frames']} frames "
                 "(grey: baselines and numpy forms of the same run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="liveportrait_d12")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    w, h = (int(v) for v in args.size.lower().split("x"))
    res = run(args.clip, args.frames, args.warmup, w, h)
    res = {"benchmark": "optics_latency", "clip": args.clip, "size": [w, h], "frames": args.frames,
           "machine": machine_info(), **res}
    write_json(args.out, res)
    plot(res, args.out.with_suffix(".png"))
    for name, r in res["chains"].items():
        t, f = r["total_ms"], r["filter_ms"]
        print(f"{name:19s} total p50 {t['p50']:6.2f} p95 {t['p95']:6.2f} | filter p50 {f['p50']:6.2f} "
              f"p95 {f['p95']:6.2f} ms | errors {r['errors']}")
    print("targets:", res["targets"], "->", args.out)


if __name__ == "__main__":
    main()
