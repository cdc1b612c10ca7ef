"""FramePipeline: chain parsing, all-or-nothing chain changes, and a stream that survives failures."""

from __future__ import annotations

import numpy as np
import pytest

from stream import filters as registry
from stream.config import TrackerConfig
from stream.filters.base import Filter, FilterError, FrameContext
from stream.pipeline import FilterSpec, FramePipeline


class FakeTracker:
    """Stands in for FaceTracker: no model, counts calls."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg, self.calls, self.closed = cfg, 0, False

    def track(self, image: np.ndarray, timestamp_s: float) -> list:
        self.calls += 1
        return []

    def close(self) -> None:
        self.closed = True


class Boom(Filter):
    name = "boom"
    needs_faces = False

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        raise RuntimeError("kaboom")


class WrongShape(Filter):
    name = "wrongshape"

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return image[:-1]


class Invert(Filter):
    name = "invert"

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return 255 - image


class Early(Filter):
    """A network that starts beside the tracker on the previous frame's faces (stream.overlap)."""

    name = "early"
    needs_faces = True

    @property
    def can_begin(self) -> bool:
        return True

    def apply(self, image: np.ndarray, ctx: FrameContext) -> np.ndarray:
        return image


@pytest.fixture(autouse=True)
def test_filters(monkeypatch):
    for cls in (Boom, WrongShape, Invert, Early):
        monkeypatch.setitem(registry.REGISTRY, cls.name, cls)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def make(chain="passthrough", factory=FakeTracker) -> FramePipeline:
    return FramePipeline(chain, TrackerConfig(), tracker_factory=factory)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("landmarks", ["landmarks"]),
        ("passthrough+landmarks", ["passthrough", "landmarks"]),
        (" passthrough , landmarks ", ["passthrough", "landmarks"]),
        (["landmarks", "passthrough"], ["landmarks", "passthrough"]),
        ([{"name": "landmarks", "params": {"points": False}}], ["landmarks"]),
    ],
)
def test_parse_chain(value, names):
    specs = FilterSpec.parse_chain(value)
    assert [s.name for s in specs] == names
    if isinstance(value, list) and isinstance(value[0], dict):
        assert specs[0].params == {"points": False}


@pytest.mark.parametrize("value", ["", "+", [], 42, [{"params": {}}], [{"name": "landmarks", "params": [1]}], [3]])
def test_parse_chain_rejects(value):
    with pytest.raises(FilterError):
        FilterSpec.parse_chain(value)


def test_bad_name_or_params_keep_the_old_chain(frame):
    pipe = make("invert")
    with pytest.raises(FilterError, match=r"unknown filter 'nope'; available: .*landmarks"):
        pipe.set_chain("passthrough+nope")
    with pytest.raises(FilterError, match="unknown parameter"):
        pipe.set_chain([{"name": "landmarks", "params": {"colour": 1}}])
    with pytest.raises(FilterError, match="axis_mm"):
        pipe.set_chain([{"name": "landmarks", "params": {"axis_mm": 1e6}}])
    assert pipe.chain == ["invert"]
    out, res = pipe.process(frame, 0.0)
    assert np.array_equal(out, 255 - frame) and res.errors == []
    assert pipe.set_chain("passthrough+landmarks") == ["passthrough", "landmarks"]
    assert pipe.chain == ["passthrough", "landmarks"]


def test_configure_validates_and_keeps_values():
    pipe = make("landmarks")
    pipe.configure("landmarks", {"axis_mm": 80})
    with pytest.raises(FilterError):
        pipe.configure("landmarks", {"axis_mm": "wide"})
    with pytest.raises(FilterError, match="not in the chain"):
        pipe.configure("invert", {})
    assert pipe.describe_chain()[0]["params"]["axis_mm"] == 80.0


@pytest.mark.parametrize("bad", ["boom", "wrongshape"])
def test_failing_filter_passes_frame_through_and_reports(frame, bad):
    pipe = make(f"invert+{bad}+invert")
    for i in range(3):  # and keeps doing so: the stream goes on
        out, res = pipe.process(frame, i / 30)
        assert np.array_equal(out, frame)  # inverted twice; the failing stage was skipped
        assert len(res.errors) == 1 and res.errors[0].startswith(f"{bad}: ")
        assert res.index == i


def test_timings_per_stage_and_tracking_only_when_needed(frame):
    pipe = make("invert+passthrough+invert")
    _, res = pipe.process(frame, 0.0)
    assert set(res.timings_ms) == {"invert", "passthrough", "invert#2"}  # duplicate names stay apart
    assert all(v >= 0 for v in res.timings_ms.values())
    assert pipe._tracker is None  # no filter needs faces: no model loaded
    pipe.set_chain("landmarks")
    _, res = pipe.process(frame, 0.04)
    assert set(res.timings_ms) == {"track", "landmarks"} and res.faces == []
    assert pipe._tracker.calls == 1


class ThreadedTracker(FakeTracker):
    """Finds one face and records the thread counts the pipeline gives it."""

    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__(cfg)
        self.threads: list[int] = []

    def set_threads(self, n: int) -> None:
        self.threads.append(n)

    def describe(self) -> dict:
        return {"state": "ready", "backend": "litert", "threads": self.threads[-1]}

    def track(self, image: np.ndarray, timestamp_s: float) -> list:
        super().track(image, timestamp_s)
        return ["face"]


@pytest.mark.parametrize(("chain", "overlap", "expected"), [
    ("early", True, [3, 1, 1]),  # a network began on frames 1 and 2: the tracker leaves it a core
    ("early", False, [3, 3, 3]),
    ("landmarks", True, [3, 3, 3]),  # nothing runs beside the tracker: all its threads
])
def test_tracker_threads_follow_what_runs_beside_it(frame, chain, overlap, expected):
    pipe = FramePipeline(chain, TrackerConfig(landmark_threads=3), tracker_factory=ThreadedTracker, overlap=overlap)
    for i in range(3):
        pipe.process(frame, i / 30)
    assert pipe._tracker.threads == expected
    assert pipe.models()["face_landmarks"] == {"filter": "track", "state": "ready", "backend": "litert",
                                               "threads": expected[-1]}  # the stats overlay shows it


def test_a_tracker_takes_one_thread_while_another_stream_is_processed(frame):
    other = FramePipeline("landmarks", TrackerConfig(landmark_threads=3), tracker_factory=ThreadedTracker)

    class Nested(ThreadedTracker):
        def track(self, image: np.ndarray, timestamp_s: float) -> list:
            other.process(image, timestamp_s)  # another stream's frame while this one is tracked
            return super().track(image, timestamp_s)

    pipe = FramePipeline("landmarks", TrackerConfig(landmark_threads=3), tracker_factory=Nested)
    pipe.process(frame, 0.0)
    pipe.process(frame, 0.04)
    assert pipe._tracker.threads == [3, 3]  # alone when it was told
    assert other._tracker.threads == [1, 1]  # told while ``pipe`` was inside process()
    other.process(frame, 0.08)
    assert other._tracker.threads == [1, 1, 3]


def test_tracker_that_fails_to_load(frame):
    attempts = []

    def broken(cfg):
        attempts.append(cfg)
        raise RuntimeError("model missing")

    pipe = make("landmarks+invert", factory=broken)
    for i in range(3):
        out, res = pipe.process(frame, i / 30)
        assert np.array_equal(out, 255 - frame) and res.faces == []
        assert res.errors == ["face tracker unavailable: model missing"]
    assert len(attempts) == 1  # not retried (and re-logged) on every frame


def test_tracker_that_raises_per_frame(frame):
    class Flaky(FakeTracker):
        def track(self, image, timestamp_s):
            raise ValueError("bad frame")

    pipe = make("landmarks", factory=Flaky)
    out, res = pipe.process(frame, 0.0)
    assert np.array_equal(out, frame) and res.errors == ["track: bad frame"] and "track" in res.timings_ms


def test_swapped_out_filters_and_tracker_are_closed(frame):
    closed = []

    class Closing(Invert):
        name = "closing"

        def close(self) -> None:
            closed.append(self)

    registry.REGISTRY["closing"] = Closing
    try:
        pipe = make("closing+landmarks")
        pipe.process(frame, 0.0)
        pipe.set_chain("passthrough")
        assert closed == []  # retired filters close on the frame thread, not the caller's
        pipe.process(frame, 0.04)
        assert len(closed) == 1
        tracker = pipe._tracker
        pipe.close()
        assert tracker.closed and pipe._tracker is None
    finally:
        del registry.REGISTRY["closing"]
