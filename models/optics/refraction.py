"""Thin-lens ray tracing through a placed spectacle lens into the face: remap fields.

For an output pixel p inside a lens, the camera ray through p meets the lens plane at offset h from
the optical centre (lens frame u, v). Light is reversible, so the camera ray is bent like the light
it traces: its slopes in the lens frame change by Prentice's deviation −F·h/1000 + prism/100, and the
bent ray continues in 3-D until it meets the face surface (FaceDepth). Projecting that point gives the
source pixel s(p): tryon output(p) = input(s(p)). The per-ray trace runs compiled where numba is
installed (models.optics.kernels), with these numpy forms as the reference and fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from models.optics import kernels
from models.optics.face_depth import FaceDepth
from models.optics.lens_geometry import LensLike
from models.optics.power import prentice_deviation
from stream.camera import Pinhole


@dataclass(frozen=True)
class LensPower:
    f: np.ndarray  # (2, 2) dioptric power matrix in the lens's (u, v) frame
    prism: np.ndarray  # (2,) prism deviation in radians, (u, v) frame

    @property
    def is_zero(self) -> bool:
        return not np.any(self.f) and not np.any(self.prism)


def bend_rays(dirs: np.ndarray, h_mm: np.ndarray, power: LensPower, u: np.ndarray, v: np.ndarray,
              n: np.ndarray) -> np.ndarray:
    """Deviate rays ``dirs`` (N, 3) crossing the lens at offsets ``h_mm`` (N, 2).

    Slopes are taken relative to the lens axis w = −n (from the lens into the face), so the deviation
    stays in the lens's tangent plane whatever the head angle.
    """
    w = -n
    along = dirs @ w
    slopes = np.stack([dirs @ u, dirs @ v], axis=1) / along[:, None]
    slopes = slopes + prentice_deviation(power.f, power.prism, h_mm)
    return w[None, :] + slopes[:, :1] * u[None, :] + slopes[:, 1:] * v[None, :]


def lens_plane_hits(rays: np.ndarray, center: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Points where camera rays from the origin (N, 3) meet the plane through ``center`` with normal n."""
    t = float(center @ n) / (rays @ n)
    return rays * t[:, None]


def lens_rays(pixels: np.ndarray, lens: LensLike, power: LensPower, camera: Pinhole) -> tuple[np.ndarray, np.ndarray]:
    """(lens-plane hits (N, 3), bent directions (N, 3)) of the camera rays through ``pixels`` (N, 2)."""
    c = np.asarray(lens.optical_center_cam_mm, np.float64)
    u = np.asarray(lens.u_cam, np.float64)
    v = np.asarray(lens.v_cam, np.float64)
    n = np.asarray(lens.normal_cam, np.float64)
    rays = camera.rays(pixels)
    hits = lens_plane_hits(rays, c, n)
    off = hits - c
    h = np.stack([off @ u, off @ v], axis=1)
    return hits, bend_rays(rays, h, power, u, v, n)


def land_rays(pixels: np.ndarray, hits: np.ndarray, bent: np.ndarray, depth: FaceDepth, camera: Pinhole) -> np.ndarray:
    """Source pixels where the bent rays from ``hits`` meet the face (rows are independent, so the
    rays of several lenses can go through in one call)."""
    surface = depth.intersect(hits, bent)
    src = camera.project(surface)
    # Where the face is in front of the lens plane (the nose, seen past the far lens at large yaw),
    # the camera sees the face, not the lens: no refraction there.
    occluded = depth.sample(pixels) < hits[:, 2]
    src[occluded] = pixels[occluded]
    return src


def trace_lens(pixels: np.ndarray, lens: LensLike, power: LensPower, depth: FaceDepth, camera: Pinhole) -> np.ndarray:
    """(N, 2) source pixels s(p) for output pixels ``pixels`` (N, 2) seen through ``lens``: compiled
    (models.optics.kernels) where numba is installed, else :func:`trace_lens_numpy`."""
    if kernels.AVAILABLE:
        return kernels.trace_lens(pixels, lens, power.f, power.prism, depth.depth, depth.scale, camera)
    return trace_lens_numpy(pixels, lens, power, depth, camera)


def trace_lens_numpy(pixels: np.ndarray, lens: LensLike, power: LensPower, depth: FaceDepth,
                     camera: Pinhole) -> np.ndarray:
    """:func:`trace_lens` as numpy array operations (the reference the compiled kernel is tested against)."""
    return land_rays(pixels, *lens_rays(pixels, lens, power, camera), depth, camera)


@dataclass(frozen=True)
class LensWarp:
    """Source coordinates for one lens's bounding box (ROI) of the frame."""

    x0: int
    y0: int
    map_x: np.ndarray  # (h, w) float32 absolute source x for each ROI pixel
    map_y: np.ndarray
    mask: np.ndarray  # (h, w) bool: inside the lens

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]

    def displacement(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.mask.shape
        return (self.map_x - np.arange(self.x0, self.x0 + w, dtype=np.float32)[None, :],
                self.map_y - np.arange(self.y0, self.y0 + h, dtype=np.float32)[:, None])


def outline_roi_mask(outline_px: np.ndarray, width: int, height: int,
                     margin_px: int = 0) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """(x0, y0, lens mask, traced mask) over the outline's bounding box (+ margin), clipped to the frame.

    Rasterised in the ROI only (sub-pixel polygon fill): full-frame masks cost more than the optics.
    ``traced`` is the lens dilated by ``margin_px``. None when the lens is entirely off-frame.
    """
    pts = np.asarray(outline_px, np.float64)
    if pts.size == 0 or not np.all(np.isfinite(pts)):
        return None
    x0 = max(int(np.floor(pts[:, 0].min())) - margin_px - 1, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - margin_px - 1, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + margin_px + 2, width)
    y1 = min(int(np.ceil(pts[:, 1].max())) + margin_px + 2, height)
    if x1 <= x0 or y1 <= y0:
        return None
    shift = 4
    poly = np.round((pts - [x0, y0]) * (1 << shift)).astype(np.int32)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_8, shift=shift)
    traced = mask
    if margin_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
        traced = cv2.dilate(mask, k)
    if not mask.any():
        return None
    return x0, y0, mask > 0, traced > 0


@lru_cache(maxsize=32)
def _fine_grid(h: int, w: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse-grid coordinates of every ROI pixel (read-only; ROI sizes repeat from frame to frame)."""
    fx, fy = np.meshgrid(np.arange(w, dtype=np.float32) / step, np.arange(h, dtype=np.float32) / step)
    fx.flags.writeable = fy.flags.writeable = False
    return fx, fy


def _identity_maps(x0: int, y0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    map_x[:] = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    map_y[:] = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    return map_x, map_y


@dataclass(frozen=True)
class _Roi:
    """One lens's ROI while its warp is built: maps start as identity; ``pix`` are the traced samples."""

    x0: int
    y0: int
    mask: np.ndarray
    traced: np.ndarray
    map_x: np.ndarray
    map_y: np.ndarray
    pix: np.ndarray | None = None  # (N, 2) float64 pixels to trace; None: identity warp
    cover: np.ndarray | None = None  # coarse-grid samples (step > 1)


def _prepare(lens: LensLike, power: LensPower, camera: Pinhole, strength: float, margin_px: int,
             step: int) -> _Roi | None:
    roi = outline_roi_mask(lens.outline_px, camera.width, camera.height, margin_px)
    if roi is None:
        return None
    x0, y0, mask, traced = roi
    h, w = mask.shape
    map_x, map_y = _identity_maps(x0, y0, h, w)
    if strength <= 0.0 or power.is_zero:
        return _Roi(x0, y0, mask, traced, map_x, map_y)
    if step <= 1:
        iy, ix = np.nonzero(traced)
        pix = np.column_stack([ix + x0, iy + y0]).astype(np.float64)
        return _Roi(x0, y0, mask, traced, map_x, map_y, pix)
    # Coarse samples covering every traced pixel's four bilinear neighbours.
    k = np.ones((2 * step + 1, 2 * step + 1), np.uint8)
    cover = cv2.dilate(traced.view(np.uint8), k)[::step, ::step] > 0
    iy, ix = np.nonzero(cover)
    pix = np.column_stack([x0 + step * ix, y0 + step * iy]).astype(np.float64)
    return _Roi(x0, y0, mask, traced, map_x, map_y, pix, cover)


def _finish(r: _Roi, d: np.ndarray, strength: float, step: int) -> LensWarp:
    """Add the traced displacements ``d`` (N, 2) to the identity maps (interpolated when step > 1)."""
    if step <= 1:
        full = np.zeros((*r.mask.shape, 2), np.float32)
        full[r.traced] = (strength * d).astype(np.float32)
    else:
        assert r.cover is not None
        fx, fy = _fine_grid(*r.mask.shape, step)
        full = np.empty((*r.mask.shape, 2), np.float32)
        coarse = np.zeros(r.cover.shape, np.float32)
        for k in range(2):  # single-channel remaps: OpenCV's multi-channel path quantises the weights
            coarse[r.cover] = d[:, k] * strength
            full[..., k] = cv2.remap(coarse, fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    np.add(r.map_x, full[..., 0], out=r.map_x, where=r.traced)
    np.add(r.map_y, full[..., 1], out=r.map_y, where=r.traced)
    return LensWarp(r.x0, r.y0, r.map_x, r.map_y, r.mask)


def lens_warps(lenses: list[LensLike], powers: list[LensPower], depth: FaceDepth, camera: Pinhole,
               strength: float = 1.0, margin_px: int = 0, step: int = 2) -> list[LensWarp | None]:
    """:func:`lens_warp` of several lenses of one face: one compiled call per lens with numba; in the numpy
    form the rays of all lenses land on the face in one batch (per-call overhead dominates there)."""
    if kernels.AVAILABLE:
        return [_lens_warp_compiled(ln, pw, depth, camera, strength, margin_px, step)
                for ln, pw in zip(lenses, powers, strict=True)]
    rois = [_prepare(ln, pw, camera, strength, margin_px, step) for ln, pw in zip(lenses, powers, strict=True)]
    todo = [(r, ln, pw) for r, ln, pw in zip(rois, lenses, powers, strict=True) if r is not None and r.pix is not None]
    moved: list[np.ndarray] = []
    if todo:
        rays = [lens_rays(r.pix, ln, pw, camera) for r, ln, pw in todo]
        pix = np.concatenate([r.pix for r, _, _ in todo])
        src = land_rays(pix, np.concatenate([h for h, _ in rays]), np.concatenate([b for _, b in rays]), depth,
                        camera)
        moved = np.split(src - pix, np.cumsum([len(r.pix) for r, _, _ in todo])[:-1])
    displacements = iter(moved)  # in the order of ``todo``, which keeps the order of ``rois``
    out: list[LensWarp | None] = []
    for r in rois:
        if r is None:
            out.append(None)
        elif r.pix is None:
            out.append(LensWarp(r.x0, r.y0, r.map_x, r.map_y, r.mask))
        else:
            out.append(_finish(r, next(displacements), strength, step))
    return out


def _lens_warp_compiled(lens: LensLike, power: LensPower, depth: FaceDepth, camera: Pinhole, strength: float,
                        margin_px: int, step: int) -> LensWarp | None:
    """One lens's warp through models.optics.kernels.lens_field (the numpy path's _prepare, trace and
    _finish in one compiled call)."""
    roi = outline_roi_mask(lens.outline_px, camera.width, camera.height, margin_px)
    if roi is None:
        return None
    x0, y0, mask, traced = roi
    if strength <= 0.0 or power.is_zero:
        return LensWarp(x0, y0, *_identity_maps(x0, y0, *mask.shape), mask)
    map_x, map_y = kernels.lens_field(traced, x0, y0, step, strength, lens, power.f, power.prism, depth.depth,
                                      depth.scale, camera)
    return LensWarp(x0, y0, map_x, map_y, mask)


def lens_warp(lens: LensLike, power: LensPower, depth: FaceDepth, camera: Pinhole, strength: float = 1.0,
              margin_px: int = 0, step: int = 2) -> LensWarp | None:
    """The remap field over the lens's ROI: s(p) inside the lens, identity outside; None if off-frame.

    ``margin_px`` > 0 also traces a band that wide outside the rim (as if the lens were larger), so
    the inverse can sample the field bilinearly right up to the rim without mixing in the identity.
    ``step`` > 1 traces every step-th pixel and interpolates the displacement bilinearly: the field
    is smooth over a lens (paraxial: linear in h on a plane), so step 2 costs a quarter and changes
    the result by far less than a pixel except right at the face outline seen through the lens.
    """
    return lens_warps([lens], [power], depth, camera, strength, margin_px, step)[0]


def apply_warps(image: np.ndarray, warps: list[LensWarp], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """One cv2.remap per lens ROI, always reading the untouched input; only lens pixels are written."""
    if not warps:
        return image
    out = image.copy()
    for w in warps:
        roi = cv2.remap(image, w.map_x, w.map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
        paste_in_mask(out, w.x0, w.y0, roi, w.mask)
    return out


def paste_in_mask(out: np.ndarray, x0: int, y0: int, roi: np.ndarray, mask: np.ndarray) -> None:
    """out[y0:, x0:][mask] = roi[mask], in place (cv2.copyTo: ~30x faster than a masked numpy copy)."""
    h, w = mask.shape
    view = out[y0:y0 + h, x0:x0 + w]
    if cv2.copyTo(roi, mask.view(np.uint8), view) is not view:  # the binding wrote elsewhere (never seen)
        np.copyto(view, roi, where=mask[..., None] if roi.ndim == 3 else mask)
