"""mediapipe's facial transformation matrix, recomputed in numpy from face landmarks.

A port of mediapipe's face geometry pipeline (``geometry_pipeline.cc`` and ``procrustes_solver.cc``):
the screen landmarks are lifted into a metric (centimetre) camera space with a 63 degree perspective
camera, then the canonical face mesh is fitted to them by weighted Procrustes. The result is the 4x4
matrix that FaceLandmarker returns as ``facial_transformation_matrixes``, for landmarks that come
from our own run of the landmark model (mediapipe only computes it inside its graph).

The canonical mesh and the Procrustes weights are read from ``face_landmarker.task``; the protobuf is
decoded by hand because the mediapipe wheel ships no ``.proto`` python modules.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

METADATA_NAME = "geometry_pipeline_metadata_landmarks.binarypb"
NUM_MESH_LANDMARKS = 468  # the canonical mesh; the 10 iris landmarks that follow are not used
VERTICAL_FOV_DEG = 63.0  # mediapipe's face geometry environment (face_landmarker_graph.cc)
NEAR = 1.0
_VERTEX_SIZE = 5  # xyz + uv per vertex in Mesh3d.vertex_buffer (VertexType VERTEX_PT)


@dataclass(frozen=True)
class GeometryMetadata:
    """What the pipeline needs from ``GeometryPipelineMetadata``."""

    canonical: np.ndarray  # (468, 3) canonical face mesh vertices, centimetres
    landmark_ids: np.ndarray  # (K,) Procrustes basis landmark ids
    weights: np.ndarray  # (K,) their weights
    input_source: int  # InputSource enum: 0 DEFAULT / 1 FACE_LANDMARK_PIPELINE / 2 FACE_DETECTION_PIPELINE

    @functools.cached_property
    def basis_canonical(self) -> np.ndarray:
        """(K, 3) canonical vertices of the basis: the only points with weight, so the only ones fitted."""
        return self.canonical[self.landmark_ids]


# -- protobuf wire format ------------------------------------------------------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Top-level (field number, wire type, value) of one message; length-delimited values stay bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def _floats(fields: list[tuple[int, int, int | bytes]], number: int) -> np.ndarray:
    """A repeated float field, packed (wire type 2) or not (wire type 5: the file is proto2, unpacked)."""
    raw = b"".join(v for f, w, v in fields if f == number and w in (2, 5) and isinstance(v, bytes))
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def _uints(fields: list[tuple[int, int, int | bytes]], number: int) -> list[int]:
    out: list[int] = []
    for f, w, v in fields:
        if f != number:
            continue
        if w == 0 and isinstance(v, int):
            out.append(v)
        elif w == 2 and isinstance(v, bytes):  # packed
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x)
    return out


def parse_metadata(buf: bytes) -> GeometryMetadata:
    """Decode a serialized ``GeometryPipelineMetadata``.

    Fields: 1 canonical_mesh (Mesh3d: 3 vertex_buffer floats, 4 index_buffer), 2 repeated
    procrustes_landmark_basis (WeightedLandmarkRef: 1 landmark_id, 2 weight float), 3 input_source.
    """
    top = _fields(buf)
    meshes = [v for f, w, v in top if f == 1 and w == 2 and isinstance(v, bytes)]
    if len(meshes) != 1:
        raise ValueError(f"expected one canonical_mesh, found {len(meshes)}")
    vertices = _floats(_fields(meshes[0]), 3)
    if len(vertices) % _VERTEX_SIZE:
        raise ValueError(f"vertex buffer of {len(vertices)} floats is not xyz+uv per vertex")
    canonical = vertices.reshape(-1, _VERTEX_SIZE)[:, :3].copy()
    ids: list[int] = []
    weights: list[float] = []
    for f, w, v in top:
        if f == 2 and w == 2 and isinstance(v, bytes):
            ref = _fields(v)
            lid = _uints(ref, 1)
            wt = _floats(ref, 2)
            ids.append(lid[0] if lid else 0)  # proto2 defaults
            weights.append(float(wt[0]) if len(wt) else 0.0)
    sources = [v for f, w, v in top if f == 3 and w == 0 and isinstance(v, int)]
    meta = GeometryMetadata(
        canonical=canonical,
        landmark_ids=np.array(ids, dtype=np.int64),
        weights=np.array(weights, dtype=np.float64),
        input_source=sources[-1] if sources else 0,
    )
    if len(ids) == 0 or max(ids) >= len(canonical):
        raise ValueError("Procrustes landmark basis is empty or refers past the canonical mesh")
    return meta


@functools.lru_cache(maxsize=4)
def load_metadata(task_path: str | os.PathLike[str]) -> GeometryMetadata:
    """The geometry metadata inside a ``face_landmarker.task`` bundle (a zip). Cached per path."""
    with zipfile.ZipFile(task_path) as zf:
        return parse_metadata(zf.read(METADATA_NAME))


# -- the pipeline --------------------------------------------------------------------------------
def frustum(frame_w: int, frame_h: int) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of mediapipe's perspective camera at the near plane."""
    height = 2.0 * NEAR * math.tan(math.radians(VERTICAL_FOV_DEG) / 2.0)
    width = frame_w * height / frame_h
    return -width / 2.0, width / 2.0, -height / 2.0, height / 2.0


def _width_at_near(frame_w: int, frame_h: int) -> float:
    left, right, _, _ = frustum(frame_w, frame_h)
    return right - left


def project_xy(norm: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """(N, 3) normalized landmarks (origin top left, y down) -> near-plane coordinates (y up).

    z is scaled like x: the landmark model's z is in units of the image width.
    """
    left, right, bottom, top = frustum(frame_w, frame_h)
    out = np.empty_like(norm, dtype=np.float64)
    out[:, 0] = norm[:, 0] * (right - left) + left
    out[:, 1] = (1.0 - norm[:, 1]) * (top - bottom) + bottom
    out[:, 2] = norm[:, 2] * (right - left)
    return out


def unproject(screen: np.ndarray, depth_offset: float, scale: float) -> np.ndarray:
    """Near-plane points -> metric camera space, right-handed (z towards the viewer).

    mediapipe's MoveAndRescaleZ + UnprojectXY + ChangeHandedness: the relative depth is shifted so
    the face's mean lies on the near plane, divided by the face scale, and x, y are scaled by depth.
    """
    out = np.empty_like(screen)
    z = (screen[:, 2] - depth_offset + NEAR) / scale
    out[:, 0] = screen[:, 0] * z / NEAR
    out[:, 1] = screen[:, 1] * z / NEAR
    out[:, 2] = -z
    return out


def solve_weighted_orthogonal(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """4x4 similarity ``M = [s R | t]`` minimizing ``sum_i w_i |s R a_i + t - b_i|^2`` (a: source, b: target).

    Weighted Umeyama as in mediapipe's procrustes_solver: weighted centroids, rotation from the SVD of
    the weighted cross-covariance with a reflection guard, scale ``tr(R Sigma) / var``. Points with
    zero weight do not count.
    """
    a = np.asarray(source, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or b.shape != a.shape or w.shape != (len(a),):
        raise ValueError(f"expected (N, 3) source and target and (N,) weights, got {a.shape}, {b.shape}, {w.shape}")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return _solve(a, b, w)


def _solve(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """solve_weighted_orthogonal without the input checks (the pipeline calls it three times per face)."""
    total = w.sum()
    ca = w @ a / total
    cb = w @ b / total
    ac = a - ca
    wac = ac * w[:, None]
    # sum_i w_i b_i (a_i - ca)^T: the target centroid cancels because sum_i w_i (a_i - ca) = 0.
    cov = b.T @ wac
    u, _, vt = np.linalg.svd(cov)
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        u[:, 2] *= -1.0  # a proper rotation, never a reflection (flip the least singular direction)
        rot = u @ vt
    var = float(np.vdot(ac, wac))
    if var <= 1e-12:
        raise ValueError("source points are degenerate (all weighted points coincide)")
    scale = float(np.vdot(rot, cov)) / var  # tr(R^T cov) / var
    out = np.eye(4)
    out[:3, :3] = scale * rot
    out[:3, 3] = cb - scale * (rot @ ca)
    return out


def _validate(landmarks_norm: np.ndarray, frame_w: int, frame_h: int, n: int) -> np.ndarray:
    lm = np.asarray(landmarks_norm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 3 or lm.shape[0] < n:
        raise ValueError(f"expected ({n} or more, 3) normalized landmarks, got {lm.shape}")
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"frame size must be positive, got {frame_w}x{frame_h}")
    return lm


def _metric_scale(screen: np.ndarray, depth_offset: float, meta: GeometryMetadata) -> float:
    """The face's scale (metric units per canonical unit), estimated in two passes as mediapipe does.

    ``screen`` holds the projected basis landmarks only: points outside the basis have zero weight.
    """
    if meta.input_source == 2:  # mediapipe then rewrites z from the canonical mesh: not ported
        raise NotImplementedError("FACE_DETECTION_PIPELINE geometry metadata is not supported")
    canonical, w = meta.basis_canonical, meta.weights
    # 1st pass: relative z makes unprojecting unsafe, so estimate the scale on the flat projection.
    flat = screen * np.array([1.0, 1.0, -1.0])
    first = float(np.linalg.norm(_solve(canonical, flat, w)[:3, 0]))
    # 2nd pass: unproject with that scale and refine it; the product is the face's metric scale.
    second = float(np.linalg.norm(_solve(canonical, unproject(screen, depth_offset, first), w)[:3, 0]))
    return first * second


def metric_landmarks(
    landmarks_norm: np.ndarray, frame_w: int, frame_h: int, meta: GeometryMetadata
) -> np.ndarray:
    """(N >= 468, 3) normalized landmarks -> (468, 3) camera-space points in centimetres (OpenGL axes).

    These are the points mediapipe fits the canonical mesh to (before it maps them back to the
    canonical frame for its metric mesh output).
    """
    n = len(meta.canonical)
    screen = project_xy(_validate(landmarks_norm, frame_w, frame_h, n)[:n], frame_w, frame_h)
    depth_offset = float(screen[:, 2].mean())  # over all 468 points, not just the basis
    scale = _metric_scale(screen[meta.landmark_ids], depth_offset, meta)
    return unproject(screen, depth_offset, scale)


def transform_matrix(landmarks_norm: np.ndarray, frame_w: int, frame_h: int, meta: GeometryMetadata) -> np.ndarray:
    """mediapipe's facial transformation matrix (4x4 float64) for one face's normalized landmarks.

    ``landmarks_norm`` is (N >= 468, 3): x, y in [0, 1] of the frame, z as the landmark model gives it
    (iris points after the first 468 are ignored). The matrix maps canonical-face centimetres into
    mediapipe's OpenGL camera space; its scale is 1 to within ~1e-6, as mediapipe's is.
    """
    n = len(meta.canonical)
    lm = _validate(landmarks_norm, frame_w, frame_h, n)
    depth_offset = float(lm[:n, 2].mean()) * _width_at_near(frame_w, frame_h)  # mean z after project_xy
    basis = project_xy(lm[meta.landmark_ids], frame_w, frame_h)
    scale = _metric_scale(basis, depth_offset, meta)
    return _solve(meta.basis_canonical, unproject(basis, depth_offset, scale), meta.weights)


__all__ = [
    "GeometryMetadata",
    "load_metadata",
    "metric_landmarks",
    "parse_metadata",
    "project_xy",
    "solve_weighted_orthogonal",
    "transform_matrix",
    "unproject",
]
