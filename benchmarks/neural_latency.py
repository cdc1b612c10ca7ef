"""Inference latency of the networks on CPU: ONNX Runtime vs torch (eager), same inputs, same run.

    python -m benchmarks.neural_latency --sizes 128 256 --batches 1 4 --iters 30 \\
        --out benchmarks/results/neural_latency_cpu.json

Per (model, size, batch): export once (fp32, random init: latency does not depend on weight values),
load both backends with the same thread count, warm up, then time them interleaved (ORT, torch, ORT, ...)
so load from other users of the machine hits both alike; the ratio torch/ORT is the meaningful number.
Also records ONNX Runtime's cold (optimise + save) vs cached (load optimised graph) start time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import machine_info, summarize, write_json

BASELINE = "onnxruntime"


def bench_case(name: str, size: int, batch: int, iters: int, warmup: int, threads: int, work: Path) -> dict[str, Any]:
    import torch

    from accel.onnxruntime_backend import OnnxRuntimeBackend, OrtOptions
    from accel.torch_backend import TorchBackend, TorchOptions
    from export.export import ExportOptions, export_model
    from export.models import example_inputs, model_spec

    res = export_model(name, work, ExportOptions(size=size, batch=batch, check_parity=False))
    ort_opts = OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads, cache_dir=work / "cache")
    cold = OnnxRuntimeBackend(ort_opts).load(res.onnx_path, res.manifest)
    cold.close()
    backends = {
        "onnxruntime": OnnxRuntimeBackend(ort_opts).load(res.onnx_path, res.manifest),
        "torch": TorchBackend(TorchOptions(device="cpu", cpu_threads=threads)).load(None, res.manifest),
    }
    torch.set_num_threads(threads)
    feed = example_inputs(model_spec(name), batch, size, seed=1)
    for b in backends.values():
        b.warmup(warmup)
    samples: dict[str, list[float]] = {k: [] for k in backends}
    for i in range(iters):
        order = list(backends) if i % 2 == 0 else list(backends)[::-1]
        for k in order:
            t0 = time.perf_counter()
            backends[k].run(feed)
            samples[k].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {"model": name, "size": size, "batch": batch}
    for k, s in samples.items():
        st = summarize(s)
        out[k] = {"median_ms": st["p50"], "p95_ms": st["p95"], "per_image_median_ms": st["p50"] / batch,
                  "count": st["count"]}  # fmt: skip
    base = out[BASELINE]["median_ms"]
    out["torch_vs_onnxruntime_median_ratio"] = out["torch"]["median_ms"] / base
    out["onnxruntime_load_ms"] = {"cold": cold.load_ms, "cached": backends["onnxruntime"].load_ms}
    for b in backends.values():
        b.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from export.models import MODEL_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODEL_NAMES))
    p.add_argument("--sizes", nargs="*", type=int, default=[128])
    p.add_argument("--batches", nargs="*", type=int, default=[1, 4])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/neural_latency_cpu.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="rxstream-neural-") as tmp:
        for size in args.sizes:
            for name in args.models:
                for batch in args.batches:
                    r = bench_case(name, size, batch, args.iters, args.warmup, args.threads, Path(tmp))
                    results.append(r)
                    print(f"{name:18s} {size:4d}px b{batch}: onnxruntime {r['onnxruntime']['median_ms']:7.1f} ms "
                          f"(p95 {r['onnxruntime']['p95_ms']:7.1f})  torch {r['torch']['median_ms']:7.1f} ms "
                          f"(p95 {r['torch']['p95_ms']:7.1f})  torch/ort {r['torch_vs_onnxruntime_median_ratio']:.2f}",
                          flush=True)  # fmt: skip
    summary = {
        "benchmark": "neural_latency_cpu",
        "baseline": BASELINE,
        "settings": {
            "iters": args.iters,
            "warmup": args.warmup,
            "threads": args.threads,
            "precision": "fp32",
            "weights": "random init (latency does not depend on values)",
        },
        "machine": machine_info(),
        "geomean_torch_vs_onnxruntime": float(
            np.exp(np.mean([np.log(r["torch_vs_onnxruntime_median_ratio"]) for r in results]))
        ),
        "results": results,
    }
    print(f"wrote {write_json(args.out, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
