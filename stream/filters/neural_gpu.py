"""Face crop alignment and feathered paste-back in torch: the GPU twin of ``models.align.warp_crop/paste_back``.

When a network runs on CUDA, the frame goes up once, crops are warped, inferred and pasted back on the device,
and the finished frame comes down once: no per-crop host round trips. Same 2x3 frame -> crop matrices, same
pyramid rule (halve with cv2's 5-tap Gaussian while the scale is below 1/2), same footprint and blend as the
cv2 path, so both give the same pixels within rounding (cv2 interpolates in fixed point and rounds every
pyramid level to uint8; this keeps float until the final rint). Differences remain at the frame's own edges:
cv2 reflects as ``BORDER_REFLECT_101``, ``grid_sample`` as ``BORDER_REFLECT``.

Every function works on tensors of any device, so the tests compare them with cv2 on CPU tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.align import paste_box, paste_weights, pyramid_levels, transform_scale

_PYR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # cv2.pyrDown's binomial kernel, normalised by 16 per axis


def affine_theta(out_to_in: np.ndarray, out_wh: tuple[int, int], in_wh: tuple[int, int]) -> np.ndarray:
    """``affine_grid`` theta (align_corners=False) for a pixel map ``in_px = out_to_in @ [out_px, 1]``.

    With align_corners=False pixel i's centre is normalised coordinate (2i + 1)/n - 1 (the edge of the image
    is -1/+1), so theta = N_in @ A @ N_out⁻¹ with N(p) = (2/n) p + 1/n - 1 per axis.
    """
    (wo, ho), (wi, hi) = out_wh, in_wh
    a = np.vstack([np.asarray(out_to_in, np.float64), [0.0, 0.0, 1.0]])
    n_out_inv = np.array([[wo / 2.0, 0.0, (wo - 1) / 2.0], [0.0, ho / 2.0, (ho - 1) / 2.0], [0.0, 0.0, 1.0]])
    n_in = np.array([[2.0 / wi, 0.0, 1.0 / wi - 1.0], [0.0, 2.0 / hi, 1.0 / hi - 1.0], [0.0, 0.0, 1.0]])
    return (n_in @ a @ n_out_inv)[:2]


def _invert(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.hstack([a_inv, -a_inv @ m[:, 2:3]])


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown on (N, C, H, W) float: 5x5 binomial blur, reflect-101 borders, every other pixel.

    Output is ((W + 1) // 2, (H + 1) // 2) like cv2; pixel i sits on input pixel 2i.
    """
    k1 = torch.tensor(_PYR_TAPS, dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")  # torch "reflect" excludes the edge pixel: cv2's REFLECT_101
    h = F.conv2d(pad, k1.view(1, 1, 1, 5).expand(c, 1, 1, 5).contiguous(), stride=(1, 2), groups=c)
    return F.conv2d(h, k1.view(1, 1, 5, 1).expand(c, 1, 5, 1).contiguous(), stride=(2, 1), groups=c)


def frame_to_nchw(frame: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 255]."""
    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 frame tensor, got {frame.dtype} {tuple(frame.shape)}")
    return frame.permute(2, 0, 1).unsqueeze(0).float()


def warp_crops(frame: torch.Tensor, mats: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(n, 3, size, size) float32 crops in [-1, 1] (the networks' encoding) for frame -> crop matrices ``mats``."""
    x = frame_to_nchw(frame)
    h, w = frame.shape[:2]
    pyramid = [x]
    crops = []
    for m in mats:
        m = np.asarray(m, np.float64)
        levels = pyramid_levels(m, min(h, w))
        while len(pyramid) <= levels:
            pyramid.append(pyr_down(pyramid[-1]))
        src = pyramid[levels]
        m_src = m @ np.diag([2.0**levels, 2.0**levels, 1.0])  # level pixel i is frame pixel 2^levels * i
        theta = affine_theta(_invert(m_src), (size, size), (src.shape[3], src.shape[2]))
        grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=x.device)[None],
                             [1, 3, size, size], align_corners=False)  # fmt: skip
        crops.append(F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False))
    if not crops:
        return x.new_zeros((0, 3, size, size))
    return torch.cat(crops) / 127.5 - 1.0


def paste_(frame: torch.Tensor, crop: torch.Tensor, m: np.ndarray, feather_px: float = 8.0,
           crop_alpha: np.ndarray | None = None) -> torch.Tensor:  # fmt: skip
    """Blend ``crop`` ((3, S, S) float in [-1, 1]) into ``frame`` ((H, W, 3) uint8) **in place**; returns it.

    Mirrors ``models.align.paste_back``: feathered edge (``feather_px`` in frame pixels) times the optional
    crop-space ``crop_alpha`` (S, S), only pixels whose weight is > 0 are written. The weights are built on the
    host (they come from landmarks) and go up once, 4 bytes per crop pixel.
    """
    size = crop.shape[-1]
    if crop.shape != (3, size, size):
        raise ValueError(f"crop must be (3, S, S), got {tuple(crop.shape)}")
    h, w = frame.shape[:2]
    m = np.asarray(m, np.float64)
    dev = crop.device
    weights = paste_weights(size, feather_px * transform_scale(m), crop_alpha)
    box = paste_box(m, size, w, h, weights if crop_alpha is not None else None)
    if box is None:
        return frame
    x0, y0, x1, y1 = box
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    theta = affine_theta(m_roi, (x1 - x0, y1 - y0), (size, size))
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=dev)[None], [1, 1, y1 - y0, x1 - x0],
                         align_corners=False)  # fmt: skip
    rgb = ((crop.float() + 1.0) * 127.5).clamp(0.0, 255.0)[None]
    warped = F.grid_sample(rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    mask = torch.from_numpy(weights).to(dev)
    a = F.grid_sample(mask[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    roi = frame[y0:y1, x0:x1].permute(2, 0, 1).float()
    blended = torch.round(a * warped + (1.0 - a) * roi).clamp(0.0, 255.0)
    frame[y0:y1, x0:x1] = torch.where(a > 0, blended, roi).to(torch.uint8).permute(1, 2, 0)
    return frame


@functools.lru_cache(maxsize=8)
def _identity_grid(size: int, device: str) -> torch.Tensor:
    from models.nets.generator import base_grid

    return base_grid(size, size).to(device)


def compose(x: torch.Tensor, heads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The generator's output from a ``generator_heads`` graph's outputs, on the device: crops ``x``
    (n, 3, S, S) in [-1, 1] warped by the field, plus the residual, inside the mask."""
    from models.nets.generator import compose as compose_heads

    grid = _identity_grid(x.shape[-1], str(x.device))
    return compose_heads(x, heads["field"], heads["residual"], heads["mask"], grid)
