"""Depth of the face surface seen by the camera, from the landmark mesh, and ray casting into it.

The metric landmarks (models.face3d) are triangulated with mediapipe's tessellation (plus fans
closing the eye openings and the mouth) and rasterised at low resolution with a z-buffer (camera z,
mm, per low-res pixel). Outside the face the surface falls back to a fronto-parallel plane at the
depth of the temples, so a ray bent past the cheek lands on "background at ear depth" and the face
outline seen through a minus lens is pulled in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from models.face3d import landmarks_cam_mm
from models.optics import kernels
from stream.camera import Pinhole
from stream.face import LEFT_TEMPLE, RIGHT_TEMPLE, Face

# Inner lip contour (mouth opening), mediapipe indices in order around the opening.
INNER_LIPS = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


def _eye_loop(edges: list[tuple[int, int]]) -> list[int]:
    """mediapipe lists an eye as two corner-to-corner chains (lower lid, upper lid): join them into a loop."""
    half = len(edges) // 2
    lower = [edges[0][0]] + [e[1] for e in edges[:half]]
    upper = [edges[half][0]] + [e[1] for e in edges[half:]]
    if lower[0] != upper[0] or lower[-1] != upper[-1]:
        raise RuntimeError("unexpected mediapipe eye contour layout")
    return lower + upper[-2:0:-1]


@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """(T, 3) int32 triangles: mediapipe's face tessellation (its edges come in closed triples) plus
    fans closing the eye openings (around the iris centres) and the mouth, which it leaves open."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    edges = np.array([(c.start, c.end) for c in C.FACE_LANDMARKS_TESSELATION], dtype=np.int32)
    tri = edges[: len(edges) // 3 * 3].reshape(-1, 3, 2)
    if not np.array_equal(tri[:, 0, 1], tri[:, 1, 0]) or not np.array_equal(tri[:, 1, 1], tri[:, 2, 0]):
        raise RuntimeError("mediapipe tessellation is not a list of edge triples")
    extra = []
    for eye, center in ((C.FACE_LANDMARKS_RIGHT_EYE, 468), (C.FACE_LANDMARKS_LEFT_EYE, 473)):
        loop = _eye_loop([(c.start, c.end) for c in eye])
        extra += [(center, a, b) for a, b in zip(loop, loop[1:] + loop[:1], strict=True)]
    extra += [(INNER_LIPS[0], a, b) for a, b in itertools.pairwise(INNER_LIPS[1:])]
    return np.ascontiguousarray(np.vstack([tri[:, :, 0], np.array(extra, np.int32)]))


def rasterize_depth(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Z-buffered depth (nearest surface) of a triangle mesh; ``inf`` where no triangle covers a pixel.

    ``points_px`` (V, 2) are vertex positions in the raster's pixel units (pixel centres at integers),
    ``z`` (V,) their depths. Depth is interpolated as 1/z, which is exact for planar triangles under
    perspective. Compiled (models.optics.kernels) where numba is installed, else :func:`rasterize_depth_numpy`.
    """
    if kernels.AVAILABLE:
        return kernels.rasterize_depth(points_px, z, triangles, shape)
    return rasterize_depth_numpy(points_px, z, triangles, shape)


def rasterize_depth_numpy(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray,
                          shape: tuple[int, int]) -> np.ndarray:
    """:func:`rasterize_depth` vectorised over (triangle, candidate pixel) pairs: no Python loop per triangle.
    The barycentric coordinates and 1/z are affine in the pixel position, so each triangle's
    coefficients are set up once and each pair costs one gather and three multiply-adds.
    """
    h, w = shape
    x = points_px[:, 0][triangles]  # (T, 3)
    y = points_px[:, 1][triangles]
    inv_z = 1.0 / z[triangles]
    depth = np.full(h * w, np.inf, dtype=np.float64)
    den = (y[:, 1] - y[:, 2]) * (x[:, 0] - x[:, 2]) + (x[:, 2] - x[:, 1]) * (y[:, 0] - y[:, 2])
    keep = np.abs(den) > 1e-12  # degenerate (zero-area) triangles cover nothing
    x, y, inv_z, den = x[keep], y[keep], inv_z[keep], den[keep]
    # Column-wise min/max: numpy's axis=1 reductions over 3 elements are several times slower.
    lo_x = np.maximum(np.ceil(np.minimum(np.minimum(x[:, 0], x[:, 1]), x[:, 2])), 0).astype(np.int64)
    lo_y = np.maximum(np.ceil(np.minimum(np.minimum(y[:, 0], y[:, 1]), y[:, 2])), 0).astype(np.int64)
    hi_x = np.minimum(np.floor(np.maximum(np.maximum(x[:, 0], x[:, 1]), x[:, 2])), w - 1).astype(np.int64)
    hi_y = np.minimum(np.floor(np.maximum(np.maximum(y[:, 0], y[:, 1]), y[:, 2])), h - 1).astype(np.int64)
    size_x = np.maximum(hi_x - lo_x + 1, 0)
    counts = size_x * np.maximum(hi_y - lo_y + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return depth.reshape(h, w).astype(np.float32)
    # l0 = a0 x + b0 y + c0, l1 likewise; l2 = 1 - l0 - l1; 1/z = l0/z0 + l1/z1 + l2/z2.
    a0, b0 = (y[:, 1] - y[:, 2]) / den, (x[:, 2] - x[:, 1]) / den
    a1, b1 = (y[:, 2] - y[:, 0]) / den, (x[:, 0] - x[:, 2]) / den
    c0 = -(a0 * x[:, 2] + b0 * y[:, 2])
    c1 = -(a1 * x[:, 2] + b1 * y[:, 2])
    d0, d1 = inv_z[:, 0] - inv_z[:, 2], inv_z[:, 1] - inv_z[:, 2]
    coef = np.stack([a0, b0, c0, a1, b1, c1, a0 * d0 + a1 * d1, b0 * d0 + b1 * d1, c0 * d0 + c1 * d1 + inv_z[:, 2],
                     lo_x, lo_y, size_x], axis=1)
    starts = np.cumsum(counts) - counts
    tid = np.repeat(np.arange(len(counts)), counts)
    cf = coef[tid]  # (N, 12): one gather for everything per pair
    k = np.arange(total) - starts[tid]
    row, col = np.divmod(k, cf[:, 11].astype(np.int64))
    px = cf[:, 9] + col
    py = cf[:, 10] + row
    l0 = cf[:, 0] * px + cf[:, 1] * py + cf[:, 2]
    l1 = cf[:, 3] * px + cf[:, 4] * py + cf[:, 5]
    iz = cf[:, 6] * px + cf[:, 7] * py + cf[:, 8]
    eps = -1e-9
    inside = (l0 >= eps) & (l1 >= eps) & (1.0 - l0 - l1 >= eps)
    np.minimum.at(depth, (py * w + px).astype(np.int64)[inside], 1.0 / iz[inside])
    return depth.reshape(h, w).astype(np.float32)


@dataclass(frozen=True)
class FaceDepth:
    """Camera z (mm) of the visible surface on a low-res grid: pixel (x, y) of the frame maps to
    grid ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5)."""

    depth: np.ndarray  # (h, w) float32 mm
    scale: float
    camera: Pinhole
    background_mm: float

    @staticmethod
    def from_face(face: Face, camera: Pinhole, scale: float = 0.25, metric_scale: float = 1.0,
                  background_offset_mm: float = 0.0,
                  region_px: tuple[float, float, float, float] | None = None) -> FaceDepth:
        """Depth of ``face``. ``metric_scale`` multiplies the metric landmarks (as the glasses placement
        does when it is given a PD) so the lens and the face stay one consistent 3-D scene.
        ``region_px`` (x0, y0, x1, y1): only triangles reaching it are rasterised (the lenses' ROIs
        plus the largest ray deviation are all the optics ever samples); elsewhere depth is background.
        """
        pts = landmarks_cam_mm(face, camera) * metric_scale
        px = camera.project(pts)
        gh, gw = max(2, round(camera.height * scale)), max(2, round(camera.width * scale))
        grid = (px + 0.5) * scale - 0.5
        tris = mesh_triangles()
        if region_px is not None:
            x0, y0, x1, y1 = ((np.asarray(region_px, np.float64) + 0.5) * scale - 0.5)
            tx, ty = grid[:, 0][tris], grid[:, 1][tris]
            tris = tris[(np.maximum(np.maximum(tx[:, 0], tx[:, 1]), tx[:, 2]) >= x0)
                        & (np.minimum(np.minimum(tx[:, 0], tx[:, 1]), tx[:, 2]) <= x1)
                        & (np.maximum(np.maximum(ty[:, 0], ty[:, 1]), ty[:, 2]) >= y0)
                        & (np.minimum(np.minimum(ty[:, 0], ty[:, 1]), ty[:, 2]) <= y1)]
        depth = rasterize_depth(grid, pts[:, 2], tris, (gh, gw))
        background = float(np.mean(pts[[RIGHT_TEMPLE, LEFT_TEMPLE], 2])) + background_offset_mm
        # The mesh (with eyes and mouth closed) covers the whole face: anything uncovered is beyond it.
        depth[~np.isfinite(depth)] = background
        return FaceDepth(depth=depth, scale=scale, camera=camera, background_mm=background)

    def sample(self, pixels: np.ndarray) -> np.ndarray:
        """Bilinear depth at frame pixels (N, 2); clamped at the grid border (cv2.remap: ~5x numpy)."""
        g = ((np.asarray(pixels) + 0.5) * self.scale - 0.5).astype(np.float32).reshape(-1, 1, 2)
        d = cv2.remap(self.depth, g[..., 0], g[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return d.reshape(-1).astype(np.float64)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray, iterations: int = 3) -> np.ndarray:
        """Where rays ``origins + t·dirs`` (N, 3, camera space, dirs with z > 0) meet the surface.

        Fixed-point on t: the depth under the current point's projection sets the next t. Rays leave
        the lens nearly along the camera ray, so this converges in a few steps except at depth
        discontinuities (the face outline), where it settles on one side of the edge.
        """
        o = np.asarray(origins, np.float64)
        d = np.asarray(dirs, np.float64)
        z = self.sample(self.camera.project(o))
        for _ in range(iterations):
            t = (z - o[:, 2]) / d[:, 2]
            x = o + t[:, None] * d
            z = self.sample(self.camera.project(x))
        t = (z - o[:, 2]) / d[:, 2]
        return o + t[:, None] * d
