"""Neural filters in the pipeline: model store, align -> batch -> infer -> paste-back, fallbacks, GPU pre/post.

Weights are random-init networks written to a temp dir in the shipped format (mechanics, not quality). The
generator's output head is biased so it visibly edits (its zero-init head is the identity by design).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from accel.backend import Backend, BackendError  # noqa: E402
from accel.model_store import (  # noqa: E402
    NO_WEIGHTS,
    READY,
    ModelRequest,
    ModelStore,
    StoreOptions,
    export_key,
    set_shared_store,
    weights_sizes,
)
from accel.select import Candidate, default_candidates  # noqa: E402
from export.manifest import Manifest  # noqa: E402
from models.align import alignment_matrix, paste_back, paste_box, transform_scale, warp_crop  # noqa: E402
from models.optics.prescription import parse_prescription  # noqa: E402
from stream.face import Face  # noqa: E402
from stream.filters import FilterError, create  # noqa: E402
from stream.filters.base import FrameContext  # noqa: E402
from stream.filters.neural import (  # noqa: E402
    CropJob,
    FaceModel,
    alpha_box,
    from_nchw,
    generator_conditions,
    plan_batches,
    polygon_alpha,
    to_nchw,
)
from stream.filters.neural_gpu import affine_theta, paste_, pyr_down, warp_crops  # noqa: E402
from stream.filters.tryon import LENS_FEATHER  # noqa: E402
from tests.conftest import to_4x3  # noqa: E402

SIZE = 128


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.models import load_model, save_weights

    d = tmp_path_factory.mktemp("weights")
    r = load_model("restorer", SIZE, seed=1)
    save_weights(r.module, r.config, d / "restorer.pt")
    g = load_model("generator", SIZE, seed=1)
    with torch.no_grad():  # heads: raw residual 1 (tanh -> 0.76 * 2 * strength), mask logit 6 (~1)
        g.module.head[-1].bias[2:5] = 1.0
        g.module.head[-1].bias[5] = 6.0
    save_weights(g.module, g.config, d / "generator.pt")
    return d


@pytest.fixture(scope="module")
def store(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """The shared store for this module's filters: temp weights, temp ONNX cache (exports reused by all tests)."""
    s = ModelStore(StoreOptions(weights_dir=weights_dir, cache_dir=tmp_path_factory.mktemp("onnx-cache")))
    old = set_shared_store(s)
    yield s
    set_shared_store(old)
    s.close()


@pytest.fixture(scope="module")
def tracked(clip_frames: Callable[..., Any], landmarker_model: Path) -> tuple[np.ndarray, list[Face]]:
    """A real 640x480 frame of liveportrait_d12 and its tracked face."""
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    frame = to_4x3(clip_frames("liveportrait_d12", n=1).frames[0])
    tracker = FaceTracker(TrackerConfig())
    try:
        faces = tracker.track(frame, 0.0)
    finally:
        tracker.close()
    if len(faces) != 1:
        pytest.fail(f"expected one tracked face in liveportrait_d12, got {len(faces)}")
    return frame, faces


def ctx_for(frame: np.ndarray, faces: list[Face]) -> FrameContext:
    h, w = frame.shape[:2]
    return FrameContext(0, 0.0, faces, w, h)


def shifted(face: Face, dx: float, width: int) -> Face:
    lm = face.landmarks_px.copy()
    lm[:, 0] += dx
    return replace(face, face_id=face.face_id + 1, landmarks_px=lm, image_size=(width, face.image_size[1]))


def reach_px(face: Face, outside_crop_px: float) -> int:
    """How far (frame pixels) a pasted region can spread beyond its outline: its own ramp outside the outline,
    plus one crop pixel of bilinear sampling, in frame pixels (1/scale each), plus one for rounding."""
    return math.ceil((outside_crop_px + 1.0) / transform_scale(alignment_matrix(face, SIZE))) + 1


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


# -- pure helpers: closed-form answers ---------------------------------------------------------------
def test_plan_batches_greedy_without_padding() -> None:
    assert plan_batches(0, [1, 2]) == []
    assert plan_batches(1, [1, 2]) == [1]
    assert plan_batches(2, [1, 2]) == [2]
    assert plan_batches(5, [2, 1]) == [2, 2, 1]
    assert plan_batches(3, [1]) == [1, 1, 1]
    with pytest.raises(ValueError, match="batch size 1"):
        plan_batches(2, [2])


def test_alpha_box_bounds_the_nonzero_weights() -> None:
    a = np.zeros((16, 16), np.float32)
    assert alpha_box(None) is None and alpha_box(a) is None  # the whole crop / nothing to bound
    a[3, 5] = a[9, 11] = 0.2
    assert alpha_box(a) == (3, 10, 5, 12)


def test_nchw_round_trip_is_exact_and_in_range() -> None:
    crops = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(2)]
    x = to_nchw(crops)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x[0, 1, 2, 3] == pytest.approx(crops[0][2, 3, 1] / 127.5 - 1.0, abs=1e-6)
    np.testing.assert_array_equal(from_nchw(x), np.stack(crops))
    np.testing.assert_array_equal(from_nchw(np.array([[[[-2.0]], [[0.0]], [[3.0]]]])), [[[[0, 128, 255]]]])


def test_polygon_alpha_is_a_linear_ramp_in_distance_to_the_edge() -> None:
    # Pixels 10..90 x 20..70 are inside; pixel x's distance to the left edge is x - 9.75, and so on. The grid
    # distance transform knows edges only to the half pixel between two pixel centres: 1/4 px error here.
    rect = np.array([[9.75, 19.75], [90.25, 19.75], [90.25, 70.25], [9.75, 70.25]])
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dist = np.minimum.reduce([xs - 9.75, 90.25 - xs, ys - 19.75, 70.25 - ys])  # > 0 inside
    a = polygon_alpha(rect, SIZE, feather_px=8.0)
    np.testing.assert_allclose(a, np.clip(dist / 8.0, 0.0, 1.0), atol=0.25 / 8 + 1e-6)
    assert a[dist < 0].max() == 0.0 and a[dist >= 8.5].min() == 1.0
    centred = polygon_alpha(rect, SIZE, feather_px=8.0, offset_px=-4.0)
    inside = dist > 0
    np.testing.assert_allclose(centred[inside], np.clip((dist[inside] + 4.0) / 8.0, 0.0, 1.0), atol=0.25 / 8 + 1e-6)
    assert polygon_alpha(rect + 1000.0, SIZE, 8.0).max() == 0.0  # off-crop polygon: nothing


def test_generator_conditions_encode_the_prescription() -> None:
    ((sides, c),) = generator_conditions(parse_prescription("-4.00 -1.00 x 90"), "add", 0.5, "both")
    assert sides == ("right", "left")
    want = [1, 0, -4 / 20, -1 / 8, math.sin(math.radians(180)), math.cos(math.radians(180)), 0, 0, 0.5,
            0, 0, 1, 0, 0, 0, 0]  # fmt: skip
    np.testing.assert_allclose(c, want, atol=1e-6)
    # different eyes: one run per eye, each with its own lens one-hot
    runs = generator_conditions(parse_prescription("OD -2.00 OS -3.00"), "remove", 1.0, "both")
    assert [r[0] for r in runs] == [("right",), ("left",)]
    assert runs[0][1][2] == pytest.approx(-0.1) and runs[1][1][2] == pytest.approx(-0.15)
    np.testing.assert_array_equal(runs[0][1][[0, 1, 9, 10, 11]], [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(runs[1][1][[9, 10, 11]], [0, 1, 0])
    # 2Δ base out on both eyes: mirrored bases in the lens frame, the same "base out" conditioning -> one run
    ((_, p),) = generator_conditions(parse_prescription("-1.00 2Δ BO"), "add", 1.0, "both")
    assert p[6] == pytest.approx(0.2) and p[7] == pytest.approx(0.0, abs=1e-7)
    assert len(generator_conditions(parse_prescription("-1.00 2Δ BO"), "add", 1.0, "left")) == 1


# -- GPU pre/post (torch) against the cv2 path, on CPU tensors ---------------------------------------
def smooth_frame(h: int = 480, w: int = 640) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = np.stack([np.sin(xx / 13 + yy / 29), np.cos(xx / 17 - yy / 11), np.sin((xx + yy) / 23)], -1)
    return np.clip(np.rint(127 + 100 * f), 0, 255).astype(np.uint8)


def centred_similarity(scale: float, angle: float, size: int = SIZE, centre: tuple[float, float] = (320, 240)):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    a = np.array([[c, -s], [s, c]])
    return np.hstack([a, (np.array([size / 2, size / 2]) - a @ np.asarray(centre))[:, None]])


def test_affine_theta_closed_form() -> None:
    np.testing.assert_allclose(affine_theta(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (64, 48), (64, 48)),
                               [[1, 0, 0], [0, 1, 0]], atol=1e-12)  # fmt: skip
    # output pixel u samples input pixel 2u + 0.5 (a 2x reduction): centres line up at normalised coords
    th = affine_theta(np.array([[2.0, 0, 0.5], [0, 2.0, 0.5]]), (32, 32), (64, 64))
    np.testing.assert_allclose(th, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_pyr_down_matches_cv2() -> None:
    img = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    ref = cv2.pyrDown(img).astype(np.float32)
    got = pyr_down(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.5 + 1e-4  # cv2 rounds to uint8


@pytest.mark.parametrize("scale", [1.3, 0.7, 0.4, 0.28])  # 0.4 and 0.28 go through 1 and 2 pyramid levels
def test_gpu_warp_matches_cv2_crop(scale: float) -> None:
    frame = smooth_frame()
    m = centred_similarity(scale, 0.3)
    ref = warp_crop(frame, m, SIZE).astype(np.float32)
    got = (warp_crops(torch.from_numpy(frame), [m], SIZE)[0].permute(1, 2, 0).numpy() + 1.0) * 127.5
    # compare where the crop's source lies inside the frame (borders reflect differently by design)
    inv = cv2.invertAffineTransform(m)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    src = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64) @ inv.T
    inside = (src[..., 0] > 8) & (src[..., 0] < 631) & (src[..., 1] > 8) & (src[..., 1] < 471)
    assert inside.mean() > 0.5
    assert np.abs(got - ref)[inside].max() <= 1.5


@pytest.mark.parametrize("with_alpha", [False, True])
def test_gpu_paste_matches_cv2_paste_back(with_alpha: bool) -> None:
    frame = smooth_frame()
    crop = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (0, 0), 2)
    m = centred_similarity(0.45, -0.2)
    alpha = polygon_alpha(np.array([[30, 40], [90, 35], [95, 80], [35, 90]], float), SIZE, 3.0) if with_alpha else None
    ref = paste_back(frame, crop, m, 8.0, crop_alpha=alpha)
    crop_t = torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1.0
    got = paste_(torch.from_numpy(frame.copy()), crop_t, m, 8.0, alpha).numpy()
    assert np.abs(got.astype(int) - ref).max() <= 2
    x0, y0, x1, y1 = paste_box(m, SIZE, 640, 480, alpha)
    outside = np.ones((480, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert not changed(got, frame)[outside].any() and not changed(ref, frame)[outside].any()
    assert changed(got, frame).sum() > 1000


# -- the model store ---------------------------------------------------------------------------------
def test_weights_discovery_and_export_cache_key(weights_dir: Path) -> None:
    assert weights_sizes("restorer", weights_dir) == {SIZE: weights_dir / "restorer.pt"}
    assert weights_sizes("style_autoencoder", weights_dir) == {}
    k = export_key("ab" * 32, 128, 1, {"torch": "2"})
    assert k == export_key("ab" * 32, 128, 1, {"torch": "2"})
    assert len({k, export_key("ab" * 32, 128, 2, {"torch": "2"}), export_key("cd" * 32, 128, 1, {"torch": "2"}),
                export_key("ab" * 32, 128, 1, {"torch": "3"})}) == 4  # fmt: skip


def test_store_loads_once_and_reuses_the_exported_graph(store: ModelStore, tmp_path: Path, weights_dir: Path) -> None:
    h = store.get(ModelRequest("restorer", SIZE), timeout=120)
    assert h.state == READY and h.info["backend"] == "onnxruntime" and h.info["device"] == "cpu"
    assert store.request(ModelRequest("restorer", SIZE)) is h  # one load per process
    # a second store on the same cache finds the export instead of exporting again
    other = ModelStore(StoreOptions(weights_dir=weights_dir, cache_dir=store.cache_dir))
    try:
        h2 = other.get(ModelRequest("restorer", SIZE), timeout=120)
        assert h2.ready and h2.backend is not None and h2.backend.manifest.onnx_sha256 == h.backend.manifest.onnx_sha256
        assert len(list(store.cache_dir.glob("restorer-128-b1-*"))) == 1
    finally:
        other.close()


def store_with(store: ModelStore, weights_dir: Path, candidates: dict[str, Candidate]) -> ModelStore:
    """A store trying exactly ``candidates`` in order, sharing the module's export cache."""
    opts = StoreOptions(weights_dir=weights_dir, cache_dir=store.cache_dir, candidates=candidates,
                        order=tuple(candidates))  # fmt: skip
    return ModelStore(opts)


class BrokenBackend(Backend):
    name = "broken"
    device = "nowhere"  # type: ignore[assignment]
    precision = "fp32"  # type: ignore[assignment]

    def _load(self, source: Any, manifest: Manifest) -> None:
        raise BackendError("driver exploded")

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("never loaded")


def test_backend_that_fails_to_load_falls_back(store: ModelStore, weights_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ort = default_candidates()["onnxruntime"]
    broken = Candidate("broken", BrokenBackend, lambda f: f.onnx_path)
    s = store_with(store, weights_dir, {"broken": broken, "onnxruntime": ort})
    try:
        with caplog.at_level(logging.INFO):
            h = s.get(ModelRequest("restorer", SIZE), timeout=120)
        assert h.ready and h.info["backend"] == "onnxruntime"
        assert any("broken: BackendError: driver exploded" in f for f in h.info["failed"])
        assert "backend broken failed" in caplog.text and "falling back to onnxruntime" in caplog.text
        assert "restorer@128/b1: onnxruntime on cpu" in caplog.text  # the one INFO line per model load
        # nothing left to fall back to: the filter passes frames through and says why
        only_broken = store_with(store, weights_dir, {"broken": broken})
        try:
            fm = FaceModel("restorer", SIZE, store=only_broken)
            fm.prepare(120)
            frame = smooth_frame()
            m = centred_similarity(0.5, 0.0)
            assert fm.run(frame, [m], [CropJob(0, None, {"fidelity": np.float32(0.5)})], 8.0) is frame
            st = fm.status()
            assert st["state"] == "failed" and "driver exploded" in st["error"]
        finally:
            only_broken.close()
    finally:
        s.close()


def test_backends_agree_on_restorer_output(store: ModelStore) -> None:
    """ONNX Runtime and eager torch on CPU run the same exported network: same crops, same pixels."""
    frame = smooth_frame()
    m = [centred_similarity(0.5, 0.1)]
    job = [CropJob(0, None, {"fidelity": np.float32(0.7)})]
    outs = {}
    for be in ("onnxruntime", "torch-cpu"):
        fm = FaceModel("restorer", SIZE, be, batch_sizes=(1,))
        assert fm.prepare(120), fm.status()
        assert fm.status()["backend"] == ("torch" if be == "torch-cpu" else be)
        outs[be] = fm.run(frame, m, job, 8.0)
    assert changed(outs["onnxruntime"], frame).sum() > 1000
    assert np.abs(outs["onnxruntime"].astype(int) - outs["torch-cpu"]).max() <= 1


class StandInBackend(Backend):
    """A fixed stand-in network on the CPU; ``device_io`` selects the torch path, which the runner uses on
    CUDA (here it runs on CPU tensors)."""

    def __init__(self, device_io: bool) -> None:
        super().__init__()
        self._device_io = device_io

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def device_io(self) -> bool:
        return self._device_io

    def _load(self, source: Any, manifest: Manifest) -> None:
        pass


class AffineBackend(StandInBackend):
    """A smooth stand-in (out = 0.6 x - 0.2): isolates the pre/post paths from a network's sensitivity (a
    codebook flips codes on sub-grey input changes)."""

    name = "affine"

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"out": 0.6 * np.asarray(inputs["image"]) - 0.2}

    def run_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"out": 0.6 * inputs["image"] - 0.2}


def test_device_path_matches_host_path(store: ModelStore, weights_dir: Path) -> None:
    """The torch pre/post path (used on CUDA: one upload, one download) gives the cv2 path's frame."""
    stores = {io: store_with(store, weights_dir, {"affine": Candidate("affine", lambda io=io: AffineBackend(io),
                                                                      lambda f: None)})
              for io in (True, False)}  # fmt: skip
    try:
        frame = smooth_frame()
        mats = [centred_similarity(0.5, 0.2), centred_similarity(0.3, -0.1, centre=(200, 250))]  # 2 faces, 2 levels
        alpha = polygon_alpha(np.array([[20, 20], [108, 20], [108, 108], [20, 108]], float), SIZE, 6.0)
        jobs = [CropJob(0, alpha, {"fidelity": np.float32(0.5)}), CropJob(1, None, {"fidelity": np.float32(0.5)})]
        outs, timings = {}, {}
        for io, s in stores.items():
            fm = FaceModel("restorer", SIZE, store=s, batch_sizes=(1,))
            assert fm.prepare(120) and fm.status()["backend"] == "affine"
            timings[io] = {}
            outs[io] = fm.run(frame, mats, jobs, 8.0, timings[io], "restore")
        assert set(timings[True]) == set(timings[False]) == {"restore.align", "restore.restorer", "restore.paste"}
        assert np.array_equal(frame, smooth_frame())  # the input frame was not written to
        ref, got = outs[False], outs[True]
        assert changed(ref, frame).sum() > 10000
        assert np.abs(got.astype(int) - ref).max() <= 2  # fixed-point cv2 vs float torch, and uint8 rounding
        assert np.array_equal(changed(got, frame) | changed(ref, frame), changed(ref, frame) | changed(got, frame))
    finally:
        for s in stores.values():
            s.close()


# -- the filters on a real frame ---------------------------------------------------------------------
def test_restore_changes_only_the_face(store: ModelStore, tracked: tuple[np.ndarray, list[Face]]) -> None:
    frame, faces = tracked
    f = create("restore", {"fidelity": 0.3})
    f.prepare(120)
    ctx = ctx_for(frame, faces)
    out = f.apply(frame, ctx)
    assert out.shape == frame.shape and out.dtype == np.uint8
    diff = changed(out, frame)
    hull = cv2.convexHull(faces[0].landmarks_px[:, :2].astype(np.float32)).astype(np.int32)
    grow = reach_px(faces[0], 0.0)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    near_face = cv2.dilate(cv2.fillConvexPoly(np.zeros(frame.shape[:2], np.uint8), hull, 1), kernel)
    assert diff.sum() > 0.3 * near_face.sum()  # the face itself was redrawn
    assert not diff[near_face == 0].any()  # everything away from the face is bit-exact
    assert {"restore.align", "restore.restorer", "restore.paste"} <= set(ctx.timings_ms)
    st = f.models()["restorer"]
    assert st["state"] == "ready" and st["backend"] == "onnxruntime" and st["size"] == SIZE
    crop_region = create("restore", {"region": "crop"}).apply(frame, ctx)
    assert changed(crop_region, frame).sum() > diff.sum()  # the whole crop, beyond the face outline


def test_no_face_passes_through_untouched(store: ModelStore, tracked: tuple[np.ndarray, list[Face]]) -> None:
    frame, _ = tracked
    for f in (create("restore"), create("tryon", {"engine": "neural"}), create("remove", {"engine": "neural"})):
        assert f.apply(frame, ctx_for(frame, [])) is frame


def test_two_faces_batched_equal_one_at_a_time(store: ModelStore, tracked: tuple[np.ndarray, list[Face]]) -> None:
    frame, faces = tracked
    wide = np.hstack([frame, frame])  # 1280x480: the same face twice, side by side
    two = [replace(faces[0], image_size=(1280, 480)), shifted(faces[0], 640.0, 1280)]
    f = create("restore", {"fidelity": 0.6})
    f.prepare(120)
    f.apply(wide, ctx_for(wide, two))  # two faces: starts the batch-2 graph's load in the background
    assert store.get(ModelRequest("restorer", SIZE, 2), timeout=120).ready
    assert f.models()["restorer"]["batches"] == [1, 2]
    batched = f.apply(wide, ctx_for(wide, two))
    one_by_one = f.apply(f.apply(wide, ctx_for(wide, two[:1])), ctx_for(wide, two[1:]))
    assert changed(batched, wide)[:, :640].any() and changed(batched, wide)[:, 640:].any()
    assert np.abs(batched.astype(int) - one_by_one).max() <= 1


def test_missing_weights_pass_through_with_a_visible_reason(
    tmp_path: Path,
    tracked: tuple[np.ndarray, list[Face]],
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    frame, faces = tracked
    empty = ModelStore(StoreOptions(weights_dir=tmp_path / "none", cache_dir=tmp_path / "cache"))
    old = set_shared_store(empty)
    try:
        with caplog.at_level(logging.WARNING):
            f = create("restore")
            f.prepare(30)
            for _ in range(3):
                assert f.apply(frame, ctx_for(frame, faces)) is frame
        st = f.models()["restorer"]
        assert st["state"] == NO_WEIGHTS and str(tmp_path / "none" / "restorer.pt") in st["error"]
        assert caplog.text.count("restorer@128/b1: no 128px weights") == 1  # one clear line, not one per frame
    finally:
        set_shared_store(old)
        empty.close()


def test_neural_engine_params_are_validated(store: ModelStore) -> None:
    with pytest.raises(FilterError, match="engine"):
        create("tryon", {"engine": "magic"})
    with pytest.raises(FilterError, match="no generator weights for 256px crops; available: 128"):
        create("tryon", {"engine": "neural", "neural_size": 256})
    with pytest.raises(FilterError, match="no restorer weights for 512px"):
        create("restore", {"size": 512})
    with pytest.raises(FilterError, match="is not one of 128, 256, 512"):
        create("restore", {"size": 100})
    with pytest.raises(FilterError, match="backend"):
        create("remove", {"engine": "neural", "backend": "fpga"})
    with pytest.raises(FilterError, match="engine=neural: cylinder_d"):  # optics takes -10 D, the generator 8
        create("tryon", {"engine": "neural", "rx": "-2.00 -9.00 x 90"})
    create("tryon", {"rx": "-2.00 -9.00 x 90"})  # the optics engine is unaffected
    f = create("tryon", {"engine": "neural"})
    with pytest.raises(FilterError):
        f.configure({"neural_size": 512})
    assert f.params.neural_size == SIZE  # all-or-nothing


def lens_region(f: Any, frame: np.ndarray, faces: list[Face], grow: int) -> np.ndarray:
    """The lens openings the filter ``f`` places (tryon or remove), dilated by ``grow`` pixels."""
    from models.optics.scene import place

    ctx = ctx_for(frame, faces)
    if f.name == "tryon":
        lenses = [lens for _, ls in f.placements(ctx) for lens in ls]
    else:
        lenses = [lens for face in faces for lens in place(face, ctx.camera, f._rx, f._frame, f._opts)[1]]
    mask = np.zeros(frame.shape[:2], np.uint8)
    for lens in lenses:
        cv2.fillPoly(mask, [np.rint(lens.outline_px).astype(np.int32)], 1)
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0


@pytest.mark.parametrize("name", ["tryon", "remove"])
def test_neural_lens_engines_edit_only_inside_the_lenses(
    store: ModelStore, tracked: tuple[np.ndarray, list[Face]], name: str
) -> None:
    frame, faces = tracked
    params = {"engine": "neural", "rx": "-5.00"}
    params |= {"draw_frame": False} if name == "tryon" else {"fit_frames": 0}
    f = create(name, params)
    f.prepare(120)
    ctx = ctx_for(frame, faces)
    out = f.apply(frame, ctx)
    diff = changed(out, frame)
    lenses = lens_region(f, frame, faces, grow=reach_px(faces[0], LENS_FEATHER * SIZE / 2))
    assert diff.sum() > 0.3 * lenses.sum()  # the (biased) generator edits the lenses
    assert not diff[~lenses].any()  # and nothing else
    assert f.models()["generator"]["state"] == "ready" and f"{name}.generator" in ctx.timings_ms
    # optics engine still the default and untouched by the neural params: no network to report (remove's
    # default rx=auto reports only its estimate's progress)
    assert create(name).params.engine == "optics"
    assert set(create(name).models()) == ({"rx_estimate"} if name == "remove" else set())


def test_neural_tryon_draws_the_frame_even_while_the_generator_loads(
    tmp_path: Path, tracked: tuple[np.ndarray, list[Face]]
) -> None:
    frame, faces = tracked
    empty = ModelStore(StoreOptions(weights_dir=tmp_path / "none", cache_dir=tmp_path / "cache"))
    old = set_shared_store(empty)
    try:
        f = create("tryon", {"engine": "neural"})
        f.prepare(30)
        out = f.apply(frame, ctx_for(frame, faces))
        assert changed(out, frame).any()  # the glasses are drawn; only the refraction is missing
        assert f.models()["generator"]["state"] == NO_WEIGHTS
    finally:
        set_shared_store(old)
        empty.close()


def test_pipeline_reports_models_for_the_stats_overlay(store: ModelStore) -> None:
    from stream.pipeline import FramePipeline

    p = FramePipeline("restore+landmarks", tracker_factory=lambda cfg: None)
    try:
        p.prepare(120)
        models = p.models()
        assert models["restorer"]["filter"] == "restore" and models["restorer"]["backend"] == "onnxruntime"
        assert models["restorer"]["state"] == "ready"
    finally:
        p.close()


@pytest.mark.slow
def test_process_cli_with_restore(store: ModelStore, clip_frames: Callable[..., Any], landmarker_model: Path,
                                  tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    import av

    from stream.cli import main
    from tests.conftest import write_y4m

    clip = clip_frames("liveportrait_d12", n=6)
    src = write_y4m([to_4x3(f, 320, 240) for f in clip.frames], 25.0, tmp_path / "in.y4m")
    dst = tmp_path / "out.mp4"
    assert main(["process", str(src), str(dst), "--filter", "restore", "--fidelity", "0.4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "restore.restorer" in out and "model restorer (restore): ready onnxruntime on cpu" in out
    assert "restore.restorer.overlapped" in out  # started beside the tracker from the second frame on
    with av.open(str(dst)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6
    argv = ["process", str(src), str(tmp_path / "in_turn.mp4"), "--filter", "restore", "--no-progress", "--no-overlap"]
    assert main(argv) == 0
    assert "restore.restorer" in (out := capsys.readouterr().out) and "overlapped" not in out


def test_host_backends_refuse_device_tensors(store: ModelStore) -> None:
    h = store.get(ModelRequest("restorer", SIZE, 1, "torch-cpu"), timeout=120)
    assert h.ready and not h.device_io and h.device == "cpu"
    with pytest.raises(BackendError, match="device_io is false"):
        h.run_device({"image": torch.zeros(1, 3, SIZE, SIZE), "fidelity": torch.zeros(1)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the torch-cuda device path)")
def test_torch_cuda_frame_path_runs_on_the_device(store: ModelStore) -> None:
    frame = smooth_frame()
    mats, jobs = [centred_similarity(0.5, 0.1)], [CropJob(0, None, {"fidelity": np.float32(0.5)})]
    gpu = FaceModel("restorer", SIZE, "torch-cuda", batch_sizes=(1,))
    assert gpu.prepare(300) and gpu.status()["device"] == "cuda", gpu.status()
    assert gpu._request(1).device_io
    got = gpu.run(frame, mats, jobs, 8.0)
    ref = FaceModel("restorer", SIZE, "onnxruntime", batch_sizes=(1,))
    assert ref.prepare(120)
    want = ref.run(frame, mats, jobs, 8.0)
    x0, y0, x1, y1 = paste_box(mats[0], SIZE, 640, 480)
    outside = np.ones((480, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert not changed(got, frame)[outside].any()
    # fp16 + a codebook: a few codes may flip; the bulk of the face must agree
    assert np.mean(np.abs(got.astype(int) - want) <= 3) > 0.98


# -- overlap: the generator's heads beside the restorer (stream.overlap) --------------------------------
class FixedTracker:
    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def track(self, image: np.ndarray, timestamp_s: float) -> list[Face]:
        return list(self.faces)

    def close(self) -> None:
        pass


REMOVE_NEURAL = {"name": "remove", "params": {"engine": "neural", "rx": "-5.00", "fit_frames": 0}}
TRYON_NEURAL = {"name": "tryon", "params": {"engine": "neural", "rx": "-5.00", "draw_frame": False}}


@pytest.mark.parametrize("spec", [REMOVE_NEURAL, TRYON_NEURAL], ids=["remove", "tryon"])
def test_overlapped_chain_runs_the_heads_beside_the_restorer(
    store: ModelStore, tracked: tuple[np.ndarray, list[Face]], spec: dict[str, Any]
) -> None:
    from stream.pipeline import FramePipeline

    frame, faces = tracked
    name = spec["name"]
    chain = [{"name": "restore"}, spec]
    pipes = {on: FramePipeline(chain, tracker_factory=lambda cfg: FixedTracker(faces), overlap=on)
             for on in (True, False)}  # fmt: skip
    try:
        outs, timings = {}, {}
        for on, p in pipes.items():
            p.prepare(120)
            models = p.models()
            assert {m["threads"] for m in models.values()} == ({1} if on else {2})
            first, res = p.process(frame, 0.0)  # nothing to predict from: in turn
            assert not res.errors and not any(k.endswith((".begin", ".overlapped")) for k in res.timings_ms)
            outs[on], res = p.process(frame, 0.04)  # started on the previous frame's faces
            assert not res.errors
            timings[on] = res.timings_ms
        overlapped = {f"{name}.{k}" for k in ("begin", "generator_heads", "generator_heads.overlapped")}
        assert overlapped | {"restore.begin", "restore.restorer.overlapped"} <= set(timings[True])
        assert f"{name}.generator" in timings[False] and f"{name}.begin" not in timings[False]
        restored = create("restore").apply(frame, ctx_for(frame, faces))
        grow = reach_px(faces[0], LENS_FEATHER * SIZE / 2)
        lenses = lens_region(pipes[True]._filters[1], frame, faces, grow=grow)
        # the same faces in both frames, so the same crops: the restorer gives the same face; only the lenses
        # differ from the frame run in turn (the heads came from the raw crop, not the restored one)
        assert np.abs(outs[True].astype(int) - first)[~lenses].max() <= 1
        for out in outs.values():  # both edit the lenses of the restored frame, and only them
            diff = changed(out, restored)
            assert diff.sum() > 0.3 * lenses.sum() and not diff[~lenses].any()
    finally:
        for p in pipes.values():
            p.close()


def test_overlap_follows_configure(store: ModelStore, tracked: tuple[np.ndarray, list[Face]]) -> None:
    from stream.pipeline import FramePipeline

    p = FramePipeline([{"name": "restore"}, {"name": "remove", "params": {"rx": "-5.00", "fit_frames": 0}}],
                      tracker_factory=lambda cfg: FixedTracker(tracked[1]))  # fmt: skip
    try:
        assert p._plan.early == {0} and [f.concurrent for f in p._filters] == [True, False]  # optics: no network
        p.configure("remove", {"engine": "neural"})
        assert p._plan.early == {0, 1} and all(f.concurrent for f in p._filters)
        p.prepare(120)
        assert {m["threads"] for m in p.models().values()} == {1}
        p.configure("remove", {"engine": "optics"})
        assert p._plan.early == {0} and not p._filters[1].concurrent
    finally:
        p.close()


def test_a_failing_begin_leaves_the_frame_to_apply(store: ModelStore, tracked: tuple[np.ndarray, list[Face]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The networks then run in turn after the tracker, the heads composed on the restored crop on the host."""
    from stream.pipeline import FramePipeline

    frame, faces = tracked
    p = FramePipeline([{"name": "restore"}, REMOVE_NEURAL], tracker_factory=lambda cfg: FixedTracker(faces))
    try:
        p.prepare(120)
        good, _ = p.process(frame, 0.0)  # the first frame runs in turn: nothing to predict from

        def broken(*a: Any, **k: Any) -> None:
            raise RuntimeError("worker pool gone")

        monkeypatch.setattr(FaceModel, "begin", broken)
        out, res = p.process(frame, 0.04)
        assert res.errors == ["restore.begin: worker pool gone", "remove.begin: worker pool gone"]
        assert "remove.generator_heads" in res.timings_ms and "remove.generator_heads.overlapped" not in res.timings_ms
        assert np.array_equal(out, good)  # in turn again: the same picture
    finally:
        p.close()


class HeadsBackend(StandInBackend):
    """Fixed smooth heads (a sideways field, a residual, a mask) on the host or the torch path."""

    name = "heads"

    def _heads(self, n: int) -> dict[str, np.ndarray]:
        xs = np.linspace(0.0, np.pi, SIZE, dtype=np.float32)
        field = np.zeros((n, 2, SIZE, SIZE), np.float32)
        field[:, 0] = 0.05 * np.sin(xs)[None, None, :]
        field[:, 1] = -0.03 * np.cos(xs)[None, :, None]
        return {"field": field, "residual": np.full((n, 3, SIZE, SIZE), 0.1, np.float32),
                "mask": np.full((n, 1, SIZE, SIZE), 0.8, np.float32)}  # fmt: skip

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._heads(len(inputs["image"]))

    def run_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: torch.from_numpy(v) for k, v in self._heads(len(inputs["image"])).items()}


def test_heads_compose_alike_on_the_host_and_the_device_path(store: ModelStore, weights_dir: Path) -> None:
    """A heads graph on a device backend composes with torch (``neural_gpu.compose``), like the host path."""
    stores = {io: store_with(store, weights_dir, {"heads": Candidate("heads", lambda io=io: HeadsBackend(io),
                                                                     lambda f: None)})
              for io in (True, False)}  # fmt: skip
    try:
        frame = smooth_frame()
        mats = [centred_similarity(0.5, 0.2)]
        alpha = polygon_alpha(np.array([[20, 30], [108, 30], [108, 70], [20, 70]], float), SIZE, 4.0)
        jobs = [CropJob(0, alpha, {"cond": np.zeros(16, np.float32)})]
        outs = {}
        for io, s in stores.items():
            fm = FaceModel("generator_heads", SIZE, store=s, batch_sizes=(1,), threads=1)
            assert fm.prepare(120)
            outs[io] = fm.run(frame, mats, jobs, 4.0)
        assert changed(outs[False], frame).sum() > 2000
        assert np.abs(outs[True].astype(int) - outs[False]).max() <= 2  # cv2 fixed point vs float torch
    finally:
        for s in stores.values():
            s.close()


def test_begin_and_finish_give_the_run_of_the_same_crops(store: ModelStore, weights_dir: Path,
                                                        tracked: tuple[np.ndarray, list[Face]]) -> None:  # fmt: skip
    """``begin`` on the predicted faces + ``finish`` with weights == ``run`` on those crops; refused on a device
    backend, for other faces, for another frame and once the crop moved too far."""
    frame, faces = tracked
    stores = {io: store_with(store, weights_dir, {"heads": Candidate("heads", lambda io=io: HeadsBackend(io),
                                                                     lambda f: None)})
              for io in (True, False)}  # fmt: skip
    try:
        ctx = ctx_for(frame, faces)
        m = alignment_matrix(faces[0], SIZE)
        alpha = polygon_alpha(np.array([[20, 30], [108, 30], [108, 70], [20, 70]], float), SIZE, 4.0)
        jobs = [CropJob(0, None, {"cond": np.zeros(16, np.float32)})]
        assert FaceModel("generator_heads", SIZE, store=stores[True], batch_sizes=(1,)).begin(frame, ctx, jobs) is None
        fm = FaceModel("generator_heads", SIZE, store=stores[False], batch_sizes=(1,), threads=1)
        assert fm.prepare(120)
        pending = fm.begin(frame, ctx, jobs)
        assert pending is not None and fm.accepts(pending, ctx)
        got = fm.finish(pending, frame, [alpha], 4.0)
        assert np.array_equal(got, fm.run(frame, [m], [replace(jobs[0], alpha=alpha)], 4.0))
        assert not fm.accepts(pending, FrameContext(1, 0.0, faces, 640, 480))  # another frame's
        assert not fm.accepts(pending, ctx_for(frame, [shifted(faces[0], 0.0, 640)]))  # another face id
        far = transform_scale(m) ** -1 * 0.2 * SIZE  # a fifth of the crop side, in frame pixels
        moved = replace(faces[0], landmarks_px=faces[0].landmarks_px + np.array([far, 0.0, 0.0]))
        assert not fm.accepts(pending, ctx_for(frame, [moved]))
        near = replace(faces[0], landmarks_px=faces[0].landmarks_px + np.array([far / 4, 0.0, 0.0]))
        assert fm.accepts(pending, ctx_for(frame, [near]))
        assert np.array_equal(fm.finish(fm.begin(frame, ctx, jobs), frame, [np.zeros_like(alpha)], 4.0), frame)
        fm.close()
    finally:
        for s in stores.values():
            s.close()


def test_two_faces_start_beside_the_tracker_and_a_new_face_runs_in_turn(
    store: ModelStore, tracked: tuple[np.ndarray, list[Face]]
) -> None:
    """Both faces of a frame in one early run (batched once the batch-2 graph is in); a face that was not in the
    previous frame makes the frame run in turn; the picture is the in-turn one (same faces, same crops, and this
    module's generator has bias-only heads, so raw and restored crops give it the same heads)."""
    from stream.pipeline import FramePipeline

    frame, faces = tracked
    wide = np.hstack([frame, frame])
    two = [replace(faces[0], image_size=(1280, 480)), shifted(faces[0], 640.0, 1280)]
    tracker = FixedTracker(two[:1])
    p = FramePipeline([{"name": "restore"}, REMOVE_NEURAL], tracker_factory=lambda cfg: tracker)
    try:
        p.prepare(120)
        p.process(wide, 0.0)
        tracker.faces = two  # a second face arrives: not in the previous frame, so the frame runs in turn
        in_turn, res = p.process(wide, 0.04)
        assert not res.errors and "restore.restorer.overlapped" not in res.timings_ms
        assert store.get(ModelRequest("restorer", SIZE, 2, threads=1), timeout=120).ready
        early, res = p.process(wide, 0.08)  # the same two faces: both start beside the tracker, batched
        assert not res.errors and "restore.restorer.overlapped" in res.timings_ms
        assert p.models()["restorer"]["batches"] == [1, 2]
        assert changed(early, wide)[:, :640].any() and changed(early, wide)[:, 640:].any()
        assert np.abs(early.astype(int) - in_turn).max() <= 1
        # the heads' batch-2 graph is loading too: let it finish here, not during later tests
        assert store.get(ModelRequest("generator_heads", SIZE, 2, threads=1), timeout=120).ready
    finally:
        p.close()


def test_a_chain_loads_only_the_sessions_its_plan_runs(store: ModelStore, weights_dir: Path) -> None:
    """Models load once the overlap plan has set their threads: no 2-thread session is loaded and dropped."""
    from stream.pipeline import FramePipeline

    own = store_with(store, weights_dir, {"onnxruntime": default_candidates()["onnxruntime"]})
    old = set_shared_store(own)
    try:
        p = FramePipeline([{"name": "restore"}, REMOVE_NEURAL], tracker_factory=lambda cfg: None)
        p.prepare(120)
        assert sorted(own.describe()) == ["generator_heads@128/b1/t1", "restorer@128/b1/t1"]
        p.close()
        q = FramePipeline([{"name": "restore"}, REMOVE_NEURAL], tracker_factory=lambda cfg: None, overlap=False)
        q.prepare(120)
        assert sorted(own.describe())[:2] == ["generator@128/b1", "generator_heads@128/b1/t1"]
        q.close()
    finally:
        set_shared_store(old)
        own.close()
