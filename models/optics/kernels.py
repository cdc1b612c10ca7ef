"""Compiled loops (numba) for the optics' per-frame hot spots; callers fall back to their numpy forms.

At a 640x480 frame the optics handle a few thousand rays and a few hundred mesh triangles, so the
numpy forms spend most of their time in per-call overhead (tens of small array operations), not in
arithmetic. One compiled pass does the same arithmetic: the rasteriser bit for bit, the trace to ~0.002 px
(its depth lookups round as cv2.remap's do, in float32). Kernels are compiled for
fixed signatures when this module is first imported (about a second per kernel, cached on disk by
numba afterwards), never in the middle of a frame.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

try:
    from numba import njit
except ImportError:  # optional speed-up: the numpy forms compute the same
    njit = None

AVAILABLE = njit is not None
EPS = -1e-9  # barycentric tolerance: pixels on a shared edge belong to both triangles


def _rasterize_depth(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray, h: int, w: int) -> np.ndarray:
    """models.optics.face_depth.rasterize_depth, one triangle at a time over its bounding box."""
    depth = np.full((h, w), np.inf, dtype=np.float64)
    for t in range(triangles.shape[0]):
        i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        x0, x1, x2 = points_px[i0, 0], points_px[i1, 0], points_px[i2, 0]
        y0, y1, y2 = points_px[i0, 1], points_px[i1, 1], points_px[i2, 1]
        den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(den) <= 1e-12:  # degenerate (zero-area) triangles cover nothing
            continue
        lo_x = max(math.ceil(min(min(x0, x1), x2)), 0)
        lo_y = max(math.ceil(min(min(y0, y1), y2)), 0)
        hi_x = min(math.floor(max(max(x0, x1), x2)), w - 1)
        hi_y = min(math.floor(max(max(y0, y1), y2)), h - 1)
        if hi_x < lo_x or hi_y < lo_y:
            continue
        iz0, iz1, iz2 = 1.0 / z[i0], 1.0 / z[i1], 1.0 / z[i2]
        # Same affine coefficients, in the same order, as the numpy form.
        a0, b0 = (y1 - y2) / den, (x2 - x1) / den
        a1, b1 = (y2 - y0) / den, (x0 - x2) / den
        c0 = -(a0 * x2 + b0 * y2)
        c1 = -(a1 * x2 + b1 * y2)
        d0, d1 = iz0 - iz2, iz1 - iz2
        ai, bi, ci = a0 * d0 + a1 * d1, b0 * d0 + b1 * d1, c0 * d0 + c1 * d1 + iz2
        for py in range(lo_y, hi_y + 1):
            fy = float(py)
            for px in range(lo_x, hi_x + 1):
                fx = float(px)
                l0 = a0 * fx + b0 * fy + c0
                l1 = a1 * fx + b1 * fy + c1
                if l0 >= EPS and l1 >= EPS and 1.0 - l0 - l1 >= EPS:
                    d = 1.0 / (ai * fx + bi * fy + ci)
                    if d < depth[py, px]:
                        depth[py, px] = d
    return depth.astype(np.float32)


def _sample(depth: np.ndarray, scale: float, x: float, y: float) -> float:
    """FaceDepth.sample at one frame pixel, as cv2.remap computes it (INTER_LINEAR, BORDER_REPLICATE):
    the float32 grid position quantised to 1/32 pixel, float32 weights."""
    gx = np.float32((x + 0.5) * scale - 0.5)
    gy = np.float32((y + 0.5) * scale - 0.5)
    if not (abs(gx) < 1e6):  # far off the grid, or not a number: the border pixel
        gx = np.float32(-1e6)
    if not (abs(gy) < 1e6):
        gy = np.float32(-1e6)
    ix = int(np.rint(gx * np.float32(32.0)))
    iy = int(np.rint(gy * np.float32(32.0)))
    ax = np.float32((ix & 31) / 32.0)
    ay = np.float32((iy & 31) / 32.0)
    h, w = depth.shape
    x0, y0 = ix >> 5, iy >> 5
    xa, xb = min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1)
    ya, yb = min(max(y0, 0), h - 1), min(max(y0 + 1, 0), h - 1)
    one = np.float32(1.0)
    v = (depth[ya, xa] * ((one - ax) * (one - ay)) + depth[ya, xb] * (ax * (one - ay))
         + depth[yb, xa] * ((one - ax) * ay) + depth[yb, xb] * (ax * ay))
    return float(v)


def _trace_lens(pixels: np.ndarray, c: np.ndarray, u: np.ndarray, v: np.ndarray, n: np.ndarray, f: np.ndarray,
                prism: np.ndarray, depth: np.ndarray, scale: float, cam: np.ndarray, iterations: int) -> np.ndarray:
    """models.optics.refraction.trace_lens (camera ray -> lens plane -> Prentice bend -> face surface ->
    source pixel), one ray at a time; ``cam`` is (fx, fy, cx, cy)."""
    fx, fy, cx, cy = cam[0], cam[1], cam[2], cam[3]
    cn = c[0] * n[0] + c[1] * n[1] + c[2] * n[2]
    out = np.empty((pixels.shape[0], 2))
    for i in range(pixels.shape[0]):
        qx, qy = pixels[i, 0], pixels[i, 1]
        rx, ry = (qx - cx) / fx, (qy - cy) / fy  # camera ray, z = 1
        t = cn / (rx * n[0] + ry * n[1] + n[2])
        hx, hy, hz = rx * t, ry * t, t  # where it crosses the lens plane
        ox, oy, oz = hx - c[0], hy - c[1], hz - c[2]
        h0 = ox * u[0] + oy * u[1] + oz * u[2]
        h1 = ox * v[0] + oy * v[1] + oz * v[2]
        along = -(rx * n[0] + ry * n[1] + n[2])  # along the lens axis w = -n
        s0 = (rx * u[0] + ry * u[1] + u[2]) / along - (h0 * f[0, 0] + h1 * f[0, 1]) / 1000.0 + prism[0]
        s1 = (rx * v[0] + ry * v[1] + v[2]) / along - (h0 * f[1, 0] + h1 * f[1, 1]) / 1000.0 + prism[1]
        dx = -n[0] + s0 * u[0] + s1 * v[0]
        dy = -n[1] + s0 * u[1] + s1 * v[1]
        dz = -n[2] + s0 * u[2] + s1 * v[2]
        # Fixed point on the ray parameter: the depth under the current point sets the next one.
        z = _sample(depth, scale, cx + fx * hx / hz, cy + fy * hy / hz)
        for _ in range(iterations):
            t = (z - hz) / dz
            px, py, pz = hx + t * dx, hy + t * dy, hz + t * dz
            z = _sample(depth, scale, cx + fx * px / pz, cy + fy * py / pz)
        t = (z - hz) / dz
        px, py, pz = hx + t * dx, hy + t * dy, hz + t * dz
        if _sample(depth, scale, qx, qy) < hz:  # the face is in front of the lens here: no refraction
            out[i, 0], out[i, 1] = qx, qy
        else:
            out[i, 0], out[i, 1] = cx + fx * px / pz, cy + fy * py / pz
    return out


if njit is not None:
    try:
        _rasterize_depth = njit("float32[:, :](float64[:, :], float64[:], int64[:, :], int64, int64)",
                                cache=True, nogil=True)(_rasterize_depth)
        _sample = njit(cache=True, nogil=True, inline="always")(_sample)
        _trace_lens = njit("float64[:, :](float64[:, :], float64[:], float64[:], float64[:], float64[:], "
                           "float64[:, :], float64[:], float32[:, :], float64, float64[:], int64)",
                           cache=True, nogil=True)(_trace_lens)
    except Exception as e:  # a broken numba install must not take the optics down
        log.warning("numba kernels unavailable (%s): the optics use their numpy forms", e)
        AVAILABLE = False


def rasterize_depth(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Z-buffered depth of a triangle mesh (see models.optics.face_depth.rasterize_depth); needs AVAILABLE."""
    return _rasterize_depth(np.ascontiguousarray(points_px[:, :2], np.float64), np.ascontiguousarray(z, np.float64),
                            np.ascontiguousarray(triangles, np.int64), int(shape[0]), int(shape[1]))


def trace_lens(pixels: np.ndarray, lens: object, f: np.ndarray, prism: np.ndarray, depth: np.ndarray, scale: float,
               camera: object, iterations: int = 3) -> np.ndarray:
    """(N, 2) source pixels through one lens (see models.optics.refraction.trace_lens); needs AVAILABLE."""
    def vec(a: object) -> np.ndarray:
        return np.ascontiguousarray(a, np.float64).reshape(-1)

    cam = np.array([camera.fx, camera.fy, camera.cx, camera.cy], np.float64)  # type: ignore[attr-defined]
    return _trace_lens(np.ascontiguousarray(pixels, np.float64), vec(lens.optical_center_cam_mm),  # type: ignore[attr-defined]
                       vec(lens.u_cam), vec(lens.v_cam), vec(lens.normal_cam),  # type: ignore[attr-defined]
                       np.ascontiguousarray(f, np.float64), vec(prism), np.ascontiguousarray(depth, np.float32),
                       float(scale), cam, int(iterations))
