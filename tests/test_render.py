"""Rendering a placed frame: tint inside the lens masks only, rims on the outline, temple occlusion, PNG frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.glasses.catalogue import get_frame, load_catalogue, outline_mm, rim_widths_mm
from models.glasses.placement import lens_masks, lens_to_frame, place_glasses
from models.glasses.render import RenderStyle, render_glasses
from models.glasses.shapes import offset_outline
from models.glasses.user_png import find_lens_holes, load_png_frame, png_to_image_homography, render_png_frame
from stream.camera import mediapipe_camera
from tests.test_placement import synthetic_face

CATALOGUE = load_catalogue(use_env=False)
W, H = 640, 480


def _setup(name="rectangle", yaw=0.0, **kw):
    face = synthetic_face(yaw=yaw, t=(0.0, 0.0, 380.0))
    cam = mediapipe_camera(W, H)
    frame = get_frame(name, CATALOGUE)
    return face, cam, frame, place_glasses(face, frame, cam, **kw)


def _grey(v=128):
    return np.full((H, W, 3), v, np.uint8)


def test_tint_only_inside_the_lens_masks_darker_on_top():
    face, cam, frame, g = _setup()
    img = _grey(200)
    style = RenderStyle(tint_rgba=(0, 0, 0, 160), gradient=1.0, draw_temples=False, frame_opacity=0.0)
    out = render_glasses(img, g, frame, style, face, cam)
    changed = np.any(out != img, axis=2)
    masks = lens_masks(g, W, H)
    inside = np.zeros((H, W), bool)
    for m in masks:
        inside |= m > 0
    grown = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # anti-aliased edge pixels
    assert changed.sum() > 0.9 * inside.sum()
    assert not np.any(changed & ~grown)
    for m, _lens in zip(masks, g.lenses, strict=True):
        core = cv2.erode(m, np.ones((5, 5), np.uint8)) > 0
        ys = np.nonzero(core)[0]
        top = out[core & (np.arange(H)[:, None] < np.percentile(ys, 15))].mean()
        bottom = out[core & (np.arange(H)[:, None] > np.percentile(ys, 85))].mean()
        assert top < bottom - 40  # gradient 1: full tint at the top, clear at the bottom
        assert bottom > 180


def test_rims_drawn_where_the_outline_projects():
    face, cam, frame, g = _setup("rectangle")
    img = _grey(255)
    style = RenderStyle(color_rgb=(0, 0, 255), draw_temples=False)
    out = render_glasses(img, g, frame, style, face, cam)
    inner = np.asarray(outline_mm(frame, len(g.left.outline_px)))
    mid = offset_outline(inner, rim_widths_mm(frame, inner) / 2.0)  # the middle of the rim
    m = g.frame_to_cam
    for lens in g.lenses:
        px = cam.project(lens_to_frame(mid, lens.side, frame) @ m[:3, :3].T + m[:3, 3])
        xi, yi = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
        rim = out[yi, xi].astype(int)
        assert np.mean((rim[:, 2] > 200) & (rim[:, 0] < 80)) > 0.95  # blue, where the rim projects
    # Lens openings stay clear (no tint asked for) but for the faint nose-pad hint seen through them.
    for msk in lens_masks(g, W, H):
        core = cv2.erode(msk, np.ones((5, 5), np.uint8)) > 0
        assert np.mean(np.all(out[core] == 255, axis=1)) > 0.9
        assert out[core].min() > 150
    # Rim thickness override: a thicker rim covers more pixels.
    thick = render_glasses(img, g, frame, RenderStyle(rim_thickness_mm=6.0, draw_temples=False), face, cam)
    thin = render_glasses(img, g, frame, RenderStyle(rim_thickness_mm=1.0, draw_temples=False), face, cam)
    assert np.any(thick != img, axis=2).sum() > 2 * np.any(thin != img, axis=2).sum()


def _temple_coverage(img, face, cam, frame, g, s0=0.45, width=3):
    """(right, left) fraction of each temple's corridor (from s0 of the way to the ear) actually drawn."""
    on = render_glasses(img, g, frame, RenderStyle(color_rgb=(255, 0, 255)), face, cam)
    off = render_glasses(img, g, frame, RenderStyle(color_rgb=(255, 0, 255), draw_temples=False), face, cam)
    temple = np.any(on != off, axis=2)
    out = []
    for lens in g.lenses:
        a, b = cam.project(np.array([lens.hinge_cam_mm + s0 * (lens.ear_cam_mm - lens.hinge_cam_mm), lens.ear_cam_mm]))
        corridor = np.zeros(temple.shape, np.uint8)
        cv2.line(corridor, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 1, width)
        out.append(float((temple & (corridor > 0)).sum() / max(corridor.sum(), 1)))
    return out


@pytest.mark.parametrize("yaw", [30.0, -30.0, 45.0])
def test_far_temple_hidden_near_temple_visible_at_strong_yaw(yaw):
    face, cam, frame, g = _setup("rectangle", yaw=yaw)
    right, left = _temple_coverage(_grey(255), face, cam, frame, g)
    # yaw > 0 turns the face to image right: the subject's left side (and left temple) goes away.
    near, far = (right, left) if yaw > 0 else (left, right)
    assert near > 0.35, (near, far)  # along the side of the head that faces the camera (the ear hides its end)
    assert far < 0.02, (near, far)  # behind the head


def test_temples_hidden_when_frontal():
    face, cam, frame, g = _setup("rectangle", yaw=0.0)
    assert max(_temple_coverage(_grey(255), face, cam, frame, g)) < 0.02  # both sides turned away


def test_far_temple_occluded_on_real_frame(clip_frames, landmarker_model):
    from stream.tracking import FaceTracker

    clip = clip_frames("liveportrait_d12", n=95)
    with FaceTracker() as tracker:
        faces = [(tracker.track(np.array(f), t) or [None])[0] for f, t in zip(clip.frames, clip.times_s, strict=True)]
    i = max((k for k, f in enumerate(faces) if f is not None), key=lambda k: abs(faces[k].pose.yaw_deg))
    face = faces[i]
    assert abs(face.pose.yaw_deg) > 14
    cam = mediapipe_camera(*face.image_size)
    frame = get_frame("rectangle", CATALOGUE)
    g = place_glasses(face, frame, cam)
    right, left = _temple_coverage(np.array(clip.frames[i]), face, cam, frame, g)
    near, far = (right, left) if face.pose.yaw_deg > 0 else (left, right)
    assert near > 0.3 and far < 0.02, (near, far)


def test_render_rejects_bad_input_and_style():
    face, cam, frame, g = _setup()
    with pytest.raises(ValueError, match="RGB uint8"):
        render_glasses(np.zeros((H, W), np.uint8), g, frame, RenderStyle(), face, cam)
    with pytest.raises(ValueError, match="RGB uint8"):
        render_glasses(np.zeros((H, W, 3), np.float32), g, frame, RenderStyle(), face, cam)
    with pytest.raises(ValueError, match="gradient"):
        RenderStyle(gradient=2.0)
    with pytest.raises(ValueError, match="tint_rgba"):
        RenderStyle(tint_rgba=(0, 0, 0, 300))


def test_glasses_off_screen_leave_the_image_untouched():
    face = synthetic_face(t=(2000.0, 0.0, 380.0))  # far outside the view
    cam = mediapipe_camera(W, H)
    frame = get_frame("round", CATALOGUE)
    g = place_glasses(face, frame, cam)
    img = _grey()
    out = render_glasses(img, g, frame, RenderStyle(tint_rgba=(0, 0, 0, 200)), face, cam)
    assert np.array_equal(out, img)
    assert all(m.max() == 0 for m in lens_masks(g, W, H))


# --- user PNG frames ---------------------------------------------------------------------------------
def _synthetic_png(centres=((150, 120), (350, 120)), axes=(80, 60), thickness=14):
    """A front-view RGBA drawing: two elliptical rims, a bridge and end pieces on a transparent canvas."""
    rgba = np.zeros((240, 500, 4), np.uint8)
    for c in centres:
        cv2.ellipse(rgba, c, axes, 0, 0, 360, (30, 20, 10, 255), thickness)
    cv2.line(rgba, (centres[0][0] + axes[0], 110), (centres[1][0] - axes[0], 110), (30, 20, 10, 255), 10)
    cv2.line(rgba, (centres[0][0] - axes[0] - 5, 100), (5, 95), (30, 20, 10, 255), 8)
    return rgba


def test_png_lens_holes_found():
    rgba = _synthetic_png()
    centres, (m_left, m_right) = find_lens_holes(rgba[:, :, 3])
    np.testing.assert_allclose(centres, [[150, 120], [350, 120]], atol=1.0)
    inner_a, inner_b = 80 - 7, 60 - 7  # the ellipse's inner edge (thickness 14 straddles the curve)
    for m in (m_left, m_right):
        assert (m > 0).sum() == pytest.approx(np.pi * inner_a * inner_b, rel=0.05)
    assert m_left[120, 150] == 255 and m_right[120, 150] == 0


def test_png_errors_are_clear():
    one = np.zeros((100, 200, 4), np.uint8)
    cv2.circle(one, (100, 50), 30, (0, 0, 0, 255), 6)
    with pytest.raises(ValueError, match="two lens openings"):
        find_lens_holes(one[:, :, 3])
    with pytest.raises(ValueError, match="RGBA"):
        load_png_frame(np.zeros((10, 10, 3), np.uint8))


def test_png_scale_and_homography():
    rgba = _synthetic_png()
    png = load_png_frame(rgba, frame_pd_mm=70.0)
    assert png.mm_per_px == pytest.approx(70.0 / 200.0)
    by_width = load_png_frame(rgba, total_width_mm=140.0)
    cols = np.flatnonzero(rgba[:, :, 3].any(axis=0))
    assert by_width.mm_per_px == pytest.approx(140.0 / (cols[-1] - cols[0] + 1))
    _face, cam, _frame, g = _setup("round")
    hmat = png_to_image_homography(png, g, cam)
    mapped = cv2.perspectiveTransform(png.hole_centers_px[None], hmat)[0]
    m = g.frame_to_cam
    expected = cam.project(np.array([[-35.0, 0, 0], [35.0, 0, 0]]) @ m[:3, :3].T + m[:3, 3])
    np.testing.assert_allclose(mapped, expected, atol=0.05)
    out = render_png_frame(_grey(255), png, g, cam)
    for c in expected:  # the holes stay see-through ...
        assert np.all(out[int(c[1]), int(c[0])] == 255)
    # ... and the rims land between them and the outside.
    ring = cv2.perspectiveTransform(np.array([[[150.0 + 80, 120.0], [350.0 - 80, 120.0]]]), hmat)[0]
    for c in ring:
        assert out[round(c[1]), round(c[0])].mean() < 120


# --- occlusion geometry (closed form) ----------------------------------------------------------------
def _frontal_head(x=0.0):
    from models.glasses.occlusion import HeadSides

    return HeadSides(eyes_mid=np.array([x, 0.0, 400.0]), axes=np.diag([1.0, -1.0, -1.0]))


def test_temple_hidden_score_closed_form():
    from models.glasses.occlusion import SIDE_MARGIN, temple_hidden_score

    head = _frontal_head()
    p = np.array([[70.0, 0.0, 430.0]])
    expected = 70.0 / np.hypot(70.0, 430.0) - SIDE_MARGIN  # sine of the angle the side faces away
    assert temple_hidden_score(p, "left", head)[0] == pytest.approx(expected)
    assert temple_hidden_score(p * [-1, 1, 1], "right", head)[0] == pytest.approx(expected)
    # In front of where the sides begin: nothing of the head around it.
    assert temple_hidden_score(np.array([[70.0, 0.0, 395.0]]), "left", head)[0] == -1.0
    # Head at image right: its right side (image left) faces the camera, the left side does not.
    off = _frontal_head(200.0)
    right = temple_hidden_score(np.array([[130.0, 0.0, 430.0]]), "right", off)[0]
    left = temple_hidden_score(np.array([[270.0, 0.0, 430.0]]), "left", off)[0]
    assert right == pytest.approx(-130.0 / np.hypot(130.0, 430.0) - SIDE_MARGIN)
    assert left > 0


def test_visible_runs_interpolate_the_cut():
    from models.glasses.occlusion import SIDE_MARGIN, visible_runs

    head = _frontal_head()
    # Along x at fixed depth the score is x / |p| - margin: zero at x = margin * 450 / sqrt(1 - margin^2).
    start, end = np.array([-30.0, 0.0, 450.0]), np.array([30.0, 0.0, 450.0])
    x0 = SIDE_MARGIN * 450.0 / np.sqrt(1 - SIDE_MARGIN**2)
    runs = visible_runs(start, end, "left", head)
    assert len(runs) == 1
    assert runs[0][0] == 0.0 and runs[0][1] == pytest.approx((x0 + 30.0) / 60.0, abs=2e-3)
    # Entirely on a side turned away: nothing visible.
    assert visible_runs(np.array([70.0, 0, 420]), np.array([75.0, 0, 500]), "left", head) == []
