"""Contact sheet of every catalogue frame on a few liveportrait_d12 frames (different yaw), plus timings.

Writes benchmarks/results/glasses_sheet.png and benchmarks/results/glasses_timing.json (median and
p95 of placement, lens masks and rendering per face at the clip's size and at 640x480, with the ratio
to a baseline frame copy measured in the same run). Needs ../shared/data.

    .venv/bin/python -m benchmarks.glasses_sheet [--frames round,aviator] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from models.glasses.catalogue import load_catalogue
from models.glasses.placement import IrisScale, lens_masks, place_glasses
from models.glasses.render import RenderStyle, render_glasses
from stream.camera import mediapipe_camera
from stream.face import Face
from stream.tracking import FaceTracker

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / ".." / "shared" / "data" / "video" / "liveportrait_d12.mp4"
OUT = ROOT / "benchmarks" / "results"


def track_clip(path: Path) -> tuple[list[np.ndarray], list[Face | None]]:
    import av

    frames, faces = [], []
    with av.open(str(path)) as c, FaceTracker() as tracker:
        for fr in c.decode(video=0):
            rgb = fr.to_ndarray(format="rgb24")
            found = tracker.track(rgb, float(fr.time))
            frames.append(rgb)
            faces.append(found[0] if found else None)
    return frames, faces


def pick_by_yaw(faces: list[Face | None], targets=(-15.0, 0.0, 15.0)) -> list[int]:
    idx = [i for i, f in enumerate(faces) if f is not None]
    return [min(idx, key=lambda i: abs(faces[i].pose.yaw_deg - t)) for t in targets]


def reframe(face: Face, img: np.ndarray, size: tuple[int, int]) -> tuple[Face, np.ndarray]:
    """The frame scaled to ``size``'s height and centred (letterboxed); landmarks moved along."""
    h, w = img.shape[:2]
    if (w, h) == size:
        return face, img
    s = size[1] / h  # same vertical FOV: the focal length scales with the height
    new = cv2.resize(img, (round(w * s), size[1]), interpolation=cv2.INTER_AREA)
    out = np.zeros((size[1], size[0], 3), np.uint8)
    x0 = (size[0] - new.shape[1]) // 2
    out[:, x0:x0 + new.shape[1]] = new[:, : size[0]]
    lm = face.landmarks_px.astype(np.float64).copy()
    lm[:, 0] = (lm[:, 0] - w / 2.0) * s + size[0] / 2.0
    lm[:, 1] = (lm[:, 1] - h / 2.0) * s + size[1] / 2.0
    lm[:, 2] *= s
    return Face(face.face_id, lm.astype(np.float32), face.pose, size), out


def stats_ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "n": len(a)}


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="", help="comma-separated catalogue names (default: all)")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    if not CLIP.is_file():
        raise SystemExit(f"shared clip not found at {CLIP.resolve()}")
    cat = load_catalogue()
    names = [n for n in args.frames.split(",") if n] or list(cat)
    frames, faces = track_clip(CLIP)
    h, w = frames[0].shape[:2]
    cam = mediapipe_camera(w, h)
    est = IrisScale()
    for f in faces:
        if f is not None:
            est.update(f, cam)
    pd = est.pd_mm
    picks = pick_by_yaw(faces)
    style = RenderStyle(tint_rgba=(60, 80, 110, 90), gradient=0.6)

    rows = []
    for name in names:
        spec = cat[name]
        tiles = []
        for i in picks:
            f = faces[i]
            g = place_glasses(f, spec, cam, pd_mm=pd)
            img = render_glasses(frames[i], g, spec, style, f, cam)
            rims = np.vstack([ln.rim_outer_px for ln in g.lenses])
            (gx0, gy0), (gx1, gy1) = rims.min(axis=0), rims.max(axis=0)
            cx, cy, half = (gx0 + gx1) / 2.0, (gy0 + gy1) / 2.0, 0.75 * (gx1 - gx0)
            x0, x1 = int(max(0, cx - half)), int(min(w, cx + half))
            y0, y1 = int(max(0, cy - 0.6 * half)), int(min(h, cy + 0.6 * half))
            crop = img[y0:y1, x0:x1]
            tile = cv2.resize(crop, (320, int(320 * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_AREA)
            size = spec.size_label.replace("□", "/")  # Hershey fonts have no box glyph
            label = f"{name} {size}  yaw {f.pose.yaw_deg:+.0f}"
            cv2.putText(tile, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        hmin = min(t.shape[0] for t in tiles)
        rows.append(np.hstack([t[:hmin] for t in tiles]))
    wmax = max(r.shape[1] for r in rows)
    sheet = np.vstack([np.pad(r, ((0, 0), (0, wmax - r.shape[1]), (0, 0))) for r in rows])
    OUT.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT / "glasses_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))

    # Timings: one face, the most-yawed pick (temples visible), at the clip's size and re-framed into
    # 640x480 (the clip letterboxed: landmarks follow the image, the pose stays -- same focal length).
    results = {}
    f0, img0 = faces[picks[0]], frames[picks[0]]
    spec = cat["rectangle"]
    for label, size in (("512x512", (w, h)), ("640x480", (640, 480))):
        face, img = reframe(f0, img0, size)
        c = mediapipe_camera(*size)
        g = place_glasses(face, spec, c, pd_mm=pd)
        res = {
            "baseline_copy": stats_ms(timed(img.copy, args.repeat)),
            "place_glasses": stats_ms(timed(partial(place_glasses, face, spec, c, pd_mm=pd), args.repeat)),
            "lens_masks": stats_ms(timed(partial(lens_masks, g, size[0], size[1]), args.repeat)),
            "render_glasses": stats_ms(timed(partial(render_glasses, img, g, spec, style, face, c), args.repeat)),
            "render_glasses_no_tint": stats_ms(timed(
                partial(render_glasses, img, g, spec, RenderStyle(), face, c), args.repeat)),
        }
        base = res["baseline_copy"]["median_ms"]
        for k, v in res.items():
            if k != "baseline_copy":
                v["ratio_vs_copy"] = v["median_ms"] / max(base, 1e-9)
        results[label] = res
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "pd_mm": pd, "picks": picks, "yaws": [faces[i].pose.yaw_deg for i in picks]}
    (OUT / "glasses_timing.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
