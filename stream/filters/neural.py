"""What the neural filters share: crop masks, prescription conditioning, and ``FaceModel``, which runs one
network over a frame's aligned face crops (align -> batch -> infer -> feathered paste-back).

Batching: graphs have static shapes, so a batch-B graph costs about B/2..B times a batch-1 graph on CPU
(measured at 128 px on ONNX Runtime, 2 threads: 1.7x for two faces). Padding one face into a batch-2 graph
would nearly double the common one-face frame, so ``FaceModel`` loads batch 1 first and, once a frame has
more faces, a batch-2 graph in the background; each frame is split greedily into the largest loaded batches
(``plan_batches``): never padding, never waiting for a load.

Pre/post-processing runs where the network runs: cv2 on the host for host backends; torch on the GPU when
the backend takes device tensors (``neural_gpu``), with one upload and one download per frame.

Networks may start before the frame is tracked, on the previous frame's crops (``FaceModel.begin``,
``stream.overlap``); a result is used only if the tracked faces' crops moved by at most ``MAX_DRIFT``.

A model that is loading, has no weights or failed to load leaves frames as they are; ``status`` says why
(the stats overlay's ``models`` entry) and the store logs it once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from accel.model_store import BACKEND_CHOICES, READY, ModelHandle, ModelRequest, ModelStore, shared_store
from models.align import CROP_SIZES, alignment_matrix, crop_drift, paste_back, transform_scale, warp_crop
from models.heads_compose import compose_heads
from stream.filters.base import FilterError, param

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2)  # graphs loaded per model: 1 always, 2 once a frame has two faces
SIDES = {"both": ("right", "left"), "right": ("right",), "left": ("left",)}


# -- parameters shared by the neural filters ---------------------------------------------------------
def size_param(help: str = "crop side in pixels (only sizes with weights are accepted)") -> Any:
    return param(128, help=help, choices=CROP_SIZES)


def backend_param() -> Any:
    return param("auto", help="inference backend tried first (auto: TensorRT > torch CUDA > ONNX Runtime)",
                 choices=BACKEND_CHOICES)  # fmt: skip


def check_size(store: ModelStore, model: str, size: int) -> None:
    """FilterError when weights exist for ``model`` but not at ``size``; none at all is not an error (the
    filter then passes frames through and says so in the stats)."""
    sizes = store.sizes(model)
    if sizes and size not in sizes:
        raise FilterError(f"no {model} weights for {size}px crops; available: {', '.join(map(str, sizes))}")


# -- batching and tensors ----------------------------------------------------------------------------
def plan_batches(n: int, available: Iterable[int]) -> list[int]:
    """Split ``n`` crops into runs of the loaded batch sizes, largest first; ``available`` must contain 1."""
    sizes = sorted(set(available), reverse=True)
    if 1 not in sizes:
        raise ValueError(f"batch size 1 must be available, got {sizes}")
    out = []
    while n > 0:
        b = next(s for s in sizes if s <= n)
        out.append(b)
        n -= b
    return out


def to_nchw(crops: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (S, S, 3) crops -> float32 (n, 3, S, S) in [-1, 1] (``export.models.IMAGE_NORM``)."""
    x = np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / np.float32(127.5) - np.float32(1.0))


def from_nchw(x: np.ndarray) -> np.ndarray:
    """float (n, 3, S, S) in [-1, 1] -> uint8 (n, S, S, 3), rounded and clipped."""
    return np.clip(np.rint((x.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# -- crop-space masks --------------------------------------------------------------------------------
def to_crop(points_px: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Frame pixel points (N, 2) -> crop pixels under the 2x3 frame -> crop matrix ``m``."""
    p = np.asarray(points_px, np.float64)[:, :2]
    return p @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def signed_distance(inside: np.ndarray, outside_too: bool = True) -> np.ndarray:
    """Per-pixel distance to a binary region's boundary, > 0 inside, < 0 outside (pixel units); with
    ``outside_too`` false, outside pixels are just -0.5 (callers that only ramp inside skip half the work).

    ``distanceTransform`` gives a pixel's distance to the nearest pixel of the other class; the boundary lies
    half-way between the two pixel centres, hence the 0.5. The 5x5 chamfer metric is within 2 % of the
    Euclidean distance (exact along the axes) at a quarter of the exact transform's cost.
    """
    inside = (inside > 0).astype(np.uint8)
    sd = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_5)  # 0 outside
    if not outside_too:
        sd -= 0.5  # inside d_in - 0.5, outside -0.5
        return sd
    sd -= cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_5)  # d_out is 0 inside
    sd += 0.5
    sd -= inside  # inside: d_in - 0.5; outside: 0.5 - d_out
    return sd


def polygon_alpha(poly_crop_px: np.ndarray, size: int, feather_px: float, offset_px: float = 0.0,
                  supersample: int = 4) -> np.ndarray:  # fmt: skip
    """(size, size) float32 weights: 1 deeper than ``offset_px + feather_px`` inside the polygon, 0 outside
    ``offset_px`` from its edge, linear between (offset 0: the ramp lies inside; -feather/2: centred on it).

    A binary raster puts the edge only to the nearest half pixel, which a narrow ramp shows as stair steps
    (crop pixels are several frame pixels wide once pasted back): the distance is computed on a
    ``supersample``-times finer raster of the polygon's neighbourhood and box-filtered back, which keeps a
    linear ramp linear and leaves an edge error of 1/(2 supersample) pixel.
    """
    poly = np.asarray(poly_crop_px, np.float64).reshape(-1, 2)
    out = np.zeros((size, size), np.float32)
    pad = feather_px + abs(offset_px) + 2.0  # where the weights can be nonzero, with a pixel to spare
    x0, y0 = np.maximum(np.floor(poly.min(axis=0) - pad).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(poly.max(axis=0) + pad).astype(int) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return out
    k, shift = supersample, 4
    # fine pixel j's centre is at crop coordinate x0 + (j + 0.5) / k - 0.5 (crop pixel centres are integers)
    fine = (poly - [x0, y0] + 0.5) * k - 0.5
    inside = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
    cv2.fillPoly(inside, [np.rint(fine * (1 << shift)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=shift)
    if not inside.any():
        return out
    sd = signed_distance(inside, outside_too=offset_px < 0)
    if feather_px <= 0:
        a = (sd > offset_px * k).astype(np.float32)
    else:  # in place: these fine rasters are the largest arrays of the neural filters' CPU work
        sd -= np.float32(offset_px * k)
        sd *= np.float32(1.0 / (feather_px * k))
        a = np.clip(sd, 0.0, 1.0, out=sd)
    out[y0:y1, x0:x1] = cv2.resize(a, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return out


def face_alpha(landmarks_px: np.ndarray, m: np.ndarray, size: int, feather_px: float) -> np.ndarray:
    """Convex hull of the face mesh in crop space, feathered inwards: only the face is replaced, not hair or
    background (which the crop also holds and a restorer would redraw)."""
    hull = cv2.convexHull(to_crop(landmarks_px, m).astype(np.float32))[:, 0, :]
    return polygon_alpha(hull, size, feather_px, supersample=2)  # a wide ramp: 1/4 px edge error is plenty


def lens_alpha(outlines_px: Sequence[np.ndarray], m: np.ndarray, size: int, feather_px: float) -> np.ndarray:
    """Union of lens openings in crop space with the ramp centred on the outline (the rim covers the seam)."""
    alpha = np.zeros((size, size), np.float32)
    for outline in outlines_px:
        np.maximum(alpha, polygon_alpha(to_crop(outline, m), size, feather_px, -feather_px / 2.0), out=alpha)
    return alpha


# -- prescription conditioning -----------------------------------------------------------------------
def _eye_condition(eye: Any, side: str, mode: str, strength: float, lens: str) -> np.ndarray:
    """``PrescriptionCondition`` vector for one eye's lens (``models.optics.prescription.EyeRx``).

    Prism: the EyeRx base angle is polar in the lens (u, v) frame (u towards image right, v up); the
    conditioning wants x positive for base OUT, which is -u for the right eye and +u for the left.
    """
    from models.nets.conditioning import PRISM_MAX_PD, PrescriptionCondition

    a = np.radians(eye.prism_base_deg)
    # rounded to 1e-6 Δ: cos/sin of 90 and 180 degrees are not exact zeros, and equal eyes must compare equal
    px = round(float(eye.prism * np.cos(a)) * (-1.0 if side == "right" else 1.0), 6) + 0.0
    py = round(float(eye.prism * np.sin(a)), 6) + 0.0
    if max(abs(px), abs(py)) > PRISM_MAX_PD:
        raise ValueError(f"prism {eye.prism:g}Δ is beyond what the generator was built for ({PRISM_MAX_PD:g}Δ)")
    cond = PrescriptionCondition(
        mode=mode, sphere_d=eye.sphere, cylinder_d=eye.cyl, axis_deg=eye.axis or 0.0, prism_x_pd=float(px),
        prism_y_pd=float(py), strength=strength, lens=lens,  # type: ignore[arg-type]
    )  # fmt: skip
    return cond.to_tensor().numpy()


Conditions = tuple[tuple[tuple[str, ...], np.ndarray], ...]


@functools.lru_cache(maxsize=64)
def generator_conditions(rx: Any, mode: str, strength: float, lens: str) -> Conditions:
    """((sides, cond vector), ...) for a ``Prescription``: one run for both lenses when both eyes give the
    same conditioning, else one run per eye with that eye's lens only (one prescription per image).

    Tint is left at zero on purpose: the tryon filter's renderer draws the tint over the refracted lens.
    Raises ValueError for prescriptions outside the generator's conditioning range.
    """
    sides = SIDES[lens]
    if len(sides) == 2:
        both = [_eye_condition(rx.eye(s), s, mode, strength, "both") for s in sides]
        if np.array_equal(both[0], both[1]):  # e.g. "2Δ BO" on both eyes: mirrored bases, same conditioning
            return ((sides, both[0]),)
    return tuple(((s,), _eye_condition(rx.eye(s), s, mode, strength, s)) for s in sides)


# -- running a network over face crops ---------------------------------------------------------------
@dataclass(frozen=True)
class CropJob:
    """One network input: which face's crop, where its output may go (crop-space weights), other inputs."""

    face: int  # index into the frame's matrices
    alpha: np.ndarray | None  # (S, S) float32 in [0, 1]; None: the whole (feathered) crop
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # per image, no batch axis (e.g. "cond": (16,))


def lens_jobs(conds: Conditions, n_faces: int) -> list[CropJob]:
    """One generator job per face and distinct lens conditioning (``generator_conditions``), weights not yet set."""
    return [CropJob(i, None, {"cond": cond}) for i in range(n_faces) for _, cond in conds]


def lens_alphas(conds: Conditions, outlines: Sequence[Mapping[str, np.ndarray]], mats: Sequence[np.ndarray],
                size: int, feather_px: float) -> list[np.ndarray]:  # fmt: skip
    """Each ``lens_jobs`` job's crop-space weights: the union of its sides' lens openings (``outlines``: side ->
    frame-pixel outline, per face) under that face's crop matrix; all zero where no such lens is placed."""
    return [lens_alpha([o[s] for s in sides if s in o], m, size, feather_px)
            for o, m in zip(outlines, mats, strict=True) for sides, _ in conds]  # fmt: skip


def weighted_lens_jobs(conds: Conditions, outlines: Sequence[Mapping[str, np.ndarray]], mats: Sequence[np.ndarray],
                       size: int, feather_px: float) -> list[CropJob]:  # fmt: skip
    """``lens_jobs`` with their ``lens_alphas``, less those with no lens in the crop (a frame run in turn)."""
    alphas = lens_alphas(conds, outlines, mats, size, feather_px)
    return [replace(j, alpha=a) for j, a in zip(lens_jobs(conds, len(mats)), alphas, strict=True) if a.any()]


HEADS_OUTPUTS = ("field", "residual", "mask")  # a graph with these outputs is composed here (generator_heads)


def alpha_box(alpha: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) bounding the nonzero weights (None: the whole crop); the only pixels a paste uses."""
    if alpha is None:
        return None
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# How far the crop of the faces a run began from may be from the tracked faces' crop, as a fraction of the
# crop side, for its result to be used (models.align.crop_drift). Measured with the shipped restorer on
# liveportrait_d12 (a moving head: 4 crop px per frame at p50, 11 at p95, 16 at most at 128 px): restoring
# the previous frame's crop differs from restoring the current one by 42-50 dB PSNR inside the face (42 dB
# beyond 10 px), against 37 dB for what restoring changes. At 1/8 of the side every d12 frame is served.
MAX_DRIFT = 0.125


@dataclass
class PendingRun:
    """A network run started before the frame was tracked, from the previous frame's faces, on the frame as it
    entered the chain (``FaceModel.begin``); finished on the frame the filters before it made of it, with
    weights from the tracked faces (``FaceModel.finish``), if those faces are close enough (``accepts``)."""

    frame: int  # FrameContext.index it was started for
    face_ids: tuple[int, ...]
    mats: list[np.ndarray]
    jobs: list[CropJob]
    future: Future[list[dict[str, np.ndarray]]]
    started_s: float


class FaceModel:
    """One network over aligned face crops, served by the shared ``ModelStore``.

    ``begin`` starts it on a worker thread before the frame is tracked, on the previous frame's face crops, and
    ``finish`` pastes the result once the tracked faces confirm the crops (stream.overlap). A graph whose
    outputs are the generator's heads (``HEADS_OUTPUTS``) is composed here on the crop as it is at paste time
    (``models.heads_compose``), so it may start from the frame before an earlier filter restored it.
    """

    def __init__(self, model: str, size: int, prefer: str = "auto", store: ModelStore | None = None,
                 batch_sizes: Sequence[int] = BATCH_SIZES, threads: int | None = None) -> None:  # fmt: skip
        if size not in CROP_SIZES:
            raise FilterError(f"crop size must be one of {CROP_SIZES}, got {size}")
        if 1 not in batch_sizes:
            raise ValueError("batch size 1 is required")
        self.model, self.size, self.threads = model, size, threads
        self.prefer = None if prefer == "auto" else prefer
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self._store = store
        self._pool: ThreadPoolExecutor | None = None

    @property
    def store(self) -> ModelStore:
        return self._store if self._store is not None else shared_store()

    def _req(self, batch: int) -> ModelRequest:
        return ModelRequest(self.model, self.size, batch, self.prefer, self.threads)

    def _request(self, batch: int) -> ModelHandle:
        return self.store.request(self._req(batch))

    def start(self) -> ModelHandle:
        """Start loading the batch-1 graph in the background (returns at once)."""
        return self._request(1)

    def prepare(self, timeout: float | None = None) -> bool:
        """Wait for the batch-1 graph (file mode, benchmarks); True when it is ready."""
        return self._request(1).wait(timeout)

    def status(self) -> dict[str, Any]:
        h = self._request(1)
        d = h.describe()
        d["size"] = self.size
        d["batches"] = [b for b in self.batch_sizes if self._is_ready(b)] if h.ready else []
        return d

    def _is_ready(self, batch: int) -> bool:
        h = self.store.peek(self._req(batch))
        return h is not None and h.ready

    def _handles(self, n: int) -> dict[int, ModelHandle]:
        """Ready graphs usable for ``n`` crops; starts loading larger batches the first time they would help."""
        h1 = self._request(1)
        if not h1.ready:
            return {}
        out = {1: h1}
        for b in self.batch_sizes:
            if 1 < b <= n:
                h = self._request(b)
                # a batch served elsewhere (e.g. fell back to the host) would break the one-device frame path
                if h.state == READY and h.device_io == h1.device_io:
                    out[b] = h
        return out

    def run(self, image: np.ndarray, mats: Sequence[np.ndarray], jobs: Sequence[CropJob], feather_px: float,
            timings: dict[str, float] | None = None, prefix: str = "") -> np.ndarray:  # fmt: skip
        """``image`` with every job's network output pasted back (a new array), or ``image`` itself when there
        is nothing to do or the model is not ready. ``feather_px``: edge ramp in crop pixels."""
        if not jobs:
            return image
        handles = self._handles(len(jobs))
        if not handles:
            return image
        plan = plan_batches(len(jobs), handles)
        t = timings if timings is not None else {}
        if handles[1].device_io:
            return self._run_device(image, mats, jobs, plan, handles, feather_px, t, prefix)
        t0 = time.perf_counter()
        crops = to_nchw([warp_crop(image, m, self.size) for m in mats])
        t1 = time.perf_counter()
        outs = self._infer(crops, jobs, plan, handles)
        t2 = time.perf_counter()
        out = self._paste(image, mats, jobs, outs, crops, feather_px)
        self._time(t, prefix, t0, t1, t2, time.perf_counter())
        return out

    # -- overlap: start before tracking, finish on a later frame (host backends) ---------------------------
    def begin(self, image: np.ndarray, ctx: Any, jobs: Sequence[CropJob]) -> PendingRun | None:
        """Start the network on worker thread from ``image`` cropped for ``ctx.faces`` (the faces predicted for
        this frame: the previous frame's); ``jobs`` carry no weights yet (``finish`` takes them). None, and
        nothing started, unless the model is ready on a host backend (a GPU runs the frame in turn)."""
        if not jobs or not ctx.faces:
            return None
        handles = self._handles(len(jobs))
        if not handles or handles[1].device_io:
            return None
        key = ("crops", self.size, id(image))  # the restorer and the heads crop the same faces alike
        if key not in ctx.memo:
            try:
                mats = [alignment_matrix(f, self.size) for f in ctx.faces]
            except ValueError:
                return None
            ctx.memo[key] = (mats, to_nchw([warp_crop(image, m, self.size) for m in mats]))
        mats, crops = ctx.memo[key]  # read only from here on (the worker copies what it feeds)
        plan = plan_batches(len(jobs), handles)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.model}-overlap")
        jobs = list(jobs)
        future = self._pool.submit(self._infer, crops, jobs, plan, handles)
        return PendingRun(ctx.index, tuple(f.face_id for f in ctx.faces), mats, jobs, future, time.perf_counter())

    def accepts(self, pending: PendingRun | None, ctx: Any) -> bool:
        """Whether ``pending`` serves this frame: started for it, for the same faces, whose crops moved by at
        most ``MAX_DRIFT`` of the crop side since (otherwise the caller runs the frame as usual)."""
        if pending is None or pending.frame != ctx.index:
            return False
        if tuple(f.face_id for f in ctx.faces) != pending.face_ids:
            return False
        try:
            cur = [alignment_matrix(f, self.size) for f in ctx.faces]
        except ValueError:
            return False
        limit = MAX_DRIFT * self.size
        return all(crop_drift(a, b, self.size) <= limit for a, b in zip(pending.mats, cur, strict=True))

    def finish(self, pending: PendingRun, image: np.ndarray, alphas: Sequence[np.ndarray | None], feather_px: float,
               timings: dict[str, float] | None = None, prefix: str = "") -> np.ndarray:  # fmt: skip
        """Wait for ``pending`` and paste its outputs into ``image`` (the frame as it is now) with the jobs'
        ``alphas`` (crop-space weights for ``pending.mats``; all-zero ones are skipped); heads are composed on
        crops of ``image``. Records the wait (what was left on the frame's critical path) as the model's time,
        and the run's span from ``begin`` as ``<model>.overlapped``."""
        t = timings if timings is not None else {}
        t0 = time.perf_counter()
        outs = pending.future.result()
        t1 = time.perf_counter()
        keep = [k for k, a in enumerate(alphas) if a is None or a.any()]
        jobs = [replace(pending.jobs[k], alpha=alphas[k]) for k in keep]
        outs = [outs[k] for k in keep]
        heads = any(tuple(o) == HEADS_OUTPUTS for o in outs)
        crops = to_nchw([warp_crop(image, m, self.size) for m in pending.mats]) if heads else None
        t2 = time.perf_counter()
        out = self._paste(image, pending.mats, jobs, outs, crops, feather_px) if jobs else image
        t3 = time.perf_counter()
        p = f"{prefix}." if prefix else ""
        t[f"{p}align"] = t.get(f"{p}align", 0.0) + (t2 - t1) * 1e3
        t[f"{p}{self.model}"] = (t1 - t0) * 1e3
        t[f"{p}{self.model}.overlapped"] = (t1 - pending.started_s) * 1e3
        t[f"{p}paste"] = t.get(f"{p}paste", 0.0) + (t3 - t2) * 1e3
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- host path ---------------------------------------------------------------------------------------
    def _feeds(self, jobs: Sequence[CropJob], plan: list[int]) -> Iterable[tuple[int, int, dict[str, np.ndarray]]]:
        """(start, batch, extra inputs stacked) per run of the plan."""
        i = 0
        for b in plan:
            chunk = jobs[i : i + b]
            names = chunk[0].inputs.keys()
            yield i, b, {k: np.stack([np.asarray(j.inputs[k], np.float32) for j in chunk]) for k in names}
            i += b

    def _infer(self, crops: np.ndarray, jobs: Sequence[CropJob], plan: list[int],
               handles: dict[int, ModelHandle]) -> list[dict[str, np.ndarray]]:  # fmt: skip
        """Every job's outputs (name -> array without the batch axis)."""
        outs: list[dict[str, np.ndarray]] = []
        for i, b, extra in self._feeds(jobs, plan):
            idx = [j.face for j in jobs[i : i + b]]
            res = handles[b].run({"image": crops[idx], **extra})
            outs.extend({k: v[r] for k, v in res.items()} for r in range(b))
        return outs

    def _paste(self, image: np.ndarray, mats: Sequence[np.ndarray], jobs: Sequence[CropJob],
               outs: list[dict[str, np.ndarray]], crops: np.ndarray | None,
               feather_px: float) -> np.ndarray:  # fmt: skip
        images = np.empty((len(jobs), 3, self.size, self.size), np.float32)
        for k, (job, o) in enumerate(zip(jobs, outs, strict=True)):
            if tuple(o) == HEADS_OUTPUTS:  # composed on the crop as it is now, only where the paste looks
                assert crops is not None
                images[k] = compose_heads(crops[job.face][None], *(o[n][None] for n in HEADS_OUTPUTS),
                                          box=alpha_box(job.alpha))[0]  # fmt: skip
            else:
                images[k] = next(iter(o.values()))
        out = image
        for job, crop in zip(jobs, from_nchw(images), strict=True):
            m = mats[job.face]
            out = paste_back(out, crop, m, feather_px / transform_scale(m), crop_alpha=job.alpha)
        return out

    # -- device path -------------------------------------------------------------------------------------
    def _run_device(self, image: np.ndarray, mats: Sequence[np.ndarray], jobs: Sequence[CropJob], plan: list[int],
                    handles: dict[int, ModelHandle], feather_px: float, timings: dict[str, float],
                    prefix: str) -> np.ndarray:  # fmt: skip
        import torch

        from stream.filters import neural_gpu

        dev = torch.device(handles[1].device)

        def sync() -> None:  # honest stage times (the GPU work per stage is small)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        t0 = time.perf_counter()
        frame = torch.from_numpy(np.ascontiguousarray(image)).to(dev)  # the one upload
        if frame.device.type == "cpu":
            frame = frame.clone()  # on the host .to() aliases the input, and paste_ writes in place
        crops = neural_gpu.warp_crops(frame, mats, self.size)
        sync()
        t1 = time.perf_counter()
        outs = []
        for i, b, extra in self._feeds(jobs, plan):
            idx = torch.as_tensor([j.face for j in jobs[i : i + b]], device=dev)
            x = crops.index_select(0, idx)
            res = handles[b].run_device({"image": x, **{k: torch.from_numpy(v).to(dev) for k, v in extra.items()}})
            outs.append(neural_gpu.compose(x, res) if tuple(res) == HEADS_OUTPUTS else next(iter(res.values())))
        sync()
        t2 = time.perf_counter()
        for job, crop in zip(jobs, torch.cat(outs), strict=True):
            m = mats[job.face]
            neural_gpu.paste_(frame, crop, m, feather_px / transform_scale(m), job.alpha)
        out = frame.cpu().numpy()  # the one download
        t3 = time.perf_counter()
        self._time(timings, prefix, t0, t1, t2, t3)
        return out

    def _time(self, timings: dict[str, float], prefix: str, *t: float) -> None:
        p = f"{prefix}." if prefix else ""
        timings[f"{p}align"] = timings.get(f"{p}align", 0.0) + (t[1] - t[0]) * 1e3
        timings[f"{p}{self.model}"] = (t[2] - t[1]) * 1e3
        timings[f"{p}paste"] = timings.get(f"{p}paste", 0.0) + (t[3] - t[2]) * 1e3


def generate_in_lenses(gen: FaceModel, begun: PendingRun | None, image: np.ndarray, ctx: Any, conds: Conditions,
                       outlines: Sequence[Mapping[str, np.ndarray]], feather_px: float, started_s: float,
                       prefix: str) -> np.ndarray:  # fmt: skip
    """The generator's output pasted inside the tracked faces' lens openings (``outlines``, per face): the run
    ``begun`` beside the tracker if ``gen.accepts`` it, else a run in turn. ``<prefix>.lenses`` records the
    time since ``started_s`` (the caller's placement) plus the lens weights."""
    size = gen.size
    if gen.accepts(begun, ctx):
        assert begun is not None
        alphas = lens_alphas(conds, outlines, begun.mats, size, feather_px)
        ctx.timings_ms[f"{prefix}.lenses"] = (time.perf_counter() - started_s) * 1e3
        return gen.finish(begun, image, alphas, feather_px, ctx.timings_ms, prefix)
    try:
        mats = [alignment_matrix(face, size) for face in ctx.faces]
    except ValueError as e:
        raise FilterError(f"engine=neural: {e}") from None
    jobs = weighted_lens_jobs(conds, outlines, mats, size, feather_px)
    ctx.timings_ms[f"{prefix}.lenses"] = (time.perf_counter() - started_s) * 1e3
    return gen.run(image, mats, jobs, feather_px, ctx.timings_ms, prefix)


GENERATOR = "generator"
GENERATOR_HEADS = "generator_heads"  # the same network without its last step, composed by FaceModel


def start_generator(rx: Any, mode: str, strength: float, lens: str, size: int, backend: str,
                    concurrent: bool = False) -> FaceModel:  # fmt: skip
    """The generator behind a filter's ``engine=neural``, conditioning and crop size checked (FilterError); its
    loading starts with ``Filter.start`` or its first use. ``concurrent``: the heads graph on one thread, to
    start beside the tracker (``FaceModel.begin``; stream.overlap)."""
    try:
        generator_conditions(rx, mode, strength, lens)
    except ValueError as e:
        raise FilterError(f"engine=neural: {e}") from None
    gen = FaceModel(GENERATOR_HEADS if concurrent else GENERATOR, size, backend, threads=1 if concurrent else None)
    check_size(gen.store, GENERATOR, size)
    return gen


class LensGenerator:
    """What ``tryon`` and ``remove`` share for ``engine=neural`` (mixed in before ``Filter``): the generator,
    its early start beside the tracker, its status and its release."""

    _gen: FaceModel | None = None
    _begun: PendingRun | None = None

    def _use_generator(self, gen: FaceModel | None) -> None:
        """Swap in ``gen`` (None: the optics engine); the previous generator's worker stops."""
        old, self._gen, self._begun = self._gen, gen, None
        if old is not None:
            old.close()

    @property
    def uses_network(self) -> bool:
        return self._gen is not None

    @property
    def can_begin(self) -> bool:
        return self._gen is not None

    @property
    def begin_composes(self) -> bool:
        return True  # heads: composed on whatever geometry-keeping filters made of the frame

    def _begin_lenses(self, image: np.ndarray, ctx: Any, conds: Conditions) -> None:
        """Start the heads on the crops of the faces predicted for this frame, one job per lens conditioning."""
        gen = self._gen
        self._begun = gen.begin(image, ctx, lens_jobs(conds, len(ctx.faces))) if gen is not None else None

    def start(self) -> None:
        if self._gen is not None:
            self._gen.start()

    def prepare(self, timeout: float | None = None) -> None:
        if self._gen is not None:
            self._gen.prepare(timeout)

    def models(self) -> dict[str, dict[str, Any]]:
        return {GENERATOR: self._gen.status()} if self._gen is not None else {}

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
