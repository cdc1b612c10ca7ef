"""Process-wide, thread-safe, lazy model store: (model, crop size, batch, backend preference) -> a loaded Backend.

Every stream session shares one store, so each network is exported, optimised and loaded once per process
however many sessions use it. For a request the store finds the weights (``X.pt`` + ``X.json``, the
``export.models.save_weights`` format) in the weights directory, exports a static-shape fp32 ONNX graph into
the accel cache (keyed by the weights' sha256, size, batch and exporter versions; reused when present), then
lets ``BackendSelector`` pick a backend (TensorRT > torch CUDA > ONNX Runtime, falling back on failure).

Loading runs on a background thread: ``request`` never blocks (a stream shows its frames unprocessed while
a model loads), ``get`` waits (file mode, benchmarks, tests). Missing weights or a model no backend can serve
leave the handle in a non-ready state with one clear log line; the request is retried when the weights file
appears or changes, so weights can be dropped in while the server runs.

Weights directory: ``$RXSTREAM_WEIGHTS`` or ``models/weights`` in the repository. A model's weights are
``<name>.pt`` (any size, as its JSON config says) or ``<name>_<size>.pt`` for further sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accel.backend import Backend
from accel.cache import default_cache_dir, sha256_file
from accel.select import BackendSelector, Candidate, ModelFiles, default_candidates

log = logging.getLogger(__name__)

WEIGHTS_ENV = "RXSTREAM_WEIGHTS"
BACKEND_CHOICES = ("auto", "onnxruntime", "torch-cpu", "torch-cuda", "tensorrt")  # "auto": BackendSelector order
RETRY_S = 2.0  # how often a request for a model without weights re-checks the weights file

LOADING, READY, NO_WEIGHTS, FAILED = "loading", "ready", "no-weights", "failed"


def default_weights_dir() -> Path:
    """``$RXSTREAM_WEIGHTS`` or ``models/weights`` next to this checkout's code (where the lead ships them)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models" / "weights"


def weights_sizes(name: str, weights_dir: Path) -> dict[int, Path]:
    """Crop size -> weights file for ``name`` in ``weights_dir`` (sizes read from each file's JSON config).

    ``<name>.pt`` serves the size its config says; ``<name>_<size>.pt`` files add sizes. Files without a
    readable config are ignored here (``load_model`` reports them when asked for explicitly).
    """
    from export.models import weights_family

    out: dict[int, Path] = {}
    if not weights_dir.is_dir():
        return out
    name = weights_family(name)  # e.g. generator_heads loads generator.pt
    for pt in sorted([weights_dir / f"{name}.pt", *weights_dir.glob(f"{name}_*.pt")]):
        if not pt.is_file():
            continue
        try:
            size = int(json.loads(pt.with_suffix(".json").read_text())["size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.setdefault(size, pt)
    return out


def find_weights(name: str, size: int, weights_dir: Path) -> Path | None:
    return weights_sizes(name, weights_dir).get(size)


def _signature(path: Path | None) -> tuple[int, int] | None:
    """(mtime_ns, size) of a weights file: a change means new weights to load."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class ModelRequest:
    name: str  # export.models name: restorer | generator | style_autoencoder
    size: int  # crop side in pixels
    batch: int = 1  # static batch of the exported graph
    prefer: str | None = None  # a BackendSelector candidate tried first; None: the automatic order
    # CPU threads of the session where the backend has its own pool (ONNX Runtime); None: the store's
    # default. One thread each when two networks of a frame run at the same time (stream.concurrency).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.prefer is not None and self.prefer not in BACKEND_CHOICES[1:]:
            raise ValueError(f"backend {self.prefer!r} is not one of {', '.join(BACKEND_CHOICES)}")

    @property
    def label(self) -> str:
        return (f"{self.name}@{self.size}/b{self.batch}" + (f"/{self.prefer}" if self.prefer else "")
                + (f"/t{self.threads}" if self.threads else ""))  # fmt: skip


def export_key(weights_sha256: str, size: int, batch: int, versions: Mapping[str, str]) -> str:
    """Cache key of an exported graph: everything that changes the ONNX bytes (weights, shapes, exporter)."""
    parts = [weights_sha256, str(size), str(batch), "fp32", *(f"{k}={v}" for k, v in sorted(versions.items()))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _exporter_versions() -> dict[str, str]:
    import onnx
    import torch

    from export.manifest import MANIFEST_VERSION

    return {"torch": torch.__version__, "onnx": onnx.__version__, "manifest": str(MANIFEST_VERSION)}


def exported_files(name: str, size: int, batch: int, weights: Path, cache_dir: Path) -> tuple[ModelFiles, bool]:
    """The ONNX export of ``weights`` at (size, batch) from the cache, exporting it first on a miss.

    Returns (files, True when it came from the cache). Exports go to a temporary folder renamed into place,
    so a concurrent process never sees half an export; if two race, the loser's copy is discarded.
    """
    from export.export import ExportOptions, export_model
    from export.manifest import manifest_path_for

    sha = sha256_file(weights)
    key = export_key(sha, size, batch, _exporter_versions())
    folder = cache_dir / f"{name}-{size}-b{batch}-{sha[:12]}-{key}"
    if folder.is_dir():
        manifests = sorted(folder.glob("*.manifest.json"))
        if manifests:
            return ModelFiles.from_manifest(manifests[0], torch_source=weights), True
    tmp = cache_dir / f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    res = export_model(name, tmp, ExportOptions(size=size, batch=batch, precision="fp32"), weights=weights)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same export first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return ModelFiles.from_manifest(manifest_path_for(folder / res.onnx_path.name), torch_source=weights), False


class ModelHandle:
    """One requested model: its state, the backend serving it once ready, and a run lock.

    Backends preallocate their buffers and are driven by one thread at a time; sessions run frames on their own
    worker threads, so ``run`` / ``run_device`` serialise on the handle and return outputs the caller owns.
    """

    def __init__(self, request: ModelRequest) -> None:
        self.request = request
        self.state = LOADING
        self.error: str | None = None
        self.backend: Backend | None = None
        self.info: dict[str, Any] = {}
        self.weights_signature: tuple[int, int] | None = None
        self.checked_s = time.monotonic()
        self._ready = threading.Event()
        self._run_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def device_io(self) -> bool:
        return self.backend is not None and self.backend.device_io

    @property
    def device(self) -> str:
        return self.backend.device if self.backend is not None else "-"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading ends (either way); True when the model is ready."""
        self._ready.wait(timeout)
        return self.ready

    def describe(self) -> dict[str, Any]:
        """What the stats overlay shows for this model."""
        d: dict[str, Any] = {"state": self.state, "batch": self.request.batch}
        d.update(self.info)
        if self.error:
            d["error"] = self.error
        return d

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        backend = self._backend()
        with self._run_lock:
            return {k: v.copy() for k, v in backend.run(inputs).items()}

    def run_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        backend = self._backend()
        with self._run_lock:
            return {k: v.float().clone() for k, v in backend.run_device(inputs).items()}

    def _backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError(f"{self.request.label} is {self.state}: {self.error or 'not loaded yet'}")
        return self.backend

    def _finish(self, state: str, error: str | None = None, backend: Backend | None = None,
                info: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.backend, self.error, self.info = backend, error, info or {}
        self.state = state  # set last: a reader seeing READY also sees the backend
        self._ready.set()


@dataclass
class StoreOptions:
    weights_dir: Path | None = None  # None: default_weights_dir() at each lookup (follows $RXSTREAM_WEIGHTS)
    cache_dir: Path | None = None  # None: <accel cache>/onnx
    candidates: dict[str, Candidate] | None = None  # None: accel.select.default_candidates(gpu_precision)
    order: tuple[str, ...] | None = None  # None: BackendSelector's automatic order
    gpu_precision: str = "fp16"
    ort_threads: int = 2  # ONNX Runtime intra-op threads (shared machines: never every core)
    warmup_runs: int = 2
    retry_s: float = RETRY_S


class ModelStore:
    def __init__(self, options: StoreOptions | None = None) -> None:
        self.options = o = options or StoreOptions()
        cands = o.candidates if o.candidates is not None else default_candidates(o.gpu_precision, o.ort_threads)
        kw: dict[str, Any] = {"candidates": cands, "warmup_runs": o.warmup_runs}
        if o.order is not None:
            kw["order"] = o.order
        self.selector = BackendSelector(**kw)
        self._handles: dict[ModelRequest, ModelHandle] = {}
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._closed = False

    @property
    def weights_dir(self) -> Path:
        return self.options.weights_dir or default_weights_dir()

    @property
    def cache_dir(self) -> Path:
        return self.options.cache_dir or default_cache_dir() / "onnx"

    def sizes(self, name: str) -> tuple[int, ...]:
        """Crop sizes that have weights for ``name``."""
        return tuple(sorted(weights_sizes(name, self.weights_dir)))

    def request(self, req: ModelRequest) -> ModelHandle:
        """The handle for ``req``, starting a background load the first time (never blocks on a load)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("model store is closed")
            h = self._handles.get(req)
            if h is not None and h.state in (NO_WEIGHTS, FAILED) and self._weights_changed(h):
                h = None  # the weights file appeared or changed: try again
            if h is None:
                h = ModelHandle(req)
                self._handles[req] = h
                self._loader.submit(self._load, h)
            return h

    def peek(self, req: ModelRequest) -> ModelHandle | None:
        """The handle for ``req`` if it was ever requested; never starts a load."""
        with self._lock:
            return self._handles.get(req)

    def get(self, req: ModelRequest, timeout: float | None = None) -> ModelHandle:
        """``request`` and wait for the load to end (ready or not)."""
        h = self.request(req)
        h.wait(timeout)
        return h

    def _weights_changed(self, h: ModelHandle) -> bool:
        now = time.monotonic()
        if now - h.checked_s < self.options.retry_s:
            return False
        h.checked_s = now
        path = find_weights(h.request.name, h.request.size, self.weights_dir)
        return _signature(path) != h.weights_signature

    def _load(self, h: ModelHandle) -> None:
        req = h.request
        t0 = time.perf_counter()
        try:
            weights = find_weights(req.name, req.size, self.weights_dir)
            h.weights_signature = _signature(weights)
            if weights is None:
                have = self.sizes(req.name)
                from export.models import weights_family

                where = self.weights_dir / f"{weights_family(req.name)}.pt"
                msg = (f"no {req.size}px weights (have: {', '.join(map(str, have)) or 'none'}); expected {where} "
                       f"(+ .json), see README 'Neural filters' or set {WEIGHTS_ENV}")  # fmt: skip
                log.warning("%s: %s; frames pass through", req.label, msg)
                h._finish(NO_WEIGHTS, msg)
                return
            files, cached = exported_files(req.name, req.size, req.batch, weights, self.cache_dir)
            backend = self.selector.select(req.label, files, req.prefer, req.threads)
            active = dict(self.selector.active.get(req.label, {}))
            if backend is None:
                msg = "no backend could load it: " + ("; ".join(active.get("failed", [])) or "none available here")
                log.error("%s: %s; frames pass through", req.label, msg)
                h._finish(FAILED, msg, info=active)
                return
            digest = files.manifest.source_weights.split()[0].removeprefix("sha256:")[:12]
            info = {**active, "weights": f"{weights.name} sha256:{digest}"}
            log.info("%s: %s on %s (%s), weights %s, ONNX %s, ready in %.1f s", req.label, active.get("backend"),
                     active.get("device"), active.get("precision"), info["weights"],
                     "from cache" if cached else "exported", time.perf_counter() - t0)  # fmt: skip
            h._finish(READY, backend=backend, info=info)
        except Exception as e:  # a broken weights file or export must not take the stream down
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.error("%s: loading failed (%s); frames pass through", req.label, msg)
            h._finish(FAILED, msg)

    def describe(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {r.label: h.describe() for r, h in self._handles.items()}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles = list(self._handles.values())
            self._handles.clear()
        self._loader.shutdown(wait=True, cancel_futures=True)
        for h in handles:
            if h.backend is not None:
                with h._run_lock:
                    h.backend.close()


_shared: ModelStore | None = None
_shared_lock = threading.Lock()


def shared_store() -> ModelStore:
    """The process-wide store every filter uses (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelStore()
        return _shared


def set_shared_store(store: ModelStore | None) -> ModelStore | None:
    """Replace the process-wide store (tests, benchmarks); returns the previous one (not closed)."""
    global _shared
    with _shared_lock:
        old, _shared = _shared, store
        return old
