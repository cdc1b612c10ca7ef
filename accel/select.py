"""Choose a backend per model: TensorRT > torch CUDA > ONNX Runtime (CPU or its GPU providers).

A backend that is not available here (no library, no GPU) is skipped quietly; one that is available but
fails to load, build or warm up is closed and the next one is tried, with one warning line. If every
candidate fails the caller gets ``None`` and should pass frames through unchanged. ``active`` says which
backend serves each model (for the stats overlay).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.backend import Backend
from export.manifest import Manifest

log = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "torch-cuda", "onnxruntime")


@dataclass(frozen=True)
class ModelFiles:
    """Everything a backend may load from: the manifest, its ONNX file and (for torch) a module or weights."""

    manifest: Manifest
    onnx_path: Path
    torch_source: Any = None  # nn.Module, a weights ``.pt`` path, or None (rebuild the manifest's random init)

    @staticmethod
    def from_manifest(path: str | Path, torch_source: Any = None) -> ModelFiles:
        m = Manifest.load(path)
        return ModelFiles(m, m.onnx_path(path), torch_source)


@dataclass(frozen=True)
class Candidate:
    name: str
    factory: Callable[[], Backend]
    source: Callable[[ModelFiles], Any]
    available: Callable[[], bool] = lambda: True
    # Builds the backend with a given number of CPU threads (per-session pools: ONNX Runtime); None where a
    # backend has no such setting of its own (GPU backends; torch's CPU pool is process-wide).
    threaded: Callable[[int], Backend] | None = None

    def build(self, threads: int | None = None) -> Backend:
        return self.threaded(threads) if threads is not None and self.threaded is not None else self.factory()


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and _cuda()


def default_candidates(precision: str = "fp16", intra_op_threads: int = 2) -> dict[str, Candidate]:
    from accel.onnxruntime_backend import OnnxRuntimeBackend, OrtOptions
    from accel.tensorrt_backend import TensorRTBackend
    from accel.torch_backend import TorchBackend, TorchOptions

    def onnx(f: ModelFiles) -> Path:
        return f.onnx_path

    def module(f: ModelFiles) -> Any:
        return f.torch_source

    return {
        "tensorrt": Candidate("tensorrt", lambda: TensorRTBackend(precision), onnx, _tensorrt_available),
        "torch-cuda": Candidate("torch-cuda", lambda: TorchBackend(TorchOptions(device="cuda", precision=precision)),
                                module, _cuda),
        "torch-cpu": Candidate("torch-cpu", lambda: TorchBackend(TorchOptions(device="cpu")), module),
        "onnxruntime": Candidate("onnxruntime",
                                 lambda: OnnxRuntimeBackend(OrtOptions(intra_op_threads=intra_op_threads)), onnx,
                                 threaded=lambda n: OnnxRuntimeBackend(OrtOptions(intra_op_threads=n))),
    }  # fmt: skip


@dataclass
class BackendSelector:
    candidates: dict[str, Candidate] = field(default_factory=default_candidates)
    order: Sequence[str] = AUTO_ORDER
    warmup_runs: int = 2
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> what serves it

    def plan(self, prefer: str | None = None) -> list[str]:
        """Names to try, in order: ``prefer`` first (if given), then the automatic order."""
        if prefer is not None and prefer not in self.candidates:
            raise ValueError(f"unknown backend {prefer!r}; choose from {sorted(self.candidates)}")
        names = [prefer] if prefer else []
        return names + [n for n in self.order if n != prefer and n in self.candidates]

    def select(self, model: str, files: ModelFiles, prefer: str | None = None,
               threads: int | None = None) -> Backend | None:  # fmt: skip
        """The first candidate that loads and warms up (``threads``: CPU threads where a backend has its own)."""
        names = [n for n in self.plan(prefer) if self._available(n)]
        failed: list[str] = []  # why each tried backend was skipped, for the stats overlay
        for i, name in enumerate(names):
            cand = self.candidates[name]
            backend: Backend | None = None
            try:
                backend = cand.build(threads)
                backend.load(cand.source(files), files.manifest)
                backend.warmup(self.warmup_runs)
            except Exception as e:
                if backend is not None:
                    backend.close()
                nxt = names[i + 1] if i + 1 < len(names) else "passthrough"
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("%s: backend %s failed (%s); falling back to %s", model, name, reason, nxt)
                failed.append(f"{name}: {reason}")
                continue
            self.active[model] = {**backend.describe(), "candidate": name, **({"failed": failed} if failed else {})}
            return backend
        self.active[model] = {"backend": "passthrough", "device": "-", "precision": "-", "failed": failed}
        return None

    def _available(self, name: str) -> bool:
        ok = self.candidates[name].available()
        if not ok:
            log.debug("backend %s not available on this machine", name)
        return ok
