"""Keyframe scheduling for the latent try-on: policy, pose bins, worker pool, crossfade, compositing, filter.

Everything here runs without models or shared data: the latent job is a fake with the same signature as
``models.latent.job.run_latent_tryon``, gated by events so every test is deterministic.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from stream.crossfade import fade_step, is_settled, ramp_weight
from stream.face import LEFT_EYE_INNER, LEFT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_OUTER, Face
from stream.filters.base import FilterError, FrameContext
from stream.filters.tryon import Tryon
from stream.keyframe_policy import (
    KeyframeKey,
    KeyframeMark,
    PolicyConfig,
    angle_diff_deg,
    keyframe_key,
    keyframe_reason,
    pose_bin,
    pose_delta_deg,
)
from stream.keyframe_worker import KeyframeWorker, WorkerConfig
from stream.layer_composite import composite, footprint_box, prepare_layer
from tests.test_placement import synthetic_face

WAIT_S = 10.0  # generous: the CPU is shared; a correct test never comes close


# -- policy -------------------------------------------------------------------------------------------
CFG = PolicyConfig(pose_threshold_deg=10.0, timer_s=2.0)


def test_reasons_in_priority_order() -> None:
    last = KeyframeMark((0.0, 0.0, 0.0), 1.0, "round")
    assert keyframe_reason(None, (0, 0, 0), 0.0, "round", CFG) == "first"
    assert keyframe_reason(last, (30, 0, 0), 9.0, "aviator", CFG) == "item"  # item beats pose and timer
    assert keyframe_reason(last, (0, -10.0, 0), 9.0, "round", CFG) == "pose"  # pose beats the timer
    assert keyframe_reason(last, (9.99, 9.99, -9.99), 2.99, "round", CFG) is None
    assert keyframe_reason(last, (0, 0, 0), 3.0, "round", CFG) == "timer"
    assert keyframe_reason(last, (0, 0, 0), 0.5, "round", CFG) == "timer"  # clock restarted: refresh
    no_timer = PolicyConfig(pose_threshold_deg=10.0, timer_s=0.0)
    assert keyframe_reason(last, (0, 0, 0), 1e6, "round", no_timer) is None


def test_pose_delta_is_the_largest_axis_and_wraps() -> None:
    assert pose_delta_deg((10, -5, 3), (4, 5, 0)) == pytest.approx(10.0)
    assert angle_diff_deg(179.0, -179.0) == pytest.approx(2.0)
    assert angle_diff_deg(-90.0, 90.0) == pytest.approx(180.0)
    assert pose_delta_deg((0, 0, 179.0), (0, 0, -179.0)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("pose", "bin_deg", "expected"),
    [
        ((0.0, 0.0, 0.0), 10.0, (0, 0, 0)),
        ((4.99, -4.99, 5.0), 10.0, (0, 0, 1)),  # centred bins: +-5 is bin 0, 5 rounds up
        ((-5.01, 15.0, 14.99), 10.0, (-1, 2, 1)),
        ((0.0, 0.0, 190.0), 10.0, (0, 0, -17)),  # 190 = -170
        ((37.0, -37.0, 0.0), 12.0, (3, -3, 0)),
    ],
)
def test_pose_bin_closed_form(pose, bin_deg, expected) -> None:
    assert pose_bin(pose, bin_deg) == expected


def test_a_pose_keyframe_always_lands_in_a_new_bin() -> None:
    # With bins as wide as the threshold, moving at least the threshold on an axis changes that axis' bin.
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = tuple(rng.uniform(-60, 60, 3))
        step = np.zeros(3)
        step[rng.integers(3)] = rng.choice([-1, 1]) * rng.uniform(CFG.pose_threshold_deg, 30)
        b = tuple(np.asarray(a) + step)
        assert keyframe_reason(KeyframeMark(a, 0.0, "x"), b, 0.1, "x", CFG) == "pose"
        assert pose_bin(a, CFG.bin_width_deg) != pose_bin(b, CFG.bin_width_deg)


def test_key_and_bad_config() -> None:
    key = keyframe_key("s", 3, "round", (11.0, 0.0, -2.0), CFG)
    assert key == KeyframeKey("s", 3, "round", (1, 0, 0)) and key.slot == ("s", 3)
    for bad in ({"pose_threshold_deg": 0.0}, {"timer_s": -1.0}, {"bin_deg": math.nan}):
        with pytest.raises(ValueError):
            PolicyConfig(**bad)
    with pytest.raises(ValueError, match="finite"):
        pose_bin((math.nan, 0.0, 0.0), 10.0)


# -- crossfade ----------------------------------------------------------------------------------------
def test_fade_in_ramps_linearly_to_one_in_n_frames() -> None:
    w: dict = {}
    for k in range(5):
        w = fade_step(w, "a", 5)
        assert w == {"a": pytest.approx(ramp_weight(k, 5))}
        assert w["a"] == pytest.approx((k + 1) / 5)
    assert w["a"] == 1.0 and is_settled(w, "a")
    assert fade_step(w, "a", 5) == {"a": 1.0}  # settled stays settled
    assert fade_step({}, "a", 1) == {"a": 1.0}  # N = 1 swaps at once


def test_crossfade_keeps_the_sum_at_one_and_never_pops() -> None:
    n = 6
    w: dict = {"a": 1.0}
    for k in range(n):
        nw = fade_step(w, "b", n)
        assert sum(nw.values()) == pytest.approx(1.0)
        assert nw["b"] == pytest.approx((k + 1) / n)
        assert abs(nw.get("a", 0.0) - w["a"]) <= 1 / n + 1e-12
        w = nw
    assert w == {"b": 1.0}  # a fully faded out and dropped


def test_interrupted_crossfade_moves_at_most_one_step_per_frame() -> None:
    n = 4
    w: dict = {"a": 1.0}
    seq = ["b", "b", "c", "c", "b", None, None, "c", "c", "c", "c", "c", "c"]
    for target in seq:
        nw = fade_step(w, target, n)
        assert sum(nw.values()) <= 1.0 + 1e-12
        for k in set(w) | set(nw):
            assert abs(nw.get(k, 0.0) - w.get(k, 0.0)) <= 1 / n + 1e-12
        w = nw
    assert is_settled(w, "c")


def test_fade_out_to_nothing() -> None:
    w: dict = {"a": 0.5, "b": 0.5}
    for _ in range(4):
        w = fade_step(w, None, 4)
    assert w == {} and is_settled(w, None)
    with pytest.raises(ValueError):
        fade_step(w, "a", 0)


# -- compositing --------------------------------------------------------------------------------------
def square_layer(size: int, lo: int, hi: int, rgb: tuple[int, int, int], alpha: float = 1.0) -> np.ndarray:
    """(size, size, 4) float32: colour ``rgb`` (0..255) with ``alpha`` on [lo, hi)^2, transparent elsewhere."""
    layer = np.zeros((size, size, 4), np.float32)
    layer[lo:hi, lo:hi, :3] = np.asarray(rgb, np.float32) / 255.0
    layer[lo:hi, lo:hi, 3] = alpha
    return layer


def similarity(scale: float, angle_deg: float, t: tuple[float, float]) -> np.ndarray:
    """2x3 frame -> crop matrix crop = scale R(angle) frame + t."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def test_constant_square_lands_where_the_inverse_affine_says() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame.flags.writeable = False  # composite must not write into its input
    layer = prepare_layer(square_layer(64, 16, 48, (200, 100, 50)))
    m = similarity(0.5, 0.0, (-40.0, -20.0))  # crop = f / 2 - (40, 20)  <=>  f = 2 (crop + (40, 20))
    out = composite(frame, [(layer, 1.0, m)])
    # Crop pixel centres 16..47 -> frame 112..174 (x) and 72..134 (y): opaque colour, exactly.
    assert (out[74:133, 114:173] == (200, 100, 50)).all()
    # Bilinear support ends strictly inside crop (15, 48) -> frame (110, 176) x (70, 136): all else bit-exact.
    changed = (out != frame).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() > 110 and xs.max() < 176 and ys.min() > 70 and ys.max() < 136
    assert changed[72:135, 112:175].all()  # and the whole square did change (random frame: no accidental match)


def test_rotated_square_centre_and_footprint() -> None:
    frame = np.full((200, 200, 3), 17, np.uint8)
    layer = prepare_layer(square_layer(32, 12, 20, (255, 255, 255)))
    m = similarity(0.25, 90.0, (60.0, -10.0))
    out = composite(frame, [(layer, 1.0, m)])
    # Crop square centre (15.5, 15.5) -> frame f = R^T (c - t) / s, with R(90)^T (x, y) = (y, -x).
    cx, cy = np.array([15.5 - 60.0, 15.5 + 10.0]) / 0.25
    fx, fy = cy, -cx  # R^T
    assert (out[round(fy) - 8 : round(fy) + 8, round(fx) - 8 : round(fx) + 8] == 255).all()
    box = footprint_box(m, layer.support, 200, 200)
    assert box is not None
    x0, y0, x1, y1 = box
    outside = np.ones((200, 200), bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == 17).all() and (out[~outside] == 255).sum() > 0
    assert x0 < fx < x1 and y0 < fy < y1 and (x1 - x0) <= 4 * 9 + 4  # 8 crop px + bilinear reach, x4, + margin


def test_partial_weight_and_crossfade_blend_closed_form() -> None:
    frame = np.full((64, 64, 3), 100, np.uint8)
    m = similarity(1.0, 0.0, (0.0, 0.0))
    red = prepare_layer(square_layer(64, 0, 64, (250, 0, 0)))
    blue = prepare_layer(square_layer(64, 0, 64, (0, 0, 250)))
    half = composite(frame, [(red, 0.5, m)])
    np.testing.assert_array_equal(half[10, 10], [175, 50, 50])  # 0.5 * 250 + 0.5 * 100
    mix = composite(frame, [(red, 0.5, m), (blue, 0.5, m)])
    np.testing.assert_array_equal(mix[10, 10], [125, 0, 125])  # opaque dissolve: the frame does not show
    translucent = prepare_layer(square_layer(64, 0, 64, (0, 200, 0), alpha=0.25))
    np.testing.assert_array_equal(composite(frame, [(translucent, 1.0, m)])[5, 5], [75, 125, 75])


def test_an_aligned_crop_composited_back_reproduces_the_frame() -> None:
    # The layer convention is models.align's: a crop made with warp_crop(frame, m, S) and pasted with the same
    # m must land on itself (only resampling error), so a keyframe layer lines up with the face it came from.
    from models.align import alignment_matrix, warp_crop

    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    smooth = np.stack(
        [128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), 128 + 80 * np.sin((xx + yy) / 31.0)], axis=2
    )
    frame = np.clip(smooth, 0, 255).astype(np.uint8)
    face = upright_face()
    m = alignment_matrix(face, 128)
    crop = warp_crop(frame, m, 128)
    rgba = np.concatenate([crop.astype(np.float32) / 255.0, np.ones((128, 128, 1), np.float32)], axis=2)
    out = composite(frame, [(prepare_layer(rgba), 1.0, m)])
    changed = (out != frame).any(axis=2)
    assert changed.sum() > 1000  # it did paste (rounding moves some pixels by one level or more)
    assert np.abs(out.astype(int) - frame.astype(int))[changed].mean() < 2.0  # resampling error only
    box = footprint_box(m, (0, 0, 128, 128), 640, 480)
    assert box is not None
    x0, y0, x1, y1 = box
    outside = np.ones((480, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert not changed[outside].any()


def test_nothing_to_show_returns_the_frame_and_bad_layers_are_errors() -> None:
    frame = np.zeros((32, 32, 3), np.uint8)
    empty = prepare_layer(np.zeros((16, 16, 4), np.float32))
    assert empty.support is None
    m = similarity(1.0, 0.0, (0.0, 0.0))
    assert composite(frame, [(empty, 1.0, m)]) is frame
    assert composite(frame, [(prepare_layer(square_layer(16, 0, 16, (9, 9, 9))), 0.0, m)]) is frame
    far = similarity(1.0, 0.0, (500.0, 500.0))  # the layer maps far outside the frame
    assert composite(frame, [(prepare_layer(square_layer(16, 0, 16, (9, 9, 9))), 1.0, far)]) is frame
    bad = square_layer(16, 0, 16, (9, 9, 9))
    bad[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_layer(bad)
    with pytest.raises(ValueError, match="square"):
        prepare_layer(np.zeros((16, 8, 4), np.float32))
    with pytest.raises(ValueError, match="float"):
        prepare_layer(np.zeros((16, 16, 4), np.uint8))


# -- worker pool --------------------------------------------------------------------------------------
class Cancelled(Exception):
    """The fake job's cancellation exception (``models.latent.job.Cancelled`` in production)."""


@dataclass
class FakeLayer:
    rgba: np.ndarray
    size: int
    timings_ms: dict[str, float]


class FakeJob:
    """Same signature as the worker's job function. Blocks on ``gate`` while polling ``cancel`` (like the
    real latent optimisation between steps), records calls, and can be told to fail."""

    def __init__(self, layer: np.ndarray | None = None, gated: bool = False) -> None:
        self.layer = layer if layer is not None else square_layer(64, 20, 44, (0, 255, 0))
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.calls: list[Any] = []
        self.fail: str | None = None
        self.saw_cancel = threading.Event()

    def __call__(self, frame: np.ndarray, face: Face, item: Any, cancel: Callable[[], bool]) -> FakeLayer:
        self.calls.append(item)
        self.started.set()
        while not self.gate.wait(0.005):
            if cancel():
                self.saw_cancel.set()
                raise Cancelled("superseded")
        if self.fail:
            raise ValueError(self.fail)
        return FakeLayer(self.layer, self.layer.shape[0], {"optimise": 12.5})


FACE = synthetic_face()
FRAME = np.zeros((480, 640, 3), np.uint8)


def key(face_id: int = 0, bin_: tuple[int, int, int] = (0, 0, 0), session: str = "s", item: str = "round"):
    return KeyframeKey(session, face_id, item, bin_)


def make_worker(job: FakeJob, **kw: Any) -> KeyframeWorker:
    cfg = WorkerConfig(torch_threads=None, cancel_types=(Cancelled,), join_timeout_s=WAIT_S, **kw)
    return KeyframeWorker(job, cfg)


def test_newest_request_cancels_the_running_job() -> None:
    job = FakeJob(gated=True)
    w = make_worker(job)
    try:
        first = w.submit(key(bin_=(0, 0, 0)), FRAME, FACE)
        assert job.started.wait(WAIT_S) and first.state == "running"
        second = w.submit(key(bin_=(1, 0, 0)), FRAME, FACE)
        assert first.finished.wait(WAIT_S) and first.state == "cancelled" and job.saw_cancel.is_set()
        job.gate.set()
        assert second.finished.wait(WAIT_S) and second.state == "done"
        assert second.run_ms is not None and second.run_ms >= 0 and first.result is None
    finally:
        w.close()


def test_superseded_pending_job_never_runs_and_the_queue_is_bounded() -> None:
    job = FakeJob(gated=True)
    w = make_worker(job, max_pending=2)
    try:
        busy = w.submit(key(face_id=9), FRAME, FACE)
        assert job.started.wait(WAIT_S)
        a = w.submit(key(face_id=0, bin_=(0, 0, 0)), FRAME, FACE)
        b = w.submit(key(face_id=0, bin_=(0, 1, 0)), FRAME, FACE)  # same face: a is superseded
        assert a.state == "cancelled" and a.finished.is_set()
        assert w.submit(key(face_id=0, bin_=(0, 1, 0)), FRAME, FACE) is b  # same key still queued: same handle
        c = w.submit(key(face_id=1), FRAME, FACE)
        d = w.submit(key(face_id=2), FRAME, FACE)  # third pending slot: the oldest (b) is dropped
        assert b.state == "cancelled" and c.state == d.state == "pending"
        job.gate.set()
        for j in (busy, c, d):
            assert j.finished.wait(WAIT_S) and j.state == "done"
        assert job.calls == ["round"] * 3  # busy, c, d: a and b never ran
        assert w.stats()["cancelled"] == 2
    finally:
        w.close()


def test_cache_hit_avoids_a_rerun_and_refresh_reruns() -> None:
    job = FakeJob()
    w = make_worker(job, cache_size=2)
    try:
        first = w.submit(key(), FRAME, FACE)
        assert first.finished.wait(WAIT_S) and first.state == "done"
        again = w.submit(key(), FRAME, FACE)
        assert again.cached and again.state == "done" and again.result is first.result and len(job.calls) == 1
        fresh = w.submit(key(), FRAME, FACE, refresh=True)
        assert fresh.finished.wait(WAIT_S) and not fresh.cached and len(job.calls) == 2
        assert w.cached(key()) is fresh.result
        for b in ((1, 0, 0), (2, 0, 0)):  # LRU of 2: the first key is evicted
            assert w.submit(key(bin_=b), FRAME, FACE).finished.wait(WAIT_S)
        assert w.cached(key()) is None and w.stats()["cache_hits"] == 1
    finally:
        w.close()


def test_a_failing_job_is_reported_logged_once_and_the_worker_goes_on(caplog) -> None:
    job = FakeJob()
    job.fail = "bad latent"
    w = make_worker(job)
    try:
        with caplog.at_level(logging.ERROR, logger="stream.keyframe_worker"):
            for b in ((0, 0, 0), (1, 0, 0)):
                j = w.submit(key(bin_=b), FRAME, FACE)
                assert j.finished.wait(WAIT_S)
                assert j.state == "failed" and j.error == "ValueError: bad latent" and j.describe()["error"]
        assert len([r for r in caplog.records if "bad latent" in r.getMessage()]) == 1
        job.fail = None
        ok = w.submit(key(bin_=(2, 0, 0)), FRAME, FACE)
        assert ok.finished.wait(WAIT_S) and ok.state == "done" and w.cached(key()) is None  # failures not cached
    finally:
        w.close()


def test_close_cancels_the_running_job_and_joins() -> None:
    job = FakeJob(gated=True)
    w = make_worker(job)
    running = w.submit(key(face_id=0), FRAME, FACE)
    waiting = w.submit(key(face_id=1), FRAME, FACE)
    assert job.started.wait(WAIT_S)
    w.close()
    assert running.state == waiting.state == "cancelled" and job.saw_cancel.is_set()
    assert not any(t.is_alive() for t in w._threads)
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(key(), FRAME, FACE)
    w.close()  # idempotent


def test_cancel_all_and_wait_idle() -> None:
    job = FakeJob(gated=True)
    w = make_worker(job)
    try:
        running = w.submit(key(face_id=0), FRAME, FACE)
        waiting = w.submit(key(face_id=1), FRAME, FACE)
        assert job.started.wait(WAIT_S)
        assert not w.wait_idle(0.01)
        w.cancel_all()
        assert w.wait_idle(WAIT_S) and running.state == waiting.state == "cancelled"
        assert w.submit(key(face_id=2), FRAME, FACE).state == "pending"  # still open for work
    finally:
        job.gate.set()
        w.close()


def test_end_session_drops_only_that_sessions_results() -> None:
    w = make_worker(FakeJob())
    try:
        for s in ("a", "b"):
            assert w.submit(key(session=s), FRAME, FACE).finished.wait(WAIT_S)
        w.end_session("a")
        assert w.cached(key(session="a")) is None and w.cached(key(session="b")) is not None
    finally:
        w.close()


def test_torch_runs_single_threaded_inside_the_worker() -> None:
    torch = pytest.importorskip("torch")
    seen: list[int] = []
    w = KeyframeWorker(lambda *a: seen.append(torch.get_num_threads()), WorkerConfig(torch_threads=1))
    try:
        assert w.submit(key(), FRAME, FACE).finished.wait(WAIT_S) and seen == [1]
    finally:
        w.close()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is a Linux feature")
def test_worker_threads_run_at_lower_priority_than_the_frame_path() -> None:
    w = make_worker(FakeJob(), nice=7)
    try:
        assert w.submit(key(), FRAME, FACE).finished.wait(WAIT_S)  # the thread has set itself up by now
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, w._threads[0].native_id) == min(19, own + 7)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller is untouched
    finally:
        w.close()


def test_process_isolation_runs_cancels_and_survives_a_dead_child() -> None:
    import multiprocessing as mp

    from tests.keyframe_jobs import ProcCancelled, ProcJob

    ctx = mp.get_context("spawn")
    started, warmed = ctx.Event(), ctx.Event()
    cfg = WorkerConfig(isolation="process", torch_threads=None, nice=3, cancel_types=(ProcCancelled,),
                       join_timeout_s=WAIT_S)  # fmt: skip
    w = KeyframeWorker(ProcJob(started, warmed), cfg)
    frame = np.full((4, 4, 3), 2, np.uint8)
    try:
        assert w.wait_ready(120) and warmed.is_set()  # the child called warm_up() before any job
        ok = w.submit(key(item="ok"), frame, FACE)
        assert ok.finished.wait(WAIT_S) and ok.state == "done", ok.error
        child = ok.result["pid"]
        assert child != os.getpid() and ok.result["sum"] == 96
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert ok.result["nice"] == min(19, own + 3)
        started.clear()
        loop = w.submit(key(item="loop", bin_=(1, 0, 0)), frame, FACE)
        assert started.wait(WAIT_S)
        nxt = w.submit(key(item="ok", bin_=(2, 0, 0)), frame, FACE)  # same face: the loop is superseded
        assert loop.finished.wait(WAIT_S) and loop.state == "cancelled"
        assert nxt.finished.wait(WAIT_S) and nxt.state == "done" and nxt.result["pid"] == child
        bad = w.submit(key(item="fail"), frame, FACE)
        assert bad.finished.wait(WAIT_S) and bad.state == "failed" and bad.error == "ValueError: bad in child"
        dead = w.submit(key(item="die"), frame, FACE)
        assert dead.finished.wait(WAIT_S) and dead.state == "failed" and "ChildDied" in dead.error
        again = w.submit(key(item="ok", bin_=(3, 0, 0)), frame, FACE)
        assert again.finished.wait(120) and again.state == "done" and again.result["pid"] != child  # a new child
    finally:
        w.close()
    assert not any(t.is_alive() for t in w._threads)


def test_process_isolation_refuses_a_closure() -> None:
    with pytest.raises(ValueError, match="picklable"):
        KeyframeWorker(lambda *a: None, WorkerConfig(isolation="process"))


# -- the filter ---------------------------------------------------------------------------------------
def upright_face(face_id: int = 0, yaw: float = 0.0, pitch: float = 0.0) -> Face:
    """The placement tests' synthetic face (exact glasses geometry) with eye corners and mouth set around
    its irises, so the alignment crop is upright like a real face's."""
    f = synthetic_face(yaw=yaw, pitch=pitch)
    lm = f.landmarks_px.copy()
    r, le = lm[468, :2].astype(np.float64), lm[473, :2].astype(np.float64)
    d = float(le[0] - r[0])
    offsets = {RIGHT_EYE_OUTER: (r, -d / 4, 0.0), RIGHT_EYE_INNER: (r, d / 4, 0.0), LEFT_EYE_INNER: (le, -d / 4, 0.0),
               LEFT_EYE_OUTER: (le, d / 4, 0.0), 61: (r, d / 6, d), 291: (le, -d / 6, d)}  # fmt: skip
    for idx, (base, dx, dy) in offsets.items():
        lm[idx, :2] = base + np.array([dx, dy])
    return replace(f, face_id=face_id, landmarks_px=lm)


@pytest.fixture
def scene() -> tuple[np.ndarray, Face]:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    img.flags.writeable = False
    return img, upright_face()


def make_filter(job: FakeJob, **params: Any):
    from stream.filters.tryon_latent import LatentBackend, TryonLatent, layer_worker

    backend = LatentBackend(job, lambda frame, ref: (frame, ref), (Cancelled,))
    worker = layer_worker(backend, WorkerConfig(torch_threads=None, join_timeout_s=WAIT_S))
    f = TryonLatent({"pd": 62.0, "crossfade_frames": 4, **params}, worker=worker, backend=backend)
    return f, worker


def ctx(i: int, faces: list[Face], fps: float = 30.0) -> FrameContext:
    return FrameContext(i, i / fps, faces, 640, 480)


def test_optics_only_until_the_first_layer_then_it_dissolves_in(scene) -> None:
    img, face = scene
    job = FakeJob(gated=True)
    f, worker = make_filter(job)
    optics = Tryon({"pd": 62.0})
    try:
        base = optics.apply(img, ctx(0, [face]))
        out = f.apply(img, ctx(0, [face]))
        np.testing.assert_array_equal(out, base)  # the job is running: optics-only, bit-exact
        state = f.models()["latent_tryon"]["faces"]["0"]
        assert state["job"]["state"] in ("pending", "running") and state["reason"] == "first"
        for i in (1, 2):
            np.testing.assert_array_equal(f.apply(img, ctx(i, [face])), optics.apply(img, ctx(i, [face])))
        job.gate.set()
        assert f._faces[0].job.finished.wait(WAIT_S)
        outs = [f.apply(img, ctx(i, [face])) for i in range(3, 7)]
        refs = [optics.apply(img, ctx(i, [face])) for i in range(3, 7)]
        from models.align import alignment_matrix

        m = alignment_matrix(face, 64)
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
        cx, cy, _ = inv @ [32.0, 32.0, 1.0]  # the layer square's centre (crop 20..43) in the frame
        px = (round(cy), round(cx))
        green = np.array([0, 255, 0], float)
        for k, (o, r) in enumerate(zip(outs, refs, strict=True)):  # weights 1/4, 2/4, 3/4, 1
            w = (k + 1) / 4
            np.testing.assert_allclose(o[px].astype(float), w * green + (1 - w) * r[px], atol=1.0)
            box = footprint_box(m, (20, 20, 44, 44), 640, 480)
            assert box is not None
            x0, y0, x1, y1 = box
            mask = np.ones(o.shape[:2], bool)
            mask[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(o[mask], r[mask])  # outside the layer's footprint: the optics output
        last = f.models()["latent_tryon"]["faces"]["0"]["last"]
        assert last["state"] == "done" and last["model_ms"] == {"optimise": 12.5} and "ms" in last
    finally:
        f.close()
        worker.close()


def test_pose_change_submits_a_new_keyframe_and_the_old_layer_keeps_showing(scene) -> None:
    img, face = scene
    job = FakeJob()
    f, worker = make_filter(job, pose_deg=10.0)
    try:
        f.apply(img, ctx(0, [face]))
        assert f._faces[0].job.finished.wait(WAIT_S)
        for i in range(1, 5):
            f.apply(img, ctx(i, [face]))
        assert f._faces[0].weights == {f._faces[0].target: 1.0}
        job.gate.clear()
        turned = upright_face(yaw=15.0)
        f.apply(img, ctx(5, [turned]))
        st = f._faces[0]
        assert st.reason == "pose" and st.job.key.pose_bin == (2, 0, 0) and len(job.calls) == 2
        assert sum(st.weights.values()) == 1.0  # the old layer is warped onto the turned face meanwhile
        job.gate.set()
        assert st.job.finished.wait(WAIT_S)
        f.apply(img, ctx(6, [turned]))
        assert len(st.weights) == 2 and st.weights[st.target] == pytest.approx(0.25)  # dissolving in
        # Back to the first pose: cached, no rerun, dissolves back.
        f.apply(img, ctx(7, [face]))
        assert st.job.cached and len(job.calls) == 2
    finally:
        f.close()
        worker.close()


def test_item_change_fades_the_old_layer_out_and_requests_the_new_item(scene) -> None:
    img, face = scene
    job = FakeJob()
    f, worker = make_filter(job, frame="round")
    try:
        f.apply(img, ctx(0, [face]))
        assert f._faces[0].job.finished.wait(WAIT_S)
        for i in range(1, 5):
            f.apply(img, ctx(i, [face]))
        job.gate.clear()
        f.configure({"frame": "aviator"})
        weights = []
        for i in range(5, 9):
            f.apply(img, ctx(i, [face]))
            weights.append(sum(f._faces[0].weights.values()))
        assert weights == pytest.approx([0.75, 0.5, 0.25, 0.0])  # no pop, no lingering old glasses
        assert job.calls == [("round", None), ("aviator", None)] and f._faces[0].reason == "item"
    finally:
        job.gate.set()
        f.close()
        worker.close()


def test_file_mode_waits_for_each_keyframe(scene) -> None:
    img, face = scene
    job = FakeJob()
    f, worker = make_filter(job, crossfade_frames=1)
    try:
        f.prepare(WAIT_S)
        out = f.apply(img, ctx(0, [face]))  # the first frame already carries its keyframe's layer
        assert f._faces[0].job.state == "done" and f._faces[0].weights == {f._faces[0].target: 1.0}
        assert not np.array_equal(out, Tryon({"pd": 62.0}).apply(img, ctx(0, [face])))
    finally:
        f.close()
        worker.close()


def test_bad_parameters_keep_the_old_ones(scene, tmp_path) -> None:
    job = FakeJob()
    f, worker = make_filter(job)
    try:
        with pytest.raises(FilterError, match="reference"):
            f.configure({"reference": str(tmp_path / "missing.png"), "frame": "aviator"})
        assert f.params.frame == "round" and f.params.reference == "" and f._item == ("round", None)
        with pytest.raises(FilterError, match="png"):
            f.configure({"png": "glasses.png"})
        with pytest.raises(FilterError):
            f.configure({"crossfade_frames": 0})
        ref = tmp_path / "look.png"
        ref.write_bytes(b"not checked here: the model reads it")
        f.configure({"reference": str(ref), "pose_deg": 20})
        assert f._item == ("round", str(ref)) and f._policy.pose_threshold_deg == 20
    finally:
        f.close()
        worker.close()


def test_closing_the_filter_cancels_its_running_job(scene) -> None:
    img, face = scene
    job = FakeJob(gated=True)
    f, worker = make_filter(job)
    try:
        f.apply(img, ctx(0, [face]))
        running = f._faces[0].job
        assert job.started.wait(WAIT_S)
        f.close()
        assert running.finished.wait(WAIT_S) and running.state == "cancelled" and job.saw_cancel.is_set()
        assert not worker.closed  # a worker passed in outlives the filter
    finally:
        worker.close()


def test_lost_face_job_is_cancelled_after_the_grace_period(scene) -> None:
    img, face = scene
    job = FakeJob(gated=True)
    f, worker = make_filter(job)
    try:
        f.apply(img, ctx(0, [face]))
        running = f._faces[0].job
        f.apply(img, ctx(3, []))  # 0.1 s later: a tracking blip, kept
        assert not running.cancel_requested and 0 in f._faces
        f.apply(img, ctx(60, []))  # 2 s later: gone
        assert running.finished.wait(WAIT_S) and running.state == "cancelled" and 0 not in f._faces
    finally:
        f.close()
        worker.close()


def test_owned_worker_is_closed_with_the_filter_and_pipeline_close_reaches_it(scene, monkeypatch) -> None:
    from stream.config import TrackerConfig
    from stream.filters import tryon_latent
    from stream.pipeline import FramePipeline

    img, face = scene
    job = FakeJob(gated=True)
    backend = tryon_latent.LatentBackend(job, lambda frame, ref: (frame, ref), (Cancelled,))
    made: list[Any] = []

    def shared() -> tuple[KeyframeWorker, Any]:
        made.append(tryon_latent.layer_worker(backend, WorkerConfig(torch_threads=None)))
        return made[-1], backend

    monkeypatch.setattr(tryon_latent, "shared_worker", shared)

    class OneFace:
        def __init__(self, cfg: TrackerConfig) -> None: ...
        def track(self, image: np.ndarray, t: float) -> list[Face]:
            return [face]

        def close(self) -> None: ...

    pipe = FramePipeline([{"name": "tryon_latent", "params": {"pd": 62.0}}], tracker_factory=OneFace)
    _, res = pipe.process(img, 0.0)
    assert not res.errors and "tryon_latent.composite" in res.timings_ms
    assert pipe.models()["latent_tryon"]["faces"]["0"]["job"]["state"] in ("pending", "running")
    assert job.started.wait(WAIT_S)
    running = next(iter(made[0]._running.values()))
    pipe.close()  # session end -> filter.close -> the session's jobs cancelled
    assert running.finished.wait(WAIT_S) and running.state == "cancelled"
    made[0].close()
    own = tryon_latent.TryonLatent({"pd": 62.0}, backend=backend)
    owned = own._worker
    assert owned is not None and not owned.closed
    own.close()
    assert owned.closed  # a worker the filter made is the filter's to close


def test_without_the_latent_model_the_filter_is_the_optics_tryon(scene, monkeypatch) -> None:
    from stream.filters import tryon_latent

    def missing() -> Any:
        raise ImportError("No module named 'models.latent'")

    monkeypatch.setattr(tryon_latent, "shared_worker", missing)
    img, face = scene
    f = tryon_latent.TryonLatent({"pd": 62.0})
    try:
        np.testing.assert_array_equal(f.apply(img, ctx(0, [face])), Tryon({"pd": 62.0}).apply(img, ctx(0, [face])))
        status = f.models()["latent_tryon"]
        assert status["state"] == "unavailable" and "models.latent" in status["error"]
    finally:
        f.close()
