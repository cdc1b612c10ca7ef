"""Inverting the lens warp for ``remove``: tryon shows input(s(p)) at p; remove needs s⁻¹.

For every lens pixel q we solve s(p) = q by fixed-point iteration p ← q − D(p), D = s − id sampled
bilinearly (as cv2.remap samples the displacement field). It contracts with ratio |1 − 1/M| (≈ 0.1–0.25
for −8…+6 D at spectacle distances), so a few iterations reach sub-0.01 px.

Where s is not invertible inside the lens:
- minus lenses pull the ring just outside the rim into the lens (seen twice: through the lens and
  directly); a q in the lens still has a preimage inside the lens, except where the face's outline
  crosses the lens: there s jumps (the rays past the outline land on the background, far behind), and
  the strip of background next to the outline is seen nowhere through the lens;
- plus lenses hide a ring inside the rim (the content at radii R/M…R is magnified beyond the rim):
  those q have no preimage inside the lens.
Such q are flagged (preimage outside the rim, or the iteration did not converge) and filled from the
surrounding restored pixels (models.optics.hole_fill).

The compiled kernel (models.optics.kernels) iterates the lens pixels only and samples as cv2.remap
does; the numpy form (whole ROI, cv2.remap) is its reference and fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from models.optics import kernels
from models.optics.hole_fill import fill_holes
from models.optics.refraction import LensWarp, paste_in_mask


@dataclass(frozen=True)
class InverseWarp:
    warp: LensWarp  # maps s⁻¹ (absolute pixel coordinates) over the same ROI
    invalid: np.ndarray  # (h, w) bool: lens pixels with no preimage inside the lens (to fill)


@lru_cache(maxsize=32)
def _roi_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) float32 ROI-relative pixel coordinates (read-only; ROI sizes repeat between frames)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _sample(img: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # Single-channel remaps on purpose: OpenCV's multi-channel path quantises the bilinear weights
    # to 1/32 px, which would change the result.
    return cv2.remap(img, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def invert_warp(warp: LensWarp, iterations: int = 5, tol_px: float = 0.3, strength: float = 1.0) -> InverseWarp:
    """s⁻¹ over ``warp``'s ROI (identity outside the lens); ``warp`` should be traced with a margin."""
    if not kernels.AVAILABLE:
        return invert_warp_numpy(warp, iterations, tol_px, strength)
    dx, dy = warp.displacement()
    map_x, map_y, invalid = kernels.invert_lens(dx, dy, warp.mask, iterations, tol_px, strength)
    return InverseWarp(LensWarp(warp.x0, warp.y0, map_x + np.float32(warp.x0), map_y + np.float32(warp.y0),
                                warp.mask), invalid)


def invert_warp_numpy(warp: LensWarp, iterations: int = 5, tol_px: float = 0.3,
                      strength: float = 1.0) -> InverseWarp:
    """The reference form of :func:`invert_warp`: every ROI pixel iterated with whole-ROI cv2.remap calls."""
    h, w = warp.mask.shape
    dx, dy = warp.displacement()
    gx, gy = _roi_grid(h, w)
    px, py = gx, gy  # ROI-relative preimage estimates (the cached grid is only read)
    for _ in range(iterations):
        px, py = gx - _sample(dx, px, py), gy - _sample(dy, px, py)
    ddx, ddy = _sample(dx, px, py), _sample(dy, px, py)
    residual = np.hypot(px + ddx - gx, py + ddy - gy)
    inside = _sample(warp.mask.view(np.uint8).astype(np.float32), px, py) >= 0.5
    invalid = warp.mask & ~(inside & (residual <= tol_px))
    ok = warp.mask & ~invalid
    map_x = np.where(ok, gx + strength * (px - gx), gx) + warp.x0
    map_y = np.where(ok, gy + strength * (py - gy), gy) + warp.y0
    return InverseWarp(LensWarp(warp.x0, warp.y0, map_x.astype(np.float32), map_y.astype(np.float32), warp.mask),
                       invalid)


def apply_inverse(image: np.ndarray, inverses: list[InverseWarp], fill_radius_px: float = 3.0,
                  interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """One remap per lens ROI from the observed frame, then fill the pixels with no preimage."""
    out = image.copy()
    for inv in inverses:
        w = inv.warp
        roi = cv2.remap(image, w.map_x, w.map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
        if inv.invalid.any():
            roi = fill_holes(roi, inv.invalid, fill_radius_px)
        paste_in_mask(out, w.x0, w.y0, roi, w.mask)
    return out
