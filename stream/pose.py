"""Head pose from mediapipe's facial transformation matrix (pure functions).

mediapipe's matrix maps the canonical face model (centimetres, x to the face's left as seen in the
image, i.e. image right; y up; z out of the face towards the camera) into an OpenGL camera space
(x right, y up, the camera looking down -z). Angles, in degrees:

- yaw   > 0: the face turns towards image right (the subject's own left),
- pitch > 0: the face tilts up (chin forward, nose up),
- roll  > 0: the face rotates counter-clockwise as seen in the image.

For this project's OpenCV camera space (x right, y down, z forward, millimetres) the same pose is
``R_cv = S @ R_gl``, ``t_cv = 10 * S @ t_gl`` with ``S = diag(1, -1, -1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class HeadPose:
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    rotation_cv: np.ndarray  # (3, 3): canonical face axes -> OpenCV camera axes
    translation_mm: np.ndarray  # (3,): canonical origin in OpenCV camera space, mm

    def as_dict(self) -> dict[str, float]:
        return {"yaw": self.yaw_deg, "pitch": self.pitch_deg, "roll": self.roll_deg}


def orthonormalize(r: np.ndarray) -> np.ndarray:
    """Nearest rotation matrix (SVD); the matrix from mediapipe carries a small scale."""
    u, _, vt = np.linalg.svd(np.asarray(r, dtype=np.float64))
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        u[:, -1] *= -1
        rot = u @ vt
    return rot


def angles_from_rotation_gl(r_gl: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a rotation in mediapipe's OpenGL camera space."""
    r = orthonormalize(r_gl)
    fwd = r[:, 2]  # the face's forward axis in camera space
    yaw = math.degrees(math.atan2(fwd[0], fwd[2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, fwd[1]))))
    # R = Ry(yaw) Rx(-pitch) Rz(roll): R[1,0] = cos(pitch) sin(roll), R[1,1] = cos(pitch) cos(roll)
    roll = math.degrees(math.atan2(r[1, 0], r[1, 1]))
    return yaw, pitch, roll


def rotation_gl_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Inverse of :func:`angles_from_rotation_gl` (R = Ry(yaw) Rx(-pitch) Rz(roll))."""
    y, p, rl = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(-p), -math.sin(-p)], [0, math.sin(-p), math.cos(-p)]])
    rz = np.array([[math.cos(rl), -math.sin(rl), 0], [math.sin(rl), math.cos(rl), 0], [0, 0, 1]])
    return ry @ rx @ rz


def pose_from_matrix(matrix_gl: np.ndarray) -> HeadPose:
    """HeadPose from mediapipe's 4x4 facial transformation matrix."""
    m = np.asarray(matrix_gl, dtype=np.float64).reshape(4, 4)
    r_gl = orthonormalize(m[:3, :3])
    yaw, pitch, roll = angles_from_rotation_gl(r_gl)
    return HeadPose(
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        rotation_cv=_GL_TO_CV @ r_gl,
        translation_mm=10.0 * (_GL_TO_CV @ m[:3, 3]),
    )
