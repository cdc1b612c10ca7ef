"""Keyframe jobs off the frame path: a small thread pool, newest-wins per face, and an LRU of results.

The frame path only ever calls :meth:`KeyframeWorker.submit` (a dict update under a lock) and reads job
states; the seconds-long latent work runs on worker threads. With ``isolation="thread"`` the job runs on
the worker thread itself (frames and results pass by reference; fine for work that really releases the
GIL); with ``"process"`` each worker thread hands its jobs to its own child process and waits
(``stream.keyframe_process``: no shared GIL, so the job's Python glue cannot stall the frame path). One
worker by default (this service targets 2-core machines where the frame path needs the other core);
torch's intra-op pool is limited to ``torch_threads`` where the jobs run for the same reason, and that
thread or process runs at a lower priority (``nice``) so that the live stream wins a contended core.

Rules:

- newest wins per (session, face): a new request for a face cancels that face's older job, pending or
  running (its ``cancel`` callable flips; the job function is expected to poll it and stop);
- the queue is bounded: beyond ``max_pending`` the oldest pending job is cancelled (a face far down a
  long queue would get a stale answer anyway);
- results are cached by the full key (session, face, item, pose bin); a request for a cached key finishes
  at once without running anything, unless it asks for a ``refresh`` (the keyframe timer);
- a job that raises is reported on its handle and logged once per distinct error; nothing reaches the
  frame path; :meth:`close` cancels everything, running jobs included, and joins the threads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stream.face import Face
from stream.keyframe_policy import KeyframeKey
from stream.keyframe_process import ChildRunner, limit_torch_threads, lower_priority

log = logging.getLogger(__name__)

JobState = Literal["pending", "running", "done", "failed", "cancelled"]
# (frame_rgb, face, item, cancel) -> layer; models.latent.job.run_latent_tryon with its config bound.
JobFn = Callable[[np.ndarray, Face, Hashable, Callable[[], bool]], Any]
MAX_DISTINCT_ERRORS = 32  # bounds the memory of what was logged when error texts vary
RECENT_RUNS = 256  # run times kept for stats and benchmarks


@dataclass(frozen=True)
class WorkerConfig:
    workers: int = 1
    max_pending: int = 8
    cache_size: int = 64  # results kept, all sessions together (a layer of 256 px RGBA float is 1 MiB)
    torch_threads: int | None = 1  # None: leave torch's thread count alone (and never import torch)
    nice: int = 10  # added to worker threads' niceness (Linux): the frame path wins a contended core
    join_timeout_s: float = 10.0  # close() waits this long per thread for a job to notice its cancel flag
    cancel_types: tuple[type[BaseException], ...] = ()  # exceptions that mean "cancelled", not "failed"
    isolation: Literal["thread", "process"] = "thread"  # where a job runs (see the module doc)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads}")
        if self.isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', got {self.isolation!r}")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice must be in 0..19 (only lowering priority needs no privileges), got {self.nice}")


@dataclass(eq=False)
class Job:
    """Handle of one request. The frame path reads ``state``/``result``/``error``; the worker writes them
    (attribute writes are atomic under the GIL, and ``finished`` is set last)."""

    key: KeyframeKey
    serial: int
    frame: np.ndarray | None
    face: Face | None
    submitted_s: float
    refresh: bool = False
    state: JobState = "pending"
    result: Any = None
    error: str | None = None
    cached: bool = False  # answered from the cache without running
    started_s: float | None = None
    ended_s: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def run_ms(self) -> float | None:
        """Time the job function ran (None until it finished; 0 for a cache hit)."""
        if self.cached:
            return 0.0
        if self.started_s is None or self.ended_s is None:
            return None
        return (self.ended_s - self.started_s) * 1e3

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state, "bin": list(self.key.pose_bin), "cached": self.cached}
        if self.run_ms is not None:
            d["ms"] = round(self.run_ms, 1)
        if self.started_s is not None:
            d["wait_ms"] = round((self.started_s - self.submitted_s) * 1e3, 1)
        if self.error:
            d["error"] = self.error
        return d


class KeyframeWorker:
    def __init__(self, job_fn: JobFn, config: WorkerConfig | None = None) -> None:
        self.config = config or WorkerConfig()
        self._job_fn = job_fn
        self._cond = threading.Condition()
        self._pending: OrderedDict[tuple[str, int], Job] = OrderedDict()  # slot -> job; oldest first
        self._running: dict[tuple[str, int], Job] = {}
        self._cache: OrderedDict[KeyframeKey, Any] = OrderedDict()
        self._serial = itertools.count(1)
        self._logged: set[str] = set()
        self._closed = False
        self._run_ms: deque[float] = deque(maxlen=RECENT_RUNS)  # finished jobs' run times, newest last
        self.counts = {"submitted": 0, "cache_hits": 0, "ran": 0, "done": 0, "failed": 0, "cancelled": 0}
        names = [f"keyframe-worker-{i}" for i in range(self.config.workers)]
        # Process isolation: children start here, so a job function that cannot be sent to one is an error
        # of this constructor, and their imports (torch, the model) happen before the first keyframe.
        runners: list[ChildRunner | None] = [None] * len(names)
        if self.config.isolation == "process":
            for i, name in enumerate(names):
                try:
                    runners[i] = self._start_child(f"{name}-proc")
                except Exception:
                    for r in runners:
                        if r is not None:
                            r.close(0.0)
                    raise
        self._runners = runners  # per thread; a thread replaces its own when the child dies
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=n, daemon=True)
                         for i, n in enumerate(names)]  # fmt: skip
        for t in self._threads:
            t.start()

    # -- frame path ---------------------------------------------------------------------------------
    def submit(self, key: KeyframeKey, frame: np.ndarray, face: Face, refresh: bool = False) -> Job:
        """Queue a job for ``key`` (the frame is copied); returns at once. A cached key comes back finished
        (state done, ``cached``) unless ``refresh``; the same key already queued or running is returned
        as is. Any other job of the same face is cancelled."""
        with self._cond:
            if self._closed:
                raise RuntimeError("keyframe worker is closed")
            self.counts["submitted"] += 1
            slot = key.slot
            if not refresh and key in self._cache:
                self._cache.move_to_end(key)
                job = Job(key, next(self._serial), None, None, time.monotonic(), state="done",
                          result=self._cache[key], cached=True)  # fmt: skip
                self.counts["cache_hits"] += 1
                self._supersede(slot)
                job.finished.set()
                return job
            for live in (self._pending.get(slot), self._running.get(slot)):
                # Any job for this key still going gives a fresh result: a refresh need not start another.
                if live is not None and live.key == key and not live.cancel_requested:
                    return live
            self._supersede(slot)
            job = Job(key, next(self._serial), np.array(frame, copy=True), face, time.monotonic(), refresh=refresh)
            self._pending[slot] = job
            while len(self._pending) > self.config.max_pending:
                _, oldest = self._pending.popitem(last=False)
                self._finish_cancelled(oldest)
            self._cond.notify()
            return job

    def cancel(self, job: Job) -> None:
        """Cancel one job (pending: dropped now; running: its cancel callable flips)."""
        with self._cond:
            if self._pending.get(job.key.slot) is job:
                del self._pending[job.key.slot]
                self._finish_cancelled(job)
            else:
                job.cancel()

    def cancel_slot(self, session: str, face_id: int) -> None:
        """Cancel whatever runs or waits for one face (it left the picture)."""
        with self._cond:
            self._supersede((session, face_id))

    def end_session(self, session: str) -> None:
        """Cancel a session's jobs and drop its cached results (the stream ended)."""
        with self._cond:
            for slot in [s for s in (*self._pending, *self._running) if s[0] == session]:
                self._supersede(slot)
            for key in [k for k in self._cache if k.session == session]:
                del self._cache[key]

    def cancel_all(self) -> None:
        """Cancel every pending and running job; cached results stay."""
        with self._cond:
            for slot in [*self._pending, *self._running]:
                self._supersede(slot)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is pending or running (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._running, timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Process isolation: block until every child has warmed up (imports, model); threads: True."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in list(self._runners):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if r is not None and not r.wait_ready(left):
                return False
        return True

    def cached(self, key: KeyframeKey) -> Any | None:
        with self._cond:
            if key not in self._cache:
                return None
            self._cache.move_to_end(key)
            return self._cache[key]

    def stats(self) -> dict[str, Any]:
        with self._cond:
            d = {"workers": self.config.workers, "isolation": self.config.isolation, "pending": len(self._pending),
                 "running": len(self._running), "cached": len(self._cache), **self.counts}  # fmt: skip
            if self._run_ms:
                d["job_ms_p50"] = round(float(np.median(self._run_ms)), 1)
            return d

    def run_times_ms(self) -> list[float]:
        """Run times of the last finished (done) jobs, oldest first: the cost of a keyframe."""
        with self._cond:
            return list(self._run_ms)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancel every job (running ones see their cancel flag) and join the threads. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for job in self._pending.values():
                self._finish_cancelled(job)
            self._pending.clear()
            for job in self._running.values():
                job.cancel()
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(self.config.join_timeout_s)
                if t.is_alive():
                    log.warning("%s: a keyframe job ignored its cancel flag for %.0f s; left running as a daemon",
                                t.name, self.config.join_timeout_s)  # fmt: skip

    # -- internals (lock held) ----------------------------------------------------------------------
    def _supersede(self, slot: tuple[str, int]) -> None:
        old = self._pending.pop(slot, None)
        if old is not None:
            self._finish_cancelled(old)
        running = self._running.get(slot)
        if running is not None:
            running.cancel()

    def _finish_cancelled(self, job: Job) -> None:
        job.cancel()
        job.state = "cancelled"
        job.frame = None
        job.ended_s = time.monotonic()
        self.counts["cancelled"] += 1
        job.finished.set()

    # -- worker threads -----------------------------------------------------------------------------
    def _start_child(self, name: str) -> ChildRunner:
        return ChildRunner(self._job_fn, self.config.torch_threads, self.config.nice, name)

    def _loop(self, index: int) -> None:
        runner = self._runners[index]
        if runner is None:
            # Thread isolation: jobs run here. Linux schedules threads as tasks: renicing this thread's id
            # renices it alone (and the threads it starts, e.g. torch's pool, inherit it).
            lower_priority(self.config.nice, threading.get_native_id())
            limit_torch_threads(self.config.torch_threads)  # before the first job: its time is the job's alone
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    slot, job = self._pending.popitem(last=False)
                    self._running[slot] = job
                    job.state = "running"
                    job.started_s = time.monotonic()
                    self.counts["ran"] += 1
                if runner is not None and not runner.alive:
                    runner.close(0.0)
                    runner = self._start_child(runner.process.name)  # the last one died (its job failed)
                    self._runners[index] = runner
                self._run(job, runner)
                with self._cond:
                    if self._running.get(slot) is job:
                        del self._running[slot]
                    self._cond.notify_all()  # wait_idle()
        finally:
            if runner is not None:
                runner.close(self.config.join_timeout_s)

    def _run(self, job: Job, runner: ChildRunner | None) -> None:
        assert job.frame is not None and job.face is not None
        try:
            if runner is None:
                result = self._job_fn(job.frame, job.face, job.key.item, job._cancel.is_set)
            else:
                result = runner.run(job.frame, job.face, job.key.item, job._cancel.is_set)
            failure: Exception | None = None
        except Exception as e:  # nothing a job does may reach the frame path
            result, failure = None, e
        job.ended_s = time.monotonic()
        job.frame = job.face = None  # the frame is 1 MB: not kept by finished handles
        with self._cond:
            if job.cancel_requested or isinstance(failure, self.config.cancel_types):
                # Superseded or closed (a result that arrives anyway is stale: the newer job's counts).
                job.state = "cancelled"
                self.counts["cancelled"] += 1
            elif failure is not None:
                job.error = f"{type(failure).__name__}: {failure}"
                job.state = "failed"
                self.counts["failed"] += 1
                self._log_once(job)
            else:
                job.result = result
                job.state = "done"
                self.counts["done"] += 1
                self._run_ms.append((job.ended_s - (job.started_s or job.ended_s)) * 1e3)
                if self.config.cache_size > 0:
                    self._cache[job.key] = result
                    self._cache.move_to_end(job.key)
                    while len(self._cache) > self.config.cache_size:
                        self._cache.popitem(last=False)
        job.finished.set()

    def _log_once(self, job: Job) -> None:
        msg = job.error or "?"
        if msg in self._logged:
            return
        if len(self._logged) < MAX_DISTINCT_ERRORS:
            self._logged.add(msg)
        log.error("keyframe job for face %d (session %s) failed: %s (further identical errors not logged)",
                  job.key.face_id, job.key.session, msg)  # fmt: skip
