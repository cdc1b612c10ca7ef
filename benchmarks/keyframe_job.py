"""Time of one latent try-on keyframe job (models.latent.job.run_latent_tryon) on CPU, by stage.

    python -m benchmarks.keyframe_job --clip liveportrait_d0 --keyframes 3 --threads 1

Keyframes are evenly spaced frames of a shared clip, tracked with the stream's FaceTracker; each runs the
full job (align + render + masks, encode, stage 1, stage 2, decode) at the default configuration, on
``--threads`` torch threads (the stream runs jobs on one). A short warm-up job first (not recorded) loads
the weights and aligns the default reference. Reported per stage, over the keyframes: wall time and the
job thread's CPU time (with one torch thread that is the job's cost; wall time also shows how busy the
machine was), and milliseconds per optimisation step. Writes benchmarks/results/keyframe_job_cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.stats import machine_info, summarize, write_json

SHARED_VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
OUT = Path(__file__).resolve().parent / "results" / "keyframe_job_cpu.json"
STAGES = ("load", "prepare", "encode", "stage1", "stage2", "decode", "total")


def keyframes(clip: str, n: int) -> list[tuple[np.ndarray, Any]]:
    """``n`` evenly spaced (frame, tracked face) pairs; the tracker sees every frame up to the last one."""
    from models.training.data import evenly_spaced
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    path = (SHARED_VIDEO / f"{clip}.mp4").resolve()
    if not path.is_file():
        raise SystemExit(f"keyframe_job: {path} not found (shared data is only on the dev machines)")
    with av.open(str(path)) as c:
        total = c.streams.video[0].frames or 100
    keep = set(evenly_spaced(min(total, 150), n))
    out = []
    with av.open(str(path)) as c, FaceTracker(TrackerConfig(max_faces=1)) as tracker:
        stream = c.streams.video[0]
        for i, frame in enumerate(c.decode(stream)):
            if i > max(keep):
                break
            rgb = frame.to_ndarray(format="rgb24")
            faces = tracker.track(rgb, float(frame.time) if frame.time is not None else i / 25.0)
            if i in keep and faces:
                out.append((rgb, faces[0]))
    if not out:
        raise SystemExit(f"keyframe_job: no face tracked in {clip}")
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from models.latent.job import LatentItem, LatentTryonConfig, run_latent_tryon
    from models.latent.loho import LohoConfig
    from models.latent.model import default_weights_path, get_autoencoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="liveportrait_d0")
    p.add_argument("--keyframes", type=int, default=3)
    p.add_argument("--frame", default="rectangle", help="catalogue frame")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", default=None, help="default: models/weights/style_autoencoder.pt")
    p.add_argument("--steps1", type=int, default=None)
    p.add_argument("--steps2", type=int, default=None)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else default_weights_path()
    try:
        net = get_autoencoder(weights)
    except FileNotFoundError as e:
        raise SystemExit(f"keyframe_job: {e}") from None
    loho = LohoConfig()
    if args.steps1 is not None or args.steps2 is not None:
        loho = LohoConfig(steps_stage1=args.steps1 if args.steps1 is not None else loho.steps_stage1,
                          steps_stage2=args.steps2 if args.steps2 is not None else loho.steps_stage2)  # fmt: skip
    cfg = LatentTryonConfig(weights=str(weights), loho=loho)
    item = LatentItem(args.frame)
    frames = keyframes(args.clip, args.keyframes)

    warm = LatentTryonConfig(weights=str(weights), loho=LohoConfig(steps_stage1=1, steps_stage2=1))
    run_latent_tryon(frames[0][0], frames[0][1], item, warm)  # weights, reference alignment, allocator

    runs = []
    for k, (rgb, face) in enumerate(frames):
        t = time.perf_counter()
        layer = run_latent_tryon(rgb, face, item, cfg)
        wall = (time.perf_counter() - t) * 1e3
        runs.append({"timings_ms": layer.timings_ms, "wall_ms": wall, "diagnostics": layer.diagnostics})
        both = {s: (round(layer.timings_ms[s]), round(layer.diagnostics["cpu_ms"][s])) for s in STAGES}
        logging.info("keyframe %d (wall ms, cpu ms): %s", k, both)
    per_stage = {s: summarize([r["timings_ms"][s] for r in runs]) for s in STAGES}
    per_stage_cpu = {s: summarize([r["diagnostics"]["cpu_ms"][s] for r in runs]) for s in STAGES}
    per_step = {
        f"{stage}_{kind}_ms_per_step": table[stage]["mean"] / max(steps, 1)
        for stage, steps in (("stage1", loho.steps_stage1), ("stage2", loho.steps_stage2))
        for kind, table in (("wall", per_stage), ("cpu", per_stage_cpu))
    }
    conditions = {"device": "cpu", "torch_threads": args.threads, "clip": args.clip, "frame": args.frame,
                  "crop_size": net.cfg.size, "weights": str(weights), "loho": dataclasses.asdict(loho),
                  "note": "machine shared with other work: see load_avg"}  # fmt: skip
    result = {
        "benchmark": "keyframe_job",
        "machine": machine_info(),
        "conditions": conditions,
        "per_stage_wall_ms": per_stage,
        "per_stage_cpu_ms": per_stage_cpu,
        "per_step_ms": per_step,
        "runs": runs,
    }
    write_json(args.out, result)
    logging.info("per stage p50 wall ms: %s; cpu ms: %s; per step: %s -> %s",
                 {s: round(per_stage[s]["p50"]) for s in STAGES}, {s: round(per_stage_cpu[s]["p50"]) for s in STAGES},
                 {k: round(v, 1) for k, v in per_step.items()}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
