"""Closed-form checks of the thin-lens tracer: magnification 1/(1 − dF), cylinder meridians,
Prentice prism shift, identity for a zero prescription; plus the face depth rasteriser."""

from __future__ import annotations

import numpy as np
import pytest

from models.optics.face_depth import FaceDepth, rasterize_depth
from models.optics.lens_geometry import RoundLens, lens_mask
from models.optics.power import power_matrix, prism_vector
from models.optics.refraction import LensPower, apply_warps, lens_warp, trace_lens
from stream.camera import Pinhole

W = H = 401


def setup(lens_z: float, d: float, f_px: float = 500.0) -> tuple[Pinhole, RoundLens, FaceDepth]:
    """Fronto-parallel lens at depth lens_z on the optical axis; a plane d mm behind it."""
    cam = Pinhole(f_px, f_px, (W - 1) / 2, (H - 1) / 2, W, H)
    c = np.array([0.0, 0.0, lens_z])
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    u, v, n = np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, -1.0])
    ring = c + 25.0 * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)
    lens = RoundLens("right", cam.project(ring).astype(np.float32), ring, c, cam.project(c), n, u, v, 12.0)
    depth = FaceDepth(np.full((H // 4, W // 4), lens_z + d, np.float32), 0.25, cam, lens_z + d)
    return cam, lens, depth


def apparent_scale(cam: Pinhole, lens: RoundLens, depth: FaceDepth, power: LensPower, direction: np.ndarray) -> float:
    p = np.array([[cam.cx, cam.cy]]) + 20.0 * direction[None, :]
    s = trace_lens(p, lens, power, depth, cam)
    return float(np.linalg.norm(p[0] - [cam.cx, cam.cy]) / np.linalg.norm(s[0] - [cam.cx, cam.cy]))


@pytest.mark.parametrize("sphere", [-8.0, -4.0, -1.0, 2.0, 6.0])
@pytest.mark.parametrize("d", [12.0, 30.0])
def test_magnification_distant_camera(sphere: float, d: float) -> None:
    cam, lens, depth = setup(lens_z=20000.0, d=d, f_px=40000.0)  # camera 20 m away: rays nearly parallel
    m = apparent_scale(cam, lens, depth, LensPower(power_matrix(sphere, 0, None), np.zeros(2)), np.array([1.0, 0]))
    assert m == pytest.approx(1.0 / (1.0 - d * sphere / 1000.0), rel=0.01)
    assert (m < 1) == (sphere < 0)  # minus shrinks, plus magnifies


@pytest.mark.parametrize("sphere", [-8.0, 5.0])
def test_magnification_near_camera_exact(sphere: float) -> None:
    big_l, d = 500.0, 25.0
    cam, lens, depth = setup(lens_z=big_l, d=d)
    m = apparent_scale(cam, lens, depth, LensPower(power_matrix(sphere, 0, None), np.zeros(2)), np.array([0, 1.0]))
    # Paraxial ray slope a: lens hit a·L, then slope a − F·a·L/1000, plane hit a·L + d·(a − F·a·L/1000).
    exact = (big_l + d) / (big_l + d - d * sphere * big_l / 1000.0)
    assert m == pytest.approx(exact, rel=1e-3)


def test_cylinder_changes_only_the_meridian_across_its_axis() -> None:
    d = 20.0
    cam, lens, depth = setup(lens_z=20000.0, d=d, f_px=40000.0)
    power = LensPower(power_matrix(0.0, -4.0, 180.0), np.zeros(2))  # axis horizontal
    along = apparent_scale(cam, lens, depth, power, np.array([1.0, 0]))
    across = apparent_scale(cam, lens, depth, power, np.array([0, 1.0]))
    assert along == pytest.approx(1.0, abs=1e-6)
    assert across == pytest.approx(1.0 / (1.0 + d * 4.0 / 1000.0), rel=0.01)
    power90 = LensPower(power_matrix(0.0, -4.0, 90.0), np.zeros(2))
    assert apparent_scale(cam, lens, depth, power90, np.array([0, 1.0])) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("base", "shift_dir"), [(90.0, (0, -1)), (0.0, (1, 0)), (270.0, (0, 1))])
def test_prism_shift_prentice(base: float, shift_dir: tuple[int, int]) -> None:
    big_l, d, prism = 500.0, 30.0, 4.0
    cam, lens, depth = setup(lens_z=big_l, d=d)
    power = LensPower(np.zeros((2, 2)), prism_vector(prism, base))
    p = np.array([[cam.cx, cam.cy]])
    s = trace_lens(p, lens, power, depth, cam)[0]
    # The ray deviates towards the base, so the pixel shows the plane point d·P/100 mm towards the base
    # (image y points down, lens v up): the image appears shifted towards the apex.
    expected_mm = d * prism / 100.0
    expected_px = expected_mm * cam.fx / (big_l + d)
    assert np.allclose(s - p[0], np.array(shift_dir) * expected_px, atol=1e-3 * expected_px)


def test_zero_prescription_is_identity_and_strength_zero_bit_exact() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cam, lens, depth = setup(lens_z=500.0, d=20.0)
    mask = lens_mask(lens, W, H)
    zero = LensPower(np.zeros((2, 2)), np.zeros(2))
    w = lens_warp(lens, zero, depth, cam)
    assert np.array_equal(apply_warps(img, [w]), img)
    # The traced (not short-circuited) zero lens: rays are not bent, so the source is the pixel itself.
    pix = np.argwhere(mask > 0)[:, ::-1].astype(np.float64)
    assert np.abs(trace_lens(pix, lens, zero, depth, cam) - pix).max() < 1e-6
    strong = LensPower(power_matrix(-8, 0, None), np.zeros(2))
    assert np.array_equal(apply_warps(img, [lens_warp(lens, strong, depth, cam, strength=0.0)]), img)
    out = apply_warps(img, [lens_warp(lens, strong, depth, cam)])
    assert np.array_equal(out[mask == 0], img[mask == 0]) and not np.array_equal(out, img)


def test_rasterize_depth_plane_and_zbuffer() -> None:
    pts = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], np.float64)
    tris = np.array([[0, 1, 2], [1, 3, 2], [0, 1, 2]])
    z = np.array([100.0, 100.0, 100.0, 100.0])
    d = rasterize_depth(pts, z, tris, (30, 30))
    assert np.all(d[:21, :21] == 100.0) and np.all(np.isinf(d[25:, :])) and np.all(np.isinf(d[:, 25:]))
    # Two overlapping triangles at different depths: the nearer one wins.
    near = rasterize_depth(np.vstack([pts, pts]), np.r_[z, z - 40], np.array([[0, 1, 2], [4, 5, 6]]), (30, 30))
    assert near[5, 5] == pytest.approx(60.0)
    # A tilted triangle interpolates 1/z (perspective-correct for a plane).
    tilt = rasterize_depth(pts[:3], np.array([100.0, 200.0, 100.0]), np.array([[0, 1, 2]]), (30, 30))
    assert tilt[0, 10] == pytest.approx(1.0 / (0.5 / 100 + 0.5 / 200))


def test_face_in_front_of_the_lens_is_not_refracted() -> None:
    """At large yaw the nose can be between the camera and the far lens: those pixels stay put."""
    cam, lens, depth = setup(lens_z=500.0, d=20.0)
    near = depth.depth.copy()
    near[:, : near.shape[1] // 2] = 480.0  # left half of the view: a surface 20 mm in front of the lens
    depth = FaceDepth(near, depth.scale, cam, depth.background_mm)
    power = LensPower(power_matrix(-6, 0, None), np.zeros(2))
    p = np.array([[cam.cx - 15.0, cam.cy], [cam.cx + 15.0, cam.cy]])
    s = trace_lens(p, lens, power, depth, cam)
    assert np.array_equal(s[0], p[0])
    assert s[1, 0] > p[1, 0] + 0.5  # the unoccluded side is refracted (minus: shows points further out)
