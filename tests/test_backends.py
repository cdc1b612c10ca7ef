"""Inference backends: parity with PyTorch, the ONNX Runtime optimised-graph cache, engine-cache keys,
bad input, and fallback selection. CUDA / TensorRT paths run only where those exist."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from accel.backend import Backend, BackendError  # noqa: E402
from accel.cache import engine_cache_key, ort_cache_key  # noqa: E402
from accel.onnxruntime_backend import OnnxRuntimeBackend, OrtOptions, choose_providers  # noqa: E402
from accel.select import BackendSelector, Candidate, ModelFiles, default_candidates  # noqa: E402
from accel.tensorrt_backend import EngineBuilds  # noqa: E402
from accel.torch_backend import TorchBackend, TorchOptions  # noqa: E402
from export.export import ExportOptions, export_model  # noqa: E402
from export.manifest import Manifest  # noqa: E402
from export.models import MODEL_NAMES, example_inputs, load_model, model_spec  # noqa: E402
from export.parity import FP16_REL_L2, FP32_MAX_ABS, compare, torch_outputs  # noqa: E402

SIZE, BATCH = 32, 2
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


needs_tensorrt = pytest.mark.skipif(not (_has_tensorrt() and HAS_CUDA), reason="tensorrt not importable (or no CUDA)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    """Every model exported once at 32 px, batch 2 (fp32)."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for name in MODEL_NAMES:
        res = export_model(name, out, ExportOptions(size=SIZE, batch=BATCH))
        files[name] = ModelFiles.from_manifest(res.manifest_path)
    return files


def _reference(name: str, seed: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    spec = model_spec(name)
    feed = example_inputs(spec, BATCH, SIZE, seed=seed)
    return feed, torch_outputs(load_model(name, SIZE).module, feed, spec.outputs)


# -- parity --------------------------------------------------------------------------------------------------
def worst(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """Largest max-abs error over every output (the generator's heads graph has three)."""
    return max(r.max_abs for r in compare(ref, got))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnxruntime_cpu_matches_pytorch_with_preallocated_outputs(
    name: str, exported: dict[str, ModelFiles], tmp_path: Path
) -> None:
    f = exported[name]
    out = f.manifest.outputs[0].name
    with OnnxRuntimeBackend(OrtOptions(providers=("CPUExecutionProvider",), cache_dir=tmp_path)) as b:
        b.load(f.onnx_path, f.manifest)
        assert (b.name, b.device, b.precision) == ("onnxruntime", "cpu", "fp32")
        feed, ref = _reference(name)
        first = b.run(feed)
        assert list(first) == list(model_spec(name).outputs)
        assert worst(ref, first) <= FP32_MAX_ABS
        buf = first[out]
        feed2, ref2 = _reference(name, seed=2)
        second = b.run(feed2)
        assert second[out] is buf  # IO binding writes into the buffers preallocated at load
        assert worst(ref2, second) <= FP32_MAX_ABS
        bufs = b.input_buffers()  # bound at load: filling them in place is the zero-copy path
        for k, v in feed.items():
            bufs[k][...] = v
        assert worst(ref, b.run(bufs)) <= FP32_MAX_ABS
        assert not any(np.shares_memory(bufs[k], v) for k, v in feed2.items())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_cpu_matches_pytorch(name: str, exported: dict[str, ModelFiles]) -> None:
    f = exported[name]
    with TorchBackend(TorchOptions(device="cpu")) as b:
        b.load(None, f.manifest)  # rebuilt from the manifest's "random-init seed 0"
        assert (b.device, b.precision) == ("cpu", "fp32")
        feed, ref = _reference(name)
        assert worst(ref, b.run(feed)) <= FP32_MAX_ABS


def test_torch_cpu_fp16_relative_error(exported: dict[str, ModelFiles]) -> None:
    """torch's CPU fp16 kernels are slow and partial; judged where they run, skipped where they do not."""
    f = exported["style_autoencoder"]
    b = TorchBackend(TorchOptions(device="cpu", precision="fp16"))
    try:
        b.load(None, f.manifest)
        feed, ref = _reference("style_autoencoder")
        got = b.run(feed)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch CPU has no fp16 kernel here: {e}")
    assert b.precision == "fp16"
    assert compare(ref, got)[0].rel_l2 <= FP16_REL_L2


def test_onnxruntime_fp16_graph_relative_error(tmp_path: Path) -> None:
    res = export_model("generator", tmp_path, ExportOptions(size=SIZE, batch=BATCH, precision="fp16"))
    if "skipped" in res.manifest.parity["random"]:
        pytest.skip(res.manifest.parity["random"]["skipped"])
    f = ModelFiles.from_manifest(res.manifest_path)
    with OnnxRuntimeBackend(OrtOptions(cache_dir=tmp_path / "cache")) as b:
        b.load(f.onnx_path, f.manifest)
        assert b.precision == "fp16"
        feed, ref = _reference("generator")
        assert compare(ref, b.run(feed))[0].rel_l2 <= FP16_REL_L2


# -- ONNX Runtime optimised-graph cache ----------------------------------------------------------------------
def test_onnxruntime_second_start_loads_cached_optimised_graph(exported: dict[str, ModelFiles], tmp_path: Path) -> None:
    f = exported["restorer"]
    opts = OrtOptions(providers=("CPUExecutionProvider",), cache_dir=tmp_path)
    cold = OnnxRuntimeBackend(opts).load(f.onnx_path, f.manifest)
    assert not cold.loaded_from_cache and cold.cache_path is not None and cold.cache_path.is_file()
    stat = cold.cache_path.stat()
    feed, ref = _reference("restorer")
    cold_out = {k: v.copy() for k, v in cold.run(feed).items()}
    cold.close()

    warm = OnnxRuntimeBackend(opts).load(f.onnx_path, f.manifest)
    assert warm.loaded_from_cache and warm.cache_path == cold.cache_path
    assert warm.session._model_path == str(warm.cache_path)  # the session was created from the cache file
    assert warm.cache_path.stat().st_mtime_ns == stat.st_mtime_ns  # reused, not rewritten
    assert list(tmp_path.iterdir()) == [warm.cache_path]  # no temporary files left behind
    warm_out = warm.run(feed)
    np.testing.assert_allclose(warm_out["out"], cold_out["out"], atol=1e-6)
    assert compare(ref, warm_out)[0].max_abs <= FP32_MAX_ABS
    print(f"onnxruntime load: cold {cold.load_ms:.0f} ms (optimise + save), warm {warm.load_ms:.0f} ms (cached)")
    warm.close()


def test_onnxruntime_corrupt_cache_is_rebuilt(
    exported: dict[str, ModelFiles], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = exported["style_autoencoder"]
    opts = OrtOptions(providers=("CPUExecutionProvider",), cache_dir=tmp_path)
    b = OnnxRuntimeBackend(opts).load(f.onnx_path, f.manifest)
    assert b.cache_path is not None
    b.cache_path.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING):
        b2 = OnnxRuntimeBackend(opts).load(f.onnx_path, f.manifest)
    assert not b2.loaded_from_cache and "re-optimising" in caplog.text
    feed, ref = _reference("style_autoencoder")
    assert compare(ref, b2.run(feed))[0].max_abs <= FP32_MAX_ABS


def test_cache_keys_are_pure_and_cover_every_invalidating_input() -> None:
    sha = "ab" * 32
    base = engine_cache_key(sha, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16")
    assert base == engine_cache_key(sha, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16")
    variants = {
        engine_cache_key("cd" * 32, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16"),
        engine_cache_key(sha, "10.4.0", "NVIDIA H100 80GB HBM3", "fp16"),
        engine_cache_key(sha, "10.3.0", "NVIDIA H200", "fp16"),
        engine_cache_key(sha, "10.3.0", "NVIDIA H100 80GB HBM3", "fp32"),
        engine_cache_key(sha, "10.3.0", "NVIDIA H100/80GB HBM3", "fp16"),  # slugs alike, digest differs
    }
    assert base not in variants and len(variants) == 5
    assert base.startswith("abababababababab-fp16-trt10.3.0-nvidia-h100-80gb-hbm3-")
    assert all(c.isalnum() or c in "-." for c in base)  # a safe file name
    for bad in (("xyz", "10", "gpu", "fp16"), (sha, "10", "gpu", "int8"), (sha, "", "gpu", "fp16")):
        with pytest.raises(ValueError):
            engine_cache_key(*bad)
    cpu = ort_cache_key(sha, "1.31.1", ("CPUExecutionProvider",), "all")
    assert cpu != ort_cache_key(sha, "1.31.1", ("CUDAExecutionProvider", "CPUExecutionProvider"), "all")
    assert cpu != ort_cache_key(sha, "1.32.0", ("CPUExecutionProvider",), "all")


def test_provider_choice() -> None:
    cpu = "CPUExecutionProvider"
    assert choose_providers([cpu], None) == (cpu,)
    assert choose_providers(["CUDAExecutionProvider", cpu, "TensorrtExecutionProvider"], None) == (
        "TensorrtExecutionProvider", "CUDAExecutionProvider", cpu,
    )  # fmt: skip
    with pytest.raises(BackendError, match="not available"):
        choose_providers([cpu], ("CUDAExecutionProvider",))


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_error_and_backend_keeps_running(exported: dict[str, ModelFiles], tmp_path: Path) -> None:
    f = exported["generator"]
    for b in (OnnxRuntimeBackend(OrtOptions(cache_dir=tmp_path)), TorchBackend(TorchOptions(device="cpu"))):
        b.load(f.onnx_path if b.name == "onnxruntime" else None, f.manifest)
        feed, ref = _reference("generator")
        with pytest.raises(ValueError, match=r"'image' must have shape \(2, 3, 32, 32\)"):
            b.run({**feed, "image": feed["image"][:1]})
        with pytest.raises(ValueError, match="'cond' must be float32, got float64"):
            b.run({**feed, "cond": feed["cond"].astype(np.float64)})
        with pytest.raises(ValueError, match="inputs must be exactly"):
            b.run({"image": feed["image"]})
        assert compare(ref, b.run(feed))[0].max_abs <= FP32_MAX_ABS
        b.close()
    with pytest.raises(RuntimeError, match="load"):
        TorchBackend().run({})


# -- selection and fallback ----------------------------------------------------------------------------------
class _Fake(Backend):
    def __init__(self, name: str, fail: bool) -> None:
        super().__init__()
        self.name, self.fail, self.closed = name, fail, False

    @property
    def device(self) -> str:
        return "fake"

    @property
    def precision(self) -> str:
        return "fp32"

    def _load(self, source: object, manifest: Manifest) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} cannot load\nsecond line of detail")

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {o.name: np.zeros(o.shape, np.float32) for o in self._manifest().outputs}

    def close(self) -> None:
        self.closed = True


def _selector(fails: dict[str, bool], available: dict[str, bool] | None = None) -> tuple[BackendSelector, dict]:
    made: dict[str, _Fake] = {}

    def factory(n: str) -> _Fake:
        made[n] = _Fake(n, fails[n])
        return made[n]

    cands = {
        n: Candidate(n, (lambda n=n: factory(n)), lambda f: f.onnx_path, (lambda n=n: (available or {}).get(n, True)))
        for n in fails
    }
    return BackendSelector(candidates=cands, order=tuple(fails), warmup_runs=1), made


def test_failed_backend_falls_back_to_next_with_one_log_line(
    exported: dict[str, ModelFiles], caplog: pytest.LogCaptureFixture
) -> None:
    sel, made = _selector({"tensorrt": True, "torch-cuda": False, "onnxruntime": False}, {"torch-cuda": False})
    with caplog.at_level(logging.DEBUG, logger="accel.select"):
        b = sel.select("restorer", exported["restorer"])
    assert b is made["onnxruntime"] and made["tensorrt"].closed and "torch-cuda" not in made  # unavailable: skipped
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "restorer: backend tensorrt failed" in msg and "cannot load" in msg and "falling back to onnxruntime" in msg
    assert "\n" not in msg
    assert sel.active["restorer"]["backend"] == "onnxruntime" and sel.active["restorer"]["device"] == "fake"


def test_all_backends_failing_gives_none_and_passthrough(
    exported: dict[str, ModelFiles], caplog: pytest.LogCaptureFixture
) -> None:
    sel, _ = _selector({"a": True, "b": True})
    with caplog.at_level(logging.WARNING):
        assert sel.select("generator", exported["generator"]) is None
    assert [r.getMessage().split(";")[-1].strip() for r in caplog.records] == [
        "falling back to b", "falling back to passthrough",
    ]  # fmt: skip
    assert sel.active["generator"]["backend"] == "passthrough"


def test_prefer_overrides_order(exported: dict[str, ModelFiles]) -> None:
    sel, made = _selector({"a": False, "b": False})
    assert sel.plan("b") == ["b", "a"] and sel.select("restorer", exported["restorer"], prefer="b") is made["b"]
    with pytest.raises(ValueError, match="unknown backend"):
        sel.plan("nope")


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only choice")
def test_automatic_choice_on_a_cpu_machine_is_onnxruntime(exported: dict[str, ModelFiles], tmp_path: Path) -> None:
    os.environ["RXSTREAM_ACCEL_CACHE"] = str(tmp_path)
    try:
        sel = BackendSelector(candidates=default_candidates())
        b = sel.select("style_autoencoder", exported["style_autoencoder"])
    finally:
        del os.environ["RXSTREAM_ACCEL_CACHE"]
    assert b is not None and sel.active["style_autoencoder"]["backend"] == "onnxruntime"
    assert sel.active["style_autoencoder"]["device"] == "cpu"
    b.close()


def test_background_builds_run_once_per_engine_and_record_errors(tmp_path: Path) -> None:
    builds = EngineBuilds()
    gate = threading.Event()
    calls: list[int] = []

    def build() -> None:
        calls.append(1)
        gate.wait(5)
        raise RuntimeError("parser error")

    key = tmp_path / "x.engine"
    assert builds.start(key, build) and not builds.start(key, build) and builds.running(key)
    gate.set()
    builds._threads[key].join(5)
    assert calls == [1] and not builds.running(key) and builds.errors[key] == "parser error"


# -- GPU paths (skipped here) --------------------------------------------------------------------------------
@needs_cuda
def test_torch_cuda_fp16_graph_matches(exported: dict[str, ModelFiles]) -> None:
    f = exported["generator"]
    with TorchBackend(TorchOptions(device="cuda")) as b:
        b.load(None, f.manifest)
        b.warmup(2)
        assert (b.device, b.precision) == ("cuda", "fp16") and b._graph is not None
        for seed in (1, 2):  # replaying the captured graph on new inputs
            feed, ref = _reference("generator", seed)
            assert compare(ref, b.run(feed))[0].rel_l2 <= FP16_REL_L2


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no onnxruntime CUDA")
def test_onnxruntime_cuda_matches(exported: dict[str, ModelFiles], tmp_path: Path) -> None:
    f = exported["restorer"]
    with OnnxRuntimeBackend(OrtOptions(providers=("CUDAExecutionProvider",), cache_dir=tmp_path)) as b:
        b.load(f.onnx_path, f.manifest)
        feed, ref = _reference("restorer")
        assert compare(ref, b.run(feed))[0].rel_l2 <= FP16_REL_L2


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_cache_and_parity(precision: str, exported: dict[str, ModelFiles], tmp_path: Path) -> None:
    from accel.tensorrt_backend import EngineNotReady, TensorRTBackend, TrtOptions, build_engine, engine_path

    f = exported["generator"]
    opts = TrtOptions(cache_dir=tmp_path, build_in_background=False)
    with pytest.raises(BackendError, match="no cached engine"):
        TensorRTBackend(precision, opts).load(f.onnx_path, f.manifest)
    path = build_engine(f.onnx_path, engine_path(f.onnx_path, f.manifest, precision, tmp_path), precision, opts)
    assert (tmp_path / "tensorrt.timing-cache").is_file()
    with TensorRTBackend(precision, opts) as b:
        b.load(f.onnx_path, f.manifest)
        assert b.engine_file == path
        feed, ref = _reference("generator")
        p = compare(ref, b.run(feed))[0]
        assert p.max_abs <= FP32_MAX_ABS if precision == "fp32" else p.rel_l2 <= FP16_REL_L2
    assert issubclass(EngineNotReady, BackendError)


# -- the GPU benchmark script -------------------------------------------------------------------------------
def _gpu_latency_run(tmp_path: Path, device: str) -> dict[str, Any]:
    import json

    from benchmarks.gpu_latency import main

    out = tmp_path / "gpu.json"
    args = ["--device", device, "--models", "generator", "--sizes", "32", "--batches", "1", "2",
            "--warmup", "1", "--iters", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return json.loads(out.read_text())


def test_gpu_latency_script_smoke_on_cpu(tmp_path: Path) -> None:
    """The GPU benchmark's code path on the CPU (what a lent GPU would run, minus CUDA events)."""
    res = _gpu_latency_run(tmp_path, "cpu")
    assert [c["batch"] for c in res["cases"]] == [1, 2] and (tmp_path / "gpu.png").is_file()
    for c in res["cases"]:
        for name in ("torch_fp16_graph", "torch_fp32_eager"):
            assert "error" not in c[name] and c[name]["parity"]["ok"], c[name]
            assert c[name]["host_io_ms"]["count"] == 3


@needs_cuda
def test_gpu_latency_script_on_cuda(tmp_path: Path) -> None:
    res = _gpu_latency_run(tmp_path, "cuda")
    for c in res["cases"]:
        fast = c["torch_fp16_graph"]
        assert fast["precision"] == "fp16" and fast["parity"]["ok"] and fast["device_ms"]["p50"] > 0


def test_onnxruntime_threads_do_not_spin_by_default() -> None:
    """Idle ORT workers spin-waiting would hold the cores the tracker needs between two inferences."""
    quiet = OnnxRuntimeBackend(OrtOptions())._session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    busy = OnnxRuntimeBackend(OrtOptions(allow_spinning=True))._session_options()
    assert busy.get_session_config_entry("session.intra_op.allow_spinning") == "1"
