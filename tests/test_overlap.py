"""The overlap plan: which filters start their network from the chain's input, which take one thread."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream.filters.base import Filter, FrameContext
from stream.overlap import OverlapPlan, plan_overlap


class Fake(Filter):
    """A filter described only by the three properties the plan reads."""

    def __init__(self, name: str, net: bool = False, begins: bool = False, keeps: bool = False) -> None:
        super().__init__()
        self.label, self._net, self._begins = name, net, begins
        self.preserves_geometry = keeps  # type: ignore[misc]

    @property
    def uses_network(self) -> bool:
        return self._net

    @property
    def can_begin(self) -> bool:
        return self._begins

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return image


def restore() -> Fake:
    return Fake("restore", net=True, keeps=True)


def generator() -> Fake:
    return Fake("remove", net=True, begins=True)


def plan(*chain: Any, enabled: bool = True) -> OverlapPlan:
    return plan_overlap(list(chain), enabled)


def test_generator_after_restorer_begins_early_and_both_take_one_thread() -> None:
    assert plan(restore(), generator()) == OverlapPlan(frozenset({1}), frozenset({0, 1}))
    assert plan(restore(), generator(), enabled=False) == OverlapPlan()


def test_nothing_to_overlap_with() -> None:
    assert plan(generator()) == OverlapPlan()  # first in the chain: nothing runs before it
    assert plan(Fake("passthrough", keeps=True), generator()) == OverlapPlan()  # no network before it
    assert plan(generator(), restore()) == OverlapPlan()  # the restorer needs the generator's output


def test_an_earlier_filter_that_moves_pixels_blocks_the_early_start() -> None:
    tryon = Fake("tryon", net=True, begins=True)  # draws glasses: its output is not the input's geometry
    assert plan(tryon, generator()) == OverlapPlan()
    assert plan(restore(), Fake("optics"), generator()) == OverlapPlan()
    # a geometry-keeping filter without a network in between does not matter
    assert plan(restore(), Fake("stats", keeps=True), generator()) == OverlapPlan(frozenset({2}), frozenset({0, 2}))


def test_overlap_leaves_the_picture_as_the_sequential_chain(
    clip_frames: Any, landmarker_model: Any, tmp_path: Any
) -> None:
    """Shipped weights, real frames: heads from the raw crop composed on the restored one give the picture of
    the generator run on the restored crop (the restorer keeps the geometry the heads depend on)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from accel.model_store import ModelStore, StoreOptions, default_weights_dir, find_weights, set_shared_store
    from stream.pipeline import FramePipeline
    from tests.conftest import to_4x3

    weights = default_weights_dir()
    if not (find_weights("restorer", 128, weights) and find_weights("generator", 128, weights)):
        pytest.skip(f"no shipped 128px restorer and generator weights in {weights}")
    frames = [to_4x3(f) for f in clip_frames("liveportrait_d12", n=12).frames[::3]]
    store = ModelStore(StoreOptions(weights_dir=weights, cache_dir=tmp_path / "onnx"))
    old = set_shared_store(store)
    remove = {"name": "remove", "params": {"engine": "neural", "rx": "-4.00 -1.00 x 20", "fit_frames": 0}}
    pipes = {on: FramePipeline([{"name": "restore"}, remove], overlap=on) for on in (True, False)}
    only = FramePipeline("restore")
    try:
        for p in (*pipes.values(), only):
            p.prepare(300)
        edited = 0
        for i, frame in enumerate(frames):
            outs = {}
            for on, p in pipes.items():
                outs[on], res = p.process(frame, i / 10.0)
                assert not res.errors and len(res.faces) == 1
                assert ("remove.generator_heads.overlapped" in res.timings_ms) is on
            assert np.abs(outs[True].astype(int) - outs[False]).max() <= 1
            restored, _ = only.process(frame, i / 10.0)
            edited += int(np.any(outs[True] != restored, axis=2).sum())
        assert edited > 500 * len(frames)  # the generator did edit the lenses
    finally:
        for p in (*pipes.values(), only):
            p.close()
        set_shared_store(old)
        store.close()
