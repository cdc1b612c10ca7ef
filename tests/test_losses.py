"""Losses against closed forms: SSIM of constants, GAN losses at zero logits, R1 of a linear critic."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from models.losses import (  # noqa: E402
    MS_SSIM_WEIGHTS,
    SSIM_K1,
    commitment_loss,
    d_loss_nonsaturating,
    diff_augment,
    feature_matching_loss,
    g_loss_nonsaturating,
    gaussian_window,
    l1_loss,
    max_scales,
    ms_ssim,
    ms_ssim_loss,
    r1_penalty,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def smooth_images(b: int, size: int) -> torch.Tensor:
    """Natural-ish images in [-1, 1]: upsampled noise (structure at several scales)."""
    x = torch.rand(b, 3, size // 8, size // 8) * 2 - 1
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.1 * torch.randn(b, 3, size, size)).clamp(-1, 1)


def test_gaussian_window_closed_form() -> None:
    g = gaussian_window(11, 1.5)
    t = torch.arange(11, dtype=torch.float64) - 5
    ref = torch.exp(-(t**2) / (2 * 1.5**2))
    torch.testing.assert_close(g.double(), ref / ref.sum(), atol=1e-7, rtol=0)


def test_scales_fit_image_size() -> None:
    assert (max_scales(128), max_scales(64), max_scales(32), max_scales(10)) == (4, 3, 2, 0)
    x = smooth_images(1, 16)
    with pytest.raises(ValueError, match="scales"):
        ms_ssim(x, x, n_scales=3)


def test_ssim_of_constant_images_matches_closed_form() -> None:
    """Zero variance: cs = 1 and SSIM = (2ab + C1) / (a² + b² + C1), at every scale."""
    a, b, data_range = 0.3, -0.2, 2.0
    x, y = torch.full((1, 3, 64, 64), a), torch.full((1, 3, 64, 64), b)
    c1 = (SSIM_K1 * data_range) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    # ssim only enters at the coarsest scale; the cs terms are 1.
    weights = torch.tensor(MS_SSIM_WEIGHTS[:3])
    expected_ms = max(expected, 0.0) ** float(weights[-1] / weights.sum())
    got = ms_ssim(x, y, data_range=data_range)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected_ms, abs=1e-5)
    got1 = ms_ssim(x, torch.full_like(x, 0.25), data_range=data_range, n_scales=1)
    exp1 = (2 * a * 0.25 + c1) / (a * a + 0.25**2 + c1)
    assert got1.item() == pytest.approx(exp1, abs=1e-5)


def test_ms_ssim_identical_is_one_and_decreases_with_noise() -> None:
    x = smooth_images(2, 128)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)
    values = [ms_ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    assert ms_ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_ms_ssim_gradient_is_finite() -> None:
    x = smooth_images(1, 64)
    y = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    ms_ssim_loss(x, y).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_gan_losses_closed_form() -> None:
    zero = torch.zeros(4)
    assert d_loss_nonsaturating(zero, zero).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    assert g_loss_nonsaturating(zero).item() == pytest.approx(math.log(2), abs=1e-6)
    # A confident, correct discriminator: real >> 0, fake << 0 -> loss ~ 0; the generator loss is large.
    assert d_loss_nonsaturating(torch.full((4,), 20.0), torch.full((4,), -20.0)).item() < 1e-8
    assert g_loss_nonsaturating(torch.full((4,), -20.0)).item() == pytest.approx(20.0, abs=1e-6)


def test_r1_penalty_of_linear_critic_is_weight_norm() -> None:
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3))
    assert r1_penalty(logits, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)


def test_feature_matching_and_l1_and_commitment() -> None:
    real = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    fake = [(r + 0.5).requires_grad_(True) for r in real]
    assert feature_matching_loss(real, [r.clone() for r in real]).item() == 0.0
    assert feature_matching_loss(real, fake).item() == pytest.approx(0.5, abs=1e-6)
    real_req = [r.clone().requires_grad_(True) for r in real]
    feature_matching_loss(real_req, fake).backward()
    assert all(r.grad is None for r in real_req)  # the real branch is a fixed target
    assert l1_loss(torch.zeros(3), torch.full((3,), 2.0)).item() == 2.0
    z, q = torch.zeros(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)
    loss = commitment_loss(z, q, beta=0.25)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert q.grad is None and z.grad is not None


def test_diff_augment_applies_identical_parameters() -> None:
    x = smooth_images(4, 32).requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    a, b = diff_augment(x, x.detach().clone(), generator=g)
    torch.testing.assert_close(a, b)  # the same transform for real and fake
    assert not torch.allclose(a, x)
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Same seed, same result; another seed, another one.
    a2 = diff_augment(x, generator=torch.Generator().manual_seed(1))[0]
    a3 = diff_augment(x, generator=torch.Generator().manual_seed(2))[0]
    torch.testing.assert_close(a, a2)
    assert not torch.allclose(a, a3)


def test_diff_augment_translation_moves_a_point_within_range() -> None:
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    (y,) = diff_augment(x, policy=("translation",), translation_ratio=0.125, generator=torch.Generator().manual_seed(0))
    for i in range(8):
        pos = (y[i, 0] == 1.0).nonzero()
        assert pos.shape == (1, 2) and y[i].sum() == 1.0  # moved, not blurred (integer shift)
        assert (pos[0] - torch.tensor([8, 8])).abs().max() <= 2


def test_diff_augment_cutout_zeroes_at_most_the_square() -> None:
    x = torch.ones(16, 3, 32, 32)
    (y,) = diff_augment(x, policy=("cutout",), cutout_ratio=0.5, generator=torch.Generator().manual_seed(0))
    zeroed = (y[:, 0] == 0).flatten(1).sum(1)
    assert (zeroed <= 16 * 16).all() and (zeroed > 0).all()
    assert torch.equal(y[:, 0], y[:, 1])  # one mask for all channels
    with pytest.raises(ValueError, match="unknown"):
        diff_augment(x, policy=("rotate",))
