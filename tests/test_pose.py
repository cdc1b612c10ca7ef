"""Head pose maths against closed-form rotations (scipy builds the references, not our code)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from stream.camera import mediapipe_camera
from stream.pose import angles_from_rotation_gl, orthonormalize, pose_from_matrix, rotation_gl_from_angles


def matrix_gl(rot: np.ndarray, t_cm: tuple[float, float, float] = (0.0, 0.0, -50.0), scale: float = 1.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = scale * rot
    m[:3, 3] = t_cm
    return m


def rot(axis: str, deg: float) -> np.ndarray:
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


ANGLES = list(itertools.product((-60, -15, 0, 25, 80), (-50, 0, 35), (-30, 0, 170)))


@pytest.mark.parametrize(("yaw", "pitch", "roll"), ANGLES)
def test_angles_round_trip(yaw, pitch, roll):
    r = rotation_gl_from_angles(yaw, pitch, roll)
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(angles_from_rotation_gl(r), (yaw, pitch, roll), atol=1e-9)


def test_rotation_matches_closed_form_composition():
    # R = Ry(yaw) Rx(-pitch) Rz(roll), intrinsic order, as documented.
    ref = Rotation.from_euler("YXZ", [20, -10, 5], degrees=True).as_matrix()
    assert np.allclose(rotation_gl_from_angles(20, 10, 5), ref, atol=1e-12)


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (rot("y", 30), (30, 0, 0)),  # forward axis swings towards +x (image right): yaw > 0
        (rot("y", -20), (-20, 0, 0)),
        (rot("x", -25), (0, 25, 0)),  # forward axis swings towards +y (up in GL): pitch > 0
        (rot("z", 15), (0, 0, 15)),  # counter-clockwise as the camera sees it: roll > 0
    ],
)
def test_pose_from_known_matrix(r, expected):
    pose = pose_from_matrix(matrix_gl(r, scale=1.07))  # mediapipe's matrix carries a small scale
    assert np.allclose((pose.yaw_deg, pose.pitch_deg, pose.roll_deg), expected, atol=1e-9)
    assert pose.as_dict() == {"yaw": pose.yaw_deg, "pitch": pose.pitch_deg, "roll": pose.roll_deg}


def test_translation_and_rotation_to_opencv_mm():
    pose = pose_from_matrix(matrix_gl(rot("y", 10), t_cm=(1.0, 2.0, -50.0)))
    assert np.allclose(pose.translation_mm, (10.0, -20.0, 500.0))  # cm -> mm, y and z flipped
    assert np.allclose(pose.rotation_cv, np.diag([1, -1, -1]) @ rot("y", 10))
    # S = diag(1, -1, -1) is a half turn about x, so rotation_cv stays a proper rotation.
    assert np.isclose(np.linalg.det(pose.rotation_cv), 1.0)


def _project(pose, point_mm, w=640, h=480):
    cam = mediapipe_camera(w, h)
    return cam.project(pose.rotation_cv @ np.asarray(point_mm, float) + pose.translation_mm)


def test_signs_seen_through_the_camera():
    """Positive yaw puts the nose right of the face centre in the image; positive pitch puts it above."""
    nose = (0.0, 0.0, 100.0)  # canonical +z points out of the face, towards the camera
    centre = _project(pose_from_matrix(matrix_gl(np.eye(3))), (0, 0, 0))
    assert np.allclose(centre, (320, 240))
    assert np.allclose(_project(pose_from_matrix(matrix_gl(np.eye(3))), nose), (320, 240))  # facing the camera
    right = _project(pose_from_matrix(matrix_gl(rot("y", 30))), nose)
    assert right[0] > 330 and abs(right[1] - 240) < 1e-6
    up = _project(pose_from_matrix(matrix_gl(rot("x", -20))), nose)
    assert up[1] < 230 and abs(up[0] - 320) < 1e-6
    # Roll CCW: the face's +x axis (image right) tilts upwards in the image (smaller y).
    tip = _project(pose_from_matrix(matrix_gl(rot("z", 20))), (100.0, 0.0, 0.0))
    assert tip[0] > 320 and tip[1] < 240


def test_orthonormalize_removes_scale_and_noise():
    rng = np.random.default_rng(1)
    r = rot("y", 40) @ rot("x", 10)
    noisy = 1.3 * r + 1e-3 * rng.standard_normal((3, 3))
    q = orthonormalize(noisy)
    assert np.allclose(q.T @ q, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(q), 1.0)
    assert np.allclose(q, r, atol=5e-3)


def test_extreme_pitch_is_finite():
    for p in (89.9, -89.9, 90.0):
        y, pitch, r = angles_from_rotation_gl(rotation_gl_from_angles(0, p, 0))
        assert np.isfinite([y, pitch, r]).all() and abs(pitch - p) < 1e-6
