"""φ: deep features for the latent-optimisation losses, and their masked statistics.

No pretrained VGG/LPIPS network is available here, so φ is the style autoencoder's own encoder pyramid (stem
and the first residual/strided levels: 128, 64, 32, 16 px at the shipped size). It was trained to describe
faces for this decoder, which is what the losses compare.

Statistics are over a spatial mask resized to each level by area averaging (a soft membership at coarse
levels), so a region's statistics do not depend on the level's resolution:

* ``masked_mean``: Σ_p m(p) f(p) / Σ_p m(p)            (LOHO's appearance: mean feature in the region)
* ``masked_gram``: Σ_p m(p) f(p) f(p)^T / Σ_p m(p)     (style: second moments in the region)
* ``masked_feature_distance``: LPIPS-like, channels unit-normalised per position, squared difference
  averaged over the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.nets.style_autoencoder import StyleAutoencoder

EPS = 1e-8


def encoder_pyramid(net: StyleAutoencoder, x: torch.Tensor, levels: int = 3) -> list[torch.Tensor]:
    """[stem features, then the outputs of the first ``levels`` down blocks]: the same tensors the encoder
    computes (``levels = len(net.encoder.downs)`` gives every level, the last before ``final``)."""
    enc = net.encoder
    if not 0 <= levels <= len(enc.downs):
        raise ValueError(f"levels must be in [0, {len(enc.downs)}], got {levels}")
    h = enc.stem(x)
    feats = [h]
    for down in enc.downs[:levels]:
        h = down(h)
        feats.append(h)
    return feats


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) mask to (B, 1, size, size) by area averaging (exact box filter for integer factors)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    if mask.shape[-1] == size and mask.shape[-2] == size:
        return mask
    return F.interpolate(mask, size=(size, size), mode="area")


def _check(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if f.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"need features (B, C, H, W) and a mask (B, 1, H', W'), got {tuple(f.shape)}, {tuple(mask.shape)}"
        )
    if f.shape[-1] != f.shape[-2]:
        raise ValueError(f"features must be square, got {tuple(f.shape)}")
    return resize_mask(mask, f.shape[-1]).to(f.dtype)


def masked_mean(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C): the mask-weighted mean feature (zeros where the mask is empty)."""
    m = _check(f, mask)
    return (f * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(EPS)


def masked_gram(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, C): mask-weighted mean of f f^T over positions (uncentred second moments)."""
    m = _check(f, mask)
    b, c = f.shape[:2]
    x = f.reshape(b, c, -1)
    w = m.reshape(b, 1, -1)
    return (x * w) @ x.transpose(1, 2) / w.sum(dim=2, keepdim=True).clamp_min(EPS)


def unit_channels(f: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector scaled to unit length (LPIPS's normalisation)."""
    return f / f.norm(dim=1, keepdim=True).clamp_min(EPS)


def masked_feature_distance(fa: torch.Tensor, fb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,): mean over the mask of ||unit(fa) - unit(fb)||² (in [0, 4])."""
    if fa.shape != fb.shape:
        raise ValueError(f"feature shapes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    m = _check(fa, mask)
    d = (unit_channels(fa) - unit_channels(fb)).square().sum(dim=1, keepdim=True)
    return (d * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(EPS)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,): mean |x - y| over the mask's pixels and the channels."""
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    m = _check(x, mask)
    return ((x - y).abs().mean(dim=1, keepdim=True) * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(EPS)


def relative_sq_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,): ||x - t||² / ||t||² over all but the batch dim: a unit-free error (features differ in scale
    between levels and checkpoints, so fixed loss weights stay meaningful)."""
    d = (x - target).flatten(1).square().sum(1)
    return d / target.flatten(1).square().sum(1).clamp_min(EPS)
