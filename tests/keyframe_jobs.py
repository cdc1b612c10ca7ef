"""A keyframe job for the process-worker tests: module-level (a child process must import it) and light
(numpy only), its behaviour picked per job by the item."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class ProcCancelled(Exception):
    pass


@dataclass(frozen=True)
class ProcJob:
    started: Any  # multiprocessing Events: a job began; the child warmed up
    warmed: Any

    def warm_up(self) -> None:
        self.warmed.set()

    def __call__(self, frame: np.ndarray, face: Any, item: str, cancel: Callable[[], bool]) -> dict[str, Any]:
        self.started.set()
        if item == "loop":  # runs until cancelled, polling like the latent optimisation does between steps
            while not cancel():
                time.sleep(0.005)
            raise ProcCancelled("stopped")
        if item == "fail":
            raise ValueError("bad in child")
        if item == "die":
            os._exit(3)
        return {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0), "sum": int(frame.sum())}
