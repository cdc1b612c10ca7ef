"""Pinhole camera consistent with mediapipe's face geometry.

mediapipe computes the facial transformation matrix for a perspective camera with a 63 degree
vertical field of view and the principal point at the image centre, so projecting the head pose
with the same intrinsics puts 3-D content exactly where the landmarks are.

Camera space here is OpenCV's: x right, y down, z forward (away from the camera), millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MEDIAPIPE_VERTICAL_FOV_DEG = 63.0


@dataclass(frozen=True)
class Pinhole:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) camera-space points (mm, z > 0) -> (..., 2) pixel coordinates."""
        p = np.asarray(points, dtype=np.float64)
        z = p[..., 2]
        # Same operations in the same order as cx + fx * x / z, written in place: np.stack's
        # temporaries cost more than the arithmetic on the small arrays this is called with.
        out = np.empty((*p.shape[:-1], 2))
        for k, (f, c) in enumerate(((self.fx, self.cx), (self.fy, self.cy))):
            o = out[..., k]
            np.multiply(p[..., k], f, out=o)
            np.divide(o, z, out=o)
            np.add(o, c, out=o)
        return out

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 2) pixel coordinates -> (..., 3) ray directions with z == 1."""
        q = np.asarray(pixels, dtype=np.float64)
        x = (q[..., 0] - self.cx) / self.fx
        y = (q[..., 1] - self.cy) / self.fy
        return np.stack([x, y, np.ones_like(x)], axis=-1)


def mediapipe_camera(width: int, height: int, vfov_deg: float = MEDIAPIPE_VERTICAL_FOV_DEG) -> Pinhole:
    """The camera mediapipe assumes for an image of this size (square pixels, centred)."""
    fy = (height / 2.0) / math.tan(math.radians(vfov_deg) / 2.0)
    return Pinhole(fx=fy, fy=fy, cx=width / 2.0, cy=height / 2.0, width=width, height=height)
