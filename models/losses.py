"""Training losses in pure torch (no pretrained feature networks): L1, MS-SSIM, GAN, feature matching,
R1, commitment, and DiffAugment-style differentiable augmentation shared by real and fake batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Wang et al. 2003 scale weights; truncated and renormalised when fewer scales fit the image.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(x, y)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D gaussian (size,), float32."""
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' gaussian filter per channel (as the reference MS-SSIM implementation)."""
    c = x.shape[1]
    k = win.to(x)
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure term, each (B,)."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = _blur(x, win), _blur(y, win)
    sxx = _blur(x * x, win) - mx * mx
    syy = _blur(y * y, win) - my * my
    sxy = _blur(x * y, win) - mx * my
    cs = (2.0 * sxy + c2) / (sxx + syy + c2)
    ssim = (2.0 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return ssim.mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def max_scales(size: int, win_size: int = 11, limit: int = 5) -> int:
    """Most scales whose coarsest image still holds one window: 128px -> 4, 64px -> 3 with win 11."""
    n = 0
    while n < limit and size // 2**n >= win_size:
        n += 1
    return n


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    n_scales: int | None = None,
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), (B,), 1 for identical images.

    ``data_range``: 2 for images in [-1, 1]. ``n_scales=None`` uses as many as the size allows (max 5).
    Negative cs/ssim values are clamped to 0 before the fractional powers (keeps gradients finite).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim needs two equal (B, C, H, W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    fit = max_scales(min(x.shape[-2:]), win_size)
    n = fit if n_scales is None else n_scales
    if n < 1 or n > fit:
        raise ValueError(f"{n} scales do not fit a {tuple(x.shape[-2:])} image with an {win_size}px window")
    w = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    win = gaussian_window(win_size, sigma)
    values = []
    for i in range(n):
        ssim, cs = _ssim_cs(x, y, win, data_range)
        values.append(F.relu(ssim if i == n - 1 else cs))
        if i < n - 1:
            x, y = F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(y, 2, ceil_mode=True)
    v = torch.stack(values, dim=1)  # (B, n)
    return torch.prod(v ** w[None, :], dim=1)


def ms_ssim_loss(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, n_scales: int | None = None
) -> torch.Tensor:
    return 1.0 - ms_ssim(x, y, data_range, n_scales).mean()


def feature_matching_loss(real_feats: Sequence[torch.Tensor], fake_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminator layers of L1(fake, sg(real))."""
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError("feature lists must be non-empty and of equal length")
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats, strict=True)) / len(real_feats)


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(real) - log(1 - D(fake)) with D = sigmoid(logit)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(fake): the non-saturating generator loss (strong gradients early on)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """E ||∇_x D(x)||² on reals (Mescheder et al. 2018); ``real_inputs`` must have requires_grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def commitment_loss(z: torch.Tensor, q: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """beta ||z - sg(q)||²: pulls encoder outputs towards their (fixed) codes."""
    return beta * F.mse_loss(z, q.detach())


# -- DiffAugment (Zhao et al. 2020) ------------------------------------------------------------------
DIFFAUG_POLICIES = ("color", "translation", "cutout")


def diff_augment(
    *images: torch.Tensor,
    policy: Sequence[str] = DIFFAUG_POLICIES,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Differentiable augmentation with parameters drawn once and applied identically to every tensor.

    Pass real and fake (and, for a paired discriminator, the source) together; all must share shape
    (B, C, H, W), values in [-1, 1]. Each sample in the batch gets its own random parameters.
    """
    if not images:
        raise ValueError("nothing to augment")
    shape = images[0].shape
    if any(t.shape != shape for t in images):
        raise ValueError("all tensors must share one shape")
    unknown = set(policy) - set(DIFFAUG_POLICIES)
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}")
    b, _, h, w = shape
    dev = images[0].device

    def rand(*s: int) -> torch.Tensor:
        return torch.rand(*s, generator=generator).to(dev)

    out = list(images)
    if "color" in policy:
        bright, sat, contrast = rand(b, 1, 1, 1) - 0.5, rand(b, 1, 1, 1) * 2.0, rand(b, 1, 1, 1) + 0.5
        for i, t in enumerate(out):
            t = t + bright
            m = t.mean(dim=1, keepdim=True)
            t = (t - m) * sat + m
            m = t.mean(dim=(1, 2, 3), keepdim=True)
            out[i] = (t - m) * contrast + m
    if "translation" in policy:
        sx, sy = int(w * translation_ratio + 0.5), int(h * translation_ratio + 0.5)
        tx = (rand(b) * (2 * sx + 1)).long() - sx
        ty = (rand(b) * (2 * sy + 1)).long() - sy
        out = [_translate(t, tx.to(dev), ty.to(dev)) for t in out]
    if "cutout" in policy:
        ch, cw = int(h * cutout_ratio + 0.5), int(w * cutout_ratio + 0.5)
        # Centre anywhere in the image (the square may hang over an edge), as in DiffAugment.
        y0 = (rand(b) * (h + 1)).long()[:, None, None] - ch // 2
        x0 = (rand(b) * (w + 1)).long()[:, None, None] - cw // 2
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        inside = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)
        keep = (~inside).to(images[0].dtype)[:, None]
        out = [t * keep for t in out]
    return tuple(out)


def _translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Shift each sample by integer (tx, ty) pixels with zero fill (gather: differentiable w.r.t. x)."""
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :] - ty[:, None]  # source row for each output row
    xs = torch.arange(w, device=x.device)[None, :] - tx[:, None]
    valid = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    ys, xs = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    idx = (ys[:, :, None] * w + xs[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    moved = torch.gather(x.reshape(b, c, h * w), 2, idx).reshape(b, c, h, w)
    return moved * valid[:, None].to(x.dtype)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """(B,) PSNR in dB, a metric for logs (not a loss)."""
    mse = (x - y).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


__all__ = [
    "DIFFAUG_POLICIES",
    "commitment_loss",
    "d_loss_nonsaturating",
    "diff_augment",
    "feature_matching_loss",
    "g_loss_nonsaturating",
    "gaussian_window",
    "l1_loss",
    "max_scales",
    "ms_ssim",
    "ms_ssim_loss",
    "psnr",
    "r1_penalty",
]
