"""Latent try-on, interpolation vectors and retrieval (models/latent): closed-form maths on synthetic inputs,
then the methods on a real example (shared data + the style autoencoder's weights; skipped without them)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.latent import features as feat  # noqa: E402
from models.latent import interpolation as interp  # noqa: E402
from models.latent import masks as mk  # noqa: E402
from models.latent.loho import (  # noqa: E402
    Cancelled,
    LohoConfig,
    LohoInputs,
    cosine_lr,
    edge_structure,
    mask_iou,
    optimise_joint,
    optimise_two_stage,
    otsu_threshold,
    structure_iou,
)
from models.latent.projection import global_cosine, layer_cosine, layer_dot, project_orthogonal  # noqa: E402
from models.latent.retrieval import FaceBank, GalleryIndex, feature_vectors, kmeans, layer_slices  # noqa: E402
from models.nets.style_autoencoder import StyleAutoencoder, StyleAutoencoderConfig  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Jobs run on one torch thread (as the stream runs them); several threads on a busy CPU crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = StyleAutoencoderConfig(size=32, w_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8}, decoder_input="encoder")
S = 128  # crop size of the synthetic face


def small_net(decoder_input: str = "encoder", seed: int = 0) -> StyleAutoencoder:
    import dataclasses

    torch.manual_seed(seed)
    return StyleAutoencoder(dataclasses.replace(SMALL, decoder_input=decoder_input)).eval()


# -- a synthetic face in crop coordinates (128 px, the alignment template's eye/mouth spots) ------
RIGHT_EYE, LEFT_EYE, MOUTH = np.array([48.2, 60.0]), np.array([79.7, 60.0]), np.array([64.3, 92.8])


def synthetic_landmarks() -> np.ndarray:
    lm = np.tile([64.0, 70.0], (478, 1))
    eye, mouth = np.array([6.0, 0.0]), np.array([10.0, 0.0])  # half widths of the eyes and the mouth
    lm[33], lm[133] = RIGHT_EYE - eye, RIGHT_EYE + eye
    lm[362], lm[263] = LEFT_EYE - eye, LEFT_EYE + eye
    lm[61], lm[291] = MOUTH - mouth, MOUTH + mouth
    t = np.linspace(-np.pi / 2, 1.5 * np.pi, len(mk.FACE_OVAL), endpoint=False)  # clockwise from the top
    lm[list(mk.FACE_OVAL)] = np.column_stack([64 + 38 * np.cos(t), 70 + 50 * np.sin(t)])
    lm[list(mk.RIGHT_BROW_UPPER)] = np.column_stack([np.linspace(36, 60, 5), np.full(5, 48.0)])
    lm[list(mk.LEFT_BROW_UPPER)] = np.column_stack([np.linspace(92, 68, 5), np.full(5, 48.0)])
    lm[list(mk.SIDES)] = [[28, 52], [28, 60], [28, 70], [100, 52], [100, 60], [100, 70]]
    lm[list(mk.RIGHT_UNDER_EYE)] = np.column_stack([np.linspace(38, 58, 6), np.full(6, 70.0)])
    lm[list(mk.LEFT_UNDER_EYE)] = np.column_stack([np.linspace(90, 70, 6), np.full(6, 70.0)])
    rng = np.random.default_rng(0)
    lm[list(mk.NOSE)] = np.column_stack([rng.uniform(58, 70, len(mk.NOSE)), rng.uniform(64, 86, len(mk.NOSE))])
    u = np.linspace(0, 2 * np.pi, len(mk.LIPS_OUTER), endpoint=False)
    lm[list(mk.LIPS_OUTER)] = np.column_stack([MOUTH[0] + 10 * np.cos(u), MOUTH[1] + 5 * np.sin(u)])
    return lm


def at(mask: np.ndarray, xy: tuple[float, float]) -> float:
    return float(mask[int(xy[1]), int(xy[0])])


# == projection ==================================================================================
def test_projection_is_orthogonal_per_layer_and_idempotent() -> None:
    g, r = torch.randn(2, 12, 224, dtype=torch.float64), torch.randn(2, 12, 224, dtype=torch.float64)
    p = project_orthogonal(g, r)
    assert layer_dot(p, r).abs().max() < 1e-10 * float(g.norm() * r.norm())
    assert torch.allclose(project_orthogonal(p, r), p, atol=1e-12)
    # What was removed is parallel to the reference, layer by layer.
    removed = g - p
    assert torch.allclose(layer_cosine(removed, r).abs(), torch.ones(2, 12, dtype=torch.float64), atol=1e-9)


def test_projection_closed_form_and_untouched_cases() -> None:
    g = torch.tensor([[[1.0, 1.0], [3.0, 4.0], [2.0, 5.0]]])
    r = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [-5.0, 2.0]]])  # layer 1: zero reference; layer 2: g ⊥ r
    p = project_orthogonal(g, r)
    assert torch.allclose(p[0, 0], torch.tensor([0.0, 1.0]))
    assert torch.equal(p[0, 1], g[0, 1])  # nothing to project against
    assert torch.allclose(p[0, 2], g[0, 2])  # already orthogonal
    assert torch.equal(project_orthogonal(g, torch.zeros_like(g)), g)
    assert torch.allclose(layer_cosine(g, r)[0], torch.tensor([1 / math.sqrt(2), 0.0, 0.0]))
    assert global_cosine(g, g) == pytest.approx(1.0)


def test_projection_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        project_orthogonal(torch.zeros(1, 3, 4), torch.zeros(1, 4, 3))


# == masks =======================================================================================
def test_polygon_and_morphology_closed_form() -> None:
    square = mk.polygon_mask(np.array([[40, 40], [80, 40], [80, 80], [40, 80]], float), S)
    assert square.sum() == 40 * 40 and at(square, (40.5, 40.5)) == 1 and at(square, (80.5, 60)) == 0
    assert mk.erode(square, 3).sum() == 34 * 34  # a square eroded by a disc of radius r: side - 2r
    grown = mk.dilate(square, 3).sum()  # Minkowski sum area: a² + 4 a r + π r²
    assert grown == pytest.approx(1600 + 4 * 40 * 3 + math.pi * 9, rel=0.02)
    band = mk.edge_band(square, 6)
    assert band.sum() == grown - 34 * 34
    assert at(band, (40.5, 60)) == 1 and at(band, (60, 60)) == 0
    soft = mk.feather(square, 2.0)
    assert soft.min() >= 0 and soft.max() <= 1 and 0.3 < at(soft, (40.5, 60)) < 0.7


def test_feature_partition_is_one_hot_and_places_features() -> None:
    lm = synthetic_landmarks()
    part = mk.feature_partition(lm, S)
    assert part.shape == (len(mk.PARTITION), S, S)
    assert np.array_equal(part.sum(axis=0), np.ones((S, S), np.float32))
    assert set(np.unique(part)) <= {0.0, 1.0}
    label = {name: part[k] for k, name in enumerate(mk.PARTITION)}
    assert at(label["glasses"], RIGHT_EYE) == 1 and at(label["glasses"], LEFT_EYE) == 1
    assert at(label["glasses"], (30, 58)) == 1  # reaches the temple
    assert at(label["mouth"], MOUTH) == 1
    assert at(label["nose"], (64, 84)) == 1
    assert at(label["skin"], (45, 95)) == 1  # cheek
    assert at(label["hair"], (64, 15)) == 1  # above the face oval's top (y = 20)
    assert at(label["background"], (3, 125)) == 1
    assert at(label["hair"], (15, 110)) == 0  # the hair ring stops at the eye line


def test_tryon_masks_are_consistent() -> None:
    lm = synthetic_landmarks()
    blob = np.zeros((S, S), np.float32)
    blob[55:65, 10:20] = 1.0  # a rendered temple arm outside the landmark band
    m = mk.tryon_masks(lm, S, blob)
    assert at(m.region, (15, 60)) == 1  # the frame's own mask joins the region
    assert not np.any((m.face > 0) & (m.region > 0)) and not np.any((m.face > 0) & (m.ignore > 0))
    assert not np.any((m.inner > 0) & (m.ignore > 0))
    assert np.array_equal(np.maximum(m.inner, m.region * m.ignore), m.region)
    assert at(m.inner, RIGHT_EYE) == 1 and at(m.face, MOUTH) == 1
    assert 0.95 < at(m.alpha, RIGHT_EYE) <= 1.0 and at(m.alpha, MOUTH) < 0.05
    with pytest.raises(ValueError):
        mk.tryon_masks(lm, S, np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError):
        mk.glasses_region(np.full((478, 2), np.nan), S)


def test_landmark_index_sets_match_mediapipe() -> None:
    pytest.importorskip("mediapipe")
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    from models.glasses.occlusion import face_oval

    def points(conns: Any) -> set[int]:
        return {c.start for c in conns} | {c.end for c in conns}

    assert tuple(int(i) for i in face_oval()) == mk.FACE_OVAL
    assert set(mk.NOSE) == points(C.FACE_LANDMARKS_NOSE)
    assert set(mk.LIPS_OUTER) <= points(C.FACE_LANDMARKS_LIPS)
    assert set(mk.RIGHT_BROW_UPPER) <= points(C.FACE_LANDMARKS_RIGHT_EYEBROW)
    assert set(mk.LEFT_BROW_UPPER) <= points(C.FACE_LANDMARKS_LEFT_EYEBROW)


def test_feature_names() -> None:
    assert mk.canonical_feature("eyes") == "glasses" and mk.canonical_feature("hair") == "hair"
    with pytest.raises(ValueError, match="unknown feature"):
        mk.canonical_feature("ears")


# == features ====================================================================================
def test_masked_mean_and_gram_closed_form() -> None:
    rng = np.random.default_rng(1)
    f = torch.from_numpy(rng.normal(size=(1, 2, 4, 4)))
    m = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    m[0, 0, 1, 2] = 1.0
    assert torch.allclose(feat.masked_mean(f, m)[0], f[0, :, 1, 2])
    w = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, 4, 4)))
    a, b, ww = f[0, 0].numpy(), f[0, 1].numpy(), w[0, 0].numpy()
    expect = np.array([[np.sum(ww * a * a), np.sum(ww * a * b)], [np.sum(ww * a * b), np.sum(ww * b * b)]]) / ww.sum()
    assert np.allclose(feat.masked_gram(f, w)[0].numpy(), expect)
    assert torch.allclose(feat.masked_gram(f, 3.0 * w), feat.masked_gram(f, w))  # mask scale cancels
    const = torch.full((1, 3, 8, 8), 2.5, dtype=torch.float64)
    assert torch.allclose(feat.masked_mean(const, w), torch.full((1, 3), 2.5, dtype=torch.float64))


def test_mask_resizing_and_distances_closed_form() -> None:
    m = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert torch.equal(feat.resize_mask(m, 2)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    f = torch.randn(1, 5, 8, 8)
    ones = torch.ones(1, 1, 16, 16)  # resized to the features' 8x8
    assert float(feat.masked_feature_distance(f, 2.0 * f, ones)) == pytest.approx(0.0, abs=1e-6)
    assert float(feat.masked_feature_distance(f, -f, ones)) == pytest.approx(4.0, abs=1e-5)
    x, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    y[:, :, :2] = 0.5
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1.0
    assert float(feat.masked_l1(x, y, half)) == pytest.approx(0.5)
    assert float(feat.masked_l1(x, y, 1.0 - half)) == pytest.approx(0.0)
    t = torch.randn(2, 7)
    assert torch.allclose(feat.relative_sq_error(2.0 * t, t), torch.ones(2))


def test_encoder_pyramid_matches_the_encoder() -> None:
    net = small_net()
    x = torch.randn(1, 3, 32, 32)
    pyr = feat.encoder_pyramid(net, x, levels=len(net.encoder.downs))
    assert [p.shape[-1] for p in pyr] == [32, 16, 8, 4]
    with torch.no_grad():
        _, coarse = net.encoder(x)
        assert torch.allclose(net.encoder.final(pyr[-1]), coarse)


# == style space =================================================================================
@pytest.mark.parametrize("decoder_input", ["const", "encoder"])
def test_decode_via_styles_equals_decode_via_codes(decoder_input: str) -> None:
    net = small_net(decoder_input)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        codes, coarse = net.encode_features(x)
        direct = net.decode(codes, coarse=coarse)
        styles = net.styles(codes)
        via = net.decode_styles(styles, coarse=coarse)
        _, inputs = net.decode_styles(styles, coarse=coarse, return_styled_inputs=True)
        _, acts = net.decode(codes, coarse=coarse, return_activations=True)
    assert torch.equal(via, direct)
    assert net.style_names[:3] == ["b4.conv", "b4.torgb", "b8.conv0"] and len(styles) == len(net.style_names)
    assert [s.shape[1] for s in styles] == net.decoder.style_channels
    assert [inputs[n].shape[1] for n in net.style_names] == net.decoder.style_channels
    assert torch.equal(inputs["b16.torgb"], acts["b16.conv1"])  # a toRGB scales its resolution's last conv
    edited = [s.clone() for s in styles]
    edited[5][:, 0] += 1.0  # one channel of one layer: the σ path is live
    with torch.no_grad():
        assert not torch.equal(net.decode_styles(edited, coarse=coarse), direct)
    with pytest.raises(ValueError):
        net.decode_styles(styles[:-1], coarse=coarse)


# == interpolation (pure) ========================================================================
def test_channel_mapping_closed_form() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, :, :2] = 1.0  # channel 0: energy only in the left half
    x[0, 1] = 2.0  # channel 1: uniform
    part = torch.zeros(2, 8, 8)
    part[0, :, :4], part[1, :, 4:] = 1.0, 1.0  # left / right halves at twice the resolution
    m = interp.channel_mapping(x, part)
    assert torch.allclose(m[:, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(m[:, 1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(m[:, 2], torch.tensor([0.5, 0.5]))  # no energy: the regions' areas
    assert torch.allclose(m.sum(dim=0), torch.ones(3))
    share = torch.tensor([[0.2], [0.8]])
    d = interp.density_mapping(share, torch.tensor([0.1, 0.9]))  # 2 vs 0.889 per unit area
    assert torch.allclose(d[:, 0], torch.tensor([2.0, 0.8 / 0.9]) / (2.0 + 0.8 / 0.9))


def test_soft_assignment_and_edit() -> None:
    m = {"a": torch.tensor([[0.7, 0.1], [0.3, 0.9]])}
    q = interp.soft_assign(m, 0.1)["a"]
    assert torch.allclose(q.sum(dim=0), torch.ones(2))
    assert torch.allclose(q[:, 0], torch.softmax(torch.tensor([7.0, 3.0]), 0))
    assert torch.allclose(interp.soft_assign(m, 1e-3)["a"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    frame, ref = [torch.tensor([[1.0, 2.0, 3.0]])], [torch.tensor([[3.0, 2.0, -1.0]])]
    qm = [torch.tensor([1.0, 0.5, 0.0])]
    assert torch.equal(interp.edit_styles(frame, ref, qm, 0.0)[0], frame[0])
    assert torch.allclose(interp.edit_styles(frame, ref, qm, 1.0)[0], torch.tensor([[3.0, 2.0, 3.0]]))
    assert torch.allclose(interp.edit_styles(frame, ref, qm, 2.0)[0], torch.tensor([[5.0, 2.0, 3.0]]))


def test_alpha_zero_is_the_frames_own_decode() -> None:
    net = small_net()
    size = net.cfg.size
    part = np.zeros((len(mk.PARTITION), size, size), np.float32)
    part[0, 8:16] = 1.0
    part[-1] = 1.0 - part[0]
    x, y = torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 3, size, size) * 2 - 1
    a, b = interp.style_sample(net, x, part), interp.style_sample(net, y, part)
    mask = interp.interpolation_mask(a, b, "eyes")
    with torch.no_grad():
        own = net(x)  # decode(encode(x))
    assert torch.equal(interp.decode_edit(net, a, mask, 0.0), own)
    assert not torch.equal(interp.decode_edit(net, a, mask, 1.0), own)
    assert all(float(q.min()) >= 0 and float(q.max()) <= 1 for q in mask.q)
    # The mask from the keyframe applies to any later frame's own styles: at α = 0 that frame's own decode.
    z = torch.rand(1, 3, size, size) * 2 - 1
    later = interp.style_sample(net, z)  # no partition: a later frame needs no mappings
    with torch.no_grad():
        assert torch.equal(interp.decode_edit(net, later, mask, 0.0), net(z))
    with pytest.raises(ValueError, match="mappings"):
        interp.interpolation_mask(later, b, "eyes")


def test_dfi_closed_form() -> None:
    rng = np.random.default_rng(0)
    query = np.zeros((2, 3))
    near_with = rng.normal(0, 0.1, (3, 2, 3)) + 1.0
    far_with = rng.normal(0, 0.1, (5, 2, 3)) + 10.0
    with_attr = np.concatenate([far_with[:2], near_with, far_with[2:]])
    without = np.concatenate([rng.normal(0, 0.1, (3, 2, 3)) - 1.0, rng.normal(0, 0.1, (4, 2, 3)) - 20.0])
    mean, idx = interp.knn_mean(with_attr, query, 3)
    assert sorted(idx.tolist()) == [2, 3, 4] and np.allclose(mean, near_with.mean(axis=0))
    w = interp.dfi_vector(query, with_attr, without, 3)
    assert np.allclose(w, near_with.mean(axis=0) - without[:3].mean(axis=0))
    codes = torch.zeros(1, 2, 3)
    assert torch.equal(interp.apply_dfi(codes, w, 0.0), codes)
    assert torch.allclose(interp.apply_dfi(codes, w, 0.5)[0], torch.from_numpy(0.5 * w).float())
    with pytest.raises(ValueError):
        interp.knn_mean(with_attr, query, 0)


# == retrieval (pure) ============================================================================
def test_kmeans_recovers_separable_blobs() -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], float)
    truth = np.repeat(np.arange(4), 25)
    x = centres[truth] + rng.normal(0, 0.5, (100, 3))
    res = kmeans(x, 4, seed=0)
    # the same partition up to relabelling: every true blob maps to exactly one cluster
    pairs = {(int(t), int(c)) for t, c in zip(truth, res.labels, strict=True)}
    assert len(pairs) == 4 and len({c for _, c in pairs}) == 4
    assert np.allclose(np.sort(res.centres, axis=0), np.sort(centres, axis=0), atol=0.5)
    assert np.array_equal(kmeans(x, 4, seed=0).labels, res.labels)  # seeded: deterministic


def test_feature_vectors_are_layer_normalised() -> None:
    rng = np.random.default_rng(0)
    channels = [3, 5, 2]
    styles = rng.normal(size=(4, 10))
    v = feature_vectors(styles, styles.mean(axis=0), rng.uniform(0, 1, 10), layer_slices(channels))
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    for sl in layer_slices(channels):
        assert np.allclose(np.linalg.norm(v[:, sl], axis=1), 1 / math.sqrt(3))
    assert layer_slices(channels) == [slice(0, 3), slice(3, 8), slice(8, 10)]


def synthetic_bank(n: int = 12, channels: tuple[int, ...] = (4, 6, 3), seed: int = 0) -> FaceBank:
    rng = np.random.default_rng(seed)
    c = sum(channels)
    maps = rng.uniform(0.01, 1.0, (n, len(mk.PARTITION), c))
    maps /= maps.sum(axis=1, keepdims=True)
    areas = np.full((n, len(mk.PARTITION)), 1.0 / len(mk.PARTITION))
    return FaceBank([f"f{i}" for i in range(n)], rng.normal(size=(n, 2, 3)).astype(np.float32),
                    rng.normal(1.0, 0.2, (n, c)).astype(np.float32), maps.astype(np.float32),
                    areas.astype(np.float32), list(channels))  # fmt: skip


def test_gallery_returns_the_item_itself_first() -> None:
    bank = synthetic_bank()
    index = GalleryIndex.build(bank, tau=0.1)
    for f in ("eyes", "mouth", "nose", "hair"):
        for i in (0, 5, 11):
            top = index.nearest(index.vector(bank.styles[i : i + 1], f)[0], f, k=3)
            assert top[0].key == f"f{i}" and top[0].score == pytest.approx(1.0)
            assert top[1].score <= top[0].score
    assert index.cluster("eyes", 3).labels.shape == (12,)
    with pytest.raises(ValueError):
        index.vector(bank.styles[:, :5], "eyes")


# == LOHO (tiny random network: mechanics, not quality) ==========================================
def tiny_inputs(size: int = 32) -> LohoInputs:
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(1, 3, size, size, generator=g) * 2 - 1  # noqa: E731
    face, region = torch.zeros(1, 1, size, size), torch.zeros(1, 1, size, size)
    face[..., 18:30, 6:26], region[..., 8:16, 4:28] = 1.0, 1.0
    return LohoInputs(img(), img(), img(), face, region, region.clone())


def test_cosine_schedule_closed_form() -> None:
    assert cosine_lr(1.0, 0.1, 0, 11) == pytest.approx(1.0)
    assert cosine_lr(1.0, 0.1, 10, 11) == pytest.approx(0.1)
    assert cosine_lr(1.0, 0.1, 5, 11) == pytest.approx(0.55)


def test_two_stage_mechanics_on_a_tiny_network() -> None:
    net = small_net()
    cfg = LohoConfig(steps_stage1=3, steps_stage2=4, feature_levels=2)
    res = optimise_two_stage(net, tiny_inputs(), cfg)
    assert [r.stage for r in res.history] == [1, 1, 1, 2, 2, 2, 2]
    assert set(res.history[0].losses) == {"identity", "structure", "total"}
    assert set(res.history[-1].losses) == {"identity", "structure", "appearance", "style", "total"}
    for r in res.history[3:]:
        assert r.cos_layers is not None and len(r.cos_layers) == net.cfg.n_layers
        assert r.max_abs_dot_after is not None and r.max_abs_dot_after < 1e-6
    assert not torch.equal(res.codes, res.init_codes)
    assert res.history[0].lr > res.history[2].lr  # cosine decay within the stage
    joint = optimise_joint(net, tiny_inputs(), cfg)
    assert len(joint.history) == 7 and all(r.stage == 0 for r in joint.history)


def test_cancel_stops_between_steps() -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        optimise_two_stage(small_net(), tiny_inputs(), LohoConfig(steps_stage1=5, steps_stage2=5), cancel)
    assert len(calls) == 3


def test_bad_loho_inputs_raise() -> None:
    x = tiny_inputs()
    with pytest.raises(ValueError, match="empty"):
        LohoInputs(x.keyframe, x.structure, x.appearance, x.face_mask, torch.zeros_like(x.region_mask),
                   x.appearance_mask)  # fmt: skip
    with pytest.raises(ValueError):
        LohoInputs(x.keyframe, x.structure[..., :16], x.appearance, x.face_mask, x.region_mask, x.appearance_mask)
    with pytest.raises(ValueError):
        LohoConfig(lr=0.0)


def test_mask_iou_and_otsu_closed_form() -> None:
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    within = np.zeros((4, 4))
    within[1] = 1.0
    assert mask_iou(a, b, within) == 1.0
    values = np.concatenate([np.full(30, 0.1), np.full(10, 0.6)])
    t = otsu_threshold(values)
    assert 0.1 < t <= 0.6 and otsu_threshold(values + 5.0) == pytest.approx(t + 5.0)
    base = torch.zeros(1, 3, 4, 4)
    edited = base.clone()
    edited[..., :2, :] = 1.0  # a half-scale change where ``a`` is set ...
    edited[..., 2:, :] = 0.2  # ... on top of a small change everywhere else in the region
    region = np.ones((4, 4))
    assert structure_iou(edited, base, a.astype(np.float32), region) == 1.0  # Otsu: the shift is not structure
    assert structure_iou(edited, base, a.astype(np.float32), region, threshold=0.05) == pytest.approx(0.5)


def test_edge_structure_closed_form() -> None:
    """1 for the reference itself and for any recolouring by gains and an offset; lower as the edges blur,
    near 0 when the bar is drawn the other way (its edges lie where the reference is flat); 0 without edges."""
    ref = torch.zeros(1, 3, 16, 16)
    ref[..., 6:9, 3:13] = 1.0  # a horizontal bar: the rim
    region = np.zeros((16, 16))
    region[2:14, 1:15] = 1.0
    assert edge_structure(ref, ref, region) == pytest.approx(1.0)
    recoloured = ref * torch.tensor([0.4, 1.5, 0.4]).reshape(1, 3, 1, 1) - 0.3  # a red rim turned green
    assert edge_structure(0.5 * ref - 0.2, ref, region) == pytest.approx(1.0)
    assert edge_structure(recoloured, ref, region) == pytest.approx(1.0)  # per-channel gains, same edges
    moved = torch.zeros_like(ref)
    moved[..., 3:13, 6:9] = 1.0  # the same bar, vertical
    assert edge_structure(moved, ref, region) < 0.1
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(ref, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert 0.5 < edge_structure(blurred, ref, region) < 0.95
    assert edge_structure(torch.zeros_like(ref), ref, region) == 0.0
    with pytest.raises(ValueError, match="empty region"):
        edge_structure(ref, ref, np.zeros((16, 16)))


def test_missing_weights_raise_a_clear_error(tmp_path: Path) -> None:
    from models.latent.model import get_autoencoder

    with pytest.raises(FileNotFoundError, match="style autoencoder weights not found"):
        get_autoencoder(tmp_path / "nope.pt")


def test_cli_parses_latent_commands() -> None:
    from stream.cli import build_parser

    p = build_parser()
    a = p.parse_args(["latent", "tryon", "me.jpg", "--frame", "round", "--out", "o.png"])
    assert (a.command, a.latent_command, a.frame, a.reference) == ("latent", "tryon", "round", None)
    a = p.parse_args(["latent", "retrieve", "me.jpg", "--feature", "eyes", "--k", "5"])
    assert (a.feature, a.k, a.gallery) == ("eyes", 5, "celeba")
    assert p.parse_args(["latent", "cluster", "--feature", "hair", "--k", "4"]).k == 4
    with pytest.raises(SystemExit):
        p.parse_args(["latent", "retrieve", "me.jpg", "--feature", "ears"])


# == real example: shared data + the trained weights =============================================
@pytest.fixture(scope="module")
def real_net() -> StyleAutoencoder:
    from models.latent.model import default_weights_path, get_autoencoder

    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"style autoencoder weights not found at {path} (rxstream train autoencoder + rxstream publish, "
                    "or set RXSTREAM_LATENT_WEIGHTS to a weights file or training checkpoint)")  # fmt: skip
    return get_autoencoder(path)


@pytest.fixture(scope="module")
def keyframe(clip_frames: Callable[..., Any], landmarker_model: Path) -> tuple[np.ndarray, Any]:
    """(frame, tracked face): the first frame of liveportrait_d0 (frontal, no glasses)."""
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    frame = np.ascontiguousarray(clip_frames("liveportrait_d0", n=1).frames[0])
    with FaceTracker(TrackerConfig(max_faces=1)) as tracker:
        faces = tracker.track(frame, 0.0)
    if not faces:
        pytest.fail("no face tracked in the first frame of liveportrait_d0")
    return frame, faces[0]


@pytest.fixture(scope="module")
def reference(shared_data: Path, landmarker_model: Path) -> Any:
    from models.latent.job import aligned_reference

    return aligned_reference(None, 128)[0]


def test_real_landmarks_land_in_their_regions(keyframe: tuple[np.ndarray, Any]) -> None:
    from models.align import align

    frame, face = keyframe
    _, m = align(frame, face, S)
    lm = mk.crop_landmarks(face.landmarks_px, m)
    regions = mk.feature_masks(lm, S)
    for i in (468, 473):  # iris centres
        assert at(regions["glasses"], lm[i]) == 1
    assert at(regions["mouth"], (lm[13] + lm[14]) / 2) == 1
    assert at(regions["nose"], lm[2]) == 1
    assert 0.08 < regions["glasses"].mean() < 0.3


LOHO_FRAMES = ("rectangle", "browline-large")  # frames with rims thick enough for a 128 px decoder to draw


@pytest.fixture(scope="module")
def loho_runs(real_net: StyleAutoencoder, keyframe: tuple[np.ndarray, Any], reference: Any) -> dict[str, Any]:
    """Per catalogue frame, two-stage and one-stage runs on the real example (tens of steps at 128 px) and
    the region-structure scores (Otsu change IoU and edge structure) of the stage-1, two-stage and one-stage
    results."""
    from models.align import align
    from models.latent import job
    from models.latent.loho import encode_keyframe

    frame, face = keyframe
    size = real_net.cfg.size
    crop, m = align(frame, face, size)
    lm = mk.crop_landmarks(face.landmarks_px, m)
    cfg = LohoConfig(steps_stage1=20, steps_stage2=20)
    runs: dict[str, Any] = {}
    for name in LOHO_FRAMES:
        structure = job.render_structure(frame, face, name, m, size)
        masks = mk.tryon_masks(lm, size, structure.alpha)
        inputs = job.build_inputs(crop, structure, reference, masks, mk.MaskConfig())
        init = encode_keyframe(real_net, inputs.keyframe)
        two = optimise_two_stage(real_net, inputs, cfg, init=init)
        one = optimise_joint(real_net, inputs, cfg, init=init)
        recon = two.decode(real_net, "initial")
        outs = {k: r.decode(real_net, w) for k, r, w in  # type: ignore[arg-type]
                (("stage1", two, "stage1"), ("two", two, "final"), ("one", one, "final"))}  # fmt: skip
        iou = {k: structure_iou(o, recon, masks.frame, masks.inner) for k, o in outs.items()}
        edge = {k: edge_structure(o, inputs.structure, masks.inner) for k, o in outs.items()}
        runs[name] = {"two": two, "one": one, "iou": iou, "edge": edge}
    return runs


def test_real_projection_leaves_no_reference_component(loho_runs: dict[str, Any]) -> None:
    for run in loho_runs.values():
        for r in run["two"].history:
            if r.stage == 2:
                assert r.max_abs_dot_after < 1e-6


def test_real_cosine_falls_during_stage_two(loho_runs: dict[str, Any]) -> None:
    for name, run in loho_runs.items():
        cos = run["two"].stage2_cosines()
        assert np.mean(cos[-3:]) < np.mean(cos[:3]) - 0.05, (name, cos)


def test_real_structure_stage_beats_joint_on_region_structure(loho_runs: dict[str, Any]) -> None:
    """Structure first: after stage 1 (half the steps) the region's structure beats the one-stage run's
    (all the steps, appearance and style pulling from step 0), on every frame, by both scores."""
    for name, run in loho_runs.items():
        for score in ("edge", "iou"):
            assert run[score]["stage1"] > run[score]["one"] + 0.02, (name, score, run[score])


def test_real_two_stage_beats_joint_on_region_structure(loho_runs: dict[str, Any]) -> None:
    """The must-show: the one-stage joint run draws less of the frame's structure than the two-stage method,
    scored by edge structure (where the region's edges are, whatever their colour: appearance transfer
    recolours the rim on purpose). Measured with the shipped autoencoder on d0: rectangle 0.056 vs 0.036,
    browline-large 0.393 vs 0.318 (the Otsu change IoU, confounded by the decoder's blur, disagrees on
    browline-large; both are recorded in the job's diagnostics)."""
    two = np.mean([run["edge"]["two"] for run in loho_runs.values()])
    one = np.mean([run["edge"]["one"] for run in loho_runs.values()])
    assert two > one + 0.02, {name: run["edge"] for name, run in loho_runs.items()}


def test_real_interpolation_moves_the_region(
    real_net: StyleAutoencoder, keyframe: tuple[np.ndarray, Any], reference: Any
) -> None:
    from models.align import align
    from models.latent.job import to_tensor

    frame, face = keyframe
    size = real_net.cfg.size
    crop, m = align(frame, face, size)
    lm = mk.crop_landmarks(face.landmarks_px, m)
    key = interp.style_sample(real_net, to_tensor(crop), mk.feature_partition(lm, size))
    ref = interp.style_sample(real_net, to_tensor(reference.crop), mk.feature_partition(reference.landmarks, size))
    mask = interp.interpolation_mask(key, ref, "eyes")
    with torch.no_grad():
        own = real_net.decode_styles(key.styles, coarse=key.coarse)
        full = real_net.decode_styles(ref.styles, coarse=key.coarse)  # every channel from the reference
    assert torch.equal(interp.decode_edit(real_net, key, mask, 0.0), own)
    edited = interp.decode_edit(real_net, key, mask, 1.0)
    region = mk.feature_masks(lm, size)["glasses"]
    inside, outside = interp.region_change(own, edited, region)
    assert inside > 1.3 * outside, (inside, outside)
    r = torch.from_numpy(region)[None, None]
    assert float(feat.masked_l1(edited, full, r)) < float(feat.masked_l1(own, full, r))  # towards the reference


def test_real_job_layer_and_cancel(real_net: StyleAutoencoder, keyframe: tuple[np.ndarray, Any],
                                   reference: Any) -> None:  # fmt: skip
    from models.latent.job import LatentItem, LatentTryonConfig, run_latent_tryon
    from models.latent.model import default_weights_path

    frame, face = keyframe
    cfg = LatentTryonConfig(weights=str(default_weights_path()), loho=LohoConfig(steps_stage1=2, steps_stage2=2))
    layer = run_latent_tryon(frame, face, LatentItem("round"), cfg)
    s = real_net.cfg.size
    assert layer.size == s and layer.rgba.shape == (s, s, 4) and layer.rgba.dtype == np.float32
    assert layer.rgba.min() >= 0.0 and layer.rgba.max() <= 1.0
    alpha = layer.rgba[..., 3]
    assert alpha.max() > 0.99 and alpha[-10:].max() < 0.01  # the glasses region, not the chin
    assert {"prepare", "encode", "stage1", "stage2", "decode", "total"} <= set(layer.timings_ms)
    with pytest.raises(Cancelled):
        run_latent_tryon(frame, face, LatentItem("round"), cfg, cancel=lambda: True)
    with pytest.raises(ValueError, match="unknown catalogue frame"):
        run_latent_tryon(frame, face, LatentItem("no-such-frame"), cfg)
    with pytest.raises(ValueError, match="RGB uint8"):
        run_latent_tryon(frame.astype(np.float32), face, LatentItem("round"), cfg)


def test_real_celeba_gallery_retrieval(real_net: StyleAutoencoder, shared_data: Path, landmarker_model: Path) -> None:
    from models.latent.retrieval import align_celeba, bank_from_set, celeba_files

    files = celeba_files(12, "Eyeglasses", True, seed=0)
    bank = bank_from_set(real_net, align_celeba(files, real_net.cfg.size))
    index = GalleryIndex.build(bank)
    for i in range(len(bank.keys)):
        top = index.nearest(index.vector(bank.styles[i : i + 1], "eyes")[0], "eyes", k=2)
        assert top[0].key == bank.keys[i]
    assert len(set(index.cluster("eyes", 3).labels.tolist())) == 3


def test_real_interpolation_job_and_dfi(real_net: StyleAutoencoder, keyframe: tuple[np.ndarray, Any],
                                        clip_frames: Callable[..., Any], reference: Any) -> None:  # fmt: skip
    """The keyframe's mask applied to a later frame (the stream's use), and DFI from CelebA Eyeglasses."""
    from models.align import align
    from models.latent.job import apply_interpolation, run_interpolation_mask, to_tensor, to_unit_rgb
    from models.latent.model import default_weights_path
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    frame, face = keyframe
    weights = str(default_weights_path())
    mask = run_interpolation_mask(frame, face, None, "eyes", weights=weights)
    later = np.ascontiguousarray(clip_frames("liveportrait_d0", n=20).frames[19])
    with FaceTracker(TrackerConfig(max_faces=1)) as tracker:
        later_face = tracker.track(later, 0.0)[0]
    own = apply_interpolation(later, later_face, mask, 0.0, weights=weights)
    crop, _ = align(later, later_face, real_net.cfg.size)
    with torch.no_grad():
        assert np.array_equal(own, to_unit_rgb(real_net(to_tensor(crop))))
    assert np.abs(apply_interpolation(later, later_face, mask, 1.0, weights=weights) - own).max() > 0

    codes = interp.celeba_attribute_codes(real_net, "Eyeglasses", n_per_class=12)
    assert codes.with_attr.shape[1:] == codes.without_attr.shape[1:] == (real_net.cfg.n_layers, real_net.cfg.w_dim)
    with torch.no_grad():
        key_codes = real_net.encode(to_tensor(align(frame, face, real_net.cfg.size)[0]))
    w = codes.vector(key_codes, k=5)
    assert w.shape == (real_net.cfg.n_layers, real_net.cfg.w_dim) and np.abs(w).max() > 0
    assert torch.equal(interp.apply_dfi(key_codes, w, 0.0), key_codes)
