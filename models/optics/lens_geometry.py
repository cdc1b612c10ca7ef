"""Where the lenses are: D's glasses placement when available, else round lenses built from the pose.

The refraction needs, per lens, the optical centre, the lens-plane frame (u, v, normal) and the
outline in pixels: exactly the fields of ``models.glasses.placement.LensPlacement``. The fallback
here produces objects with the same fields so the physics runs (and is tested) without D's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from models.face3d import landmarks_cam_mm
from stream.camera import Pinhole
from stream.face import LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER, Face


class LensLike(Protocol):
    side: str
    outline_px: np.ndarray
    optical_center_cam_mm: np.ndarray
    optical_center_px: np.ndarray
    normal_cam: np.ndarray
    u_cam: np.ndarray
    v_cam: np.ndarray
    vertex_distance_mm: float


@dataclass(frozen=True)
class RoundLens:
    side: str
    outline_px: np.ndarray
    outline_cam_mm: np.ndarray
    optical_center_cam_mm: np.ndarray
    optical_center_px: np.ndarray
    normal_cam: np.ndarray
    u_cam: np.ndarray
    v_cam: np.ndarray
    vertex_distance_mm: float


def lens_frame(rotation_cv: np.ndarray, pantoscopic_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, normal) of the lens plane from the head rotation (canonical x right, y up, z to camera).

    Pantoscopic tilt swings the lower rim towards the cheeks: rotate (v, n) about u.
    """
    r = np.asarray(rotation_cv, np.float64)
    u, v, n = r[:, 0], r[:, 1], r[:, 2]
    t = math.radians(pantoscopic_deg)
    return u, math.cos(t) * v + math.sin(t) * n, math.cos(t) * n - math.sin(t) * v


def pose_lenses(face: Face, camera: Pinhole, outline_left_mm: np.ndarray | None = None, *,
                frame_pd_mm: float | None = None, radius_mm: float = 24.0, vertex_distance_mm: float = 12.0,
                pantoscopic_deg: float = 8.0, pd_mm: float | None = None) -> tuple[RoundLens, ...]:
    """(right, left) lenses in front of the pupils at the vertex distance, in the head's frame.

    ``outline_left_mm`` is the catalogue's LEFT lens outline about its boxing centre (x to the temple,
    y up); the right lens mirrors it. Boxing centres sit ``frame_pd_mm`` apart at pupil height; the
    optical centres are in front of the pupils. Without an outline the lenses are circles of
    ``radius_mm`` centred on the optical centres.
    """
    pts = landmarks_cam_mm(face, camera)
    u, v, n = lens_frame(face.pose.rotation_cv, pantoscopic_deg)
    pr, pl = pts[RIGHT_IRIS_CENTER], pts[LEFT_IRIS_CENTER]
    mid = (pr + pl) / 2.0
    if pd_mm:  # keep the measured midpoint, impose the given PD along the frame's horizontal
        pr, pl = mid - u * pd_mm / 2.0, mid + u * pd_mm / 2.0
    if outline_left_mm is None:
        ang = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
        outline_left_mm = radius_mm * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        frame_pd_mm = None
    outline = np.asarray(outline_left_mm, np.float64)
    out = []
    for side, pupil, sign in (("right", pr, -1.0), ("left", pl, 1.0)):
        # The iris landmarks sit on the cornea; the lens's back vertex is vertex_distance in front of it.
        c = pupil + n * vertex_distance_mm
        box = c
        if frame_pd_mm is not None:  # move along u only: boxing centre at frame_pd/2 from the frame's centre
            box = c + u * (sign * frame_pd_mm / 2.0 - (c - (mid + n * vertex_distance_mm)) @ u)
        ring = box + (sign * outline[:, :1]) * u + outline[:, 1:2] * v
        out.append(RoundLens(side, camera.project(ring).astype(np.float32), ring, c, camera.project(c), n, u, v,
                             float(vertex_distance_mm)))
    return tuple(out)


def lens_mask(lens: LensLike, width: int, height: int) -> np.ndarray:
    """uint8 0/255 filled outline (subpixel-accurate polygon fill)."""
    m = np.zeros((height, width), np.uint8)
    shift = 4
    pts = np.round(np.asarray(lens.outline_px, np.float64) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(m, [pts], 255, lineType=cv2.LINE_8, shift=shift)
    return m
