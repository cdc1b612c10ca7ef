"""Training pairs for the prescription generator: ``PairSource.sample(rng) -> Pair``.

* ``OpticsPairSource``: the real teacher. A tracked clip frame, a random prescription and strength; the
  ray-traced lens warp from ``models.optics.scene.face_optics`` (what the tryon filter applies) gives the
  target frame; both frames are aligned with the same similarity, so the target field is the optics'
  displacement carried into the crop (``d_crop = A d_frame`` for the crop map ``q = A p + t``). "remove"
  pairs swap input and target, and their field is the forward field inverted by fixed-point iteration
  (``invert_field``), so both modes are supervised.
* ``AnalyticLensPairSource``: a closed-form paraxial stand-in on any aligned crop (no tracking/optics):
  circular lenses centred on the template's eyes whose image is the lens's spectacle magnification
  ``M = (I - d F)^-1`` about the optical centre (F: the sphero-cylindrical power matrix, d: vertex
  distance), plus tint. Both directions are exact, so its field is supervised in both modes. Used by the
  tests and for smoke runs; it ignores face depth and head pose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from models.align import DEFAULT_TEMPLATE, alignment_matrix
from models.nets import PrescriptionCondition
from models.training.data import FrameRecord, read_rgb, to_tensor

VERTEX_M = 0.012  # analytic lens: 12 mm vertex distance


@dataclass(frozen=True)
class Pair:
    x: np.ndarray  # input crop RGB uint8 (S, S, 3)
    y: np.ndarray  # target crop
    cond: PrescriptionCondition
    field: np.ndarray  # (S, S, 2) float32, target displacement in normalised grid units (out(p) = x(p + f))
    mask: np.ndarray  # (S, S) float32 in [0, 1]: the lens region
    field_valid: bool = True

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": to_tensor(self.x), "y": to_tensor(self.y), "cond": self.cond.to_tensor(),
                "field": torch.from_numpy(np.ascontiguousarray(self.field.transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(self.mask))[None],
                "field_valid": torch.tensor(float(self.field_valid))}  # fmt: skip


class PairSource(Protocol):
    size: int

    def sample(self, rng: np.random.Generator) -> Pair: ...


@dataclass(frozen=True)
class RxRanges:
    sphere: tuple[float, float] = (-8.0, 6.0)
    cyl_probability: float = 0.5
    cyl: tuple[float, float] = (-3.0, 0.0)
    strength: tuple[float, float] = (0.3, 1.0)
    remove_fraction: float = 0.5
    lens_probabilities: tuple[float, float, float] = (0.1, 0.1, 0.8)  # right, left, both
    tint_probability: float = 0.0


def quarter(v: float) -> float:
    return round(v * 4.0) / 4.0  # prescriptions come in 0.25 D steps


def sample_condition(rng: np.random.Generator, r: RxRanges) -> PrescriptionCondition:
    sphere = quarter(rng.uniform(*r.sphere))
    cyl, axis = 0.0, 0.0
    if rng.random() < r.cyl_probability:
        cyl = quarter(rng.uniform(*r.cyl))
        axis = float(rng.integers(1, 181)) if cyl != 0.0 else 0.0
    tint = (0.0, 0.0, 0.0, 0.0)
    if rng.random() < r.tint_probability:
        tint = (*(float(v) for v in rng.uniform(0.0, 1.0, 3)), float(rng.uniform(0.1, 0.6)))
    return PrescriptionCondition(
        mode="remove" if rng.random() < r.remove_fraction else "add", sphere_d=sphere, cylinder_d=cyl,
        axis_deg=axis, strength=float(rng.uniform(*r.strength)),
        lens=("right", "left", "both")[int(rng.choice(3, p=np.asarray(r.lens_probabilities)))],
        tint_rgba=tint,  # type: ignore[arg-type]
    )  # fmt: skip


def power_matrix(sphere: float, cyl: float, axis_deg: float) -> np.ndarray:
    """Sphero-cylindrical power matrix F = S I + C m m^T, m the unit normal of the axis (closed form;
    axis measured counter-clockwise from image-right with y up, hence the sign on the y component)."""
    a = math.radians(axis_deg + 90.0)
    m = np.array([math.cos(a), -math.sin(a)])
    return sphere * np.eye(2) + cyl * np.outer(m, m)


def lens_centres(size: int, lens: str) -> list[np.ndarray]:
    t = DEFAULT_TEMPLATE.points(size)
    sides = {"right": [t[0]], "left": [t[1]], "both": [t[0], t[1]]}
    return [np.asarray(c, np.float64) for c in sides[lens]]


def analytic_pair(image: np.ndarray, cond: PrescriptionCondition, radius_frac: float = 0.11) -> Pair:
    """Exact paraxial lens warp of ``image`` for ``cond`` (see the module docstring)."""
    s = image.shape[0]
    f = power_matrix(cond.sphere_d, cond.cylinder_d, cond.axis_deg)
    a_add = np.eye(2) - VERTEX_M * f  # add: out(p) = in(c + (I - dF)(p - c))
    a = a_add if cond.mode == "add" else np.linalg.inv(a_add)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64)
    dx, dy = np.zeros((s, s)), np.zeros((s, s))
    mask = np.zeros((s, s), np.float32)
    r = radius_frac * s
    for c in lens_centres(s, cond.lens):
        px, py = xs - c[0], ys - c[1]
        inside = px**2 + py**2 <= r * r
        sx = c[0] + a[0, 0] * px + a[0, 1] * py
        sy = c[1] + a[1, 0] * px + a[1, 1] * py
        dx[inside] = (sx - xs)[inside] * cond.strength
        dy[inside] = (sy - ys)[inside] * cond.strength
        mask[inside] = 1.0
    src = cv2.remap(image, (xs + dx).astype(np.float32), (ys + dy).astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
    out = src.astype(np.float32)
    tint_a = cond.tint_rgba[3] * cond.strength
    if tint_a > 0:  # add: blend towards the tint; remove: the inverse blend
        tint = np.asarray(cond.tint_rgba[:3], np.float32) * 255.0
        m = mask[..., None]
        out = out * (1 - m * tint_a) + m * tint_a * tint if cond.mode == "add" else \
            (out - m * tint_a * tint) / (1 - m * tint_a)
    y = np.where(mask[..., None] > 0, np.clip(np.rint(out), 0, 255), image).astype(np.uint8)
    field = np.stack([dx, dy], axis=-1).astype(np.float32) * (2.0 / s)
    return Pair(image, y, cond, field, mask, True)


class AnalyticLensPairSource:
    def __init__(self, crops: Callable[[np.random.Generator], np.ndarray], size: int,
                 ranges: RxRanges = RxRanges(tint_probability=0.3)) -> None:
        self.crops, self.size, self.ranges = crops, size, ranges

    def sample(self, rng: np.random.Generator) -> Pair:
        img = self.crops(rng)
        if img.shape[:2] != (self.size, self.size):
            raise ValueError(f"crop must be {self.size}x{self.size}, got {img.shape}")
        cond = sample_condition(rng, self.ranges)
        if cond.mode == "remove":
            # A remove pair starts from a lens image: made by the exact "add" map, then the inverse
            # field maps it back (up to the pixels a plus lens hid: resampling is not invertible there).
            worn = analytic_pair(img, cond.mirrored())
            back = analytic_pair(worn.y, cond)
            return Pair(worn.y, img, cond, back.field, back.mask, True)
        return analytic_pair(img, cond)


class OpticsPairSource:
    """Pairs from the ray-traced optics on tracked clip frames (see the module docstring)."""

    def __init__(self, records: list[FrameRecord], faces: dict[str, list[Any]], size: int, crop_size: int = 128,
                 ranges: RxRanges = RxRanges()) -> None:
        if not records:
            raise ValueError("OpticsPairSource needs tracked frames")
        self.records, self.faces, self.size, self.crop_size, self.ranges = records, faces, size, crop_size, ranges

    def sample(self, rng: np.random.Generator) -> Pair:
        from models.optics.prescription import EyeRx, Prescription
        from models.optics.refraction import apply_warps
        from models.optics.scene import OpticsOptions, face_optics
        from stream.camera import mediapipe_camera

        rec = self.records[int(rng.integers(0, len(self.records)))]
        face = self.faces[rec.clip][rec.face_index]
        frame = read_rgb(rec.frame_path)
        h, w = frame.shape[:2]
        cond = sample_condition(rng, self.ranges)
        eye = EyeRx(sphere=cond.sphere_d, cyl=cond.cylinder_d, axis=cond.axis_deg if cond.cylinder_d else None)
        rx = Prescription(od=eye, os=eye)
        camera = mediapipe_camera(w, h)
        optics = face_optics(face, camera, rx, None, OpticsOptions(strength=cond.strength, lenses=cond.lens))
        worn = apply_warps(frame, list(optics.warps))
        dx, dy = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        lens = np.zeros((h, w), np.float32)
        for wp in optics.warps:
            ddx, ddy = wp.displacement()
            rh, rw = wp.shape
            sl = (slice(wp.y0, wp.y0 + rh), slice(wp.x0, wp.x0 + rw))
            dx[sl][wp.mask], dy[sl][wp.mask], lens[sl][wp.mask] = ddx[wp.mask], ddy[wp.mask], 1.0
        m = alignment_matrix(face, self.crop_size)
        cs = (self.crop_size, self.crop_size)

        def crop(a: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(a, m, cs, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

        fx, fy = crop(dx), crop(dy)
        # Crop displacement = A · frame displacement, then crop px -> normalised grid units.
        field = np.stack([m[0, 0] * fx + m[0, 1] * fy, m[1, 0] * fx + m[1, 1] * fy], axis=-1) * (2.0 / self.crop_size)
        x, y, mask = crop(frame), crop(worn), crop(lens)
        if self.size != self.crop_size:
            def rs(a: np.ndarray) -> np.ndarray:
                return cv2.resize(a, (self.size, self.size), interpolation=cv2.INTER_AREA)

            x, y, mask, field = rs(x), rs(y), rs(mask), rs(field.astype(np.float32))
        if cond.mode == "remove":
            return Pair(y, x, cond, invert_field(field.astype(np.float32)), mask.astype(np.float32), True)
        return Pair(x, y, cond, field.astype(np.float32), mask.astype(np.float32), True)


def invert_field(field: np.ndarray, iterations: int = 12) -> np.ndarray:
    """Inverse of a backward-warp field: ``g`` with ``q + f(q) = p`` for ``q = p + g(p)``, so warping
    ``y = x∘(id + f)`` by ``g`` gives back ``x``. Fixed point ``g(p) = -f(p + g(p))``; it contracts where
    the lens's displacement gradient is below 1, which holds for any wearable lens (|1 - M| << 1).
    Where a plus lens hid pixels the map is not invertible, and this returns the nearest fold point.
    ``field`` (S, S, 2) in normalised grid units (x, y), as in ``Pair``."""
    s = field.shape[0]
    to_px = s / 2.0
    f = (field * to_px).astype(np.float32)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    g = -f
    for _ in range(iterations):
        g = -cv2.remap(f, xs + g[..., 0], ys + g[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return (g / to_px).astype(np.float32)


class PairDataset(torch.utils.data.Dataset):
    """``(index, seed)`` -> pair tensors; the seed alone decides the pair (index only sets the epoch length)."""

    def __init__(self, source: PairSource, length: int) -> None:
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.source.sample(np.random.default_rng(key[1])).tensors()
