"""Networks: shapes, VQ/LGF/fidelity semantics, conditioning, identity at zero strength, ONNX parity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402

from models.nets import (  # noqa: E402
    CodebookRestorer,
    ConditionalPatchDiscriminator,
    GeneratorConfig,
    LinearGatedFusion,
    PrescriptionCondition,
    PrescriptionGenerator,
    RestorerConfig,
    StyleAutoencoder,
    StyleAutoencoderConfig,
    VectorQuantizer,
)
from models.nets.conditioning import COND_DIM, STRENGTH_INDEX, flip_mode  # noqa: E402
from models.nets.generator import base_grid, mirrored_loss, warp  # noqa: E402
from models.nets.layers import count_parameters, fp32_megabytes  # noqa: E402
from models.nets.onnx_export import TENSORRT_OPS, export_and_check  # noqa: E402
from models.nets.style_autoencoder import ModulatedConv2d  # noqa: E402

MAX_WEIGHTS_MB = 10.0

SMALL_STYLE = StyleAutoencoderConfig(size=32, w_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8})
SMALL_RESTORER = RestorerConfig(
    size=32, bottleneck=4, channels={4: 16, 8: 16, 16: 8, 32: 8}, quant_max_res=8, n_codes=32, lgf_grid=2
)
SMALL_GEN = GeneratorConfig(
    size=32, bottleneck=8, channels={8: 16, 16: 16, 32: 8}, emb_dim=16, n_res=1,
    disc_channels={32: 8, 16: 16, 8: 16}, disc_bottleneck=8,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


def images(b: int, size: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size) * 2.0 - 1.0


def cond(**kw: object) -> torch.Tensor:
    return PrescriptionCondition(**kw).to_tensor()[None]  # type: ignore[arg-type]


def randomize_heads(gen: PrescriptionGenerator, std: float = 0.3) -> PrescriptionGenerator:
    """The output head and FiLMs start at zero (identity); an untrained-but-random net exercises every path."""
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if "head" in name or "film" in name:
                p.normal_(0.0, std)
    return gen


# -- shapes and sizes at the 128px defaults -------------------------------------------------------------
def test_default_models_shapes_and_weight_budget() -> None:
    x = images(2, 128)
    c = PrescriptionCondition.batch([PrescriptionCondition(sphere_d=-3.0), PrescriptionCondition(mode="remove")])
    with torch.no_grad():
        sae = StyleAutoencoder().eval()
        codes = sae.encode(x)
        assert codes.shape == (2, sae.cfg.n_layers, sae.cfg.w_dim) == (2, 12, sae.cfg.w_dim)
        assert sae.decode(codes).shape == x.shape
        restorer = CodebookRestorer().eval()
        y, commit, idx = restorer.restore(x, 0.5)
        assert y.shape == x.shape and commit.ndim == 0
        assert {r: tuple(i.shape) for r, i in idx.items()} == {8: (2, 8, 8), 16: (2, 16, 16)}
        gen = PrescriptionGenerator().eval()
        out = gen.generate(x, c)
        assert out.image.shape == x.shape and out.field.shape == (2, 2, 128, 128) and out.mask.shape == (2, 1, 128, 128)
        disc = ConditionalPatchDiscriminator().eval()
        score, patches = disc(x, c, x)
        assert score.shape == (2,) and patches.shape == (2, 1, 16, 16)
    for m in (sae, restorer, gen, disc):
        mb = fp32_megabytes(m)
        print(f"{type(m).__name__}: {count_parameters(m):,} params, {mb:.2f} MB fp32 (weights + buffers)")
        assert mb <= MAX_WEIGHTS_MB


# -- style autoencoder ----------------------------------------------------------------------------------
def test_modulated_conv_fused_form_matches_per_sample_weights() -> None:
    """conv(x*s, w)*d equals the textbook per-sample modulated/demodulated weight (grouped-conv form)."""
    conv = ModulatedConv2d(5, 7, 3, w_dim=4)
    with torch.no_grad():
        conv.affine.weight.normal_()
        conv.bias.normal_()
    x, w = torch.randn(3, 5, 9, 9), torch.randn(3, 4)
    s = conv.affine(w)
    wt = conv.weight[None] * s[:, None, :, None, None]  # (B, out, in, k, k)
    wt = wt * torch.rsqrt(wt.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    ref = F.conv2d(x.reshape(1, 15, 9, 9), wt.reshape(21, 5, 3, 3), padding=1, groups=3).reshape(3, 7, 9, 9)
    torch.testing.assert_close(conv(x, w), ref + conv.bias[None, :, None, None], atol=1e-5, rtol=1e-5)


def test_style_autoencoder_codes_activations_and_noise() -> None:
    sae = StyleAutoencoder(SMALL_STYLE)
    x = images(2, 32)
    codes = sae.encode(x)
    assert codes.shape == (2, SMALL_STYLE.n_layers, 16)
    sae.eval()
    img, acts = sae.decode(codes, return_activations=True)
    assert list(acts) == sae.layer_names
    assert [a.shape[-1] for a in acts.values()] == [4, 8, 8, 16, 16, 32, 32]
    assert torch.equal(img, sae.decode(codes))  # eval: no noise, deterministic
    for layer in sae.decoder.layers:
        layer.noise.strength.data.fill_(0.5)
    noise = [torch.randn(s) for s in sae.noise_shapes(2)]
    assert not torch.allclose(sae.decode(codes, noise=noise), img)
    # Codes drive the image: changing one layer's code changes the output.
    edited = codes.clone()
    edited[:, 3] += 1.0
    assert not torch.allclose(sae.decode(edited), img)
    with pytest.raises(ValueError, match="codes must be"):
        sae.decode(codes[:, :-1])


def test_style_autoencoder_encoder_input_mode_needs_coarse() -> None:
    cfg = StyleAutoencoderConfig(size=32, w_dim=16, channels=SMALL_STYLE.channels, decoder_input="encoder")
    sae = StyleAutoencoder(cfg).eval()
    x = images(1, 32)
    codes, coarse = sae.encode_features(x)
    assert coarse is not None and coarse.shape == (1, 16, 4, 4)
    assert sae.decode(codes, coarse=coarse).shape == x.shape
    with pytest.raises(ValueError, match="coarse"):
        sae.decode(codes)


# -- vector quantiser and fusion ------------------------------------------------------------------------
def test_vq_picks_true_nearest_code() -> None:
    vq = VectorQuantizer(n_codes=64, dim=8).eval()
    vq.codebook.normal_()
    z = torch.randn(3, 8, 5, 6) * 1.5
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    brute = ((flat[:, None, :] - vq.codebook[None]) ** 2).sum(-1).argmin(1).reshape(3, 5, 6)
    assert torch.equal(out.indices, brute)
    torch.testing.assert_close(out.quantized, vq.codebook[brute].permute(0, 3, 1, 2))


def test_vq_straight_through_and_commitment() -> None:
    vq = VectorQuantizer(n_codes=16, dim=4, beta=0.25).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    expected = 0.25 * ((z.detach() - out.quantized.detach()) ** 2).mean()
    torch.testing.assert_close(out.commitment, expected)
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through: identity gradient


def test_ema_moves_codes_toward_assigned_clean_features() -> None:
    vq = VectorQuantizer(n_codes=4, dim=2, decay=0.9)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        vq.embed_sum.copy_(vq.codebook)
    target = torch.tensor([2.0, 0.3])  # all clean features near code 0
    clean = (target[None, :, None, None] + 0.01 * torch.randn(4, 2, 3, 3)).float()
    degraded = torch.randn(4, 2, 3, 3) * 0.1 - 1.0  # would pull code 2 if it were used for updates
    before = vq.codebook.clone()
    vq.train()
    for _ in range(20):
        vq(degraded, clean)
    d_before = (before[0] - target).norm()
    d_after = (vq.codebook[0] - target).norm()
    assert d_after < 0.2 * d_before
    torch.testing.assert_close(vq.codebook[2], before[2], atol=0.05, rtol=0)  # unassigned: ~unchanged
    assert torch.isfinite(vq.codebook).all()


def test_lgf_reduces_to_its_branches() -> None:
    lgf = LinearGatedFusion(resolution=8, grid=4)
    p, q = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        lgf.weight.zero_()
        lgf.bias.fill_(100.0)  # s == 1
    torch.testing.assert_close(lgf(p, q), p + q)
    with torch.no_grad():
        lgf.bias.fill_(-100.0)  # s == 0
    torch.testing.assert_close(lgf(p, q), q)
    with torch.no_grad():
        lgf.weight.normal_()
        lgf.bias.normal_()
    s = lgf.gate(p, q).detach()
    assert s.shape == (2, 5, 8, 8) and float(s.min()) > 0 and float(s.max()) < 1
    fused = lgf(p, q, 1.0).detach()
    torch.testing.assert_close(fused, s * (p + q) + (1 - s) * q)
    torch.testing.assert_close(lgf(p, q, 0.0), q)  # fidelity 0: pure code
    torch.testing.assert_close(lgf(p, q, 0.25), 0.25 * fused + 0.75 * q)


def test_restorer_fidelity_zero_is_pure_codebook_and_one_keeps_features() -> None:
    restorer = CodebookRestorer(SMALL_RESTORER).eval()
    with torch.no_grad():
        for f in restorer.fusions.values():
            f.bias.normal_()
        x = images(2, 32)
        y0, _, idx = restorer.restore(x, 0.0)
        torch.testing.assert_close(y0, restorer.decode_indices(idx))  # depends on the code indices only
        y1 = restorer(x, torch.tensor([1.0, 1.0]))
        assert (y1 - y0).abs().max() > 1e-3
        # w=1: a perturbation too small to change any code index still changes the output.
        x2 = x + 1e-3 * torch.randn_like(x)
        _, _, idx2 = restorer.restore(x2, 1.0)
        if all(torch.equal(idx[r], idx2[r]) for r in idx):
            assert (restorer(x2, 1.0) - y1).abs().max() > 0
            torch.testing.assert_close(restorer(x2, 0.0), y0)
        with pytest.raises(ValueError, match="fidelity"):
            restorer(x, 1.5)


def test_restorer_training_step_updates_codebooks_from_clean() -> None:
    restorer = CodebookRestorer(SMALL_RESTORER).train()
    x_clean = images(2, 32)
    x = x_clean + 0.2 * torch.randn_like(x_clean)
    books = {r: q.codebook.clone() for r, q in restorer.quantizers.items()}
    y, commit, _ = restorer.restore(x, 1.0, x_clean=x_clean)
    (F.l1_loss(y, x_clean) + commit).backward()
    assert all(not torch.equal(books[r], q.codebook) for r, q in restorer.quantizers.items())
    assert restorer.stem[1].weight.grad is not None and torch.isfinite(restorer.stem[1].weight.grad).all()


# -- conditioning and generator -------------------------------------------------------------------------
def test_condition_vector_layout_and_validation() -> None:
    c = PrescriptionCondition(
        mode="remove", sphere_d=-5.0, cylinder_d=-2.0, axis_deg=45.0, prism_x_pd=1.0, prism_y_pd=-2.0,
        strength=0.5, lens="left", tint_rgba=(0.1, 0.2, 0.3, 0.4),
    ).to_tensor()  # fmt: skip
    expected = [0, 1, -0.25, -0.25, 1.0, 0.0, 0.1, -0.2, 0.5, 0, 1, 0, 0.1, 0.2, 0.3, 0.4]
    assert c.shape == (COND_DIM,) and c[STRENGTH_INDEX] == 0.5
    torch.testing.assert_close(c, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)
    # The axis is periodic in 180 deg.
    torch.testing.assert_close(cond(axis_deg=0.0), cond(axis_deg=180.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(flip_mode(cond()), cond(mode="remove"))
    for bad in ({"sphere_d": 25.0}, {"strength": 1.5}, {"mode": "swap"}, {"lens": "middle"}, {"tint_rgba": (1, 1, 1)}):
        with pytest.raises(ValueError):
            PrescriptionCondition(**bad)  # type: ignore[arg-type]


def test_warp_identity_and_one_pixel_shift() -> None:
    x = torch.randn(1, 3, 8, 8)
    grid = base_grid(8, 8)
    torch.testing.assert_close(warp(x, torch.zeros(1, 2, 8, 8), grid), x, atol=1e-6, rtol=0)
    one_px = torch.zeros(1, 2, 8, 8)
    one_px[:, 0] = 2.0 / 8  # +1 pixel in x (normalised units span 2 over the width)
    torch.testing.assert_close(warp(x, one_px, grid)[..., :-1], x[..., 1:], atol=1e-6, rtol=0)


def test_conditioning_changes_output_and_zero_strength_is_identity() -> None:
    gen = randomize_heads(PrescriptionGenerator(SMALL_GEN)).eval()
    x = images(1, 32)
    with torch.no_grad():
        a = gen(x, cond(sphere_d=-6.0))
        b = gen(x, cond(sphere_d=6.0))
        c = gen(x, cond(sphere_d=-6.0, mode="remove"))
        assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3 and (a - x).abs().max() > 1e-3
        for kw in ({}, {"sphere_d": -8.0, "tint_rgba": (1.0, 0.0, 0.0, 1.0)}, {"mode": "remove"}):
            out = gen.generate(x, cond(strength=0.0, **kw))
            assert torch.equal(out.image, x)  # exact: mask, field and residual are all scaled by strength
            assert float(out.mask.abs().max()) == 0.0


def test_mirrored_loss_decreases_in_short_training() -> None:
    gen = randomize_heads(PrescriptionGenerator(SMALL_GEN), std=0.5).train()
    x = images(2, 32)
    c = PrescriptionCondition.batch([PrescriptionCondition(sphere_d=-4.0), PrescriptionCondition(sphere_d=2.5)])
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = mirrored_loss(gen, x, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] > 0.02  # the random net is far from its own inverse to begin with
    assert min(losses[-5:]) < 0.5 * losses[0]


def test_discriminator_projection_and_features() -> None:
    disc = ConditionalPatchDiscriminator(SMALL_GEN)
    y, x = images(2, 32), images(2, 32)
    out_a = disc.discriminate(y, cond(sphere_d=-6.0).expand(2, -1), x)
    out_b = disc.discriminate(y, cond(sphere_d=6.0).expand(2, -1), x)
    assert out_a.score.shape == (2,) and out_a.patches.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out_a.score, out_a.patches.mean(dim=(1, 2, 3)))
    assert (out_a.score - out_b.score).abs().max() > 0  # the projection term sees the prescription
    assert [f.shape[-1] for f in out_a.features] == [32, 16, 8, 8]  # stem, 2 strided blocks, final
    with pytest.raises(ValueError, match="x_src"):
        disc(y, cond().expand(2, -1))


def test_gan_step_with_diffaugment_r1_and_feature_matching() -> None:
    """One generator and one discriminator update wired the way training will use them."""
    from models.losses import (
        d_loss_nonsaturating,
        diff_augment,
        feature_matching_loss,
        g_loss_nonsaturating,
        r1_penalty,
    )

    gen, disc = randomize_heads(PrescriptionGenerator(SMALL_GEN)), ConditionalPatchDiscriminator(SMALL_GEN)
    x, real = images(2, 32), images(2, 32)
    c = PrescriptionCondition.batch([PrescriptionCondition(sphere_d=-2.0), PrescriptionCondition(cylinder_d=-1.0)])
    g = torch.Generator().manual_seed(0)
    # D step: augmentations drawn once and applied to (real, fake, source) alike; R1 on the augmented reals.
    fake = gen(x, c).detach()
    real_a, fake_a, src_a = diff_augment(real, fake, x, generator=g)
    real_a = real_a.detach().requires_grad_(True)
    d_real = disc.discriminate(real_a, c, src_a)
    d_fake = disc.discriminate(fake_a, c, src_a)
    d_loss = d_loss_nonsaturating(d_real.score, d_fake.score) + 10.0 * r1_penalty(d_real.score, real_a)
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    # G step: non-saturating + feature matching + mirrored cycle; gradients reach the generator only.
    disc.zero_grad()
    fake = gen(x, c)
    real_a, fake_a, src_a = diff_augment(real, fake, x, generator=g)
    d_fake = disc.discriminate(fake_a, c, src_a)
    d_real = disc.discriminate(real_a, c, src_a)
    g_loss = (
        g_loss_nonsaturating(d_fake.score)
        + feature_matching_loss(d_real.features, d_fake.features)
        + mirrored_loss(gen, x, c)
    )
    g_loss.backward()
    assert torch.isfinite(g_loss)
    assert gen.stem[1].weight.grad is not None and gen.stem[1].weight.grad.abs().sum() > 0
    assert gen.embed[0].weight.grad is not None and gen.embed[0].weight.grad.abs().sum() > 0


# -- ONNX export (opset 17, static shapes) ---------------------------------------------------------------
def _onnx_cases() -> dict[str, tuple]:
    x = images(1, 128)
    c = cond(sphere_d=-4.0, cylinder_d=-1.5, axis_deg=30.0, strength=0.8)
    return {
        "style_autoencoder": (StyleAutoencoder(), [x], ["image"], ["out"]),
        "restorer": (CodebookRestorer(), [x, torch.tensor([0.7])], ["image", "fidelity"], ["out"]),
        "generator": (randomize_heads(PrescriptionGenerator()), [x, c], ["image", "cond"], ["out"]),
        "discriminator": (
            ConditionalPatchDiscriminator(),
            [x, c, x],
            ["image", "cond", "source"],
            ["score", "patches"],
        ),
    }


@pytest.mark.parametrize("name", ["style_autoencoder", "restorer", "generator", "discriminator"])
def test_onnx_export_matches_pytorch(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model, inputs, ins, outs = _onnx_cases()[name]
    if name == "restorer":  # a non-trivial gate so the fused path is exercised
        with torch.no_grad():
            for f in model.fusions.values():
                f.bias.normal_()
    report = export_and_check(model, inputs, tmp_path / f"{name}.onnx", ins, outs)
    print(f"{name}: max |onnxruntime - torch| = {report.max_abs_err:.2e}; ops {sorted(report.ops)}")
    assert report.ops <= TENSORRT_OPS
    assert report.max_abs_err <= 1e-4
    # Folded graph: no duplicated weights (e.g. squared copies for demodulation) beyond small tables.
    assert report.path.stat().st_size <= 1.1 * fp32_megabytes(model) * 1e6 + 100_000
