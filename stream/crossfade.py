"""Per-face blend weights that move a new keyframe layer in over N frames without a pop (pure).

A face shows a mix of layers: weights per layer id, summing to at most 1; the remainder is the optics-only
try-on underneath. Every frame the weights take one step towards the target (the newest layer, or none):
the target gains ``1/N`` and the others together lose ``1/N`` (proportionally, so an interrupted fade
keeps its proportions), hence no weight ever changes by more than ``1/N`` per frame, whatever arrives when.

Cross-dissolving A into B keeps the sum at 1 throughout, so where both layers are opaque the frame
underneath never shows through mid-fade (``stream.layer_composite`` mixes them premultiplied).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

Weights = dict[Hashable, float]

_EPS = 1e-9  # float steps of 1/N add up to 1 - 1e-16, not 1: snap within this


def ramp_weight(step: int, frames: int) -> float:
    """Weight of a layer ``step`` frames after it started fading in from nothing (step 0 is the first
    frame it shows): (step + 1) / N, reaching 1 on frame N - 1. ``frames`` = 1 swaps at once."""
    if frames < 1:
        raise ValueError(f"crossfade frames must be >= 1, got {frames}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0, (step + 1) / frames)


def fade_step(weights: Mapping[Hashable, float], target: Hashable | None, frames: int) -> Weights:
    """One frame of fading: ``target`` (None: back to no layer) gains 1/N, the others lose 1/N in total.

    Layers that reach weight 0 are dropped from the result, so the caller can free them.
    """
    if frames < 1:
        raise ValueError(f"crossfade frames must be >= 1, got {frames}")
    delta = 1.0 / frames
    others = {k: w for k, w in weights.items() if k != target and w > _EPS}
    out: Weights = {}
    total = sum(others.values())
    if total > 0:
        keep = max(0.0, total - delta) / total  # everyone shrinks by the same factor: proportions kept
        out = {k: w * keep for k, w in others.items() if w * keep > _EPS}
    if target is not None:
        t = min(1.0, weights.get(target, 0.0) + delta)
        # The sum stays <= 1: the others shrank by delta (or to 0) while the target grew by at most delta.
        out[target] = 1.0 if t > 1.0 - _EPS else t
    return out


def is_settled(weights: Mapping[Hashable, float], target: Hashable | None) -> bool:
    """True once only the target shows (fully), or nothing does for target None."""
    if target is None:
        return not weights
    return len(weights) == 1 and weights.get(target, 0.0) >= 1.0
