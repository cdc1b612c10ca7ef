"""Face landmarks on a tracked face without mediapipe's graph: the bundle's landmark network run
directly (LiteRT) on a crop around the previous frame's landmarks.

mediapipe's Tasks graph spends ~16.5 ms per frame here (one thread, and ~2 ms of it turning results into
Python objects); the network alone takes ~7 ms on one thread and ~5 on two. The crop follows
mediapipe's own tracking rule (``FaceLandmarksToRoi``): the landmarks' bounding box, squared on its
long side, scaled by 1.5 and rotated so that the outer eye corners are level. A face not yet tracked
is found by mediapipe's face detector; its first crop follows mediapipe's rule for detections
(``roi_from_detection``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.face import LEFT_EYE_OUTER, RIGHT_EYE_OUTER

MODEL_MEMBER = "face_landmarks_detector.tflite"  # inside face_landmarker.task (a zip)
DETECTOR_MEMBER = "face_detector.tflite"
INPUT_SIZE = 256
ROI_SCALE = 1.5


@dataclass(frozen=True)
class Roi:
    """A square crop of the image: centre and side in pixels (pixel-edge convention, as mediapipe's
    landmarks), rotation in radians (counter-clockwise on screen)."""

    center: np.ndarray
    side: float
    angle: float


def roi_from_landmarks(landmarks_px: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """mediapipe's next-frame crop for a face whose landmarks (N, 2+) are known, in pixels."""
    pts = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    a, b = pts[RIGHT_EYE_OUTER], pts[LEFT_EYE_OUTER]  # image left, image right
    # Rotation brings the eye line to horizontal: mediapipe's target angle 0, y pointing down.
    angle = float(np.arctan2(b[1] - a[1], b[0] - a[0]))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return Roi(center=(lo + hi) / 2.0, side=float((hi - lo).max() * scale), angle=angle)


def roi_from_detection(box_xywh: tuple[float, float, float, float], eyes_px: np.ndarray,
                       scale: float = ROI_SCALE) -> Roi:
    """mediapipe's first crop for a face its detector found: the box squared on its long side, x1.5,
    eyes level (detector keypoints 0 and 1: image-left eye, image-right eye). Matches mediapipe's own
    landmarks from that crop to 0.3 px median (its box arrives rounded to whole pixels)."""
    x, y, w, h = box_xywh
    a, b = np.asarray(eyes_px, dtype=np.float64)[:2]
    angle = float(np.arctan2(b[1] - a[1], b[0] - a[0]))
    return Roi(center=np.array([x + w / 2.0, y + h / 2.0]), side=float(max(w, h) * scale), angle=angle)


def crop_to_image(roi: Roi, size: int = INPUT_SIZE) -> np.ndarray:
    """2x3 affine taking crop coordinates (0..size, pixel edges) to image coordinates (pixel edges)."""
    s = roi.side / size
    c, n = np.cos(roi.angle), np.sin(roi.angle)
    rs = np.array([[c * s, -n * s], [n * s, c * s]])
    return np.hstack([rs, (roi.center - rs @ np.array([size / 2.0, size / 2.0]))[:, None]])


def _warp_matrix(m_edge: np.ndarray) -> np.ndarray:
    """The same map in OpenCV's pixel-centre convention (pixel i's centre at i, not i + 0.5)."""
    rs = m_edge[:, :2]
    return np.hstack([rs, (m_edge[:, 2] + rs @ np.array([0.5, 0.5]) - 0.5)[:, None]])


def crop_face(rgb: np.ndarray, roi: Roi, size: int = INPUT_SIZE) -> np.ndarray:
    """The network's input crop (size, size, 3) uint8; outside the image is black, as in mediapipe."""
    return cv2.warpAffine(
        rgb, _warp_matrix(crop_to_image(roi, size)), (size, size),
        flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
    )


def project_to_image(crop_landmarks: np.ndarray, roi: Roi, size: int = INPUT_SIZE) -> np.ndarray:
    """(N, 3) crop-pixel landmarks -> image pixels; depth scales with the crop like x (mediapipe's z)."""
    m = crop_to_image(roi, size)
    out = np.empty_like(crop_landmarks, dtype=np.float32)
    out[:, :2] = crop_landmarks[:, :2] @ m[:, :2].T + m[:, 2]
    out[:, 2] = crop_landmarks[:, 2] * (roi.side / size)
    return out


def read_model(task_path: str | Path, member: str = MODEL_MEMBER) -> bytes:
    with zipfile.ZipFile(task_path) as z:
        return z.read(member)


class LandmarkModel:
    """The landmark network on one interpreter (not thread-safe). ``run`` releases the GIL while the
    network runs, so other threads (the filters' networks) proceed meanwhile."""

    def __init__(self, task_path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter_cls = Interpreter
        self._model = read_model(task_path)
        self._interpreters: dict[int, tuple[Any, int, int, int]] = {}
        self._it: Any = None
        self.threads = 0
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        """Threads for the network (XNNPACK). One interpreter per count is kept, so switching (the
        pipeline does it per frame, by whether networks share the cores) costs nothing."""
        threads = max(1, int(threads))
        if threads not in self._interpreters:
            it = self._interpreter_cls(model_content=self._model, num_threads=threads)
            it.allocate_tensors()
            inp = it.get_input_details()[0]
            if tuple(inp["shape"]) != (1, INPUT_SIZE, INPUT_SIZE, 3):
                raise ValueError(f"unexpected landmark network input {tuple(inp['shape'])}")
            outs = sorted(it.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
            self._interpreters[threads] = (it, inp["index"], outs[0]["index"], outs[1]["index"])
        self._it, self._in, self._lm_out, self._score_out = self._interpreters[threads]
        self.threads = threads

    def run(self, rgb: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """Landmarks (478, 3) in image pixels and the face-presence probability for one crop."""
        if self._it is None:
            raise RuntimeError("LandmarkModel is closed")
        crop = crop_face(rgb, roi)
        self._it.set_tensor(self._in, np.multiply(crop, np.float32(1.0 / 255.0), dtype=np.float32)[None])  # one pass
        self._it.invoke()
        raw = self._it.get_tensor(self._lm_out).reshape(-1, 3)
        logit = float(self._it.get_tensor(self._score_out).ravel()[0])
        presence = float(1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0))))
        return project_to_image(raw, roi), presence

    def close(self) -> None:
        self._it = None
        self._interpreters.clear()
