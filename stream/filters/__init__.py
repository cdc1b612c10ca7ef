"""Filter registry: name -> class. Later stages register their filters here."""

from __future__ import annotations

from typing import Any

from stream.filters.base import Filter, FilterError, FrameContext, params_schema
from stream.filters.landmarks import Landmarks
from stream.filters.passthrough import Passthrough
from stream.filters.remove import Remove
from stream.filters.restore import Restore
from stream.filters.tryon import Tryon
from stream.filters.tryon_latent import TryonLatent

REGISTRY: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    REGISTRY[cls.name] = cls
    return cls


for _cls in (Passthrough, Landmarks, Tryon, Remove, Restore, TryonLatent):
    register(_cls)


def create(name: str, params: dict[str, Any] | None = None) -> Filter:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise FilterError(f"unknown filter {name!r}; available: {', '.join(sorted(REGISTRY))}") from None
    return cls(params)


def describe() -> list[dict[str, Any]]:
    """What the browser's control panel shows."""
    return [
        {"name": c.name, "description": c.description, "params": params_schema(c.Params)}
        for c in REGISTRY.values()
    ]


__all__ = ["REGISTRY", "Filter", "FilterError", "FrameContext", "create", "describe", "register"]
