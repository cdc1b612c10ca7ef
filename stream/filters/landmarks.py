"""Debug overlay: landmarks, face contours, head-pose axes and angles for each tracked face."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from stream.face import NOSE_TIP, Face
from stream.filters.base import Filter, FrameContext, param

POINT_COLOR = (0, 255, 0)  # RGB
CONTOUR_COLOR = (255, 255, 255)
AXIS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # x, y, z of the face


@lru_cache(maxsize=1)
def _contour_paths() -> list[np.ndarray]:
    """Face oval, eyes, brows, lips and irises as index paths (segments from mediapipe)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    segs = C.FACE_LANDMARKS_CONTOURS + C.FACE_LANDMARKS_LEFT_IRIS + C.FACE_LANDMARKS_RIGHT_IRIS
    return [np.array([s.start, s.end]) for s in segs]


@dataclass
class LandmarkParams:
    points: bool = param(True, help="draw the 478 landmarks")
    contours: bool = param(True, help="draw face oval, eyes, brows, lips, irises")
    axes: bool = param(True, help="draw the head-pose axes at the nose")
    labels: bool = param(True, help="write face id and yaw/pitch/roll")
    axis_mm: float = param(60.0, help="length of the pose axes", min=5.0, max=300.0)


def draw_points(image: np.ndarray, xy: np.ndarray, color: tuple[int, int, int]) -> None:
    """2x2 dots by direct indexing: ~20x cheaper than 478 cv2.circle calls."""
    h, w = image.shape[:2]
    p = np.round(xy).astype(np.int64)
    for dx in (0, 1):
        for dy in (0, 1):
            x, y = p[:, 0] + dx, p[:, 1] + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            image[y[ok], x[ok]] = color


def draw_face(image: np.ndarray, face: Face, ctx: FrameContext, prm: LandmarkParams) -> None:
    lm = face.landmarks_px
    if prm.contours:
        segs = [np.round(lm[s, :2]).astype(np.int32) for s in _contour_paths()]
        cv2.polylines(image, segs, isClosed=False, color=CONTOUR_COLOR, thickness=1, lineType=cv2.LINE_AA)
    if prm.points:
        draw_points(image, lm[:, :2], POINT_COLOR)
    if prm.axes:
        cam = ctx.camera
        r, t = face.pose.rotation_cv, face.pose.translation_mm
        origin = lm[NOSE_TIP, :2]
        # Axes drawn from the nose tip, directions from the 3-D pose (flip y/z so +z points out of the face).
        base = cam.project(t)
        for axis, color in zip(np.eye(3), AXIS_COLORS, strict=True):
            end = cam.project(t + prm.axis_mm * (r @ axis))
            tip = origin + (end - base)
            cv2.arrowedLine(image, tuple(np.round(origin).astype(int)), tuple(np.round(tip).astype(int)),
                            color, 2, cv2.LINE_AA, tipLength=0.15)
    if prm.labels:
        x0, y0, _, _ = face.bbox
        p = face.pose
        text = f"#{face.face_id} yaw {p.yaw_deg:+.0f} pitch {p.pitch_deg:+.0f} roll {p.roll_deg:+.0f}"
        org = (int(x0), max(14, int(y0) - 6))
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)


class Landmarks(Filter):
    name = "landmarks"
    description = "Debug overlay of the tracked landmarks, contours and head pose."
    Params = LandmarkParams
    needs_faces = True

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        if not ctx.faces:
            return image
        out = image.copy()
        for face in ctx.faces:
            draw_face(out, face, ctx, self.params)
        return out
