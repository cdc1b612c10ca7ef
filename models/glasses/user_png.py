"""A user's own glasses from a front-view RGBA photo/drawing, rendered as a texture on the frame plane.

The lens openings are the transparent holes the frame encloses: connected components of
transparent pixels that do not touch the image border; the two largest, ordered left/right in the
image. The PNG's millimetre scale comes from a given total frame width or, by default, from the
distance between the hole centres taken as the frame PD (A + DBL) of the catalogue frame it stands
in for. A homography from the PNG's pixels to the image (through the 3-D frame plane) warps it into
the face's region of interest, alpha-blended.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from models.glasses.placement import GlassesPlacement
from stream.camera import Pinhole

ALPHA_OPAQUE = 128  # alpha at or above this is frame material


@dataclass(frozen=True)
class PngFrame:
    rgba: np.ndarray  # (H, W, 4) uint8, straight (non-premultiplied) alpha
    hole_centers_px: np.ndarray  # (2, 2): (image-left hole, image-right hole) centroids, PNG pixels
    hole_masks: tuple[np.ndarray, np.ndarray]  # uint8 0/255 masks of the two holes, PNG size
    mm_per_px: float
    origin_px: np.ndarray  # (2,) PNG pixel that maps to the frame origin (midpoint of the holes)


def find_lens_holes(alpha: np.ndarray,
                    threshold: int = ALPHA_OPAQUE) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(centres (2,2) image-left first, (mask_left, mask_right)) of the two largest enclosed holes."""
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"alpha must be a 2-D uint8 array, got {alpha.dtype} {alpha.shape}")
    clear = (alpha < threshold).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(clear, connectivity=4)
    h, w = alpha.shape
    holes = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
            continue  # touches the border: background, not a lens opening
        holes.append((int(area), i))
    if len(holes) < 2:
        raise ValueError(f"found {len(holes)} enclosed transparent region(s); a glasses PNG needs two lens openings")
    holes.sort(reverse=True)
    two = sorted((holes[0][1], holes[1][1]), key=lambda i: cents[i][0])
    if holes[1][0] < 0.2 * holes[0][0]:
        raise ValueError("the two largest enclosed holes differ in size by more than 5x; are the lenses transparent?")
    masks = tuple(np.where(labels == i, 255, 0).astype(np.uint8) for i in two)
    return np.array([cents[i] for i in two], dtype=np.float64), (masks[0], masks[1])


def load_png_frame(rgba: np.ndarray, *, frame_pd_mm: float | None = None,
                   total_width_mm: float | None = None) -> PngFrame:
    """Analyse an RGBA front view; scale from ``total_width_mm`` (opaque extent) or the holes' distance."""
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an RGBA uint8 image, got {rgba.dtype} {rgba.shape}")
    centres, masks = find_lens_holes(rgba[:, :, 3])
    if total_width_mm is not None:
        cols = np.flatnonzero((rgba[:, :, 3] >= ALPHA_OPAQUE).any(axis=0))
        mm_per_px = total_width_mm / float(cols[-1] - cols[0] + 1)
    else:
        pd = 68.0 if frame_pd_mm is None else frame_pd_mm  # a typical A + DBL when nothing is known
        mm_per_px = pd / float(np.linalg.norm(centres[1] - centres[0]))
    return PngFrame(rgba=rgba, hole_centers_px=centres, hole_masks=masks, mm_per_px=mm_per_px,
                    origin_px=centres.mean(axis=0))


def png_to_image_homography(png: PngFrame, placement: GlassesPlacement, camera: Pinhole) -> np.ndarray:
    """3x3 homography from PNG pixels to image pixels through the frame plane (z = 0 in frame axes).

    PNG x grows to image right, PNG y down; the frame's X is image right and Y up, so
    X = (u - u0) s, Y = -(v - v0) s. The holes' centres are taken as the boxing centres, which sit
    on the frame's datum line (Y = 0).
    """
    s = png.mm_per_px
    u0, v0 = png.origin_px
    png_to_frame = np.array([[s, 0.0, -s * u0], [0.0, -s, s * v0], [0.0, 0.0, 1.0]])  # (X, Y, 1)
    m = placement.frame_to_cam
    # A plane point (X, Y, 0) maps to K [r1 r2 t] (X, Y, 1).
    frame_to_img = camera.matrix @ np.column_stack([m[:3, 0], m[:3, 1], m[:3, 3]])
    hmat = frame_to_img @ png_to_frame
    return hmat / hmat[2, 2]


def render_png_frame(image_rgb: np.ndarray, png: PngFrame, placement: GlassesPlacement, camera: Pinhole,
                     opacity: float = 1.0) -> np.ndarray:
    """A copy of ``image_rgb`` with the PNG warped onto the frame plane and alpha-blended (ROI only)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got {image_rgb.dtype} {image_rgb.shape}")
    out = image_rgb.copy()
    h, w = image_rgb.shape[:2]
    hmat = png_to_image_homography(png, placement, camera)
    ph, pw = png.rgba.shape[:2]
    corners = cv2.perspectiveTransform(np.array([[[0, 0], [pw, 0], [pw, ph], [0, ph]]], np.float64), hmat)[0]
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int), (w, h))
    if x1 <= x0 or y1 <= y0:
        return out
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    warped = cv2.warpPerspective(png.rgba, shift @ hmat, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    a = warped[:, :, 3:4].astype(np.float32) * (opacity / 255.0)
    roi = out[y0:y1, x0:x1].astype(np.float32)
    blended = roi * (1.0 - a) + warped[:, :, :3].astype(np.float32) * a
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _hole_outline_px(mask: np.ndarray, n_points: int) -> np.ndarray:
    """(n, 2) evenly resampled outer contour of one hole mask (PNG pixels)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    seg = np.linalg.norm(np.diff(np.vstack([c, c[:1]]), axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n_points, endpoint=False)
    closed = np.vstack([c, c[:1]])
    return np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])


def png_placement(png: PngFrame, placement: GlassesPlacement, camera: Pinhole,
                  n_points: int = 96) -> GlassesPlacement:
    """``placement`` with each lens opening replaced by the PNG's hole, mapped onto the frame plane.

    The optical centres stay where the fit put them (in front of the pupils); only the outline that
    bounds the refraction, the masks and the tint changes. Image-left hole = the subject's right lens.
    """
    s = png.mm_per_px
    u0, v0 = png.origin_px
    m = placement.frame_to_cam
    lenses = []
    for lens, mask in zip(placement.lenses, png.hole_masks, strict=True):
        uv = _hole_outline_px(mask, n_points)
        frame_pts = np.column_stack([(uv[:, 0] - u0) * s, -(uv[:, 1] - v0) * s, np.zeros(len(uv))])
        cam_pts = frame_pts @ m[:3, :3].T + m[:3, 3]
        lenses.append(replace(lens, outline_cam_mm=cam_pts, outline_px=camera.project(cam_pts).astype(np.float32)))
    return replace(placement, lenses=(lenses[0], lenses[1]))


def read_png_frame(path: str, frame_pd_mm: float | None = None) -> PngFrame:
    """Load a front-view glasses PNG with alpha from disk (clear ValueError on any problem)."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"{path!r}: a glasses image must be a .png with an alpha channel")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read {path!r} as an image")
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"{path!r} has no alpha channel: the lens openings must be transparent")
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)  # 16-bit PNGs
    return load_png_frame(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA), frame_pd_mm=frame_pd_mm)
