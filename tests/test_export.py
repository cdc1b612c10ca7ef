"""ONNX export: static graphs, TensorRT op set, onnxslim, fp16 conversion, manifests, parity (random and real)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from accel.cache import sha256_file  # noqa: E402
from export.export import ExportOptions, ParityError, dedupe_nodes, export_model, toposort  # noqa: E402
from export.manifest import Manifest  # noqa: E402
from export.models import (  # noqa: E402
    MODEL_NAMES,
    config_for_size,
    config_from_json,
    config_to_json,
    example_inputs,
    load_model,
    model_spec,
    save_weights,
)
from export.parity import FP16_REL_L2, FP32_MAX_ABS, compare, onnxruntime_outputs, torch_outputs  # noqa: E402
from export.simplify import simplify  # noqa: E402
from models.nets.onnx_export import TENSORRT_OPS, onnx_ops  # noqa: E402

SMALL = 32  # every model at 32 px: the same graphs as at 128, a fraction of the export time


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def _static_dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    assert all(d.HasField("dim_value") for d in dims), f"{value_info.name} has a dynamic dimension"
    return tuple(d.dim_value for d in dims)


# -- export + manifest -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_writes_static_checked_graph_and_manifest(name: str, tmp_path: Path) -> None:
    res = export_model(name, tmp_path, ExportOptions(size=SMALL, batch=2))
    m = Manifest.load(res.manifest_path)
    assert m == res.manifest
    assert m.onnx_sha256 == sha256_file(res.onnx_path) and m.onnx_path(res.manifest_path) == res.onnx_path
    assert m.opset == 17 and m.precision == "fp32" and m.batch == 2 and m.size == SMALL
    assert m.source_weights == "random-init seed 0"
    assert m.simplified.startswith("onnxslim") or m.simplified.startswith("none:")
    assert {"torch", "onnx", "onnxruntime"} <= set(m.exporter)
    assert m.inputs[0].name == "image" and m.inputs[0].shape == (2, 3, SMALL, SMALL)
    assert "[-1, 1]" in m.inputs[0].normalisation
    channels = {"field": 2, "residual": 3, "mask": 1} if name == "generator_heads" else {"out": 3}
    assert {s.name: s.shape for s in m.outputs} == {k: (2, c, SMALL, SMALL) for k, c in channels.items()}

    model = onnx.load(str(res.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    graph_inputs = {i.name: _static_dims(i) for i in model.graph.input}
    assert graph_inputs == {s.name: s.shape for s in m.inputs}
    assert {o.name: _static_dims(o) for o in model.graph.output} == {s.name: s.shape for s in m.outputs}
    assert onnx_ops(res.onnx_path) <= TENSORRT_OPS
    rnd = m.parity["random"]
    assert rnd["ok"] and len(rnd["outputs"]) == len(channels)
    assert all(o["max_abs"] <= FP32_MAX_ABS for o in rnd["outputs"])


def test_export_from_weights_file_records_hash_and_uses_those_weights(tmp_path: Path) -> None:
    lm = load_model("generator", SMALL, seed=3)
    with torch.no_grad():  # the output head starts at zero (identity); a trained net does not
        for n, p in lm.module.named_parameters():
            if "head" in n or "film" in n:
                p.normal_(0.0, 0.3)
    weights = save_weights(lm.module, lm.config, tmp_path / "w" / "generator.pt")
    res = export_model("generator", tmp_path, ExportOptions(size=SMALL), weights=weights)
    assert res.manifest.source_weights == f"sha256:{sha256_file(weights)} generator.pt"
    spec = model_spec("generator")
    feed = example_inputs(spec, 1, SMALL, seed=7)
    got = onnxruntime_outputs(res.onnx_path, feed)
    assert compare(torch_outputs(lm.module, feed, spec.outputs), got)[0].max_abs <= FP32_MAX_ABS
    random_init = torch_outputs(load_model("generator", SMALL, seed=3).module, feed, spec.outputs)
    assert compare(random_init, got)[0].max_abs > 1e-2  # really the file's weights, not a fresh init


def test_weights_without_config_or_for_another_size_are_rejected(tmp_path: Path) -> None:
    lm = load_model("style_autoencoder", SMALL)
    weights = save_weights(lm.module, lm.config, tmp_path / "sae.pt")
    with pytest.raises(ValueError, match="size 32"):
        load_model("style_autoencoder", 64, weights)
    weights.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="config"):
        load_model("style_autoencoder", SMALL, weights)
    with pytest.raises(ValueError, match="unknown model"):
        model_spec("discriminator")


def test_config_for_size_extends_channel_tables_and_round_trips_json() -> None:
    spec = model_spec("restorer")
    cfg = config_for_size(spec, 256)
    assert cfg.size == 256 and cfg.channels[128] == max(8, cfg.channels[64] // 2) and 256 not in cfg.channels
    assert config_from_json(spec, json.loads(json.dumps(config_to_json(cfg)))) == cfg
    assert config_for_size(spec, 128) == spec.config_cls()


# -- fp16 --------------------------------------------------------------------------------------------------
def _fp16_or_skip(name: str, tmp_path: Path, weights: Path | None = None) -> Manifest:
    res = export_model(name, tmp_path, ExportOptions(size=SMALL, precision="fp16"), weights=weights)
    if "skipped" in res.manifest.parity["random"]:
        pytest.skip(res.manifest.parity["random"]["skipped"])
    return res.manifest


def test_fp16_export_keeps_fp32_io_and_matches(tmp_path: Path) -> None:
    m = _fp16_or_skip("style_autoencoder", tmp_path)
    model = onnx.load(str(tmp_path / m.onnx_file))
    io_types = {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}
    big = [t for t in model.graph.initializer if int(np.prod(t.dims)) >= 64]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert m.parity["random"]["outputs"][0]["rel_l2"] <= FP16_REL_L2


def test_fp16_restorer_keeps_code_search_in_fp32(tmp_path: Path) -> None:
    # Codebook initialised from encoder features (the data-dependent init VQ training uses): codes are as
    # separated as after training. A fresh random codebook is equidistant from everything, so even fp16
    # rounding of the input flips codes; that is a property of untrained weights, not of the export.
    spec = model_spec("restorer")
    lm = load_model("restorer", SMALL)
    feed = example_inputs(spec, 1, SMALL, seed=0)
    with torch.no_grad():
        feats = lm.module.encode(torch.from_numpy(feed["image"]))
        for r in lm.module.cfg.quantised:
            q = lm.module.quantizers[str(r)]
            flat = feats[r].permute(0, 2, 3, 1).reshape(-1, q.dim)
            q.codebook[: len(flat)] = flat[: q.n_codes]
    weights = save_weights(lm.module, lm.config, tmp_path / "w" / "restorer.pt")
    m = _fp16_or_skip("restorer", tmp_path, weights)
    model = onnx.load(str(tmp_path / m.onnx_file))
    argmins = [n for n in model.graph.node if n.op_type == "ArgMin"]
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    assert argmins
    for n in argmins:  # the distances feeding each argmin come from fp32 ops with fp32 codebook terms
        src = producers[n.input[0]]  # no fp16 round trip in between
        assert n.name.startswith("/quantizers.") and src.name.startswith("/quantizers.") and src.op_type == "Add"
        matmul = next(x for x in model.graph.node if x.name == n.name.replace("ArgMin", "MatMul"))
        assert all(inits[i].data_type == onnx.TensorProto.FLOAT for i in matmul.input if i in inits)
    assert m.parity["random"]["ok"], m.parity


def test_failed_parity_raises_and_keeps_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.export as ex

    def corrupt(path: Path, feed: dict) -> dict:
        return {k: v + 1e-3 for k, v in onnxruntime_outputs(path, feed).items()}

    monkeypatch.setattr(ex, "onnxruntime_outputs", corrupt)
    with pytest.raises(ParityError, match="parity failed"):
        export_model("style_autoencoder", tmp_path, ExportOptions(size=SMALL))
    m = Manifest.load(next(tmp_path.glob("*.manifest.json")))
    assert m.parity["random"]["ok"] is False and m.parity["random"]["outputs"][0]["max_abs"] > FP32_MAX_ABS


# -- graph utilities ---------------------------------------------------------------------------------------
def _tiny_graph(nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    return h.make_graph(nodes, "g", [x], [y])


def test_toposort_orders_nodes_and_rejects_cycles() -> None:
    h = onnx.helper
    a, b, c = (
        h.make_node("Neg", ["x"], ["a"], "A"),
        h.make_node("Abs", ["a"], ["b"], "B"),
        h.make_node("Add", ["a", "b"], ["y"], "C"),
    )
    assert [n.name for n in toposort(_tiny_graph([c, b, a]))] == ["A", "B", "C"]
    assert [n.name for n in toposort(_tiny_graph([a, b, c]))] == ["A", "B", "C"]
    cyc = _tiny_graph([h.make_node("Neg", ["q"], ["p"], "P"), h.make_node("Neg", ["p"], ["q"], "Q")])
    with pytest.raises(ValueError, match="cycle"):
        toposort(cyc)


def test_dedupe_drops_identical_nodes_only() -> None:
    h = onnx.helper
    cast = h.make_node("Cast", ["x"], ["x32"], "cast", to=onnx.TensorProto.FLOAT)
    g = dedupe_nodes(_tiny_graph([cast, cast, h.make_node("Neg", ["x32"], ["y"], "N")]))
    assert [n.name for n in g.node] == ["cast", "N"]
    other = h.make_node("Abs", ["x"], ["x32"], "other")
    with pytest.raises(ValueError, match="two different nodes"):
        dedupe_nodes(_tiny_graph([cast, other]))


def test_simplify_never_grows_graph_and_falls_back_without_onnxslim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = export_model("style_autoencoder", tmp_path, ExportOptions(size=SMALL, simplify=False))
    assert res.manifest.simplified == "none: disabled"
    before = onnx.load(str(res.onnx_path))
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import fails as if not installed
    rep = simplify(res.onnx_path)
    assert rep.tool == "none: onnxslim not installed" and rep.nodes_before == rep.nodes_after == len(before.graph.node)
    monkeypatch.delitem(sys.modules, "onnxslim")
    pytest.importorskip("onnxslim")
    rep = simplify(res.onnx_path)
    assert rep.tool.startswith("onnxslim") and rep.nodes_after <= rep.nodes_before
    spec = model_spec("style_autoencoder")
    feed = example_inputs(spec, 1, SMALL)
    ref = torch_outputs(load_model("style_autoencoder", SMALL).module, feed, spec.outputs)
    assert compare(ref, onnxruntime_outputs(res.onnx_path, feed))[0].max_abs <= FP32_MAX_ABS


def test_compare_closed_form() -> None:
    ref = {"o": np.array([3.0, 4.0], dtype=np.float32)}
    (p,) = compare(ref, {"o": np.array([3.0, 4.5], dtype=np.float32)})
    assert p.max_abs == pytest.approx(0.5) and p.rel_l2 == pytest.approx(0.5 / 5.0)
    assert p.ok("fp16") is False and compare(ref, ref)[0].ok("fp32")
    with pytest.raises(ValueError, match="names differ"):
        compare(ref, {"x": ref["o"]})
    with pytest.raises(ValueError, match="shape"):
        compare(ref, {"o": ref["o"][:1]})


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    assert main(["export", "style_autoencoder", "--out", str(tmp_path), "--size", str(SMALL)]) == 0
    assert (tmp_path / "style_autoencoder_32_b1_fp32.onnx").is_file()
    assert (tmp_path / "style_autoencoder_32_b1_fp32.manifest.json").is_file()
    assert main(["export", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["export", "generator", "--out", str(tmp_path), "--size", str(SMALL),
                 "--weights-dir", str(tmp_path / "missing")]) == 1  # fmt: skip
    assert "generator" in capsys.readouterr().err


# -- real inputs -------------------------------------------------------------------------------------------
def test_parity_on_aligned_face_crops(shared_data: Path, landmarker_model: Path, tmp_path: Path) -> None:
    from export.parity import aligned_crops, crops_to_nchw

    crops = aligned_crops(shared_data / "video" / "liveportrait_d9.mp4", 128, n=2, stride=10, max_frames=40)
    assert crops.shape == (2, 128, 128, 3) and crops.dtype == np.uint8
    real = crops_to_nchw(crops)
    assert real.min() >= -1.0 and real.max() <= 1.0
    res = export_model("style_autoencoder", tmp_path, ExportOptions(size=128), real_inputs=real)
    for key in ("real_0", "real_1"):
        assert res.manifest.parity[key]["ok"], res.manifest.parity[key]
        print(key, res.manifest.parity[key]["outputs"][0])
