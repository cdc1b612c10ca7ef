"""Numerical parity between PyTorch and an exported graph or a backend, on random and real inputs.

Tolerances: fp32 must match to max |diff| <= 1e-4 (only summation order differs); fp16 rounds every
activation to 11 bits, so it is judged by relative L2 error <= 1e-2 instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FP32_MAX_ABS = 1e-4
FP16_REL_L2 = 1e-2


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    rel_l2: float  # |got - ref|_2 / |ref|_2

    def ok(self, precision: str) -> bool:
        return self.max_abs <= FP32_MAX_ABS if precision == "fp32" else self.rel_l2 <= FP16_REL_L2


def compare(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> list[OutputParity]:
    if set(ref) != set(got):
        raise ValueError(f"output names differ: reference {sorted(ref)} vs {sorted(got)}")
    out = []
    for name in ref:
        r = np.asarray(ref[name], dtype=np.float64)
        g = np.asarray(got[name], dtype=np.float64)
        if r.shape != g.shape:
            raise ValueError(f"{name}: shape {g.shape} != reference {r.shape}")
        d = g - r
        rel = float(np.linalg.norm(d) / max(np.linalg.norm(r), 1e-12))
        out.append(OutputParity(name, float(np.max(np.abs(d))) if d.size else 0.0, rel))
    return out


def summary(results: list[OutputParity], precision: str) -> dict[str, Any]:
    """JSON-able record for the manifest: per-output errors, the tolerance applied and the verdict."""
    tol = {"max_abs": FP32_MAX_ABS} if precision == "fp32" else {"rel_l2": FP16_REL_L2}
    return {"tolerance": tol, "ok": all(r.ok(precision) for r in results), "outputs": [asdict(r) for r in results]}


def torch_outputs(module: Any, feed: Mapping[str, np.ndarray], output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Eager fp32 PyTorch reference (inputs passed positionally in ``feed`` order)."""
    import torch

    module.eval()
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()))
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return {n: o.detach().float().cpu().numpy() for n, o in zip(output_names, outs, strict=True)}


def onnxruntime_outputs(onnx_path: str | Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2  # shared machines: never grab every core for a check
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feed)), strict=True))


def check(
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    candidate: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    feed: Mapping[str, np.ndarray],
) -> list[OutputParity]:
    return compare(reference(feed), candidate(feed))


# -- real inputs: aligned face crops -------------------------------------------------------------
def aligned_crops(video: str | Path, size: int, n: int, stride: int = 5, max_frames: int = 300) -> np.ndarray:
    """(n, size, size, 3) uint8 aligned crops of the first face, every ``stride``-th tracked frame.

    Uses the real tracker and aligner, so parity is also checked on the statistics of actual face crops
    (smooth skin, saturated highlights) rather than only uniform noise.
    """
    import av

    from models.align import align
    from stream.tracking import FaceTracker

    crops: list[np.ndarray] = []
    with FaceTracker() as tracker, av.open(str(video)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i >= max_frames or len(crops) >= n:
                break
            rgb = frame.to_ndarray(format="rgb24")
            faces = tracker.track(rgb, float(frame.time or i / 30.0))
            if faces and i % stride == 0:
                crops.append(align(rgb, faces[0], size)[0])
    if len(crops) < n:
        raise ValueError(f"{video}: found a face in only {len(crops)} of the {n} frames needed")
    return np.stack(crops)


def crops_to_nchw(crops: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W) in [-1, 1]: the networks' input encoding."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
