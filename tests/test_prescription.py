"""Prescription parsing, normalisation, validation and the power matrix against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.optics.power import meridian_power, power_matrix, prentice_deviation, prism_vector
from models.optics.prescription import EyeRx, Prescription, PrescriptionError, parse_eye, parse_prescription


@pytest.mark.parametrize(
    ("text", "sph", "cyl", "axis"),
    [
        ("-4.25 -1.00 x 180", -4.25, -1.0, 180.0),
        ("-4.25/-1.00x180", -4.25, -1.0, 180.0),
        ("+2.00 DS", 2.0, 0.0, None),
        ("pl -0.50 x 90", 0.0, -0.5, 90.0),
        ("plano", 0.0, 0.0, None),
        ("-2", -2.0, 0.0, None),
        ("+1.50 -0.75 x 0", 1.5, -0.75, 180.0),  # 0 and 180 are one meridian
        ("-1.00 +0.50 x 30", -0.5, -0.5, 120.0),  # plus cyl is transposed
    ],
)
def test_parse_written_forms(text: str, sph: float, cyl: float, axis: float | None) -> None:
    e = parse_eye(text)
    assert (e.sphere, e.cyl, e.axis) == (sph, cyl, axis)


def test_parse_both_eyes_and_single_form() -> None:
    rx = parse_prescription("OD -2.00 -0.50 x 10 OS -1.75", pd_mm=63)
    assert (rx.od.sphere, rx.od.cyl, rx.od.axis) == (-2.0, -0.5, 10.0)
    assert (rx.os.sphere, rx.os.cyl) == (-1.75, 0.0)
    assert rx.pd_mm == 63
    both = parse_prescription("-3.00")
    assert both.od == both.os == EyeRx(-3.0)


@pytest.mark.parametrize(
    ("text", "side", "prism", "base"),
    [("-3 2Δ BI", "right", 2.0, 0.0), ("-3 2Δ BI", "left", 2.0, 180.0), ("-3 1.5 BU", "right", 1.5, 90.0),
     ("-1 -0.5 x 45 2 base 270", "left", 2.0, 270.0), ("+1 3 BO", "right", 3.0, 180.0),
     ("+1 1 BD", "left", 1.0, 270.0)],
)
def test_parse_prism(text: str, side: str, prism: float, base: float) -> None:
    e = parse_eye(text, side)
    assert (e.prism, e.prism_base_deg) == (prism, base)


def test_transposition_round_trip() -> None:
    e = EyeRx(-1.0, 0.5, 30.0)  # plus-cyl in: stored as minus-cyl
    assert (e.sphere, e.cyl, e.axis) == (-0.5, -0.5, 120.0)
    assert e.plus_cyl() == (-1.0, 0.5, 30.0)
    assert EyeRx(*e.plus_cyl()) == e
    assert e.spherical_equivalent == pytest.approx(-0.75)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"sphere": -21}, "sphere"), ({"sphere": float("nan")}, "finite"), ({"cyl": -10.5, "axis": 90}, "cylinder"),
     ({"cyl": -1}, "axis is required"), ({"cyl": -1, "axis": 181}, "axis"), ({"prism": 21}, "prism"),
     ({"sphere": float("inf")}, "finite"), ({"sphere": 19.5, "cyl": 1.0, "axis": 90}, "transposition")],
)
def test_eye_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(PrescriptionError, match=needle):
        EyeRx(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"pd_mm": 39}, "PD"), ({"pd_right_mm": 45, "pd_left_mm": 31}, "pd_right"), ({"pd_right_mm": 31}, "both"),
     ({"vertex_mm": 30}, "vertex"), ({"index": 1.55}, "index"), ({"thickness_mm": float("nan")}, "finite")],
)
def test_prescription_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(PrescriptionError, match=needle):
        Prescription(**kwargs)


@pytest.mark.parametrize("text", ["", "glasses please", "-4.25 -1.00", "OD -2 OD -3", "OD -2", "-2 x 90 -1"])
def test_unreadable(text: str) -> None:
    with pytest.raises(PrescriptionError):
        parse_prescription(text)


@pytest.mark.parametrize("axis", [0.0, 30.0, 45.0, 90.0, 137.0, 180.0])
def test_power_matrix_meridians(axis: float) -> None:
    s, c = -2.0, -1.5
    f = power_matrix(s, c, axis)
    assert np.allclose(f, f.T)
    assert meridian_power(f, axis) == pytest.approx(s)
    assert meridian_power(f, axis + 90.0) == pytest.approx(s + c)
    eig = np.sort(np.linalg.eigvalsh(f))
    assert np.allclose(eig, sorted([s, s + c]))
    assert np.trace(f) / 2 == pytest.approx(s + c / 2)  # mean power = spherical equivalent


def test_power_matrix_closed_forms() -> None:
    assert np.allclose(power_matrix(-3, -1, 180), [[-3, 0], [0, -4]])  # axis horizontal: vertical meridian gets C
    assert np.allclose(power_matrix(-3, -1, 90), [[-4, 0], [0, -3]])
    h = math.sqrt(0.5)
    assert np.allclose(power_matrix(0, -2, 45), -2 * np.outer([-h, h], [-h, h]))


def test_prentice_and_prism_vector() -> None:
    f = power_matrix(+5.0, 0.0, None)
    # 10 mm from the centre of a +5 D lens: 5 Δ (0.05 rad) towards the centre.
    assert np.allclose(prentice_deviation(f, np.zeros(2), np.array([[10.0, 0.0]])), [[-0.05, 0.0]])
    assert np.allclose(prism_vector(2.0, 90.0), [0.0, 0.02])
    assert np.allclose(prism_vector(3.0, 180.0), [-0.03, 0.0])
