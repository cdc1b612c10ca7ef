"""A keyframe job run in a child process: the worker thread hands it over and waits, polling for cancel.

Why a process at all: a latent optimisation is a Python loop around many small torch ops, and the Python
glue holds the GIL. In a thread, every time the (lower-priority) worker is preempted while holding the GIL,
the frame path stalls until the worker runs again -- priority inversion that niceness makes worse, not
better. On the 2-core dev machine (benchmarks/keyframe_interval.py, a job always running) a thread raised
the frame time's p95 by 20% when idle and dropped frames when busy; a child process, which shares no GIL
and whose niceness then only decides who gets a contended core, by 3%.

Protocol over one ``Pipe``: the parent sends ``(frame, face, item)``; the child answers ``("ok", result)``
or ``("err", exception)``. Cancel is a shared ``Event`` the job polls through its ``cancel`` callable. The
child is started with the spawn method (no fork of a process holding mediapipe/torch threads), lowers its
priority, limits torch's threads, calls the job function's ``warm_up()`` if it has one (imports, model
load), and serves jobs until the pipe closes. A child that dies (e.g.
out of memory) fails the job it was running; the next job starts a new one.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often the waiting worker thread looks at its job's cancel flag
IDLE_EXIT_S = 2.0  # an idle child gets this long to exit on its own before it is terminated


class ChildDied(RuntimeError):
    """The job's process ended without answering."""


def lower_priority(nice: int, tid: int = 0) -> None:
    """Add ``nice`` to the niceness of thread/process ``tid`` (0: the calling process), capped at 19."""
    if nice == 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # keyframes at normal priority, said once
        log.info("keyframe worker: could not lower its priority: %s", e)


def limit_torch_threads(n: int | None) -> None:
    """torch's intra-op thread count, per calling thread under OpenMP; nothing without torch or for None."""
    if n is None:
        return
    try:
        import torch
    except ImportError:
        return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _child_main(conn: Connection, job_fn: Callable[..., Any], torch_threads: int | None, nice: int,
                cancel: Any, ready: Any) -> None:  # fmt: skip
    lower_priority(nice)
    limit_torch_threads(torch_threads)
    warm_up = getattr(job_fn, "warm_up", None)
    if callable(warm_up):  # imports and model loading before the first keyframe, not during it
        try:
            warm_up()
        except Exception as e:  # the first job will fail with the real error; say it here too
            log.warning("keyframe process warm-up failed: %s: %s", type(e).__name__, e)
    ready.set()
    while True:
        try:
            frame, face, item = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe: done
            return
        try:
            reply: tuple[str, Any] = ("ok", job_fn(frame, face, item, cancel.is_set))
        except Exception as e:
            reply = ("err", e)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # an unpicklable result or exception: say what it was
            conn.send(("err", RuntimeError(f"keyframe job answer could not be sent back: {type(e).__name__}: {e}")))


class ChildRunner:
    """One child process serving one worker thread's jobs, one at a time."""

    def __init__(self, job_fn: Callable[..., Any], torch_threads: int | None, nice: int, name: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._cancel, self._ready = ctx.Event(), ctx.Event()
        args = (child, job_fn, torch_threads, nice, self._cancel, self._ready)
        self.process = ctx.Process(target=_child_main, args=args, name=name, daemon=True)
        try:
            self.process.start()  # pickles job_fn for the child: a closure or lambda fails here
        except Exception as e:
            self._conn.close()
            child.close()
            raise ValueError(f"a process keyframe worker needs a picklable job function (a module-level function "
                             f"or an instance of a module-level class), got {job_fn!r}: {e}") from None  # fmt: skip
        child.close()  # the child holds its end; EOF reaches us if it dies
        self._busy = False  # a job is in the child

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the child has set itself up (priority, threads, the job's ``warm_up()`` if it has one)."""
        return self._ready.wait(timeout)

    def run(self, frame: Any, face: Any, item: Any, cancelled: Callable[[], bool]) -> Any:
        """The job's result; its exception re-raised; ChildDied if the process ended first."""
        self._cancel.clear()
        self._busy = True
        try:
            self._conn.send((frame, face, item))
            while not self._conn.poll(POLL_S):
                if cancelled() and not self._cancel.is_set():
                    self._cancel.set()
                if not self.process.is_alive():
                    raise ChildDied(f"keyframe process exited with code {self.process.exitcode}")
            kind, payload = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as e:
            raise ChildDied(f"keyframe process ended: {type(e).__name__}") from None
        finally:
            self._busy = False
        if kind == "err":
            raise payload
        return payload

    def close(self, timeout_s: float) -> None:
        """Ask the job to stop, close the pipe (the child exits), and terminate it if it does not within
        ``timeout_s`` (a job running) or ``IDLE_EXIT_S`` (idle: nothing to lose)."""
        self._cancel.set()
        self._conn.close()
        self.process.join(timeout_s if self._busy else min(timeout_s, IDLE_EXIT_S))
        if self.process.is_alive():
            # Idle, it was only slow to tear down (torch and mediapipe at exit, at low priority): not worth a word.
            level = logging.WARNING if self._busy else logging.DEBUG
            log.log(level, "keyframe process %s still running %.0f s after close: terminated", self.process.name,
                    timeout_s)  # fmt: skip
            self.process.terminate()
            self.process.join(1.0)
