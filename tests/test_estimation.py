"""rx=auto: estimate the sphere of worn lenses from synthetic renders (our own tryon, refraction
only, on a shared clip without glasses), re-tracked on the rendered frames as a live stream would be.

Conditions of the clip test: liveportrait_d0 (frontal, |yaw| < 2°), frame "round" 47 mm, no rim
drawn, four frames. Required: |error| <= 0.5 D.

- Minus −8…−2 D: met, with confidence > 0.3 (the duplicated band inside the rim).
- −1 D: met by the rim-step cue (measured −0.64…−0.71 D over runs), whose confidence is capped below
  what ``remove`` acts on, because the same cue is biased for plus lenses.
- Plus +1/+3/+5 D: NOT met. The rim step gives the right sign but too little
  power: measured +0.45, +1.54, +4.10 D (other runs, whose tracking differed slightly: +0.21…+0.45,
  +0.63…+2.33, +3.03…+4.10). The confidence stays below ``remove``'s threshold, so ``remove``
  leaves such video alone; that shipped behaviour is what the plus-lens test checks.

On a linear ramp (no texture, exact first-order model) the rim step recovers plus lenses within
±0.5 D, which checks the cue's geometry independently of the image content.

Regression (liveportrait_d10, very smooth skin): plano and +1 D renders were read as −2.34 D with
confidence 0.59/0.56 when the duplicate test's null used decoys at another distance than the tested
displacement; with the distance-matched null they are not acted on.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models.optics.estimation import (
    EstimationConfig,
    SphereEstimator,
    duplicate_ratio,
    minimum_sigma,
    refine_minimum,
    sample,
)
from models.optics.prescription import parse_prescription
from models.optics.refraction import apply_warps
from models.optics.rim_step import RimStepConfig, plane_fits, rim_steps
from models.optics.scene import OpticsOptions, face_optics
from stream.camera import mediapipe_camera
from tests.optics_helpers import track_frames

FRAMES = 12
USED = (5, 7, 9, 11)
PLUS_REASON = (
    "plus lenses: the rim step underestimates (measured +0.45/+1.54/+4.10 D for +1/+3/+5 D): texture "
    "inside the hidden ring is not the first-order extrapolation of either side"
)


def remove_threshold() -> float:
    from stream.filters.remove import RemoveParams

    return RemoveParams().auto_confidence


# -- pure maths ----------------------------------------------------------------------------------
def test_plane_fits_recover_a_plane_exactly() -> None:
    t = np.repeat(np.arange(5.0), 3)
    s = np.tile(np.array([-1.0, 0.0, 1.0]), 5)
    values = np.stack([3.0 + 2.0 * t - 0.5 * s, -1.0 + 0.0 * t + 4.0 * s])
    a, g, rms = plane_fits(values, t, s)
    np.testing.assert_allclose(a, [3.0, -1.0], atol=1e-9)
    np.testing.assert_allclose(g, [[2.0, -0.5], [0.0, 4.0]], atol=1e-9)
    np.testing.assert_allclose(rms, 0.0, atol=1e-9)


def test_rim_step_of_a_shifted_ramp_is_gradient_dot_shift() -> None:
    """Inside a circle the image shows a linear ramp T shifted by δ: the step is ∇T·δ, the gradient ∇T."""
    grad, delta = np.array([0.8, -0.5]), np.array([1.5, 0.7])
    yy, xx = np.mgrid[0:200, 0:200].astype(np.float64)
    inside = (xx - 100) ** 2 + (yy - 100) ** 2 < 50**2
    img = 100.0 + grad[0] * xx + grad[1] * yy + np.where(inside, grad @ delta, 0.0)
    ang = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    lens = SimpleNamespace(outline_px=np.stack([100 + 50 * np.cos(ang), 100 + 50 * np.sin(ang)], axis=1))
    st = rim_steps(img.astype(np.float32), lens, RimStepConfig())
    assert st is not None and len(st.step) > 150
    np.testing.assert_allclose(st.step, grad @ delta, atol=0.05)
    np.testing.assert_allclose(st.grad, np.broadcast_to(grad, st.grad.shape), atol=0.01)


def test_minimum_helpers_on_a_parabola() -> None:
    x = np.arange(-4.0, 4.01, 0.25)
    y = 2.0 * (x - 1.1) ** 2 + 3.0  # twice a NLL with sigma 1/sqrt(2): sqrt(2 / 4) = 0.707
    assert refine_minimum(x, y) == pytest.approx(1.1, abs=1e-9)
    assert minimum_sigma(x, y) == pytest.approx(np.sqrt(0.5), rel=1e-6)
    assert minimum_sigma(x, x) == float("inf")  # minimum on the grid's edge: no confidence


def test_sample_many_points_on_a_ramp() -> None:
    """Bilinear sampling is exact on a ramp, also beyond OpenCV's 32767-row limit for remap maps."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = 10.0 + 0.7 * xx - 0.4 * yy
    pts = np.random.default_rng(1).uniform(0.0, 63.0, (5, 8000, 2))
    np.testing.assert_allclose(sample(ramp, pts), 10.0 + 0.7 * pts[..., 0] - 0.4 * pts[..., 1], atol=1e-3)


def _straddling_pairs(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Pairs mirrored about x = 32 (a vertical rim), 1-4 px each side."""
    rng = np.random.default_rng(0)
    a, y = rng.uniform(1.0, 4.0, n), rng.uniform(8.0, 56.0, n)
    return np.stack([32.0 - a, y], axis=1), np.stack([32.0 + a, y], axis=1)


def test_duplicate_ratio_is_one_on_any_linear_image() -> None:
    """No lens on smooth skin: the null pairs span the same displacement, so the ratio is exactly 1. (Decoys
    2 px beyond the predicted point are farther away, so smooth skin matched the prediction better than
    them: 0.38 on d10 without glasses, read as a −2.3 D lens.)"""
    yy, xx = np.mgrid[0:64, 0:66].astype(np.float32)
    p, q = _straddling_pairs()
    ratios = duplicate_ratio(10.0 + 0.7 * xx - 0.4 * yy, p, q, EstimationConfig().offsets, 40.0)
    np.testing.assert_allclose(ratios, 1.0, atol=1e-4)


def test_duplicate_ratio_finds_an_exact_copy_at_its_rim_offset() -> None:
    """Noise mirrored about x = 32.5: the pairs (mirrored about 32) are exact copies once shifted by 0.5 px
    in x (any y), ratio 0; at every other offset they are unrelated noise, ratio ~1."""
    left = np.random.default_rng(2).uniform(0.0, 255.0, (64, 33)).astype(np.float32)
    img = np.concatenate([left, left[:, ::-1]], axis=1)
    p, q = _straddling_pairs()
    offsets = EstimationConfig().offsets
    ratios = duplicate_ratio(img, p, q, offsets, 40.0)
    copy = offsets[:, 0] == 0.5
    np.testing.assert_allclose(ratios[copy], 0.0, atol=1e-5)
    assert np.all(ratios[~copy] > 0.8)


# -- shared clip ---------------------------------------------------------------------------------
def tracked_clip(clip_frames, name: str):
    c = clip_frames(name, n=FRAMES)
    frames = list(c.frames)
    return frames, track_frames(frames, c.fps or 25.0)


@pytest.fixture(scope="module")
def clip(clip_frames, landmarker_model):
    return tracked_clip(clip_frames, "liveportrait_d0")


@pytest.fixture(scope="module")
def smooth_clip(clip_frames, landmarker_model):
    """liveportrait_d10: very smooth skin, where a biased duplicate test found a −2.3 D lens in no lens."""
    return tracked_clip(clip_frames, "liveportrait_d10")


@pytest.mark.parametrize("sphere", [1.0, 3.0, 5.0])
def test_rim_step_recovers_plus_lenses_on_a_ramp(clip, sphere: float) -> None:
    """Exact first-order case (a linear ramp seen through the tracked face's lenses): plus within ±0.5 D,
    with the capped confidence of the rim-step cue."""
    from models.glasses.catalogue import get_frame

    frames, faces = clip
    h, w = frames[0].shape[:2]
    cam = mediapipe_camera(w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.repeat(np.clip(60 + 0.25 * xx + 0.15 * yy, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    est = SphereEstimator()
    for i in (5, 9):
        fo = face_optics(faces[i][0], cam, parse_prescription(f"{sphere:+.2f}"), get_frame("round"), OpticsOptions())
        assert est.add_frame(apply_warps(ramp, list(fo.warps)), fo.lenses, fo.depth, cam)
    e = est.estimate()
    assert e is not None and e.cue == "rim_step"
    assert abs(e.sphere - sphere) <= 0.5, f"true {sphere:+.2f} D, estimated {e.sphere:+.2f} D"
    assert e.confidence <= EstimationConfig().max_step_confidence < remove_threshold()


@pytest.mark.parametrize(
    ("sphere", "confident"),
    [(-8.0, True), (-6.0, True), (-4.0, True), (-3.0, True), (-2.0, True), (-1.0, False)],
)
def test_sphere_estimate(clip, sphere: float, confident: bool) -> None:
    e = estimate_from_render(clip, sphere)
    assert abs(e.sphere - sphere) <= 0.5, f"true {sphere:+.2f} D, estimated {e.sphere:+.2f} D (conf {e.confidence:.2f})"
    if confident:
        assert e.cue == "duplicate" and e.confidence > 0.3
    else:  # measured, but by the capped cue: remove must not act on it with default settings
        assert e.cue == "rim_step" and e.confidence < remove_threshold()


@pytest.mark.parametrize("sphere", [1.0, 3.0, 5.0])
def test_plus_lenses_get_the_sign_but_are_not_acted_on(clip, sphere: float) -> None:
    """The ±0.5 D requirement is NOT met for plus lenses (see the module docstring: PLUS_REASON). What
    ships: the sign is right (never mistaken for a minus lens) and the confidence stays below what
    ``remove`` acts on, so such video is left alone rather than wrongly corrected."""
    e = estimate_from_render(clip, sphere)
    assert e.cue == "rim_step" and 0.0 < e.sphere <= sphere + 0.5, f"true {sphere:+.2f} D, estimated {e.sphere:+.2f}"
    assert e.confidence < remove_threshold()


def estimate_from_render(clip, sphere: float):
    """Render ``sphere`` on the clip (refraction only), re-track the result, estimate from USED frames."""
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
    print(f"estimate: true {sphere:+.2f} D, estimated {e.sphere:+.2f} D, confidence {e.confidence:.2f} ({e.cue})")
    return e


@pytest.mark.parametrize("sphere", [0.0, 1.0])
def test_smooth_skin_plano_and_plus_are_not_acted_on(smooth_clip, sphere: float) -> None:
    """Regression (d10): plano and +1 D were read as −2.34 D with confidence 0.59 and 0.56 (acted on)."""
    e = estimate_from_render(smooth_clip, sphere)
    assert e.confidence < remove_threshold(), f"true {sphere:+.2f} D, read {e.sphere:+.2f} D ({e.confidence:.2f})"
    assert e.cue == "rim_step"


def test_smooth_skin_minus_lens_is_measured(smooth_clip) -> None:
    """The same clip still measures a real minus lens confidently (the guard is not a blanket refusal)."""
    e = estimate_from_render(smooth_clip, -4.0)
    assert e.cue == "duplicate" and e.confidence >= remove_threshold()
    assert abs(e.sphere + 4.0) <= 0.5, f"true -4.00 D, estimated {e.sphere:+.2f} D"


def test_no_lens_is_not_called_minus(clip) -> None:
    """A face without glasses (plano) must not produce a minus estimate, nor a confident one."""
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
    assert e.confidence < remove_threshold()


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
