"""The overlap plan (which networks start before tracking, on one thread) and the picture it gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.align import crop_drift
from stream.filters.base import Filter, FrameContext
from stream.overlap import OverlapPlan, plan_overlap


class Fake(Filter):
    """A filter described only by the properties the plan reads."""

    def __init__(self, name: str, begins: bool = False, composes: bool = False, keeps: bool = False,
                 faces: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.label, self._begins, self._composes = name, begins, composes
        self.preserves_geometry = keeps  # type: ignore[misc]
        self.needs_faces = faces  # type: ignore[misc]

    @property
    def can_begin(self) -> bool:
        return self._begins

    @property
    def begin_composes(self) -> bool:
        return self._composes

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return image


def restore() -> Fake:  # its early work is its output: only from the chain's input
    return Fake("restore", begins=True, keeps=True)


def generator() -> Fake:  # heads: composed on whatever the filters before it made
    return Fake("remove", begins=True, composes=True)


def plan(*chain: Any, enabled: bool = True) -> set[int]:
    return set(plan_overlap(list(chain), enabled).early)


def test_networks_start_beside_the_tracker() -> None:
    assert plan(restore()) == {0} and plan(generator()) == {0}
    assert plan(restore(), generator()) == {0, 1}  # heads from the raw crop, composed on the restored one
    assert plan(restore(), generator(), enabled=False) == set() and plan_overlap([]) == OverlapPlan()


def test_what_cannot_start_early() -> None:
    assert plan(generator(), restore()) == {0}  # the restorer needs the generator's output
    assert plan(restore(), restore()) == {0}  # an output-only network only from the chain's input
    assert plan(Fake("tryon_optics"), generator()) == set()  # draws glasses: not the input's geometry
    assert plan(restore(), Fake("landmarks"), generator()) == {0}
    assert plan(restore(), Fake("passthrough", keeps=True), generator()) == {0, 2}
    assert plan(Fake("untracked", begins=True, faces=False)) == set()  # no faces, nothing to crop ahead


def test_crop_drift_closed_form() -> None:
    m = np.array([[0.5, 0.0, -100.0], [0.0, 0.5, -50.0]])
    assert crop_drift(m, m, 128) == 0.0
    shifted = m + np.array([[0.0, 0.0, 3.0], [0.0, 0.0, -4.0]])  # the face 3 px right, 4 px up in the crop
    assert crop_drift(m, shifted, 128) == pytest.approx(4.0)
    scaled = m * 1.05  # 5 % larger about the crop origin: the far corner moves by 0.05 * 128
    assert crop_drift(m, scaled, 128) == pytest.approx(0.05 * 128)


def test_overlap_keeps_the_picture_of_the_chain_run_in_turn(
    clip_frames: Any, landmarker_model: Any, tmp_path: Any
) -> None:
    """Shipped weights, real frames: networks started on the previous frame's crops beside the tracker, the heads
    composed on the restored crop, give the picture of the chain run in turn on the tracked faces."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from accel.model_store import ModelStore, StoreOptions, default_weights_dir, find_weights, set_shared_store
    from stream.pipeline import FramePipeline
    from tests.conftest import to_4x3

    weights = default_weights_dir()
    if not (find_weights("restorer", 128, weights) and find_weights("generator", 128, weights)):
        pytest.skip(f"no shipped 128px restorer and generator weights in {weights}")
    frames = [to_4x3(f) for f in clip_frames("liveportrait_d12", n=8).frames]
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
                # from the second frame on, both networks ran on the previous frame's crops beside the tracker
                assert ("remove.generator_heads.overlapped" in res.timings_ms) is (on and i > 0)
                assert ("restore.restorer.overlapped" in res.timings_ms) is (on and i > 0)
            d = (outs[True].astype(float) - outs[False])[np.any(outs[True] != frame, axis=2)]
            if i == 0:  # nothing to predict from: the same networks in turn (1 thread instead of 2)
                assert np.abs(d).max() <= 1
            else:  # previous frame's crops (0.5-4 crop px away): 48-54 dB measured, restoring changes 37 dB
                assert 10.0 * np.log10(255.0**2 / max(float(np.mean(d**2)), 1e-9)) >= 42.0
            restored, _ = only.process(frame, i / 10.0)
            edited += int(np.any(outs[True] != restored, axis=2).sum())
        assert edited > 500 * len(frames)  # the generator did edit the lenses
    finally:
        for p in (*pipes.values(), only):
            p.close()
        set_shared_store(old)
        store.close()
