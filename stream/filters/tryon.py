"""Virtual try-on with real prescription optics: what the face looks like through the lenses.

Per frame and face: glasses placement (models.glasses) -> face depth from the mesh -> thin-lens ray
trace per lens ROI -> one cv2.remap per lens -> tint and frame drawn on top.

``engine=neural`` replaces the ray trace with the prescription-conditioned generator (mode add) on the
aligned face crop, pasted back only inside the placed lens openings; placement, frame and tint drawing
are the same as the optics engine's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.glasses.placement import IrisScale
from models.glasses.render import RenderStyle, render_glasses
from models.glasses.user_png import read_png_frame, render_png_frame
from models.optics.filter_params import build_rx, check_pd, frame_names, load_frame, parse_rgba
from models.optics.prescription import LENS_INDICES
from models.optics.refraction import apply_warps
from models.optics.scene import FaceOptics, OpticsOptions, face_optics, lens_powers, place
from stream.face import Face
from stream.filters.base import Filter, FilterError, FrameContext, param
from stream.filters.neural import (
    FaceModel,
    LensGenerator,
    backend_param,
    generate_in_lenses,
    generator_conditions,
    size_param,
    start_generator,
)

FRAMES = frame_names()
ENGINES = ("optics", "neural")
LENS_FEATHER = 0.012  # lens-edge blend of the neural engine, fraction of the crop side (the rim hides it)


@dataclass
class TryonParams:
    rx: str = param("-4.00", help="prescription for both eyes, as written: '-4.25 -1.00 x 180', '+2 DS', "
                    "'OD -2 -0.5 x 10 OS -1.75', prism '2Δ BI'")
    od: str = param("", help="right eye only (overrides rx), e.g. '-3.50 -0.75 x 170'")
    os: str = param("", help="left eye only (overrides rx)")
    frame: str = param("round", help="frame from the catalogue", choices=FRAMES or None)
    png: str = param("", help="path to your own glasses: a front-view .png whose lens openings are transparent "
                     "(sized like the catalogue frame's A+DBL)")
    color: str = param("", help="frame colour #RRGGBB (empty: the catalogue's)")
    tint: str = param("#00000000", help="lens tint #RRGGBBAA (alpha = strength at the top)")
    opacity: float = param(1.0, help="multiplies the tint alpha", min=0.0, max=1.0)
    gradient: float = param(0.0, help="tint fades towards the bottom of the lens (0 = uniform)", min=0.0, max=1.0)
    strength: float = param(1.0, help="scales the refraction (0 = none, 1 = physical)", min=0.0, max=1.0)
    lens: str = param("both", help="which lenses refract", choices=("both", "right", "left"))
    refraction: bool = param(True, help="bend the view through the lenses")
    draw_frame: bool = param(True, help="draw the frame and tint on top")
    pd: float = param(0.0, help="distance PD in mm (0 = measure from the irises)", min=0.0, max=80.0)
    vertex_mm: float = param(12.0, help="lens back vertex to cornea", min=5.0, max=25.0)
    pantoscopic_deg: float = param(8.0, help="lens tilt, bottoms towards the cheeks", min=0.0, max=20.0)
    anchor: str = param("eyes", help="frame rigid with the head (eye corners) or centred on the pupils (follows gaze)",
                        choices=("eyes", "pupils"))
    index: float = param(1.5, help="lens material refractive index", choices=LENS_INDICES)
    engine: str = param("optics", help="lens refraction from the ray-traced optics or the prescription-conditioned "
                        "generator (neural; needs its weights)", choices=ENGINES)
    neural_size: int = size_param("engine=neural: generator crop side in pixels (only sizes with weights)")
    backend: str = backend_param()

    def __post_init__(self) -> None:
        check_pd(self.pd)


class Tryon(LensGenerator, Filter):
    name = "tryon"
    description = "Glasses try-on with the prescription's real refraction (minus shrinks, plus magnifies)."
    Params = TryonParams
    needs_faces = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._iris: dict[int, IrisScale] = {}
        self._derive(self.params)

    def _derive(self, p: TryonParams) -> None:
        """Parse what does not change per frame once: prescription, powers, frame, colours."""
        rx = build_rx(p.rx, p.od, p.os, p.pd, p.vertex_mm, p.index)
        frame = load_frame(p.frame)
        color = parse_rgba(p.color, "color")[:3] if p.color.strip() else tuple(frame.color_rgb)
        tint = parse_rgba(p.tint, "tint")
        self._rx, self._frame, self._color, self._tint = rx, frame, color, tint
        self._powers = lens_powers(rx)
        self._png = None
        if p.png.strip():
            try:
                self._png = read_png_frame(p.png.strip(), frame_pd_mm=frame.frame_pd_mm)
            except ValueError as e:
                raise FilterError(f"png: {e}") from None
        self._opts = OpticsOptions(strength=p.strength if p.refraction else 0.0, lenses=p.lens,
                                   pantoscopic_deg=p.pantoscopic_deg, anchor=p.anchor, png=self._png)
        self._start_models(p)

    def _start_models(self, p: TryonParams) -> None:
        gen = None
        if p.engine == "neural":
            gen = start_generator(self._rx, "add", self._opts.strength, p.lens, p.neural_size, p.backend,
                                  self.concurrent)  # fmt: skip
        self._use_generator(gen)

    def _face_options(self, face: Face, ctx: FrameContext) -> OpticsOptions:
        """Per face: without a given PD, the glasses' scale comes from that person's iris size.

        mediapipe's depth assumes an average head, which makes glasses ~15% too small on a small face;
        the iris (11.7 mm in nearly everyone) gives the true scale once a running median has settled.
        """
        if self.params.pd > 0:
            return self._opts
        pd = self._iris.setdefault(face.face_id, IrisScale()).update(face, ctx.camera)
        return self._opts if pd is None else replace(self._opts, pd_mm=float(np.clip(pd, 45.0, 80.0)))

    def _forget_lost_faces(self, ctx: FrameContext) -> None:
        live = {f.face_id for f in ctx.faces}
        for fid in [k for k in self._iris if k not in live]:
            del self._iris[fid]

    def optics(self, ctx: FrameContext) -> list[FaceOptics]:
        out = []
        self._forget_lost_faces(ctx)
        for face in ctx.faces:
            try:
                opts = self._face_options(face, ctx)
                out.append(face_optics(face, ctx.camera, self._rx, self._frame, opts, self._powers))
            except ValueError as e:  # placement rejects implausible landmarks: skip that face this frame
                raise FilterError(f"face {face.face_id}: {e}") from None
        return out

    def placements(self, ctx: FrameContext) -> list[tuple[Any, tuple[Any, ...]]]:
        """(placement, lenses) per face, without the depth map and ray trace (the neural engine's needs)."""
        out = []
        self._forget_lost_faces(ctx)
        for face in ctx.faces:
            try:
                pl, lenses, _ = place(face, ctx.camera, self._rx, self._frame, self._face_options(face, ctx))
            except ValueError as e:
                raise FilterError(f"face {face.face_id}: {e}") from None
            out.append((pl, lenses))
        return out

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        if not ctx.faces:
            return image
        if self._gen is not None:
            return self._apply_neural(image, ctx, self._gen)
        fos = self.optics(ctx)
        out = apply_warps(image, [w for fo in fos for w in fo.warps])
        if self.params.draw_frame:
            for face, fo in zip(ctx.faces, fos, strict=True):
                out = self._draw(out, face, fo.placement, ctx, inplace=out is not image)  # never draw on the input
        return out

    def begin(self, image: np.ndarray, ctx: FrameContext) -> None:
        """The generator's heads on the crops of the faces predicted for this frame, while it is tracked."""
        self._begun = None
        if self._gen is not None and self._opts.strength > 0:
            self._begin_lenses(image, ctx, generator_conditions(self._rx, "add", self._opts.strength, self.params.lens))

    def _apply_neural(self, image: np.ndarray, ctx: FrameContext, gen: FaceModel) -> np.ndarray:
        """Generator refraction inside the placed lens openings, then the same frame and tint drawing."""
        p = self.params
        size = p.neural_size
        feather = LENS_FEATHER * size
        begun, self._begun = self._begun, None
        t0 = time.perf_counter()
        placed = self.placements(ctx)
        out = image
        if self._opts.strength > 0:
            conds = generator_conditions(self._rx, "add", self._opts.strength, p.lens)
            outlines = [{lens.side: lens.outline_px for lens in lenses} for _, lenses in placed]
            out = generate_in_lenses(gen, begun, image, ctx, conds, outlines, feather, t0, self.name)
        if p.draw_frame:
            for face, (pl, _) in zip(ctx.faces, placed, strict=True):
                out = self._draw(out, face, pl, ctx, inplace=out is not image)
        return out

    def _draw(self, image: np.ndarray, face: Face, placement: Any, ctx: FrameContext,
              inplace: bool = False) -> np.ndarray:
        """Rims, bridge, temples hidden by the head, and the tint, on top of the refracted image."""
        p = self.params
        if self._png is not None:  # the user's own frame; its lenses' alpha is their tint
            return render_png_frame(image, self._png, placement, ctx.camera)
        r, g, b, a = self._tint
        style = RenderStyle(color_rgb=self._color, tint_rgba=(r, g, b, round(a * p.opacity)), gradient=p.gradient)
        return render_glasses(image, placement, self._frame, style, face, ctx.camera, inplace=inplace)
