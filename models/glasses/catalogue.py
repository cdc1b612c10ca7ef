"""Glasses frame catalogue: validated ``FrameSpec`` entries (millimetres) from frames.json.

The built-in catalogue ships as package data; a user catalogue (``RXSTREAM_FRAMES`` or an explicit
path) is merged over it: an entry whose name exists updates only the fields it gives, a new entry
may start from another with ``"base": "<name>"``. Sizes follow the optician's marking
``A□DBL-temple`` (e.g. ``"49□20-145"``; ``x`` or ``-`` also accepted for the box).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from models.glasses.shapes import SHAPES, lens_outline_mm, resolved_params

BUILTIN_PATH = Path(__file__).with_name("frames.json")
ENV_VAR = "RXSTREAM_FRAMES"

# Sane ranges (mm / degrees) for adult and child frames; outside them it is a typo, not a frame.
RANGES: dict[str, tuple[float, float]] = {
    "lens_width_mm": (30.0, 75.0),
    "lens_height_mm": (15.0, 65.0),
    "bridge_mm": (10.0, 30.0),
    "temple_length_mm": (100.0, 175.0),
    "rim_thickness_mm": (0.3, 10.0),
    "wrap_deg": (0.0, 25.0),
    "bridge_height_mm": (-10.0, 15.0),
    "endpiece_mm": (0.0, 15.0),
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[□xX\-]\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*$")


class CatalogueError(ValueError):
    """A catalogue entry or file is invalid; the message names the entry and the field."""


@dataclass(frozen=True)
class FrameSpec:
    name: str
    shape: str
    lens_width_mm: float  # A: boxed lens width
    lens_height_mm: float  # B: boxed lens height
    bridge_mm: float  # DBL: distance between the lenses
    temple_length_mm: float = 145.0
    rim_thickness_mm: float = 2.5  # face-on width of the rim around the lens opening
    color_rgb: tuple[int, int, int] = (25, 25, 28)
    shape_params: tuple[tuple[str, float], ...] = ()  # sorted (name, value) pairs, hashable
    wrap_deg: float = 4.0  # face-form angle: each lens turns about its vertical axis, temple side back
    bridge_height_mm: float = 4.0  # nose-rest point of the bridge above the datum line (boxing centres)
    endpiece_mm: float = 4.0  # how far the hinge sits beyond the temporal rim
    description: str = ""

    @property
    def frame_pd_mm(self) -> float:
        """Distance between the boxing centres (A + DBL)."""
        return self.lens_width_mm + self.bridge_mm

    @property
    def params(self) -> dict[str, float]:
        return resolved_params(self.shape, dict(self.shape_params))

    @property
    def size_label(self) -> str:
        return f"{self.lens_width_mm:g}□{self.bridge_mm:g}-{self.temple_length_mm:g}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape_params"] = dict(self.shape_params)
        d["color_rgb"] = list(self.color_rgb)
        return d


def parse_size(text: str) -> tuple[float, float, float | None]:
    """``"49□20-145"`` -> (49.0, 20.0, 145.0); the temple is optional."""
    m = _SIZE_RE.match(text)
    if not m:
        raise CatalogueError(f"size {text!r} is not of the form A□DBL-temple, e.g. 49□20-145")
    return float(m[1]), float(m[2]), float(m[3]) if m[3] else None


def frame_from_dict(name: str, entry: Mapping[str, Any]) -> FrameSpec:
    """Validate one JSON entry into a FrameSpec (clear errors naming the entry)."""
    if not isinstance(entry, Mapping):
        raise CatalogueError(f"frame {name!r}: expected an object, got {type(entry).__name__}")
    d = dict(entry)
    d.pop("base", None)
    d.pop("name", None)
    if "size" in d:
        a, dbl, temple = parse_size(str(d.pop("size")))
        d.setdefault("lens_width_mm", a)
        d.setdefault("bridge_mm", dbl)
        if temple is not None:
            d.setdefault("temple_length_mm", temple)
    known = {f.name for f in fields(FrameSpec)} - {"name"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CatalogueError(
            f"frame {name!r}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for req in ("shape", "lens_width_mm", "lens_height_mm", "bridge_mm"):
        if req not in d:
            raise CatalogueError(f"frame {name!r}: missing {req!r}")
    shape = d["shape"]
    if shape not in SHAPES:
        raise CatalogueError(f"frame {name!r}: unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    for key, (lo, hi) in RANGES.items():
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise CatalogueError(f"frame {name!r}: {key} must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise CatalogueError(f"frame {name!r}: {key}={v} is outside the sane range [{lo}, {hi}]")
        d[key] = float(v)
    if "color_rgb" in d:
        c = d["color_rgb"]
        if (not isinstance(c, (list, tuple)) or len(c) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in c)):
            raise CatalogueError(f"frame {name!r}: color_rgb must be three integers 0-255, got {c!r}")
        d["color_rgb"] = tuple(int(x) for x in c)
    params = d.get("shape_params", {})
    if isinstance(params, (list, tuple)):
        params = dict(params)
    if not isinstance(params, Mapping):
        raise CatalogueError(f"frame {name!r}: shape_params must be an object")
    try:
        resolved_params(shape, params)
    except ValueError as e:
        raise CatalogueError(f"frame {name!r}: {e}") from None
    d["shape_params"] = tuple(sorted((str(k), float(v)) for k, v in params.items()))
    if "description" in d:
        d["description"] = str(d["description"])
    return FrameSpec(name=name, **d)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"frames catalogue {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise CatalogueError(f"frames catalogue {path}: invalid JSON ({e})") from None
    frames = data.get("frames", data) if isinstance(data, dict) else None
    if isinstance(frames, list):  # also accept [{"name": ..., ...}, ...]
        if not all(isinstance(f, dict) and "name" in f for f in frames):
            raise CatalogueError(f"frames catalogue {path}: every entry of the list needs a 'name'")
        frames = {f["name"]: f for f in frames}
    if not isinstance(frames, dict):
        raise CatalogueError(f"frames catalogue {path}: expected {{'frames': {{name: entry}}}}")
    return frames


def merge_entries(base: Mapping[str, dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Raw entries of ``extra`` merged over ``base`` (field-level; ``base`` key inherits from another)."""
    out = {k: dict(v) for k, v in base.items()}
    for name, entry in extra.items():
        if not isinstance(entry, Mapping):
            raise CatalogueError(f"frame {name!r}: expected an object, got {type(entry).__name__}")
        if "base" in entry:
            if entry["base"] not in out:
                raise CatalogueError(f"frame {name!r}: base {entry['base']!r} is not in the catalogue")
            merged = dict(out[entry["base"]])
        else:
            merged = dict(out.get(name, {}))
        if "shape" in entry and entry.get("shape") != merged.get("shape"):
            merged.pop("shape_params", None)  # another shape's parameters would not apply
        if "size" in entry:  # an explicit size replaces the inherited A, DBL and temple
            has_temple = parse_size(str(entry["size"]))[2] is not None
            for k in ("lens_width_mm", "bridge_mm", "temple_length_mm")[: 3 if has_temple else 2]:
                merged.pop(k, None)
        merged.update({k: v for k, v in entry.items() if k != "base"})
        out[name] = merged
    return out


def load_catalogue(path: str | Path | None = None, *, use_env: bool = True) -> dict[str, FrameSpec]:
    """Built-in frames, with ``path`` (or $RXSTREAM_FRAMES) merged over them."""
    entries = merge_entries({}, _read_json(BUILTIN_PATH))
    user = path if path is not None else (os.environ.get(ENV_VAR) if use_env else None)
    if user:
        entries = merge_entries(entries, _read_json(Path(user)))
    return {name: frame_from_dict(name, e) for name, e in entries.items()}


def get_frame(name: str, catalogue: Mapping[str, FrameSpec] | None = None) -> FrameSpec:
    cat = catalogue if catalogue is not None else load_catalogue()
    if name not in cat:
        raise CatalogueError(f"unknown frame {name!r}; known: {', '.join(sorted(cat))}")
    return cat[name]


@lru_cache(maxsize=256)
def outline_mm(spec: FrameSpec, n_points: int = 128) -> np.ndarray:
    """(n_points, 2) cached inner-rim outline of the LEFT lens (x to the temple, y up; see shapes.py).

    The returned array is read-only because it is shared by the cache.
    """
    out = lens_outline_mm(spec.shape, spec.lens_width_mm, spec.lens_height_mm, dict(spec.shape_params), n_points)
    out.setflags(write=False)
    return out


def rim_widths_mm(spec: FrameSpec, outline: np.ndarray) -> np.ndarray:
    """(N,) rim width at each outline vertex: uniform, except the browline's heavy upper rim."""
    w = np.full(len(outline), spec.rim_thickness_mm)
    if spec.shape == "browline":
        # The brow bar covers the upper part; below it only the thin rim (often a nylon wire) remains.
        y = outline[:, 1] / (spec.lens_height_mm / 2.0)
        t = np.clip((y + 0.1) / 0.5, 0.0, 1.0)
        w = w + (spec.params["brow_mm"] - w) * t * t * (3.0 - 2.0 * t)
    return w


def with_overrides(spec: FrameSpec, **changes: Any) -> FrameSpec:
    """A validated copy with some fields changed (e.g. a UI's size slider)."""
    d = spec.to_dict()
    d.update(changes)
    name = d.pop("name")
    return frame_from_dict(name, d) if changes else replace(spec)
