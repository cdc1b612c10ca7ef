"""Shared benchmark helpers: latency percentiles, a description of the machine, JSON output.

Kept tiny and dependency-free (numpy only) so every benchmark reports numbers the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def summarize(samples_ms: Iterable[float]) -> dict[str, float | int]:
    """count, p50, p95, p99, mean and max of latency samples in milliseconds (NaN when empty)."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"count": 0, "p50": nan, "p95": nan, "p99": nan, "mean": nan, "max": nan}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "count": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two runs: CPU, cores, load, library versions, time."""
    info: dict[str, Any] = {
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    with contextlib.suppress(OSError):  # not every platform has a load average
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    versions = {}
    for mod in ("numpy", "cv2", "av", "mediapipe", "aiortc", "torch", "onnxruntime"):
        m = sys.modules.get(mod)  # only what the benchmark actually imported: no import side effects here
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    info["versions"] = versions
    return info


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars/arrays allowed), creating parent folders.

    Written to a temporary file first and renamed, so a reader never sees half a result.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable, allow_nan=True) + "\n")
    tmp.replace(p)
    return p
