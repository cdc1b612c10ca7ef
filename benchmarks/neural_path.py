"""The whole neural per-frame path at 640x480 with one face, on ONNX Runtime (CPU), vs the optics baseline.

    python -m benchmarks.neural_path --clip liveportrait_d12 --frames 120

Frames of a shared clip letterboxed to 640x480 (the optics benchmark's frames), one FramePipeline per chain
(tracking included), chains interleaved frame by frame in a rotating order so machine load hits all alike:

- ``tryon_optics``: the ray-traced try-on (frame and tint drawn), the baseline of the same run;
- ``restore``: codebook restorer on the aligned face, pasted back inside the face outline;
- ``tryon_neural``: the same try-on with the generator (mode add) refracting inside the lenses;
- ``remove_neural``: the generator in remove mode inside the fitted lenses;
- ``restore+remove_neural``: both networks per frame (the issue's target: restorer + generator inference
  <= 25 ms per face per frame at p95 on CPU, ONNX Runtime, 128 px crops), as the server runs them: both
  networks start on the previous frame's crops beside the tracker, one thread each (stream.overlap);
- ``restore+remove_neural_sequential``: the same chain with the overlap off (after the tracker, each
  network in turn on ``--threads`` threads), the comparison of the same run.

Every chain but the sequential one runs as served (its network beside the tracker where it can). Inference
per frame is the networks' time on the frame's critical path: a model's run when it ran in turn, and for one
started beside the tracker only the wait for it after tracking (its own span is ``*.overlapped``). The share
of frames served by the early start is recorded per chain (``overlapped_frames``).

Per chain and stage (track, align, each model's inference, paste-back, each filter, whole frame): p50/p95,
plus ratios of the totals to the baseline. The networks run on ONNX Runtime CPU with ``--threads`` intra-op
threads; shipped weights (``models/weights`` or ``$RXSTREAM_WEIGHTS``) are used where present, else random
init (latency does not depend on values); the JSON records which, and the load average before and after
(on a shared machine other processes inflate every number; the ratios are the comparable part).
Writes benchmarks/results/neural_path_cpu.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from accel.model_store import BACKEND_CHOICES
from benchmarks.optics_latency import load_frames
from benchmarks.stats import machine_info, summarize, write_json
from stream.pipeline import FilterSpec, FramePipeline

OUT = Path(__file__).resolve().parent / "results" / "neural_path_cpu.json"
MODELS = ("restorer", "generator")
INFERENCE_KEYS = (".restorer", ".generator", ".generator_heads")  # per-frame model times (stream.filters.neural)
SEQUENTIAL = "_sequential"  # chains whose pipeline runs with the overlap off
SIZE = 128
RX = "-4.00 -1.00 x 20"
BASELINE = "tryon_optics"
TARGET_MS = 25.0  # restorer + generator inference per face per frame, p95
GPU_PATH_MS = 5.0  # the whole neural path per frame on an H100 at 256 px fp16


def chains(backend: str = "onnxruntime", size: int = SIZE) -> dict[str, list[FilterSpec]]:
    neural = {"backend": backend, "neural_size": size}
    tryon = {"rx": RX, "tint": "#50607080", "gradient": 0.6}
    remove = {"rx": RX, "fit_frames": 3, "engine": "neural", **neural}  # the frame is fitted during warm-up
    restore = {"fidelity": 0.5, "size": size, "backend": backend}
    return {
        "tryon_optics": [FilterSpec("tryon", tryon)],
        "restore": [FilterSpec("restore", restore)],
        "tryon_neural": [FilterSpec("tryon", {**tryon, "engine": "neural", **neural})],
        "remove_neural": [FilterSpec("remove", remove)],
        "restore+remove_neural": [FilterSpec("restore", restore), FilterSpec("remove", remove)],
        "restore+remove_neural_sequential": [FilterSpec("restore", restore), FilterSpec("remove", remove)],
    }


def weights_for_run(work: Path, size: int = SIZE) -> tuple[Path, dict[str, str]]:
    """The shipped weights directory when it has every model at ``size``, else random-init weights in ``work``."""
    from accel.model_store import default_weights_dir, find_weights
    from export.models import load_model, save_weights

    shipped = default_weights_dir()
    if all(find_weights(m, size, shipped) for m in MODELS):
        return shipped, {m: f"shipped: {find_weights(m, size, shipped)}" for m in MODELS}
    d = work / "weights"
    for m in MODELS:
        lm = load_model(m, size, seed=0)
        save_weights(lm.module, lm.config, d / f"{m}.pt")
    return d, {m: f"random init seed 0 (no shipped {size}px weights in {shipped})" for m in MODELS}


def run(clip: str, n: int, warmup: int, threads: int, work: Path, backend: str = "onnxruntime",
        size: int = SIZE) -> dict[str, Any]:
    from accel.model_store import ModelStore, StoreOptions, set_shared_store

    weights_dir, provenance = weights_for_run(work, size)
    store = ModelStore(StoreOptions(weights_dir=weights_dir, cache_dir=work / "onnx", ort_threads=threads))
    old = set_shared_store(store)
    frames, fps = load_frames(clip, n + warmup, 640, 480)
    specs = chains(backend, size)
    pipes = {name: FramePipeline(chain, overlap=not name.endswith(SEQUENTIAL)) for name, chain in specs.items()}
    try:
        t0 = time.perf_counter()
        for p in pipes.values():
            p.prepare(600)  # export + load every model before timing anything
        load_s = time.perf_counter() - t0
        stages: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in pipes}
        errors: dict[str, list[str]] = {k: [] for k in pipes}
        one_face = dict.fromkeys(pipes, 0)
        overlapped = dict.fromkeys(pipes, 0)
        names = list(pipes)
        for i, frame in enumerate(frames):
            names = names[1:] + names[:1]  # rotate: no chain always runs first on a warm cache
            totals, base_track = {}, float("nan")
            for name in names:
                t = time.perf_counter()
                _, res = pipes[name].process(frame, i / fps)
                total = totals[name] = (time.perf_counter() - t) * 1e3
                if name == BASELINE:
                    base_track = res.timings_ms.get("track", float("nan"))
                if i < warmup:
                    continue
                errors[name].extend(res.errors)
                one_face[name] += len(res.faces) == 1
                overlapped[name] += any(k.endswith(".overlapped") for k in res.timings_ms)
                for k, v in res.timings_ms.items():
                    stages[name][k].append(v)
                stages[name]["total"].append(total)
                infer = [v for k, v in res.timings_ms.items() if k.endswith(INFERENCE_KEYS)]
                stages[name]["inference"].append(sum(infer))
                # The filters' own time (crop, pre/post, inference, paste): the path the GPU target bounds.
                own = [v for k, v in res.timings_ms.items() if k != "track" and ("." not in k or k.endswith(".begin"))]
                stages[name]["filters"].append(sum(own))
            if i >= warmup:  # what the chain adds to the frame over tracking it alone (the baseline's, same frame)
                for name, total in totals.items():
                    stages[name]["over_tracking"].append(total - base_track)
        models = {name: p.models() for name, p in pipes.items()}
        isolated = isolated_inference(weights_dir, work / "onnx", n, size)
    finally:
        for p in pipes.values():
            p.close()
        set_shared_store(old)
        store.close()
    out: dict[str, Any] = {"chains": {}, "weights": provenance, "models_load_s": load_s, "isolated_inference": isolated}
    for name in pipes:
        st = {k: summarize(v) for k, v in stages[name].items()}
        out["chains"][name] = {"stages_ms": st, "frames_with_one_face": one_face[name],
                               "overlapped_frames": overlapped[name],
                               "errors": sorted(set(errors[name]))[:5], "error_frames": len(errors[name]),
                               "filters": [{"name": s.name, "params": s.params} for s in specs[name]],
                               "models": models[name]}  # fmt: skip
    base = out["chains"][BASELINE]["stages_ms"]["total"]
    for q in ("p50", "p95"):
        totals = {k: c["stages_ms"]["total"][q] for k, c in out["chains"].items()}
        out[f"ratios_total_{q}_vs_{BASELINE}"] = {k: v / base[q] for k, v in totals.items()}
    both = out["chains"]["restore+remove_neural"]["stages_ms"]["inference"]
    seq = out["chains"]["restore+remove_neural_sequential"]["stages_ms"]
    cpu = isolated["restorer+generator_1_thread_cpu_ms"]
    out["overlap_vs_sequential"] = {
        f"{part}_{q}": out["chains"]["restore+remove_neural"]["stages_ms"][part][q] / seq[part][q]
        for part in ("inference", "total") for q in ("p50", "p95")
    }
    over = out["chains"]["restore+remove_neural"]["stages_ms"]["over_tracking"]
    out["target"] = {"what": f"restorer + generator inference per face per frame, p95, {backend}, {size} px",
                     "limit_ms": TARGET_MS, "p50_ms": both["p50"], "p95_ms": both["p95"],
                     "met": bool(both["p95"] <= TARGET_MS),
                     "sequential_p50_ms": seq["inference"]["p50"], "sequential_p95_ms": seq["inference"]["p95"],
                     "chain_over_tracking_p50_ms": over["p50"], "chain_over_tracking_p95_ms": over["p95"],
                     "met_by_chain_over_tracking": bool(over["p95"] <= TARGET_MS),
                     "sequential_chain_over_tracking_p50_ms": seq["over_tracking"]["p50"],
                     "sequential_chain_over_tracking_p95_ms": seq["over_tracking"]["p95"],
                     "single_thread_cpu_time_p50_ms": cpu["p50"], "single_thread_cpu_time_p95_ms": cpu["p95"],
                     "note": "p50/p95_ms: wall time on the frame's critical path in the pipeline as served (both "
                             "networks started beside the tracker, 1 ORT thread each; inflated by other load); "
                             "sequential: the overlap off, each network in turn on the ORT threads of the settings; "
                             "chain_over_tracking: the whole chain's frame time minus tracking alone on the same frame "
                             "(the baseline chain's), i.e. all the latency the two filters add, pre/post included; "
                             "single_thread_cpu_time: both networks' own CPU time on one thread"}  # fmt: skip
    if backend in ("torch-cuda", "tensorrt"):
        path = out["chains"]["restore+remove_neural"]["stages_ms"]["filters"]
        what = f"whole neural path (restore + remove filters incl. pre/post), {backend}, {size} px"
        out["target_gpu"] = {"what": what,
                             "limit_ms": GPU_PATH_MS, "p50_ms": path["p50"], "p95_ms": path["p95"],
                             "met": bool(path["p95"] <= GPU_PATH_MS)}  # fmt: skip
    return out


def isolated_inference(weights_dir: Path, cache: Path, iters: int, size: int = SIZE) -> dict[str, Any]:
    """Each network alone on ONNX Runtime CPU, interleaved: 2 threads (wall) and 1 thread (wall and CPU time).

    With one intra-op thread ONNX Runtime computes on the calling thread, so ``time.thread_time`` is the
    inference's own CPU time: unlike wall time it does not grow while other processes hold the cores,
    which makes it the estimate to trust on a shared machine (memory and cache contention still count).
    """
    from accel.model_store import exported_files, find_weights
    from accel.onnxruntime_backend import OnnxRuntimeBackend, OrtOptions
    from export.models import example_inputs, model_spec

    out: dict[str, Any] = {}
    backends, feeds = {}, {}
    for m in MODELS:
        weights = find_weights(m, size, weights_dir)
        assert weights is not None
        files, _ = exported_files(m, size, 1, weights, cache)
        feeds[m] = example_inputs(model_spec(m), 1, size, seed=1)
        for threads in (1, 2):
            opts = OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads, cache_dir=cache)
            b = OnnxRuntimeBackend(opts).load(files.onnx_path, files.manifest)
            b.warmup(3)
            backends[(m, threads)] = b
    wall: dict[tuple[str, int], list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for i in range(iters):
        keys = list(backends) if i % 2 == 0 else list(backends)[::-1]
        for key in keys:
            m, threads = key
            t0, c0 = time.perf_counter(), time.thread_time()
            backends[key].run(feeds[m])
            wall[key].append((time.perf_counter() - t0) * 1e3)
            if threads == 1:
                cpu[m].append((time.thread_time() - c0) * 1e3)
    for b in backends.values():
        b.close()
    for m in MODELS:
        out[m] = {"ort_2_threads_wall_ms": summarize(wall[(m, 2)]), "ort_1_thread_wall_ms": summarize(wall[(m, 1)]),
                  "ort_1_thread_cpu_ms": summarize(cpu[m])}  # fmt: skip
    both = [a + b for a, b in zip(cpu[MODELS[0]], cpu[MODELS[1]], strict=True)]
    out["restorer+generator_1_thread_cpu_ms"] = summarize(both)
    return out


def plot(res: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["chains"])
    order = ["track", "masks", "align", "restorer", "generator", "paste", "other"]
    palette = ["#8da0cb", "#ffd92f", "#a6d854", "#fc8d62", "#e78ac3", "#66c2a5", "#cccccc"]
    colours = dict(zip(order, palette, strict=True))
    # placement and masks; heads; an early start's crops and hand-over
    alias = {"mask": "masks", "lenses": "masks", "generator_heads": "generator", "begin": "align"}
    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    for y, name in enumerate(names):
        st = res["chains"][name]["stages_ms"]
        parts = dict.fromkeys(order, 0.0)
        for k, v in st.items():
            if k in ("total", "inference", "over_tracking"):
                continue
            key = k.split(".")[-1] if "." in k else ("track" if k == "track" else None)
            key = alias.get(key, key) if key is not None else None
            if key in parts:
                parts[key] += v["p50"]
        parts["other"] = max(st["total"]["p50"] - sum(parts.values()), 0.0)
        left = 0.0
        for k in order:
            ax.barh(y, parts[k], left=left, color=colours[k], label=k if y == 0 else None)
            left += parts[k]
        ax.plot(st["total"]["p95"], y, "k|", markersize=14)
    ax.axvline(res["target"]["limit_ms"], color="#d62728", ls=":", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(
        "ms per frame (bars: p50 by stage; other: optics, drawing, glue; | : total p95; dotted: 25 ms inference target)"
    )
    load = res["machine"].get("load_avg_1_5_15")
    ax.set_title(f"Neural per-frame path, 640x480, 1 face, {res['settings']['backend']} {res['settings']['crop']} px, "
                 f"{res['settings']['threads']} ORT threads in turn, 1 beside the tracker "
                 f"(load {load})", fontsize=10)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="liveportrait_d12")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--backend", default="onnxruntime", choices=BACKEND_CHOICES,
                    help="backend of the neural filters (torch-cuda / tensorrt: the GPU path, pre/post on the GPU)")
    ap.add_argument("--size", type=int, default=SIZE, help="crop size (random-init weights where none are shipped)")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/neural_path_<cpu|backend>.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rxstream-neural-path-") as tmp:
        res = run(args.clip, args.frames, args.warmup, args.threads, Path(tmp), args.backend, args.size)
    if args.out is None:
        args.out = OUT if args.backend == "onnxruntime" else OUT.with_name(f"neural_path_{args.backend}.json")
    machine = machine_info()
    machine["load_avg_before_1_5_15"] = load_before
    res = {"benchmark": "neural_path_cpu", "clip": args.clip, "size": [640, 480],
           "settings": {"frames": args.frames, "warmup": args.warmup, "threads": args.threads, "crop": args.size,
                        "backend": args.backend, "rx": RX},
           "machine": machine, **res}  # fmt: skip
    write_json(args.out, res)
    png = plot(res, args.out.with_suffix(".png"))
    for name, c in res["chains"].items():
        st = c["stages_ms"]
        parts = "  ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in st.items() if k != "total")
        print(f"{name:22s} total p50 {st['total']['p50']:6.1f} p95 {st['total']['p95']:6.1f} ms | {parts}")
    for m, r in res["isolated_inference"].items():
        if m in MODELS:
            w2, w1, c1 = r["ort_2_threads_wall_ms"], r["ort_1_thread_wall_ms"], r["ort_1_thread_cpu_ms"]
            print(
                f"{m:10s} alone: 2 threads wall p50 {w2['p50']:.1f} p95 {w2['p95']:.1f} | 1 thread wall p50 "
                f"{w1['p50']:.1f} p95 {w1['p95']:.1f}, CPU time p50 {c1['p50']:.1f} p95 {c1['p95']:.1f} ms"
            )
    t = res["target"]
    r = res["overlap_vs_sequential"]
    print(f"overlap vs sequential: inference p50 x{r['inference_p50']:.2f} p95 x{r['inference_p95']:.2f}, "
          f"total p50 x{r['total_p50']:.2f} p95 x{r['total_p95']:.2f}")
    print(
        f"target {t['what']}: p95 {t['p95_ms']:.1f} ms (<= {t['limit_ms']:.0f}: {t['met']}); single-thread CPU "
        f"time p50 {t['single_thread_cpu_time_p50_ms']:.1f} p95 {t['single_thread_cpu_time_p95_ms']:.1f} ms "
        f"-> {args.out}, {png}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
