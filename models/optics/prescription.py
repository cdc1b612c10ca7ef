"""Spectacle prescriptions: validated dataclasses, parsing of the written forms, transposition.

Conventions (as written on prescriptions, examiner's view = the camera's view):
- cylinder is stored in minus-cyl form (``cyl <= 0``); plus-cyl input is transposed,
- axis in degrees 0..180 counter-clockwise from the frame's horizontal (0 is stored as 180),
- prism in prism dioptres with a base direction as a polar angle in the lens's (u, v) frame,
  u towards image right, v up; "base in" (towards the nose) is 0 deg for the right eye (OD) and
  180 deg for the left eye (OS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

SPHERE_RANGE = (-20.0, 20.0)
MAX_CYL = 10.0
MAX_PRISM = 20.0
PD_BINOCULAR_RANGE = (40.0, 80.0)
PD_MONOCULAR_RANGE = (20.0, 40.0)
VERTEX_RANGE = (5.0, 25.0)
LENS_INDICES = (1.5, 1.53, 1.59, 1.6, 1.67, 1.74)
THICKNESS_RANGE = (0.5, 15.0)
MAX_ADD = 4.0


class PrescriptionError(ValueError):
    """An impossible or unreadable prescription; the message is safe to show to the user."""


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrescriptionError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise PrescriptionError(f"{name}: must be finite, got {value!r}")
    return v


def _in_range(name: str, value: float, lo: float, hi: float, unit: str) -> float:
    v = _finite(name, value)
    if not lo <= v <= hi:
        raise PrescriptionError(f"{name} {v:g} {unit} is outside {lo:g}..{hi:g} {unit}")
    return v


def base_angle(side: str, base: str) -> float:
    """Polar base angle (deg, u/v frame) for 'in'/'out'/'up'/'down' on eye ``side`` ('right'|'left')."""
    b = base.strip().lower()
    nasal = 0.0 if side == "right" else 180.0  # the nose is towards +u for the right eye (image left)
    table = {"in": nasal, "out": (nasal + 180.0) % 360.0, "up": 90.0, "down": 270.0}
    aliases = {"bi": "in", "bo": "out", "bu": "up", "bd": "down"}
    b = aliases.get(b, b)
    if b not in table:
        raise PrescriptionError(f"unknown prism base {base!r} (use in/out/up/down or an angle in degrees)")
    return table[b]


@dataclass(frozen=True)
class EyeRx:
    """One eye's lens. Validated and normalised on construction (minus cyl, axis in (0, 180])."""

    sphere: float = 0.0
    cyl: float = 0.0
    axis: float | None = None
    prism: float = 0.0
    prism_base_deg: float = 0.0  # polar angle in the (u, v) frame; ignored when prism == 0
    add: float | None = None

    def __post_init__(self) -> None:
        s = _in_range("sphere", self.sphere, *SPHERE_RANGE, "D")
        c = _in_range("cylinder", self.cyl, -MAX_CYL, MAX_CYL, "D")
        a = self.axis
        if c != 0.0:
            if a is None:
                raise PrescriptionError("an axis is required when the cylinder is not zero")
            a = _in_range("axis", a, 0.0, 180.0, "deg")
        elif a is not None:
            a = _in_range("axis", a, 0.0, 180.0, "deg")
            a = None  # an axis without cylinder carries no information
        if c > 0:  # plus-cyl -> minus-cyl: S+C, -C, axis +- 90
            s, c, a = s + c, -c, (a + 90.0) % 180.0  # type: ignore[operator]
            if not SPHERE_RANGE[0] <= s <= SPHERE_RANGE[1]:
                raise PrescriptionError(f"sphere {s:g} D after transposition to minus cylinder is out of range")
        if a is not None and a == 0.0:
            a = 180.0  # 0 and 180 are the same meridian; store one of them
        p = _in_range("prism", self.prism, 0.0, MAX_PRISM, "Δ")
        base = _finite("prism base", self.prism_base_deg) % 360.0
        add = None if self.add is None else _in_range("add", self.add, 0.0, MAX_ADD, "D")
        for k, v in (("sphere", s), ("cyl", c), ("axis", a), ("prism", p), ("prism_base_deg", base), ("add", add)):
            object.__setattr__(self, k, v)

    @property
    def spherical_equivalent(self) -> float:
        return self.sphere + self.cyl / 2.0

    @property
    def is_zero(self) -> bool:
        return self.sphere == 0.0 and self.cyl == 0.0 and self.prism == 0.0

    def plus_cyl(self) -> tuple[float, float, float | None]:
        """(sphere, cyl, axis) written in plus-cylinder form."""
        if self.cyl == 0.0:
            return self.sphere, 0.0, None
        a = (self.axis + 90.0) % 180.0  # type: ignore[operator]
        return self.sphere + self.cyl, -self.cyl, 180.0 if a == 0.0 else a

    def __str__(self) -> str:
        s = "plano" if self.sphere == 0.0 else f"{self.sphere:+.2f}"
        if self.cyl != 0.0:
            s += f" {self.cyl:+.2f} x {self.axis:g}"
        if self.prism:
            s += f" {self.prism:g}Δ base {self.prism_base_deg:g}"
        return s


@dataclass(frozen=True)
class Prescription:
    """Both eyes. ``pd_mm`` is binocular; ``pd_right_mm``/``pd_left_mm`` are monocular (centre to pupil)."""

    od: EyeRx = field(default_factory=EyeRx)
    os: EyeRx = field(default_factory=EyeRx)
    pd_mm: float | None = None
    pd_right_mm: float | None = None
    pd_left_mm: float | None = None
    vertex_mm: float = 12.0
    index: float = 1.5
    thickness_mm: float = 2.0

    def __post_init__(self) -> None:
        if self.pd_mm is not None:
            _in_range("PD", self.pd_mm, *PD_BINOCULAR_RANGE, "mm")
        for name in ("pd_right_mm", "pd_left_mm"):
            v = getattr(self, name)
            if v is not None:
                _in_range(name.replace("_mm", ""), v, *PD_MONOCULAR_RANGE, "mm")
        if (self.pd_right_mm is None) != (self.pd_left_mm is None):
            raise PrescriptionError("monocular PD needs both eyes (pd_right_mm and pd_left_mm)")
        _in_range("vertex distance", self.vertex_mm, *VERTEX_RANGE, "mm")
        if _finite("lens index", self.index) not in LENS_INDICES:
            raise PrescriptionError(f"lens index {self.index:g} is not one of {', '.join(map(str, LENS_INDICES))}")
        _in_range("centre thickness", self.thickness_mm, *THICKNESS_RANGE, "mm")

    def eye(self, side: str) -> EyeRx:
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        return self.od if side == "right" else self.os

    @property
    def total_pd_mm(self) -> float | None:
        if self.pd_right_mm is not None and self.pd_left_mm is not None:
            return self.pd_right_mm + self.pd_left_mm
        return self.pd_mm


# -- parsing -------------------------------------------------------------------------------------
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SPH = rf"(?P<sph>{_NUM}|pl(?:ano)?|plano)(?:\s*(?:ds|sph|d))?"
_CYL = rf"(?:\s*/?\s*(?P<cyl>{_NUM})(?:\s*(?:dc|cyl|d))?\s*(?:x|ax|axis|@)\s*(?P<axis>\d+(?:\.\d*)?)°?)?"
_PRISM = (
    rf"(?:\s*,?\s*(?P<prism>{_NUM})\s*(?:Δ|pd|prism|\^)?\s*"
    r"(?:base\s*(?P<bangle>\d+(?:\.\d*)?)°?|b\s*(?P<bdir>in|out|up|down|i|o|u|d)\b|"
    r"(?:base\s*)?(?P<bword>in|out|up|down|bi|bo|bu|bd)\b))?"
)
_EYE_RE = re.compile(rf"^\s*{_SPH}{_CYL}{_PRISM}\s*$", re.IGNORECASE)


def parse_eye(text: str, side: str = "right") -> EyeRx:
    """One eye: '-4.25 -1.00 x 180', '-4.25/-1.00x180', '+2.00 DS', 'pl -0.50 x 90', 'plano', '-2',
    with optional prism '2Δ BI', '1.5 BU', '2 base 270'."""
    if not isinstance(text, str) or not text.strip():
        raise PrescriptionError("empty prescription")
    m = _EYE_RE.match(text.strip())
    if m is None:
        raise PrescriptionError(f"cannot read prescription {text!r} (e.g. '-4.25 -1.00 x 180', 'plano', '+2 DS')")
    g = m.groupdict()
    sph = 0.0 if g["sph"].lower().startswith("pl") else float(g["sph"])
    cyl = float(g["cyl"]) if g["cyl"] else 0.0
    axis = float(g["axis"]) if g["axis"] else None
    prism, base = 0.0, 0.0
    if g["prism"]:
        prism = float(g["prism"])
        if g["bangle"]:
            base = float(g["bangle"])
        else:
            word = (g["bdir"] or g["bword"] or "").lower()
            word = {"i": "in", "o": "out", "u": "up", "d": "down"}.get(word, word)
            base = base_angle(side, word)
    return EyeRx(sphere=sph, cyl=cyl, axis=axis, prism=prism, prism_base_deg=base)


_SPLIT_RE = re.compile(r"\b(OD|OS|OU|RE|LE|R|L)\b\s*:?", re.IGNORECASE)


def parse_prescription(text: str, **kwargs: float | None) -> Prescription:
    """Both eyes: 'OD -2.00 -0.50 x 10 OS -1.75', or one written form used for both eyes.

    Extra keyword arguments (pd_mm, vertex_mm, index, ...) go to :class:`Prescription`.
    """
    if not isinstance(text, str) or not text.strip():
        raise PrescriptionError("empty prescription")
    parts = _SPLIT_RE.split(text.strip())
    kw = {k: v for k, v in kwargs.items() if v is not None}
    if len(parts) == 1:  # no eye labels: the same lens for both eyes
        return Prescription(od=parse_eye(text, "right"), os=parse_eye(text, "left"), **kw)  # type: ignore[arg-type]
    if parts[0].strip():
        raise PrescriptionError(f"unexpected text {parts[0].strip()!r} before the eye label")
    eyes: dict[str, EyeRx] = {}
    for label, body in zip(parts[1::2], parts[2::2], strict=True):
        lab = label.upper()
        sides = {"OD": ["right"], "RE": ["right"], "R": ["right"], "OS": ["left"], "LE": ["left"], "L": ["left"],
                 "OU": ["right", "left"]}[lab]
        for side in sides:
            if side in eyes:
                raise PrescriptionError(f"the {side} eye is given twice")
            eyes[side] = parse_eye(body.strip().strip(",;"), side)
    missing = {"right", "left"} - set(eyes)
    if missing:
        raise PrescriptionError(f"no prescription for the {' and '.join(sorted(missing))} eye")
    return Prescription(od=eyes["right"], os=eyes["left"], **kw)  # type: ignore[arg-type]


def with_sphere(rx: Prescription, sphere: float) -> Prescription:
    """The same prescription with both spheres set (used by estimation and tests)."""
    return replace(rx, od=replace(rx.od, sphere=sphere), os=replace(rx.os, sphere=sphere))
