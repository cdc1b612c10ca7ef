"""``/api/suggest_frames``: catalogue frames that suit faces like the one in a posted photo.

The ranking is ``models.latent.retrieval.suggest_frames`` (the CLI's ``rxstream latent suggest``): the
photo's nearest glasses wearers in a CelebA gallery, by the facial features outside the glasses, vote for
the catalogue frame closest to the glasses they wear. This module is the HTTP side: decode and check the
upload, run the seconds-long computation off the event loop, one at a time (a second request while one
runs gets 503 with Retry-After rather than doubling the CPU load beside live streams), and keep the wearers'
gallery index between requests (building it encodes a few hundred faces).

Errors are JSON with a status: 400 bad image or parameters, or no face in the photo; 503 weights or shared
gallery data absent, or busy.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_PIXELS = 4096 * 4096  # a decoded photo larger than this is refused before any work


class SuggestError(Exception):
    """A request that cannot be answered: ``status`` and a message safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SuggestParams:
    k_faces: int = 8  # look-alike wearers that vote
    gallery: int = 200  # CelebA glasses wearers in the gallery (seeded sample)
    seed: int = 0
    tau: float = 0.1
    top: int = 5  # suggestions returned

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "k_faces": (1, 64),
        "gallery": (8, 2000),
        "seed": (0, 2**31 - 1),
        "tau": (0.01, 10.0),
        "top": (1, 50),
    }

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> SuggestParams:
        """Validated parameters from URL query values (unknown names are errors)."""
        unknown = sorted(set(query) - set(cls.LIMITS))
        if unknown:
            raise SuggestError(400, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(cls.LIMITS)}")
        values: dict[str, Any] = {}
        for name, (lo, hi) in cls.LIMITS.items():
            if name not in query:
                continue
            typ = float if name == "tau" else int
            try:
                v = typ(query[name])
            except ValueError:
                raise SuggestError(400, f"{name}: expected {'a number' if typ is float else 'an integer'}, "
                                   f"got {query[name]!r}") from None  # fmt: skip
            if not lo <= v <= hi:
                raise SuggestError(400, f"{name}: {v} is outside {lo}..{hi}")
            values[name] = v
        return cls(**values)


def decode_image(body: bytes) -> np.ndarray:
    """RGB uint8 from JPEG/PNG/WebP bytes; SuggestError(400) for anything else."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise SuggestError(400, f"post a photo as the request body ({', '.join(IMAGE_TYPES)})")
    try:  # the header alone first: a 1 MB file can declare a gigapixel image
        with Image.open(io.BytesIO(body)) as im:
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        raise SuggestError(400, f"image too large (at most {MAX_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError):
        raise SuggestError(400, "the body is not a readable JPEG, PNG or WebP image") from None
    if fmt not in ("JPEG", "PNG", "WEBP"):
        raise SuggestError(400, f"unsupported image format {fmt}; post a JPEG, PNG or WebP photo")
    if w * h > MAX_PIXELS:
        raise SuggestError(400, f"image too large: {w}x{h} (at most {MAX_PIXELS} pixels)")
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SuggestError(400, "the body is not a readable JPEG, PNG or WebP image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


Ranker = Callable[[np.ndarray, SuggestParams], list[dict[str, Any]]]


def _latent_ranker() -> Ranker:
    """The real ranking over ``models.latent`` (imports torch; raises ImportError without it)."""
    from models.latent import retrieval
    from models.latent.model import get_autoencoder
    from models.latent.photos import NoFaceError, PhotoFaces

    indexes: dict[tuple[Any, ...], Any] = {}

    def rank(rgb: np.ndarray, p: SuggestParams) -> list[dict[str, Any]]:
        net = get_autoencoder()
        size = net.cfg.size
        key = (id(net), p.gallery, p.seed, p.tau)
        if key not in indexes:  # the gallery: seconds to minutes the first time (aligned crops cache on disk)
            files = retrieval.celeba_files(p.gallery, "Eyeglasses", True, p.seed)
            bank = retrieval.bank_from_set(net, retrieval.align_celeba(files, size))
            indexes.clear()  # one gallery at a time: they are large
            indexes[key] = retrieval.GalleryIndex.build(bank, p.tau)
        try:
            with PhotoFaces() as faces:
                photo = faces.align(rgb, size)
        except NoFaceError:
            raise SuggestError(400, "no face found in the photo") from None
        query = retrieval.encode_faces(net, ["photo"], [photo.crop], [photo.landmarks])
        frames = retrieval.bank_from_set(net, retrieval.catalogue_set(photo.prepared.image, photo.face, size))
        ranked = retrieval.suggest_frames(query, indexes[key], frames, p.k_faces)
        return [{"frame": s.frame, "score": round(float(s.score), 4), "lookalikes": list(s.lookalikes)}
                for s in ranked[: p.top]]  # fmt: skip

    return rank


class FrameSuggester:
    """One computation at a time; the ranker (and its gallery) is made on first use and kept."""

    def __init__(self, ranker: Ranker | None = None) -> None:
        self._ranker = ranker
        self._busy = threading.Lock()
        self._init_lock = threading.Lock()

    @staticmethod
    def availability() -> dict[str, Any]:
        """What GET answers: whether a POST can work here, and why not."""
        try:
            from models.latent.model import default_weights_path
            from models.latent.photos import celeba_dir
        except ImportError as e:
            return {"available": False, "reason": f"latent models unavailable: {e}"}
        weights = default_weights_path()
        if not weights.is_file():
            return {"available": False, "reason": f"style autoencoder weights not found at {weights}"}
        try:
            celeba_dir()
        except FileNotFoundError as e:
            return {"available": False, "reason": f"gallery data unavailable: {e}"}
        return {"available": True}

    def suggest(self, body: bytes, query: Mapping[str, str]) -> dict[str, Any]:
        """Blocking (run it off the event loop): the JSON answer, or SuggestError."""
        params = SuggestParams.from_query(query)
        rgb = decode_image(body)
        if not self._busy.acquire(blocking=False):
            raise SuggestError(503, "another frame suggestion is being computed; retry shortly")
        try:
            with self._init_lock:
                if self._ranker is None:
                    try:
                        self._ranker = _latent_ranker()
                    except ImportError as e:
                        raise SuggestError(503, f"latent models unavailable: {e}") from None
            try:
                suggestions = self._ranker(rgb, params)
            except SuggestError:
                raise
            except FileNotFoundError as e:  # weights or the shared gallery photos
                raise SuggestError(503, str(e)) from None
            except ValueError as e:  # the models' message for bad input (e.g. an unusable face)
                raise SuggestError(400, str(e)) from None
            return {"suggestions": suggestions, "params": {k: getattr(params, k) for k in SuggestParams.LIMITS}}
        finally:
            self._busy.release()
