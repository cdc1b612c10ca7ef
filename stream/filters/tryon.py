"""Virtual try-on with real prescription optics: what the face looks like through the lenses.

Per frame and face: glasses placement (models.glasses) -> face depth from the mesh -> thin-lens ray
trace per lens ROI -> one cv2.remap per lens -> tint and frame drawn on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.optics.filter_params import build_rx, frame_names, load_frame, parse_rgba
from models.optics.prescription import LENS_INDICES
from models.optics.refraction import apply_warps, outline_roi_mask
from models.optics.scene import FaceOptics, OpticsOptions, face_optics, lens_powers
from stream.filters.base import Filter, FilterError, FrameContext, param

FRAMES = frame_names()


@dataclass
class TryonParams:
    rx: str = param("-4.00", help="prescription for both eyes, as written: '-4.25 -1.00 x 180', '+2 DS', "
                    "'OD -2 -0.5 x 10 OS -1.75', prism '2Δ BI'")
    od: str = param("", help="right eye only (overrides rx), e.g. '-3.50 -0.75 x 170'")
    os: str = param("", help="left eye only (overrides rx)")
    frame: str = param("round", help="frame from the catalogue", choices=FRAMES or None)
    color: str = param("", help="frame colour #RRGGBB (empty: the catalogue's)")
    tint: str = param("#00000000", help="lens tint #RRGGBBAA (alpha = strength at the top)")
    opacity: float = param(1.0, help="multiplies the tint alpha", min=0.0, max=1.0)
    gradient: float = param(0.0, help="tint fades towards the bottom of the lens (0 = uniform)", min=0.0, max=1.0)
    strength: float = param(1.0, help="scales the refraction (0 = none, 1 = physical)", min=0.0, max=1.0)
    lens: str = param("both", help="which lenses refract", choices=("both", "right", "left"))
    refraction: bool = param(True, help="bend the view through the lenses")
    draw_frame: bool = param(True, help="draw the frame and tint on top")
    pd: float = param(0.0, help="distance PD in mm (0 = measure from the irises)", min=0.0, max=80.0)
    vertex_mm: float = param(12.0, help="lens back vertex to cornea", min=5.0, max=25.0)
    pantoscopic_deg: float = param(8.0, help="lens tilt, bottoms towards the cheeks", min=0.0, max=20.0)
    index: float = param(1.5, help="lens material refractive index", choices=LENS_INDICES)

    def __post_init__(self) -> None:
        if 0.0 < self.pd < 40.0:
            raise ValueError(f"pd {self.pd:g} mm: use 40..80 mm, or 0 to measure")


class Tryon(Filter):
    name = "tryon"
    description = "Glasses try-on with the prescription's real refraction (minus shrinks, plus magnifies)."
    Params = TryonParams
    needs_faces = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._derive(self.params)

    def configure(self, params: dict[str, Any]) -> None:
        old = self.params
        super().configure(params)
        try:
            self._derive(self.params)
        except FilterError:
            self.params = old  # all-or-nothing
            raise

    def _derive(self, p: TryonParams) -> None:
        """Parse what does not change per frame once: prescription, powers, frame, colours."""
        rx = build_rx(p.rx, p.od, p.os, p.pd, p.vertex_mm, p.index)
        frame = load_frame(p.frame)
        color = parse_rgba(p.color, "color")[:3] if p.color.strip() else tuple(frame.color_rgb)
        tint = parse_rgba(p.tint, "tint")
        self._rx, self._frame, self._color, self._tint = rx, frame, color, tint
        self._powers = lens_powers(rx)
        self._opts = OpticsOptions(strength=p.strength if p.refraction else 0.0, lenses=p.lens,
                                   pantoscopic_deg=p.pantoscopic_deg)

    def optics(self, ctx: FrameContext) -> list[FaceOptics]:
        out = []
        for face in ctx.faces:
            try:
                out.append(face_optics(face, ctx.camera, self._rx, self._frame, self._opts, self._powers))
            except ValueError as e:  # placement rejects implausible landmarks: skip that face this frame
                raise FilterError(f"face {face.face_id}: {e}") from None
        return out

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        if not ctx.faces:
            return image
        fos = self.optics(ctx)
        out = apply_warps(image, [w for fo in fos for w in fo.warps])
        if self.params.draw_frame:
            for face, fo in zip(ctx.faces, fos, strict=True):
                out = self._draw(out, face, fo, ctx)
        return out

    def _draw(self, image: np.ndarray, face: Any, fo: FaceOptics, ctx: FrameContext) -> np.ndarray:
        """D's renderer (rims, bridge, temples behind the head, tint) when the placement came from it."""
        p = self.params
        if fo.placement is not None:
            from models.glasses.render import RenderStyle, render_glasses

            r, g, b, a = self._tint
            style = RenderStyle(color_rgb=self._color, tint_rgba=(r, g, b, round(a * p.opacity)), gradient=p.gradient)
            return render_glasses(image, fo.placement, self._frame, style, face, ctx.camera)
        out = image.copy()
        draw_glasses(out, fo, self._color, self._tint, p.opacity, p.gradient)
        return out


def tint_lens(image: np.ndarray, outline_px: np.ndarray, rgba: tuple[int, int, int, int], opacity: float,
              gradient: float) -> None:
    """Alpha-blend the tint over the lens, fading towards the bottom by ``gradient``."""
    alpha = rgba[3] / 255.0 * opacity
    if alpha <= 0.0:
        return
    h, w = image.shape[:2]
    roi = outline_roi_mask(outline_px, w, h)
    if roi is None:
        return
    x0, y0, mask, _ = roi
    rows = np.linspace(0.0, 1.0, mask.shape[0], dtype=np.float32)[:, None]
    a = (alpha * (1.0 - gradient * rows)) * mask
    dst = image[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    blend = dst * (1.0 - a[..., None]) + np.array(rgba[:3], np.float32) * a[..., None]
    dst[...] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def draw_glasses(image: np.ndarray, fo: FaceOptics, color: tuple[int, ...], tint: tuple[int, int, int, int],
                 opacity: float, gradient: float) -> None:
    """Fallback drawing without D's renderer: tint, rims and the bridge, anti-aliased."""
    shift = 4
    k = float(1 << shift)
    rims = []
    for lens in fo.lenses:
        tint_lens(image, lens.outline_px, tint, opacity, gradient)
        inner = np.round(np.asarray(lens.outline_px) * k).astype(np.int32)
        outer = getattr(lens, "rim_outer_px", None)
        if outer is None:  # no rim geometry: a 2 px line
            cv2.polylines(image, [inner], True, color, 2, cv2.LINE_AA, shift)
            rims.append(np.asarray(lens.outline_px))
            continue
        ring = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(ring, [np.round(np.asarray(outer) * k).astype(np.int32)], 255, cv2.LINE_AA, shift)
        cv2.fillPoly(ring, [inner], 0, cv2.LINE_AA, shift)
        a = ring.astype(np.float32)[..., None] / 255.0
        x0, y0, bw, bh = cv2.boundingRect(np.asarray(outer, np.float32))
        sl = (slice(max(y0 - 1, 0), y0 + bh + 1), slice(max(x0 - 1, 0), x0 + bw + 1))
        image[sl] = np.clip(image[sl] * (1 - a[sl]) + np.array(color, np.float32) * a[sl] + 0.5, 0, 255).astype(
            np.uint8)
        rims.append(np.asarray(outer))
    if len(rims) == 2:  # bridge between the nasal edges, at the upper third of the rims
        r, left = rims
        pr = r[np.argmax(r[:, 0] - 0.3 * np.abs(r[:, 1] - r[:, 1].min()))]
        pl = left[np.argmin(left[:, 0] + 0.3 * np.abs(left[:, 1] - left[:, 1].min()))]
        thick = max(2, math.ceil(0.012 * abs(pl[0] - pr[0]) + 1))
        cv2.line(image, tuple(np.round(pr * k).astype(int)), tuple(np.round(pl * k).astype(int)), color, thick,
                 cv2.LINE_AA, shift)
