"""Per-model parity and latency of the GPU backends: torch CUDA (fp16, channels_last, CUDA graph) vs eager fp32.

    python -m benchmarks.gpu_latency --sizes 128 256 512 --batches 1 4 --out benchmarks/results/gpu_latency.json

For each (model, size, batch): export the ONNX + manifest once (random init unless ``--weights`` holds shipped
weights at that size: latency does not depend on the values), then on the same device and in the same run

- ``torch_fp16_graph``: the production path (``accel.torch_backend``: fp16, channels_last, captured graph);
- ``torch_fp32_eager``: the baseline, eager fp32 without graph capture;
- ``tensorrt_fp16``: only where ``import tensorrt`` works (engine built before timing, never in the loop).

Method (as in the device README): warm-up iterations, then per iteration a pair of CUDA events around the
work on the backend's stream and one synchronize; reported median and p95. ``device_ms`` times
``run_device`` (inputs already on the GPU: what the neural filters do when pre/post runs on the GPU);
``host_io_ms`` times ``run`` (pinned host -> device -> host copies included). Parity of every path against
fp32 PyTorch on the CPU on seeded random inputs: fp16 relative L2 <= 1e-2, fp32 max |diff| <= 1e-4.

``--device cpu`` runs the same code without CUDA events (a smoke test of the script on a CPU machine; its
numbers are not GPU numbers). Writes JSON (and a PNG beside it).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import machine_info, summarize, write_json

OUT = Path(__file__).resolve().parent / "results" / "gpu_latency.json"
MODELS = ("restorer", "generator", "style_autoencoder")
TARGET_MS = 1.0  # each model at 256 px fp16 on an H100 (the target)

log = logging.getLogger(__name__)


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """ms of one call: CUDA events on the current stream (after a sync) on the GPU, perf_counter on the CPU."""
    import torch

    if device != "cuda":
        def cpu(fn: Callable[[], Any]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return cpu

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def gpu(fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return gpu


def time_calls(fn: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], warmup: int,
               iters: int) -> dict[str, float]:
    for _ in range(warmup):
        timer(fn)
    return summarize([timer(fn) for _ in range(iters)])


def _parity(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], precision: str) -> dict[str, Any]:
    from export.parity import compare, summary

    return summary(compare(ref, {k: np.asarray(v) for k, v in got.items()}), precision)


def _backends(device: str, with_trt: bool) -> dict[str, Callable[[], Any]]:
    from accel.torch_backend import TorchBackend, TorchOptions

    makers: dict[str, Callable[[], Any]] = {
        "torch_fp16_graph": lambda: TorchBackend(TorchOptions(device=device, precision="fp16" if device == "cuda"
                                                                else "fp32")),
        "torch_fp32_eager": lambda: TorchBackend(TorchOptions(device=device, precision="fp32", cuda_graphs=False,
                                                              channels_last=False)),
    }  # fmt: skip
    if with_trt:
        from accel.tensorrt_backend import TensorRTBackend, TrtOptions

        makers["tensorrt_fp16"] = lambda: TensorRTBackend("fp16", TrtOptions(build_in_background=False))
    return makers


def bench_case(model: str, size: int, batch: int, device: str, warmup: int, iters: int, work: Path,
               weights: Path | None, with_trt: bool) -> dict[str, Any]:
    import torch

    from accel.model_store import find_weights
    from accel.select import ModelFiles
    from export.export import ExportOptions, export_model
    from export.models import example_inputs, load_model, model_spec
    from export.parity import torch_outputs

    w = find_weights(model, size, weights) if weights is not None else None
    res = export_model(model, work / f"{model}_{size}_b{batch}", ExportOptions(size=size, batch=batch), weights=w)
    files = ModelFiles.from_manifest(res.manifest_path)
    spec = model_spec(model)
    feed = example_inputs(spec, batch, size, seed=1)
    ref = torch_outputs(load_model(model, size, w).module, feed, spec.outputs)
    timer = _timer(device)
    out: dict[str, Any] = {"model": model, "size": size, "batch": batch, "weights": str(w) if w else "random init"}
    for name, make in _backends(device, with_trt).items():
        entry: dict[str, Any] = {}
        try:
            b = make()
            source = files.onnx_path if name.startswith("tensorrt") else w
            if name.startswith("tensorrt"):  # build (or reuse) the engine before anything is timed
                from accel.tensorrt_backend import build_engine, engine_path

                eng = engine_path(files.onnx_path, files.manifest, "fp16", b.options.cache_dir)
                if not eng.is_file():
                    t0 = time.perf_counter()
                    build_engine(files.onnx_path, eng, "fp16", b.options)
                    entry["engine_build_s"] = time.perf_counter() - t0
            b.load(source, files.manifest)
            b.warmup(3)
            entry["precision"] = b.precision
            entry["parity"] = _parity(ref, b.run(feed), b.precision)
            entry["host_io_ms"] = time_calls(lambda b=b: b.run(feed), timer, warmup, iters)
            if b.device_io:
                dev = {k: torch.from_numpy(v).to("cuda") for k, v in feed.items()}
                entry["device_ms"] = time_calls(lambda b=b, dev=dev: b.run_device(dev), timer, warmup, iters)
            b.close()
        except Exception as e:  # one backend failing must not lose the others' numbers
            log.exception("%s %s %d b%d failed", name, model, size, batch)
            entry["error"] = f"{type(e).__name__}: {e}"
        out[name] = entry
    base = out["torch_fp32_eager"].get("device_ms") or out["torch_fp32_eager"].get("host_io_ms")
    fast = out["torch_fp16_graph"].get("device_ms") or out["torch_fp16_graph"].get("host_io_ms")
    if base and fast:
        out["speedup_p50_fp16_graph_vs_fp32_eager"] = base["p50"] / fast["p50"]
    return out


def plot(res: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = res["cases"]
    labels = [f"{c['model']}\n{c['size']} b{c['batch']}" for c in cases]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(cases)), 4.2))
    x = np.arange(len(cases))
    for k, (name, colour) in enumerate((("torch_fp32_eager", "#8da0cb"), ("torch_fp16_graph", "#fc8d62"),
                                        ("tensorrt_fp16", "#66c2a5"))):  # fmt: skip
        vals = [(c.get(name, {}).get("device_ms") or c.get(name, {}).get("host_io_ms") or {}).get("p50", np.nan)
                for c in cases]  # fmt: skip
        if not np.all(np.isnan(vals)):
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, color=colour, label=name)
    ax.axhline(TARGET_MS, color="#d62728", ls=":", lw=1)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call, p50 (device-resident inputs where supported)")
    ax.set_title(f"{res['device_name']}: per-model latency (dotted: {TARGET_MS} ms target at 256 px fp16)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--weights", type=Path, default=None, help="shipped weights folder (default: random init)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_latency: no CUDA device (use --device cpu for a smoke run of the script)")
    try:
        import tensorrt  # noqa: F401

        with_trt = args.device == "cuda"
    except ImportError:
        with_trt = False
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    cases = []
    with tempfile.TemporaryDirectory(prefix="gpu_latency_") as tmp:
        for model in args.models:
            for size in args.sizes:
                for batch in args.batches:
                    c = bench_case(model, size, batch, args.device, args.warmup, args.iters, Path(tmp),
                                   args.weights, with_trt)  # fmt: skip
                    cases.append(c)
                    t = c["torch_fp16_graph"].get("device_ms") or c["torch_fp16_graph"].get("host_io_ms") or {}
                    print(f"{model:18s} {size:4d} b{batch}: fp16 graph p50 {t.get('p50', float('nan')):7.3f} ms, "
                          f"speedup vs fp32 eager {c.get('speedup_p50_fp16_graph_vs_fp32_eager', float('nan')):.2f}x")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (smoke run, not GPU numbers)"
    at256 = [c for c in cases if c["size"] == 256 and c["batch"] == 1 and "device_ms" in c["torch_fp16_graph"]]
    res: dict[str, Any] = {
        "benchmark": "gpu_latency", "device": args.device, "device_name": name, "machine": machine_info(),
        "settings": {"warmup": args.warmup, "iters": args.iters, "timing": "CUDA events per call, median/p95"
                     if args.device == "cuda" else "perf_counter"},
        "tensorrt": with_trt, "cases": cases,
        "target": {"what": f"each model <= {TARGET_MS} ms at 256 px fp16, batch 1",
                   "p50_ms": {c["model"]: c["torch_fp16_graph"]["device_ms"]["p50"] for c in at256},
                   "met": bool(at256) and all(c["torch_fp16_graph"]["device_ms"]["p50"] <= TARGET_MS for c in at256)},
    }  # fmt: skip
    if cases:
        res["median_speedup"] = statistics.median(c.get("speedup_p50_fp16_graph_vs_fp32_eager", np.nan) for c in cases)
    write_json(args.out, res)
    plot(res, args.out.with_suffix(".png"))
    print("->", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
