"""Face and head-pose tracking: mediapipe FaceLandmarker finds faces, its landmark network run directly
follows them (stream.landmark_model, stream.face_geometry), then stable ids + One-Euro."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.config import TrackerConfig
from stream.face import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, Face
from stream.face_geometry import load_metadata, transform_matrix
from stream.landmark_model import (
    DETECTOR_MEMBER,
    LandmarkModel,
    Roi,
    read_model,
    roi_from_detection,
    roi_from_landmarks,
)
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


def _same_face(a: RawFace, b: RawFace) -> bool:
    return bool(np.linalg.norm(a.center - b.center) < 0.5 * max(a.size, b.size))


def _raw_faces(result: Any, w: int, h: int) -> list[RawFace]:
    """mediapipe's FaceLandmarkerResult -> RawFace list (pixels)."""
    faces = []
    for i, lms in enumerate(result.face_landmarks):
        arr = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)
        mat = np.array(result.facial_transformation_matrixes[i], dtype=np.float64).reshape(4, 4)
        bs = None
        if result.face_blendshapes:
            bs = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
        faces.append(RawFace(arr, mat, bs))
    return faces


class FaceTracker:
    """Tracks up to ``config.max_faces`` faces in a video stream. Not thread-safe; close() it."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self.config = config or TrackerConfig()
        self._mp = mp
        path = model_path(self.config.model_path)

        def landmarker(num_faces: int, mode: Any = vision.RunningMode.VIDEO) -> Any:
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                running_mode=mode,
                num_faces=num_faces,
                min_face_detection_confidence=self.config.min_detection_confidence,
                min_face_presence_confidence=self.config.min_presence_confidence,
                min_tracking_confidence=self.config.min_tracking_confidence,
                output_face_blendshapes=self.config.blendshapes,
                output_facial_transformation_matrixes=True,
            )
            return vision.FaceLandmarker.create_from_options(opts)

        self._make_landmarker = landmarker
        self._direct = self._direct_model(path)
        self._direct_mode = self._direct is not None  # fixed for the tracker's life, even if _direct fails
        self._landmarker: Any = None
        self._single: Any = None
        self._detector: Any = None
        if self._direct_mode:
            # Searches only, stateless: mediapipe's face detector finds faces, the direct network measures them.
            self._detector = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=read_model(path, DETECTOR_MEMBER)),
                running_mode=vision.RunningMode.IMAGE,
                min_detection_confidence=self.config.min_detection_confidence,
            ))
        else:
            self._landmarker = landmarker(self.config.max_faces)
            if self.config.max_faces > 1 and self.config.search_every_n_frames > 0:
                self._single = landmarker(1)
        self._closed = False
        log.info("face tracker: %s", self.describe())
        self._search = _SearchSchedule(self.config.search_every_n_frames)
        # For tests and benchmarks: mediapipe's VIDEO graph with one / max faces; the direct network
        # following faces; searches for faces not yet followed (detector, or whole landmarker).
        self.calls = {"single": 0, "multi": 0, "direct": 0, "search": 0}
        self._previous: list[RawFace] = []  # last frame's raw faces: the direct network's crops
        self._previous_shape: tuple[int, ...] = ()
        self._since_search = 0
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_ts_ms = -1
        self._last_track_s: float | None = None

    def _direct_model(self, path: Any) -> LandmarkModel | None:
        cfg = self.config
        if not cfg.direct_landmarks or cfg.blendshapes:  # the direct path has no blendshape network
            return None
        try:
            model = LandmarkModel(path, cfg.landmark_threads)
            self._geometry = load_metadata(path)
        except Exception as e:  # e.g. ai-edge-litert missing: mediapipe's graph does every frame
            log.warning("direct landmark network unavailable (%s); mediapipe tracks every frame", e)
            return None
        return model

    @property
    def direct(self) -> bool:
        """Whether tracked faces are followed by the landmark network run directly."""
        return self._direct is not None

    def describe(self) -> dict[str, Any]:
        """What measures the landmarks, for the stats overlay (as the filters' models are described)."""
        if self._direct is not None:
            return {"state": "ready", "backend": "litert", "device": "cpu", "precision": "fp32",
                    "threads": self._direct.threads, "search": "mediapipe face detector"}
        graph = "FaceLandmarker IMAGE (direct network failed)" if self._direct_mode else "FaceLandmarker VIDEO"
        return {"state": "ready", "backend": "mediapipe", "device": "cpu", "precision": "fp32", "graph": graph}

    def set_threads(self, threads: int) -> None:
        """Threads for the direct landmark network (the pipeline lowers it while networks run beside)."""
        if self._direct is not None:
            self._direct.set_threads(threads)

    def close(self) -> None:
        for task in (self._landmarker, self._single, self._detector):
            if task is not None:
                task.close()
        self._landmarker = self._single = self._detector = None
        if self._direct is not None:
            self._direct.close()
        self._closed = True

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, image: np.ndarray, timestamp_ms: int) -> list[RawFace]:
        """Raw landmarks for one frame (timestamps are forced strictly increasing)."""
        if self._closed:
            raise RuntimeError("FaceTracker is closed")
        rgb = as_rgb(image)
        ts = max(int(timestamp_ms), self._last_ts_ms + 1)
        self._last_ts_ms = ts
        if not self._direct_mode:
            return self._detect_mediapipe(rgb, ts)
        try:
            return self._detect_direct(rgb)
        except Exception:
            if self._direct is None:
                raise
            # The stream goes on: mediapipe's whole landmarker finds the faces on every frame instead.
            log.exception("direct landmark network failed; mediapipe's landmarker tracks every frame from now on")
            self._direct.close()
            self._direct, self._previous = None, []
            return self._detect_direct(rgb)

    def _detect_direct(self, rgb: np.ndarray) -> list[RawFace]:
        self._since_search += 1
        if rgb.shape[:2] != self._previous_shape:  # last frame's crops mean nothing in a resized stream
            self._previous, self._previous_shape = [], rgb.shape[:2]
        kept, complete = [], False
        if self._previous and self._direct is not None:
            kept, complete = self._follow(rgb)
            self.calls["direct"] += 1
        if complete and not self._search_due():
            self._previous = kept
            return kept
        # Search: a face was lost, or one more may have come. Faces still followed keep their direct
        # landmarks (no step on a search frame); the search adds only faces not yet held.
        self._since_search = 0
        self.calls["search"] += 1
        self._previous = (kept + self._search_new(rgb, kept))[: self.config.max_faces]
        return self._previous

    def _search_due(self) -> bool:
        """Look for faces not yet tracked: periodically, while fewer than max_faces are."""
        cfg = self.config
        return len(self._previous) < cfg.max_faces and self._since_search >= cfg.search_every_n_frames

    def _measure(self, rgb: np.ndarray, roi: Roi) -> RawFace | None:
        """The direct network on one crop; None when no face is there (presence below threshold)."""
        assert self._direct is not None
        h, w = rgb.shape[:2]
        lms, presence = self._direct.run(rgb, roi)
        if presence < self.config.min_presence_confidence:
            return None
        return RawFace(lms, transform_matrix(lms / np.array([w, h, w], dtype=np.float32), w, h, self._geometry))

    def _follow(self, rgb: np.ndarray) -> tuple[list[RawFace], bool]:
        """Last frame's faces re-measured on crops around them, and whether all of them were: a face
        is gone when its presence falls below threshold, or when its crop converged on another face."""
        out: list[RawFace] = []
        for prev in self._previous:
            face = self._measure(rgb, roi_from_landmarks(prev.landmarks_px))
            if face is not None and not any(_same_face(face, o) for o in out):
                out.append(face)
        return out, len(out) == len(self._previous)

    def _search_new(self, rgb: np.ndarray, kept: list[RawFace]) -> list[RawFace]:
        """Faces not in ``kept``: mediapipe's detector, each new face measured by the direct network on
        mediapipe's crop for a detection; mediapipe's whole landmarker once the direct network failed."""
        h, w = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        if self._direct is None:
            if self._landmarker is None:
                self._landmarker = self._make_landmarker(self.config.max_faces, self._mp.tasks.vision.RunningMode.IMAGE)
            found = _raw_faces(self._landmarker.detect(image), w, h)
            return [f for f in found if not any(_same_face(f, k) for k in kept)]
        new: list[RawFace] = []
        for det in self._detector.detect(image).detections:
            if len(kept) + len(new) >= self.config.max_faces:
                break
            b = det.bounding_box
            centre = np.array([b.origin_x + b.width / 2.0, b.origin_y + b.height / 2.0])
            if any(np.linalg.norm(centre - f.center) < 0.5 * max(f.size, 1.0) for f in kept + new):
                continue  # already held: skip the network
            eyes = np.array([(k.x * w, k.y * h) for k in det.keypoints[:2]])
            face = self._measure(rgb, roi_from_detection((b.origin_x, b.origin_y, b.width, b.height), eyes))
            if face is not None:
                # The detection's crop leaves the landmarks 0.4-1.2 % of the eye distance (median) from where
                # tracking converges over the next frames; one pass on their own crop takes 0.1-0.5 %, so a
                # new face's glasses do not visibly settle (~5 ms, once per new face).
                face = self._measure(rgb, roi_from_landmarks(face.landmarks_px)) or face
            if face is not None and not any(_same_face(face, f) for f in kept + new):
                new.append(face)
        return new

    def _detect_mediapipe(self, rgb: np.ndarray, ts: int) -> list[RawFace]:
        """mediapipe's VIDEO graph on every frame (the path without the direct network)."""
        use_multi = self._single is None or self._search.use_multi()
        self.calls["multi" if use_multi else "single"] += 1
        landmarker = self._landmarker if use_multi else self._single
        result = landmarker.detect_for_video(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb), ts)
        if self._single is not None:
            self._search.observe(len(result.face_landmarks), used_multi=use_multi)
        return _raw_faces(result, rgb.shape[1], rgb.shape[0])

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
