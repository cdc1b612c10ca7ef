"""Latent try-on on keyframes, composited over the optics try-on on every frame.

The latent try-on (``models.latent.job.run_latent_tryon``) takes seconds per image, far beyond a frame's
budget, so it never runs on the frame path. Per frame and face:

1. the optics try-on (an internal ``tryon`` filter with this filter's optics parameters) draws the frame;
2. ``stream.keyframe_policy`` decides whether this frame becomes a keyframe (first sight of the face, new
   item, head turned past ``pose_deg``, or ``timer_s`` elapsed); if so the frame goes to the keyframe
   worker, keyed by (session, face, item, pose bin), superseding that face's older job;
3. the newest finished layer for the current item is warped onto this frame by the face's landmarks
   (``stream.layer_composite``) and blended in, its weight ramping over ``crossfade_frames``
   (``stream.crossfade``) so a new keyframe dissolves in rather than pops.

Until a face's first layer lands, its output is exactly the optics try-on. A layer of another item fades
out as soon as the item changes. File mode (``prepare``) waits for each keyframe instead. Job states per
face (pending/running/done, ms) appear in the stats message's ``models`` entry.

Worker lifetime: by default every session shares one process-wide worker (the CPU is the limit, not the
sessions) whose jobs run in a child process (``stream.keyframe_process``: the latent loop's Python would
otherwise hold the GIL against the frame path); closing the filter (the session ended or the chain
changed) cancels its jobs and drops its cached layers. A worker passed in by the caller (tests,
benchmarks) is left running.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.align import alignment_matrix
from stream.crossfade import fade_step
from stream.face import Face
from stream.filters.base import Filter, FilterError, FrameContext, param
from stream.filters.tryon import Tryon, TryonParams
from stream.keyframe_policy import KeyframeMark, PolicyConfig, keyframe_key, keyframe_reason
from stream.keyframe_worker import Job, KeyframeWorker, WorkerConfig
from stream.layer_composite import PreparedLayer, composite, prepare_layer

log = logging.getLogger(__name__)

MODEL = "latent_tryon"
LOST_FACE_GRACE_S = 1.0  # a face missing this long has left: its job is cancelled (tracking blips are shorter)


@dataclass
class TryonLatentParams(TryonParams):
    reference: str = param("", help="appearance reference image (path on the server) for the latent try-on; "
                           "empty: the catalogue frame alone")  # fmt: skip
    pose_deg: float = param(12.0, help="take a new keyframe when the head turns this far (yaw, pitch or roll) "
                            "from the last one; also the pose-bin width of the result cache",
                            min=2.0, max=90.0)  # fmt: skip
    timer_s: float = param(0.0, help="also refresh the keyframe every this many seconds (0 = only on pose or "
                           "item change)", min=0.0, max=600.0)  # fmt: skip
    crossfade_frames: int = param(8, help="frames over which a new keyframe layer dissolves in", min=1, max=120)


# -- the latent model behind the jobs -----------------------------------------------------------------
@dataclass(frozen=True)
class LatentBackend:
    """What the filter needs from the latent model: run one keyframe, name an item, recognise a cancel."""

    run: Callable[[np.ndarray, Face, Any, Callable[[], bool]], Any]  # -> KeyframeLayer (rgba, size, timings_ms)
    make_item: Callable[[str, str | None], Hashable]
    cancel_types: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class RunLatent:
    """``models.latent.job.run_latent_tryon`` as a picklable callable (a process worker sends it to its
    child), with a ``warm_up`` the child calls before its first keyframe."""

    def __call__(self, frame: np.ndarray, face: Face, item: Any, cancel: Callable[[], bool]) -> Any:
        from models.latent import job as latent_job

        return latent_job.run_latent_tryon(frame, face, item, cancel=cancel)

    def warm_up(self) -> None:
        """Import torch and the model code and load the weights (FileNotFoundError without them)."""
        from models.latent.model import get_autoencoder

        get_autoencoder()


def latent_item(frame: str, reference: str | None) -> Hashable:
    from models.latent import job as latent_job

    return latent_job.LatentItem(frame=frame, reference=reference)


def load_backend() -> LatentBackend:
    """``models.latent.job``; raises ImportError when that module (or torch) is missing."""
    from models.latent import job as latent_job

    return LatentBackend(RunLatent(), latent_item, (latent_job.Cancelled,))


@dataclass(frozen=True)
class LayerResult:
    """A finished keyframe: the model's layer and its premultiplied form (made where the job ran)."""

    layer: Any
    prepared: PreparedLayer


@dataclass(frozen=True)
class LayerJob:
    """The worker's job: the backend's layer, validated and premultiplied off the frame path. A dataclass,
    not a closure, so that a process worker can send it (and ``run``) to its child."""

    run: Callable[[np.ndarray, Face, Any, Callable[[], bool]], Any]

    def warm_up(self) -> None:
        warm = getattr(self.run, "warm_up", None)
        if callable(warm):
            warm()

    def __call__(self, frame: np.ndarray, face: Face, item: Hashable, cancel: Callable[[], bool]) -> LayerResult:
        layer = self.run(frame, face, item, cancel)
        prepared = prepare_layer(layer.rgba)
        if int(layer.size) != prepared.size:
            raise ValueError(f"layer says size {layer.size} but its rgba is {prepared.size} px")
        return LayerResult(layer, prepared)


def layer_worker(backend: LatentBackend, config: WorkerConfig | None = None) -> KeyframeWorker:
    """A keyframe worker running ``backend`` (its cancel exception counts as a cancel, not a failure)."""
    cfg = config or WorkerConfig()
    cfg = dataclasses.replace(cfg, cancel_types=(*cfg.cancel_types, *backend.cancel_types))
    return KeyframeWorker(LayerJob(backend.run), cfg)


_shared_lock = threading.Lock()
_shared: tuple[KeyframeWorker, LatentBackend] | None = None


def shared_worker() -> tuple[KeyframeWorker, LatentBackend]:
    """The process-wide keyframe worker over ``models.latent`` (created on first use; ImportError without)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0].closed:
            backend = load_backend()
            # A child process: the latent loop's Python glue holds the GIL (see stream.keyframe_process).
            _shared = (layer_worker(backend, WorkerConfig(isolation="process")), backend)
        return _shared


# -- per-face state -----------------------------------------------------------------------------------
@dataclass
class _FaceState:
    mark: KeyframeMark | None = None
    reason: str | None = None
    job: Job | None = None  # the newest request
    consumed: int = 0  # serial of the newest job whose result was taken
    layers: dict[int, tuple[PreparedLayer, Hashable]] = field(default_factory=dict)  # serial -> (layer, item)
    weights: dict[Hashable, float] = field(default_factory=dict)  # serial -> crossfade weight
    target: int | None = None
    last_seen_s: float = 0.0
    last_job: dict[str, Any] | None = None  # the newest finished job's description (ms, model timings)


class TryonLatent(Filter):
    name = "tryon_latent"
    description = ("Latent try-on on keyframes (pose change, timer or new frame), warped to every frame over the "
                   "optics try-on, which shows alone until the first keyframe lands.")  # fmt: skip
    Params = TryonLatentParams
    needs_faces = True

    def __init__(self, params: dict[str, Any] | None = None, *, worker: KeyframeWorker | None = None,
                 backend: LatentBackend | None = None) -> None:  # fmt: skip
        super().__init__(params)
        self._session = secrets.token_hex(6)  # one filter instance per session's pipeline
        self._optics = Tryon(self._optics_params(self.params))
        self._faces: dict[int, _FaceState] = {}
        self._owns_worker = False
        self._unavailable: str | None = None
        self._worker: KeyframeWorker | None = None
        self._backend: LatentBackend | None = None
        if worker is not None:  # made by ``layer_worker(backend)``
            if backend is None:
                raise ValueError("a worker passed in needs its backend (to name items)")
            self._worker, self._backend = worker, backend
        elif backend is not None:
            self._worker, self._backend, self._owns_worker = layer_worker(backend), backend, True
        else:
            try:
                self._worker, self._backend = shared_worker()
            except ImportError as e:  # optics-only, said once here and in every stats message
                self._unavailable = f"latent try-on unavailable ({e}); showing the optics try-on"
                log.warning(self._unavailable)
        self._wait, self._wait_s = False, None  # see prepare()
        self._derive(self.params)
        self._status: dict[str, Any] = self._describe([])

    # -- parameters --------------------------------------------------------------------------------
    @staticmethod
    def _optics_params(p: TryonLatentParams) -> dict[str, Any]:
        return {f.name: getattr(p, f.name) for f in dataclasses.fields(TryonParams)}

    def _derive(self, p: TryonLatentParams) -> None:
        if p.png.strip():
            raise FilterError("png: the latent try-on draws catalogue frames; use the tryon filter for your own PNG")
        ref = p.reference.strip() or None
        if ref is not None and not Path(ref).is_file():
            raise FilterError(f"reference: no image file at {ref!r}")
        try:
            policy = PolicyConfig(pose_threshold_deg=p.pose_deg, timer_s=p.timer_s)
        except ValueError as e:
            raise FilterError(str(e)) from None
        item = self._backend.make_item(p.frame, ref) if self._backend is not None else (p.frame, ref)
        self._policy, self._item = policy, item

    def configure(self, params: dict[str, Any]) -> None:
        old = self.params
        super().configure(params)  # new params and _derive, all-or-nothing
        try:
            optics_keys = {f.name for f in dataclasses.fields(TryonParams)}
            self._optics.configure({k: v for k, v in params.items() if k in optics_keys})
        except FilterError:
            self.params = old  # all-or-nothing
            self._derive(old)
            raise

    def prepare(self, timeout: float | None = None) -> None:
        """File mode: a file has no real-time budget, so from now on every keyframe is waited for (up to
        ``timeout`` each) and shows from the frame it was taken on, rather than seconds of video later."""
        self._optics.prepare(timeout)
        self._wait_s, self._wait = timeout, True

    def wait_for_keyframes(self, timeout: float | None = None) -> bool:
        """Block until every tracked face's newest keyframe job has finished (False on timeout); its layer
        then shows from the next frame. For benchmarks and tools, never the live frame path."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for st in list(self._faces.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if st.job is not None and not st.job.finished.wait(left):
                return False
        return True

    @property
    def showing_layer(self) -> bool:
        """Whether the last frame composited any keyframe layer."""
        return any(st.weights for st in self._faces.values())

    # -- frame path --------------------------------------------------------------------------------
    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        t0 = time.perf_counter()
        self._schedule(image, ctx)
        t1 = time.perf_counter()
        out = self._optics.apply(image, ctx)
        t2 = time.perf_counter()
        entries = []
        for face in ctx.faces:
            st = self._faces[face.face_id]
            self._advance(st)
            for serial, wt in st.weights.items():
                layer, _ = st.layers[serial]
                entries.append((layer, wt, alignment_matrix(face, layer.size)))
        if entries:
            out = composite(out, entries, inplace=out is not image)  # never write into the input frame
        t3 = time.perf_counter()
        ctx.timings_ms[f"{self.name}.schedule"] = (t1 - t0) * 1e3
        ctx.timings_ms[f"{self.name}.optics"] = (t2 - t1) * 1e3
        ctx.timings_ms[f"{self.name}.composite"] = (t3 - t2) * 1e3
        self._status = self._describe(ctx.faces)  # replaced whole: the stats thread reads it without a lock
        return out

    def _schedule(self, image: np.ndarray, ctx: FrameContext) -> None:
        """Per face: keyframe decision and submission; faces gone for a while are forgotten."""
        now = ctx.timestamp_s
        for face in ctx.faces:
            st = self._faces.setdefault(face.face_id, _FaceState())
            st.last_seen_s = now
            if self._worker is None:
                continue
            angles = (face.pose.yaw_deg, face.pose.pitch_deg, face.pose.roll_deg)
            reason = keyframe_reason(st.mark, angles, now, self._item, self._policy)
            if reason is None:
                continue
            key = keyframe_key(self._session, face.face_id, self._item, angles, self._policy)
            try:
                st.job = self._worker.submit(key, image, face, refresh=reason == "timer")
            except RuntimeError as e:  # the worker was closed under us (server shutting down)
                self._unavailable = f"keyframe worker unavailable: {e}"
                self._worker = None
                continue
            st.mark, st.reason = KeyframeMark(angles, now, self._item), reason
            if self._wait:
                st.job.finished.wait(self._wait_s)
        for fid in [f for f, st in self._faces.items() if now - st.last_seen_s > LOST_FACE_GRACE_S
                    or now < st.last_seen_s]:  # fmt: skip
            if self._worker is not None:
                self._worker.cancel_slot(self._session, fid)
            del self._faces[fid]

    def _advance(self, st: _FaceState) -> None:
        """Take a newly finished layer, pick what should show, take one crossfade step."""
        job = st.job
        if job is not None and job.serial > st.consumed and job.finished.is_set():
            st.consumed = job.serial
            st.last_job = job.describe()
            if job.state == "done" and isinstance(job.result, LayerResult):
                st.layers[job.serial] = (job.result.prepared, job.key.item)
                st.target = job.serial
                st.last_job["model_ms"] = {k: round(float(v), 1) for k, v in job.result.layer.timings_ms.items()}
            elif job.state == "done":  # a worker not made by layer_worker: a programming error, shown not raised
                st.last_job["error"] = f"worker returned {type(job.result).__name__}, not a LayerResult"
        if st.target is not None and st.layers[st.target][1] != self._item:
            st.target = None  # another item is on: its layer must not linger over the new frame
        st.weights = fade_step(st.weights, st.target, self.params.crossfade_frames)
        for serial in [s for s in st.layers if s not in st.weights and s != st.target]:
            del st.layers[serial]  # faded out: free it

    # -- stats and lifetime ------------------------------------------------------------------------
    def _describe(self, faces: list[Face]) -> dict[str, Any]:
        d: dict[str, Any] = {"state": "unavailable" if self._unavailable else "ready"}
        if self._unavailable:
            d["error"] = self._unavailable
        if self._worker is not None:
            d["worker"] = self._worker.stats()
        per_face = {}
        for face in faces:
            st = self._faces.get(face.face_id)
            if st is None:
                continue
            job = st.job.describe() if st.job is not None else {"state": "none"}
            per_face[str(face.face_id)] = {"job": job, "reason": st.reason, "last": st.last_job,
                                           "weights": [round(w, 3) for w in st.weights.values()]}  # fmt: skip
        d["faces"] = per_face
        return d

    def models(self) -> dict[str, dict[str, Any]]:
        return {**self._optics.models(), MODEL: self._status}

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            if self._owns_worker:
                worker.close()
            else:
                worker.end_session(self._session)
        self._faces.clear()
        self._optics.close()
