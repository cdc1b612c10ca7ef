"""Face and head-pose tracking: mediapipe FaceLandmarker (VIDEO mode) + stable ids + One-Euro."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.config import TrackerConfig
from stream.face import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, Face
from stream.model_asset import model_path
from stream.one_euro import OneEuroFilter
from stream.pose import HeadPose, pose_from_matrix, rotation_gl_from_angles

log = logging.getLogger(__name__)
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass
class _Track:
    face_id: int
    center: np.ndarray
    size: float
    last_seen_s: float
    landmarks_filter: OneEuroFilter
    angles_filter: OneEuroFilter
    translation_filter: OneEuroFilter


@dataclass
class RawFace:
    """One face as the landmarker returns it, in pixels, before ids and smoothing."""

    landmarks_px: np.ndarray
    matrix_gl: np.ndarray
    blendshapes: dict[str, float] | None = None
    center: np.ndarray = field(init=False)
    size: float = field(init=False)

    def __post_init__(self) -> None:
        self.center = self.landmarks_px[:, :2].mean(axis=0)
        eyes = self.landmarks_px[[LEFT_EYE_OUTER, RIGHT_EYE_OUTER], :2]
        self.size = float(np.linalg.norm(eyes[0] - eyes[1]))


# A face seen on the previous frame may move this many times further before it loses its id: fast head
# motion (or a duplicated frame followed by a catch-up) moves a face ~0.6 eye widths per frame at 25 fps.
CONTINUITY_RADIUS_FACTOR = 3.0


def assign_ids(
    tracks: list[_Track], faces: list[RawFace], radius: float, continuous: set[int] | None = None
) -> list[tuple[int | None, RawFace]]:
    """Greedy nearest-centre matching, in two passes.

    First every track may take a face within ``radius`` face sizes (nearest pairs first). Then the
    tracks in ``continuous`` (indices of tracks seen on the previous frame) that are still unmatched may
    take a remaining face within ``CONTINUITY_RADIUS_FACTOR * radius``: a face does not vanish and get
    replaced by another face nearby between two consecutive frames, but it does move fast.
    """
    match: dict[int, int] = {}
    used_t: set[int] = set()

    def pass_(limit: float, allowed: set[int] | None) -> None:
        pairs = []
        for ti, tr in enumerate(tracks):
            if ti in used_t or (allowed is not None and ti not in allowed):
                continue
            for fi, f in enumerate(faces):
                if fi in match:
                    continue
                d = float(np.linalg.norm(tr.center - f.center)) / max(tr.size, f.size, 1.0)
                if d <= limit:
                    pairs.append((d, ti, fi))
        pairs.sort()
        for _, ti, fi in pairs:
            if ti in used_t or fi in match:
                continue
            used_t.add(ti)
            match[fi] = ti

    pass_(radius, None)
    if continuous:
        pass_(radius * CONTINUITY_RADIUS_FACTOR, continuous)
    return [(match.get(fi), f) for fi, f in enumerate(faces)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Any uint8 image (H, W), (H, W, 3) or (H, W, 4) -> contiguous RGB (H, W, 3)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


class _SearchSchedule:
    """When to run the max-faces landmarker: always while several faces are in view, otherwise
    every ``every`` frames to discover new ones (the first frame always searches)."""

    SETTLE_FRAMES = 5  # frames with at most one face before dropping back to the one-face landmarker

    def __init__(self, every: int) -> None:
        self.every = every
        self.multi_mode = True
        self._since_search = 0
        self._few = 0

    def use_multi(self) -> bool:
        if self.multi_mode:
            return True
        self._since_search += 1
        if self._since_search >= self.every:
            self._since_search = 0
            return True
        return False

    def observe(self, n_faces: int, used_multi: bool) -> None:
        if n_faces >= 2:
            self.multi_mode, self._few = True, 0
        elif self.multi_mode:
            self._few += 1
            if self._few >= self.SETTLE_FRAMES:
                self.multi_mode, self._since_search = False, 0


class FaceTracker:
    """Tracks up to ``config.max_faces`` faces in a video stream. Not thread-safe; close() it."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self.config = config or TrackerConfig()
        self._mp = mp
        path = model_path(self.config.model_path)

        def landmarker(num_faces: int) -> Any:
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                running_mode=vision.RunningMode.VIDEO,
                num_faces=num_faces,
                min_face_detection_confidence=self.config.min_detection_confidence,
                min_face_presence_confidence=self.config.min_presence_confidence,
                min_tracking_confidence=self.config.min_tracking_confidence,
                output_face_blendshapes=self.config.blendshapes,
                output_facial_transformation_matrixes=True,
            )
            return vision.FaceLandmarker.create_from_options(opts)

        self._landmarker = landmarker(self.config.max_faces)
        self._single = None
        if self.config.max_faces > 1 and self.config.search_every_n_frames > 0:
            self._single = landmarker(1)
        self._search = _SearchSchedule(self.config.search_every_n_frames)
        self.calls = {"single": 0, "multi": 0}  # landmarker runs, for tests and benchmarks
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_ts_ms = -1
        self._last_track_s: float | None = None

    def close(self) -> None:
        for lm in (self._landmarker, self._single):
            if lm is not None:
                lm.close()
        self._landmarker = self._single = None

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: np.ndarray, timestamp_ms: int) -> list[RawFace]:
        """Raw landmarker output for one frame (timestamps are forced strictly increasing)."""
        if self._landmarker is None:
            raise RuntimeError("FaceTracker is closed")
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        ts = max(int(timestamp_ms), self._last_ts_ms + 1)
        self._last_ts_ms = ts
        use_multi = self._single is None or self._search.use_multi()
        self.calls["multi" if use_multi else "single"] += 1
        landmarker = self._landmarker if use_multi else self._single
        result = landmarker.detect_for_video(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb), ts)
        if self._single is not None:
            self._search.observe(len(result.face_landmarks), used_multi=use_multi)
        faces = []
        for i, lms in enumerate(result.face_landmarks):
            arr = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)
            mat = np.array(result.facial_transformation_matrixes[i], dtype=np.float64).reshape(4, 4)
            bs = None
            if result.face_blendshapes:
                bs = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
            faces.append(RawFace(arr, mat, bs))
        return faces

    def track(self, image: np.ndarray, timestamp_s: float) -> list[Face]:
        """Smoothed faces with stable ids for a frame taken at ``timestamp_s``."""
        h, w = image.shape[:2]
        raw = self.detect(image, round(timestamp_s * 1000.0))
        cfg = self.config
        self._tracks = [t for t in self._tracks if timestamp_s - t.last_seen_s <= cfg.id_forget_s]
        prev, self._last_track_s = self._last_track_s, timestamp_s
        continuous = {i for i, t in enumerate(self._tracks) if t.last_seen_s == prev}
        out: list[Face] = []
        for ti, f in assign_ids(self._tracks, raw, cfg.id_match_radius, continuous):
            if ti is None:
                tr = _Track(
                    self._next_id, f.center, f.size, timestamp_s,
                    OneEuroFilter(cfg.landmark_smoothing),
                    OneEuroFilter(cfg.pose_smoothing),
                    OneEuroFilter(cfg.pose_smoothing),
                )
                self._next_id += 1
                self._tracks.append(tr)
            else:
                tr = self._tracks[ti]
            tr.center, tr.size, tr.last_seen_s = f.center, f.size, timestamp_s
            out.append(self._smoothed_face(tr, f, timestamp_s, (w, h)))
        out.sort(key=lambda fc: fc.face_id)
        return out

    def _smoothed_face(self, tr: _Track, f: RawFace, t: float, size: tuple[int, int]) -> Face:
        pose = pose_from_matrix(f.matrix_gl)
        if not self.config.smoothing:
            return Face(tr.face_id, f.landmarks_px, pose, size, f.blendshapes)
        lms = tr.landmarks_filter(f.landmarks_px, t, scale=max(f.size, 1.0)).astype(np.float32)
        yaw, pitch, roll = tr.angles_filter(np.array([pose.yaw_deg, pose.pitch_deg, pose.roll_deg]), t)
        trans = tr.translation_filter(pose.translation_mm, t)
        smoothed = HeadPose(
            yaw_deg=float(yaw),
            pitch_deg=float(pitch),
            roll_deg=float(roll),
            rotation_cv=_GL_TO_CV @ rotation_gl_from_angles(yaw, pitch, roll),
            translation_mm=trans,
        )
        return Face(tr.face_id, lms, smoothed, size, f.blendshapes)
