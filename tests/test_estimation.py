"""rx=auto: estimate the sphere of worn lenses from synthetic renders (our own tryon, refraction
only, on a shared clip without glasses), re-tracked on the rendered frames as a live stream would be.

Required: |error| <= 0.5 D. Met for minus lenses of -2 D and stronger; the weak-minus and plus
cases are marked xfail(strict=True) with the reason (see models/optics/estimation.py): a plus lens
hides the ring behind its rim, so only a smoothness prior is left, and at -1 D the duplicated band
inside the rim is under one pixel wide at this face size.
"""

from __future__ import annotations

import pytest

from models.optics.estimation import SphereEstimator
from models.optics.prescription import parse_prescription
from models.optics.refraction import apply_warps
from models.optics.scene import OpticsOptions, face_optics
from stream.camera import mediapipe_camera
from tests.optics_helpers import track_frames

FRAMES = 12
USED = (5, 7, 9, 11)
PLUS_REASON = "plus lenses: rim continuity alone does not reach ±0.5 D (hidden ring, smoothness prior)"
WEAK_REASON = "-1 D: the duplicated band inside the rim is < 1 px at 512 px faces"


@pytest.fixture(scope="module")
def clip(clip_frames, landmarker_model):
    c = clip_frames("liveportrait_d0", n=FRAMES)
    frames = list(c.frames)
    return frames, track_frames(frames, c.fps or 25.0)


@pytest.mark.parametrize(
    "sphere",
    [-8.0, -6.0, -4.0, -3.0, -2.0,
     pytest.param(-1.0, marks=pytest.mark.xfail(strict=True, reason=WEAK_REASON)),
     *(pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=PLUS_REASON)) for s in (1.0, 3.0, 5.0))],
)
def test_sphere_estimate(clip, sphere: float) -> None:
    from models.glasses.catalogue import get_frame

    frames, faces = clip
    frame = get_frame("round")
    rx = parse_prescription(f"{sphere:+.2f}")
    h, w = frames[0].shape[:2]
    cam = mediapipe_camera(w, h)
    worn = []
    for img, fs in zip(frames, faces, strict=True):
        fo = face_optics(fs[0], cam, rx, frame, OpticsOptions())
        worn.append(apply_warps(img, list(fo.warps)))
    seen = track_frames(worn, 25.0)  # what the tracker makes of the glasses-wearing video
    est = SphereEstimator()
    for i in USED:
        assert seen[i], f"no face tracked in rendered frame {i}"
        fo = face_optics(seen[i][0], cam, parse_prescription("plano"), frame, OpticsOptions(strength=0.0))
        est.add_frame(worn[i], fo.lenses, fo.depth, cam)
    e = est.estimate()
    assert e is not None and e.frames == len(USED)
    print(f"estimate: true {sphere:+.2f} D, estimated {e.sphere:+.2f} D, confidence {e.confidence:.2f}")
    assert abs(e.sphere - sphere) <= 0.5, f"true {sphere:+.2f} D, estimated {e.sphere:+.2f} D (conf {e.confidence:.2f})"
    assert e.confidence > 0.3


def test_no_lens_is_not_called_minus(clip) -> None:
    """A face without glasses (plano) must not produce a confident minus estimate."""
    from models.glasses.catalogue import get_frame

    frames, faces = clip
    h, w = frames[0].shape[:2]
    cam = mediapipe_camera(w, h)
    est = SphereEstimator()
    for i in USED:
        fo = face_optics(faces[i][0], cam, parse_prescription("plano"), get_frame("round"), OpticsOptions())
        est.add_frame(frames[i], fo.lenses, fo.depth, cam)
    e = est.estimate()
    assert e is not None and e.sphere >= -0.5


def test_frame_fit_recovers_rendered_size_and_height(clip) -> None:
    """A frame rendered 15 % larger and 2 mm higher than the catalogue entry is found again."""
    from models.glasses.catalogue import get_frame
    from models.glasses.placement import place_glasses
    from models.glasses.render import RenderStyle, render_glasses
    from models.optics.frame_fit import FrameFitter, candidate

    frames, faces = clip
    h, w = frames[0].shape[:2]
    cam = mediapipe_camera(w, h)
    base = get_frame("round")
    worn_spec = candidate(base, 1.15, 1.0, 2.0)
    fitter = FrameFitter(base)
    for i in USED:
        face = faces[i][0]
        worn = render_glasses(frames[i], place_glasses(face, worn_spec, cam), worn_spec, RenderStyle(), face, cam)
        fitter.add_frame(worn, face, cam)
    fit = fitter.best()
    assert fit.lens_width_mm == pytest.approx(worn_spec.lens_width_mm)
    assert fit.lens_height_mm == pytest.approx(worn_spec.lens_height_mm)
    assert fit.bridge_height_mm == pytest.approx(worn_spec.bridge_height_mm)
