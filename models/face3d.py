"""Metric 3-D face points in camera space from the tracker's landmarks (pure functions).

mediapipe's landmark z is in the same units as x (image-width-normalised), relative to the head's
centre, whose depth the facial transformation matrix gives. Back-projecting each landmark at
``Z_i = Z_head + z_i * Z_head / f`` (pixel units turned into mm at that depth) yields metric points
consistent with the pose and the mediapipe camera.
"""

from __future__ import annotations

import numpy as np

from stream.camera import Pinhole
from stream.face import Face

IRIS_DIAMETER_MM = 11.7  # adult horizontal visible iris diameter; nearly constant across people


def landmarks_cam_mm(face: Face, camera: Pinhole) -> np.ndarray:
    """(478, 3) landmark positions in OpenCV camera space, millimetres."""
    lm = face.landmarks_px.astype(np.float64)
    z_head = float(face.pose.translation_mm[2])
    z = z_head + lm[:, 2] * z_head / camera.fx
    x = (lm[:, 0] - camera.cx) / camera.fx * z
    y = (lm[:, 1] - camera.cy) / camera.fy * z
    return np.stack([x, y, z], axis=1)
