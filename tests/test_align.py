"""Face alignment: closed-form similarity, anchors land on the template, crop/paste-back round trip."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.align import (
    DEFAULT_TEMPLATE,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    align,
    alignment_matrix,
    anchor_points,
    feather_mask,
    paste_back,
    similarity_lstsq,
    transform_scale,
)
from stream.face import LEFT_EYE_INNER, LEFT_EYE_OUTER, NUM_LANDMARKS, RIGHT_EYE_INNER, RIGHT_EYE_OUTER, Face
from stream.pose import HeadPose


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def face_with_anchors(anchors: np.ndarray, image_size: tuple[int, int]) -> Face:
    """A Face whose eye/mouth corners straddle the given (3, 2) anchor points (other landmarks nearby)."""
    lm = np.zeros((NUM_LANDMARKS, 3), np.float32)
    lm[:, :2] = anchors.mean(axis=0)
    d = np.array([3.0, 0.5])
    for (i, j), p in zip(
        ((RIGHT_EYE_OUTER, RIGHT_EYE_INNER), (LEFT_EYE_INNER, LEFT_EYE_OUTER), (MOUTH_RIGHT, MOUTH_LEFT)),
        anchors,
        strict=True,
    ):
        lm[i, :2], lm[j, :2] = p - d, p + d
    pose = HeadPose(0.0, 0.0, 0.0, np.eye(3), np.array([0.0, 0.0, 500.0]))
    return Face(0, lm, pose, image_size)


def frame_for(m_true: np.ndarray, size: int, image_size: tuple[int, int]) -> Face:
    """The face whose anchors map exactly onto the template under ``m_true`` (frame -> crop)."""
    inv = cv2.invertAffineTransform(m_true)
    return face_with_anchors(apply(inv, DEFAULT_TEMPLATE.points(size)), image_size)


def smooth_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(
        rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC
    )


def test_similarity_lstsq_recovers_exact_transform() -> None:
    m = similarity(1.7, 23.0, -12.0, 40.0)
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    np.testing.assert_allclose(similarity_lstsq(src, apply(m, src)), m, atol=1e-10)
    assert transform_scale(m) == pytest.approx(1.7)
    # With noise it is the least-squares optimum: any perturbation of (a, b) raises the residual.
    dst = apply(m, src) + np.random.default_rng(1).normal(0, 0.5, (5, 2))
    fit = similarity_lstsq(src, dst)
    best = np.sum((apply(fit, src) - dst) ** 2)
    for delta in np.eye(4) * 1e-3:
        for sign in (1, -1):
            a, b, tx, ty = fit[0, 0], fit[1, 0], fit[0, 2], fit[1, 2]
            da, db, dx, dy = sign * delta
            alt = np.array([[a + da, -(b + db), tx + dx], [b + db, a + da, ty + dy]])
            assert np.sum((apply(alt, src) - dst) ** 2) > best
    with pytest.raises(ValueError, match="coincide"):
        similarity_lstsq(np.ones((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("size", [128, 256, 512])
def test_eyes_and_mouth_land_on_canonical_spots(size: int) -> None:
    m_true = similarity(size / 300.0, -17.0, 20.0, -35.0)
    face = frame_for(m_true, size, (640, 480))
    m = alignment_matrix(face, size)
    # float32 landmarks: ~1e-5 px of rounding.
    np.testing.assert_allclose(m, m_true, atol=1e-4)
    np.testing.assert_allclose(apply(m, anchor_points(face.landmarks_px)), DEFAULT_TEMPLATE.points(size), atol=1e-4)
    # Eyes level and left/right the right way round in the crop.
    eyes = DEFAULT_TEMPLATE.points(size)[:2]
    assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 1e-3 * size


def test_identity_alignment_is_an_exact_round_trip() -> None:
    frame = smooth_frame(128, 128)
    face = face_with_anchors(DEFAULT_TEMPLATE.points(128), (128, 128))
    crop, m = align(frame, face, 128)
    np.testing.assert_allclose(m, np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-5)  # float32 landmarks
    assert np.array_equal(crop, frame)
    assert np.array_equal(paste_back(frame, crop, m, feather_px=0.0), frame)


def test_rotated_round_trip_reconstructs_the_face_region() -> None:
    frame = smooth_frame(480, 640)
    m_true = similarity(0.9, 12.0, -250.0, -120.0)
    face = frame_for(m_true, 128, (640, 480))
    crop, m = align(frame, face, 128)
    out = paste_back(np.zeros_like(frame), crop, m, feather_px=0.0)
    # Compare away from the footprint's edge (bilinear twice: small errors on a smooth image).
    inner = cv2.warpAffine(np.ones((128, 128), np.uint8), m, (640, 480), flags=cv2.WARP_INVERSE_MAP)
    inner = cv2.erode(inner, np.ones((5, 5), np.uint8)).astype(bool)
    assert inner.sum() > 0.8 * (128 / 0.9) ** 2
    err = np.abs(out[inner].astype(int) - frame[inner])
    assert err.mean() < 1.5 and err.max() <= 12


def test_strong_downscale_uses_prefiltered_pyramid_consistently() -> None:
    """A dot at the right eye centre of a large face must land on the canonical spot (pyrDown offsets right)."""
    frame = np.zeros((1400, 1600, 3), np.uint8)
    m_true = similarity(128 / 900.0, 8.0, -60.0, -40.0)
    face = frame_for(m_true, 128, (1600, 1400))
    eye = anchor_points(face.landmarks_px)[0]
    cv2.circle(frame, (round(eye[0] * 16), round(eye[1] * 16)), 40 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    crop, _ = align(frame, face, 128)
    g = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    centroid = np.array([(g * xs).sum(), (g * ys).sum()]) / g.sum()
    np.testing.assert_allclose(centroid, DEFAULT_TEMPLATE.points(128)[0], atol=0.05)


def test_paste_back_leaves_outside_footprint_bit_exact() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    m_true = similarity(1.3, 30.0, -60.0, -40.0)
    face = frame_for(m_true, 128, (320, 240))
    _, m = align(frame, face, 128)
    white = np.full((128, 128, 3), 255, np.uint8)
    out = paste_back(frame, white, m, feather_px=6.0)
    # Footprint computed independently: the crop square's corners mapped back, as a polygon.
    corners = cv2.transform(
        np.array([[[0, 0], [128, 0], [128, 128], [0, 128]]], np.float64), cv2.invertAffineTransform(m)
    )
    poly = np.zeros((240, 320), np.uint8)
    cv2.fillConvexPoly(poly, np.round(corners[0] * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    outside = cv2.dilate(poly, np.ones((3, 3), np.uint8)) == 0
    assert outside.sum() > 0.3 * outside.size
    assert np.array_equal(out[outside], frame[outside])
    changed = np.any(out != frame, axis=2)
    assert changed.sum() > 0 and not np.any(changed & outside)
    # Deep inside the footprint (beyond the feather) the crop wins fully.
    feather_frame_px = 6.0
    kernel = np.ones((2 * int(feather_frame_px) + 5,) * 2, np.uint8)
    # borderValue 0: the crop's edge runs outside the frame here, so the frame border is not "inside".
    deep = cv2.erode(poly, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    assert deep.sum() > 0 and np.all(out[deep] == 255)
    # The input frame is untouched.
    assert not np.array_equal(out, frame)


def test_feather_mask_ramps() -> None:
    m = feather_mask(16, 4.0)
    assert m.shape == (16, 16) and m[8, 8] == 1.0
    assert m[0, 8] == pytest.approx(0.5 / 4.0) and m[3, 8] == pytest.approx(3.5 / 4.0)
    assert np.all(feather_mask(16, 0.0) == 1.0)


def test_bad_inputs_raise() -> None:
    frame = smooth_frame(128, 128)
    face = face_with_anchors(DEFAULT_TEMPLATE.points(128), (128, 128))
    with pytest.raises(ValueError, match="crop size"):
        align(frame, face, 100)
    with pytest.raises(ValueError, match="RGB uint8"):
        align(frame.astype(np.float32), face, 128)
    lm = face.landmarks_px.copy()
    lm[RIGHT_EYE_OUTER, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        align(frame, Face(0, lm, face.pose, face.image_size), 128)
    with pytest.raises(ValueError, match="square"):
        paste_back(frame, frame[:, :64], np.eye(2, 3))


def test_real_face_from_tracker(clip_frames, landmarker_model: Path) -> None:  # type: ignore[no-untyped-def]
    """On a real frame: the tracker's eyes land on the template and the round trip reproduces the face."""
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    clip = clip_frames("liveportrait_d12", n=1)
    frame = np.ascontiguousarray(clip.frames[0])
    tracker = FaceTracker(TrackerConfig())
    try:
        faces = tracker.track(frame, 0.0)
    finally:
        tracker.close()
    if not faces:
        pytest.fail("no face tracked in the first frame of liveportrait_d12")
    crop, m = align(frame, faces[0], 256)
    assert crop.shape == (256, 256, 3)
    right, left = faces[0].landmarks_px[[RIGHT_EYE_INNER, LEFT_EYE_INNER], :2]
    r_c, l_c = apply(m, np.stack([right, left]).astype(np.float64))
    assert r_c[0] < 128 < l_c[0]  # subject's right eye on image left in the crop
    out = paste_back(frame, crop, m, feather_px=8.0)
    assert np.abs(out.astype(int) - frame).mean() < 2.0
