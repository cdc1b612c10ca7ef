"""stream.face_geometry: the weighted Procrustes solver in closed form, the metadata decoder, and the
whole pipeline against mediapipe's own facial transformation matrix on real frames."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.face_geometry import (
    GeometryMetadata,
    load_metadata,
    metric_landmarks,
    parse_metadata,
    solve_weighted_orthogonal,
    transform_matrix,
)

# Measured against mediapipe 1.2.2 on 112 frames of all 10 liveportrait clips (incl. a 512x432 crop):
# max |error| 8.7e-7 on the rotation block, 4.0e-5 cm on the translation (mediapipe works in float32).
ROT_ATOL = 1e-5
TRANS_ATOL = 5e-4  # centimetres


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1.0
    return q


# -- the weighted orthogonal solver --------------------------------------------------------------
def test_solver_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3)) * 5.0
    rot, scale, t = _random_rotation(rng), 2.7, np.array([3.0, -1.5, -30.0])
    dst = scale * src @ rot.T + t
    m = solve_weighted_orthogonal(src, dst, rng.uniform(0.1, 2.0, size=40))
    np.testing.assert_allclose(m[:3, :3], scale * rot, atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], t, atol=1e-12)
    np.testing.assert_array_equal(m[3], [0.0, 0.0, 0.0, 1.0])


def test_solver_ignores_zero_weight_points() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(30, 3))
    dst = rng.normal(size=(30, 3))  # no exact fit: the weights decide the answer
    w = rng.uniform(0.5, 1.5, size=30)
    w[::3] = 0.0
    dst_junk = dst.copy()
    dst_junk[::3] = 1e6 * rng.normal(size=(10, 3))
    keep = w > 0
    expected = solve_weighted_orthogonal(src[keep], dst[keep], w[keep])
    np.testing.assert_allclose(solve_weighted_orthogonal(src, dst_junk, w), expected, atol=1e-12)


def test_solver_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(20, 3))
    m = solve_weighted_orthogonal(src, src * np.array([1.0, 1.0, -1.0]), np.ones(20))
    assert np.linalg.det(m[:3, :3]) > 0


def test_solver_rejects_bad_inputs() -> None:
    pts = np.zeros((5, 3))
    with pytest.raises(ValueError):
        solve_weighted_orthogonal(pts, np.zeros((4, 3)), np.ones(5))
    with pytest.raises(ValueError):
        solve_weighted_orthogonal(pts, pts, np.ones(4))
    with pytest.raises(ValueError):
        solve_weighted_orthogonal(pts, pts, np.zeros(5))
    with pytest.raises(ValueError, match="degenerate"):
        solve_weighted_orthogonal(pts, pts, np.ones(5))


# -- metadata ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta(landmarker_model: Path) -> GeometryMetadata:
    return load_metadata(str(landmarker_model))


def test_metadata_from_the_model_bundle(meta: GeometryMetadata) -> None:
    assert meta.canonical.shape == (468, 3)
    assert 0 < len(meta.landmark_ids) == len(meta.weights)
    assert meta.landmark_ids.min() >= 0 and meta.landmark_ids.max() < 468
    assert len(set(meta.landmark_ids.tolist())) == len(meta.landmark_ids)
    assert np.all(meta.weights > 0)
    assert meta.input_source == 1  # FACE_LANDMARK_PIPELINE
    # The canonical face is in centimetres: about 15 cm across, centred near the origin.
    assert 10.0 < np.ptp(meta.canonical[:, 0]) < 20.0


def _key(field: int, wire: int) -> bytes:
    return bytes([field << 3 | wire])


def _len(field: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return _key(field, 2) + bytes([len(payload)]) + payload


def test_metadata_decoder_reads_packed_and_unpacked_fields() -> None:
    verts = np.arange(10, dtype=np.float32)  # two vertices, xyz+uv
    packed_mesh = _len(3, verts.tobytes())
    unpacked_mesh = b"".join(_key(3, 5) + struct.pack("<f", v) for v in verts)
    basis = _len(2, _key(1, 0) + b"\x01" + _key(2, 5) + struct.pack("<f", 0.25))
    for mesh in (packed_mesh, unpacked_mesh):
        m = parse_metadata(_key(3, 0) + b"\x01" + _len(1, mesh) + basis)
        np.testing.assert_array_equal(m.canonical, [[0, 1, 2], [5, 6, 7]])
        np.testing.assert_array_equal(m.landmark_ids, [1])
        np.testing.assert_array_equal(m.weights, [0.25])
        assert m.input_source == 1


def test_transform_matrix_rejects_bad_shapes(meta: GeometryMetadata) -> None:
    with pytest.raises(ValueError, match="468"):
        transform_matrix(np.zeros((467, 3)), 512, 512, meta)
    with pytest.raises(ValueError, match="468"):
        transform_matrix(np.zeros((478, 2)), 512, 512, meta)
    with pytest.raises(ValueError, match="frame size"):
        transform_matrix(np.zeros((478, 3)), 0, 512, meta)


# -- against mediapipe ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_landmarker(landmarker_model: Path) -> Iterator[Callable[[np.ndarray], Any]]:
    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(landmarker_model)),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=1,
        output_facial_transformation_matrixes=True,
    )
    lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        yield lambda rgb: lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    finally:
        lm.close()


def _frames(clip_frames: Callable[..., Any]) -> list[tuple[str, np.ndarray]]:
    """20 frames over 4 clips, 5 of them cropped to 512x432 to check the aspect-ratio handling."""
    out = []
    for name in ("liveportrait_d0", "liveportrait_d12", "liveportrait_d20", "liveportrait_d6"):
        clip = clip_frames(name, n=49)
        out += [(f"{name}:{i}", clip.frames[i]) for i in range(0, 49, 12)]
    out[-5:] = [(f"{k}(crop)", f[40:472]) for k, f in out[-5:]]
    return out


def test_matches_mediapipe_on_real_frames(
    meta: GeometryMetadata, image_landmarker: Callable[[np.ndarray], Any], clip_frames: Callable[..., Any]
) -> None:
    rot_err = trans_err = 0.0
    n = 0
    for key, rgb in _frames(clip_frames):
        result = image_landmarker(rgb)
        assert result.face_landmarks, f"mediapipe found no face in {key}"
        lms = np.array([(p.x, p.y, p.z) for p in result.face_landmarks[0]])
        expected = np.asarray(result.facial_transformation_matrixes[0], dtype=np.float64).reshape(4, 4)
        h, w = rgb.shape[:2]
        got = transform_matrix(lms, w, h, meta)
        rot_err = max(rot_err, float(np.abs(got[:3, :3] - expected[:3, :3]).max()))
        trans_err = max(trans_err, float(np.abs(got[:3, 3] - expected[:3, 3]).max()))
        np.testing.assert_array_equal(got[3], [0.0, 0.0, 0.0, 1.0])
        # The fitted face is a rigid (scale 1) canonical face a sensible distance in front of the camera.
        assert np.linalg.norm(got[:3, 0]) == pytest.approx(1.0, abs=1e-5)
        assert -80.0 < got[2, 3] < -10.0
        # The metric landmarks are the canonical basis mapped by that matrix, up to the fit's residual.
        pts = metric_landmarks(lms, w, h, meta)[meta.landmark_ids]
        fitted = meta.basis_canonical @ got[:3, :3].T + got[:3, 3]
        assert np.abs(pts - fitted).max() < 2.0  # cm: expressions move the lips and brows
        n += 1
    assert n == 20
    assert rot_err <= ROT_ATOL, f"rotation max abs error {rot_err:.2e}"
    assert trans_err <= TRANS_ATOL, f"translation max abs error {trans_err:.2e} cm"
