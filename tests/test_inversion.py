"""remove's inverse warp against closed forms: linear fields (a lens's paraxial map) are inverted exactly,
including strong ones a fixed-point iteration would not converge on in a few steps; a jump in the field
(a depth step behind the lens) leaves the band it skips flagged, with no invented preimage."""

from __future__ import annotations

import numpy as np
import pytest

from models.optics import kernels
from models.optics.inversion import STRETCH_MAX, bilinear_with_gradient, invert_warp, invert_warp_numpy
from models.optics.refraction import LensWarp

H, W, X0, Y0 = 60, 70, 100, 40
CX, CY = 35.0, 30.0


def _warp(dx: np.ndarray, dy: np.ndarray, mask: np.ndarray) -> LensWarp:
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    return LensWarp(X0, Y0, (gx + X0 + dx).astype(np.float32), (gy + Y0 + dy).astype(np.float32), mask)


def _disc(r: float) -> np.ndarray:
    gy, gx = np.mgrid[0:H, 0:W]
    return np.hypot(gx - CX, gy - CY) <= r


FORMS = [invert_warp_numpy] + ([invert_warp] if kernels.AVAILABLE else [])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("kx", "ky"), [(0.8, 0.8), (-0.4, -0.4), (0.12, -0.3), (-0.1, 0.0)])
def test_a_linear_field_is_inverted_exactly(form, kx: float, ky: float) -> None:
    """s(p) = p + K (p − c): s⁻¹(q) = c + (q − c) / (1 + K). With K = 0.8 a fixed-point step only removes
    20 % of the error (0.8⁴ of it would remain after four); Newton is exact on a linear field."""
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float64)
    dx, dy = (kx * (gx - CX)).astype(np.float32), (ky * (gy - CY)).astype(np.float32)
    mask = _disc(26.0)
    for strength in (1.0, 0.5):
        inv = form(_warp(dx, dy, mask), strength=strength)
        px, py = CX + (gx - CX) / (1.0 + kx), CY + (gy - CY) / (1.0 + ky)
        has = mask & (np.hypot(px - CX, py - CY) <= 25.0)  # preimage well inside the lens
        assert not inv.invalid[has].any()
        want_x, want_y = gx + strength * (px - gx) + X0, gy + strength * (py - gy) + Y0
        assert np.abs(inv.warp.map_x - want_x)[has].max() < 1e-3
        assert np.abs(inv.warp.map_y - want_y)[has].max() < 1e-3
        assert np.array_equal(inv.warp.map_x[~mask], (gx + X0)[~mask].astype(np.float32))  # identity off the lens


@pytest.mark.parametrize("form", FORMS)
def test_a_jump_in_the_field_is_flagged_not_invented(form) -> None:
    """D_x jumps by 12 px at x = 40 (rays past a face's outline landing far behind it): q in [40, 52) are
    seen nowhere; the interpolated cell there stretches by 13x > STRETCH_MAX, so they are flagged."""
    _, gx = np.mgrid[0:H, 0:W].astype(np.float64)
    dx = np.where(gx >= 40, 12.0, 0.0).astype(np.float32)
    dy = np.zeros((H, W), np.float32)
    mask = np.ones((H, W), bool)
    mask[:, :3] = mask[:, -3:] = False
    inv = form(_warp(dx, dy, mask))
    band = mask & (gx >= 40) & (gx <= 51)
    assert inv.invalid[band].all() and STRETCH_MAX < 13.0
    left = mask & (gx <= 38)  # s = id there
    right = mask & (gx >= 53) & (gx <= W - 4)  # s(p) = p + 12: preimage q − 12 (where D = 12)
    assert not inv.invalid[left | right].any()
    assert np.abs(inv.warp.map_x - (gx + X0))[left].max() < 1e-3
    assert np.abs(inv.warp.map_x - (gx - 12.0 + X0))[right].max() < 1e-3


def test_bilinear_gradient_is_the_interpolant_s_derivative() -> None:
    rng = np.random.default_rng(4)
    img = rng.normal(size=(9, 11)).astype(np.float32)
    x, y = rng.uniform(-3.0, 13.0, 400), rng.uniform(-3.0, 11.0, 400)
    v, gx, gy = bilinear_with_gradient(img, x, y)
    e = 1e-6  # inside a cell the interpolant is bilinear: central differences are exact up to rounding
    keep = (np.abs(x - np.round(x)) > 2 * e) & (np.abs(y - np.round(y)) > 2 * e)
    nx = (bilinear_with_gradient(img, x + e, y)[0] - bilinear_with_gradient(img, x - e, y)[0]) / (2 * e)
    ny = (bilinear_with_gradient(img, x, y + e)[0] - bilinear_with_gradient(img, x, y - e)[0]) / (2 * e)
    assert np.abs(nx - gx)[keep].max() < 1e-5 and np.abs(ny - gy)[keep].max() < 1e-5
    at_pixels = bilinear_with_gradient(img, np.array([2.0, 3.0, 10.0]), np.array([4.0, 1.0, 8.0]))[0]
    assert np.array_equal(at_pixels, [img[4, 2], img[1, 3], img[8, 10]])  # the image itself at its pixels
    far = (x < -1) | (x > 11) | (y < -1) | (y > 9)  # a cell wholly off the image reads 0
    assert far.sum() > 50 and np.all(v[far] == 0.0) and np.all(gx[far] == 0.0)
