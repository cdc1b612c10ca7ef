"""Fit a catalogue frame's size and height to the glasses seen in the video (for ``remove``).

The refraction to undo lives inside the real lens opening, so the opening must sit where the real
rim is. Starting from the catalogue shape, a small search over size (uniform scale, then aspect)
and height on the nose maximises the image gradient along the projected rim edges (inner opening
and outer rim), accumulated over several frames. This fits the outline of a known shape; it does
not detect an unknown shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from models.glasses.catalogue import FrameSpec, with_overrides
from models.glasses.placement import place_glasses
from stream.camera import Pinhole
from stream.face import Face


@dataclass(frozen=True)
class FrameFitConfig:
    scales: tuple[float, ...] = (0.85, 0.95, 1.05, 1.15, 1.25, 1.35)
    lifts_mm: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    aspects: tuple[float, ...] = (0.85, 0.92, 1.0, 1.08, 1.16)  # height / width, relative to the catalogue


def candidate(frame: FrameSpec, scale: float, aspect: float, lift_mm: float) -> FrameSpec | None:
    """The frame resized (A, B) and moved on the nose; None if outside the catalogue's valid ranges."""
    try:
        return with_overrides(frame, lens_width_mm=round(frame.lens_width_mm * scale, 2),
                              lens_height_mm=round(frame.lens_height_mm * scale * aspect, 2),
                              bridge_height_mm=round(frame.bridge_height_mm + lift_mm, 2))
    except ValueError:
        return None


def edge_strength(rgb: np.ndarray) -> np.ndarray:
    gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


def rim_score(grad: np.ndarray, placement: Any) -> float:
    """Mean gradient magnitude on the projected inner and outer rim outlines of both lenses."""
    pts = np.concatenate([np.concatenate([np.asarray(ln.outline_px), np.asarray(ln.rim_outer_px)])
                          for ln in placement.lenses]).astype(np.float32).reshape(-1, 1, 2)
    v = cv2.remap(grad, pts[..., 0], pts[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return float(v.mean())


@dataclass
class FrameFitter:
    frame: FrameSpec
    config: FrameFitConfig = field(default_factory=FrameFitConfig)
    kwargs: dict[str, Any] = field(default_factory=dict)  # place_glasses options (vertex, tilt, pd)
    _scores: dict[tuple[float, float, float], float] = field(default_factory=dict)
    _counts: dict[tuple[float, float, float], int] = field(default_factory=dict)
    frames: int = 0

    def _add(self, key: tuple[float, float, float], value: float) -> None:
        self._scores[key] = self._scores.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def _mean(self, key: tuple[float, float, float]) -> float:
        return self._scores[key] / self._counts[key]

    def _score(self, grad: np.ndarray, face: Face, camera: Pinhole, key: tuple[float, float, float]) -> float:
        spec = candidate(self.frame, key[0], key[1], key[2])
        if spec is None:
            return -np.inf
        try:
            return rim_score(grad, place_glasses(face, spec, camera, **self.kwargs))
        except ValueError:
            return -np.inf

    def add_frame(self, rgb: np.ndarray, face: Face, camera: Pinhole) -> None:
        """Score scale x lift, then the aspect at the best of those (accumulated over frames)."""
        grad = edge_strength(rgb)
        c = self.config
        for s in c.scales:
            for lift in c.lifts_mm:
                key = (s, 1.0, lift)
                self._add(key, self._score(grad, face, camera, key))
        s, _, lift = max((k for k in self._scores if k[1] == 1.0), key=self._mean)
        for a in c.aspects:
            if a != 1.0:
                self._add((s, a, lift), self._score(grad, face, camera, (s, a, lift)))
        self.frames += 1

    def best(self) -> FrameSpec:
        if not self._scores:
            return self.frame
        s, _, lift = max((k for k in self._scores if k[1] == 1.0), key=self._mean)
        key = max((k for k in self._scores if k[0] == s and k[2] == lift), key=self._mean)
        return candidate(self.frame, *key) or self.frame
