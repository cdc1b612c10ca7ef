"""On-disk caches for inference backends: content hashes, cache keys and atomic writes.

Keys are pure functions of everything that makes a cached artefact invalid (model bytes, library version,
device, precision), so a stale file is never picked up: a new key simply misses and rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

CACHE_ENV = "RXSTREAM_ACCEL_CACHE"


def default_cache_dir() -> Path:
    """``$RXSTREAM_ACCEL_CACHE`` or ``~/.cache/rxstream/accel`` (next to the face landmarker model)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "rxstream" / "accel"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _slug(s: str) -> str:
    """Filesystem-safe, readable token: GPU names contain spaces and slashes."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-").lower() or "none"


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, precision: str) -> str:
    """TensorRT engine cache key: an engine is only valid for the exact graph, TensorRT version, GPU model
    and precision it was built for (engines are not portable across any of them).

    Readable prefix (precision, version, GPU) for humans, plus a digest of all parts so two GPU names that
    slug to the same text still get distinct keys.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    if not trt_version or not gpu_name:
        raise ValueError("trt_version and gpu_name must be non-empty")
    digest = hashlib.sha256("\0".join((onnx_sha256, trt_version, gpu_name, precision)).encode()).hexdigest()
    return f"{onnx_sha256[:16]}-{precision}-trt{_slug(trt_version)}-{_slug(gpu_name)}-{digest[:12]}"


def ort_cache_key(onnx_sha256: str, ort_version: str, providers: tuple[str, ...], opt_level: str) -> str:
    """ONNX Runtime optimised-graph cache key. Fully optimised graphs contain provider- and CPU-specific
    fused ops (e.g. NCHWc layouts), so the providers and ORT version are part of the key."""
    digest = hashlib.sha256("\0".join((onnx_sha256, ort_version, *providers, opt_level)).encode()).hexdigest()
    return f"{onnx_sha256[:16]}-ort{_slug(ort_version)}-{opt_level}-{digest[:12]}"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write then rename so a concurrent reader never sees a partial engine or cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
