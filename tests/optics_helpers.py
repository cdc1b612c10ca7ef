"""Helpers for the optics tests: tracked clip frames and faces re-posed to a synthetic yaw."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from models.face3d import landmarks_cam_mm
from stream.camera import Pinhole
from stream.face import Face
from stream.pose import HeadPose


def track_frames(frames: list[np.ndarray], fps: float) -> list[list[Face]]:
    from stream.tracking import FaceTracker

    with FaceTracker() as tracker:
        return [tracker.track(f, i / fps) for i, f in enumerate(frames)]


def yawed_face(face: Face, camera: Pinhole, extra_yaw_deg: float) -> Face:
    """The tracked face turned about the camera's vertical axis through the head centre.

    The geometry (landmarks, pose) is exact; the image texture is not re-rendered, which is fine for
    checks of the optics' own consistency at oblique lens angles.
    """
    t = math.radians(extra_yaw_deg)
    r = np.array([[math.cos(t), 0.0, math.sin(t)], [0.0, 1.0, 0.0], [-math.sin(t), 0.0, math.cos(t)]])
    pose = face.pose
    center = np.asarray(pose.translation_mm, np.float64)
    pts = center + (landmarks_cam_mm(face, camera) - center) @ r.T
    z_head = float(center[2])
    px = camera.project(pts)
    lm = np.column_stack([px, (pts[:, 2] - z_head) * camera.fx / z_head]).astype(np.float32)
    new_pose = HeadPose(pose.yaw_deg + extra_yaw_deg, pose.pitch_deg, pose.roll_deg, r @ pose.rotation_cv, center)
    return replace(face, landmarks_px=lm, pose=new_pose)
