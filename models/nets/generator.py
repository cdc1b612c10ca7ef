"""Prescription-conditioned generator (add/remove the look of a lens) and its conditional patch discriminator.

The generator predicts three heads and composes them with the input, so it edits rather than redraws:
``out = mask ⊙ (warp(x, field) + residual) + (1 - mask) ⊙ x``. ``field`` is a displacement in normalised
grid units (tanh-bounded by ``max_displacement``): refraction mostly *moves* pixels (minification,
magnification, prism shift), which a warp models exactly and a convolution only approximately. ``residual``
covers tint, reflections and edges; ``mask`` keeps everything else bit-identical.

Strength (conditioning index 8) multiplies field, residual and mask, so strength 0 is the identity by
construction, not something learnt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.conditioning import COND_DIM, STRENGTH_INDEX, flip_mode
from models.nets.layers import Down, FiLM, ResBlock, norm, num_levels, upsample2x


@dataclass(frozen=True)
class GeneratorConfig:
    size: int = 128
    bottleneck: int = 16
    channels: dict[int, int] = field(default_factory=lambda: {8: 128, 16: 112, 32: 40, 64: 20})
    emb_dim: int = 64
    n_res: int = 2
    # Space-to-depth factor of the stem: the U-Net runs at size/stem_stride and its heads are upsampled
    # bilinearly. Field and mask are smooth, so full-resolution convs cost half the CPU time for nothing;
    # the warp itself still samples the full-resolution input.
    stem_stride: int = 2
    max_displacement: float = 0.25  # normalised grid units ([-1, 1] spans the image): 1/8 of the width
    disc_channels: dict[int, int] = field(default_factory=lambda: {128: 32, 64: 64, 32: 128, 16: 192, 8: 256})
    disc_bottleneck: int = 16
    disc_paired: bool = True  # the discriminator also sees the source image (pix2pix-style)

    @property
    def resolutions(self) -> list[int]:
        """Encoder levels, fine to coarse: size/stem_stride, ..., bottleneck."""
        top = self.size // self.stem_stride
        return [top >> i for i in range(num_levels(top, self.bottleneck) + 1)]


class GeneratorOutput(NamedTuple):
    image: torch.Tensor
    field: torch.Tensor  # (B, 2, H, W), normalised grid units (x, y)
    residual: torch.Tensor
    mask: torch.Tensor


def cond_mlp(emb_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(COND_DIM, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())


def base_grid(h: int, w: int) -> torch.Tensor:
    """(1, H, W, 2) pixel-centre sampling grid for ``grid_sample(align_corners=False)``: identity warp."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2.0 - 1.0
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2.0 - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def warp(x: torch.Tensor, field: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(p) = x(p + field(p)); bilinear, border padding (ONNX GridSample, opset 16+)."""
    return F.grid_sample(x, grid + field.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=False)  # fmt: skip


def compose(x: torch.Tensor, field: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor,
            grid: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The generator's output from its heads: ``mask * (warp(x, field) + residual) + (1 - mask) * x``."""
    return mask * (warp(x, field, grid) + residual) + (1.0 - mask) * x


class UpFiLM(nn.Module):
    """Upsample, conv, concat the (FiLM-conditioned) skip, fuse, FiLM again: conditioning reaches every scale."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip_film = FiLM(emb_dim, c_out)
        self.fuse = ResBlock(2 * c_out, c_out)
        self.film = FiLM(emb_dim, c_out)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv(upsample2x(h))
        return self.film(self.fuse(torch.cat([h, self.skip_film(skip, emb)], dim=1)), emb)


class PrescriptionGenerator(nn.Module):
    """``forward(x (B,3,H,W) in [-1,1], c (B,16)) -> image``; ``generate`` also returns the heads."""

    def __init__(self, cfg: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        res, ch, b = cfg.resolutions, cfg.channels, cfg.bottleneck
        self.embed = cond_mlp(cfg.emb_dim)
        top, k = res[0], cfg.stem_stride
        self.stem = nn.Sequential(nn.PixelUnshuffle(k), nn.Conv2d(3 * k * k, ch[top], 3, padding=1))
        self.downs = nn.ModuleList(Down(ch[r], ch[r // 2]) for r in res[:-1])
        self.join = nn.Conv2d(ch[b] + cfg.emb_dim, ch[b], 1)  # image code ++ embedding at the bottleneck
        self.mid = nn.ModuleList(ResBlock(ch[b], ch[b]) for _ in range(cfg.n_res))
        self.mid_films = nn.ModuleList(FiLM(cfg.emb_dim, ch[b]) for _ in range(cfg.n_res))
        self.ups = nn.ModuleList(UpFiLM(ch[r], ch[r * 2], cfg.emb_dim) for r in res[:0:-1])
        self.head = nn.Sequential(norm(ch[top]), nn.SiLU(), nn.Conv2d(ch[top], 6, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start near "no field, no residual, half mask"
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("grid", base_grid(cfg.size, cfg.size), persistent=False)

    def generate(self, x: torch.Tensor, c: torch.Tensor) -> GeneratorOutput:
        if x.shape[-2:] != (self.cfg.size, self.cfg.size) or c.shape[-1] != COND_DIM:
            raise ValueError(f"need x (B,3,{self.cfg.size},{self.cfg.size}) and c (B,{COND_DIM}); "
                             f"got {tuple(x.shape)}, {tuple(c.shape)}")  # fmt: skip
        emb = self.embed(c)
        h = self.stem(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        e = emb[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        h = self.join(torch.cat([h, e], dim=1))
        for block, film in zip(self.mid, self.mid_films, strict=True):
            h = film(block(h), emb)
        for up, skip in zip(self.ups, skips[-2::-1], strict=True):
            h = up(h, skip, emb)
        raw = self.head(h)
        if self.cfg.stem_stride > 1:
            raw = F.interpolate(raw, scale_factor=float(self.cfg.stem_stride), mode="bilinear", align_corners=False)
        s = c[:, STRENGTH_INDEX].reshape(-1, 1, 1, 1)
        fld = torch.tanh(raw[:, 0:2]) * (self.cfg.max_displacement * s)
        residual = torch.tanh(raw[:, 2:5]) * (2.0 * s)  # the full [-1, 1] range can be reached
        mask = torch.sigmoid(raw[:, 5:6]) * s
        return GeneratorOutput(compose(x, fld, residual, mask, self.grid), fld, residual, mask)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.generate(x, c).image


class GeneratorHeads(PrescriptionGenerator):
    """The same network (same weights) exported without its last step: ``forward(x, c) -> (field, residual,
    mask)``. A caller composes them (``compose``; on the host ``models.heads_compose``) on an image of
    its choice, e.g. the restorer's output for a crop the heads were computed from while the restorer ran."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        g = self.generate(x, c)
        return g.field, g.residual, g.mask


def mirrored_loss(gen: PrescriptionGenerator, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cycle consistency over the mode: ``|remove(add(x, c), c) - x|_1 + |add(remove(x, c), c) - x|_1``.

    ``c`` may hold either mode; each row is run in its own mode then the mirrored one, and vice versa.
    """
    c_flip = flip_mode(c)
    fwd = gen(gen(x, c), c_flip)
    bwd = gen(gen(x, c_flip), c)
    return F.l1_loss(fwd, x) + F.l1_loss(bwd, x)


class DiscOutput(NamedTuple):
    score: torch.Tensor  # (B,): patch logits averaged
    patches: torch.Tensor  # (B, 1, h, w) logits
    features: list[torch.Tensor]  # per-level activations, for feature matching


class ConditionalPatchDiscriminator(nn.Module):
    """Patch discriminator with a projection term (Miyato & Koyama 2018) for the prescription.

    logit(p) = psi(h(p)) + <embed(c), h(p)> per patch position p; the score is the mean over patches.
    No normalisation layers: regularise with R1 instead (``losses.r1_penalty``).
    """

    def __init__(self, cfg: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        ch = cfg.disc_channels
        res = [cfg.size >> i for i in range(num_levels(cfg.size, cfg.disc_bottleneck) + 1)]
        c_in = 6 if cfg.disc_paired else 3
        self.stem = nn.Conv2d(c_in, ch[cfg.size], 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch[r], ch[r // 2], 4, stride=2, padding=1), nn.LeakyReLU(0.2)) for r in res[:-1]
        )
        c_out = ch[cfg.disc_bottleneck]
        self.final = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2))
        self.psi = nn.Conv2d(c_out, 1, 1)
        self.embed = nn.Sequential(cond_mlp(cfg.emb_dim), nn.Linear(cfg.emb_dim, c_out))

    def discriminate(self, y: torch.Tensor, c: torch.Tensor, x_src: torch.Tensor | None = None) -> DiscOutput:
        if self.cfg.disc_paired:
            if x_src is None:
                raise ValueError("paired discriminator needs the source image x_src")
            y = torch.cat([y, x_src], dim=1)
        h = F.leaky_relu(self.stem(y), 0.2)
        feats = [h]
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        h = self.final(h)
        feats.append(h)
        proj = (self.embed(c)[:, :, None, None] * h).sum(dim=1, keepdim=True)
        patches = self.psi(h) + proj
        return DiscOutput(patches.mean(dim=(1, 2, 3)), patches, feats)

    def forward(
        self, y: torch.Tensor, c: torch.Tensor, x_src: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.discriminate(y, c, x_src)
        return out.score, out.patches
