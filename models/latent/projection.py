"""Per-layer orthogonal gradient projection (LOHO's gradient orthogonalisation).

In stage 2 the structure loss would pull the glasses region back towards the structure reference's look and
undo the appearance and style taken from the second reference. Before each step its gradient is projected,
layer by layer, onto the subspace orthogonal to the appearance+style gradient:

    g_l  <-  g_l - (<g_l, r_l> / <r_l, r_l>) r_l          for every layer l of the per-layer latent

so to first order a structure step no longer changes the appearance+style losses. Tensors are (..., L, D):
the last axis is one layer's latent vector; all leading axes are batch.
"""

from __future__ import annotations

import torch

# Below this squared norm a layer's reference gradient carries no direction: that layer is left alone.
TINY = 1e-20


def _check(g: torch.Tensor, ref: torch.Tensor) -> None:
    if g.shape != ref.shape or g.ndim < 2:
        raise ValueError(f"need two (..., layers, dim) tensors of one shape, got {tuple(g.shape)}, {tuple(ref.shape)}")


def project_orthogonal(g: torch.Tensor, ref: torch.Tensor, tiny: float = TINY) -> torch.Tensor:
    """``g`` with each layer's component along ``ref``'s same layer removed (see the module doc)."""
    _check(g, ref)
    rr = ref.square().sum(dim=-1, keepdim=True)
    coef = (g * ref).sum(dim=-1, keepdim=True) / rr.clamp_min(tiny)
    return torch.where(rr > tiny, g - coef * ref, g)


def layer_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., L): per-layer dot products."""
    _check(a, b)
    return (a * b).sum(dim=-1)


def layer_cosine(a: torch.Tensor, b: torch.Tensor, tiny: float = TINY) -> torch.Tensor:
    """(..., L): per-layer cosine similarity (0 where either layer vector vanishes)."""
    na, nb = a.square().sum(dim=-1), b.square().sum(dim=-1)
    ok = (na > tiny) & (nb > tiny)
    cos = layer_dot(a, b) / (na * nb).clamp_min(tiny * tiny).sqrt()
    return torch.where(ok, cos, torch.zeros_like(cos))


def global_cosine(a: torch.Tensor, b: torch.Tensor, tiny: float = TINY) -> float:
    """Cosine between the whole flattened tensors (all layers together)."""
    _check(a, b)
    na, nb = float(a.square().sum()), float(b.square().sum())
    if na <= tiny or nb <= tiny:
        return 0.0
    return float((a * b).sum()) / (na * nb) ** 0.5
