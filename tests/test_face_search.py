"""The face search schedule: one-face landmarker while one face is in view, periodic search for more."""

from __future__ import annotations

import numpy as np

from stream.config import TrackerConfig
from stream.tracking import FaceTracker, RawFace, _SearchSchedule


def test_schedule_starts_searching_settles_then_searches_periodically() -> None:
    s = _SearchSchedule(every=10)
    used = []
    for _ in range(40):
        m = s.use_multi()
        used.append(m)
        s.observe(1, used_multi=m)
    # First SETTLE_FRAMES frames search (a new stream may hold several faces), then every 10th.
    assert used[: _SearchSchedule.SETTLE_FRAMES] == [True] * _SearchSchedule.SETTLE_FRAMES
    rest = used[_SearchSchedule.SETTLE_FRAMES:]
    assert sum(rest) == len(rest) // 10
    assert [i for i, m in enumerate(rest) if m] == [9, 19, 29][: sum(rest)]


def test_schedule_stays_on_max_faces_while_two_are_seen() -> None:
    s = _SearchSchedule(every=10)
    for _ in range(20):  # settle on one face
        s.observe(1, used_multi=s.use_multi())
    while not s.use_multi():  # until the periodic search ...
        s.observe(1, used_multi=False)
    s.observe(2, used_multi=True)  # ... finds a second face
    assert all(s.use_multi() for _ in range(5))
    for _ in range(_SearchSchedule.SETTLE_FRAMES):
        s.observe(1, used_multi=True)
    assert not s.use_multi()  # one face again for a while: back to the cheap landmarker


def test_one_face_clip_mostly_uses_the_one_face_landmarker(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d12", n=90)
    cfg = TrackerConfig(
        max_faces=2, search_every_n_frames=30, model_path=str(landmarker_model), direct_landmarks=False
    )
    with FaceTracker(cfg) as tracker:
        found = [len(tracker.track(f, t)) for f, t in zip(clip.frames, clip.times_s, strict=True)]
        calls = dict(tracker.calls)
    assert found == [1] * 90
    assert calls["multi"] <= _SearchSchedule.SETTLE_FRAMES + 90 // 30
    assert calls["single"] == 90 - calls["multi"] and calls["direct"] == 0


def test_direct_network_follows_the_face_and_mediapipe_only_searches(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d12", n=90)
    cfg = TrackerConfig(max_faces=2, search_every_n_frames=30, model_path=str(landmarker_model))
    with FaceTracker(cfg) as tracker:
        assert tracker.direct and tracker.describe()["backend"] == "litert"
        found = [len(tracker.track(f, t)) for f, t in zip(clip.frames, clip.times_s, strict=True)]
        calls = dict(tracker.calls)
    assert found == [1] * 90
    assert calls["search"] == 90 // 30  # frames 0, 30, 60: fewer faces than max_faces, so it looks
    assert calls["direct"] == 89  # the face is followed from frame 1 on
    assert calls["single"] == calls["multi"] == 0  # mediapipe's landmarker graph never runs


def test_one_face_tracker_searches_only_when_the_face_is_lost(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d12", n=40)
    blank = np.full_like(clip.frames[0], 127)
    cfg = TrackerConfig(max_faces=1, search_every_n_frames=5, model_path=str(landmarker_model))
    with FaceTracker(cfg) as tracker:
        counts = [len(tracker.track(f, i / 25.0)) for i, f in enumerate(clip.frames[:20])]
        assert tracker.calls["search"] == 1  # max_faces already tracked: no periodic search
        counts += [len(tracker.track(blank, (20 + i) / 25.0)) for i in range(3)]
        searches_while_gone = tracker.calls["search"] - 1
        counts += [len(tracker.track(f, (23 + i) / 25.0)) for i, f in enumerate(clip.frames[23:])]
    assert counts[:20] == [1] * 20 and counts[20:23] == [0, 0, 0]
    assert searches_while_gone == 3  # presence drops on the blank frame: mediapipe searches at once
    assert all(c == 1 for c in counts[23:])


def test_second_face_appearing_is_found_within_one_search_period(clip_frames, landmarker_model) -> None:
    a = clip_frames("liveportrait_d12", n=40)
    b = clip_frames("liveportrait_d0", n=40)
    cfg = TrackerConfig(max_faces=2, search_every_n_frames=10, model_path=str(landmarker_model))
    blank = np.full_like(b.frames[0], 127)
    counts = []
    with FaceTracker(cfg) as tracker:
        for i in range(40):
            right = b.frames[i] if i >= 15 else blank  # the second person steps in at frame 15
            counts.append(len(tracker.track(np.ascontiguousarray(np.hstack([a.frames[i], right])), i / 25.0)))
    assert counts[:15] == [1] * 15
    first_two = counts.index(2)
    assert 15 <= first_two <= 15 + 10
    assert all(c == 2 for c in counts[first_two:])


def test_a_failing_direct_network_hands_every_frame_to_mediapipe(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d12", n=8)
    cfg = TrackerConfig(max_faces=1, model_path=str(landmarker_model))
    with FaceTracker(cfg) as tracker:
        counts = [len(tracker.track(f, i / 25.0)) for i, f in enumerate(clip.frames[:3])]

        def broken(*_: object) -> None:
            raise RuntimeError("interpreter gone")

        tracker._direct.run = broken  # type: ignore[union-attr, method-assign]
        counts += [len(tracker.track(f, (3 + i) / 25.0)) for i, f in enumerate(clip.frames[3:])]
        assert not tracker.direct and tracker.calls["search"] == 1 + 5
        assert tracker.describe()["backend"] == "mediapipe" and "failed" in tracker.describe()["graph"]
    assert counts == [1] * 8


def test_a_resized_stream_searches_again_and_keeps_the_face(clip_frames, landmarker_model) -> None:
    import cv2

    clip = clip_frames("liveportrait_d3", n=16)
    cfg = TrackerConfig(max_faces=1, model_path=str(landmarker_model), smoothing=False)
    with FaceTracker(cfg) as tracker:
        big = [tracker.track(f, i / 25.0) for i, f in enumerate(clip.frames[:8])]
        small = [cv2.resize(f, (333, 251)) for f in clip.frames[8:]]  # odd size, another aspect
        faces = [tracker.track(f, (8 + i) / 25.0) for i, f in enumerate(small)]
        assert tracker.calls["search"] == 2  # the first frame, and the first resized one
    with FaceTracker(cfg) as fresh:  # the resized frames as a stream of their own
        alone = [fresh.track(f, (8 + i) / 25.0) for i, f in enumerate(small)]
    assert all(len(f) == 1 for f in big + faces + alone)
    for f, g in zip(faces, alone, strict=True):
        assert f[0].image_size == (333, 251)
        assert np.median(np.linalg.norm(f[0].landmarks_px[:, :2] - g[0].landmarks_px[:, :2], axis=1)) < 1.0


def test_two_crops_that_converge_on_one_face_keep_one_and_search(clip_frames, landmarker_model) -> None:
    clip = clip_frames("liveportrait_d3", n=4)
    cfg = TrackerConfig(max_faces=2, model_path=str(landmarker_model))
    with FaceTracker(cfg) as tracker:
        tracker.detect(clip.frames[0], 0)
        (face,) = tracker._previous
        shifted = RawFace(face.landmarks_px + np.float32([6.0, 4.0, 0.0]), face.matrix_gl)
        tracker._previous = [face, shifted]  # a second track right beside the first: both crops find one face
        searches = tracker.calls["search"]
        found = tracker.detect(clip.frames[1], 40)
        assert tracker.calls["search"] == searches + 1  # a face went missing from the follow: look again
    assert len(found) == 1


def test_a_new_face_starts_where_tracking_converges(clip_frames, landmarker_model) -> None:
    """A face found by a search is measured once more on its landmarks' own crop: the detection's crop
    alone leaves it 0.4-1.2 % of the eye distance from where following it converges (measured on the
    10 clips), so its glasses would visibly settle over the first frames."""
    from stream.face import LEFT_EYE_OUTER, RIGHT_EYE_OUTER
    from stream.landmark_model import roi_from_landmarks

    errors = []
    for name in ("liveportrait_d0", "liveportrait_d6", "liveportrait_d9", "liveportrait_d10", "liveportrait_d12"):
        frame = clip_frames(name, n=1).frames[0]
        with FaceTracker(TrackerConfig(max_faces=1, model_path=str(landmarker_model))) as tracker:
            (face,) = tracker.detect(frame, 0)
            assert tracker.calls["search"] == 1
            fixed = face.landmarks_px
            for _ in range(4):  # the crop's fixed point: what following a still face settles on
                fixed = tracker._direct.run(np.ascontiguousarray(frame), roi_from_landmarks(fixed))[0]
        eye = np.linalg.norm(fixed[LEFT_EYE_OUTER, :2] - fixed[RIGHT_EYE_OUTER, :2])
        errors.append(float(np.median(np.linalg.norm(face.landmarks_px[:, :2] - fixed[:, :2], axis=1)) / eye))
    # Measured on these five: 0.20-0.37 % (mean 0.28) with the extra pass; mean 0.68 % without it.
    assert float(np.mean(errors)) < 0.0045 and max(errors) < 0.007, errors
