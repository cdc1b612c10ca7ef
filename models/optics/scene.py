"""Per face and frame: glasses placement -> face depth -> one warp per lens (what tryon/remove share)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.glasses.placement import place_glasses
from models.glasses.user_png import png_placement
from models.optics.face_depth import FaceDepth
from models.optics.lens_geometry import pose_lenses
from models.optics.power import eye_power
from models.optics.prescription import Prescription
from models.optics.refraction import LensPower, LensWarp, lens_warps
from stream.camera import Pinhole
from stream.face import Face

DEPTH_MARGIN_PX = 32  # beyond the lenses, for rays bent outwards (strong prism, minus lens rims)
SIDES = {"both": ("right", "left"), "right": ("right",), "left": ("left",)}


@dataclass(frozen=True)
class OpticsOptions:
    strength: float = 1.0
    lenses: str = "both"  # which lenses refract: both | right | left
    vertex_mm: float | None = None  # None: the prescription's vertex distance
    pantoscopic_deg: float = 8.0
    pd_mm: float | None = None  # None: the prescription's PD, else measured from the irises
    # "pupils": lenses centred on this frame's pupils (robust when the face is seen through real lenses,
    # whose optical centres leave the pupils undisplaced); "eyes": rigid with the head from the eye
    # corners (steadier for try-on, where the face is seen without glasses).
    anchor: str = "pupils"
    png: Any | None = None  # models.glasses.user_png.PngFrame: its holes bound the lenses instead
    margin_px: int = 0  # trace this far beyond the rim (the inverse needs it)
    depth_scale: float = 0.25  # resolution of the face depth map relative to the frame


@dataclass(frozen=True)
class FaceOptics:
    face_id: int
    placement: Any | None  # models.glasses.placement.GlassesPlacement; None without a catalogue frame
    lenses: tuple[Any, ...]  # (right, left) LensPlacement-like
    depth: FaceDepth
    warps: tuple[LensWarp, ...]


def lens_powers(rx: Prescription) -> dict[str, LensPower]:
    return {side: LensPower(*eye_power(rx.eye(side))) for side in ("right", "left")}


def place(face: Face, camera: Pinhole, rx: Prescription, frame: Any | None,
          opts: OpticsOptions) -> tuple[Any | None, tuple[Any, ...], float]:
    """(placement or None, (right, left) lenses, metric scale of the scene)."""
    vertex = opts.vertex_mm if opts.vertex_mm is not None else rx.vertex_mm
    pd = opts.pd_mm if opts.pd_mm is not None else rx.total_pd_mm
    if frame is not None:
        pl = place_glasses(face, frame, camera, vertex_distance_mm=vertex, pantoscopic_deg=opts.pantoscopic_deg,
                           pd_mm=pd, anchor=opts.anchor)
        if opts.png is not None:
            pl = png_placement(opts.png, pl, camera)
        return pl, tuple(pl.lenses), float(pl.scale)
    # No catalogue frame (e.g. training pairs): round lenses centred on the pupils.
    lenses = pose_lenses(face, camera, vertex_distance_mm=vertex, pantoscopic_deg=opts.pantoscopic_deg, pd_mm=pd)
    return None, lenses, 1.0


def face_optics(face: Face, camera: Pinhole, rx: Prescription, frame: Any | None, opts: OpticsOptions,
                powers: dict[str, LensPower] | None = None) -> FaceOptics:
    """Placement, depth and warps of one face; lenses entirely off-frame are skipped."""
    placement, lenses, metric = place(face, camera, rx, frame, opts)
    outline = np.concatenate([np.asarray(lens.outline_px, np.float64) for lens in lenses])
    m = DEPTH_MARGIN_PX + opts.margin_px
    region = (*(outline.min(axis=0) - m), *(outline.max(axis=0) + m))
    depth = FaceDepth.from_face(face, camera, scale=opts.depth_scale, metric_scale=metric, region_px=region)
    powers = powers or lens_powers(rx)
    traced = [lens for lens in lenses if lens.side in SIDES[opts.lenses]]
    warps = [w for w in lens_warps(traced, [powers[lens.side] for lens in traced], depth, camera, opts.strength,
                                   opts.margin_px) if w is not None]
    return FaceOptics(face.face_id, placement, lenses, depth, tuple(warps))
