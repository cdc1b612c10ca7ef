"""ONNX export (opset 17, static shapes) with an onnxruntime parity check and a TensorRT op allow-list."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17

# ONNX ops the TensorRT ONNX parser supports (onnx-tensorrt operators.md, TensorRT >= 8.6), limited to
# those these networks can plausibly produce. Anything else in a graph is an export bug to fix.
# fmt: off
TENSORRT_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "DepthToSpace", "Div", "Equal", "Erf", "Exp",
    "Expand", "Flatten", "Gather", "GatherElements", "Gemm", "GlobalAveragePool", "GridSample", "Identity",
    "InstanceNormalization",
    "LeakyRelu", "Less", "Log", "MatMul", "Max", "Min", "Mul", "Neg", "Pad",
    "Pow", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
    "Reshape", "Resize", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Softplus", "Split",
    "SpaceToDepth", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
})
# fmt: on


@dataclass(frozen=True)
class ExportReport:
    path: Path
    ops: frozenset[str]
    max_abs_err: float


def export_onnx(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    fold: bool = True,
) -> Path:
    """Export ``model.eval()`` with fixed input shapes (no dynamic axes) using the TorchScript exporter.

    ``dynamo=False``: the TorchScript-based exporter gives plain, static graphs for these convolutional
    models, and the dynamo exporter needs ``onnxscript``, which the project does not install. Its
    deprecation warning is silenced here on purpose; revisit when torch drops the legacy path.
    """
    path = Path(path)
    model.eval()
    # Shape checks in forward() are constant for a static-shape export; the tracer's warnings about them are noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, tuple(inputs), str(path), input_names=list(input_names), output_names=list(output_names),
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    if fold:
        fold_constants(path)
    return path


def fold_constants(path: str | Path) -> Path:
    """Constant-fold in place with onnxruntime's *basic* (execution-provider independent, standard-op) level.

    The TorchScript exporter stops folding at some ops: e.g. the modulated convs' demodulation table left a
    squared copy of every decoder weight in the file (+25 % size) and shape arithmetic (Shape/Where/Expand)
    that TensorRT would only fold again itself. Only default-domain opsets are kept (the graph uses no
    others) and the result is validated with the ONNX checker.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    tmp = path.with_suffix(".folding.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(tmp))
    tmp.unlink()
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_ops(path: str | Path) -> frozenset[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    return frozenset(node.op_type for node in graph.node)


def check_onnx(
    model: nn.Module, inputs: Sequence[torch.Tensor], path: str | Path, input_names: Sequence[str]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the exported graph with onnxruntime (CPU) and the eager model; returns (onnx_outs, torch_outs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs, strict=True)}
    got = sess.run(None, feed)
    model.eval()
    with torch.no_grad():
        ref = model(*inputs)
    ref_list = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    return got, [r.detach().cpu().numpy() for r in ref_list]


def export_and_check(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> ExportReport:
    """Export, compare with eager PyTorch; raises if an op is outside ``TENSORRT_OPS``."""
    path = export_onnx(model, inputs, path, input_names, output_names)
    ops = onnx_ops(path)
    unsupported = ops - TENSORRT_OPS
    if unsupported:
        raise ValueError(f"{path.name}: ops outside the TensorRT allow-list: {sorted(unsupported)}")
    got, ref = check_onnx(model, inputs, path, input_names)
    if len(got) != len(ref):
        raise ValueError(f"{path.name}: {len(got)} ONNX outputs but {len(ref)} PyTorch outputs")
    err = max(float(np.max(np.abs(g.astype(np.float64) - r))) if g.size else 0.0 for g, r in zip(got, ref, strict=True))
    return ExportReport(path, ops, err)
