"""The per-frame fast paths compute what the straightforward versions do: batched lens tracing,
the coefficient-form depth rasteriser, the in-place projection, the cached-grid warp inversion and the
compiled (numba) kernels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.optics import kernels
from models.optics.face_depth import FaceDepth, rasterize_depth, rasterize_depth_numpy
from models.optics.hole_fill import fill_holes, fill_holes_numpy
from models.optics.inversion import invert_warp, invert_warp_numpy
from models.optics.lens_geometry import RoundLens
from models.optics.power import power_matrix
from models.optics.refraction import LensPower, lens_warp, lens_warps, paste_in_mask, trace_lens, trace_lens_numpy
from stream.camera import Pinhole

W, H = 320, 240


def _scene() -> tuple[Pinhole, tuple[RoundLens, RoundLens], FaceDepth]:
    """Two tilted lenses in front of a bumpy surface (a real depth map, not a plane)."""
    cam = Pinhole(300.0, 300.0, W / 2, H / 2, W, H)
    lenses = []
    for side, x in (("right", -32.0), ("left", 32.0)):
        c = np.array([x, 0.0, 480.0])
        t = np.radians(8.0)
        u, v = np.array([1.0, 0.0, 0.0]), np.array([0.0, -np.cos(t), np.sin(t)])
        n = np.cross(u, v)
        ang = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ring = c + 22.0 * np.cos(ang)[:, None] * u + 17.0 * np.sin(ang)[:, None] * v
        lenses.append(RoundLens(side, cam.project(ring).astype(np.float32), ring, c, cam.project(c), n, u, v, 12.0))
    yy, xx = np.mgrid[0:H // 4, 0:W // 4]
    bumps = (500.0 + 6.0 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.float32)
    return cam, (lenses[0], lenses[1]), FaceDepth(bumps, 0.25, cam, 520.0)


def _reference_rasterize(points_px: np.ndarray, z: np.ndarray, triangles: np.ndarray,
                         shape: tuple[int, int]) -> np.ndarray:
    """The direct per-pair barycentric form (the rasteriser before it was put in coefficient form)."""
    h, w = shape
    p = points_px[triangles]
    lo = np.maximum(np.ceil(p.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(p.max(axis=1)).astype(np.int64), [w - 1, h - 1])
    size = np.maximum(hi - lo + 1, 0)
    counts = size[:, 0] * size[:, 1]
    depth = np.full(h * w, np.inf)
    tid = np.repeat(np.arange(len(triangles)), counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    px, py = lo[tid, 0] + k % size[tid, 0], lo[tid, 1] + k // size[tid, 0]
    a, b, c = p[tid, 0], p[tid, 1], p[tid, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    l0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / den
    l1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / den
    inside = ok & (l0 >= -1e-9) & (l1 >= -1e-9) & (1.0 - l0 - l1 >= -1e-9)
    inv_z = 1.0 / z[triangles]
    iz = l0 * inv_z[tid, 0] + l1 * inv_z[tid, 1] + (1.0 - l0 - l1) * inv_z[tid, 2]
    np.minimum.at(depth, (py * w + px)[inside], 1.0 / iz[inside])
    return depth.reshape(h, w).astype(np.float32)


def test_rasterize_matches_direct_barycentric_form_on_an_overlapping_mesh() -> None:
    rng = np.random.default_rng(3)
    pts = rng.uniform(-5.0, 45.0, (60, 2))  # some vertices off the raster: clipping is exercised
    z = rng.uniform(300.0, 600.0, 60)
    tris = rng.integers(0, 60, (150, 3))  # random, overlapping, some degenerate (repeated vertices)
    got = rasterize_depth(pts, z, tris, (40, 36))
    ref = _reference_rasterize(pts, z, tris, (40, 36))
    assert np.array_equal(np.isinf(got), np.isinf(ref)) and np.isfinite(ref).sum() > 500
    fin = np.isfinite(ref)
    assert np.abs(got[fin] - ref[fin]).max() <= 1e-4 * ref[fin].max()


def test_project_is_the_pinhole_formula_bit_for_bit() -> None:
    cam = Pinhole(512.3, 498.7, 319.5, 241.25, 640, 480)
    p = np.random.default_rng(1).uniform([-200, -150, 300], [200, 150, 900], (7, 5, 3))
    ref = np.stack([cam.cx + cam.fx * p[..., 0] / p[..., 2], cam.cy + cam.fy * p[..., 1] / p[..., 2]], axis=-1)
    assert np.array_equal(cam.project(p), ref) and cam.project(p[0, 0]).shape == (2,)


@pytest.mark.parametrize(("step", "margin"), [(2, 0), (2, 3), (1, 0)])
def test_batched_lenses_equal_separate_traces(step: int, margin: int) -> None:
    """Landing both lenses' rays in one batch changes nothing; the field is the per-pixel trace."""
    cam, lenses, depth = _scene()
    powers = [LensPower(power_matrix(-6.0, -1.0, 20.0), np.zeros(2)), LensPower(power_matrix(3.0, 0.0, None),
                                                                                np.array([0.01, 0.0]))]
    both = lens_warps(list(lenses), powers, depth, cam, 1.0, margin, step)
    for lens, power, w in zip(lenses, powers, both, strict=True):
        one = lens_warp(lens, power, depth, cam, 1.0, margin, step)
        assert w is not None and one is not None
        assert np.array_equal(w.map_x, one.map_x) and np.array_equal(w.map_y, one.map_y)
        assert np.array_equal(w.mask, one.mask) and (w.x0, w.y0) == (one.x0, one.y0)
        ys, xs = np.nonzero(w.mask)
        pix = np.column_stack([xs + w.x0, ys + w.y0]).astype(np.float64)
        src = trace_lens(pix, lens, power, depth, cam)
        err = np.hypot(w.map_x[ys, xs] - src[:, 0], w.map_y[ys, xs] - src[:, 1])
        # step 1 is the trace itself (float32 maps); step 2 interpolates a smooth field.
        assert err.max() < (1e-3 if step == 1 else 0.2)
        outside = ~w.mask if margin == 0 else ~cv2.dilate(w.mask.view(np.uint8), np.ones((9, 9), np.uint8)).view(bool)
        gy, gx = np.nonzero(outside)
        assert np.array_equal(w.map_x[gy, gx], (gx + w.x0).astype(np.float32))


def test_lens_warps_keeps_off_frame_and_identity_lenses_in_place() -> None:
    cam, (right, left), depth = _scene()
    gone = RoundLens("left", left.outline_px + 2000.0, left.outline_cam_mm, left.optical_center_cam_mm,
                     left.optical_center_px, left.normal_cam, left.u_cam, left.v_cam, 12.0)
    zero = LensPower(np.zeros((2, 2)), np.zeros(2))
    out = lens_warps([right, gone], [zero, LensPower(power_matrix(-4.0, 0.0, None), np.zeros(2))], depth, cam)
    assert out[1] is None and out[0] is not None
    h, w = out[0].mask.shape
    assert np.array_equal(out[0].map_x, np.broadcast_to(np.arange(out[0].x0, out[0].x0 + w, dtype=np.float32), (h, w)))


def test_inverse_undoes_the_forward_warp() -> None:
    cam, (right, _), depth = _scene()
    fwd = lens_warp(right, LensPower(power_matrix(-5.0, 0.0, None), np.zeros(2)), depth, cam, margin_px=3)
    assert fwd is not None
    inv = invert_warp(fwd)
    ok = fwd.mask & ~inv.invalid
    assert ok.sum() > 0.9 * fwd.mask.sum()  # a minus lens: (nearly) everything has a preimage
    # s(s⁻¹(q)) = q: sample the forward field at the preimages.
    px = inv.warp.map_x - fwd.x0
    py = inv.warp.map_y - fwd.y0
    sx = cv2.remap(fwd.map_x, px, py, cv2.INTER_LINEAR)
    qx = np.arange(fwd.x0, fwd.x0 + fwd.mask.shape[1], dtype=np.float32)[None, :]
    assert np.abs(sx - qx)[ok].max() < 0.05
    assert np.array_equal(inv.warp.map_x[~fwd.mask], np.broadcast_to(qx, fwd.mask.shape)[~fwd.mask])


@pytest.mark.parametrize(("x0", "y0", "channels"), [(10, 7, 3), (70 - 23, 50 - 19, 3), (0, 0, 1)])
def test_paste_in_mask_writes_the_mask_only(x0: int, y0: int, channels: int) -> None:
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (50, 70, channels), dtype=np.uint8)
    roi = rng.integers(0, 255, (19, 23, channels), dtype=np.uint8)
    mask = rng.random((19, 23)) < 0.4
    if channels == 1:
        frame, roi = frame[..., 0], roi[..., 0]
    want = frame.copy()
    want[y0:y0 + 19, x0:x0 + 23][mask] = roi[mask]
    paste_in_mask(frame, x0, y0, roi, mask)
    assert np.array_equal(frame, want)


def _holes_image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:50, 0:70]
    img = np.clip(np.dstack([xx * 3, yy * 4, xx + yy]) + rng.integers(0, 20, (50, 70, 3)), 0, 255).astype(np.uint8)
    holes = np.zeros((50, 70), bool)
    holes[20:26, 30:41] = True  # a block, six rings deep
    holes[0:4, 0:60] = True  # along the border
    holes[44, 8] = True  # a single pixel
    ring = (np.hypot(yy - 30, xx - 15) - 9.0) ** 2 < 1.0  # a thin ring, as behind a plus lens's rim
    return img, holes | ring


def test_fill_keeps_known_pixels_and_fills_each_hole_from_its_neighbours() -> None:
    img, holes = _holes_image()
    out = fill_holes_numpy(img, holes)
    assert np.array_equal(out[~holes], img[~holes]) and not np.array_equal(out[holes], img[holes])
    # Every filled value is a weighted mean of values in the image, so within their range; on a ramp
    # (red = 3x + noise < 20) it stays within the ramp's local range.
    ys, xs = np.nonzero(holes)
    assert np.all(np.abs(out[ys, xs, 0].astype(int) - 3 * xs) <= 3 * 4 + 20)
    flat = np.full_like(img, 77)
    assert np.array_equal(fill_holes_numpy(flat, holes), flat)  # a constant is filled with itself
    assert np.array_equal(fill_holes_numpy(img, np.ones((50, 70), bool)), img)  # nothing known: left as is
    gray = fill_holes(img[..., 1], holes)
    assert gray.shape == (50, 70) and np.array_equal(gray, out[..., 1])
    with pytest.raises(ValueError, match="radius"):
        fill_holes(img, holes, 1.0)


def test_fill_is_as_good_as_telea_on_thin_holes() -> None:
    """Against cv2.inpaint (Telea) on a smooth image with rim-like holes: the error is no larger."""
    yy, xx = np.mgrid[0:80, 0:90].astype(np.float64)
    truth = np.dstack([128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0), 90 + xx, 40 + yy]).astype(np.uint8)
    r = np.hypot(yy - 40, xx - 45)
    holes = (np.abs(r - 30.0) < 1.6) | ((np.abs(r - 20.0) < 1.0) & (xx > 45))
    ours = fill_holes(truth, holes)
    telea = cv2.inpaint(truth, holes.view(np.uint8), 3.0, cv2.INPAINT_TELEA)
    err = np.abs(ours[holes].astype(float) - truth[holes]).mean()
    err_telea = np.abs(telea[holes].astype(float) - truth[holes]).mean()
    assert err <= 1.1 * err_telea + 0.1 and err < 2.0, (err, err_telea)


needs_numba = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed: the numpy forms are in use")


@needs_numba
def test_compiled_rasterizer_is_the_numpy_form_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    pts = rng.uniform(-5.0, 45.0, (80, 2))
    z = rng.uniform(300.0, 600.0, 80)
    tris = rng.integers(0, 80, (200, 3))  # overlapping (the z-buffer decides), degenerate, off the raster
    got = rasterize_depth(pts, z, tris, (40, 36))
    ref = rasterize_depth_numpy(pts, z, tris, (40, 36))
    assert got.dtype == ref.dtype == np.float32 and np.array_equal(got, ref) and np.isfinite(ref).sum() > 500
    empty = rasterize_depth(pts, z, tris[:0], (40, 36))
    assert np.array_equal(empty, rasterize_depth_numpy(pts, z, tris[:0], (40, 36))) and np.isinf(empty).all()


@needs_numba
def test_compiled_trace_is_the_numpy_trace() -> None:
    """Same rays, same lens plane, bend and face landing; the depth lookups are cv2.remap's bilinear (to
    ~1e-5 px with OpenCV 5; OpenCV 4 rounds remap positions to 1/32 px, a few thousandths of a pixel)."""
    cam, lenses, depth = _scene()
    powers = [LensPower(power_matrix(-6.0, -1.0, 20.0), np.zeros(2)), LensPower(power_matrix(3.0, 0.0, None),
                                                                                np.array([0.01, -0.005]))]
    for lens, power in zip(lenses, powers, strict=True):
        c = np.asarray(lens.outline_px, np.float64)
        lo, hi = c.min(axis=0) - 4.0, c.max(axis=0) + 4.0
        yy, xx = np.mgrid[lo[1]:hi[1]:0.7, lo[0]:hi[0]:0.7]
        pix = np.column_stack([xx.ravel(), yy.ravel()])
        got = trace_lens(pix, lens, power, depth, cam)
        ref = trace_lens_numpy(pix, lens, power, depth, cam)
        err = np.hypot(*(got - ref).T)
        assert np.median(err) < 2e-3 and np.quantile(err, 0.99) < 0.02 and err.max() < 0.1, (err.max(), power)
        assert np.abs(got - pix).max() > 1.0  # the lens does move pixels: not a trivial agreement


def test_the_numpy_forms_stand_in_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    cam, lenses, depth = _scene()
    powers = [LensPower(power_matrix(-4.0, 0.0, None), np.zeros(2))] * 2
    img, holes = _holes_image()
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    plain = lens_warps(list(lenses), powers, depth, cam, margin_px=3)
    plain_inv = [invert_warp(w) for w in plain if w is not None]
    plain_fill = fill_holes(img, holes)
    monkeypatch.undo()
    fast = lens_warps(list(lenses), powers, depth, cam, margin_px=3)
    for a, b in zip(plain, fast, strict=True):
        assert a is not None and b is not None and np.array_equal(a.mask, b.mask)
        assert np.abs(a.map_x - b.map_x).max() < 0.05 and np.abs(a.map_y - b.map_y).max() < 0.05
    for a_inv, w in zip(plain_inv, fast, strict=True):
        assert w is not None and np.abs(a_inv.warp.map_x - invert_warp(w).warp.map_x).max() < 0.1
    assert np.array_equal(plain_fill, fill_holes_numpy(img, holes))  # the fallback is the numpy form


@needs_numba
def test_compiled_fill_is_the_numpy_form() -> None:
    """Same rings, same weighted means; only the summation order differs (a rounding tie at most)."""
    img, holes = _holes_image()
    for radius in (3.0, 5.5):
        got, ref = fill_holes(img, holes, radius), fill_holes_numpy(img, holes, radius)
        diff = np.abs(got.astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3 and np.array_equal(got[~holes], img[~holes])


@needs_numba
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_compiled_inversion_is_the_numpy_form(strength: float) -> None:
    """Same Newton steps, the same float64 sums in the same order: the same maps (to float32 rounding of
    the last bit, should a compiler ever fuse a multiply-add) and the same flagged pixels."""
    cam, lenses, depth = _scene()
    powers = [LensPower(power_matrix(-6.0, -1.0, 20.0), np.zeros(2)), LensPower(power_matrix(4.0, 0.0, None),
                                                                                np.array([0.01, -0.005]))]
    for lens, power in zip(lenses, powers, strict=True):
        fwd = lens_warp(lens, power, depth, cam, margin_px=3)
        assert fwd is not None
        got, ref = invert_warp(fwd, strength=strength), invert_warp_numpy(fwd, strength=strength)
        assert np.array_equal(got.invalid, ref.invalid) and ref.invalid.sum() < 0.25 * fwd.mask.sum()
        err = np.hypot(got.warp.map_x - ref.warp.map_x, got.warp.map_y - ref.warp.map_y)
        assert err.max() < 1e-4, (err.max(), power)
        assert np.array_equal(got.warp.map_x[~fwd.mask], ref.warp.map_x[~fwd.mask])  # identity off the lens
        h, w = fwd.mask.shape
        qx, qy = np.arange(fwd.x0, fwd.x0 + w)[None, :], np.arange(fwd.y0, fwd.y0 + h)[:, None]
        assert np.hypot(got.warp.map_x - qx, got.warp.map_y - qy)[fwd.mask].max() > 0.5  # it does move pixels


@needs_numba
@pytest.mark.parametrize(("step", "margin"), [(2, 3), (2, 0), (1, 3), (3, 3)])
def test_compiled_lens_field_is_the_stepwise_warp(step: int, margin: int) -> None:
    """kernels.lens_field fuses _prepare (coarse samples that cover every traced pixel), the trace and
    _finish (bilinear interpolation as cv2.remap, identity off the traced pixels)."""
    from models.optics.refraction import _finish, _lens_warp_compiled, _prepare

    cam, lenses, depth = _scene()
    powers = [LensPower(power_matrix(-6.0, -1.0, 20.0), np.array([0.004, 0.0])),
              LensPower(power_matrix(5.0, 0.0, None), np.zeros(2))]
    for lens, power in zip(lenses, powers, strict=True):
        for strength in (1.0, 0.4):
            r = _prepare(lens, power, cam, strength, margin, step)
            assert r is not None and r.pix is not None
            ref = _finish(r, trace_lens(r.pix, lens, power, depth, cam) - r.pix, strength, step)
            got = _lens_warp_compiled(lens, power, depth, cam, strength, margin, step)
            assert got is not None and np.array_equal(got.mask, ref.mask) and (got.x0, got.y0) == (ref.x0, ref.y0)
            err = np.maximum(np.abs(got.map_x - ref.map_x), np.abs(got.map_y - ref.map_y))
            assert err.max() < 1e-4, (step, margin, err.max())
            assert np.array_equal(got.map_x[~r.traced], ref.map_x[~r.traced])
            assert np.hypot(*got.displacement()).max() > 0.3  # the lens does move pixels
