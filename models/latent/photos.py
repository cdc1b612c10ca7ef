"""Faces in still photos (references, galleries, the CLI): landmarks, alignment, CelebA access.

A still photo has no track, so the landmarker runs in IMAGE mode (no state carried from one photo to the
next). Small photos such as CelebA's 89x109 are enlarged and given a replicated border first: mediapipe's
detector wants some context around a face that fills the picture.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.align import align
from models.latent.masks import crop_landmarks
from stream.face import Face
from stream.pose import pose_from_matrix

MIN_SIDE = 320  # photos smaller than this are enlarged before detection
BORDER = 0.15  # replicated border, fraction of the (enlarged) side


class NoFaceError(ValueError):
    """No face was found in a photo."""


@dataclass(frozen=True)
class PreparedPhoto:
    image: np.ndarray  # what the detector sees
    scale: float  # enlargement factor (1: unchanged)
    border: int  # replicated border added on every side, in ``image`` pixels

    def restore(self, image: np.ndarray, original_shape: tuple[int, ...]) -> np.ndarray:
        """An image in prepared coordinates (e.g. a composite) back at the original photo's size."""
        if self.scale == 1.0 and self.border == 0:
            return image
        b = self.border
        inner = image[b : image.shape[0] - b, b : image.shape[1] - b]
        h, w = original_shape[:2]
        return cv2.resize(inner, (w, h), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class AlignedPhoto:
    """A photo's largest face as an aligned crop (models.align), with landmarks in crop coordinates."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (478, 2) crop coordinates
    face: Face  # in ``prepared.image`` coordinates
    prepared: PreparedPhoto  # the (possibly enlarged and bordered) photo the face was found in
    matrix: np.ndarray  # 2x3 prepared image -> crop


class PhotoFaces:
    """IMAGE-mode mediapipe landmarker; thread-safe (one call at a time); ``close()`` or use as a context."""

    def __init__(self) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        from stream.model_asset import model_path

        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path())),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=4,
            output_facial_transformation_matrixes=True,
        )
        self._mp = mp
        self._lm: Any = vision.FaceLandmarker.create_from_options(opts)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._lm is not None:
            self._lm.close()
            self._lm = None

    def __enter__(self) -> PhotoFaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, rgb: np.ndarray) -> Face | None:
        """The largest face in an RGB uint8 image, or None."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        with self._lock:
            if self._lm is None:
                raise RuntimeError("PhotoFaces is closed")
            img = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            res = self._lm.detect(img)
        faces = []
        for i, lms in enumerate(res.face_landmarks):
            arr = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)
            mat = np.array(res.facial_transformation_matrixes[i], dtype=np.float64).reshape(4, 4)
            faces.append(Face(i, arr, pose_from_matrix(mat), (w, h)))
        if not faces:
            return None
        return max(faces, key=lambda f: float(np.ptp(f.landmarks_px[:, 0]) * np.ptp(f.landmarks_px[:, 1])))

    def align(self, rgb: np.ndarray, size: int = 128) -> AlignedPhoto:
        """The largest face as an aligned crop; raises ``NoFaceError`` when there is none."""
        prepared = prepare_photo(rgb)
        face = self.detect(prepared.image)
        if face is None:
            raise NoFaceError("no face found in the photo")
        crop, m = align(prepared.image, face, size)
        return AlignedPhoto(crop, crop_landmarks(face.landmarks_px, m), face, prepared, m)


def prepare_photo(rgb: np.ndarray) -> PreparedPhoto:
    """Enlarge (cubic) small photos to ``MIN_SIDE`` and add a replicated border for the detector."""
    h, w = rgb.shape[:2]
    if min(h, w) >= MIN_SIDE:
        return PreparedPhoto(rgb, 1.0, 0)
    scale = MIN_SIDE / min(h, w)
    big = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    b = round(BORDER * MIN_SIDE)
    return PreparedPhoto(cv2.copyMakeBorder(big, b, b, b, b, cv2.BORDER_REPLICATE), scale, b)


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- CelebA (shared data) ------------------------------------------------------------------------
def shared_data_root() -> Path:
    """``<repo>/../shared/data`` (where the project's real test data lives)."""
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def celeba_dir(root: Path | None = None) -> Path:
    d = (root or shared_data_root()) / "faces" / "celeba"
    if not (d / "attributes.csv").is_file():
        raise FileNotFoundError(f"CelebA with attributes.csv not found in {d} (shared data)")
    return d


def celeba_attribute(attribute: str, root: Path | None = None) -> dict[str, bool]:
    """File name -> attribute value for every CelebA photo in the shared set (e.g. ``Eyeglasses``)."""
    d = celeba_dir(root)
    with open(d / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or attribute not in rows[0]:
        raise ValueError(f"unknown CelebA attribute {attribute!r}")
    return {r["file"]: r[attribute] == "1" for r in rows}


# A clear-lens (not sunglasses) CelebA Eyeglasses photo: the default appearance/style reference.
DEFAULT_REFERENCE = "000152.jpg"


def default_reference_path(root: Path | None = None) -> Path:
    p = celeba_dir(root) / DEFAULT_REFERENCE
    if not p.is_file():
        raise FileNotFoundError(f"default reference {p} not found (shared data); pass a reference image")
    return p
