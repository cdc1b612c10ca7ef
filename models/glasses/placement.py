"""Where a glasses frame sits on a tracked face, in 3-D camera space (mm) and in pixels.

Frame model coordinates (mm): origin at the bridge centre on the datum line (the line through the
two boxing centres), X towards image right for a frontal face (the subject's left), Y up, Z towards
the camera -- the same axes as mediapipe's canonical face, so the frame pose is the head pose
(``rotation_cv`` columns) tilted by the pantoscopic angle about X.

Scale and depth. mediapipe's pose depth assumes a canonical-sized head; the iris (11.7 mm across)
measures the true size but its ring is only ~17 px across at webcam distances and jumps when lids
cover it (on d12: ~1.2 % mean frame-to-frame change, single jumps of 20 %). We therefore trust the
smoothed pose depth frame-to-frame (stable, no swimming) and take the absolute scale from a given
PD, which callers get from the prescription or from :class:`IrisScale` (a robust running median of
the iris-based scale). Scaling all 3-D points about the camera centre leaves their projections, and
therefore the fit on the image, unchanged: only the glasses' size relative to the face changes.

Everything here is a pure function of one frame's (already smoothed) face: deterministic, no state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from models.face3d import IRIS_DIAMETER_MM, landmarks_cam_mm
from models.glasses.catalogue import FrameSpec, outline_mm, rim_widths_mm
from models.glasses.shapes import offset_outline
from stream.camera import Pinhole
from stream.face import (
    LEFT_EYE_INNER,
    LEFT_EYE_OUTER,
    LEFT_IRIS,
    LEFT_IRIS_CENTER,
    NOSE_BRIDGE,
    RIGHT_EYE_INNER,
    RIGHT_EYE_OUTER,
    RIGHT_IRIS,
    RIGHT_IRIS_CENTER,
    Face,
)

# Eye geometry (Gullstrand / Le Grand schematic eye, adult averages).
CORNEA_APEX_MM = 3.6  # cornea apex in front of the iris plane: anterior chamber ~3.05 + central cornea ~0.55
PUPIL_TO_ROTATION_CENTRE_MM = 10.0  # iris plane to the eye's centre of rotation (13.5 mm behind the apex)
# Where temples rest: mediapipe's mesh stops at the face oval; the top of the ear's root is further back.
EAR_LANDMARKS = (127, 356)  # (right, left): face-oval points at eye height next to the ears
EAR_BEHIND_OVAL_MM = 22.0
EAR_OUTSIDE_MM = 4.0  # the temple rests on the side of the head, a little outside the mesh's oval
TEMPLE_DROP_DEG = 6.0  # temples slope slightly down from the hinge to the ear
OUTLINE_POINTS = 96
# Primary-gaze pupil relative to the centre of the palpebral fissure (mid of the eye corners), in
# face axes (x image right, y up, z towards the camera), mm. Measured as the mean over
# liveportrait_d12 (subject looking at the camera): 1.9 up, 2.7 in front; sideways under 1 mm, so 0.
PUPIL_FROM_FISSURE_CENTRE_MM = np.array([0.0, 1.9, 2.7])
EYE_CORNERS = ((RIGHT_EYE_OUTER, RIGHT_EYE_INNER), (LEFT_EYE_INNER, LEFT_EYE_OUTER))


@dataclass(frozen=True)
class LensPlacement:
    side: str  # "right" | "left" (the subject's own side; right eye is on image left)
    outline_px: np.ndarray  # (N,2) float32 lens opening (inside of the rim), image pixels
    outline_cam_mm: np.ndarray  # (N,3) the same polygon in camera space (x right, y down, z forward; mm)
    optical_center_cam_mm: np.ndarray  # (3,) in front of the pupil at the vertex distance
    optical_center_px: np.ndarray  # (2,)
    normal_cam: np.ndarray  # (3,) unit normal of the lens plane, from the lens towards the camera
    u_cam: np.ndarray  # (3,) lens-plane axis along the frame's horizontal, towards IMAGE RIGHT when frontal
    v_cam: np.ndarray  # (3,) lens-plane axis along the frame's vertical, pointing UP (towards the brow)
    vertex_distance_mm: float
    boxing_center_cam_mm: np.ndarray  # (3,) centre of the lens's bounding box
    rim_outer_cam_mm: np.ndarray  # (N,3) outer edge of the rim (opening offset by the rim width)
    rim_outer_px: np.ndarray  # (N,2) float32
    hinge_cam_mm: np.ndarray  # (3,) where the temple starts (end piece)
    ear_cam_mm: np.ndarray  # (3,) where the temple rests on the ear

    @property
    def decentration_mm(self) -> np.ndarray:
        """(2,) optical centre minus boxing centre along (u, v): how far the lab moves the optical centre."""
        d = self.optical_center_cam_mm - self.boxing_center_cam_mm
        return np.array([d @ self.u_cam, d @ self.v_cam])


@dataclass(frozen=True)
class GlassesPlacement:
    face_id: int
    lenses: tuple[LensPlacement, LensPlacement]  # (right, left)
    frame_to_cam: np.ndarray  # 4x4, frame model (mm) -> camera
    pd_mm: float  # distance PD used (given, or measured from the irises at the pose depth)
    scale: float = 1.0  # factor applied to mediapipe's metric landmarks (pd_mm given / measured)
    near_pd_mm: float = 0.0  # pupil distance as seen, eyes converged on the camera (after scaling)
    pantoscopic_deg: float = 0.0
    bridge_cam_mm: np.ndarray | None = None  # (3,) nose-rest point of the bridge

    @property
    def right(self) -> LensPlacement:
        return self.lenses[0]

    @property
    def left(self) -> LensPlacement:
        return self.lenses[1]


# --- small pure functions -------------------------------------------------------------------------


def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def distance_pd_mm(near_pd_mm: float, viewing_distance_mm: float,
                   pupil_to_centre_mm: float = PUPIL_TO_ROTATION_CENTRE_MM) -> float:
    """PD with the eyes at infinity from the PD seen while both eyes fixate a point straight ahead.

    Each eye turns about its rotation centre (``pupil_to_centre_mm`` behind the pupil) towards the
    camera at ``viewing_distance_mm``; by similar triangles the pupils sit nasally by the factor
    D / (D + r), so PD_far = PD_near * (D + r) / D.
    """
    if viewing_distance_mm <= 0:
        raise ValueError(f"viewing distance must be positive, got {viewing_distance_mm}")
    return near_pd_mm * (viewing_distance_mm + pupil_to_centre_mm) / viewing_distance_mm


def scale_for_pd(near_pd_mm: float, viewing_distance_mm: float, target_pd_mm: float,
                 pupil_to_centre_mm: float = PUPIL_TO_ROTATION_CENTRE_MM) -> float:
    """Factor s so that scaling the face by s about the camera gives distance PD ``target_pd_mm``.

    distance_pd(s * n, s * D) = s * n + n * r / D, hence s = (target - n r / D) / n.
    """
    return (target_pd_mm - near_pd_mm * pupil_to_centre_mm / viewing_distance_mm) / near_pd_mm


def iris_diameter_px(landmarks_px: np.ndarray, ring: tuple[int, int, int, int]) -> float:
    """Iris diameter in pixels: the larger of the horizontal and vertical ring spans.

    Yaw foreshortens the horizontal span and pitch the vertical one, so the larger is the less
    foreshortened (lids clip the vertical span slightly; mediapipe fits a circle so it stays close).
    """
    p = landmarks_px[list(ring), :2].astype(np.float64)
    return max(float(np.linalg.norm(p[0] - p[2])), float(np.linalg.norm(p[1] - p[3])))


def iris_scale(face: Face, camera: Pinhole) -> float:
    """Ratio of the iris-implied depth to mediapipe's depth at the eyes (1.0: they agree)."""
    lm = face.landmarks_px
    d_px = max(iris_diameter_px(lm, RIGHT_IRIS), iris_diameter_px(lm, LEFT_IRIS))
    if d_px < 2.0:
        raise ValueError(f"iris too small to measure ({d_px:.1f} px)")
    z_iris = camera.fx * IRIS_DIAMETER_MM / d_px
    z_head = float(face.pose.translation_mm[2])
    z_eyes = z_head + float(lm[[RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER], 2].mean()) * z_head / camera.fx
    return z_iris / z_eyes


class IrisScale:
    """Robust running estimate of one person's true PD from the iris size (median over a window).

    Per-frame iris sizes are too noisy to scale the glasses directly (they would pump); the median
    of a few seconds is stable and converges to the person's real scale. Feed every tracked frame of
    one face id and pass :attr:`pd_mm` to :func:`place_glasses`.
    """

    def __init__(self, window: int = 90, min_samples: int = 10) -> None:
        self._scales: deque[float] = deque(maxlen=window)
        self._pds: deque[float] = deque(maxlen=window)
        self.min_samples = min_samples

    def update(self, face: Face, camera: Pinhole) -> float | None:
        try:
            s = iris_scale(face, camera)
        except ValueError:
            return self.pd_mm
        if 0.5 < s < 2.0:  # outside: a blink or a failed iris fit, not a different person
            near, dist = measure_near_pd(pupils_cam_mm(face, camera), face.pose.rotation_cv)
            self._scales.append(s)
            self._pds.append(distance_pd_mm(near * s, dist * s))
        return self.pd_mm

    @property
    def pd_mm(self) -> float | None:
        if len(self._pds) < self.min_samples:
            return None
        return float(np.median(self._pds))


def pupils_cam_mm(face: Face, camera: Pinhole, points_cam: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) 3-D pupil centres: iris-centre rays cut by the eyes' frontal plane.

    Both pupils lie in a plane facing along the face's z-axis (anatomical symmetry), through the
    mean of mediapipe's two iris points. Unlike the two per-landmark depths, whose relative error
    grows with yaw, this uses only the pose and one mean depth, and still projects exactly onto the
    iris centres.
    """
    pts = landmarks_cam_mm(face, camera) if points_cam is None else points_cam
    z_f = np.asarray(face.pose.rotation_cv, dtype=np.float64)[:, 2]
    anchor = (pts[RIGHT_IRIS_CENTER] + pts[LEFT_IRIS_CENTER]) / 2.0
    rays = camera.rays(face.landmarks_px[[RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER], :2])
    out = [intersect_line_plane(np.zeros(3), r, anchor, z_f) for r in rays]
    return out[0], out[1]


def measure_near_pd(pupils: tuple[np.ndarray, np.ndarray], rotation_cv: np.ndarray) -> tuple[float, float]:
    """(PD along the face's x-axis, distance from the camera to the pupils' midpoint), mm."""
    pr, pl = pupils
    return float((pl - pr) @ np.asarray(rotation_cv)[:, 0]), float(np.linalg.norm((pl + pr) / 2.0))


def intersect_line_plane(origin: np.ndarray, direction: np.ndarray, point: np.ndarray,
                         normal: np.ndarray) -> np.ndarray:
    denom = float(direction @ normal)
    if abs(denom) < 1e-9:
        raise ValueError("line is parallel to the lens plane")
    return origin + direction * (float((point - origin) @ normal) / denom)


# --- placement ------------------------------------------------------------------------------------


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


@lru_cache(maxsize=256)
def _lens_basis(side: str, frame: FrameSpec) -> tuple[np.ndarray, np.ndarray]:
    """(pivot (3,), M (3x3)) mapping lens-2D coordinates (x to the temple, y up) into frame coordinates.

    Face-form wrap turns each lens about a vertical axis through its nasal edge, temple side back,
    so the bridge stays in the frame plane and the end pieces move towards the ears. Cached (read-only):
    it depends on the frame only.
    """
    sign = 1.0 if side == "left" else -1.0
    pivot = np.array([sign * frame.bridge_mm / 2.0, 0.0, 0.0])
    m = rot_y(sign * frame.wrap_deg) @ np.diag([sign, 1.0, 1.0])
    _readonly(pivot, m)
    return pivot, m


@dataclass(frozen=True)
class _LensModel:
    """One lens of a frame in frame-model coordinates (mm): everything placement needs that does not
    depend on the face, computed once per frame spec and side."""

    axes: np.ndarray  # (3, 3) rows: lens u, v, n in frame coordinates (before the frame's rotation)
    inner: np.ndarray  # (N, 3) lens opening
    outer: np.ndarray  # (N, 3) outer edge of the rim
    box: np.ndarray  # (1, 3) boxing centre
    hinge: np.ndarray  # (1, 3) end piece, on the front


@lru_cache(maxsize=64)
def _lens_model(frame: FrameSpec, side: str) -> _LensModel:
    _, m = _lens_basis(side, frame)
    sign = 1.0 if side == "left" else -1.0
    inner2d = np.asarray(outline_mm(frame, OUTLINE_POINTS))
    outer2d = offset_outline(inner2d, rim_widths_mm(frame, inner2d))
    temple_idx = int(np.argmax(outer2d[:, 0] - 0.05 * np.abs(outer2d[:, 1])))  # outermost, near mid-height
    hinge2d = outer2d[temple_idx] + np.array([frame.endpiece_mm, 0.0])
    axes = np.array([m @ np.array([sign, 0.0, 0.0]), m @ np.array([0.0, 1.0, 0.0]), m @ np.array([0.0, 0.0, 1.0])])
    model = _LensModel(axes, lens_to_frame(inner2d, side, frame), lens_to_frame(outer2d, side, frame),
                       lens_to_frame(np.zeros((1, 2)), side, frame), lens_to_frame(hinge2d[None], side, frame))
    _readonly(model.axes, model.inner, model.outer, model.box, model.hinge)
    return model


def lens_to_frame(points2d: np.ndarray, side: str, frame: FrameSpec) -> np.ndarray:
    """(N, 2) lens-outline coordinates (shapes.py axes) -> (N, 3) frame-model coordinates, mm."""
    pivot, m = _lens_basis(side, frame)
    local = np.column_stack([points2d[:, 0] + frame.lens_width_mm / 2.0, points2d[:, 1], np.zeros(len(points2d))])
    return pivot + local @ m.T


def place_glasses(face: Face, frame: FrameSpec, camera: Pinhole, *, vertex_distance_mm: float = 12.0,
                  pantoscopic_deg: float = 8.0, pd_mm: float | None = None,
                  anchor: str = "pupils") -> GlassesPlacement:
    """Fit ``frame`` to ``face``: optical centres in front of the pupils at the vertex distance.

    ``pd_mm`` (distance PD, e.g. from the prescription or :class:`IrisScale`) sets the face's metric
    scale; without it mediapipe's pose depth is used and the PD is measured from the irises.

    ``anchor="pupils"`` centres the lenses on this frame's pupils (at the distance PD): exact for
    optics, but the frame follows the gaze -- e.g. ~2.6 mm sideways when the head turns 15 degrees
    while the eyes stay on the camera. ``anchor="eyes"`` holds the frame rigid with the head (from
    the eye corners), as real glasses are: use it for display; the eyes then look through the lens
    off-centre when they turn, as they do through real glasses.
    """
    if not 5.0 <= vertex_distance_mm <= 30.0:
        raise ValueError(f"vertex distance must be in [5, 30] mm, got {vertex_distance_mm}")
    if not -5.0 <= pantoscopic_deg <= 25.0:
        raise ValueError(f"pantoscopic tilt must be in [-5, 25] deg, got {pantoscopic_deg}")
    if pd_mm is not None and not 40.0 <= pd_mm <= 85.0:
        raise ValueError(f"PD must be in [40, 85] mm, got {pd_mm}")
    if face.landmarks_px.shape != (478, 3) or not np.all(np.isfinite(face.landmarks_px)):
        raise ValueError(f"face {face.face_id}: landmarks must be a finite (478, 3) array")
    if not (np.all(np.isfinite(face.pose.rotation_cv)) and np.all(np.isfinite(face.pose.translation_mm))
            and face.pose.translation_mm[2] > 0):
        raise ValueError(f"face {face.face_id}: head pose is not finite or not in front of the camera")
    pts = landmarks_cam_mm(face, camera)
    r_face = np.asarray(face.pose.rotation_cv, dtype=np.float64)
    x_f, y_f, z_f = r_face[:, 0], r_face[:, 1], r_face[:, 2]
    pupils = pupils_cam_mm(face, camera, pts)
    near, dist = measure_near_pd(pupils, r_face)
    if near <= 1.0:
        raise ValueError(f"irises are not apart along the face's x-axis (near PD {near:.1f} mm); bad landmarks")
    scale = 1.0
    if pd_mm is not None:
        scale = scale_for_pd(near, dist, pd_mm)
        pts = pts * scale
        pupils = (pupils[0] * scale, pupils[1] * scale)
        near, dist = near * scale, dist * scale
    pd_used = distance_pd_mm(near, dist)

    if anchor == "eyes":
        # Rigid with the head: where the pupils sit in primary gaze, from the eye corners, which do
        # not move with the gaze; the lenses are centred there at the distance PD.
        refs = [(pts[a] + pts[b]) / 2.0 + r_face @ PUPIL_FROM_FISSURE_CENTRE_MM for a, b in EYE_CORNERS]
        mid = (refs[0] + refs[1]) / 2.0
        sight_origins = tuple(
            mid + sign * (pd_used / 2.0) * x_f + float((ref - mid) @ y_f) * y_f
            + (float((ref - mid) @ z_f) + CORNEA_APEX_MM) * z_f
            for sign, ref in zip((-1.0, 1.0), refs, strict=True))
    elif anchor == "pupils":
        mid = (pupils[0] + pupils[1]) / 2.0
        # Lines of sight for distance vision: the lab centres the lenses on the distance PD, a little
        # temporal of the pupils that converge on the camera.
        shift = (pd_used - near) / 2.0
        sight_origins = (pupils[0] - shift * x_f + CORNEA_APEX_MM * z_f,
                         pupils[1] + shift * x_f + CORNEA_APEX_MM * z_f)
    else:
        raise ValueError(f"anchor must be 'pupils' or 'eyes', got {anchor!r}")

    r_frame = r_face @ rot_x(pantoscopic_deg)  # positive tilt: lens bottoms towards the cheeks
    oc_mid = (sight_origins[0] + sight_origins[1]) / 2.0 + vertex_distance_mm * z_f
    # Height: the bridge's nose-rest point sits at the nasal bridge landmark's height.
    bridge_above_pupils = float((pts[NOSE_BRIDGE] - mid) @ y_f)
    origin = oc_mid + (bridge_above_pupils - frame.bridge_height_mm) * r_frame[:, 1]
    # Face-form wrap sets the lenses back towards the temples; the vertex distance is measured at
    # the optical centres, so move the frame forward by the mean setback there (exact: the lines of
    # sight run along z_f, so the cut point moves by the same amount as the frame).
    setback = 0.0
    for i, side in enumerate(("right", "left")):
        pivot, m = _lens_basis(side, frame)
        cut = intersect_line_plane(sight_origins[i], z_f, r_frame @ pivot + origin, r_frame @ m[:, 2])
        setback += float((sight_origins[i] + vertex_distance_mm * z_f - cut) @ z_f) / 2.0
    origin = origin + setback * z_f
    frame_to_cam = np.eye(4)
    frame_to_cam[:3, :3] = r_frame
    frame_to_cam[:3, 3] = origin

    def to_cam(p: np.ndarray) -> np.ndarray:
        return p @ r_frame.T + origin

    lenses = []
    for i, side in enumerate(("right", "left")):
        pivot, _ = _lens_basis(side, frame)
        model = _lens_model(frame, side)
        sign = 1.0 if side == "left" else -1.0
        u = r_frame @ model.axes[0]  # lens-x points to the temple; u to image right
        v = r_frame @ model.axes[1]
        n = r_frame @ model.axes[2]
        pivot_cam = to_cam(pivot)
        oc = intersect_line_plane(sight_origins[i], z_f, pivot_cam, n)
        inner = to_cam(model.inner)
        outer = to_cam(model.outer)
        box = to_cam(model.box)[0]
        hinge = to_cam(model.hinge)[0] - 3.0 * n  # hinges sit behind the front
        hinge = hinge.astype(np.float64)
        ear_anchor = pts[EAR_LANDMARKS[i]] + sign * EAR_OUTSIDE_MM * x_f - EAR_BEHIND_OVAL_MM * z_f
        ear = _temple_end(hinge, ear_anchor, r_frame, frame.temple_length_mm)
        # One projection for the opening, the rim and the optical centre (element-wise: same values).
        px = camera.project(np.vstack([inner, outer, oc[None]]))
        k = len(inner)
        lenses.append(LensPlacement(
            side=side,
            outline_px=px[:k].astype(np.float32),
            outline_cam_mm=inner,
            optical_center_cam_mm=oc,
            optical_center_px=px[-1].astype(np.float32),
            normal_cam=n,
            u_cam=u,
            v_cam=v,
            vertex_distance_mm=vertex_distance_mm,
            boxing_center_cam_mm=box,
            rim_outer_cam_mm=outer,
            rim_outer_px=px[k:-1].astype(np.float32),
            hinge_cam_mm=hinge,
            ear_cam_mm=ear,
        ))
    bridge = to_cam(np.array([[0.0, frame.bridge_height_mm, 0.0]]))[0]
    return GlassesPlacement(
        face_id=face.face_id,
        lenses=(lenses[0], lenses[1]),
        frame_to_cam=frame_to_cam,
        pd_mm=float(pd_used),
        scale=float(scale),
        near_pd_mm=float(near),
        pantoscopic_deg=float(pantoscopic_deg),
        bridge_cam_mm=bridge,
    )


def _temple_end(hinge: np.ndarray, ear_anchor: np.ndarray, r_frame: np.ndarray, temple_length_mm: float) -> np.ndarray:
    """Ear rest point: beside the head at the ear (from the mesh), at the hinge's height less the slope.

    Temples splay from the hinges out to the head's width and run back to the root of the ear; the
    frame's temple length caps how far back the straight part reaches (the rest bends behind the ear).
    """
    d = (ear_anchor - hinge) @ r_frame  # in frame axes
    back = float(np.clip(-d[2], 0.3 * temple_length_mm, 0.8 * temple_length_mm))
    side = float(d[0])
    drop = back * math.tan(math.radians(TEMPLE_DROP_DEG))
    return hinge + r_frame @ np.array([side, -drop, -back])


def lens_masks(placement: GlassesPlacement, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) uint8 0/255 masks of the lens openings (sub-pixel accurate polygon fill)."""
    out = []
    for lens in placement.lenses:
        m = np.zeros((height, width), np.uint8)
        # Pixel (i, j) covers [i, i+1) x [j, j+1) in these coordinates; cv2 samples it at (i, j).
        poly = np.round((lens.outline_px.astype(np.float64) - 0.5) * 16.0).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(m, [poly], 255, lineType=cv2.LINE_8, shift=4)
        out.append(m)
    return out[0], out[1]
