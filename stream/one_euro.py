"""One-Euro filter (Casiez, Roussel & Vogel, CHI 2012), vectorised over any array shape.

Low cutoff when the signal is still (kills jitter), higher cutoff as it moves (keeps lag low).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroConfig:
    min_cutoff: float = 1.0  # Hz; lower = smoother when still
    beta: float = 0.05  # speed coefficient; higher = less lag when moving
    d_cutoff: float = 1.0  # Hz; cutoff for the derivative estimate


def smoothing_factor(dt: float, cutoff: np.ndarray | float) -> np.ndarray | float:
    """Exponential smoothing factor alpha for a first-order low-pass at ``cutoff`` Hz."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    def __init__(self, config: OneEuroConfig) -> None:
        self.config = config
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` seconds.

        ``scale`` divides the speed before it raises the cutoff, so one ``beta`` serves signals
        in different units (e.g. landmarks of a face 100 px or 400 px tall).
        """
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        cfg = self.config
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = smoothing_factor(dt, cfg.d_cutoff)
        dx_hat = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = cfg.min_cutoff + cfg.beta * np.abs(dx_hat) / max(scale, 1e-9)
        a = smoothing_factor(dt, cutoff)
        x_hat = a * x + (1.0 - a) * self._x
        self._x, self._dx, self._t = x_hat, dx_hat, t
        return x_hat.copy()
