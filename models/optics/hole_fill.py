"""Filling the pixels that ``remove`` cannot restore (no preimage inside the lens) from those around them.

Onion peeling: the holes are filled one ring at a time from their edge inwards; each pixel of a ring is
the mean of the known pixels within ``radius_px`` (those filled by earlier rings included), weighted by
1/distance². It is Telea's fast-marching fill without the gradient term. The holes are
rings a pixel or a few wide (behind a plus lens's rim, or background the face hides from the lens), and
there both agree within a grey level or two on real frames, at a tenth of the time (cv2.inpaint spends
about a millisecond per lens on its own set-up). The numpy form is the reference and the fallback of the
compiled one (models.optics.kernels), which computes the same sums in the same order.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from models.optics import kernels


@lru_cache(maxsize=8)
def neighbourhood(radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) int (dy, dx) offsets within the radius (centre excluded), row-major, and their 1/d² weights."""
    r = int(np.floor(radius_px))
    if radius_px < np.sqrt(2.0):
        raise ValueError(f"fill radius {radius_px} px < √2: a ring's pixels must reach their 8-neighbours")
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = (dy * dy + dx * dx).ravel()
    keep = (d2 > 0) & (d2 <= radius_px * radius_px)
    offsets = np.column_stack([dy.ravel()[keep], dx.ravel()[keep]]).astype(np.int64)
    weights = 1.0 / d2[keep].astype(np.float64)
    offsets.flags.writeable = weights.flags.writeable = False
    return offsets, weights


def fill_holes(img: np.ndarray, holes: np.ndarray, radius_px: float = 3.0) -> np.ndarray:
    """A copy of (h, w[, c]) uint8 ``img`` with the ``holes`` (h, w) filled; other pixels are kept exactly."""
    if img.ndim == 2:
        return fill_holes(img[..., None], holes, radius_px)[..., 0]
    offsets, weights = neighbourhood(radius_px)
    if kernels.AVAILABLE:
        return kernels.fill_holes(img, holes, offsets, weights)
    return fill_holes_numpy(img, holes, radius_px)


def fill_holes_numpy(img: np.ndarray, holes: np.ndarray, radius_px: float = 3.0) -> np.ndarray:
    """The reference form of :func:`fill_holes`: one vectorised pass per ring."""
    if img.ndim == 2:
        return fill_holes_numpy(img[..., None], holes, radius_px)[..., 0]
    offsets, weights = neighbourhood(radius_px)
    h, w = holes.shape
    val = img.astype(np.float64)
    known = ~holes
    left = holes.copy()
    ring8 = np.ones((3, 3), np.uint8)
    while left.any():
        layer = left & (cv2.dilate(known.view(np.uint8), ring8) > 0)
        if not layer.any():
            break  # holes with no known pixel anywhere around them stay as they are
        ys, xs = np.nonzero(layer)
        acc = np.zeros((len(ys), val.shape[2]))
        wsum = np.zeros(len(ys))
        for (oy, ox), wt in zip(offsets, weights, strict=True):  # the compiled kernel's summation order
            yy, xx = ys + oy, xs + ox
            inb = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            k = np.zeros(len(ys), bool)
            k[inb] = known[yy[inb], xx[inb]]
            wsum[k] += wt
            acc[k] += wt * val[yy[k], xx[k]]
        val[ys, xs] = acc / wsum[:, None]
        known[ys, xs] = True
        left[ys, xs] = False
    out = img.copy()
    filled = holes & ~left
    out[filled] = np.clip(np.rint(val[filled]), 0, 255).astype(np.uint8)
    return out
