"""The prescription generator's last step on the host (numpy), for graphs exported without it
(``generator_heads``): ``out = mask * (warp(y, field) + residual) + (1 - mask) * y``.

Why it exists: the heads can be computed from a face crop while another network (the restorer) works on the
same crop, and composed on that network's output afterwards; the two inferences then overlap on two cores.
The warp reproduces ``torch.nn.functional.grid_sample(mode="bilinear", padding_mode="border",
align_corners=False)`` exactly (no fixed-point coordinates as in ``cv2.remap``), so composing the heads on
the crop they came from gives the full generator's output to float rounding.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): rows y0..y1-1, columns x0..x1-1


def warp_border(x: np.ndarray, field: np.ndarray, box: Box | None = None) -> np.ndarray:
    """Backward bilinear warp ``out(p) = x(p + field(p))`` of (n, C, H, W) by a (n, 2, H, W) field in normalised
    grid units ([-1, 1] spans the image; channel 0 is x); sample positions are clamped to the image (border).
    With ``box`` only those output pixels are computed (they still sample the whole image): (n, C, y1-y0, x1-x0).
    """
    n, c, h, w = x.shape
    if field.shape != (n, 2, h, w):
        raise ValueError(f"field must be {(n, 2, h, w)}, got {field.shape}")
    y0b, y1b, x0b, x1b = box if box is not None else (0, h, 0, w)
    if not (0 <= y0b < y1b <= h and 0 <= x0b < x1b <= w):
        raise ValueError(f"box {box} is empty or outside a {h}x{w} image")
    f = field[:, :, y0b:y1b, x0b:x1b]
    # align_corners=False: grid value g maps to pixel ((g + 1) * W - 1) / 2, and the identity grid sits on
    # pixel centres, so the sample position is the pixel index plus field * W / 2
    ix = np.arange(x0b, x1b, dtype=np.float32)[None, None, :] + f[:, 0] * np.float32(w / 2.0)
    iy = np.arange(y0b, y1b, dtype=np.float32)[None, :, None] + f[:, 1] * np.float32(h / 2.0)
    np.clip(ix, 0.0, w - 1, out=ix)
    np.clip(iy, 0.0, h - 1, out=iy)
    x0 = np.floor(ix)
    y0 = np.floor(iy)
    wx = (ix - x0).reshape(n, -1)
    wy = (iy - y0).reshape(n, -1)
    i00 = (y0.astype(np.int32) * w + x0.astype(np.int32)).reshape(n, -1)
    dx = (x0 < w - 1).astype(np.int32).reshape(n, -1)  # the right/lower neighbour, clamped at the last one
    dy = ((y0 < h - 1).astype(np.int32) * w).reshape(n, -1)
    out = np.empty((n, c, y1b - y0b, x1b - x0b), x.dtype)
    for k in range(n):  # np.take per image: ~8x faster than fancy indexing or take_along_axis
        flat = x[k].reshape(c, h * w)
        a, b = i00[k], i00[k] + dx[k]
        top = np.take(flat, a, axis=1)
        top += (np.take(flat, b, axis=1) - top) * wx[k]
        a += dy[k]
        b += dy[k]
        bottom = np.take(flat, a, axis=1)
        bottom += (np.take(flat, b, axis=1) - bottom) * wx[k]
        bottom -= top
        bottom *= wy[k]
        top += bottom
        out[k] = top.reshape(c, y1b - y0b, x1b - x0b)
    return out


def compose_heads(y: np.ndarray, field: np.ndarray, residual: np.ndarray, mask: np.ndarray,
                  box: Box | None = None) -> np.ndarray:  # fmt: skip
    """Generator output on images ``y`` (n, 3, S, S) in [-1, 1] from heads computed by ``generator_heads``:
    field (n, 2, S, S), residual (n, 3, S, S), mask (n, 1, S, S). Returns a new float32 array; with ``box``
    only that part is composed and the rest is a copy of ``y`` (callers paste back only inside a region)."""
    y = np.asarray(y, np.float32)
    if residual.shape != y.shape or mask.shape != (y.shape[0], 1, *y.shape[2:]):
        raise ValueError(f"heads do not match images {y.shape}: residual {residual.shape}, mask {mask.shape}")
    h, w = y.shape[2:]
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    warped = warp_border(y, np.asarray(field, np.float32), box)
    src = y[:, :, y0:y1, x0:x1]
    warped += residual[:, :, y0:y1, x0:x1]
    warped -= src
    warped *= mask[:, :, y0:y1, x0:x1]
    warped += src  # mask * (warp + residual) + (1 - mask) * y
    out = y.copy()
    out[:, :, y0:y1, x0:x1] = warped
    return out
