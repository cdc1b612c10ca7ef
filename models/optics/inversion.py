"""Inverting the lens warp for ``remove``: tryon shows input(s(p)) at p; remove needs s⁻¹.

For every lens pixel q we solve s(p) = q by fixed-point iteration p ← q − D(p), D = s − id sampled
bilinearly (cv2.remap on the displacement field). It contracts with ratio |1 − 1/M| (≈ 0.1–0.25 for
−8…+6 D at spectacle distances), so a few vectorised iterations reach sub-0.01 px.

Where s is not invertible inside the lens:
- minus lenses pull the ring just outside the rim into the lens (seen twice: through the lens and
  directly); every q in the lens still has a preimage inside the lens, so nothing is missing;
- plus lenses hide a ring inside the rim (the content at radii R/M…R is magnified beyond the rim):
  those q have no preimage inside the lens. They are flagged (preimage outside the rim, or the
  iteration did not converge) and filled with cv2.inpaint (Telea) from the surrounding restored pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.optics.refraction import LensWarp


@dataclass(frozen=True)
class InverseWarp:
    warp: LensWarp  # maps s⁻¹ (absolute pixel coordinates) over the same ROI
    invalid: np.ndarray  # (h, w) bool: lens pixels with no preimage inside the lens (to fill)


def invert_warp(warp: LensWarp, iterations: int = 5, tol_px: float = 0.3, strength: float = 1.0) -> InverseWarp:
    """s⁻¹ over ``warp``'s ROI (identity outside the lens); ``warp`` should be traced with a margin."""
    h, w = warp.mask.shape
    dx, dy = warp.displacement()
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    px, py = gx.copy(), gy.copy()  # ROI-relative preimage estimates
    for _ in range(iterations):
        ddx = cv2.remap(dx, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ddy = cv2.remap(dy, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        px, py = gx - ddx, gy - ddy
    ddx = cv2.remap(dx, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ddy = cv2.remap(dy, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    residual = np.hypot(px + ddx - gx, py + ddy - gy)
    inside = cv2.remap(warp.mask.astype(np.float32), px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0) >= 0.5
    invalid = warp.mask & ~(inside & (residual <= tol_px))
    ok = warp.mask & ~invalid
    map_x = np.where(ok, gx + strength * (px - gx), gx) + warp.x0
    map_y = np.where(ok, gy + strength * (py - gy), gy) + warp.y0
    return InverseWarp(LensWarp(warp.x0, warp.y0, map_x.astype(np.float32), map_y.astype(np.float32), warp.mask),
                       invalid)


def apply_inverse(image: np.ndarray, inverses: list[InverseWarp], fill_radius_px: float = 3.0,
                  interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """One remap per lens ROI from the observed frame, then inpaint the pixels with no preimage."""
    out = image.copy()
    for inv in inverses:
        w = inv.warp
        h, ww = w.mask.shape
        roi = cv2.remap(image, w.map_x, w.map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
        if inv.invalid.any():
            roi = cv2.inpaint(roi, inv.invalid.astype(np.uint8), fill_radius_px, cv2.INPAINT_TELEA)
        dst = out[w.y0:w.y0 + h, w.x0:w.x0 + ww]
        dst[w.mask] = roi[w.mask]
    return out
