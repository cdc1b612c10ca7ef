"""The one interface every inference backend implements.

Lifecycle: ``load`` once (may be slow: graph optimisation, engine deserialisation, CUDA graph capture),
``warmup(n)``, then ``run`` per frame from a single worker thread, ``close`` at shutdown. Shapes are
static (taken from the export manifest), so every backend preallocates its buffers at load time.

``run`` returns arrays owned by the backend that are overwritten by the next ``run`` (no allocation per
frame); copy them if they must outlive the call. ``input_buffers()`` gives the backend's own preallocated
(on CUDA: pinned) input arrays: fill them in place and pass them to ``run`` to skip the input copy.

Backends whose ``device_io`` is true also take and return device tensors (``run_device``), so callers that
pre- and post-process on the GPU never round-trip through host memory.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import Manifest, TensorSpec


class BackendError(RuntimeError):
    """A backend cannot serve this model here (missing library/device, failed build); callers fall back."""


def check_inputs(specs: tuple[TensorSpec, ...], inputs: Mapping[str, np.ndarray]) -> None:
    """Clear errors for bad input; nothing is run (and no state changes) when this raises."""
    want = {s.name for s in specs}
    if set(inputs) != want:
        raise ValueError(f"inputs must be exactly {sorted(want)}, got {sorted(inputs)}")
    for s in specs:
        a = inputs[s.name]
        if not isinstance(a, np.ndarray):
            raise ValueError(f"input {s.name!r} must be a numpy array, got {type(a).__name__}")
        if tuple(a.shape) != tuple(s.shape):
            raise ValueError(f"input {s.name!r} must have shape {tuple(s.shape)}, got {tuple(a.shape)}")
        if a.dtype != np.dtype(s.dtype):
            raise ValueError(f"input {s.name!r} must be {s.dtype}, got {a.dtype}")


class Backend(abc.ABC):
    name: str = "backend"

    def __init__(self) -> None:
        self.manifest: Manifest | None = None
        self.load_ms: float = float("nan")
        self._input_buffers: dict[str, np.ndarray] = {}

    # -- what the stats overlay shows ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> str: ...

    @property
    @abc.abstractmethod
    def precision(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "load_ms": round(self.load_ms, 1)}  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------
    def load(self, source: str | Path | Any, manifest: Manifest) -> Backend:
        """``source``: an ONNX path (ONNX Runtime, TensorRT) or a torch module / weights (torch)."""
        t0 = time.perf_counter()
        self.manifest = manifest
        self._load(source, manifest)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        return self

    @abc.abstractmethod
    def _load(self, source: str | Path | Any, manifest: Manifest) -> None: ...

    def input_buffers(self) -> dict[str, np.ndarray]:
        """Preallocated input arrays (fill in place, then ``run(backend.input_buffers())``)."""
        m = self._manifest()
        if not self._input_buffers:
            self._input_buffers = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in m.inputs}
        return self._input_buffers

    def _is_own_buffer(self, name: str, a: np.ndarray) -> bool:
        buf = self._input_buffers.get(name)
        return buf is not None and a is buf

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` times on zeros: first runs pay for lazy allocation, kernel selection, autotuning."""
        m = self._manifest()
        zeros = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in m.inputs}
        for _ in range(n):
            self.run(zeros)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._manifest().inputs, inputs)
        return self._run(inputs)

    @abc.abstractmethod
    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @property
    def device_io(self) -> bool:
        """True when ``run_device`` accepts tensors already on this backend's device."""
        return False

    def run_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Like ``run`` with torch tensors on ``device`` (float32, manifest shapes); outputs are device tensors
        owned by the backend (overwritten by the next run). Only where ``device_io`` is true."""
        raise BackendError(f"{self.name} on {self.device} takes host arrays only (device_io is false)")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing but Python refs
        """Release sessions, engines and device buffers."""

    def _manifest(self) -> Manifest:
        if self.manifest is None:
            raise RuntimeError(f"{self.name}: load() first")
        return self.manifest

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
