"""What the tracker hands to every filter: one tracked face per entry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.pose import HeadPose

# Landmark indices that later stages need by name (mediapipe face mesh, 478 points with irises).
# "left"/"right" are the subject's own sides: the subject's right eye appears on image left.
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473
RIGHT_IRIS = (469, 470, 471, 472)
LEFT_IRIS = (474, 475, 476, 477)
NOSE_TIP = 1
NOSE_BRIDGE = 168
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133
LEFT_EYE_INNER, LEFT_EYE_OUTER = 362, 263
RIGHT_TEMPLE, LEFT_TEMPLE = 127, 356  # near the ears, at eye height: where temples meet the head
NUM_LANDMARKS = 478


@dataclass(frozen=True)
class Face:
    """One tracked face in one frame (already smoothed).

    ``landmarks_px`` is (478, 3) float32: x and y in pixels of this frame; z in the same pixel
    units (mediapipe's relative depth times the frame width), smaller is closer to the camera,
    roughly zero at the face's centre depth.
    """

    face_id: int
    landmarks_px: np.ndarray
    pose: HeadPose
    image_size: tuple[int, int]  # (width, height)
    blendshapes: dict[str, float] | None = None

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Integer (x0, y0, x1, y1) of the landmarks, clipped to the frame."""
        w, h = self.image_size
        xy = self.landmarks_px[:, :2]
        x0, y0 = np.floor(xy.min(axis=0)).astype(int)
        x1, y1 = np.ceil(xy.max(axis=0)).astype(int)
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    @property
    def center_px(self) -> np.ndarray:
        return self.landmarks_px[:, :2].mean(axis=0)

    @property
    def pupils_px(self) -> tuple[np.ndarray, np.ndarray]:
        """(right, left) iris centres in pixels (subject's sides)."""
        return self.landmarks_px[RIGHT_IRIS_CENTER, :2], self.landmarks_px[LEFT_IRIS_CENTER, :2]
