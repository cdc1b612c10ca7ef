"""Face restoration with the codebook restorer: sharper, cleaner faces from soft or compressed webcam video.

Per frame: align every tracked face to a square crop (eyes and mouth on the FFHQ template), run the restorer
on the crops in batches (fidelity w: 0 = pure codebook, 1 = closest to the input), and paste each result
back inside the face outline (or the whole crop) with a feathered edge. Pixels outside the pasted region
are untouched. Until the model is loaded, or without weights, frames pass through and the stats say why.
At the head of a chain the restorer starts on the previous frame's crops while the frame is tracked
(``begin``; stream.overlap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.align import alignment_matrix
from stream.filters.base import Filter, FilterError, FrameContext, param
from stream.filters.neural import (
    CropJob,
    FaceModel,
    PendingRun,
    backend_param,
    check_size,
    face_alpha,
    size_param,
)

MODEL = "restorer"


@dataclass
class RestoreParams:
    fidelity: float = param(0.5, help="0 = rebuild the face from the learnt codebook, 1 = stay closest to the input",
                            min=0.0, max=1.0)  # fmt: skip
    size: int = size_param()
    backend: str = backend_param()
    region: str = param("face", help="paste back inside the face outline, or the whole aligned crop",
                        choices=("face", "crop"))  # fmt: skip
    feather: float = param(0.06, help="blend ramp at the pasted region's edge, as a fraction of the crop side",
                           min=0.0, max=0.25)  # fmt: skip


class Restore(Filter):
    name = "restore"
    description = "Neural face restoration (codebook restorer): aligned crops, batched, feathered paste-back."
    Params = RestoreParams
    needs_faces = True
    preserves_geometry = True  # the restored face is pasted where it was: a generator can start beside it

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._model: FaceModel | None = None
        self._derive(self.params)

    def _derive(self, p: RestoreParams) -> None:
        self._start_models(p)

    def _start_models(self, p: RestoreParams) -> None:
        model = FaceModel(MODEL, p.size, p.backend, threads=1 if self.concurrent else None)
        check_size(model.store, MODEL, p.size)
        if self._model is not None:
            self._model.close()
        self._model = model
        self._begun: PendingRun | None = None

    def start(self) -> None:
        assert self._model is not None
        self._model.start()

    @property
    def uses_network(self) -> bool:
        return True

    @property
    def can_begin(self) -> bool:
        return True

    def begin(self, image: np.ndarray, ctx: FrameContext) -> None:
        """The restorer on the crops of the faces predicted for this frame, while the frame is tracked."""
        assert self._model is not None
        fidelity = np.float32(self.params.fidelity)
        jobs = [CropJob(i, None, {"fidelity": fidelity}) for i in range(len(ctx.faces))]
        self._begun = self._model.begin(image, ctx, jobs)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()

    def prepare(self, timeout: float | None = None) -> None:
        assert self._model is not None
        self._model.prepare(timeout)

    def models(self) -> dict[str, dict[str, Any]]:
        assert self._model is not None
        return {MODEL: self._model.status()}

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        begun, self._begun = self._begun, None
        if not ctx.faces:
            return image
        p, size = self.params, self.params.size
        feather = p.feather * size
        assert self._model is not None
        if self._model.accepts(begun, ctx):
            assert begun is not None
            t0 = time.perf_counter()
            alphas = [face_alpha(face.landmarks_px, m, size, feather) if p.region == "face" else None
                      for face, m in zip(ctx.faces, begun.mats, strict=True)]  # fmt: skip
            ctx.timings_ms[f"{self.name}.mask"] = (time.perf_counter() - t0) * 1e3
            return self._model.finish(begun, image, alphas, feather, ctx.timings_ms, self.name)
        fidelity = np.float32(p.fidelity)
        mats, jobs = [], []
        t0 = time.perf_counter()
        for i, face in enumerate(ctx.faces):
            try:
                m = alignment_matrix(face, size)
            except ValueError as e:
                raise FilterError(f"face {face.face_id}: {e}") from None
            mats.append(m)
            alpha = face_alpha(face.landmarks_px, m, size, feather) if p.region == "face" else None
            jobs.append(CropJob(i, alpha, {"fidelity": fidelity}))
        ctx.timings_ms[f"{self.name}.mask"] = (time.perf_counter() - t0) * 1e3
        return self._model.run(image, mats, jobs, feather, ctx.timings_ms, self.name)
