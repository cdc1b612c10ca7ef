"""Codebook restorer: a U-Net whose coarse skips are vector-quantised and fused back by linear gated fusion.

Encoder: stem + residual blocks halving the resolution down to the bottleneck (4x4 or 8x8). Every level at
or below ``quant_max_res`` (the bottleneck included) is quantised against its own codebook: those carry the
face's identity/structure where a learnt prior of clean faces helps most. Finer skips carry degradations
(noise, JPEG blocks) as much as detail, so they pass through a learnt sigmoid gate and are scaled by the
fidelity weight: at ``fidelity=0`` the decoder sees only codebook entries. With ``input_skip`` the input itself is
added back scaled by the same weight, so at ``fidelity=1`` the network restores by predicting a correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.nets.layers import Down, NoiseInjection, ResBlock, norm, num_levels, upsample2x
from models.nets.vq import LinearGatedFusion, VectorQuantizer


@dataclass(frozen=True)
class RestorerConfig:
    size: int = 128
    bottleneck: int = 8
    channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 112, 16: 80, 32: 40, 64: 20})
    quant_max_res: int = 16  # levels with resolution <= this are quantised
    n_codes: int = 512
    lgf_grid: int = 4
    beta: float = 0.25
    decay: float = 0.99
    n_res_bottleneck: int = 1
    # Space-to-depth factor of the stem: the U-Net runs at size/stem_stride and a depth-to-space head
    # writes every output pixel. Full-resolution 3x3 convs were half the CPU time for little gain.
    stem_stride: int = 2
    # Global input skip scaled by the fidelity weight: out = decoder + w·x. At w = 1 the decoder predicts a
    # correction to the input (residual learning: starts at the identity, so short training cannot make
    # faces worse than their input); at w = 0 the image is drawn from the codebooks alone.
    input_skip: bool = True

    def __post_init__(self) -> None:
        num_levels(self.size, self.bottleneck)
        num_levels(self.size, self.stem_stride)  # a power of two
        if self.size // self.stem_stride < self.bottleneck:
            raise ValueError("size / stem_stride must be >= bottleneck")
        if self.quant_max_res < self.bottleneck:
            raise ValueError("quant_max_res must be >= bottleneck (the bottleneck is always quantised)")
        if self.bottleneck < self.lgf_grid:
            raise ValueError("bottleneck must be >= lgf_grid")

    @property
    def resolutions(self) -> list[int]:
        """Encoder levels, fine to coarse: size/stem_stride, ..., bottleneck."""
        top = self.size // self.stem_stride
        return [top >> i for i in range(num_levels(top, self.bottleneck) + 1)]

    @property
    def quantised(self) -> list[int]:
        return [r for r in self.resolutions if r <= self.quant_max_res]


class SkipGate(nn.Module):
    """High-resolution skip: a learnt per-pixel sigmoid gate from (decoder, skip) features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(torch.cat([h, skip], dim=1))) * skip


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.res = ResBlock(c_out, c_out)
        self.noise = NoiseInjection()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.noise(self.res(self.conv(upsample2x(h))))


class CodebookRestorer(nn.Module):
    """``forward(x, fidelity) -> restored``; ``fidelity`` (B,) or (1,) in [0, 1]: 0 = pure codebook."""

    def __init__(self, cfg: RestorerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RestorerConfig()
        res = cfg.resolutions
        ch = cfg.channels
        top, k = res[0], cfg.stem_stride
        self.stem = nn.Sequential(nn.PixelUnshuffle(k), nn.Conv2d(3 * k * k, ch[top], 3, padding=1))
        self.downs = nn.ModuleList(Down(ch[r], ch[r // 2]) for r in res[:-1])
        self.mid = nn.Sequential(
            *(ResBlock(ch[cfg.bottleneck], ch[cfg.bottleneck]) for _ in range(cfg.n_res_bottleneck))
        )
        # Per quantised level: 1x1 projection to the code space (pre-quantisation), codebook, LGF.
        self.pre_quant = nn.ModuleDict({str(r): nn.Conv2d(ch[r], ch[r], 1) for r in cfg.quantised})
        self.quantizers = nn.ModuleDict(
            {str(r): VectorQuantizer(cfg.n_codes, ch[r], cfg.beta, cfg.decay) for r in cfg.quantised}
        )
        self.fusions = nn.ModuleDict({str(r): LinearGatedFusion(r, cfg.lgf_grid) for r in cfg.quantised})
        self.gates = nn.ModuleDict({str(r): SkipGate(ch[r]) for r in res if r > cfg.quant_max_res})
        self.ups = nn.ModuleList(UpBlock(ch[r], ch[r * 2]) for r in res[:0:-1])  # bottleneck -> size
        self.merge = nn.ModuleDict({str(r): nn.Conv2d(2 * ch[r], ch[r], 1) for r in res[:-1]})
        self.out = nn.Sequential(norm(ch[top]), nn.SiLU(), nn.Conv2d(ch[top], 3 * k * k, 3, padding=1),
                                 nn.PixelShuffle(k))  # fmt: skip
        if cfg.input_skip:  # start as "w·x": the decoder's correction grows from zero
            nn.init.zeros_(self.out[2].weight)
            nn.init.zeros_(self.out[2].bias)

    def encode(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features per level ``{resolution: (B, C, r, r)}``; quantised levels after their pre-projection."""
        h = self.stem(x)
        feats = {self.cfg.resolutions[0]: h}
        for down, r in zip(self.downs, self.cfg.resolutions[1:], strict=True):
            h = down(h)
            feats[r] = h
        feats[self.cfg.bottleneck] = self.mid(feats[self.cfg.bottleneck])
        for r in self.cfg.quantised:
            feats[r] = self.pre_quant[str(r)](feats[r])
        return feats

    def forward(
        self, x: torch.Tensor, fidelity: torch.Tensor | float = 1.0, x_clean: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.restore(x, fidelity, x_clean)[0]

    def restore(
        self, x: torch.Tensor, fidelity: torch.Tensor | float = 1.0, x_clean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """(image, total commitment loss, code indices per quantised level).

        ``x_clean`` (training only): the clean target; its features drive the EMA codebook updates.
        """
        w = fidelity
        if isinstance(w, torch.Tensor):
            w = w.reshape(-1, 1, 1, 1).to(x.dtype)  # (B,) or (1,): one weight per image
        elif not 0.0 <= w <= 1.0:
            raise ValueError(f"fidelity must be in [0, 1], got {w}")
        feats = self.encode(x)
        clean = None
        if x_clean is not None and self.training:
            with torch.no_grad():
                clean = self.encode(x_clean)
        commitment = x.new_zeros(())
        indices: dict[int, torch.Tensor] = {}
        fused: dict[int, torch.Tensor] = {}
        for r in self.cfg.quantised:
            p = feats[r]
            vq = self.quantizers[str(r)](p, None if clean is None else clean[r])
            commitment = commitment + vq.commitment
            indices[r] = vq.indices
            fused[r] = self.fusions[str(r)](p, vq.quantized, w)
        out = self.decode(fused, feats, w)
        if self.cfg.input_skip:
            out = out + w * x
        return out, commitment, indices

    def decode(
        self,
        fused: dict[int, torch.Tensor],
        feats: dict[int, torch.Tensor] | None,
        fidelity: torch.Tensor | float,
    ) -> torch.Tensor:
        """Decoder from the fused (or pure) codes; ``feats=None`` drops the high-resolution skips."""
        h = fused[self.cfg.bottleneck]
        for up, r in zip(self.ups, self.cfg.resolutions[-2::-1], strict=True):  # static ints, also when traced
            h = up(h)
            if r in fused:
                skip = fused[r]
            elif feats is None:
                skip = torch.zeros_like(h)
            else:
                skip = fidelity * self.gates[str(r)](h, feats[r])
            h = self.merge[str(r)](torch.cat([h, skip], dim=1))
        return self.out(h)

    def decode_indices(self, indices: dict[int, torch.Tensor]) -> torch.Tensor:
        """The image drawn from codebook entries alone (what ``fidelity=0`` gives)."""
        fused = {r: self.quantizers[str(r)].lookup(indices[r]) for r in self.cfg.quantised}
        return self.decode(fused, None, 0.0)
