"""ONNX Runtime backend: CPU everywhere (what CI runs), CUDA / TensorRT execution providers when present.

Startup cost is graph optimisation, so the fully optimised graph is saved (``optimized_model_filepath``)
under a key of (ONNX sha256, ORT version, providers, level) and later starts load it with optimisation
off. Per frame, IO binding writes into output buffers preallocated at load: no allocation per run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accel.backend import Backend, BackendError
from accel.cache import default_cache_dir, ort_cache_key, sha256_file
from export.manifest import Manifest

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class OrtOptions:
    providers: tuple[str, ...] | None = None  # None: GPU providers that are available, then CPU
    intra_op_threads: int = 2  # shared machines and a real-time budget: do not grab every core by default
    cache_dir: Path | None = None  # None: default_cache_dir(); the optimised graph is cached there
    use_cache: bool = True
    # ORT's idle intra-op threads spin-wait by default, holding cores the tracker, the other network and the
    # encoder need between two inferences of a frame; off unless a machine has cores to spare.
    allow_spinning: bool = False


def choose_providers(available: list[str], wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    if wanted is not None:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(f"onnxruntime providers {missing} not available (have {available})")
        return wanted
    return (*(p for p in GPU_PROVIDERS if p in available), "CPUExecutionProvider")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, options: OrtOptions | None = None) -> None:
        super().__init__()
        self.options = options or OrtOptions()
        self.session: Any = None
        self.providers: tuple[str, ...] = ()
        self.cache_path: Path | None = None
        self.loaded_from_cache = False
        self._binding: Any = None
        self._outputs: dict[str, np.ndarray] = {}
        self._on_cpu = True

    @property
    def device(self) -> str:
        return "cpu" if self._on_cpu else "cuda"

    @property
    def precision(self) -> str:
        return self.manifest.precision if self.manifest else "fp32"

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._on_cpu:
            d["threads"] = self.options.intra_op_threads
        return d

    def _session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.allow_spinning else "0")
        return so

    def _load(self, source: Any, manifest: Manifest) -> None:
        import onnxruntime as ort

        onnx_path = Path(source)
        if not onnx_path.is_file():
            raise BackendError(f"ONNX file {onnx_path} not found")
        self.providers = choose_providers(ort.get_available_providers(), self.options.providers)
        self._on_cpu = self.providers[0] == "CPUExecutionProvider"
        so = self._session_options()
        if not self.options.use_cache:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(onnx_path), so, providers=list(self.providers))
        else:
            self.session = self._cached_session(onnx_path, manifest, so)
        self._bind(manifest)

    def _cached_session(self, onnx_path: Path, manifest: Manifest, so: Any) -> Any:
        import onnxruntime as ort

        digest = manifest.onnx_sha256 or sha256_file(onnx_path)
        key = ort_cache_key(digest, ort.__version__, self.providers, "all")
        cache_dir = self.options.cache_dir or default_cache_dir()
        self.cache_path = cache_dir / f"{key}.onnx"
        if self.cache_path.is_file():
            # Already optimised for these providers: re-running the optimisers would only cost startup time.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                sess = ort.InferenceSession(str(self.cache_path), so, providers=list(self.providers))
                self.loaded_from_cache = True
                return sess
            except Exception as e:  # corrupt/foreign cache file: rebuild it rather than fail the stream
                log.warning("onnxruntime cache %s unusable (%s); re-optimising", self.cache_path.name, e)
                so = self._session_options()
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp.onnx"  # written whole, then renamed: readers never see half
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp)
        sess = ort.InferenceSession(str(onnx_path), so, providers=list(self.providers))
        if tmp.is_file():
            tmp.replace(self.cache_path)
        self.loaded_from_cache = False
        return sess

    def _bind(self, manifest: Manifest) -> None:
        import onnxruntime as ort

        names = [o.name for o in self.session.get_outputs()]
        want = [o.name for o in manifest.outputs]
        if names != want:
            raise BackendError(f"graph outputs {names} do not match the manifest's {want}")
        self._binding = self.session.io_binding()
        for name, buf in self.input_buffers().items():  # bound once; run() copies foreign arrays into them
            self._binding.bind_cpu_input(name, buf)
        self._outputs = {o.name: np.empty(o.shape, dtype=o.dtype) for o in manifest.outputs}
        if self._on_cpu:
            # Outputs land straight in our preallocated arrays.
            for name, buf in self._outputs.items():
                self._binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        else:
            for o in manifest.outputs:  # stay on the device; copied to the host buffers after each run
                self._binding.bind_output(o.name, "cuda")

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, a in inputs.items():
            if not self._is_own_buffer(name, a):
                np.copyto(self._input_buffers[name], a)
        self.session.run_with_iobinding(self._binding)
        if not self._on_cpu:
            for name, v in zip(self._outputs, self._binding.get_outputs(), strict=True):
                self._outputs[name][...] = v.numpy()
        return self._outputs

    def close(self) -> None:
        self._binding = None
        self.session = None
