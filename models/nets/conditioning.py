"""The prescription conditioning vector shared by the generators and the discriminator.

Layout of ``to_tensor()`` (16 floats, each roughly in [-1, 1] so the MLP sees balanced inputs):

====  ================  ================================================================
idx   field             encoding
====  ================  ================================================================
0-1   mode              one-hot [add, remove]: add the lens effect / remove it
2     sphere_d          sphere power, dioptres, in [-20, 20], divided by 20
3     cylinder_d        cylinder power, dioptres, in [-8, 8] (either sign convention), / 8
4-5   axis_deg          cylinder axis in [0, 180) deg as (sin 2a, cos 2a): 0 and 180 coincide
6-7   prism_x/y_pd      prism, prism dioptres in [-10, 10] (x: base out +, y: base up +), / 10
8     strength          effect strength in [0, 1]; 0 means "leave the image unchanged"
9-11  lens              one-hot [right, left, both] (subject's sides)
12-15 tint              RGBA in [0, 1] (A = tint opacity)
====  ================  ================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

COND_DIM = 16
MODE_SLICE = slice(0, 2)
STRENGTH_INDEX = 8
MODES = ("add", "remove")
LENSES = ("right", "left", "both")
SPHERE_MAX_D, CYLINDER_MAX_D, PRISM_MAX_PD = 20.0, 8.0, 10.0


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi) or math.isnan(value):
        raise ValueError(f"{name} = {value} outside [{lo}, {hi}]")


@dataclass(frozen=True)
class PrescriptionCondition:
    mode: Literal["add", "remove"] = "add"
    sphere_d: float = 0.0
    cylinder_d: float = 0.0
    axis_deg: float = 0.0
    prism_x_pd: float = 0.0
    prism_y_pd: float = 0.0
    strength: float = 1.0
    lens: Literal["right", "left", "both"] = "both"
    tint_rgba: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lens not in LENSES:
            raise ValueError(f"lens must be one of {LENSES}, got {self.lens!r}")
        _check("sphere_d", self.sphere_d, -SPHERE_MAX_D, SPHERE_MAX_D)
        _check("cylinder_d", self.cylinder_d, -CYLINDER_MAX_D, CYLINDER_MAX_D)
        _check("axis_deg", self.axis_deg, 0.0, 180.0)
        _check("prism_x_pd", self.prism_x_pd, -PRISM_MAX_PD, PRISM_MAX_PD)
        _check("prism_y_pd", self.prism_y_pd, -PRISM_MAX_PD, PRISM_MAX_PD)
        _check("strength", self.strength, 0.0, 1.0)
        if len(self.tint_rgba) != 4:
            raise ValueError(f"tint_rgba needs 4 values, got {len(self.tint_rgba)}")
        for i, v in enumerate(self.tint_rgba):
            _check(f"tint_rgba[{i}]", v, 0.0, 1.0)

    def mirrored(self) -> PrescriptionCondition:
        """The same prescription with the opposite mode (add <-> remove)."""
        return replace(self, mode="remove" if self.mode == "add" else "add")

    def to_tensor(self) -> torch.Tensor:
        a = math.radians(2.0 * self.axis_deg)
        v = [
            float(self.mode == "add"), float(self.mode == "remove"),
            self.sphere_d / SPHERE_MAX_D, self.cylinder_d / CYLINDER_MAX_D,
            math.sin(a), math.cos(a),
            self.prism_x_pd / PRISM_MAX_PD, self.prism_y_pd / PRISM_MAX_PD,
            self.strength,
            *(float(self.lens == s) for s in LENSES),
            *self.tint_rgba,
        ]  # fmt: skip
        return torch.tensor(v, dtype=torch.float32)

    @staticmethod
    def batch(conds: list[PrescriptionCondition]) -> torch.Tensor:
        return torch.stack([c.to_tensor() for c in conds])


def flip_mode(c: torch.Tensor) -> torch.Tensor:
    """Batched ``mirrored()`` on conditioning tensors (B, COND_DIM): swaps the add/remove one-hot."""
    return torch.cat([c[:, 1:2], c[:, 0:1], c[:, 2:]], dim=1)
