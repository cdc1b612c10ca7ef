"""Glasses catalogue and parametric lens outlines (pure, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.glasses.catalogue import (
    ENV_VAR,
    CatalogueError,
    frame_from_dict,
    get_frame,
    load_catalogue,
    outline_mm,
    parse_size,
    rim_widths_mm,
)
from models.glasses.shapes import SHAPES, lens_outline_mm, offset_outline, resample_closed, signed_area


def _segments_intersect(poly: np.ndarray) -> bool:
    """True if any two non-adjacent edges of the closed polygon cross (vectorised orientation test)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    n = len(poly)

    def orient(p, q, r):
        u, v = q - p, r - p
        return np.sign(u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0])

    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last edges share a vertex
    i, j = i[keep], j[keep]
    o1, o2 = orient(a[i], b[i], a[j]), orient(a[i], b[i], b[j])
    o3, o4 = orient(a[j], b[j], a[i]), orient(a[j], b[j], b[i])
    return bool(np.any((o1 * o2 < 0) & (o3 * o4 < 0)))


def test_self_intersection_check_detects_a_bow_tie():
    assert _segments_intersect(np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float))
    assert not _segments_intersect(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float))


def test_builtin_catalogue_covers_all_six_shapes():
    cat = load_catalogue(use_env=False)
    assert set(SHAPES) <= {f.shape for f in cat.values()}
    for name in ("round", "rectangle", "oval", "aviator", "cat-eye", "browline"):
        assert cat[name].shape == name
    assert any(f.size_label == "49□20-145" for f in cat.values())


@pytest.mark.parametrize("name", ["round", "rectangle", "oval", "aviator", "cat-eye", "browline", "round-wire"])
def test_outlines_closed_simple_and_sized(name):
    spec = get_frame(name, load_catalogue(use_env=False))
    pts = outline_mm(spec, 128)
    assert pts.shape == (128, 2)
    size = pts.max(axis=0) - pts.min(axis=0)
    assert size[0] == pytest.approx(spec.lens_width_mm, rel=0.01)
    assert size[1] == pytest.approx(spec.lens_height_mm, rel=0.01)
    # Boxing centre at the origin.
    np.testing.assert_allclose((pts.max(axis=0) + pts.min(axis=0)) / 2.0, 0.0, atol=1e-6)
    # Closed: the closing edge is as long as the others (equal arc-length sampling), no duplicates.
    seg = np.linalg.norm(np.roll(pts, -1, axis=0) - pts, axis=1)
    assert seg.min() > 0.5 * seg.mean() and seg.max() < 1.5 * seg.mean()
    assert signed_area(pts) > 0  # counter-clockwise in y-up axes
    assert not _segments_intersect(pts)
    # The rim's outer edge stays a simple polygon too.
    assert not _segments_intersect(offset_outline(pts, rim_widths_mm(spec, pts)))


def test_outline_area_matches_closed_form_for_ellipse_and_rectangle():
    ell = lens_outline_mm("round", 50.0, 40.0, {"exponent": 2.0}, 512)
    assert signed_area(ell) == pytest.approx(np.pi * 25 * 20, rel=0.005)
    r = 5.0
    rect = lens_outline_mm("rectangle", 50.0, 30.0, {"corner_radius_mm": r}, 512)
    assert signed_area(rect) == pytest.approx(50 * 30 - (4 - np.pi) * r * r, rel=0.005)


def test_shape_character():
    cat_eye = lens_outline_mm("cat-eye", 52, 40, {"lift_mm": 8.0}, 256)
    top = cat_eye[np.argmax(cat_eye[:, 1])]
    assert top[0] > 0.25 * 26  # highest point towards the temple (+x)
    aviator = lens_outline_mm("aviator", 58, 50, {"droop_mm": 8.0}, 256)
    bottom = aviator[np.argmin(aviator[:, 1])]
    assert bottom[0] < 0  # deepest point on the nasal side
    spec = get_frame("browline", load_catalogue(use_env=False))
    pts = outline_mm(spec)
    w = rim_widths_mm(spec, pts)
    assert w[np.argmax(pts[:, 1])] == pytest.approx(spec.params["brow_mm"], rel=0.01)
    assert w[np.argmin(pts[:, 1])] == pytest.approx(spec.rim_thickness_mm)


def test_outline_cache_is_shared_and_read_only():
    spec = get_frame("round", load_catalogue(use_env=False))
    a, b = outline_mm(spec, 64), outline_mm(spec, 64)
    assert a is b
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_resample_closed_equal_spacing():
    sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    r = resample_closed(sq, 8)
    np.testing.assert_allclose(np.linalg.norm(np.roll(r, -1, axis=0) - r, axis=1), 2.0)


def test_parse_size():
    assert parse_size("49□20-145") == (49.0, 20.0, 145.0)
    assert parse_size("52x18") == (52.0, 18.0, None)
    with pytest.raises(CatalogueError, match="A□DBL-temple"):
        parse_size("fifty")


def test_user_json_extends_and_overrides(tmp_path: Path, monkeypatch):
    user = {"frames": {
        "round": {"color_rgb": [200, 0, 0]},  # field-level override of a built-in
        "my-wire": {"base": "round-wire", "size": "50□19-140", "rim_thickness_mm": 0.8},
        "fresh": {"shape": "oval", "size": "53□17-145", "lens_height_mm": 35, "shape_params": {"exponent": 2.6}},
    }}
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(user))
    base = load_catalogue(use_env=False)
    cat = load_catalogue(path)
    assert cat["round"].color_rgb == (200, 0, 0)
    assert cat["round"].lens_width_mm == base["round"].lens_width_mm
    assert cat["my-wire"].lens_width_mm == 50 and cat["my-wire"].bridge_mm == 19
    assert cat["my-wire"].temple_length_mm == 140 and cat["my-wire"].color_rgb == base["round-wire"].color_rgb
    assert cat["fresh"].params["exponent"] == 2.6
    assert set(base) < set(cat)
    monkeypatch.setenv(ENV_VAR, str(path))
    assert load_catalogue()["round"].color_rgb == (200, 0, 0)


@pytest.mark.parametrize(("entry", "message"), [
    ({"shape": "hexagon", "size": "50□20-140", "lens_height_mm": 40}, "unknown shape 'hexagon'"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": -3}, "lens_height_mm=-3"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": 400}, "outside the sane range"),
    ({"shape": "round", "lens_width_mm": 50, "lens_height_mm": 40}, "missing 'bridge_mm'"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": 40, "colour": [1, 2, 3]}, "unknown field"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": 40, "color_rgb": [1, 2, 300]}, "color_rgb"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": 40, "shape_params": {"lift_mm": 3}}, "no parameter"),
    ({"shape": "cat-eye", "size": "50□20-140", "lens_height_mm": 40, "shape_params": {"lift_mm": 99}}, "lift_mm"),
    ({"shape": "round", "size": "50□20-140", "lens_height_mm": "big"}, "must be a number"),
])
def test_invalid_entries_give_clear_errors(entry, message):
    with pytest.raises(CatalogueError, match=message) as err:
        frame_from_dict("bad-frame", entry)
    assert "bad-frame" in str(err.value)


def test_invalid_files(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogueError, match="invalid JSON"):
        load_catalogue(bad)
    with pytest.raises(CatalogueError, match="does not exist"):
        load_catalogue(tmp_path / "missing.json")
    bad.write_text(json.dumps({"frames": {"x": {"base": "nope"}}}))
    with pytest.raises(CatalogueError, match="base 'nope'"):
        load_catalogue(bad)
    with pytest.raises(CatalogueError, match="unknown frame"):
        get_frame("nope", load_catalogue(use_env=False))
