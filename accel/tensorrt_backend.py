"""TensorRT backend (TensorRT >= 10 Python API), with a persistent timing cache and an engine cache.

TensorRT cannot be installed in this project's development workplace (no NVIDIA GPU or driver there), so
this module is written against the official API documentation and its tests run only where
``import tensorrt`` works; elsewhere they skip with that reason. Device buffers and the CUDA stream come
from torch (already a dependency) rather than pycuda / cuda-python.

Engines are specific to the ONNX graph, TensorRT version, GPU model and precision, so the engine cache is
keyed by all four (``accel.cache.engine_cache_key``). Building takes seconds to minutes: it is done
ahead of time (``rxstream export --engine``) or in a background thread (``EngineBuilds``) while another
backend serves; no request ever waits for a build.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accel.backend import Backend, BackendError
from accel.cache import atomic_write_bytes, default_cache_dir, engine_cache_key, sha256_file
from export.manifest import Manifest

log = logging.getLogger(__name__)

TIMING_CACHE_NAME = "tensorrt.timing-cache"


@dataclass(frozen=True)
class TrtOptions:
    cache_dir: Path | None = None  # None: default_cache_dir()
    workspace_bytes: int = 1 << 30
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for (slightly) faster kernels
    cuda_graphs: bool = True
    build_in_background: bool = True  # on a cache miss: start a build and raise (caller falls back)
    # Layers named with these prefixes are pinned to fp32 in fp16 engines (see export.models.ModelSpec).
    fp32_layer_prefixes: tuple[str, ...] = ("/pre_quant.", "/quantizers.")


class EngineNotReady(BackendError):
    """The engine is being built in the background; serve with another backend meanwhile."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"tensorrt not importable: {e}") from e
    return trt


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise BackendError("tensorrt: no CUDA device")
    return torch.cuda.get_device_name(torch.cuda.current_device())


def engine_path(onnx_path: Path, manifest: Manifest, precision: str, cache_dir: Path | None = None) -> Path:
    trt = import_tensorrt()
    digest = manifest.onnx_sha256 or sha256_file(onnx_path)
    key = engine_cache_key(digest, trt.__version__, gpu_name(), precision)
    return (cache_dir or default_cache_dir()) / f"{manifest.model}-{key}.engine"


def build_engine(onnx_path: Path, out_path: Path, precision: str, options: TrtOptions | None = None) -> Path:
    """Parse ``onnx_path``, build a serialised engine and write it atomically to ``out_path``.

    The timing cache (kernel timings per layer config) is loaded before and saved after every build, so
    rebuilding for a new graph or precision on the same GPU skips most autotuning.
    """
    trt = import_tensorrt()
    options = options or TrtOptions()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: networks are always explicit-batch (flag 0); 8.x needs the EXPLICIT_BATCH flag.
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"tensorrt could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.optimization_level
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 (on by default) rounds matmul/conv inputs to 10 bits
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name.startswith(options.fp32_layer_prefixes):
                layer.precision = trt.float32
                pinned += 1
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache_dir = options.cache_dir or default_cache_dir()
    timing_path = cache_dir / TIMING_CACHE_NAME
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"tensorrt build failed for {onnx_path.name} ({precision})")
    atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    atomic_write_bytes(out_path, bytes(serialized))
    log.info("built TensorRT engine %s", out_path.name)
    return out_path


class EngineBuilds:
    """At most one background build per engine file; a finished (or failed) build is not retried here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[Path, threading.Thread] = {}
        self.errors: dict[Path, str] = {}

    def start(self, key: Path, build: Callable[[], Any]) -> bool:
        """Start ``build`` for ``key`` unless one is running or already done; True if started now."""
        with self._lock:
            if key in self._threads:
                return False

            def target() -> None:
                try:
                    build()
                except Exception as e:  # reported once; the fallback backend keeps serving
                    self.errors[key] = str(e)
                    log.warning("background TensorRT build of %s failed: %s", key.name, e)

            t = threading.Thread(target=target, name=f"trt-build-{key.stem[:24]}", daemon=True)
            self._threads[key] = t
            t.start()
            return True

    def running(self, key: Path) -> bool:
        t = self._threads.get(key)
        return t is not None and t.is_alive()


BACKGROUND_BUILDS = EngineBuilds()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, precision: str = "fp16", options: TrtOptions | None = None) -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
        self._precision = precision
        self.options = options or TrtOptions()
        self.engine: Any = None
        self.context: Any = None
        self.engine_file: Path | None = None
        self._stream: Any = None
        self._graph: Any = None
        self._dev: dict[str, Any] = {}
        self._host_in: dict[str, Any] = {}
        self._host_out: dict[str, Any] = {}

    @property
    def device(self) -> str:
        return "cuda"

    @property
    def precision(self) -> str:
        return self._precision

    def _load(self, source: Any, manifest: Manifest) -> None:
        import torch

        trt = import_tensorrt()
        onnx_path = Path(source)
        self.engine_file = engine_path(onnx_path, manifest, self._precision, self.options.cache_dir)
        if not self.engine_file.is_file():
            if not self.options.build_in_background:
                raise BackendError(f"no cached engine {self.engine_file.name}; `rxstream export --engine` builds it")
            target = self.engine_file
            BACKGROUND_BUILDS.start(target, lambda: build_engine(onnx_path, target, self._precision, self.options))
            raise EngineNotReady(f"engine {target.name} is being built in the background")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
        if self.engine is None:
            raise BackendError(f"could not deserialise {self.engine_file.name} (TensorRT version or GPU mismatch?)")
        self.context = self.engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        specs = {s.name: s for s in (*manifest.inputs, *manifest.outputs)}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if name not in specs:
                raise BackendError(f"engine tensor {name!r} is not in the manifest")
            shape = tuple(self.engine.get_tensor_shape(name))
            if shape != tuple(specs[name].shape):
                raise BackendError(f"engine tensor {name!r} has shape {shape}, manifest {specs[name].shape}")
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            dev = torch.empty(shape, dtype=dtype, device="cuda")
            self._dev[name] = dev
            self.context.set_tensor_address(name, dev.data_ptr())
            host = torch.empty(shape, dtype=dtype).pin_memory()
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._host_in[name] = host
                self._input_buffers[name] = host.numpy()
            else:
                self._host_out[name] = host
        if self.options.cuda_graphs:
            self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("tensorrt execute_async_v3 failed")

    def _capture(self) -> None:
        """Capture one enqueue in a CUDA graph (TensorRT supports this for static-shape engines); run it once
        first so TensorRT finishes its deferred allocations outside the capture."""
        import torch

        with torch.cuda.stream(self._stream):
            self._enqueue()
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
        except Exception as e:  # some plugins/layers cannot be captured: plain enqueue still works
            log.info("tensorrt: CUDA graph capture failed (%s); using plain enqueue", e)
            return
        self._graph = graph

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            for name, a in inputs.items():
                if not self._is_own_buffer(name, a):
                    self._input_buffers[name][...] = a
                self._dev[name].copy_(self._host_in[name], non_blocking=True)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._enqueue()
            for name, host in self._host_out.items():
                host.copy_(self._dev[name], non_blocking=True)
        self._stream.synchronize()
        return {n: h.numpy() for n, h in self._host_out.items()}

    def close(self) -> None:
        self._graph = None
        self.context = None
        self.engine = None
        self._dev.clear()
