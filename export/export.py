"""Export one network to a static-shape ONNX file plus its manifest, checked against PyTorch.

Pipeline: build (trained weights or seeded random init) -> TorchScript export at opset 17 with constant
folding (``models.nets.onnx_export``) -> TensorRT op allow-list -> onnxslim -> optional fp16 conversion
(weights and compute fp16, IO kept fp32 so callers never change) -> ONNX checker -> parity against the
eager fp32 module -> manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import Manifest, TensorSpec, manifest_path_for
from export.models import IMAGE_NORM, config_to_json, example_inputs, load_model, model_spec
from export.parity import compare, onnxruntime_outputs, summary, torch_outputs
from export.simplify import simplify

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


class ParityError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportOptions:
    size: int = 128
    batch: int = 1
    precision: str = "fp32"
    seed: int = 0  # random-init seed (ignored with weights) and seed of the random parity inputs
    simplify: bool = True
    check_parity: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch < 1 or self.size < 8:
            raise ValueError(f"need batch >= 1 and size >= 8, got batch {self.batch}, size {self.size}")


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: Manifest


def onnx_filename(name: str, size: int, batch: int, precision: str) -> str:
    return f"{name}_{size}_b{batch}_{precision}.onnx"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    v = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxslim

        v["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return v


def to_fp16(path: Path, fp32_prefixes: tuple[str, ...] = ()) -> None:
    """fp16 weights and activations, fp32 graph inputs/outputs (``keep_io_types``), in place.

    onnxruntime's converter (shipped with onnxruntime) keeps ops without reliable fp16 kernels (e.g.
    Resize's scales) in fp32 behind Casts.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    keep = [n.name for n in model.graph.node if n.name.startswith(fp32_prefixes)] if fp32_prefixes else None
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    sorted_nodes = toposort(dedupe_nodes(model.graph))  # the converter appends its input Casts after their consumers
    del model.graph.node[:]
    model.graph.node.extend(sorted_nodes)
    remove_fp16_round_trips(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def dedupe_nodes(graph: Any) -> Any:
    """Drop exact duplicates (same op, inputs, outputs, attributes): the fp16 converter emits the same
    fp16->fp32 Cast once per blocked consumer, breaking SSA. Different nodes sharing an output still raise."""
    seen: dict[str, Any] = {}
    keep = []
    for n in graph.node:
        clash = [seen[o] for o in n.output if o in seen]
        if clash:
            if any(c.SerializeToString() != n.SerializeToString() for c in clash):
                raise ValueError(f"two different nodes write {list(n.output)} ({n.name!r})")
            continue
        seen.update({o: n for o in n.output})
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)
    return graph


def remove_fp16_round_trips(model: Any) -> int:
    """Rewire ``t(fp32) -> Cast(fp16) -> Cast(fp32)`` to use ``t`` directly; returns how many were removed.

    The converter puts such a pair between every two fp32-pinned nodes, which rounds each intermediate to
    fp16 and defeats the pinning. Types come from ONNX shape inference: only fp32 sources are rewired.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def cast_to(n: Any) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    dead: set[int] = set()
    for up in graph.node:
        if cast_to(up) != onnx.TensorProto.FLOAT or up.output[0] in outputs:
            continue
        down = producer.get(up.input[0])
        if down is None or cast_to(down) != onnx.TensorProto.FLOAT16:
            continue
        src = down.input[0]
        if elem.get(src) != onnx.TensorProto.FLOAT:
            continue
        for c in consumers.get(up.output[0], []):
            c.input[:] = [src if i == up.output[0] else i for i in c.input]
        dead.add(id(up))
        if all(id(c) in dead for c in consumers.get(down.output[0], [])) and down.output[0] not in outputs:
            dead.add(id(down))
    keep = [n for n in graph.node if id(n) not in dead]
    del graph.node[:]
    graph.node.extend(keep)
    return len(dead)


def toposort(graph: Any) -> list[Any]:
    """Nodes of an ONNX graph in dependency order (Kahn), stable for already-sorted runs; raises on cycles."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or dangling inputs at node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            ordered.append(n)
            available.update(n.output)
    return ordered


def _check_ops(path: Path) -> None:
    from models.nets.onnx_export import TENSORRT_OPS, onnx_ops

    bad = onnx_ops(path) - TENSORRT_OPS
    if bad:
        raise ValueError(f"{path.name}: ops outside the TensorRT allow-list: {sorted(bad)}")


def _onnx_parity(module: Any, path: Path, feed: Mapping[str, np.ndarray], outputs: tuple[str, ...],
                 precision: str) -> dict[str, Any]:  # fmt: skip
    try:
        got = onnxruntime_outputs(path, feed)
    except Exception as e:  # e.g. no fp16 kernel for an op on this CPU: record why, do not fake a result
        if precision == "fp32":
            raise
        return {"skipped": f"onnxruntime CPU cannot run the fp16 graph here: {str(e).splitlines()[0][:200]}"}
    return summary(compare(torch_outputs(module, feed, outputs), got), precision)


def export_model(
    name: str,
    out_dir: str | Path,
    opts: ExportOptions | None = None,
    weights: str | Path | None = None,
    config_overrides: dict[str, Any] | None = None,
    real_inputs: np.ndarray | None = None,
) -> ExportResult:
    """Export ``name`` to ``out_dir``; ``real_inputs`` (N, 3, S, S) float32 in [-1, 1] adds a parity check
    on real face crops (other inputs random). Raises ``ParityError`` when a check fails (files are kept
    for inspection, the manifest records the errors)."""
    import torch

    from models.nets.onnx_export import OPSET, export_onnx

    opts = opts or ExportOptions()
    spec = model_spec(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(name, opts.size, weights, opts.seed, config_overrides)
    feed = example_inputs(spec, opts.batch, opts.size, opts.seed)
    path = out_dir / onnx_filename(name, opts.size, opts.batch, opts.precision)
    export_onnx(loaded.module, [torch.from_numpy(v) for v in feed.values()], path,
                [i.name for i in spec.inputs], list(spec.outputs))  # fmt: skip
    _check_ops(path)
    simplified = simplify(path).tool if opts.simplify else "none: disabled"
    if opts.precision == "fp16":
        to_fp16(path, spec.fp32_nodes)
    _check_ops(path)

    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    in_specs = tuple(TensorSpec(i.name, i.shape(opts.batch, opts.size), "float32", i.normalisation)
                     for i in spec.inputs)  # fmt: skip
    ref = torch_outputs(loaded.module, feed, spec.outputs)
    out_specs = tuple(TensorSpec(n, tuple(ref[n].shape), "float32", spec.output_normalisation) for n in spec.outputs)

    parity: dict[str, Any] = {}
    if opts.check_parity:
        parity["random"] = _onnx_parity(loaded.module, path, feed, spec.outputs, opts.precision)
        if real_inputs is not None:
            for start in range(0, len(real_inputs) - opts.batch + 1, opts.batch):
                real = dict(feed)
                real["image"] = np.ascontiguousarray(real_inputs[start : start + opts.batch], dtype=np.float32)
                parity[f"real_{start}"] = _onnx_parity(loaded.module, path, real, spec.outputs, opts.precision)

    from accel.cache import sha256_file

    manifest = Manifest(
        model=name, onnx_file=path.name, onnx_sha256=sha256_file(path), opset=OPSET, precision=opts.precision,
        batch=opts.batch, size=opts.size, inputs=in_specs, outputs=out_specs, source_weights=loaded.source,
        config=config_to_json(loaded.config), exporter=_versions(), simplified=simplified, parity=parity,
    )  # fmt: skip
    mpath = manifest.save(manifest_path_for(path))
    failed = [k for k, v in parity.items() if v.get("ok") is False]
    if failed:
        raise ParityError(f"{path.name}: parity failed on {failed}; see {mpath}")
    log.info("exported %s (%s, %s)", path, simplified, loaded.source)
    return ExportResult(path, mpath, manifest)


__all__ = ["IMAGE_NORM", "ExportOptions", "ExportResult", "ParityError", "export_model", "onnx_filename"]
