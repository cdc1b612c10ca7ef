"""Interpolation vectors in style space: per-channel feature masks, and deep-feature interpolation (DFI).

**Channel mappings** (after Collins et al., "Editing in Style", CVPR 2020). Every style channel σ_{l,c}
scales one input channel x_{l,c} of a modulated conv. Its contribution to facial feature k is the share of
that channel's energy lying in the feature's region:

    M_{l}[k, c] = Σ_p x_{l,c}(p)² U_k(p) / Σ_p x_{l,c}(p)²

with U the one-hot region partition (``masks.feature_partition``) area-resized to the layer's resolution, so
each channel's shares sum to 1 over the regions (by default divided by the regions' areas and renormalised,
``density_mapping``, so the background's size does not claim every channel). The keyframe's and the
reference's mappings are averaged, softmax at temperature τ over the regions soft-assigns channels to
features, and the row of the selected feature is the mask q. The edit is

    σ = σ_frame + α q ⊙ (σ_ref − σ_frame)

α = 0 is the frame itself, α = 1 takes the reference's channels for that feature, α > 1 extrapolates. q is
computed once on the keyframe; each later frame applies it to its own σ.

**DFI** (Upchurch et al., CVPR 2017), in the encoder's code space: w = mean φ(K nearest with the attribute)
− mean φ(K nearest without), neighbours of the query; the edit is codes + α w.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.latent.masks import PARTITION, canonical_feature
from models.nets.style_autoencoder import StyleAutoencoder

EPS = 1e-12


@dataclass(frozen=True)
class InterpolationConfig:
    tau: float = 0.1  # softmax temperature over regions (mappings are in [0, 1]: 0.1 is fairly sharp)
    reference_weight: float = 0.5  # mappings combined as (1 - w) keyframe + w reference
    # "share": M as defined above; "density": M / region area, renormalised (``density_mapping``), so small
    # features (nose, mouth) are not outvoted by the background's size.
    mapping: Literal["share", "density"] = "density"

    def __post_init__(self) -> None:
        if self.mapping not in ("share", "density"):
            raise ValueError(f"mapping must be 'share' or 'density', got {self.mapping!r}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.reference_weight <= 1.0:
            raise ValueError(f"reference_weight must be in [0, 1], got {self.reference_weight}")


# -- channel mappings (pure) ---------------------------------------------------------------------
def density_mapping(share: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """Shares (K, C) divided by the regions' areas (K,) and renormalised over regions: how concentrated a
    channel is in each region relative to spreading evenly. Raw shares carry the regions' sizes as a prior
    (the background holds most of nearly every channel's energy); this removes it. Empty regions get 0."""
    a = areas.to(share.dtype)[:, None]
    d = torch.where(a > 0, share / a.clamp_min(EPS), torch.zeros_like(share))
    return d / d.sum(dim=0, keepdim=True).clamp_min(EPS)


def channel_mapping(x: torch.Tensor, partition: torch.Tensor) -> torch.Tensor:
    """(K, C) share of each channel's energy in each region, for one image.

    ``x``: (1, C, r, r) the tensor a style layer scales; ``partition``: (K, S, S) memberships summing to 1
    per pixel (resized here to r by area averaging, which keeps the sum). A channel with no energy gets
    the regions' areas as its shares (it belongs nowhere in particular).
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be (1, C, r, r), got {tuple(x.shape)}")
    if partition.ndim != 3:
        raise ValueError(f"partition must be (K, S, S), got {tuple(partition.shape)}")
    r = x.shape[-1]
    u = F.interpolate(partition[None].to(x.dtype), size=(r, r), mode="area")[0]  # (K, r, r)
    e = x[0].square()  # (C, r, r)
    num = torch.einsum("khw,chw->kc", u, e)
    tot = e.sum(dim=(1, 2))
    area = u.mean(dim=(1, 2))[:, None].expand_as(num)
    return torch.where(tot[None] > EPS, num / tot.clamp_min(EPS)[None], area)


def channel_mappings(styled_inputs: dict[str, torch.Tensor], partition: torch.Tensor) -> dict[str, torch.Tensor]:
    """``channel_mapping`` for every style layer (``decode_styles(..., return_styled_inputs=True)``)."""
    return {name: channel_mapping(x, partition) for name, x in styled_inputs.items()}


def combine_mappings(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight_b: float = 0.5
) -> dict[str, torch.Tensor]:
    if a.keys() != b.keys():
        raise ValueError("mappings cover different layers")
    return {k: (1.0 - weight_b) * a[k] + weight_b * b[k] for k in a}


def soft_assign(mappings: dict[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Softmax over regions (dim 0) of M / τ: each channel's soft assignment to the regions."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return {k: torch.softmax(m / tau, dim=0) for k, m in mappings.items()}


def edit_styles(
    frame: list[torch.Tensor], reference: list[torch.Tensor], q: list[torch.Tensor], alpha: float
) -> list[torch.Tensor]:
    """σ_frame + α q ⊙ (σ_ref − σ_frame), per layer (styles (B, C), masks (C,))."""
    if not len(frame) == len(reference) == len(q):
        raise ValueError(f"need equal layer counts, got {len(frame)}, {len(reference)}, {len(q)}")
    return [s + alpha * m * (r - s) for s, r, m in zip(frame, reference, q, strict=True)]


# -- on the network ------------------------------------------------------------------------------
@dataclass
class StyleSample:
    """One image's styles σ (list of (1, C)), coarse feature (or None), channel shares and region areas."""

    styles: list[torch.Tensor]
    coarse: torch.Tensor | None
    mappings: dict[str, torch.Tensor]  # style name -> (K, C) shares
    areas: torch.Tensor  # (K,) fraction of the image in each region of the partition

    def mapped(self, kind: str) -> dict[str, torch.Tensor]:
        """The mappings as ``kind`` ("share" or "density") defines them."""
        if kind == "share":
            return self.mappings
        return {n: density_mapping(m, self.areas) for n, m in self.mappings.items()}


def style_sample(
    net: StyleAutoencoder, image: torch.Tensor, partition: np.ndarray | torch.Tensor | None = None
) -> StyleSample:
    """Encode ``image`` (1, 3, S, S) in [-1, 1]; with ``partition`` also measure its channel mappings (a
    keyframe or reference needs them, a later frame that only applies a mask does not)."""
    with torch.no_grad():
        codes, coarse = net.encode_features(image)
        styles = net.styles(codes)
        if partition is None:
            return StyleSample(styles, coarse, {}, torch.zeros(len(PARTITION)))
        part = torch.as_tensor(np.asarray(partition, np.float32))
        if part.shape != (len(PARTITION), *image.shape[-2:]):
            raise ValueError(f"partition must be ({len(PARTITION)}, S, S) like the image, got {tuple(part.shape)}")
        _, inputs = net.decode_styles(styles, coarse=coarse, return_styled_inputs=True)
    return StyleSample(styles, coarse, channel_mappings(inputs, part), part.mean(dim=(1, 2)))


@dataclass
class InterpolationMask:
    """Per-layer channel mask q for one feature, and the reference's styles to move towards."""

    feature: str
    q: list[torch.Tensor]  # (C,) per style layer
    reference_styles: list[torch.Tensor]  # (1, C) per style layer

    def apply(self, styles: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
        return edit_styles(styles, self.reference_styles, self.q, alpha)


def interpolation_mask(
    keyframe: StyleSample, reference: StyleSample, feature: str, cfg: InterpolationConfig = InterpolationConfig()
) -> InterpolationMask:
    """The mask q for ``feature`` (glasses/eyes, mouth, nose, hair) from both images' mappings."""
    if not keyframe.mappings or not reference.mappings:
        raise ValueError("the keyframe and the reference need channel mappings: style_sample(..., partition)")
    k = PARTITION.index(canonical_feature(feature))
    both = combine_mappings(keyframe.mapped(cfg.mapping), reference.mapped(cfg.mapping), cfg.reference_weight)
    q = soft_assign(both, cfg.tau)
    return InterpolationMask(canonical_feature(feature), [q[n][k] for n in q], reference.styles)


def decode_edit(net: StyleAutoencoder, frame: StyleSample, mask: InterpolationMask, alpha: float) -> torch.Tensor:
    """The frame decoded with its styles moved by ``alpha`` towards the reference on the mask's channels."""
    with torch.no_grad():
        out = net.decode_styles(mask.apply(frame.styles, alpha), coarse=frame.coarse)
    assert isinstance(out, torch.Tensor)
    return out


def region_change(before: torch.Tensor, after: torch.Tensor, region: np.ndarray) -> tuple[float, float]:
    """(mean |Δ| inside ``region``, mean |Δ| outside), colour change in [0, 1] units (images in [-1, 1])."""
    d = ((after - before).abs().mean(dim=1)[0] / 2.0).cpu().numpy()
    m = np.asarray(region) > 0.5
    if not m.any() or m.all():
        raise ValueError("region must be neither empty nor the whole image")
    return float(d[m].mean()), float(d[~m].mean())


# -- deep feature interpolation ------------------------------------------------------------------
def knn_mean(bank: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the ``k`` rows of ``bank`` nearest to ``query`` (Euclidean), their indices)."""
    b = np.asarray(bank, np.float64).reshape(len(bank), -1)
    q = np.asarray(query, np.float64).reshape(-1)
    if b.shape[1] != q.shape[0]:
        raise ValueError(f"bank rows have {b.shape[1]} values, query {q.shape[0]}")
    if not 1 <= k <= len(b):
        raise ValueError(f"k must be in [1, {len(b)}], got {k}")
    d = np.square(b - q).sum(axis=1)
    idx = np.argsort(d, kind="stable")[:k]
    return b[idx].mean(axis=0).reshape(np.shape(bank)[1:]), idx


def dfi_vector(query: np.ndarray, with_attr: np.ndarray, without_attr: np.ndarray, k: int) -> np.ndarray:
    """w = mean(K nearest with the attribute) − mean(K nearest without), same shape as ``query``."""
    mw, _ = knn_mean(with_attr, query, k)
    mo, _ = knn_mean(without_attr, query, k)
    return (mw - mo).reshape(np.shape(query))


def apply_dfi(codes: torch.Tensor, w: np.ndarray | torch.Tensor, alpha: float) -> torch.Tensor:
    return codes + alpha * torch.as_tensor(w, dtype=codes.dtype).reshape(codes.shape[1:])[None]


@dataclass
class AttributeCodes:
    """Encoded codes (N, L, D) of aligned CelebA faces with and without an attribute."""

    attribute: str
    with_attr: np.ndarray
    without_attr: np.ndarray
    keys_with: list[str]
    keys_without: list[str]

    def vector(self, codes: torch.Tensor | np.ndarray, k: int = 10) -> np.ndarray:
        """DFI vector (L, D) for one face's codes: its K nearest with minus its K nearest without."""
        q = np.asarray(codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else codes).reshape(
            self.with_attr.shape[1:]
        )
        return dfi_vector(q, self.with_attr, self.without_attr, min(k, len(self.with_attr), len(self.without_attr)))


def celeba_attribute_codes(
    net: StyleAutoencoder, attribute: str = "Eyeglasses", n_per_class: int = 100, seed: int = 0
) -> AttributeCodes:
    """Codes of ``n_per_class`` CelebA faces with and without ``attribute`` (shared data), aligned like
    keyframes (``retrieval.align_celeba``, cached) so the vectors apply to keyframe codes."""
    from models.latent.retrieval import align_celeba, celeba_files, encode_faces

    size = net.cfg.size
    sets = [align_celeba(celeba_files(n_per_class, attribute, value, seed), size) for value in (True, False)]
    banks = [encode_faces(net, a.keys, list(a.crops), list(a.landmarks)) for a in sets]
    return AttributeCodes(attribute, banks[0].codes, banks[1].codes, banks[0].keys, banks[1].keys)
