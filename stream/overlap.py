"""Which networks of a filter chain start before the frame is tracked, side by side, on one CPU thread each.

The face tracker (mediapipe) runs on one core; the networks need the faces it finds. Faces move little from
one frame to the next, so a network can start on the crop of the *previous* frame's faces while the tracker
works on this one, and its result be pasted with that crop's own matrix (exact geometry) and weights (face
outline, lens openings) from the tracked faces, if the crop moved by at most ``neural.MAX_DRIFT`` of its side.
Otherwise, and on a face's first frame, the filter runs the frame in turn.

Which filters: the first of the chain (its input is the frame as it entered), and a later one whose early work
is composed on the frame it is given (the generator's *heads*: field, residual, mask, composed on the restored
crop) when every filter before it keeps pixels where they are (the restorer). On the 2-core CI machine two
1-thread ONNX Runtime sessions side by side beat two 2-thread ones in turn (about 1.35x), so every network that
starts early takes one thread (``Filter.set_concurrent``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream.filters.base import Filter


@dataclass(frozen=True)
class OverlapPlan:
    early: frozenset[int] = frozenset()  # chain positions whose ``begin`` runs before tracking, one thread each


def plan_overlap(chain: Sequence[Filter], enabled: bool = True) -> OverlapPlan:
    if not enabled:
        return OverlapPlan()
    early = set()
    for k, f in enumerate(chain):
        if not (f.can_begin and f.needs_faces):
            continue
        if k == 0 or (f.begin_composes and all(g.preserves_geometry for g in chain[:k])):
            early.add(k)
    return OverlapPlan(frozenset(early))
