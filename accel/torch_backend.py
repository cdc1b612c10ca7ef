"""PyTorch backend: the eager module, fp32 on CPU; on CUDA fp16 + channels_last + a captured CUDA graph.

On CUDA, inputs are copied host(pinned) -> static device buffers, the captured graph is replayed (one
launch for the whole network, no per-op Python/launch overhead), and outputs are copied back into pinned
host buffers on the same stream. Static shapes from the manifest make the capture valid for every frame.
The CUDA path follows the official ``torch.cuda.graphs`` recipe (warm up on a side stream, capture,
replay) and is skipped by the tests on machines without a CUDA device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accel.backend import Backend, BackendError
from export.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchOptions:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU (CPU fp16 kernels are slow or missing)
    cuda_graphs: bool = True
    channels_last: bool = True
    cpu_threads: int | None = None  # None: leave torch's setting alone


def _module_from(source: Any, manifest: Manifest) -> Any:
    """A module as given, or built from a weights file (``.pt`` + ``.json``) / the manifest's random init."""
    from torch import nn

    if isinstance(source, nn.Module):
        return source
    from export.models import load_model

    if source is None:
        seed = manifest.source_weights.removeprefix("random-init seed ")
        if not seed.isdigit():
            raise BackendError(f"{manifest.model}: no module given; manifest weights are {manifest.source_weights!r}")
        return load_model(manifest.model, manifest.size, None, int(seed)).module
    return load_model(manifest.model, manifest.size, Path(source)).module


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, options: TorchOptions | None = None) -> None:
        super().__init__()
        self.options = options or TorchOptions()
        self.module: Any = None
        self._device = "cpu"
        self._dtype_name = "fp32"
        self._graph: Any = None
        self._static_in: dict[str, Any] = {}
        self._static_out: list[Any] = []
        self._host_in: dict[str, Any] = {}
        self._host_out: dict[str, Any] = {}
        self._stream: Any = None

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        return self._dtype_name

    def _load(self, source: Any, manifest: Manifest) -> None:
        import torch

        want = self.options.device
        if want == "cuda" and not torch.cuda.is_available():
            raise BackendError("torch: no CUDA device")
        self._device = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
        prec = self.options.precision
        self._dtype_name = ("fp16" if self._device == "cuda" else "fp32") if prec == "auto" else prec
        if self._dtype_name not in ("fp32", "fp16"):
            raise BackendError(f"torch: precision must be fp32/fp16/auto, got {prec!r}")
        if self.options.cpu_threads and self._device == "cpu":
            torch.set_num_threads(self.options.cpu_threads)
        dtype = torch.float16 if self._dtype_name == "fp16" else torch.float32
        module = _module_from(source, manifest).eval().to(self._device, dtype)
        if self._device == "cuda" and self.options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self._outputs_names = [o.name for o in manifest.outputs]
        if self._device == "cuda":
            self._setup_cuda(manifest, dtype)

    # -- CUDA: pinned host buffers, static device buffers, graph capture -----------------------------
    def _setup_cuda(self, manifest: Manifest, dtype: Any) -> None:
        import torch

        self._stream = torch.cuda.Stream()
        for s in manifest.inputs:
            self._host_in[s.name] = torch.zeros(s.shape, dtype=torch.float32).pin_memory()
            self._input_buffers[s.name] = self._host_in[s.name].numpy()  # callers may fill pinned memory directly
            t = torch.zeros(s.shape, dtype=dtype, device="cuda")
            if len(s.shape) == 4 and self.options.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            self._static_in[s.name] = t
        for o in manifest.outputs:
            self._host_out[o.name] = torch.empty(o.shape, dtype=torch.float32).pin_memory()
        if not self.options.cuda_graphs:
            return
        with torch.no_grad():
            # Warm up on a side stream (lazy init, cuDNN autotuning) before capture, as the docs require.
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                for _ in range(3):
                    self._forward()
            torch.cuda.current_stream().wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._static_out = self._forward()
        self._graph = graph

    def _forward(self) -> list[Any]:
        import torch

        out = self.module(*self._static_in.values())
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._device == "cpu":
            dtype = torch.float16 if self._dtype_name == "fp16" else torch.float32
            with torch.inference_mode():
                out = self.module(*(torch.from_numpy(np.ascontiguousarray(inputs[s.name])).to(dtype)
                                    for s in self._manifest().inputs))  # fmt: skip
            outs = [out] if isinstance(out, torch.Tensor) else list(out)
            return {n: o.float().numpy() for n, o in zip(self._outputs_names, outs, strict=True)}
        with torch.cuda.stream(self._stream), torch.no_grad():
            for name, a in inputs.items():
                if not self._is_own_buffer(name, a):
                    self._input_buffers[name][...] = a
                self._static_in[name].copy_(self._host_in[name], non_blocking=True)  # casts to fp16 on device
            if self._graph is not None:
                self._graph.replay()
                outs = self._static_out
            else:
                outs = self._forward()
            for name, o in zip(self._outputs_names, outs, strict=True):
                self._host_out[name].copy_(o, non_blocking=True)
        self._stream.synchronize()
        return {n: t.numpy() for n, t in self._host_out.items()}

    @property
    def device_io(self) -> bool:
        return self._device == "cuda"

    def run_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """CUDA tensors in, CUDA tensors out: device-to-device copies into the static (graph) inputs."""
        import torch

        if not self.device_io:
            return super().run_device(inputs)
        specs = self._manifest().inputs
        if set(inputs) != {s.name for s in specs}:
            raise ValueError(f"inputs must be exactly {sorted(s.name for s in specs)}, got {sorted(inputs)}")
        for s in specs:
            t = inputs[s.name]
            if not isinstance(t, torch.Tensor) or t.device.type != "cuda" or tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"input {s.name!r} must be a CUDA tensor of shape {tuple(s.shape)}")
        producer = torch.cuda.current_stream()
        with torch.cuda.stream(self._stream), torch.no_grad():
            self._stream.wait_stream(producer)  # the inputs were written on the caller's stream
            for s in specs:
                self._static_in[s.name].copy_(inputs[s.name])  # casts to fp16 on the device
            if self._graph is not None:
                self._graph.replay()
                outs = self._static_out
            else:
                outs = self._forward()
        producer.wait_stream(self._stream)  # the caller's next kernels see the outputs
        return dict(zip(self._outputs_names, outs, strict=True))

    def close(self) -> None:
        self._graph = None
        self._static_in.clear()
        self._static_out = []
        self.module = None
