"""Warp keyframe layers (aligned-crop RGBA) onto the current frame by the current face's alignment.

A keyframe layer is made once, in the aligned crop of the frame it was computed on (``models.align``: a
similarity transform from eye and mouth landmarks onto a canonical template). Later frames reuse it by
warping it with *their* face's frame -> crop matrix inverted, so the layer follows the head between
keyframes at the cost of one small affine warp.

Layers are mixed premultiplied (colour x alpha): with weights w_i from ``stream.crossfade``,
``out = sum_i w_i a_i c_i + (1 - sum_i w_i a_i) frame``, which cross-dissolves two opaque layers without the
frame showing through mid-fade, and interpolates edges without dark fringes. Only the box the layers'
non-zero alpha can reach is touched; every pixel outside it, and every pixel inside it where the warped
alpha is 0, comes out bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive ends


@dataclass(frozen=True)
class PreparedLayer:
    """A layer ready to warp: premultiplied float32 (S, S, 4) (colour in 0..255, alpha in 0..1) and the crop
    box of its non-zero alpha (None: fully transparent). Made once per result, used every frame."""

    premult: np.ndarray
    size: int
    support: Box | None


def prepare_layer(rgba: np.ndarray) -> PreparedLayer:
    """Validate a (S, S, 4) float RGBA layer in [0, 1] and premultiply it; raises ValueError on bad input.

    Values slightly outside [0, 1] (network outputs) are clipped; NaN or inf are an error, not a black hole.
    """
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] != 4 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"layer must be a square (S, S, 4) RGBA array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"layer must be float RGBA in [0, 1], got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError("layer has NaN or infinite values")
    a = np.clip(a.astype(np.float32), 0.0, 1.0)
    alpha = a[..., 3]
    premult = np.empty_like(a)
    premult[..., :3] = a[..., :3] * (alpha[..., None] * np.float32(255.0))
    premult[..., 3] = alpha
    ys, xs = np.nonzero(alpha > 0)
    support = None if xs.size == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return PreparedLayer(np.ascontiguousarray(premult), a.shape[0], support)


def footprint_box(m: np.ndarray, crop_box: Box, width: int, height: int) -> Box | None:
    """Frame box a crop box's pixels can reach under the inverse of the frame -> crop matrix ``m``.

    Bilinear sampling reaches one crop pixel beyond the last non-zero one (hence -1/+0 on the exclusive
    box), and one frame pixel of margin covers rounding. None when it misses the frame.
    """
    x0, y0, x1, y1 = crop_box
    inv = cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))
    lo, hi = (x0 - 1.0, y0 - 1.0), (float(x1), float(y1))  # last pixel x1-1 (+1 for bilinear reach)
    corners = np.array([[lo[0], lo[1], 1.0], [hi[0], lo[1], 1.0], [lo[0], hi[1], 1.0], [hi[0], hi[1], 1.0]])
    pts = corners @ inv.T
    fx0, fy0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 1, 0)
    fx1, fy1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 2, [width, height])
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    return int(fx0), int(fy0), int(fx1), int(fy1)


def union_box(boxes: Sequence[Box]) -> Box | None:
    if not boxes:
        return None
    b = np.array(boxes)
    return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())


def composite(frame: np.ndarray, layers: Sequence[tuple[PreparedLayer, float, np.ndarray]],
              inplace: bool = False) -> np.ndarray:  # fmt: skip
    """Blend ``(layer, weight, m)`` entries over an RGB uint8 frame; ``m`` is the current face's 2x3
    frame -> crop matrix at the layer's size (``models.align.alignment_matrix(face, layer.size)``).

    Weights are clipped to [0, 1]; their sum should not exceed 1 (``stream.crossfade`` guarantees it); a sum
    above 1 is still bounded (alpha is clipped), never overflows. Returns ``frame`` itself when nothing
    shows, else a copy (or ``frame`` modified, with ``inplace``).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    live = []
    for layer, weight, m in layers:
        wt = float(np.clip(weight, 0.0, 1.0))
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (2, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"alignment matrix must be a finite 2x3 array, got {m.shape}")
        if wt <= 0.0 or layer.support is None:
            continue
        box = footprint_box(m, layer.support, w, h)
        if box is not None:
            live.append((layer, wt, m, box))
    roi_box = union_box([b for *_, b in live])
    if roi_box is None:
        return frame
    x0, y0, x1, y1 = roi_box
    roi_size = (x1 - x0, y1 - y0)
    acc = np.zeros((y1 - y0, x1 - x0, 4), np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for layer, wt, m, _ in live:
        m_roi = m.copy()
        m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)  # ROI pixel (0, 0) is frame (x0, y0)
        warped = cv2.warpAffine(layer.premult, m_roi, roi_size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(0.0, 0.0, 0.0, 0.0))  # fmt: skip
        cv2.scaleAdd(warped, wt, acc, dst=acc)  # acc += wt * warped
    out = frame if inplace else frame.copy()
    roi = out[y0:y1, x0:x1]
    keep = 1.0 - np.minimum(acc[..., 3:], 1.0)
    # Where acc is 0: 1.0 * v + 0 = v exactly in float32, so rint gives the pixel back bit-exact.
    blended = acc[..., :3] + keep * roi.astype(np.float32)
    roi[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
