"""Compiled loops (numba) for the optics' per-frame hot spots; callers fall back to their numpy forms.

At a 640x480 frame the optics handle a few thousand rays and a few hundred mesh triangles, so the
numpy forms spend most of their time in per-call overhead (tens of small array operations), not in
arithmetic. One compiled pass does the same arithmetic: the rasteriser and the warp inversion bit for
bit, the hole fill to a rounding tie (its sums run in another order); the trace and the lens's warp
field (coarse samples, trace, interpolation) to ~1e-5 px (their lookups are cv2.remap's bilinear in
float32; OpenCV 4 rounded remap positions to 1/32 px, which moves those numpy forms by a few
thousandths of a pixel). Kernels are compiled for fixed signatures when this module is first
imported (about 15 s for all of them on the 2-core dev machine, once: numba caches them on disk, and
scripts/setup.sh triggers it), never in the middle of a frame.
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
    """FaceDepth.sample at one frame pixel, as cv2.remap computes it (INTER_LINEAR, BORDER_REPLICATE) on
    the float32 grid position, with float32 weights."""
    gx = np.float32((x + 0.5) * scale - 0.5)
    gy = np.float32((y + 0.5) * scale - 0.5)
    if not (abs(gx) < 1e6):  # far off the grid, or not a number: the border pixel
        gx = np.float32(-1e6)
    if not (abs(gy) < 1e6):
        gy = np.float32(-1e6)
    fx, fy = np.floor(gx), np.floor(gy)
    ax, ay = np.float32(gx - fx), np.float32(gy - fy)
    h, w = depth.shape
    x0, y0 = int(fx), int(fy)
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


def _lens_field(traced: np.ndarray, x0: int, y0: int, step: int, strength: float, c: np.ndarray, u: np.ndarray,
                v: np.ndarray, n: np.ndarray, f: np.ndarray, prism: np.ndarray, depth: np.ndarray, scale: float,
                cam: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """models.optics.refraction's numpy warp (_prepare -> trace -> _finish) in one call: (map_x, map_y) of
    the ROI at (x0, y0), the traced pixels displaced by strength x the field traced every ``step`` pixels
    (wherever a traced pixel is within ``step``) and interpolated as cv2.remap does (BORDER_REPLICATE)."""
    h, w = traced.shape
    ch, cw = (h + step - 1) // step, (w + step - 1) // step
    reach = step if step > 1 else 0  # the coarse samples a traced pixel's bilinear lookup reads
    cover = np.zeros((ch, cw), np.bool_)
    n_cover = 0
    for cy in range(ch):
        for cx in range(cw):
            yc, xc = cy * step, cx * step
            for yy in range(max(yc - reach, 0), min(yc + reach + 1, h)):
                for xx in range(max(xc - reach, 0), min(xc + reach + 1, w)):
                    if traced[yy, xx]:
                        cover[cy, cx] = True
                        break
                if cover[cy, cx]:
                    break
            n_cover += cover[cy, cx]
    pix = np.empty((n_cover, 2))
    k = 0
    for cy in range(ch):
        for cx in range(cw):
            if cover[cy, cx]:
                pix[k, 0], pix[k, 1] = float(x0 + cx * step), float(y0 + cy * step)
                k += 1
    src = _trace_lens(pix, c, u, v, n, f, prism, depth, scale, cam, iterations)  # one batch: compiled once
    coarse_x = np.zeros((ch, cw), np.float32)
    coarse_y = np.zeros((ch, cw), np.float32)
    k = 0
    for cy in range(ch):
        for cx in range(cw):
            if cover[cy, cx]:
                coarse_x[cy, cx] = np.float32((src[k, 0] - pix[k, 0]) * strength)
                coarse_y[cy, cx] = np.float32((src[k, 1] - pix[k, 1]) * strength)
                k += 1
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    fstep = np.float32(step)
    one = np.float32(1.0)
    for y in range(h):
        gy = np.float32(y) / fstep
        fy = np.floor(gy)
        ay = np.float32(gy - fy)
        ya, yb = min(int(fy), ch - 1), min(int(fy) + 1, ch - 1)
        for x in range(w):
            map_x[y, x], map_y[y, x] = np.float32(x0 + x), np.float32(y0 + y)
            if not traced[y, x]:
                continue
            gx = np.float32(x) / fstep
            fx = np.floor(gx)
            ax = np.float32(gx - fx)
            xa, xb = min(int(fx), cw - 1), min(int(fx) + 1, cw - 1)
            w00, w01, w10, w11 = (one - ax) * (one - ay), ax * (one - ay), (one - ax) * ay, ax * ay
            map_x[y, x] += np.float32(coarse_x[ya, xa] * w00 + coarse_x[ya, xb] * w01 + coarse_x[yb, xa] * w10
                                      + coarse_x[yb, xb] * w11)
            map_y[y, x] += np.float32(coarse_y[ya, xa] * w00 + coarse_y[ya, xb] * w01 + coarse_y[yb, xa] * w10
                                      + coarse_y[yb, xb] * w11)
    return map_x, map_y


def _cell(x: float, y: float) -> tuple[int, int, float, float]:
    """The bilinear cell of (x, y): its top-left pixel and the fractions; diverged or not-a-number
    positions go far off the image (every tap reads 0)."""
    if not (abs(x) < 1e6):
        x = -1e6
    if not (abs(y) < 1e6):
        y = -1e6
    fx, fy = math.floor(x), math.floor(y)
    return int(fx), int(fy), x - fx, y - fy


def _bilinear_grad(a: np.ndarray, b: np.ndarray, x: float,
                   y: float) -> tuple[float, float, float, float, float, float]:
    """models.optics.inversion.bilinear_with_gradient of two same-shape images at one point:
    (a, da/dx, da/dy, b, db/dx, db/dy), taps off the image read 0; the same sums in the same order."""
    x0, y0, ax, ay = _cell(x, y)
    h, w = a.shape
    if x0 >= 0 and x0 + 1 < w and y0 >= 0 and y0 + 1 < h:  # all four taps on the image (nearly always)
        a00, a01, a10, a11 = float(a[y0, x0]), float(a[y0, x0 + 1]), float(a[y0 + 1, x0]), float(a[y0 + 1, x0 + 1])
        b00, b01, b10, b11 = float(b[y0, x0]), float(b[y0, x0 + 1]), float(b[y0 + 1, x0]), float(b[y0 + 1, x0 + 1])
    else:
        i00 = 0 <= y0 < h and 0 <= x0 < w
        i01 = 0 <= y0 < h and 0 <= x0 + 1 < w
        i10 = 0 <= y0 + 1 < h and 0 <= x0 < w
        i11 = 0 <= y0 + 1 < h and 0 <= x0 + 1 < w
        a00, b00 = (float(a[y0, x0]), float(b[y0, x0])) if i00 else (0.0, 0.0)
        a01, b01 = (float(a[y0, x0 + 1]), float(b[y0, x0 + 1])) if i01 else (0.0, 0.0)
        a10, b10 = (float(a[y0 + 1, x0]), float(b[y0 + 1, x0])) if i10 else (0.0, 0.0)
        a11, b11 = (float(a[y0 + 1, x0 + 1]), float(b[y0 + 1, x0 + 1])) if i11 else (0.0, 0.0)
    va = a00 * (1.0 - ax) * (1.0 - ay) + a01 * ax * (1.0 - ay) + a10 * (1.0 - ax) * ay + a11 * ax * ay
    vb = b00 * (1.0 - ax) * (1.0 - ay) + b01 * ax * (1.0 - ay) + b10 * (1.0 - ax) * ay + b11 * ax * ay
    return (va, (1.0 - ay) * (a01 - a00) + ay * (a11 - a10), (1.0 - ax) * (a10 - a00) + ax * (a11 - a01),
            vb, (1.0 - ay) * (b01 - b00) + ay * (b11 - b10), (1.0 - ax) * (b10 - b00) + ax * (b11 - b01))


def _bilinear_value(img: np.ndarray, x: float, y: float) -> float:
    """The value part of :func:`_bilinear_grad` (same sums), for the lens mask."""
    x0, y0, ax, ay = _cell(x, y)
    h, w = img.shape
    v00 = float(img[y0, x0]) if 0 <= y0 < h and 0 <= x0 < w else 0.0
    v01 = float(img[y0, x0 + 1]) if 0 <= y0 < h and 0 <= x0 + 1 < w else 0.0
    v10 = float(img[y0 + 1, x0]) if 0 <= y0 + 1 < h and 0 <= x0 < w else 0.0
    v11 = float(img[y0 + 1, x0 + 1]) if 0 <= y0 + 1 < h and 0 <= x0 + 1 < w else 0.0
    return v00 * (1.0 - ax) * (1.0 - ay) + v01 * ax * (1.0 - ay) + v10 * (1.0 - ax) * ay + v11 * ax * ay


def _invert_lens(dx: np.ndarray, dy: np.ndarray, mask: np.ndarray, iterations: int, tol_px: float,
                 strength: float, det_min: float, stretch_max: float,
                 converged_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """models.optics.inversion.invert_warp_numpy (Newton on p + D(p) = q), for the lens pixels only:
    ROI-relative (map_x, map_y) of q + strength (s⁻¹(q) - q), and the pixels with no preimage.

    A row's pixels advance one iteration together: each pixel's iterations form a serial chain of
    dependent lookups, and interleaving independent chains lets the CPU overlap them. One call site of
    the (inlined) lookup: each one adds seconds to the compile."""
    h, w = mask.shape
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    invalid = np.zeros((h, w), np.bool_)
    maskf = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            maskf[y, x] = 1.0 if mask[y, x] else 0.0
    xs = np.empty(w, np.int64)
    px = np.empty(w)
    py = np.empty(w)
    done = np.empty(w, np.bool_)
    res_x = np.empty(w)  # residual and det(I + grad D) where a pixel converged
    res_y = np.empty(w)
    res_det = np.empty(w)
    converged2 = converged_px * converged_px
    for y in range(h):
        qy = float(y)
        n = 0
        for x in range(w):
            map_x[y, x], map_y[y, x] = np.float32(x), np.float32(y)
            if mask[y, x]:
                xs[n], px[n], py[n], done[n] = x, float(x), qy, False
                n += 1
        for it in range(iterations + 1):  # the last pass only evaluates the result
            final = it == iterations
            for i in range(n):
                if done[i] and not final:
                    continue
                qx = float(xs[i])
                if done[i]:  # converged earlier: p has not moved since, so neither have its residual and det
                    fx, fy, det = res_x[i], res_y[i], res_det[i]
                else:
                    vx, jxx, jxy, vy, jyx, jyy = _bilinear_grad(dx, dy, px[i], py[i])
                    fx, fy = px[i] + vx - qx, py[i] + vy - qy
                    a, b, c, d = 1.0 + jxx, jxy, jyx, 1.0 + jyy
                    det = a * d - b * c
                if final:
                    inside = _bilinear_value(maskf, px[i], py[i]) >= 0.5
                    if inside and fx * fx + fy * fy <= tol_px * tol_px and 1.0 / stretch_max <= det <= stretch_max:
                        map_x[y, xs[i]] = np.float32(qx + strength * (px[i] - qx))
                        map_y[y, xs[i]] = np.float32(qy + strength * (py[i] - qy))
                    else:
                        invalid[y, xs[i]] = True
                elif fx * fx + fy * fy < converged2:
                    done[i] = True
                    res_x[i], res_y[i], res_det[i] = fx, fy, det
                elif det > det_min:
                    inv = 1.0 / det
                    px[i], py[i] = px[i] - (d * fx - b * fy) * inv, py[i] - (a * fy - c * fx) * inv
                else:  # nearly singular: the fixed-point step p <- q - D(p)
                    px[i], py[i] = px[i] - fx, py[i] - fy
    return map_x, map_y, invalid


def _fill_holes(img: np.ndarray, holes: np.ndarray, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """models.optics.hole_fill.fill_holes_numpy: onion-peel layers, each pixel the weighted mean of the
    known pixels around it (the layer before it included). Plain loops only: array expressions
    (astype, nonzero, ~) multiply numba's compile time."""
    h, w, c = img.shape
    out = img.copy()
    val = np.empty((h, w, c), np.float64)
    known = np.empty((h, w), np.bool_)
    n_holes = 0
    for y in range(h):
        for x in range(w):
            known[y, x] = not holes[y, x]
            n_holes += holes[y, x]
            for ch in range(c):
                val[y, x, ch] = img[y, x, ch]
    todo = np.empty((n_holes, 2), np.int64)
    k = 0
    for y in range(h):
        for x in range(w):
            if holes[y, x]:
                todo[k, 0], todo[k, 1] = y, x
                k += 1
    layer = np.empty(n_holes, np.int64)
    acc = np.empty((n_holes, c), np.float64)
    alive = np.ones(n_holes, np.bool_)
    left = n_holes
    while left > 0:
        n = 0
        for i in range(n_holes):  # this layer: holes with a known 8-neighbour
            if not alive[i]:
                continue
            y, x = todo[i, 0], todo[i, 1]
            touch = False
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    touch = touch or known[yy, xx]
            if touch:
                layer[n] = i
                n += 1
        if n == 0:
            break  # holes with no known pixel anywhere around them stay as they are
        for j in range(n):
            y, x = todo[layer[j], 0], todo[layer[j], 1]
            wsum = 0.0
            for ch in range(c):
                acc[j, ch] = 0.0
            for o in range(offsets.shape[0]):
                yy, xx = y + offsets[o, 0], x + offsets[o, 1]
                if 0 <= yy < h and 0 <= xx < w and known[yy, xx]:
                    wsum += weights[o]
                    for ch in range(c):
                        acc[j, ch] += weights[o] * val[yy, xx, ch]
            for ch in range(c):
                acc[j, ch] /= wsum
        for j in range(n):
            i = layer[j]
            y, x = todo[i, 0], todo[i, 1]
            for ch in range(c):
                val[y, x, ch] = acc[j, ch]
                out[y, x, ch] = np.uint8(min(max(np.rint(acc[j, ch]), 0.0), 255.0))
            known[y, x] = True
            alive[i] = False
        left -= n
    return out


if njit is not None:
    try:
        _rasterize_depth = njit("float32[:, :](float64[:, :], float64[:], int64[:, :], int64, int64)",
                                cache=True, nogil=True)(_rasterize_depth)
        _sample = njit(cache=True, nogil=True, inline="always")(_sample)
        _trace_lens = njit("float64[:, :](float64[:, :], float64[:], float64[:], float64[:], float64[:], "
                           "float64[:, :], float64[:], float32[:, :], float64, float64[:], int64)",
                           cache=True, nogil=True)(_trace_lens)
        _lens_field = njit("Tuple((float32[:, ::1], float32[:, ::1]))(boolean[:, ::1], int64, int64, int64, float64, "
                           "float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1], float64[::1], "
                           "float32[:, ::1], float64, float64[::1], int64)", cache=True, nogil=True)(_lens_field)
        _cell = njit(cache=True, nogil=True, inline="always")(_cell)
        _bilinear_grad = njit(cache=True, nogil=True, inline="always")(_bilinear_grad)
        _bilinear_value = njit(cache=True, nogil=True)(_bilinear_value)
        _invert_lens = njit("Tuple((float32[:, ::1], float32[:, ::1], boolean[:, ::1]))(float32[:, ::1], "
                            "float32[:, ::1], boolean[:, ::1], int64, float64, float64, float64, float64, float64)",
                            cache=True, nogil=True)(_invert_lens)
        _fill_holes = njit("uint8[:, :, ::1](uint8[:, :, ::1], boolean[:, ::1], int64[:, ::1], float64[::1])",
                           cache=True, nogil=True)(_fill_holes)
    except Exception as e:  # a broken numba install must not take the optics down
        log.warning("numba kernels unavailable (%s): the optics use their numpy forms", e)
        AVAILABLE = False


def rasterize_depth(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Z-buffered depth of a triangle mesh (see models.optics.face_depth.rasterize_depth); needs AVAILABLE."""
    return _rasterize_depth(np.ascontiguousarray(points_px[:, :2], np.float64), np.ascontiguousarray(z, np.float64),
                            np.ascontiguousarray(triangles, np.int64), int(shape[0]), int(shape[1]))


def _lens_args(lens: object, f: np.ndarray, prism: np.ndarray, depth: np.ndarray, scale: float,
               camera: object) -> tuple:
    def vec(a: object) -> np.ndarray:
        return np.ascontiguousarray(a, np.float64).reshape(-1)

    cam = np.array([camera.fx, camera.fy, camera.cx, camera.cy], np.float64)  # type: ignore[attr-defined]
    return (vec(lens.optical_center_cam_mm), vec(lens.u_cam), vec(lens.v_cam), vec(lens.normal_cam),  # type: ignore[attr-defined]
            np.ascontiguousarray(f, np.float64), vec(prism), np.ascontiguousarray(depth, np.float32), float(scale), cam)


def trace_lens(pixels: np.ndarray, lens: object, f: np.ndarray, prism: np.ndarray, depth: np.ndarray, scale: float,
               camera: object, iterations: int = 3) -> np.ndarray:
    """(N, 2) source pixels through one lens (see models.optics.refraction.trace_lens); needs AVAILABLE."""
    return _trace_lens(np.ascontiguousarray(pixels, np.float64), *_lens_args(lens, f, prism, depth, scale, camera),
                       int(iterations))


def lens_field(traced: np.ndarray, x0: int, y0: int, step: int, strength: float, lens: object, f: np.ndarray,
               prism: np.ndarray, depth: np.ndarray, scale: float, camera: object,
               iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) of one lens's ROI (see models.optics.refraction.lens_warps); needs AVAILABLE."""
    return _lens_field(np.ascontiguousarray(traced, np.bool_), int(x0), int(y0), int(step), float(strength),
                       *_lens_args(lens, f, prism, depth, scale, camera), int(iterations))


def invert_lens(dx: np.ndarray, dy: np.ndarray, mask: np.ndarray, iterations: int, tol_px: float, strength: float,
                det_min: float, stretch_max: float, converged_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROI-relative inverse maps and no-preimage pixels (see models.optics.inversion); needs AVAILABLE."""
    return _invert_lens(np.ascontiguousarray(dx, np.float32), np.ascontiguousarray(dy, np.float32),
                        np.ascontiguousarray(mask, np.bool_), int(iterations), float(tol_px), float(strength),
                        float(det_min), float(stretch_max), float(converged_px))


def fill_holes(img: np.ndarray, holes: np.ndarray, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(h, w, c) uint8 image with ``holes`` filled (see models.optics.hole_fill); needs AVAILABLE."""
    return _fill_holes(np.ascontiguousarray(img, np.uint8), np.ascontiguousarray(holes, np.bool_),
                       np.array(offsets, np.int64), np.array(weights, np.float64))  # writable copies: numba's signature
