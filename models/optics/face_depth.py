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
    perspective. Vectorised over (triangle, candidate pixel) pairs: no Python loop per triangle.
    """
    h, w = shape
    p = points_px[triangles]  # (T, 3, 2)
    lo = np.maximum(np.ceil(p.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(p.max(axis=1)).astype(np.int64), [w - 1, h - 1])
    size = np.maximum(hi - lo + 1, 0)
    counts = size[:, 0] * size[:, 1]
    depth = np.full(h * w, np.inf, dtype=np.float64)
    total = int(counts.sum())
    if total == 0:
        return depth.reshape(h, w).astype(np.float32)
    tid = np.repeat(np.arange(len(triangles)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    px = lo[tid, 0] + k % size[tid, 0]
    py = lo[tid, 1] + k // size[tid, 0]
    a, b, c = p[tid, 0], p[tid, 1], p[tid, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    l0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / den
    l1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / den
    l2 = 1.0 - l0 - l1
    eps = -1e-9
    inside = ok & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    inv_z = 1.0 / z[triangles]  # (T, 3)
    iz = l0 * inv_z[tid, 0] + l1 * inv_z[tid, 1] + l2 * inv_z[tid, 2]
    np.minimum.at(depth, (py * w + px)[inside], 1.0 / iz[inside])
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
            tp = grid[tris]
            lo, hi = tp.min(axis=1), tp.max(axis=1)
            tris = tris[(hi[:, 0] >= x0) & (lo[:, 0] <= x1) & (hi[:, 1] >= y0) & (lo[:, 1] <= y1)]
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
