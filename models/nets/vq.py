"""Vector quantiser with EMA codebook updates, and linear gated fusion (LGF) of features with codes."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.layers import upsample2x


class VQOutput(NamedTuple):
    quantized: torch.Tensor  # (B, C, H, W), straight-through: forward = codes, gradient = identity to z
    indices: torch.Tensor  # (B, H, W) int64
    commitment: torch.Tensor  # scalar: beta * ||z - sg(q)||^2


def nearest_code(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||z - e_k||^2 via ||z||^2 - 2 z.e + ||e||^2 (matmul; no cdist, TensorRT-friendly)."""
    d = z_flat.square().sum(1, keepdim=True) - 2.0 * z_flat @ codebook.t() + codebook.square().sum(1)[None, :]
    return d.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation (VQ-VAE) with EMA codebook learning.

    While training, codes move to the EMA mean of the features assigned to them. With ``z_clean`` (the
    encoder's features of the clean image) the codebook is learnt from clean features only, so it stays a
    prior of clean faces while the degraded ``z`` is still quantised against it. Cluster sizes get
    Laplace smoothing so that unused codes do not divide by zero.
    """

    def __init__(self, n_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.n_codes, self.dim, self.beta, self.decay, self.eps = n_codes, dim, beta, decay, eps
        embed = torch.randn(n_codes, dim) * 0.1
        # Buffers, not parameters: EMA (not the optimiser) owns the codebook.
        self.register_buffer("codebook", embed)
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_sum", embed.clone())

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) indices -> (B, C, H, W) codes (embedding gather)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def quantize_indices(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        if c != self.dim:
            raise ValueError(f"feature dim {c} != codebook dim {self.dim}")
        return nearest_code(z.permute(0, 2, 3, 1).reshape(-1, c), self.codebook).reshape(b, h, w)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor) -> None:
        """One EMA step of the codebook towards the mean of the features of ``z`` assigned to each code."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        onehot = F.one_hot(nearest_code(flat, self.codebook), self.n_codes).type_as(flat)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1.0 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def forward(self, z: torch.Tensor, z_clean: torch.Tensor | None = None) -> VQOutput:
        if self.training:
            self.ema_update(z if z_clean is None else z_clean)
        idx = self.quantize_indices(z)
        q = self.lookup(idx)
        commitment = self.beta * F.mse_loss(z, q.detach())
        # Straight-through only where a gradient is wanted: inference returns the code bit-exactly.
        quantized = z + (q - z).detach() if z.requires_grad else q
        return VQOutput(quantized, idx, commitment)


class LinearGatedFusion(nn.Module):
    """Linear gated fusion of encoder features ``p`` with their quantised codes ``q``.

    o = pool(p + q) · W + b  (W: a learned linear map over the g x g pooled positions, shared by channels),
    s = upsample(sigmoid(o)),  q* = s ⊙ (p + q) + (1 - s) ⊙ q.

    A fidelity weight ``w`` (inference knob) blends the result with the pure code: ``w q* + (1 - w) q``;
    w = 0 keeps only the codebook, w = 1 the trained fusion that carries the input features through.
    """

    def __init__(self, resolution: int, grid: int = 4) -> None:
        super().__init__()
        if resolution % grid:
            raise ValueError(f"resolution {resolution} not divisible by the gate grid {grid}")
        self.resolution, self.grid = resolution, grid
        n = grid * grid
        self.weight = nn.Parameter(torch.zeros(n, n))
        self.bias = nn.Parameter(torch.zeros(n))  # s = 0.5 at start: an even mix

    def gate(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, c, h, w = p.shape
        if h != self.resolution or w != self.resolution:
            raise ValueError(f"LGF built for {self.resolution}px features, got {h}x{w}")
        k = self.resolution // self.grid
        pooled = F.avg_pool2d(p + q, k).reshape(b, c, self.grid * self.grid)  # static kernel: ONNX AveragePool
        o = (pooled @ self.weight + self.bias).reshape(b, c, self.grid, self.grid)
        s = torch.sigmoid(o)
        for _ in range(k.bit_length() - 1):  # k is a power of two: repeated bilinear x2
            s = upsample2x(s)
        if s.shape[-1] != self.resolution:  # non-power-of-two ratios: one direct resize
            s = F.interpolate(s, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return s

    def forward(self, p: torch.Tensor, q: torch.Tensor, fidelity: torch.Tensor | float = 1.0) -> torch.Tensor:
        s = self.gate(p, q)
        fused = s * (p + q) + (1.0 - s) * q
        return fidelity * fused + (1.0 - fidelity) * q
