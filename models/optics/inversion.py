"""Inverting the lens warp for ``remove``: tryon shows input(s(p)) at p; remove needs s⁻¹.

For every lens pixel q we solve F(p) = p + D(p) − q = 0, D = s − id the traced displacement field
sampled bilinearly, by Newton's method with the bilinear interpolant's own gradient (where I + ∇D is
nearly singular, a plain fixed-point step p ← q − D(p) instead); a pixel stops once within
CONVERGED_PX. A lens's field is smooth, so four steps bring all but 31 of the 1.5 million lens pixels of
the latency benchmark's 150 frames within 0.01 px (most take two); the fixed point alone contracts only
with ratio |1 − 1/M|, and after five steps it left 6–7 % of a frame's accepted pixels, those near steep
parts of the field (the face's outline), over 0.01 px. It costs what
the fixed point and the fill of its unconverged pixels did (~1 ms a frame for both lenses, remaps
included, on the 2-core dev VM).

Where s is not invertible inside the lens:
- minus lenses pull the ring just outside the rim into the lens (seen twice: through the lens and
  directly); a q in the lens still has a preimage inside the lens, except where the face's outline
  crosses the lens: there s jumps (the rays past the outline land on the background, far behind), and
  the strip of background next to the outline is seen nowhere through the lens. The traced field is
  sampled every 2 px and interpolated, so the jump becomes a ramp a cell or two wide, and q in the strip
  take their preimage on the ramp: the outline's edge pixels stretched across it (on the round-trip
  frames closer to the truth than filling the strip: 45.0 against 44.0 dB at −8 D, frontal);
- plus lenses hide a ring inside the rim (the content at radii R/M…R is magnified beyond the rim):
  those q have no preimage inside the lens.
Such q are flagged — preimage outside the rim, on a ramp steeper than STRETCH_MAX (no lens stretches
area that much), or not converged — and filled from the surrounding restored pixels
(models.optics.hole_fill).

The compiled kernel (models.optics.kernels) computes the same per-pixel sums in a loop; the numpy form
is its reference and fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.optics import kernels
from models.optics.hole_fill import fill_holes
from models.optics.refraction import LensWarp, paste_in_mask


@dataclass(frozen=True)
class InverseWarp:
    warp: LensWarp  # maps s⁻¹ (absolute pixel coordinates) over the same ROI
    invalid: np.ndarray  # (h, w) bool: lens pixels with no preimage inside the lens (to fill)


ITERATIONS = 4
NEWTON_DET_MIN = 0.2  # det(I + ∇D) below this: take a fixed-point step instead of a Newton step
STRETCH_MAX = 4.0  # det(I + ∇D) at a preimage: a lens stretches or shrinks area by well under 2x
CONVERGED_PX = 0.01  # a pixel whose residual is below this takes no further steps (0.01 px: invisible)


def invert_warp(warp: LensWarp, iterations: int = ITERATIONS, tol_px: float = 0.3,
                strength: float = 1.0) -> InverseWarp:
    """s⁻¹ over ``warp``'s ROI (identity outside the lens); ``warp`` should be traced with a margin."""
    if not kernels.AVAILABLE:
        return invert_warp_numpy(warp, iterations, tol_px, strength)
    dx, dy = warp.displacement()
    map_x, map_y, invalid = kernels.invert_lens(dx, dy, warp.mask, iterations, tol_px, strength, NEWTON_DET_MIN,
                                                STRETCH_MAX, CONVERGED_PX)
    return InverseWarp(LensWarp(warp.x0, warp.y0, map_x + np.float32(warp.x0), map_y + np.float32(warp.y0),
                                warp.mask), invalid)


def bilinear_with_gradient(img: np.ndarray, x: np.ndarray,
                           y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, d/dx, d/dy) of the bilinear interpolant of ``img`` at float64 (x, y); taps off the image
    read 0 (as cv2.remap with BORDER_CONSTANT 0)."""
    return _bilinear_padded(_pad(img), x, y)


def _pad(img: np.ndarray) -> np.ndarray:
    """Two rings of zeros around the image (float64): a cell's corner clipped onto them reads 0 for every tap
    off the image, also for a cell wholly off it."""
    padded = np.zeros((img.shape[0] + 4, img.shape[1] + 4))
    padded[2:-2, 2:-2] = img
    return padded


def _bilinear_padded(padded: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = padded.shape[0] - 4, padded.shape[1] - 4
    x = np.where(np.abs(x) < 1e6, x, -1e6)  # diverged or not a number: off the image
    y = np.where(np.abs(y) < 1e6, y, -1e6)
    fx, fy = np.floor(x), np.floor(y)
    ax, ay = x - fx, y - fy
    x0 = np.clip(fx, -2, w).astype(np.int64) + 2
    y0 = np.clip(fy, -2, h).astype(np.int64) + 2
    v00, v01, v10, v11 = padded[y0, x0], padded[y0, x0 + 1], padded[y0 + 1, x0], padded[y0 + 1, x0 + 1]
    v = v00 * (1.0 - ax) * (1.0 - ay) + v01 * ax * (1.0 - ay) + v10 * (1.0 - ax) * ay + v11 * ax * ay
    gx = (1.0 - ay) * (v01 - v00) + ay * (v11 - v10)
    gy = (1.0 - ax) * (v10 - v00) + ax * (v11 - v01)
    return v, gx, gy


def invert_warp_numpy(warp: LensWarp, iterations: int = ITERATIONS, tol_px: float = 0.3,
                      strength: float = 1.0) -> InverseWarp:
    """The reference form of :func:`invert_warp`: the lens pixels' Newton iterations as array operations."""
    dx, dy = (_pad(d) for d in warp.displacement())
    ys, xs = np.nonzero(warp.mask)
    qx, qy = xs.astype(np.float64), ys.astype(np.float64)
    px, py = qx.copy(), qy.copy()
    active = np.arange(len(qx))
    for _ in range(iterations):
        ux, uy = px[active], py[active]  # the pixels still moving
        vx, jxx, jxy = _bilinear_padded(dx, ux, uy)
        vy, jyx, jyy = _bilinear_padded(dy, ux, uy)
        fx, fy = ux + vx - qx[active], uy + vy - qy[active]
        moving = fx * fx + fy * fy >= CONVERGED_PX * CONVERGED_PX
        a, b, c, d = 1.0 + jxx, jxy, jyx, 1.0 + jyy
        det = a * d - b * c
        newton = det > NEWTON_DET_MIN
        inv = 1.0 / np.where(newton, det, 1.0)
        px[active] = np.where(moving, ux - np.where(newton, (d * fx - b * fy) * inv, fx), ux)
        py[active] = np.where(moving, uy - np.where(newton, (a * fy - c * fx) * inv, fy), uy)
        active = active[moving]
    vx, jxx, jxy = _bilinear_padded(dx, px, py)
    vy, jyx, jyy = _bilinear_padded(dy, px, py)
    fx, fy = px + vx - qx, py + vy - qy
    det = (1.0 + jxx) * (1.0 + jyy) - jxy * jyx
    inside = bilinear_with_gradient(warp.mask.astype(np.float64), px, py)[0] >= 0.5
    ok = inside & (fx * fx + fy * fy <= tol_px * tol_px) & (det >= 1.0 / STRETCH_MAX) & (det <= STRETCH_MAX)
    h, w = warp.mask.shape
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x[ys[ok], xs[ok]] = (qx + strength * (px - qx))[ok]
    map_y[ys[ok], xs[ok]] = (qy + strength * (py - qy))[ok]
    invalid = np.zeros((h, w), bool)
    invalid[ys[~ok], xs[~ok]] = True
    return InverseWarp(LensWarp(warp.x0, warp.y0, map_x + np.float32(warp.x0), map_y + np.float32(warp.y0),
                                warp.mask), invalid)


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
