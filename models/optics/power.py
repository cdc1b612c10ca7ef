"""Dioptric power matrix and prism vector of a thin spectacle lens in its (u, v) frame (pure numpy).

u is the frame's horizontal (towards image right for a frontal face), v points up. A ray crossing
the lens at offset h (mm) from the optical centre is deviated by ``-F @ h / 1000`` radians
(Prentice's rule: Δ = h[cm]·F, a plus lens bends rays towards its axis) plus ``prism / 100`` radians
towards the prism base.
"""

from __future__ import annotations

import math

import numpy as np

from models.optics.prescription import EyeRx


def power_matrix(sphere: float, cyl: float, axis_deg: float | None) -> np.ndarray:
    """2x2 symmetric power matrix F = S·I + C·[[sin²θ, −sinθcosθ], [−sinθcosθ, cos²θ]].

    The cylinder term is C·n nᵀ with n = (−sinθ, cosθ), the meridian at 90° to the axis: a lens
    with axis θ has power S along (cosθ, sinθ) and S + C across it.
    """
    f = np.eye(2) * float(sphere)
    if cyl:
        t = math.radians(float(axis_deg if axis_deg is not None else 0.0))
        s, c = math.sin(t), math.cos(t)
        f = f + float(cyl) * np.array([[s * s, -s * c], [-s * c, c * c]])
    return f


def prism_vector(prism: float, base_deg: float) -> np.ndarray:
    """(2,) ray deviation in radians towards the base, in the (u, v) frame."""
    b = math.radians(base_deg)
    return np.array([math.cos(b), math.sin(b)]) * (float(prism) / 100.0)


def eye_power(eye: EyeRx) -> tuple[np.ndarray, np.ndarray]:
    """(F, prism deviation) of one eye's lens."""
    return power_matrix(eye.sphere, eye.cyl, eye.axis), prism_vector(eye.prism, eye.prism_base_deg)


def meridian_power(f: np.ndarray, angle_deg: float) -> float:
    """Curvature power of ``f`` along the meridian at ``angle_deg`` (u towards v)."""
    t = math.radians(angle_deg)
    d = np.array([math.cos(t), math.sin(t)])
    return float(d @ f @ d)


def prentice_deviation(f: np.ndarray, prism: np.ndarray, h_mm: np.ndarray) -> np.ndarray:
    """(..., 2) deviation in radians for lens offsets ``h_mm`` (..., 2): −F h / 1000 + prism."""
    return -(np.asarray(h_mm) @ np.asarray(f).T) / 1000.0 + np.asarray(prism)
