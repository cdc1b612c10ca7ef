"""Contact sheet of the prescription optics on shared clips: before/after for several prescriptions
and head angles, and remove(tryon(x)).

    python -m benchmarks.contact_sheet   # -> benchmarks/results/optics_contact_sheet.png

Rows: liveportrait_d12 at its most frontal, most right- and left-turned frames, and two other clips.
Columns: the input, tryon at -8 D, -4 -2 x 90 (cylinder), +4 D, +6 D without the frame (refraction
alone), and remove applied to the -8 D and +6 D try-ons (refraction only, one PD for both passes; the
+6 D one shows the filled ring that a plus lens hides). Each cell is a crop around the eyes, labelled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import cv2
import numpy as np

from stream.filters import create
from stream.filters.base import FrameContext
from stream.tracking import FaceTracker

SHARED_VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
OUT = Path(__file__).resolve().parent / "results" / "optics_contact_sheet.png"
COLUMNS: list[tuple[str, str, dict]] = [
    ("input", "", {}),
    ("-8.00", "tryon", {"rx": "-8.00"}),
    ("-4.00 -2.00 x 90", "tryon", {"rx": "-4.00 -2.00 x 90", "frame": "rectangle"}),
    ("+4.00", "tryon", {"rx": "+4.00", "frame": "oval"}),
    ("+6.00 (no frame)", "tryon", {"rx": "+6.00", "draw_frame": False}),
    ("remove(-8.00)", "roundtrip", {"rx": "-8.00", "pd": 62}),
    ("remove(+6.00)", "roundtrip", {"rx": "+6.00", "pd": 62}),  # the ring a plus lens hides, filled
]
CELL = 300


def tracked(clip: str, n: int) -> tuple[list[np.ndarray], list[list]]:
    frames = []
    with av.open(str((SHARED_VIDEO / f"{clip}.mp4").resolve())) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) >= n:
                break
    with FaceTracker() as tr:
        faces = [tr.track(f, i / 25.0) for i, f in enumerate(frames)]
    return frames, faces


def eye_crop(img: np.ndarray, face) -> np.ndarray:
    lm = face.landmarks_px[:, :2]
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    cx, cy, half = (x0 + x1) / 2, y0 + 0.42 * (y1 - y0), 0.62 * (x1 - x0)
    x0, x1 = int(max(cx - half, 0)), int(min(cx + half, img.shape[1]))
    y0, y1 = int(max(cy - half * 0.6, 0)), int(min(cy + half * 0.6, img.shape[0]))
    crop = img[y0:y1, x0:x1]
    return cv2.resize(crop, (CELL, round(CELL * 0.6)), interpolation=cv2.INTER_AREA)


def label(cell: np.ndarray, text: str) -> np.ndarray:
    out = cell.copy()
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    out[: th + 8, : tw + 8] = (out[: th + 8, : tw + 8] * 0.35).astype(np.uint8)  # dark box behind the text
    cv2.putText(out, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    frames, faces = tracked("liveportrait_d12", 90)
    yaws = np.array([f[0].pose.yaw_deg if f else np.nan for f in faces])
    picks = [("d12", int(np.nanargmin(np.abs(yaws)))), ("d12", int(np.nanargmax(yaws))),
             ("d12", int(np.nanargmin(yaws)))]
    sources = {"d12": (frames, faces)}
    for clip in ("d0", "d3"):
        sources[clip] = tracked(f"liveportrait_{clip}", 8)
        picks.append((clip, 7))
    for clip, i in picks:
        img, fs = sources[clip][0][i], sources[clip][1][i]
        if not fs:
            continue
        h, w = img.shape[:2]
        ctx = FrameContext(i, i / 25.0, fs, w, h)
        cells = []
        for title, kind, params in COLUMNS:
            if kind == "tryon":
                out = create("tryon", params).apply(img, ctx)
            elif kind == "roundtrip":
                worn = create("tryon", {**params, "draw_frame": False}).apply(img, ctx)
                out = create("remove", {**params, "fit_frames": 0}).apply(worn, ctx)
            else:
                out = img
            text = title if kind else f"{clip} #{i} yaw {fs[0].pose.yaw_deg:+.0f}"
            cells.append(label(eye_crop(out, fs[0]), text))
        rows.append(np.hstack(cells))
    sheet = np.vstack(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"{sheet.shape[1]}x{sheet.shape[0]} -> {args.out}")


if __name__ == "__main__":
    main()
