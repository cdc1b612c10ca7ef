"""Undo the refraction of glasses someone is wearing: the eyes appear as without the lenses.

The worn frame is modelled by a catalogue frame placed on the tracked face (its lens opening is
where the refraction applies). Per frame: placement -> face depth -> forward warp s traced with a
margin -> fixed-point inverse s⁻¹ -> one remap per lens ROI; pixels with no preimage (the ring a
plus lens hides) are inpainted. ``rx=auto`` estimates the sphere from the rim (models.optics.estimation)
over the first frames and leaves the video untouched until the estimate is confident. Evidence keeps
accumulating past ``auto_frames`` while it is not (a frame with a bad track or a blink dilutes the
average, glasses put on after the stream started need frames of their own); after ``auto_max_frames``
the analysis stops and the video stays as it is (the stats say so; any new settings restart it).

The catalogue frame is first fitted to the rim seen in the video (size, aspect, height on the nose:
models.optics.frame_fit) over ``fit_frames`` frames, which pass through untouched. ``frame=detect``
is no free-form outline detector: it fits the "oval" catalogue shape, the most generic one.

``engine=neural`` replaces the inverse warp with the prescription-conditioned generator (mode remove) on
the aligned face crop, pasted back only inside the fitted lens openings; fitting and rx=auto are shared.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.optics.estimation import SphereEstimate, SphereEstimator
from models.optics.filter_params import build_rx, check_pd, frame_names, load_frame
from models.optics.frame_fit import FrameFitter
from models.optics.inversion import apply_inverse, invert_warp
from models.optics.prescription import Prescription, with_sphere
from models.optics.scene import FaceOptics, OpticsOptions, face_optics, lens_powers, place
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

log = logging.getLogger(__name__)
FRAMES = frame_names()
DETECT_FALLBACK_FRAME = "oval"
ENGINES = ("optics", "neural")
LENS_FEATHER = 0.012  # lens-edge blend of the neural engine, fraction of the crop side (the rim hides it)


@dataclass
class RemoveParams:
    rx: str = param("auto", help="the worn prescription as written ('-4.25 -1.00 x 180'), or 'auto' to estimate "
                    "the sphere from the video")
    frame: str = param("round", help="catalogue shape closest to the worn frame, fitted to the video ('detect' = "
                       "fit the oval shape)",
                       choices=(*FRAMES, "detect") if FRAMES else None)
    strength: float = param(1.0, help="how much of the lens effect to undo", min=0.0, max=1.0)
    lens: str = param("both", help="which lenses to correct", choices=("both", "right", "left"))
    # Unlike tryon, no iris rescaling: the frame fit measures the worn rim at the tracker's scale, and
    # rescaling the head afterwards would move the fitted rim off the real one.
    pd: float = param(0.0, help="distance PD in mm (0 = the tracked pupils)", min=0.0, max=80.0)
    vertex_mm: float = param(12.0, help="lens back vertex to cornea", min=5.0, max=25.0)
    pantoscopic_deg: float = param(8.0, help="lens tilt, bottoms towards the cheeks", min=0.0, max=20.0)
    anchor: str = param("eyes", help="frame rigid with the head (eye corners) or centred on the pupils (follows gaze)",
                        choices=("eyes", "pupils"))
    fit_frames: int = param(5, help="frames used to fit the frame's size and height to the video (0 = as listed)",
                            min=0, max=60)
    auto_frames: int = param(12, help="rx=auto: frames to analyse before correcting", min=1, max=300)
    auto_max_frames: int = param(60, help="rx=auto: frames analysed at most while the estimate is not confident "
                                 "(then the video is left as it is)", min=1, max=600)
    auto_confidence: float = param(0.4, help="rx=auto: minimum confidence before correcting", min=0.0, max=1.0)
    rimless: bool = param(False, help="rx=auto: the worn glasses have no rim hiding the lens edge")
    auto_background: bool = param(True, help="rx=auto: analyse on a background thread (the video never waits; "
                                  "`rxstream process` always analyses on the frame path)")
    engine: str = param("optics", help="undo the lenses by inverting the ray-traced optics or with the "
                        "prescription-conditioned generator (neural; needs its weights)", choices=ENGINES)
    neural_size: int = size_param("engine=neural: generator crop side in pixels (only sizes with weights)")
    backend: str = backend_param()

    def __post_init__(self) -> None:
        check_pd(self.pd)
        if self.auto_max_frames < self.auto_frames:
            raise ValueError(f"auto_max_frames {self.auto_max_frames} < auto_frames {self.auto_frames}: it is the "
                             "most frames analysed, auto_frames the fewest")


class Remove(LensGenerator, Filter):
    name = "remove"
    description = "Undo worn glasses' refraction (minus lenses shrink the eyes; this restores them)."
    Params = RemoveParams
    needs_faces = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._pool: ThreadPoolExecutor | None = None
        self._file_mode = False  # set by prepare(): no real-time budget, so rx=auto never runs in the background
        self._derive(self.params)

    def _derive(self, p: RemoveParams) -> None:
        self._auto = p.rx.strip().lower() == "auto"
        rx = build_rx("plano" if self._auto else p.rx, "", "", p.pd, p.vertex_mm)
        self._frame = load_frame(DETECT_FALLBACK_FRAME if p.frame == "detect" else p.frame)
        self._opts = OpticsOptions(strength=p.strength, lenses=p.lens, pantoscopic_deg=p.pantoscopic_deg,
                                   anchor=p.anchor, margin_px=3)
        self._estimator = SphereEstimator() if self._auto else None
        self._pending: Future[bool] | None = None  # a background add_frame of the current estimator
        self._fitter = FrameFitter(self._frame) if p.fit_frames > 0 else None
        self.estimate: SphereEstimate | None = None
        self._gave_up = False  # rx=auto: auto_max_frames analysed without a confident estimate
        self._set_rx(rx)
        self._start_models(p)

    def _start_models(self, p: RemoveParams) -> None:
        gen = None
        if p.engine == "neural":
            gen = start_generator(self._rx, "remove", p.strength, p.lens, p.neural_size, p.backend, self.concurrent)
        self._use_generator(gen)

    def _set_rx(self, rx: Prescription) -> None:
        self._rx = rx
        self._powers = lens_powers(rx)

    def _update_estimate(self, image: np.ndarray, ctx: FrameContext) -> None:
        """Feed the sphere estimator (~0.1-0.2 s a frame: on a worker thread unless auto_background is off)."""
        est = self._estimator
        assert est is not None
        if self._pending is not None:
            if not self._pending.done():
                return
            pending, self._pending = self._pending, None
            try:
                pending.result()
            except Exception as e:  # bad geometry in one frame: skip it, keep estimating
                log.warning("remove: sphere estimation skipped a frame: %s", e)
            self._check_estimate()
            if self.estimate is not None:
                return
        if est.frames >= self.params.auto_max_frames or not ctx.faces:
            return
        opts = replace(self._opts, strength=0.0)  # placement and depth only
        fo = face_optics(ctx.faces[0], ctx.camera, self._rx, self._frame, opts, self._powers)
        rim = 0.0 if self.params.rimless else rim_width_px(fo.lenses)
        if self.params.auto_background and not self._file_mode:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rx-estimate")
            self._pending = self._pool.submit(est.add_frame, image.copy(), fo.lenses, fo.depth, ctx.camera, rim)
            return
        est.add_frame(image, fo.lenses, fo.depth, ctx.camera, rim_px=rim)
        self._check_estimate()

    def _check_estimate(self) -> None:
        est = self._estimator
        e = est.estimate() if est is not None else None
        p = self.params
        if e is not None and e.frames >= p.auto_frames and e.confidence >= p.auto_confidence:
            self.estimate = e
            self._set_rx(with_sphere(self._rx, round(e.sphere * 4.0) / 4.0))  # prescriptions come in 0.25 D
            log.info("remove: estimated sphere %.2f D (confidence %.2f over %d frames)", e.sphere, e.confidence,
                     e.frames)
        elif est is not None and est.frames >= p.auto_max_frames:
            self._gave_up = True
            log.warning("remove: rx=auto found no confident sphere in %d frames (best %s); the video is left as "
                        "it is: enter the prescription (rx) to correct it", est.frames,
                        "none" if e is None else f"{e.sphere:+.2f} D at confidence {e.confidence:.2f}")

    def estimate_status(self) -> str:
        """rx=auto's progress for the stats overlay: analysing, the estimate in use, or given up."""
        est, e = self._estimator, self.estimate
        if e is not None:
            return f"{e.sphere:+.2f} D ({e.cue}, confidence {e.confidence:.2f}, {e.frames} frames)"
        if self._gave_up:
            return f"not measurable in {self.params.auto_max_frames} frames: video left as it is"
        n, p = (0 if est is None else est.frames), self.params
        if n < p.auto_frames:
            return f"analysing {n}/{p.auto_frames} frames"
        return f"analysing {n} frames (not yet confident; at most {p.auto_max_frames})"

    def models(self) -> dict[str, dict[str, Any]]:
        out = super().models()
        if self._auto:
            out["rx_estimate"] = {"state": self.estimate_status()}
        return out

    def prepare(self, timeout: float | None = None) -> None:
        """File mode: a file has no real-time budget, so rx=auto analyses each frame before it is written
        (the corrected video starts at a frame that does not depend on timing, and every analysed frame
        counts) instead of on a background thread that frames pass while it works."""
        super().prepare(timeout)
        self._file_mode = True

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _update_fit(self, image: np.ndarray, ctx: FrameContext) -> bool:
        """Feed the frame fitter; True once the fit is done (the fitted frame is then in use)."""
        fitter = self._fitter
        if fitter is None:
            return True
        fitter.add_frame(image, ctx.faces[0], ctx.camera)
        if fitter.frames < self.params.fit_frames:
            return False
        self._frame = fitter.best()
        self._fitter = None
        log.info("remove: fitted frame %s to %.1f x %.1f mm", self._frame.name, self._frame.lens_width_mm,
                 self._frame.lens_height_mm)
        return True

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        if not ctx.faces:
            return image
        if self._fitter is not None:
            try:
                self._update_fit(image, ctx)
            except ValueError as e:
                raise FilterError(f"frame fit: {e}") from None
            return image  # until the worn frame is located, leave the video as it is
        if self._auto and self.estimate is None:
            self._update_estimate(image, ctx)
            if self.estimate is None:
                return image  # not confident yet: show the frame as it is
        if self._gen is not None:
            return self._apply_neural(image, ctx, self._gen)
        inverses = [invert_warp(w) for fo in self.optics(ctx) for w in fo.warps]
        return apply_inverse(image, inverses)

    def optics(self, ctx: FrameContext) -> list[FaceOptics]:
        """The worn lenses' placement, face depth and forward warps (traced with a margin) per face."""
        out = []
        for face in ctx.faces:
            try:
                out.append(face_optics(face, ctx.camera, self._rx, self._frame, self._opts, self._powers))
            except ValueError as e:
                raise FilterError(f"face {face.face_id}: {e}") from None
        return out

    def begin(self, image: np.ndarray, ctx: FrameContext) -> None:
        """The generator's heads on the crops of the faces predicted for this frame, while it is tracked (once the
        worn frame is fitted and the prescription known)."""
        self._begun = None
        gen, p = self._gen, self.params
        if gen is None or p.strength <= 0 or self._fitter is not None or (self._auto and self.estimate is None):
            return
        try:
            conds = generator_conditions(self._rx, "remove", p.strength, p.lens)
        except ValueError:
            return  # apply reports it
        self._begin_lenses(image, ctx, conds)

    def _apply_neural(self, image: np.ndarray, ctx: FrameContext, gen: FaceModel) -> np.ndarray:
        p = self.params
        begun, self._begun = self._begun, None
        if p.strength <= 0:
            return image
        size = p.neural_size
        feather = LENS_FEATHER * size
        try:
            conds = generator_conditions(self._rx, "remove", p.strength, p.lens)
        except ValueError as e:  # e.g. an rx=auto estimate outside the generator's range
            raise FilterError(f"engine=neural: {e}") from None
        t0 = time.perf_counter()
        outlines = []
        for face in ctx.faces:
            try:
                _, lenses, _ = place(face, ctx.camera, self._rx, self._frame, self._opts)
            except ValueError as e:
                raise FilterError(f"face {face.face_id}: {e}") from None
            outlines.append({lens.side: lens.outline_px for lens in lenses})
        return generate_in_lenses(gen, begun, image, ctx, conds, outlines, feather, t0, self.name)


def rim_width_px(lenses: tuple[Any, ...]) -> float:
    """Median face-on rim width in pixels from the placement's inner and outer rim outlines (0 if unknown)."""
    widths = []
    for lens in lenses:
        outer = getattr(lens, "rim_outer_px", None)
        if outer is None:
            continue
        inner = np.asarray(lens.outline_px, np.float64)
        outer = np.asarray(outer, np.float64)
        if inner.shape == outer.shape:
            widths.append(float(np.median(np.linalg.norm(outer - inner, axis=1))))
    return float(np.median(widths)) if widths else 0.0
