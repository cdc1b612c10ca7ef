"""Does the live frame interval survive keyframe jobs running in the background?

    python -m benchmarks.keyframe_interval --clip liveportrait_d12 --blocks 4 --block-s 8

A shared clip, letterboxed to 640x480, is fed in real time at 30 fps (a producer thread with a one-slot,
newest-wins mailbox, as the WebRTC receiver does) into a ``FramePipeline`` running tracking and the
``tryon_latent`` filter (optics try-on + keyframe scheduling + layer composite). Two conditions alternate
in blocks (ABAB..., so the background training load drifts over both alike):

- ``no_jobs``: keyframe jobs return a ready layer at once: the frame path composites a layer exactly as
  in the other condition, but nothing runs in the background;
- ``jobs``: the first keyframe returns the same ready layer, every later one does real CPU work on the
  keyframe worker thread: ``run_latent_tryon`` when ``models.latent.job`` exists and its weights load, else
  a stand-in (torch, 1 thread: Adam steps on a small conv net, polling the cancel flag between steps),
  said so in the JSON. Each keyframe's time is also measured alone (nothing else of ours running).

Reported per condition: frame processing time (``pipeline.process``), inter-output interval, frames dropped
by the mailbox, and the fraction of frames during which a job was running; for the jobs: time per keyframe.
Writes benchmarks/results/keyframe_interval_cpu.json and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from benchmarks.optics_latency import load_frames
from benchmarks.stats import machine_info, summarize, write_json
from models.align import DEFAULT_TEMPLATE
from stream.face import Face
from stream.filters.tryon_latent import LatentBackend, TryonLatent, layer_worker, load_backend
from stream.keyframe_worker import KeyframeWorker, WorkerConfig
from stream.pipeline import FramePipeline

OUT = Path(__file__).resolve().parent / "results" / "keyframe_interval_cpu.json"
LAYER_SIZE = 256
READY_MS = 500.0  # a ready layer's "job" (FirstReady, no_jobs) takes far less; any real keyframe far more
FILTER_PARAMS: dict[str, Any] = {"rx": "-4.00", "frame": "round", "pose_deg": 12.0, "timer_s": 1.0,
                                 "crossfade_frames": 8}  # fmt: skip


# -- the jobs ---------------------------------------------------------------------------------------
@dataclass
class BenchLayer:
    """Same fields as ``models.latent.job.KeyframeLayer``."""

    rgba: np.ndarray
    size: int
    timings_ms: dict[str, float]


def lens_layer(size: int = LAYER_SIZE) -> np.ndarray:
    """A plausible layer in aligned-crop coordinates: tinted lenses with opaque rims around the template's
    eye positions (what a latent try-on layer covers), transparent elsewhere."""
    rgba = np.zeros((size, size, 4), np.float32)
    lens = np.zeros((size, size), np.uint8)
    rim = np.zeros((size, size), np.uint8)
    pts = DEFAULT_TEMPLATE.points(size)
    axes = (round(0.11 * size), round(0.085 * size))
    for cx, cy in pts[:2]:
        centre = (round(cx), round(cy))
        cv2.ellipse(lens, centre, axes, 0, 0, 360, 1, -1)
        cv2.ellipse(rim, centre, axes, 0, 0, 360, 1, max(2, size // 64))
    rgba[lens > 0] = (0.35, 0.25, 0.2, 0.45)
    rgba[rim > 0] = (0.1, 0.08, 0.07, 1.0)
    return rgba


class StandInCancelled(Exception):
    pass


@dataclass(frozen=True)
class StandInJob:
    """CPU work shaped like a latent optimisation: ``steps`` Adam steps on a frozen 3-layer conv net at
    ``size`` px, torch on the calling thread (the worker limits it to 1 intra-op thread). Not the model."""

    steps: int = 150
    size: int = 128
    channels: int = 16

    def describe(self) -> dict[str, Any]:
        return {"kind": "stand-in (NOT the latent model)", "steps": self.steps, "size": self.size,
                "channels": self.channels, "work": "Adam steps on a frozen Conv3x3-ReLU x3 net, torch, "
                "cancel polled between steps; returns a synthetic tinted-lens RGBA layer"}  # fmt: skip

    def warm_up(self) -> None:
        import torch  # noqa: F401  (the import is the warm-up: seconds, before the first keyframe)

    def __call__(self, frame: np.ndarray, face: Face, item: Any, cancel: Callable[[], bool]) -> BenchLayer:
        import torch

        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        c = self.channels
        net = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(c, 3, 3, padding=1))  # fmt: skip
        net.requires_grad_(False)
        z = torch.zeros(1, 3, self.size, self.size, requires_grad=True)
        target = torch.rand(1, 3, self.size, self.size, generator=gen)
        opt = torch.optim.Adam([z], lr=0.05)
        for _ in range(self.steps):
            if cancel():
                raise StandInCancelled("superseded")
            opt.zero_grad()
            loss = torch.mean((net(z) - target) ** 2)
            loss.backward()
            opt.step()
        return BenchLayer(lens_layer(), LAYER_SIZE, {"optimise": (time.perf_counter() - t0) * 1e3})


def instant_job(frame: np.ndarray, face: Face, item: Any, cancel: Callable[[], bool]) -> BenchLayer:
    return BenchLayer(lens_layer(), LAYER_SIZE, {})


@dataclass
class FirstReady:
    """A job function whose first keyframe for each face id is the ready layer (as if an earlier keyframe had
    landed) and every later one ``job``'s. A jobs condition then composites a layer on every frame, as
    ``no_jobs`` does (the tracker may renumber the face when the looped clip jumps), so the frame paths do
    the same work and differ only in what runs in the background."""

    job: Callable[..., Any]
    seen: set[int] = field(default_factory=set)

    def warm_up(self) -> None:
        warm = getattr(self.job, "warm_up", None)
        if callable(warm):
            warm()

    def __call__(self, frame: np.ndarray, face: Face, item: Any, cancel: Callable[[], bool]) -> Any:
        if face.face_id not in self.seen:
            self.seen.add(face.face_id)
            return instant_job(frame, face, item, cancel)
        return self.job(frame, face, item, cancel)


def bench_backend(run: Callable[..., Any], cancel_types: tuple[type[BaseException], ...] = ()) -> LatentBackend:
    return LatentBackend(run, lambda frame, ref: (frame, ref), cancel_types)


def time_jobs(backend: LatentBackend, probe: tuple[np.ndarray, Face], n: int) -> list[float]:
    """Run ``n`` keyframe jobs one after another on a worker like the stream's (1 torch thread) but at normal
    priority and with nothing else of ours running: the cost of a keyframe on this CPU. RuntimeError when
    a job fails."""
    from stream.keyframe_policy import KeyframeKey

    worker = layer_worker(backend, WorkerConfig(nice=0))
    try:
        for i in range(n):
            key = KeyframeKey("alone", 0, backend.make_item("round", None), (i, 0, 0))
            job = worker.submit(key, probe[0], probe[1])
            job.finished.wait()
            if job.state != "done":
                raise RuntimeError(f"a keyframe job ended {job.state}: {job.error}")
        return worker.run_times_ms()
    finally:
        worker.close()


def choose_job_backend(mode: str, probe: tuple[np.ndarray, Face] | None, standin: StandInJob, n_alone: int
                       ) -> tuple[LatentBackend, dict[str, Any]]:  # fmt: skip
    """The real latent job when asked for (or ``auto``) and it runs on a probe frame; else the stand-in. Either
    way timed alone: one cold run (model load, reference photo) and ``n_alone`` warm ones."""
    if probe is None:
        raise SystemExit("keyframe_interval: no face in the clip's first frames")
    why = "asked for the stand-in"
    if mode in ("auto", "real"):
        try:
            backend = load_backend()
            times = time_jobs(backend, probe, 1 + n_alone)
            from models.latent.model import default_weights_path

            info = {"kind": "run_latent_tryon (models.latent.job)", "weights": str(default_weights_path())}
            return backend, {**info, "cold_first_run_ms": times[0], "per_keyframe_alone_ms": summarize(times[1:])}
        except Exception as e:  # ImportError (no module or torch), missing weights, a model error
            if mode == "real":
                raise SystemExit(f"keyframe_interval: the real latent job is unavailable: {e}") from e
            why = f"real job unavailable: {type(e).__name__}: {e}"
    backend = bench_backend(standin, (StandInCancelled,))
    times = time_jobs(backend, probe, 1 + n_alone)
    info = {**standin.describe(), "why": why}
    return backend, {**info, "cold_first_run_ms": times[0], "per_keyframe_alone_ms": summarize(times[1:])}


# -- paced real-time run ------------------------------------------------------------------------------
@dataclass
class Block:
    proc_ms: list[float] = field(default_factory=list)
    out_s: list[float] = field(default_factory=list)
    job_running: list[bool] = field(default_factory=list)
    composite_ms: list[float] = field(default_factory=list)
    layer_shown: list[bool] = field(default_factory=list)
    delivered: int = 0
    dropped: int = 0
    errors: int = 0

    def intervals_ms(self) -> list[float]:
        return list(np.diff(self.out_s) * 1e3) if len(self.out_s) > 1 else []


def run_paced(pipe: FramePipeline, tl: TryonLatent, worker: KeyframeWorker, frames: list[np.ndarray], fps: float,
              n: int, index0: int) -> Block:  # fmt: skip
    """Feed ``n`` frames at ``fps`` in real time; process newest-wins on this thread."""
    cond = threading.Condition()
    mailbox: list[int] = []
    state = {"done": False}
    block = Block()

    def produce() -> None:
        t0 = time.perf_counter() + 0.02
        for k in range(n):
            delay = t0 + k / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with cond:
                if mailbox:
                    block.dropped += 1  # the processor is still busy with an older frame: replace it
                    mailbox.clear()
                mailbox.append(k)
                cond.notify()
        with cond:
            state["done"] = True
            cond.notify()

    producer = threading.Thread(target=produce, name="paced-source", daemon=True)
    producer.start()
    while True:
        with cond:
            while not mailbox and not state["done"]:
                cond.wait()
            if not mailbox:
                break
            k = mailbox.pop()
        i = index0 + k
        t0 = time.perf_counter()
        _, res = pipe.process(frames[i % len(frames)], i / fps)
        t1 = time.perf_counter()
        block.proc_ms.append((t1 - t0) * 1e3)
        block.out_s.append(t1)
        block.job_running.append(worker.stats()["running"] > 0)
        block.composite_ms.append(res.timings_ms.get(f"{tl.name}.composite", float("nan")))
        block.layer_shown.append(tl.showing_layer)
        block.errors += len(res.errors)
        block.delivered += 1
    producer.join()
    return block


@dataclass
class Condition:
    name: str
    pipe: FramePipeline
    filter: TryonLatent
    worker: KeyframeWorker
    blocks: list[Block] = field(default_factory=list)
    index: int = 0
    quiesce_timeouts: int = 0


def quiesce(c: Condition, timeout_s: float = 60.0) -> None:
    """Between blocks: a job left running would load the next block (untimed; the filter asks again on its
    next timer or pose keyframe). A job that cannot stop in time (a starved worker) is counted, not fatal."""
    c.worker.cancel_all()
    if not c.worker.wait_idle(timeout_s):
        c.quiesce_timeouts += 1


def make_condition(name: str, backend: LatentBackend, isolation: Literal["thread", "process"] = "thread") -> Condition:
    worker = layer_worker(backend, WorkerConfig(workers=1, torch_threads=1, isolation=isolation))
    if not worker.wait_ready(600.0):  # a process child imports torch and loads the model first (untimed)
        raise SystemExit(f"keyframe_interval: the {name} worker's process did not warm up in 600 s")
    pipe = FramePipeline("passthrough")
    tl = TryonLatent(FILTER_PARAMS, worker=worker, backend=backend)
    with pipe._lock:  # set_chain builds filters by name only; this one needs its worker injected
        pipe._filters = [tl]
    return Condition(name, pipe, tl, worker)


def first_face(frames: list[np.ndarray], fps: float) -> tuple[np.ndarray, Face] | None:
    from stream.tracking import FaceTracker

    with FaceTracker() as tracker:
        for i, f in enumerate(frames[:30]):
            faces = tracker.track(f, i / fps)
            if faces:
                return f, faces[0]
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    w, h = (int(v) for v in args.size.lower().split("x"))
    frames, clip_fps = load_frames(args.clip, args.frames, w, h)
    standin = StandInJob(steps=args.standin_steps)
    job_backend, job_info = choose_job_backend(args.job, first_face(frames, clip_fps), standin, args.alone_jobs)
    load_before = [round(x, 2) for x in os.getloadavg()]
    jobs_backend = dataclasses.replace(job_backend, run=FirstReady(job_backend.run))
    conds = {"no_jobs": make_condition("no_jobs", bench_backend(instant_job))}
    for iso in args.isolation:
        conds[f"jobs_{iso}"] = make_condition(f"jobs_{iso}", jobs_backend, iso)
    per_block = round(args.block_s * args.fps)
    try:
        for c in conds.values():  # warm-up (discarded): tracker model load, first keyframe, caches
            # One frame asks for the first keyframe (the ready layer); waiting before the next frame means
            # nothing supersedes it, so every condition composites a layer from its first timed frame.
            c.pipe.process(frames[c.index % len(frames)], c.index / args.fps)
            c.index += 1
            if not c.filter.wait_for_keyframes(600.0) or c.worker.stats()["done"] < 1:
                raise SystemExit(f"keyframe_interval: {c.name}: the first keyframe did not land in 600 s")
            run_paced(c.pipe, c.filter, c.worker, frames, args.fps, round(args.fps), c.index)
            c.index += round(args.fps)
            quiesce(c)
        names = list(conds)
        for b in range(args.blocks):
            for name in names[b % len(names) :] + names[: b % len(names)]:  # rotated: no condition always first
                c = conds[name]
                c.blocks.append(run_paced(c.pipe, c.filter, c.worker, frames, args.fps, per_block, c.index))
                c.index += per_block
                quiesce(c)
    finally:
        for c in conds.values():
            c.pipe.close()
            c.worker.close()
    # Ready layers take milliseconds, a real keyframe seconds: keep the jobs conditions' real ones only.
    job_ms = {name: c.worker.run_times_ms() for name, c in conds.items()}
    job_ms.update({n: [t for t in v if t > READY_MS] for n, v in job_ms.items() if n != "no_jobs"})
    job_counts = {name: c.worker.stats() for name, c in conds.items()}
    load_after = [round(x, 2) for x in os.getloadavg()]
    out: dict[str, Any] = {"conditions": {}}
    for name, c in conds.items():
        proc = [x for b in c.blocks for x in b.proc_ms]
        intervals = [x for b in c.blocks for x in b.intervals_ms()]
        running = [x for b in c.blocks for x in b.job_running]
        out["conditions"][name] = {
            "process_ms": summarize(proc),
            "interval_ms": summarize(intervals),
            "delivered": sum(b.delivered for b in c.blocks),
            "dropped": sum(b.dropped for b in c.blocks),
            "errors": sum(b.errors for b in c.blocks),
            "frames_with_job_running": float(np.mean(running)) if running else 0.0,
            "frames_with_layer": float(np.mean([x for b in c.blocks for x in b.layer_shown] or [0.0])),
            "composite_ms": summarize([x for b in c.blocks for x in b.composite_ms]),
            "quiesce_timeouts": c.quiesce_timeouts,
            "jobs": {"finished_beside_stream_ms": summarize(job_ms[name]), "counts": job_counts[name]},
        }
    base = out["conditions"]["no_jobs"]
    out["ratios_vs_no_jobs"] = {
        name: {f"{what}_{q}": c[f"{what}_ms"][q] / base[f"{what}_ms"][q] for what in ("interval", "process")
               for q in ("p50", "p95")} | {"dropped": c["dropped"] / max(base["dropped"], 1)}
        for name, c in out["conditions"].items() if name != "no_jobs"
    }  # fmt: skip
    out["job"] = job_info
    cfg = WorkerConfig()
    out["worker"] = {"workers": cfg.workers, "torch_threads": cfg.torch_threads, "nice_added": cfg.nice,
                     "isolations": list(args.isolation)}  # fmt: skip
    out["load_avg_before_after"] = [load_before, load_after]
    out["_plot"] = {name: {"intervals": [x for bl in c.blocks for x in bl.intervals_ms()],
                           "proc": [x for bl in c.blocks for x in bl.proc_ms],
                           "running": [x for bl in c.blocks for x in bl.job_running]}
                    for name, c in conds.items()}  # fmt: skip
    return out


def plot(data: dict[str, Any], fps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    colour = {name: f"C{i}" for i, name in enumerate(data)}  # one colour per condition in both panels
    for name, d in data.items():
        x = np.sort(np.asarray(d["intervals"]))
        if x.size:
            ax1.plot(x, np.arange(1, x.size + 1) / x.size, color=colour[name], label=name)
    ax1.axvline(1e3 / fps, color="grey", ls="--", lw=0.8, label=f"{fps:g} fps")
    ax1.set(xlabel="inter-output interval (ms)", ylabel="fraction of frames", title="Output interval CDF")
    ax1.legend()
    for name, d in data.items():
        ax2.plot(d["proc"], lw=0.7, color=colour[name], label=f"{name} process time")
    top = max((max(d["proc"]) for d in data.values() if d["proc"]), default=1.0)
    for k, (name, d) in enumerate((n, d) for n, d in data.items() if n != "no_jobs"):
        run_idx = np.flatnonzero(np.asarray(d["running"], bool))
        ax2.scatter(run_idx, np.full(run_idx.size, top * (1.04 + 0.04 * k)), s=2, color=colour[name],
                    label=f"job running ({name})")  # fmt: skip
    ax2.set(xlabel="frame (blocks concatenated)", ylabel="ms", title="Frame processing time")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="liveportrait_d12")
    ap.add_argument("--frames", type=int, default=180, help="clip frames decoded (looped)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--blocks", type=int, default=4, help="blocks per condition, alternating")
    ap.add_argument("--block-s", type=float, default=8.0)
    ap.add_argument("--job", choices=("auto", "real", "standin"), default="auto")
    ap.add_argument("--standin-steps", type=int, default=150)
    ap.add_argument("--isolation", nargs="+", choices=("thread", "process"), default=["thread", "process"],
                    help="keyframe worker isolation(s) to measure, each its own jobs condition")  # fmt: skip
    ap.add_argument("--alone-jobs", type=int, default=2, help="warm keyframe jobs timed alone after a cold one")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. which weights, machine load)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = run(args)
    plot_data = res.pop("_plot")
    res = {"benchmark": "keyframe_interval", "clip": args.clip, "size": args.size, "fps": args.fps,
           "blocks": args.blocks, "block_s": args.block_s, "filter_params": FILTER_PARAMS, "note": args.note,
           "machine": machine_info(), **res}  # fmt: skip
    write_json(args.out, res)
    plot(plot_data, args.fps, args.out.with_suffix(".png"))
    for name, r in res["conditions"].items():
        p, iv = r["process_ms"], r["interval_ms"]
        print(f"{name:8s} process p50 {p['p50']:6.1f} p95 {p['p95']:6.1f} | interval p50 {iv['p50']:6.1f} "
              f"p95 {iv['p95']:6.1f} | dropped {r['dropped']} of {r['delivered'] + r['dropped']} | "
              f"job running {r['frames_with_job_running']:.0%}")  # fmt: skip
    alone = res["job"]["per_keyframe_alone_ms"]
    print(f"job ({res['job']['kind']}): per keyframe p50 {alone['p50']:.0f} ms alone ({alone['count']} jobs)")
    for name, r in res["ratios_vs_no_jobs"].items():
        print(f"{name} vs no_jobs: " + ", ".join(f"{k} x{v:.2f}" for k, v in r.items()))
    print(f"load average before/after: {res['load_avg_before_after']}")


if __name__ == "__main__":
    main()
