"""A user's own glasses PNG as the try-on frame: its holes bound the refraction, its pixels are drawn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.filters import FilterError, FrameContext, create
from tests.optics_helpers import track_frames


def _write_png(path, centres=((150, 120), (350, 120)), axes=(70, 55), thickness=14) -> str:
    """Two elliptical rims (dark brown), a bridge and end pieces, transparent lens openings (BGRA on disk)."""
    bgra = np.zeros((240, 500, 4), np.uint8)
    for c in centres:
        cv2.ellipse(bgra, c, axes, 0, 0, 360, (10, 20, 30, 255), thickness)
    cv2.line(bgra, (centres[0][0] + axes[0], 110), (centres[1][0] - axes[0], 110), (10, 20, 30, 255), 10)
    cv2.imwrite(str(path), bgra)
    return str(path)


@pytest.fixture(scope="module")
def frontal(clip_frames, landmarker_model):
    clip = clip_frames("liveportrait_d12", n=12)
    frames = list(clip.frames)
    faces = track_frames(frames, clip.fps or 25.0)
    i = 10
    h, w = frames[i].shape[:2]
    return frames[i], FrameContext(i, i / 25.0, faces[i], w, h)


def test_png_frame_bounds_refraction_and_is_drawn(tmp_path, frontal) -> None:
    frame, ctx = frontal
    png = _write_png(tmp_path / "mine.png")
    both = create("tryon", {"rx": "-6", "png": png, "frame": "oval", "pd": 62})
    refr_only = create("tryon", {"rx": "-6", "png": png, "frame": "oval", "pd": 62, "draw_frame": False})
    catalogue = create("tryon", {"rx": "-6", "frame": "oval", "pd": 62, "draw_frame": False})
    lenses = refr_only.optics(ctx)[0].lenses
    cat_lenses = catalogue.optics(ctx)[0].lenses
    for lens, cat in zip(lenses, cat_lenses, strict=True):
        area = cv2.contourArea(lens.outline_px.astype(np.float32))
        # The PNG's elliptical openings (semi-axes 63x48 px at 70 mm between centres -> 22x17 mm) differ
        # from the catalogue oval's, and the optical centres stay at the pupils.
        assert area != pytest.approx(cv2.contourArea(cat.outline_px.astype(np.float32)), rel=0.05)
        np.testing.assert_allclose(lens.optical_center_px, cat.optical_center_px, atol=1e-6)
        # Expected area from the hole ellipse mapped at the frame's scale (pixels per mm at the lens).
        px_per_mm = np.linalg.norm(lens.outline_px[0] - lens.outline_px[len(lens.outline_px) // 2]) / np.linalg.norm(
            lens.outline_cam_mm[0] - lens.outline_cam_mm[len(lens.outline_cam_mm) // 2])
        hole_mm2 = np.pi * (63 * 70 / 200) * (48 * 70 / 200)
        assert area == pytest.approx(hole_mm2 * px_per_mm**2, rel=0.15)
    worn = refr_only.apply(frame, ctx)
    inside = np.zeros(frame.shape[:2], np.uint8)
    for lens in lenses:
        cv2.fillPoly(inside, [np.round(lens.outline_px).astype(np.int32)], 1)
    changed = np.any(worn != frame, axis=2)
    assert changed[inside > 0].mean() > 0.3  # the minus lens refracts inside the PNG's openings ...
    assert not changed[cv2.dilate(inside, np.ones((9, 9), np.uint8)) == 0].any()  # ... and nowhere else
    drawn = both.apply(frame, ctx)
    rim = np.any(drawn != worn, axis=2) & (inside == 0)
    assert rim.sum() > 500  # the PNG's rims and bridge are drawn around the openings
    assert drawn[rim].mean() < frame[rim].mean()  # dark brown rims


def test_png_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FilterError, match="png"):
        create("tryon", {"png": str(tmp_path / "missing.png")})
    cv2.imwrite(str(tmp_path / "flat.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(FilterError, match="alpha"):
        create("tryon", {"png": str(tmp_path / "flat.png")})
    with pytest.raises(FilterError, match=r"\.png"):
        create("tryon", {"png": "/etc/passwd"})
