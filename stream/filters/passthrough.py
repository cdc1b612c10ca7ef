"""The identity filter: the baseline every latency number is compared with."""

from __future__ import annotations

import numpy as np

from stream.filters.base import Filter, FrameContext


class Passthrough(Filter):
    name = "passthrough"
    description = "Return the frame unchanged."

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return image
