"""Per-frame pipeline: track faces once, then run the filter chain, timing every stage.

One pipeline per stream. ``process`` runs on a worker thread (never the event loop); the chain
can be swapped from any thread and takes effect at the next frame. A filter that raises is
reported and skipped for that frame: the stream keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream import filters as registry
from stream.config import TrackerConfig
from stream.face import Face
from stream.filters.base import Filter, FilterError, FrameContext
from stream.overlap import OverlapPlan, plan_overlap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def parse_chain(value: Any) -> list[FilterSpec]:
        """Accept "a+b", ["a", "b"], or [{"name": "a", "params": {...}}, ...]."""
        if isinstance(value, str):
            items: Sequence[Any] = [v for v in value.replace(",", "+").split("+") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise FilterError(f"filters must be a name, a list of names or of objects, not {type(value).__name__}")
        out = []
        for it in items:
            if isinstance(it, str):
                out.append(FilterSpec(it.strip()))
            elif isinstance(it, dict) and isinstance(it.get("name"), str):
                params = it.get("params") or {}
                if not isinstance(params, dict):
                    raise FilterError(f"params of {it['name']!r} must be an object")
                out.append(FilterSpec(it["name"], dict(params)))
            else:
                raise FilterError(f"bad filter entry {it!r}")
        if not out:
            raise FilterError("empty filter chain (use 'passthrough')")
        return out


@dataclass
class FrameResult:
    index: int
    timestamp_s: float
    faces: list[Face]
    timings_ms: dict[str, float]
    errors: list[str]


TrackerFactory = Callable[[TrackerConfig], Any]


class _Processing:
    """How many pipelines are inside ``process`` right now, process-wide: each stream has its own
    worker thread, and two streams' trackers on two threads each oversubscribe this 2-core machine
    (measured, tryon_full, two concurrent streams, 4 alternating trials: 30.4 / 40.4 ms per frame at
    p50 / p95 with two threads each, 27.8 / 35.1 when a tracker takes one while the other stream is
    being processed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> _Processing:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


_PROCESSING = _Processing()


def _default_tracker_factory(cfg: TrackerConfig) -> Any:
    from stream.tracking import FaceTracker

    return FaceTracker(cfg)


class FramePipeline:
    def __init__(
        self,
        chain: Sequence[FilterSpec] | str = "passthrough",
        tracker_config: TrackerConfig | None = None,
        tracker_factory: TrackerFactory | None = None,
        overlap: bool = True,
    ) -> None:
        self.tracker_config = tracker_config or TrackerConfig()
        self.overlap = overlap  # run a later filter's network beside an earlier one's (stream.overlap)
        self._plan = OverlapPlan()
        self._last_faces: list[Face] = []
        self._tracker_factory = tracker_factory or _default_tracker_factory
        self._tracker: Any = None
        self._tracker_error: str | None = None
        self._lock = threading.Lock()
        self._filters: list[Filter] = []
        self._retired: list[Filter] = []
        self._index = 0
        self.set_chain(chain)

    # -- control (any thread) -------------------------------------------------
    def set_chain(self, chain: Sequence[FilterSpec] | str | list[Any]) -> list[str]:
        """Replace the chain; raises FilterError and keeps the old chain if anything is wrong."""
        specs = FilterSpec.parse_chain(chain) if not (
            isinstance(chain, (list, tuple)) and chain and all(isinstance(c, FilterSpec) for c in chain)
        ) else list(chain)
        new = [registry.create(s.name, s.params) for s in specs]
        plan = self._replan(new)
        with self._lock:
            self._retired.extend(self._filters)
            self._filters, self._plan = new, plan
        return [f.name for f in new]

    def _replan(self, chain: Sequence[Filter]) -> OverlapPlan:
        """The chain's overlap plan, with each filter told whether its network shares the cores, then started."""
        plan = plan_overlap(chain, self.overlap)
        for k, f in enumerate(chain):
            f.set_concurrent(k in plan.early)
            f.start()  # load in the background with the planned threads: the stream is not held up
        return plan

    def configure(self, name: str, params: dict[str, Any]) -> None:
        """Change parameters of the filter ``name`` in the running chain."""
        with self._lock:
            matches = [f for f in self._filters if f.name == name]
        if not matches:
            raise FilterError(f"filter {name!r} is not in the chain")
        for f in matches:
            f.configure(params)
        with self._lock:
            chain = list(self._filters)
        plan = self._replan(chain)  # e.g. engine=neural makes a filter able to begin early
        with self._lock:
            if self._filters == chain:
                self._plan = plan

    @property
    def chain(self) -> list[str]:
        with self._lock:
            return [f.name for f in self._filters]

    def prepare(self, timeout: float | None = None) -> None:
        """Load every filter's models now (file mode); a live stream skips this and never waits for them."""
        with self._lock:
            chain = list(self._filters)
        for f in chain:
            f.prepare(timeout)

    def models(self) -> dict[str, dict[str, Any]]:
        """Model -> state and backend for every network the chain runs (for the stats message)."""
        with self._lock:
            chain = list(self._filters)
        out: dict[str, dict[str, Any]] = {}
        for f in chain:
            try:
                for name, info in f.models().items():
                    out[name if name not in out else f"{name}#{len(out)}"] = {"filter": f.name, **info}
            except Exception as e:  # stats must never break the stream
                log.warning("filter %s: model status unavailable: %s", f.name, e)
        tracker = self._tracker
        describe = getattr(tracker, "describe", None)
        if describe is not None:
            try:
                out["face_landmarks"] = {"filter": "track", **describe()}
            except Exception as e:
                log.warning("tracker status unavailable: %s", e)
        return out

    def describe_chain(self) -> list[dict[str, Any]]:
        import dataclasses

        with self._lock:
            return [{"name": f.name, "params": dataclasses.asdict(f.params)} for f in self._filters]

    # -- frame path (one worker thread) ---------------------------------------
    def _ensure_tracker(self) -> Any:
        if self._tracker is None and self._tracker_error is None:
            try:
                self._tracker = self._tracker_factory(self.tracker_config)
            except Exception as e:  # the stream goes on without faces
                self._tracker_error = f"face tracker unavailable: {e}"
                log.error(self._tracker_error)
        return self._tracker

    def process(self, image: np.ndarray, timestamp_s: float) -> tuple[np.ndarray, FrameResult]:
        """Run tracking (if any filter needs it) and the chain on one RGB uint8 frame."""
        with _PROCESSING:
            return self._process(image, timestamp_s)

    def _process(self, image: np.ndarray, timestamp_s: float) -> tuple[np.ndarray, FrameResult]:
        with self._lock:
            chain = list(self._filters)
            plan = self._plan
            retired, self._retired = self._retired, []
        for f in retired:
            f.close()
        timings: dict[str, float] = {}
        errors: list[str] = []
        h, w = image.shape[:2]
        faces: list[Face] = []
        began = bool(plan.early and self._last_faces)
        if began:  # start networks on the previous frame's faces (stream.overlap)
            predicted = FrameContext(self._index, timestamp_s, self._last_faces, w, h, timings)
            for k in sorted(plan.early):
                f = chain[k]
                t0 = time.perf_counter()
                try:
                    f.begin(image, predicted)
                except FilterError as e:  # apply meets the same problem and reports it
                    log.debug("filter %s: begin skipped: %s", f.name, e)
                except Exception as e:
                    errors.append(f"{f.name}.begin: {e}")
                    log.exception("filter %s: begin failed; it runs the frame in turn", f.name)
                timings[f"{f.name}.begin"] = (time.perf_counter() - t0) * 1e3
        if any(f.needs_faces for f in chain):
            tracker = self._ensure_tracker()
            if tracker is not None:
                set_threads = getattr(tracker, "set_threads", None)
                if set_threads is not None:  # leave the other core to networks that began, or to another stream
                    shared = began or _PROCESSING.count > 1
                    set_threads(1 if shared else self.tracker_config.landmark_threads)
                t0 = time.perf_counter()
                try:
                    faces = tracker.track(image, timestamp_s)
                except Exception as e:
                    errors.append(f"track: {e}")
                    log.exception("tracking failed")
                timings["track"] = (time.perf_counter() - t0) * 1e3
            elif self._tracker_error:
                errors.append(self._tracker_error)
        self._last_faces = faces
        ctx = FrameContext(self._index, timestamp_s, faces, w, h, timings)
        out = image
        for f in chain:
            t0 = time.perf_counter()
            try:
                res = f.apply(out, ctx)
                if res.shape != out.shape or res.dtype != np.uint8:
                    raise RuntimeError(f"returned {res.shape} {res.dtype}, expected {out.shape} uint8")
                out = res
            except Exception as e:
                errors.append(f"{f.name}: {e}")
                log.exception("filter %s failed; frame passes through it", f.name)
            key = f.name if f.name not in timings else f"{f.name}#{len(timings)}"
            timings[key] = (time.perf_counter() - t0) * 1e3
        self._index += 1
        return out, FrameResult(ctx.index, timestamp_s, faces, timings, errors)

    def close(self) -> None:
        with self._lock:
            filters, self._filters = self._filters + self._retired, []
            self._retired = []
        for f in filters:
            f.close()
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
