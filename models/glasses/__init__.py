"""Glasses frames: catalogue, parametric lens shapes, 3-D placement on a face, rendering."""

from models.glasses.catalogue import CatalogueError, FrameSpec, get_frame, load_catalogue, outline_mm
from models.glasses.placement import GlassesPlacement, IrisScale, LensPlacement, lens_masks, place_glasses
from models.glasses.render import RenderStyle, render_glasses

__all__ = [
    "CatalogueError",
    "FrameSpec",
    "GlassesPlacement",
    "IrisScale",
    "LensPlacement",
    "RenderStyle",
    "get_frame",
    "lens_masks",
    "load_catalogue",
    "outline_mm",
    "place_glasses",
    "render_glasses",
]
