"""The landmark network run directly: crop geometry (closed form) and agreement with mediapipe's graph."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.face import LEFT_EYE_OUTER, NUM_LANDMARKS, RIGHT_EYE_OUTER
from stream.landmark_model import (
    INPUT_SIZE,
    Roi,
    crop_face,
    crop_to_image,
    project_to_image,
    roi_from_detection,
    roi_from_landmarks,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _face_points(center: tuple[float, float], half: tuple[float, float], angle: float) -> np.ndarray:
    """A 478-point stand-in: a rotated rectangle's corners and the two outer eye corners on its axis."""
    pts = np.zeros((NUM_LANDMARKS, 3))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    local = np.array([[-half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]], [half[0], -half[1]]])
    pts[:4, :2] = local @ rot.T + center
    pts[4:, :2] = center
    pts[RIGHT_EYE_OUTER, :2] = np.array([-half[0] / 2, 0.0]) @ rot.T + center
    pts[LEFT_EYE_OUTER, :2] = np.array([half[0] / 2, 0.0]) @ rot.T + center
    return pts


def test_roi_is_the_scaled_square_bounding_box_with_level_eyes() -> None:
    roi = roi_from_landmarks(_face_points((200.0, 150.0), (40.0, 60.0), 0.0))
    assert np.allclose(roi.center, [200.0, 150.0]) and roi.angle == pytest.approx(0.0)
    assert roi.side == pytest.approx(120.0 * 1.5)  # long side of the box, times 1.5
    tilted = roi_from_landmarks(_face_points((200.0, 150.0), (40.0, 60.0), math.radians(20)))
    assert tilted.angle == pytest.approx(math.radians(20))  # eye line at +20 deg (y down)


def test_roi_from_a_detection_squares_the_box_and_levels_the_eyes() -> None:
    roi = roi_from_detection((100.0, 50.0, 80.0, 120.0), np.array([[120.0, 90.0], [160.0, 130.0]]))
    assert np.allclose(roi.center, [140.0, 110.0]) and roi.side == pytest.approx(180.0)
    assert roi.angle == pytest.approx(math.radians(45))


def test_crop_corners_and_centre_land_where_the_roi_says() -> None:
    roi = Roi(center=np.array([300.0, 200.0]), side=128.0, angle=math.radians(90))
    m = crop_to_image(roi)
    to_img = lambda u, v: m[:, :2] @ np.array([u, v]) + m[:, 2]  # noqa: E731
    assert np.allclose(to_img(INPUT_SIZE / 2, INPUT_SIZE / 2), roi.center)
    # A quarter turn: the crop's +x axis runs along the image's +y, half a side from the centre.
    assert np.allclose(to_img(INPUT_SIZE, INPUT_SIZE / 2), roi.center + np.array([0.0, 64.0]))


def test_a_dot_in_the_image_is_found_in_the_crop_where_projection_puts_it() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    image[100, 180] = 255  # pixel (x=180, y=100): centre at (180.5, 100.5) in pixel-edge units
    roi = Roi(center=np.array([170.0, 110.0]), side=64.0, angle=math.radians(30))
    crop = crop_face(image, roi).astype(np.float64)[:, :, 0]
    vv, uu = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE]
    w = crop / crop.sum()  # the dot is spread by bilinear sampling; its mass centre is exact
    u, v = (w * (uu + 0.5)).sum(), (w * (vv + 0.5)).sum()
    back = project_to_image(np.array([[u, v, 0.0]]), roi)[0]
    assert np.allclose(back[:2], [180.5, 100.5], atol=0.02)


def test_depth_scales_like_x_with_the_crop() -> None:
    roi = Roi(center=np.array([50.0, 50.0]), side=512.0, angle=0.3)
    out = project_to_image(np.array([[10.0, 20.0, 8.0]]), roi)
    assert out[0, 2] == pytest.approx(8.0 * 512.0 / INPUT_SIZE)


def _mediapipe_image_mode(frames: list[np.ndarray], model: str) -> list[tuple[np.ndarray, np.ndarray]]:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=1,
        output_facial_transformation_matrixes=True,
    )
    lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        out = []
        for f in frames:
            h, w = f.shape[:2]
            r = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f)))
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in r.face_landmarks[0]])
            out.append((pts, np.array(r.facial_transformation_matrixes[0]).reshape(4, 4)))
        return out
    finally:
        lm.close()


@pytest.mark.parametrize("clip", ["liveportrait_d12", "liveportrait_d3"])
def test_direct_network_agrees_with_mediapipe_on_real_video(clip, clip_frames, landmarker_model) -> None:
    """Followed frame to frame from its own output, the direct path stays within a few pixels of
    mediapipe run afresh on every frame (which itself differs from mediapipe's VIDEO graph by
    2.6 / 7.9 px median / p95 on d12), and gives the same head pose."""
    from stream.face_geometry import load_metadata, transform_matrix
    from stream.landmark_model import LandmarkModel
    from stream.pose import pose_from_matrix

    frames = clip_frames(clip, n=60).frames
    ref = _mediapipe_image_mode(frames, str(landmarker_model))
    model = LandmarkModel(landmarker_model, threads=1)
    meta = load_metadata(landmarker_model)
    try:
        prev, errs, angle_errs = ref[0][0], [], []
        for f, (pts, mat) in zip(frames[1:], ref[1:], strict=True):
            lms, presence = model.run(f, roi_from_landmarks(prev))
            assert presence > 0.9
            errs.append(np.linalg.norm(lms[:, :2] - pts[:, :2], axis=1))
            h, w = f.shape[:2]
            ours = pose_from_matrix(transform_matrix(lms / np.array([w, h, w]), w, h, meta))
            theirs = pose_from_matrix(mat)
            angle_errs.append(max(
                abs(ours.yaw_deg - theirs.yaw_deg), abs(ours.pitch_deg - theirs.pitch_deg),
                abs(ours.roll_deg - theirs.roll_deg),
            ))
            prev = lms
    finally:
        model.close()
    e = np.concatenate(errs)
    iod = np.linalg.norm(ref[0][0][LEFT_EYE_OUTER, :2] - ref[0][0][RIGHT_EYE_OUTER, :2])
    # measured: median 1.0 % / 0.6 % of the eye distance, p95 2.7 % / 1.4 % (d12 / d3)
    assert np.median(e) < 0.02 * iod and np.percentile(e, 95) < 0.045 * iod, (np.median(e), iod)
    # measured: median 0.7 / 0.4 deg, max 1.6 / 0.9 deg
    assert np.median(angle_errs) < 1.2 and max(angle_errs) < 3.0, angle_errs


def test_thread_count_switches_without_changing_the_answer(clip_frames, landmarker_model) -> None:
    from stream.landmark_model import LandmarkModel

    frame = clip_frames("liveportrait_d3", n=1).frames[0]
    seed = _mediapipe_image_mode([frame], str(landmarker_model))[0][0]
    model = LandmarkModel(landmarker_model, threads=1)
    try:
        a, _ = model.run(frame, roi_from_landmarks(seed))
        model.set_threads(2)
        b, _ = model.run(frame, roi_from_landmarks(seed))
        assert model.threads == 2
    finally:
        model.close()
    assert np.abs(a - b).max() < 1e-2
    with pytest.raises(RuntimeError, match="closed"):
        model.run(frame, roi_from_landmarks(seed))


def test_a_face_found_by_the_detector_is_measured_as_mediapipe_measures_it(clip_frames, landmarker_model) -> None:
    """Detector crop (mediapipe's rule) + the direct network = mediapipe's landmarker on that frame."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from stream.landmark_model import DETECTOR_MEMBER, LandmarkModel, read_model

    frames = clip_frames("liveportrait_d12", n=40).frames[::8]
    ref = _mediapipe_image_mode(frames, str(landmarker_model))
    det = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=read_model(landmarker_model, DETECTOR_MEMBER)),
        running_mode=vision.RunningMode.IMAGE,
    ))
    model = LandmarkModel(landmarker_model)
    try:
        errs = []
        for f, (pts, _) in zip(frames, ref, strict=True):
            h, w = f.shape[:2]
            d = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))).detections[0]
            b = d.bounding_box
            eyes = np.array([(k.x * w, k.y * h) for k in d.keypoints[:2]])
            lms, _ = model.run(f, roi_from_detection((b.origin_x, b.origin_y, b.width, b.height), eyes))
            errs.append(np.median(np.linalg.norm(lms[:, :2] - pts[:, :2], axis=1)))
    finally:
        det.close()
        model.close()
    # measured 0.32 px median, 0.50 max: mediapipe hands out the box rounded to whole pixels
    assert np.median(errs) < 0.6 and max(errs) < 1.0, errs
