"""Parametric lens outlines (pure functions, millimetres).

Every outline is given in the lens's own 2-D frame: origin at the boxing centre (the centre of the
lens's bounding box, as in the boxing system of ISO 8624), +x towards the TEMPLE, +y up (towards
the brow). That is the subject's LEFT lens as seen in the image (image right); the right lens is
its mirror image (x -> -x). Outlines are counter-clockwise in these y-up axes, closed implicitly
(the last point connects to the first), resampled to equal arc length, and scaled so their bounding
box is exactly A (lens width) by B (lens height).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

# Shape parameters: name -> (default, min, max). Lengths in mm, exponents unitless.
SHAPE_PARAMS: dict[str, dict[str, tuple[float, float, float]]] = {
    "round": {"exponent": (2.0, 1.6, 3.0)},
    "oval": {"exponent": (2.3, 1.6, 3.5)},
    "rectangle": {"corner_radius_mm": (5.0, 0.0, 20.0)},
    "aviator": {"exponent": (2.2, 1.8, 4.0), "droop_mm": (8.0, 0.0, 15.0)},
    "cat-eye": {"exponent": (2.4, 1.8, 5.0), "lift_mm": (8.0, 0.0, 15.0)},
    # browline: lens shape like a soft trapezoid; the thick upper rim is a frame property (brow_mm).
    "browline": {"corner_radius_mm": (6.0, 0.0, 20.0), "taper_mm": (3.0, 0.0, 10.0), "brow_mm": (5.0, 1.0, 12.0)},
}
SHAPES = tuple(SHAPE_PARAMS)


def resolved_params(shape: str, params: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults for ``shape`` updated with ``params`` (unknown names and out-of-range values raise)."""
    if shape not in SHAPE_PARAMS:
        raise ValueError(f"unknown frame shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = SHAPE_PARAMS[shape]
    out = {k: v[0] for k, v in spec.items()}
    for k, v in (params or {}).items():
        if k not in spec:
            raise ValueError(f"shape {shape!r} has no parameter {k!r}; known: {', '.join(spec)}")
        lo, hi = spec[k][1], spec[k][2]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo <= float(v) <= hi):
            raise ValueError(f"shape {shape!r}: {k} must be a number in [{lo}, {hi}], got {v!r}")
        out[k] = float(v)
    return out


def superellipse(a: float, b: float, exponent: float, n: int) -> np.ndarray:
    """(n, 2) points of |x/a|^e + |y/b|^e = 1, counter-clockwise from +x."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = 2.0 / exponent
    return np.stack([a * np.sign(c) * np.abs(c) ** p, b * np.sign(s) * np.abs(s) ** p], axis=1)


def rounded_rectangle(a: float, b: float, radius: float, n: int) -> np.ndarray:
    """(n, 2) points of a half-width ``a``, half-height ``b`` rectangle with round corners."""
    r = min(max(radius, 1e-3), a, b)
    per = max(n // 4, 8)
    pts = []
    for cx, cy, start in ((a - r, b - r, 0.0), (-a + r, b - r, 90.0), (-a + r, -b + r, 180.0), (a - r, -b + r, 270.0)):
        ang = np.radians(start + np.linspace(0.0, 90.0, per))
        pts.append(np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1))
    return np.concatenate(pts)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _round(a: float, b: float, p: dict[str, float], n: int) -> np.ndarray:
    return superellipse(a, b, p["exponent"], n)


def _rectangle(a: float, b: float, p: dict[str, float], n: int) -> np.ndarray:
    return rounded_rectangle(a, b, p["corner_radius_mm"], n)


def _aviator(a: float, b: float, p: dict[str, float], n: int) -> np.ndarray:
    # Teardrop: a flatter top (higher exponent) and a rounder lower half that sags most on the
    # nasal side (x < 0), leaning towards the nose.
    top = superellipse(a, b, p["exponent"] + 1.0, n)
    q = superellipse(a, b, p["exponent"], n)
    q[q[:, 1] > 0] = top[q[:, 1] > 0]
    below = _smoothstep(-q[:, 1] / b)
    nasal = _smoothstep((a - q[:, 0]) / (1.6 * a))
    q[:, 1] -= p["droop_mm"] * below * nasal
    q[:, 0] -= 0.25 * p["droop_mm"] * below * nasal
    return q


def _cat_eye(a: float, b: float, p: dict[str, float], n: int) -> np.ndarray:
    # The upper temporal corner sweeps up and out into a wing; the nasal-lower part stays round.
    q = superellipse(a, b, p["exponent"], n)
    upper = _smoothstep(q[:, 1] / b + 0.4)
    temporal = _smoothstep((q[:, 0] / a + 0.1) / 1.1) ** 2
    q[:, 1] += p["lift_mm"] * upper * temporal
    q[:, 0] += 0.45 * p["lift_mm"] * upper * temporal
    return q


def _browline(a: float, b: float, p: dict[str, float], n: int) -> np.ndarray:
    # Wider at the top than the bottom (clubmaster-like): taper the lower half inwards.
    q = rounded_rectangle(a, b, p["corner_radius_mm"], n)
    below = _smoothstep(-q[:, 1] / b)
    q[:, 0] -= np.sign(q[:, 0]) * p["taper_mm"] * below * np.abs(q[:, 0]) / a
    return q


_BUILDERS: dict[str, Callable[[float, float, dict[str, float], int], np.ndarray]] = {
    "round": _round,
    "oval": _round,
    "rectangle": _rectangle,
    "aviator": _aviator,
    "cat-eye": _cat_eye,
    "browline": _browline,
}


def resample_closed(points: np.ndarray, n: int) -> np.ndarray:
    """Resample a closed polyline to ``n`` points equally spaced along its perimeter."""
    p = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(np.vstack([p, p[:1]]), axis=0), axis=1)
    keep = seg > 1e-9  # duplicated vertices would give zero-length segments
    p, seg = p[keep], seg[keep]
    s = np.concatenate([[0.0], np.cumsum(seg)])
    target = np.linspace(0.0, s[-1], n, endpoint=False)
    closed = np.vstack([p, p[:1]])
    return np.stack([np.interp(target, s, closed[:, 0]), np.interp(target, s, closed[:, 1])], axis=1)


def fit_box(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Scale and shift so the bounding box is exactly ``width`` x ``height``, centred on the origin."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2.0) * (np.array([width, height]) / (hi - lo))


def signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def lens_outline_mm(shape: str, width: float, height: float, params: Mapping[str, float] | None = None,
                    n_points: int = 128) -> np.ndarray:
    """(n_points, 2) float64 inner-rim outline of one lens (see the module docstring for the axes)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"lens size must be positive, got {width} x {height}")
    if n_points < 16:
        raise ValueError(f"n_points must be >= 16, got {n_points}")
    p = resolved_params(shape, params)
    raw = _BUILDERS[shape](width / 2.0, height / 2.0, p, 4 * n_points)
    out = fit_box(resample_closed(fit_box(raw, width, height), n_points), width, height)
    if signed_area(out) < 0:
        out = out[::-1].copy()
    # Start at the temporal-most point so every outline has the same phase (useful for blending).
    return np.roll(out, -int(np.argmax(out[:, 0])), axis=0)


def outline_normals(points: np.ndarray) -> np.ndarray:
    """(N, 2) outward unit normals of a counter-clockwise closed polygon (central differences)."""
    tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    return normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)


def offset_outline(points: np.ndarray, distance: np.ndarray | float) -> np.ndarray:
    """Move every vertex outwards along its normal by ``distance`` (scalar or per-vertex, mm)."""
    d = np.broadcast_to(np.asarray(distance, dtype=np.float64), (len(points),))
    return points + outline_normals(points) * d[:, None]
