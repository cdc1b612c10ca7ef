"""Aligned square face crops from tracker landmarks, and feathered paste-back into the frame.

A similarity transform (rotation, uniform scale, translation) maps three mediapipe-derived points, the two
eye centres and the mouth centre, onto canonical positions in the crop. The canonical positions are the
FFHQ-aligned 512px template used by facexlib/CodeFormer (eyes and mouth-corner mean), normalised to the
crop size, so crops look like the data face-restoration networks are trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stream.face import LEFT_EYE_INNER, LEFT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_OUTER, Face

MOUTH_RIGHT, MOUTH_LEFT = 61, 291  # mouth corners (subject's sides) in the mediapipe mesh
CROP_SIZES = (128, 256, 512)


@dataclass(frozen=True)
class AlignTemplate:
    """Canonical (x, y) positions as fractions of the crop side: subject's right eye (image left), left
    eye, mouth centre."""

    right_eye: tuple[float, float] = (192.98 / 512, 239.95 / 512)
    left_eye: tuple[float, float] = (318.90 / 512, 240.19 / 512)
    mouth: tuple[float, float] = ((201.26 + 313.09) / 1024, (371.41 + 371.15) / 1024)

    def points(self, size: int) -> np.ndarray:
        return np.array([self.right_eye, self.left_eye, self.mouth], dtype=np.float64) * size


DEFAULT_TEMPLATE = AlignTemplate()


def anchor_points(landmarks_px: np.ndarray) -> np.ndarray:
    """(3, 2): right-eye centre, left-eye centre (eye-corner midpoints: steady under blinks and gaze),
    mouth centre (corner midpoint), in frame pixels."""
    lm = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    return np.stack([
        (lm[RIGHT_EYE_OUTER] + lm[RIGHT_EYE_INNER]) / 2.0,
        (lm[LEFT_EYE_OUTER] + lm[LEFT_EYE_INNER]) / 2.0,
        (lm[MOUTH_RIGHT] + lm[MOUTH_LEFT]) / 2.0,
    ])  # fmt: skip


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2-D similarity ``dst ≈ s R src + t`` as a 2x3 matrix (closed form, Umeyama 1991).

    In complex form the map is ``z -> a z + b``; with centred points a = Σ conj(s_i) d_i / Σ |s_i|².
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    denom = float(np.sum(np.abs(zs - ms) ** 2))
    if denom < 1e-12:
        raise ValueError("source points coincide: no similarity transform")
    a = np.sum(np.conj(zs - ms) * (zd - md)) / denom
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def transform_scale(m: np.ndarray) -> float:
    """Uniform scale of a similarity 2x3 matrix (crop px per frame px)."""
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def alignment_matrix(face: Face, size: int, template: AlignTemplate = DEFAULT_TEMPLATE) -> np.ndarray:
    """2x3 frame -> crop matrix for ``face``."""
    lm = np.asarray(face.landmarks_px)
    if lm.ndim != 2 or lm.shape[0] <= MOUTH_LEFT or lm.shape[1] < 2 or not np.all(np.isfinite(lm[:, :2])):
        raise ValueError(f"face landmarks must be a finite (478, 3) array, got shape {lm.shape}")
    return similarity_lstsq(anchor_points(lm), template.points(size))


def crop_drift(m_from: np.ndarray, m_to: np.ndarray, size: int) -> float:
    """How far apart two crops of one frame are: the largest displacement of a crop corner taken from the
    ``m_from`` crop to the ``m_to`` crop (both 2x3 frame -> crop), in crop pixels."""
    a = np.vstack([np.asarray(m_from, np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(m_to, np.float64), [0.0, 0.0, 1.0]])
    corners = np.array([[0.0, 0.0, 1.0], [size, 0.0, 1.0], [0.0, size, 1.0], [size, size, 1.0]]).T
    moved = (b @ np.linalg.inv(a) @ corners)[:2]
    return float(np.abs(moved - corners[:2]).max())


def align(
    image_rgb: np.ndarray, face: Face, size: int = 128, template: AlignTemplate = DEFAULT_TEMPLATE
) -> tuple[np.ndarray, np.ndarray]:
    """(crop (size, size, 3) uint8, M 2x3 mapping frame px -> crop px).

    Shrinking by more than 2x first halves the frame with ``pyrDown`` (gaussian) so bilinear warping does
    not alias; M always refers to the original frame. Out-of-frame areas are reflected (networks see
    plausible context rather than black borders).
    """
    if size not in CROP_SIZES:
        raise ValueError(f"crop size must be one of {CROP_SIZES}, got {size}")
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got {image_rgb.dtype} {image_rgb.shape}")
    m = alignment_matrix(face, size, template)
    return warp_crop(image_rgb, m, size), m


def pyramid_levels(m: np.ndarray, min_side: int) -> int:
    """How many ``pyrDown`` halvings ``warp_crop`` applies before warping with ``m`` (scale < 0.5 aliases)."""
    levels, scale, side = 0, transform_scale(m), min_side
    while scale < 0.5 and side >= 2:
        scale, side, levels = scale * 2.0, (side + 1) // 2, levels + 1  # pyrDown rounds sizes up
    return levels


def warp_crop(image_rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) crop of ``image_rgb`` under the frame -> crop matrix ``m`` (see ``align``)."""
    src, m_src = image_rgb, np.asarray(m, dtype=np.float64)
    for _ in range(pyramid_levels(m_src, min(image_rgb.shape[:2]))):
        # pyrDown centres its output pixel i on input pixel 2i (dst(i) = Σ_k w_k src(2i + k)): x = 2 x_half.
        src = cv2.pyrDown(src)
        m_src = m_src @ np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    return cv2.warpAffine(src, m_src, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def feather_mask(size: int, feather_px: float) -> np.ndarray:
    """(size, size) float32 in [0, 1]: 1 inside, ramping linearly to 0 over ``feather_px`` at the edges."""
    c = np.arange(size, dtype=np.float32) + 0.5
    d = np.minimum(c, size - c)  # distance of each pixel centre to the nearer edge
    ramp = np.ones_like(d) if feather_px <= 0 else np.clip(d / np.float32(feather_px), 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])


def paste_box(
    m: np.ndarray, size: int, width: int, height: int, mask: np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame box a crop (or its ``mask > 0`` part) can reach when pasted back, or None.

    Bilinear sampling reaches one crop pixel beyond the last nonzero one, hence the crop box's +-1; the frame
    box gets one more pixel of margin for rounding. Everything outside it stays bit-exact.
    """
    lo, hi = np.array([-1.0, -1.0]), np.array([size, size], dtype=np.float64)
    if mask is not None:
        ys, xs = np.nonzero(mask > 0)
        if xs.size == 0:
            return None
        lo, hi = np.array([xs.min() - 1.0, ys.min() - 1.0]), np.array([xs.max() + 1.0, ys.max() + 1.0])
    inv = cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))
    corners = np.array([[lo[0], lo[1], 1], [hi[0], lo[1], 1], [lo[0], hi[1], 1], [hi[0], hi[1], 1]]) @ inv.T
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [width, height])
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def paste_weights(size: int, feather_px: float, crop_alpha: np.ndarray | None = None) -> np.ndarray:
    """(size, size) float32 paste weights in crop space: the feathered edge (``feather_px`` crop pixels) times
    the optional ``crop_alpha`` (e.g. a lens or face mask)."""
    mask = feather_mask(size, feather_px)
    if crop_alpha is not None:
        if crop_alpha.shape != (size, size):
            raise ValueError(f"crop_alpha must be ({size}, {size}), got {crop_alpha.shape}")
        mask = mask * np.clip(crop_alpha, 0.0, 1.0).astype(np.float32)
    return mask


def paste_back(
    frame: np.ndarray, crop: np.ndarray, m: np.ndarray, feather_px: float = 8.0, crop_alpha: np.ndarray | None = None
) -> np.ndarray:
    """Blend ``crop`` (from ``align``, possibly processed) back into a copy of ``frame``.

    ``feather_px``: width of the blend ramp at the crop's edges, in frame pixels. ``crop_alpha``: optional
    (size, size) float weights in [0, 1] in crop space (e.g. a lens or face mask), multiplied with the
    feathered edge. Only pixels within the footprint of the weights > 0 (``paste_box``) can change; all
    others are bit-exact copies.
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
    size = crop.shape[0]
    if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
        raise ValueError(f"crop must be square RGB uint8, got {crop.dtype} {crop.shape}")
    m = np.asarray(m, dtype=np.float64)
    out = frame.copy()
    h, w = frame.shape[:2]
    mask = paste_weights(size, feather_px * transform_scale(m), crop_alpha)
    box = paste_box(m, size, w, h, mask if crop_alpha is not None else None)
    if box is None:
        return out  # nothing to paste, or entirely outside the frame
    x0, y0, x1, y1 = box
    # Warp only the footprint's bounding box: shift the frame->crop map by the ROI origin.
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    roi_size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(crop, m_roi, roi_size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, m_roi, roi_size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    roi = out[y0:y1, x0:x1]
    # blendLinear computes round((a w + b r) / (a + b + 1e-5)) in one SIMD pass (10x numpy's blend and masked
    # copy); with b = 1 - a a pixel of weight 0 comes out as r exactly (r <= 255 moves by < 0.003).
    roi[...] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)
    return out
