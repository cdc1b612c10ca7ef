"""Small building blocks shared by the networks (all ONNX/TensorRT friendly)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def num_levels(size: int, bottleneck: int) -> int:
    """How many /2 downsamplings take ``size`` to ``bottleneck`` (both powers of two)."""
    if size <= 0 or bottleneck <= 0 or size & (size - 1) or bottleneck & (bottleneck - 1) or bottleneck > size:
        raise ValueError(f"size {size} and bottleneck {bottleneck} must be powers of two with bottleneck <= size")
    return int(math.log2(size // bottleneck))


def norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: batch-size independent (batches are tiny here) and exported as plain reductions.
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block (norm, SiLU, conv) x2 with a 1x1 projection when channels change."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Down(nn.Module):
    """Residual block then a strided 3x3 conv halving the resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_in)
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.res(x))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (ONNX Resize, half-pixel): smoother than nearest, no checkerboard like transposed convs."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FiLM(nn.Module):
    """Feature-wise affine modulation from a conditioning embedding, initialised to the identity."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class NoiseInjection(nn.Module):
    """Adds per-pixel gaussian noise scaled by a learned per-layer strength (StyleGAN2).

    Noise is only drawn while training unless given explicitly: inference stays deterministic and the
    exported graph has no random ops.
    """

    def __init__(self) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            if not self.training:
                return x
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.strength * noise


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fp32_megabytes(module: nn.Module) -> float:
    """Weights plus buffers (codebooks, EMA statistics) in fp32, MB (10^6 bytes)."""
    n = count_parameters(module) + sum(b.numel() for b in module.buffers() if b.is_floating_point())
    return 4.0 * n / 1e6
