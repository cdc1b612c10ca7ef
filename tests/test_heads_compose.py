"""The generator's last step on the host (models.heads_compose) against torch's, and the heads graph composed
against the whole generator graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.heads_compose import compose_heads, warp_border  # noqa: E402
from models.nets.generator import base_grid, compose, warp  # noqa: E402


def rand(shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def torch_warp(x: np.ndarray, field: np.ndarray) -> np.ndarray:
    h, w = x.shape[2:]
    return warp(torch.from_numpy(x), torch.from_numpy(field), base_grid(h, w)).numpy()


@pytest.mark.parametrize("n,h,w,reach", [(1, 32, 32, 0.05), (2, 24, 40, 0.3), (1, 16, 16, 3.0)])
def test_warp_border_matches_grid_sample(n: int, h: int, w: int, reach: float) -> None:
    """Bilinear, border padding, align_corners=False; reach 3 sends most samples past the edge (clamped)."""
    x = rand((n, 3, h, w))
    field = rand((n, 2, h, w), -reach, reach, seed=1)
    np.testing.assert_allclose(warp_border(x, field), torch_warp(x, field), atol=1e-5)


def test_warp_border_closed_form() -> None:
    x = rand((1, 3, 8, 10))
    assert np.array_equal(warp_border(x, np.zeros((1, 2, 8, 10), np.float32)), x)  # no field: the identity
    k = 3  # a field of 2k/W grid units is k pixels: out(j) = x(j + k), the last column repeated past the edge
    field = np.zeros((1, 2, 8, 10), np.float32)
    field[:, 0] = 2.0 * k / 10
    cols = np.minimum(np.arange(10) + k, 9)
    np.testing.assert_allclose(warp_border(x, field), x[..., cols], atol=1e-6)
    field = np.zeros((1, 2, 8, 10), np.float32)
    field[:, 1] = -1.0 / 8  # half a pixel up: the mean of each row and the one above (row 0 clamps to itself)
    above = x[:, :, np.maximum(np.arange(8) - 1, 0)]
    np.testing.assert_allclose(warp_border(x, field), (x + above) / 2.0, atol=1e-6)


def test_compose_heads_matches_the_generator_composition_and_its_box() -> None:
    n, s = 2, 32
    y, res = rand((n, 3, s, s)), rand((n, 3, s, s), seed=2)
    field, mask = rand((n, 2, s, s), -0.2, 0.2, seed=3), rand((n, 1, s, s), 0.0, 1.0, seed=4)
    ref = compose(*(torch.from_numpy(a) for a in (y, field, res, mask)), base_grid(s, s)).numpy()
    full = compose_heads(y, field, res, mask)
    np.testing.assert_allclose(full, ref, atol=1e-5)
    box = (5, 20, 9, 30)
    part = compose_heads(y, field, res, mask, box)
    inside = np.zeros((s, s), bool)
    inside[5:20, 9:30] = True
    np.testing.assert_allclose(part[..., inside], ref[..., inside], atol=1e-5)  # samples still reach outside it
    assert np.array_equal(part[..., ~inside], y[..., ~inside])


def test_compose_heads_rejects_mismatched_heads() -> None:
    y = rand((1, 3, 16, 16))
    with pytest.raises(ValueError, match="heads do not match"):
        compose_heads(y, np.zeros((1, 2, 16, 16), np.float32), np.zeros((1, 3, 8, 8), np.float32),
                      np.zeros((1, 1, 16, 16), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="field must be"):
        warp_border(y, np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="box"):
        warp_border(y, np.zeros((1, 2, 16, 16), np.float32), (4, 4, 0, 16))


def test_heads_graph_composed_equals_the_generator_graph(tmp_path: Path) -> None:
    """Both ONNX graphs from one weights file: composing the heads on the crop they came from is the generator."""
    pytest.importorskip("onnxruntime")
    from export.export import ExportOptions, export_model
    from export.models import example_inputs, load_model, model_spec, save_weights
    from export.parity import onnxruntime_outputs
    from tests.test_nets import randomize_heads

    size, batch = 32, 2
    g = load_model("generator", size, seed=3)
    randomize_heads(g.module, std=0.5)  # a zero-init head would make every field 0 and hide the warp
    weights = save_weights(g.module, g.config, tmp_path / "w" / "generator.pt")
    paths = {}
    for name in ("generator", "generator_heads"):
        res = export_model(name, tmp_path, ExportOptions(size=size, batch=batch), weights=weights)
        assert res.manifest.source_weights.endswith("generator.pt")  # the heads graph shares the weights
        paths[name] = res.onnx_path
    assert [o.name for o in res.manifest.outputs] == list(model_spec("generator_heads").outputs)
    feed = example_inputs(model_spec("generator"), batch, size, seed=5)
    full = onnxruntime_outputs(paths["generator"], feed)["out"]
    heads = onnxruntime_outputs(paths["generator_heads"], feed)
    assert np.abs(heads["field"]).max() > 1e-3  # the warp is exercised
    got = compose_heads(feed["image"], heads["field"], heads["residual"], heads["mask"])
    assert np.abs(got - full).max() <= 1e-4
