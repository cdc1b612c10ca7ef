"""Region masks in aligned-crop coordinates, from the tracker's 478 mediapipe landmarks.

Every mask is a float32 (S, S) array in [0, 1] on the pixel grid of a ``models.align`` crop (pixel (i, j)
covers [j, j+1) x [i, i+1), as cv2 draws). Margins are fractions of the inter-ocular distance (eye-corner
midpoints), so one configuration serves any crop size and face scale.

Regions:

* **glasses**: the eyes/brows band from temple to temple, where a frame sits: the convex hull of the upper
  brows (raised), the temples and face sides at eye height, and the arcs under the eyes (lowered, so deep
  lenses such as aviators fit), slightly dilated. ``tryon_masks`` adds the rendered frame's own mask.
* **nose**, **mouth**: hulls of mediapipe's nose and outer-lip landmarks.
* **hair** (approximate): a ring around the face oval, above the eye line. The mesh has no hair points, so
  this is where hair usually is, not a segmentation; the channel mappings only need the membership to be
  right on average.
* **skin** and **background**: the rest of the face oval, and everything else.

``feature_partition`` assigns every pixel to exactly one of these (priority glasses > mouth > nose > skin >
hair > background): the memberships channel mappings are measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.align import anchor_points

RIGHT_BROW_UPPER = (70, 63, 105, 66, 107)
LEFT_BROW_UPPER = (300, 293, 334, 296, 336)
# Temples near the ears at eye height, then the face sides a little lower (where lens bottoms end).
SIDES = (162, 127, 234, 389, 356, 454)
RIGHT_UNDER_EYE = (111, 117, 118, 119, 120, 121)
LEFT_UNDER_EYE = (340, 346, 347, 348, 349, 350)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
# mediapipe's FACE_LANDMARKS_FACE_OVAL in order around the face (tests check it against mediapipe).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip

FEATURES = ("glasses", "mouth", "nose", "hair")  # regions an edit or retrieval can select
PARTITION = ("glasses", "mouth", "nose", "skin", "hair", "background")  # priority order
FEATURE_ALIASES = {"eyes": "glasses"}


@dataclass(frozen=True)
class MaskConfig:
    """Margins as fractions of the inter-ocular distance (iod)."""

    brow_raise: float = 0.12  # frames reach a little above the brows
    under_eye_drop: float = 0.30  # ... and well below the lower lids (deep lenses)
    glasses_dilate: float = 0.05
    mouth_dilate: float = 0.08
    nose_dilate: float = 0.03
    hair_width: float = 0.55  # how far outside the face oval the hair ring reaches
    hair_below_eyes: float = 0.1  # the ring stops this far below the eye line (sideburns are not modelled)
    ignore_band: float = 0.10  # total width of the ignore band around the glasses region's edge
    frame_dilate: float = 0.03  # the rendered frame's mask is grown by this before joining the region

    def __post_init__(self) -> None:
        for name, v in vars(self).items():
            if not 0.0 <= v <= 2.0:
                raise ValueError(f"MaskConfig.{name} must be in [0, 2] (fraction of the eye distance), got {v}")


def canonical_feature(name: str) -> str:
    """Feature name as used here (``eyes`` is an alias of ``glasses``); unknown names are an error."""
    key = FEATURE_ALIASES.get(name, name)
    if key not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; choose from {sorted((*FEATURES, *FEATURE_ALIASES))}")
    return key


# -- geometry ------------------------------------------------------------------------------------
def crop_landmarks(landmarks_px: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(N, 2) landmark x, y mapped by the 2x3 frame -> crop matrix ``m`` (from ``models.align``)."""
    lm = np.asarray(landmarks_px, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] < 2 or not np.all(np.isfinite(lm[:, :2])):
        raise ValueError(f"landmarks must be a finite (N, 2+) array, got shape {lm.shape}")
    m = np.asarray(m, dtype=np.float64)
    return lm[:, :2] @ m[:, :2].T + m[:, 2]


def _check_landmarks(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2 or not np.all(np.isfinite(lm[:, :2])):
        raise ValueError(f"need finite (478, 2) crop landmarks, got shape {lm.shape}")
    return lm[:, :2]


def face_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(eye midpoint, unit 'down' vector from the eyes towards the mouth, inter-ocular distance)."""
    right_eye, left_eye, mouth = anchor_points(lm)
    mid = (right_eye + left_eye) / 2.0
    iod = float(np.linalg.norm(left_eye - right_eye))
    down = mouth - mid
    n = float(np.linalg.norm(down))
    if iod < 1e-6 or n < 1e-6:
        raise ValueError("degenerate landmarks: eyes or mouth coincide")
    return mid, down / n, iod


# -- rasterisation -------------------------------------------------------------------------------
def polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: 1 where the pixel centre (j + 0.5, i + 0.5) lies inside the polygon.

    An exact point-in-polygon test (matplotlib's path), so areas are closed-form: a 40 px square covers
    1600 pixels (cv2's scan conversion adds a boundary row and column)."""
    from matplotlib.path import Path

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 3 or not np.all(np.isfinite(pts)):
        raise ValueError(f"a polygon needs at least 3 finite points, got {pts.shape}")
    c = np.arange(size, dtype=np.float64) + 0.5
    x0, y0 = np.clip(np.floor(pts.min(axis=0)).astype(int), 0, size)
    x1, y1 = np.clip(np.ceil(pts.max(axis=0)).astype(int) + 1, 0, size)
    out = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    gx, gy = np.meshgrid(c[x0:x1], c[y0:y1])
    inside = Path(pts).contains_points(np.column_stack([gx.ravel(), gy.ravel()]))
    out[y0:y1, x0:x1] = inside.reshape(gx.shape)
    return out


def hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    """The convex hull of ``points`` filled."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    return polygon_mask(cv2.convexHull(pts).reshape(-1, 2), size)


def _disc(radius_px: float) -> np.ndarray:
    r = max(0, round(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary dilation (mask > 0.5) by a disc of ``radius_px`` (rounded to whole pixels)."""
    b = (np.asarray(mask) > 0.5).astype(np.uint8)
    return cv2.dilate(b, _disc(radius_px)).astype(np.float32) if radius_px >= 0.5 else b.astype(np.float32)


def erode(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary erosion by a disc of ``radius_px``; outside the image counts as outside the mask."""
    b = (np.asarray(mask) > 0.5).astype(np.uint8)
    if radius_px < 0.5:
        return b.astype(np.float32)
    return cv2.erode(b, _disc(radius_px), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)


def edge_band(mask: np.ndarray, width_px: float) -> np.ndarray:
    """Pixels within about ``width_px / 2`` of the mask's edge: dilate(r) minus erode(r), r = width / 2."""
    r = width_px / 2.0
    return np.clip(dilate(mask, r) - erode(mask, r), 0.0, 1.0)


def feather(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-softened mask in [0, 1] (alpha for compositing)."""
    m = np.asarray(mask, np.float32)
    if sigma_px <= 0:
        return m.copy()
    return np.clip(cv2.GaussianBlur(m, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE), 0.0, 1.0)


# -- regions -------------------------------------------------------------------------------------
def glasses_region(lm: np.ndarray, size: int, cfg: MaskConfig = MaskConfig()) -> np.ndarray:
    """Eyes/brows band from temple to temple (see the module doc)."""
    lm = _check_landmarks(lm)
    _, down, iod = face_axes(lm)
    brows = lm[list(RIGHT_BROW_UPPER + LEFT_BROW_UPPER)] - cfg.brow_raise * iod * down
    under = lm[list(RIGHT_UNDER_EYE + LEFT_UNDER_EYE)] + cfg.under_eye_drop * iod * down
    hull = hull_mask(np.vstack([brows, lm[list(SIDES)], under]), size)
    return dilate(hull, cfg.glasses_dilate * iod)


def face_oval_mask(lm: np.ndarray, size: int) -> np.ndarray:
    return polygon_mask(_check_landmarks(lm)[list(FACE_OVAL)], size)


def hair_region(lm: np.ndarray, size: int, cfg: MaskConfig = MaskConfig()) -> np.ndarray:
    """Approximate hair: a ring of ``hair_width`` iod around the face oval, above the eye line."""
    lm = _check_landmarks(lm)
    mid, down, iod = face_axes(lm)
    oval = face_oval_mask(lm, size)
    ring = np.clip(dilate(oval, cfg.hair_width * iod) - oval, 0.0, 1.0)
    c = np.arange(size, dtype=np.float64) + 0.5
    # signed distance below the eye line, along the face's own down axis (heads may be rolled)
    below = (c[None, :] - mid[0]) * down[0] + (c[:, None] - mid[1]) * down[1]
    return ring * (below <= cfg.hair_below_eyes * iod).astype(np.float32)


def feature_masks(lm: np.ndarray, size: int, cfg: MaskConfig = MaskConfig()) -> dict[str, np.ndarray]:
    """Each feature region on its own (they may overlap; see ``feature_partition`` for a partition)."""
    lm = _check_landmarks(lm)
    _, _, iod = face_axes(lm)
    return {
        "glasses": glasses_region(lm, size, cfg),
        "mouth": dilate(hull_mask(lm[list(LIPS_OUTER)], size), cfg.mouth_dilate * iod),
        "nose": dilate(hull_mask(lm[list(NOSE)], size), cfg.nose_dilate * iod),
        "hair": hair_region(lm, size, cfg),
    }


def feature_partition(lm: np.ndarray, size: int, cfg: MaskConfig = MaskConfig()) -> np.ndarray:
    """(len(PARTITION), size, size) float32 one-hot memberships (each pixel in exactly one region),
    in ``PARTITION`` order."""
    masks = feature_masks(lm, size, cfg)
    masks["skin"] = face_oval_mask(lm, size)
    out = np.zeros((len(PARTITION), size, size), np.float32)
    free = np.ones((size, size), np.float32)
    for k, name in enumerate(PARTITION[:-1]):
        out[k] = masks[name] * free
        free = free * (1.0 - masks[name])
    out[-1] = free
    return out


@dataclass(frozen=True)
class TryonMasks:
    """What the two-stage optimisation needs, all (S, S) float32 in {0, 1} except ``alpha``.

    ``region``: where the glasses go (band from the landmarks, joined with the rendered frame); ``ignore``:
    a band around the region's edge where neither loss applies (the frame's outline and the decoder's blur
    there belong to neither side); ``inner``: region minus ignore (structure, appearance, style losses);
    ``face``: face oval minus region and ignore (identity loss); ``frame``: the rendered frame's own mask
    (zeros when there is none); ``alpha``: the feathered region, the try-on layer's opacity.
    """

    region: np.ndarray
    ignore: np.ndarray
    inner: np.ndarray
    face: np.ndarray
    frame: np.ndarray
    alpha: np.ndarray


def tryon_masks(
    lm: np.ndarray,
    size: int,
    frame_alpha: np.ndarray | None = None,
    cfg: MaskConfig = MaskConfig(),
    feather_sigma: float = 0.03,
) -> TryonMasks:
    """Masks for a keyframe crop with landmarks ``lm`` (crop coordinates). ``frame_alpha`` (S, S): the
    rendered frame's coverage in the crop, joined (dilated) into the region; ``feather_sigma`` in iod."""
    lm = _check_landmarks(lm)
    _, _, iod = face_axes(lm)
    region = glasses_region(lm, size, cfg)
    frame = np.zeros((size, size), np.float32)
    if frame_alpha is not None:
        if frame_alpha.shape != (size, size):
            raise ValueError(f"frame_alpha must be ({size}, {size}), got {frame_alpha.shape}")
        frame = (np.asarray(frame_alpha) > 0.5).astype(np.float32)
        region = np.maximum(region, dilate(frame, cfg.frame_dilate * iod))
    ignore = edge_band(region, cfg.ignore_band * iod)
    inner = region * (1.0 - ignore)
    face = face_oval_mask(lm, size) * (1.0 - region) * (1.0 - ignore)
    return TryonMasks(region, ignore, inner, face, frame, feather(region, feather_sigma * iod))
