"""What hides a temple arm: the sides of the head, and the face itself (pure functions).

mediapipe's mesh stops at the face oval, so the skull -- which hides the far temple at any real yaw
-- is modelled by its two sides: planes facing the face's +-x from a little behind the eyes back. A
temple lies on (just outside) its side, so it is visible exactly when that side faces the camera.
The face oval plus the landmarks' depth hide what passes behind the face in front of that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stream.face import LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER

# The sides of the head start this far behind the pupils (the lateral orbital rim and the temple
# region); temple arms in front of that plane are beside the eyes, with nothing of the head around.
SIDE_START_BEHIND_EYES_MM = 12.0
SIDE_MARGIN = 0.02  # sine of the grazing angle treated as still visible (the side is not a flat wall)


@lru_cache(maxsize=1)
def face_oval() -> np.ndarray:
    """Face-oval landmark indices in order around the face, from mediapipe's connection list.

    Looked up on first use so importing this package does not import mediapipe.
    """
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    nxt = {c.start: c.end for c in FaceLandmarksConnections.FACE_LANDMARKS_FACE_OVAL}
    start = next(iter(nxt))
    order = [start]
    while nxt[order[-1]] != start:
        order.append(nxt[order[-1]])
    out = np.array(order)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class HeadSides:
    """The head's two sides, as planes facing +-x of the face, starting a little behind the eyes."""

    eyes_mid: np.ndarray  # (3,) camera space, mm: midpoint of the pupils
    axes: np.ndarray  # (3, 3) face axes (x image right, y up, z towards the camera) as columns


def head_sides(face_cam_mm: np.ndarray, rotation_cv: np.ndarray) -> HeadSides:
    mid = (face_cam_mm[RIGHT_IRIS_CENTER] + face_cam_mm[LEFT_IRIS_CENTER]) / 2.0
    return HeadSides(eyes_mid=mid, axes=np.asarray(rotation_cv, dtype=np.float64))


def temple_hidden_score(points: np.ndarray, side: str, head: HeadSides) -> np.ndarray:
    """(K,) > 0 where a temple point lies on a side of the head turned away from the camera.

    A temple rests on the side of the head; behind the side's start it is visible only if that side
    faces the camera, i.e. the camera is on the outer side of the side's plane. The score is the
    sine of the angle by which the side faces away (continuous, so the cut can be interpolated);
    points in front of the sides' start score -1 (nothing of the head is around them).
    """
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    outward = head.axes[:, 0] * (1.0 if side == "left" else -1.0)  # the subject's left is face +x
    to_cam = -p / np.linalg.norm(p, axis=1, keepdims=True)
    score = -(to_cam @ outward) - SIDE_MARGIN
    behind = (p - head.eyes_mid) @ head.axes[:, 2] < -SIDE_START_BEHIND_EYES_MM
    return np.where(behind, score, -1.0)


def visible_runs(start: np.ndarray, end: np.ndarray, side: str, head: HeadSides,
                 samples: int = 48) -> list[tuple[float, float]]:
    """Parameter intervals [s0, s1] of the temple start->end (s in [0, 1]) not hidden by the head,
    with the boundaries interpolated between samples so the cut does not step."""
    s = np.linspace(0.0, 1.0, samples)
    score = temple_hidden_score(start + s[:, None] * (end - start), side, head)
    vis = score <= 0.0
    runs: list[tuple[float, float]] = []
    i = 0
    while i < samples:
        if not vis[i]:
            i += 1
            continue
        j = i
        while j + 1 < samples and vis[j + 1]:
            j += 1
        s0 = s[i] if i == 0 else _crossing(s[i - 1], s[i], score[i - 1], score[i])
        s1 = s[j] if j == samples - 1 else _crossing(s[j], s[j + 1], score[j], score[j + 1])
        if s1 > s0:
            runs.append((float(s0), float(s1)))
        i = j + 1
    return runs


def _crossing(s_a: float, s_b: float, d_a: float, d_b: float) -> float:
    """Where the score crosses zero between two samples (linear; a jump from -1 is cut at the sample)."""
    if d_a == -1.0 or d_b == -1.0 or d_a == d_b:
        return s_b if d_a == -1.0 else s_a
    return float(s_a + (s_b - s_a) * (0.0 - d_a) / (d_b - d_a))


def surface_depth(face_cam: np.ndarray, face_px: np.ndarray, query_px: np.ndarray) -> np.ndarray:
    """Face depth (mm) under each query pixel: inverse-distance mean of the 3 nearest landmarks."""
    # |q - p|^2 = |q|^2 + |p|^2 - 2 q.p: one small matrix product instead of a (K, 478, 2) temporary.
    d2 = (query_px * query_px).sum(axis=1)[:, None] + (face_px * face_px).sum(axis=1)[None, :]
    d2 -= 2.0 * query_px @ face_px.T
    idx = np.argpartition(d2, 3, axis=1)[:, :3]
    w = 1.0 / (np.sqrt(np.maximum(np.take_along_axis(d2, idx, axis=1), 0.0)) + 1e-3)
    return (face_cam[idx, 2] * w).sum(axis=1) / w.sum(axis=1)
