"""The filter interface every per-frame effect implements, and typed, validated parameters.

A filter receives an RGB uint8 frame plus the frame's context (tracked faces, time, camera) and
returns an RGB uint8 frame of the same size. Parameters are a dataclass per filter; their field
metadata (min/max/choices/help) drives validation, the CLI and the browser's control panel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stream.camera import Pinhole, mediapipe_camera
from stream.face import Face


class FilterError(ValueError):
    """Bad filter name or parameter; the message is safe to show to the user."""


@dataclass
class FrameContext:
    index: int
    timestamp_s: float
    faces: list[Face]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    _camera: Pinhole | None = field(default=None, repr=False)
    # What several filters would compute alike for this frame (e.g. the face crops early starts take)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def camera(self) -> Pinhole:
        if self._camera is None:
            self._camera = mediapipe_camera(self.width, self.height)
        return self._camera


def param(default: Any, *, help: str = "", min: float | None = None, max: float | None = None,
          choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field carrying what validation and the UI need to know."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass
class NoParams:
    pass


def _coerce(name: str, typ: Any, value: Any) -> Any:
    typ = {"bool": bool, "int": int, "float": float, "str": str}.get(typ, typ) if isinstance(typ, str) else typ
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise FilterError(f"{name}: expected true/false, got {value!r}")
    if typ in (int, float):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise FilterError(f"{name}: expected a number, got {value!r}") from None
        if not np.isfinite(v):
            raise FilterError(f"{name}: must be finite, got {value!r}")
        if typ is int:
            if v != int(v):
                raise FilterError(f"{name}: expected an integer, got {value!r}")
            return int(v)
        return v
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise FilterError(f"{name}: expected text, got {value!r}")
        return str(value)
    return value


def build_params(cls: type, values: dict[str, Any] | None, base: Any | None = None) -> Any:
    """Validate ``values`` against the params dataclass ``cls`` (unknown keys are errors)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FilterError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(fields) or 'none'}")
    current = dataclasses.asdict(base) if base is not None else {}
    out = {}
    for name, f in fields.items():
        if name not in values:
            if name in current:
                out[name] = current[name]
            continue
        v = _coerce(name, f.type, values[name])
        meta = f.metadata
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise FilterError(f"{name}: {v!r} is not one of {', '.join(map(str, meta['choices']))}")
        if meta.get("min") is not None and v < meta["min"]:
            raise FilterError(f"{name}: {v} is below the minimum {meta['min']}")
        if meta.get("max") is not None and v > meta["max"]:
            raise FilterError(f"{name}: {v} is above the maximum {meta['max']}")
        out[name] = v
    try:
        return cls(**out)
    except (TypeError, ValueError) as e:  # __post_init__ checks across fields
        raise FilterError(str(e)) from None


def params_schema(cls: type) -> list[dict[str, Any]]:
    """JSON-able description of a params dataclass for the control panel."""
    out = []
    for f in dataclasses.fields(cls):
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append({"name": f.name, "type": typ, "default": f.default, **dict(f.metadata)})
    return out


class Filter:
    """Base class: subclasses set ``name``, ``Params`` and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    needs_faces: ClassVar[bool] = False
    # Pixels stay where they are (content may change): a later filter may start from the frame as it entered
    # the chain and compose its work on this filter's output (``begin``; stream.overlap).
    preserves_geometry: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.concurrent = False  # set by the pipeline: this filter's network shares the cores with another's
        self.params = build_params(self.Params, params)

    def configure(self, params: dict[str, Any]) -> None:
        """Change some parameters; all-or-nothing (bad values, or a FilterError from ``_derive``, leave the old
        ones in place)."""
        old = self.params
        self.params = build_params(self.Params, params, base=self.params)
        try:
            self._derive(self.params)
        except FilterError:
            self.params = old
            raise

    def _derive(self, p: Any) -> None:
        """Recompute what follows from the parameters (prescription, models, ...) after ``configure``;
        raise FilterError to refuse them."""

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        raise NotImplementedError

    # -- overlap with earlier filters (stream.overlap) ----------------------------------------------------
    @property
    def uses_network(self) -> bool:
        """True when ``apply`` runs a neural network (what an overlapping filter can run beside)."""
        return False

    @property
    def can_begin(self) -> bool:
        """True when ``begin`` can start this filter's network from the chain's input frame."""
        return False

    @property
    def begin_composes(self) -> bool:
        """True when what ``begin`` starts is composed in ``apply`` on the frame it is given, so filters that
        keep the geometry may run before it (the generator's heads); false when it is the output itself."""
        return False

    def begin(self, image: np.ndarray, ctx: FrameContext) -> None:
        """Start work on the frame as it entered the chain, before it is tracked: ``ctx.faces`` are the faces
        predicted for it (the previous frame's). ``apply`` gets the tracked faces and uses the work if they are
        close enough, or works as usual."""

    def set_concurrent(self, on: bool) -> None:
        """The pipeline's overlap plan: when on, this filter's network starts beside the tracker (and other
        networks), so it takes one CPU thread (stream.overlap)."""
        if on != self.concurrent:
            self.concurrent = on
            self._start_models(self.params)

    def _start_models(self, p: Any) -> None:
        """(Re)create the filter's model handles for ``p`` and ``self.concurrent``; part of ``_derive``."""

    def start(self) -> None:
        """Start loading the filter's models in the background (the pipeline calls it once the chain's overlap
        plan has set each network's thread count; without it a model loads on first use)."""

    def prepare(self, timeout: float | None = None) -> None:
        """Block until the filter's models are loaded (file mode; a live stream never waits)."""

    def models(self) -> dict[str, dict[str, Any]]:
        """Networks this filter runs -> state and serving backend (the stats overlay's ``models``); analyses
        with no network (rx=auto's estimate) give only a ``state`` line."""
        return {}

    def close(self) -> None:
        """Release resources (models, threads)."""
