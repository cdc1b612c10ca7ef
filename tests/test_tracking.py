"""FaceTracker on real footage (shared clips) and on synthetic edge cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import TrackerConfig
from stream.face import LEFT_EYE_OUTER, NUM_LANDMARKS, RIGHT_EYE_OUTER, Face
from stream.pipeline import FramePipeline
from stream.tracking import FaceTracker, RawFace, _Track, as_rgb, assign_ids

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLIP = "liveportrait_d12"  # 183 frames, 25 fps, glasses, the most yaw/pitch/roll


def track_all(frames: Sequence[np.ndarray], times: Sequence[float], model: Path, **cfg: object) -> list[list[Face]]:
    with FaceTracker(TrackerConfig(model_path=str(model), **cfg)) as tracker:  # type: ignore[arg-type]
        return [tracker.track(f, t) for f, t in zip(frames, times, strict=True)]


@pytest.fixture(scope="module")
def d12(clip_frames):
    return clip_frames(CLIP)


@pytest.fixture(scope="module")
def smoothed(d12, landmarker_model) -> list[list[Face]]:
    return track_all(d12.frames, d12.times_s, landmarker_model)


@pytest.fixture(scope="module")
def raw(d12, landmarker_model) -> list[list[Face]]:
    return track_all(d12.frames, d12.times_s, landmarker_model, smoothing=False)


def test_face_found_on_nearly_every_frame(d12, smoothed):
    assert len(smoothed) == len(d12.frames) == 183
    found = sum(bool(fs) for fs in smoothed)
    assert found >= 0.95 * len(smoothed), f"face on {found}/{len(smoothed)} frames"
    face = next(fs[0] for fs in smoothed if fs)
    assert face.landmarks_px.shape == (NUM_LANDMARKS, 3) and face.landmarks_px.dtype == np.float32
    assert face.image_size == (512, 512)


def test_one_stable_id_for_the_whole_clip(smoothed):
    # d12 has fast head motion (one jump of ~0.6 eye widths in a frame): the id must survive it.
    assert all(len(fs) <= 1 for fs in smoothed)
    assert {f.face_id for fs in smoothed for f in fs} == {0}


def _jitter(results: list[list[Face]]) -> float:
    """Mean |second difference| of landmark positions, in units of the outer-eye distance."""
    lm = np.stack([fs[0].landmarks_px[:, :2] for fs in results if fs]).astype(np.float64)
    iod = np.linalg.norm(lm[:, LEFT_EYE_OUTER] - lm[:, RIGHT_EYE_OUTER], axis=1).mean()
    return float(np.abs(lm[2:] - 2 * lm[1:-1] + lm[:-2]).mean() / iod)


def test_smoothing_reduces_landmark_jitter(smoothed, raw):
    j_s, j_r = _jitter(smoothed), _jitter(raw)
    assert j_s < 0.8 * j_r, f"smoothed jitter {j_s:.4f} vs raw {j_r:.4f}"


def test_smoothing_keeps_landmarks_on_the_face(smoothed, raw):
    # Smoothing must not lag far behind: mean offset well under one eye width even with fast motion.
    both = [(s, r) for s, r in zip(smoothed, raw, strict=True) if s and r]
    pairs = [(s[0].landmarks_px[:, :2], r[0].landmarks_px[:, :2]) for s, r in both]
    iod = np.mean([np.linalg.norm(r[LEFT_EYE_OUTER] - r[RIGHT_EYE_OUTER]) for _, r in pairs])
    lag = np.mean([np.linalg.norm(s - r, axis=1).mean() for s, r in pairs]) / iod
    assert lag < 0.1, f"mean smoothed-vs-raw offset {lag:.3f} eye widths"


def test_yaw_changes_sign_on_mirrored_frames(d12, raw, landmarker_model):
    yaw = np.array([fs[0].pose.yaw_deg if fs else 0.0 for fs in raw])
    turned = np.flatnonzero(np.abs(yaw) > 10)
    assert (yaw > 10).any() and (yaw < -10).any(), "d12 should turn both ways"
    picks = turned[np.linspace(0, len(turned) - 1, 6).round().astype(int)]
    frames = [d12.frames[i] for i in picks]
    times = [d12.times_s[i] for i in picks]
    # A fresh tracker per orientation: VIDEO mode wants increasing timestamps within one tracker.
    orig = track_all(frames, times, landmarker_model, smoothing=False)
    flipped = track_all([np.ascontiguousarray(f[:, ::-1]) for f in frames], times, landmarker_model, smoothing=False)
    for i, o, m in zip(picks, orig, flipped, strict=True):
        assert o and m, f"frame {i}: face lost"
        y_o, y_m = o[0].pose.yaw_deg, m[0].pose.yaw_deg
        assert np.sign(y_o) == np.sign(yaw[i]) and abs(y_o) > 8
        assert np.sign(y_m) == -np.sign(y_o), f"frame {i}: yaw {y_o:.1f} mirrored to {y_m:.1f}"
        assert abs(y_m + y_o) < 5.0  # a mirror flips yaw (and roll) but keeps the magnitude
        assert abs(m[0].pose.roll_deg + o[0].pose.roll_deg) < 5.0


@pytest.fixture(scope="module")
def two_face_frames(d12, clip_frames):
    other = clip_frames("liveportrait_d0", 12)
    frames = [np.concatenate([a, b], axis=1) for a, b in zip(d12.frames[:12], other.frames, strict=True)]
    return frames, d12.times_s[:12]


def test_two_faces_get_distinct_stable_ids(two_face_frames, landmarker_model):
    frames, times = two_face_frames
    results = track_all(frames, times, landmarker_model, max_faces=2)
    assert all(len(fs) == 2 for fs in results)
    first = {f.face_id: f.center_px[0] < 512 for f in results[0]}  # id -> "is the left face"
    assert len(first) == 2 and sorted(first.values()) == [False, True]
    for fs in results:
        assert {f.face_id: f.center_px[0] < 512 for f in fs} == first
        assert all(f.image_size == (1024, 512) for f in fs)


def test_max_faces_one_gives_one_face(two_face_frames, landmarker_model):
    frames, times = two_face_frames
    results = track_all(frames[:4], times[:4], landmarker_model, max_faces=1)
    assert [len(fs) for fs in results] == [1, 1, 1, 1]
    assert len({fs[0].face_id for fs in results}) == 1


def test_no_face_returns_empty_and_pipeline_passes_frame_untouched(landmarker_model):
    rng = np.random.default_rng(0)
    gradient = np.broadcast_to(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 640, 3))
    blurred_noise = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 8)
    frames = [np.zeros((480, 640, 3), np.uint8), np.ascontiguousarray(gradient), blurred_noise]
    assert track_all(frames, [0.0, 0.04, 0.08], landmarker_model) == [[], [], []]
    pipe = FramePipeline("landmarks", TrackerConfig(model_path=str(landmarker_model)))
    try:
        for i, f in enumerate(frames):
            out, res = pipe.process(f, i / 25)
            assert res.faces == [] and res.errors == []
            assert out.shape == f.shape and np.array_equal(out, f)
            assert "track" in res.timings_ms and "landmarks" in res.timings_ms
    finally:
        pipe.close()


def test_odd_size_grayscale_and_rgba_input(d12, landmarker_model):
    odd = cv2.resize(np.asarray(d12.frames[0]), (641, 479), interpolation=cv2.INTER_AREA)
    variants = [odd, cv2.cvtColor(odd, cv2.COLOR_RGB2GRAY), cv2.cvtColor(odd, cv2.COLOR_RGB2RGBA),
                np.pad(odd, ((0, 0), (1, 1), (0, 0)))[:, 1:-1]]  # the last one is a non-contiguous view
    results = track_all(variants, [0.0, 0.04, 0.08, 0.12], landmarker_model, smoothing=False)
    ref = results[0][0].landmarks_px[:, :2]
    for fs in results:
        assert len(fs) == 1 and fs[0].image_size == (641, 479)
        xy = fs[0].landmarks_px[:, :2]
        assert (xy[:, 0] > 0).all() and (xy[:, 0] < 641).all() and (xy[:, 1] > 0).all() and (xy[:, 1] < 479).all()
        iod = np.linalg.norm(ref[LEFT_EYE_OUTER] - ref[RIGHT_EYE_OUTER])
        assert np.abs(xy - ref).mean() < 0.1 * iod  # same face, same place, whatever the channel layout


def test_as_rgb_rejects_non_uint8_and_normalises_layouts():
    with pytest.raises(ValueError, match="uint8"):
        as_rgb(np.zeros((4, 4, 3), np.float32))
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = as_rgb(gray)
    assert rgb.shape == (3, 4, 3) and (rgb == gray[:, :, None]).all()
    rgba = np.dstack([rgb, np.full((3, 4), 7, np.uint8)])
    assert np.array_equal(as_rgb(rgba), rgb) and as_rgb(rgba).flags.c_contiguous


def _raw_at(x: float, y: float, size: float = 100.0) -> RawFace:
    lm = np.zeros((NUM_LANDMARKS, 3), np.float32)
    lm[:, 0], lm[:, 1] = x, y
    lm[RIGHT_EYE_OUTER, 0], lm[LEFT_EYE_OUTER, 0] = x - size / 2, x + size / 2
    return RawFace(lm, np.eye(4))


def _track_at(face_id: int, x: float, y: float, size: float = 100.0) -> _Track:
    return _Track(face_id, np.array([x, y]), size, 0.0, None, None, None)  # type: ignore[arg-type]


def test_assign_ids_nearest_first_and_continuity_pass():
    tracks = [_track_at(0, 100, 100), _track_at(1, 400, 100)]
    # Swapped order in the landmarker's output must not swap ids.
    out = assign_ids(tracks, [_raw_at(410, 100), _raw_at(95, 100)], radius=0.6)
    assert [ti for ti, _ in out] == [1, 0]
    # A fast move (1.0 face sizes) keeps the id only for a track seen on the previous frame.
    fast = [_raw_at(200, 100)]
    assert assign_ids(tracks[:1], fast, radius=0.6)[0][0] is None
    assert assign_ids(tracks[:1], fast, radius=0.6, continuous={0})[0][0] == 0
    # ... and never further than the continuity radius (a different face elsewhere).
    assert assign_ids(tracks[:1], [_raw_at(400, 100)], radius=0.6, continuous={0})[0][0] is None
