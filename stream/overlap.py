"""Which networks of a filter chain run at the same time, on one CPU thread each.

Measured on the 2-core CI machine (ONNX Runtime, 128 px crops): the restorer then the generator, each on
2 threads, cost more per frame than the two side by side on one thread each (about 1.35x at p50 and p95;
benchmarks/neural_path). A 2-thread session does not scale to 2x on these small graphs, two 1-thread
sessions do.

The generator can start before the restorer has finished because its *heads* (field, residual, mask) are
computed from the face crop as it entered the chain and composed on the restored crop afterwards
(``FaceModel.begin/finish``): the restorer keeps every pixel where it was, and the raw webcam crop is what the
generator was trained on. So a filter begins early when it can (``Filter.can_begin``), every filter before
it keeps the geometry (``Filter.preserves_geometry``) and one of them runs a network to overlap with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream.filters.base import Filter


@dataclass(frozen=True)
class OverlapPlan:
    early: frozenset[int] = frozenset()  # chain positions whose ``begin`` runs before the chain
    concurrent: frozenset[int] = frozenset()  # chain positions whose networks take one thread


def plan_overlap(chain: Sequence[Filter], enabled: bool = True) -> OverlapPlan:
    if not enabled:
        return OverlapPlan()
    early: set[int] = set()
    concurrent: set[int] = set()
    for k, f in enumerate(chain):
        if not f.can_begin or not all(g.preserves_geometry for g in chain[:k]):
            continue
        partners = {j for j in range(k) if chain[j].uses_network}
        if partners:
            early.add(k)
            concurrent |= partners | {k}
    return OverlapPlan(frozenset(early), frozenset(concurrent))
