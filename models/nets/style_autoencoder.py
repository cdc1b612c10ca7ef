"""Style autoencoder: an encoder to W+-like per-layer codes and a StyleGAN2-style modulated decoder.

Decoder input: a **learned constant** (StyleGAN2) by default, so that everything the decoder draws is
carried by the per-layer codes (plus noise for stochastic detail). That is what latent optimisation and
channel mappings will operate on: edit the codes, edit the image. ``decoder_input="encoder"`` instead
feeds the encoder's coarse (4x4) feature map, which reconstructs pose/background more faithfully at the
cost of splitting the image description between two tensors; ``decode`` then needs ``coarse``.

Modulated convolution uses the *fused-by-linearity* form (StyleGAN2's ``fused_modconv=False`` path):
``conv(x * s, w) * d`` equals ``conv(x, w * s) * d`` per sample, with the demodulation
``d = rsqrt((s^2) @ sum_k(w^2)^T + eps)``. Unlike the grouped-conv form it uses one shared weight, so the
exported graph is a plain Conv whatever the batch size (static, TensorRT-friendly).

Style space: every modulated conv scales its input channels by ``s = affine(w)``. ``styles(codes)`` returns
those per-layer, per-channel styles σ (StyleSpace, Wu et al. 2021) and ``decode_styles(σ)`` draws from them
directly, so edits can act on single channels (``decode(codes) == decode_styles(styles(codes))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.layers import Down, NoiseInjection, ResBlock, num_levels, upsample2x


@dataclass(frozen=True)
class StyleAutoencoderConfig:
    size: int = 128
    w_dim: int = 224
    # Channels per resolution, from 4x4 up to ``size``; shared by encoder (mirrored) and decoder.
    channels: dict[int, int] = field(default_factory=lambda: {4: 112, 8: 112, 16: 96, 32: 64, 64: 32, 128: 16})
    decoder_input: Literal["const", "encoder"] = "const"

    def ch(self, res: int) -> int:
        return self.channels[res]

    @property
    def resolutions(self) -> list[int]:
        return [4 * 2**i for i in range(num_levels(self.size, 4) + 1)]

    @property
    def n_layers(self) -> int:
        """Style codes: one per modulated conv (1 at 4x4, 2 per later resolution) + 1 for the last toRGB."""
        return 1 + 2 * (len(self.resolutions) - 1) + 1


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated (optionally demodulated) convolution, batch-agnostic fused form."""

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel) / math.sqrt(c_in * kernel * kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.affine = nn.Linear(w_dim, c_in)
        nn.init.normal_(self.affine.weight, std=1.0 / math.sqrt(w_dim))
        nn.init.ones_(self.affine.bias)  # styles start around 1 (StyleGAN2): near an unmodulated conv
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.affine(w))

    def modulated(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The convolution for given styles ``s`` (B, c_in), i.e. ``forward`` after the affine map."""
        y = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:
            # sum over the kernel taps as a matmul with ones: the ONNX exporter constant-folds it to a
            # (c_out, c_in) table (a ReduceSum would leave a second full-size copy of the weight in the graph).
            k2 = self.weight.shape[2] * self.weight.shape[3]
            w2 = self.weight.square().reshape(self.weight.shape[0], self.weight.shape[1], k2) @ self.weight.new_ones(k2)
            d = torch.rsqrt(s.square() @ w2.t() + 1e-8)  # (B, c_out)
            y = y * d[:, :, None, None]
        return y + self.bias[None, :, None, None]


class StyledLayer(nn.Module):
    """Modulated conv -> noise -> bias/LeakyReLU, optionally upsampling its input first."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim)
        self.noise = NoiseInjection()

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.styled(self.styled_input(x), self.conv.affine(w), noise)

    def styled_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor the styles scale: the (upsampled) input."""
        return upsample2x(x) if self.upsample else x

    def styled(self, x: torch.Tensor, s: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The layer for styles ``s`` on an input already passed through ``styled_input``."""
        return F.leaky_relu(self.noise(self.conv.modulated(x, s), noise), 0.2) * math.sqrt(2.0)


class ToRGB(nn.Module):
    def __init__(self, c_in: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, 3, 1, w_dim, demodulate=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        return self.styled(x, self.conv.affine(w), skip)

    def styled(self, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        rgb = self.conv.modulated(x, s)
        return rgb if skip is None else rgb + upsample2x(skip)


class StyleEncoder(nn.Module):
    """Residual pyramid to 4x4; each style code is read from the pyramid level its decoder layer draws at
    (coarse codes from deep features, fine codes from shallow ones; pSp-like), plus the global feature."""

    def __init__(self, cfg: StyleAutoencoderConfig) -> None:
        super().__init__()
        res = cfg.resolutions[::-1]  # size ... 4
        self.stem = nn.Conv2d(3, cfg.ch(cfg.size), 3, padding=1)
        self.downs = nn.ModuleList(Down(cfg.ch(r), cfg.ch(r // 2)) for r in res[:-1])
        self.final = ResBlock(cfg.ch(4), cfg.ch(4))
        # Decoder layer i draws at resolution layer_res[i]; its code comes from that encoder level.
        self.layer_res = [4] + [r for r in cfg.resolutions[1:] for _ in range(2)] + [cfg.size]
        g = cfg.ch(4)
        self.heads = nn.ModuleList(nn.Linear(cfg.ch(r) + g, cfg.w_dim) for r in self.layer_res)
        self.level_index = {r: i for i, r in enumerate(res)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        feats = [h]
        for down in self.downs:
            h = down(h)
            feats.append(h)
        coarse = self.final(h)
        feats[-1] = coarse
        pooled = [f.mean(dim=(2, 3)) for f in feats]
        g = pooled[-1]
        codes = [
            head(torch.cat([pooled[self.level_index[r]], g], dim=1))
            for head, r in zip(self.heads, self.layer_res, strict=True)
        ]
        return torch.stack(codes, dim=1), coarse


class StyleDecoder(nn.Module):
    def __init__(self, cfg: StyleAutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c4 = cfg.ch(4)
        if cfg.decoder_input == "const":
            self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.layers = nn.ModuleList([StyledLayer(c4, c4, cfg.w_dim, upsample=False)])
        self.to_rgbs = nn.ModuleList([ToRGB(c4, cfg.w_dim)])
        self.layer_names = ["b4.conv"]
        self.layer_res = [4]
        for r in cfg.resolutions[1:]:
            self.layers.append(StyledLayer(cfg.ch(r // 2), cfg.ch(r), cfg.w_dim, upsample=True))
            self.layers.append(StyledLayer(cfg.ch(r), cfg.ch(r), cfg.w_dim, upsample=False))
            self.to_rgbs.append(ToRGB(cfg.ch(r), cfg.w_dim))
            self.layer_names += [f"b{r}.conv0", f"b{r}.conv1"]
            self.layer_res += [r, r]
        # Style layers in drawing order: each resolution's convs, then its toRGB.
        self.style_names: list[str] = []
        for i, name in enumerate(self.layer_names):
            self.style_names.append(name)
            if i % 2 == 0:
                self.style_names.append(f"b{self.layer_res[i]}.torgb")

    @property
    def style_channels(self) -> list[int]:
        """Channels of each style layer (its modulated conv's input channels), ``style_names`` order."""
        out = []
        for i, layer in enumerate(self.layers):
            out.append(layer.conv.affine.out_features)
            if i % 2 == 0:
                out.append(self.to_rgbs[(i + 1) // 2].conv.affine.out_features)
        return out

    def styles(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer styles σ (B, c_in) in ``style_names`` order; toRGB at each resolution reads the code
        of the next layer (StyleGAN2's W+ indexing)."""
        self._check_codes(codes)
        out = []
        for i, layer in enumerate(self.layers):
            out.append(layer.conv.affine(codes[:, i]))
            if i % 2 == 0:  # last conv of a resolution
                out.append(self.to_rgbs[(i + 1) // 2].conv.affine(codes[:, i + 1]))
        return out

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.ndim != 3 or codes.shape[1] != self.cfg.n_layers or codes.shape[2] != self.cfg.w_dim:
            raise ValueError(f"codes must be (B, {self.cfg.n_layers}, {self.cfg.w_dim}), got {tuple(codes.shape)}")

    def forward(
        self,
        codes: torch.Tensor,
        noise: list[torch.Tensor | None] | None = None,
        coarse: torch.Tensor | None = None,
        return_activations: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.forward_styles(self.styles(codes), noise, coarse, return_activations)

    def forward_styles(
        self,
        styles: list[torch.Tensor],
        noise: list[torch.Tensor | None] | None = None,
        coarse: torch.Tensor | None = None,
        return_activations: bool = False,
        return_styled_inputs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Draw from per-layer styles σ (``styles(codes)`` layout). ``return_activations``: layer outputs by
        layer name (as ``forward``); ``return_styled_inputs``: the tensor each σ scales, by style name."""
        if return_activations and return_styled_inputs:
            raise ValueError("ask for either return_activations or return_styled_inputs")
        if len(styles) != len(self.style_names):
            raise ValueError(f"styles must list {len(self.style_names)} tensors, got {len(styles)}")
        for name, s, c in zip(self.style_names, styles, self.style_channels, strict=True):
            if s.ndim != 2 or s.shape[1] != c:
                raise ValueError(f"style {name} must be (B, {c}), got {tuple(s.shape)}")
        if noise is not None and len(noise) != len(self.layers):
            raise ValueError(f"noise must list {len(self.layers)} tensors (or None entries), got {len(noise)}")
        batch = styles[0].shape[0]
        if self.cfg.decoder_input == "const":
            x = self.const.expand(batch, -1, -1, -1)
        elif coarse is None:
            raise ValueError("decoder_input='encoder' needs the encoder's coarse feature: decode(codes, coarse=...)")
        else:
            x = coarse
        acts: dict[str, torch.Tensor] = {}
        inputs: dict[str, torch.Tensor] = {}
        rgb: torch.Tensor | None = None
        k = 0  # index into styles
        # toRGB at each resolution follows that resolution's last conv.
        for i, layer in enumerate(self.layers):
            xin = layer.styled_input(x)
            inputs[self.style_names[k]] = xin
            x = layer.styled(xin, styles[k], None if noise is None else noise[i])
            acts[self.layer_names[i]] = x
            k += 1
            if i % 2 == 0:  # last conv of a resolution
                inputs[self.style_names[k]] = x
                rgb = self.to_rgbs[(i + 1) // 2].styled(x, styles[k], rgb)
                k += 1
        assert rgb is not None
        if return_activations:
            return rgb, acts
        return (rgb, inputs) if return_styled_inputs else rgb


class StyleAutoencoder(nn.Module):
    """``encode(x) -> codes (B, n_layers, w_dim)``; ``decode(codes) -> image``; ``forward = decode∘encode``."""

    def __init__(self, cfg: StyleAutoencoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or StyleAutoencoderConfig()
        self.encoder = StyleEncoder(self.cfg)
        self.decoder = StyleDecoder(self.cfg)

    @property
    def layer_names(self) -> list[str]:
        """Names of the decoder's per-layer activations, in drawing order (keys of ``return_activations``)."""
        return list(self.decoder.layer_names)

    @property
    def style_names(self) -> list[str]:
        """Names of the style layers (modulated convs and toRGBs) in drawing order: the layout of ``styles``."""
        return list(self.decoder.style_names)

    def styles(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer, per-channel styles σ = affine(code): a list of (B, c_in), ``style_names`` order."""
        return self.decoder.styles(codes)

    def decode_styles(
        self,
        styles: list[torch.Tensor],
        noise: list[torch.Tensor | None] | None = None,
        coarse: torch.Tensor | None = None,
        return_activations: bool = False,
        return_styled_inputs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``decode`` from styles σ instead of codes; ``return_styled_inputs`` adds ``{style_name: the
        (B, c_in, r, r) tensor that σ scales}`` (what channel mappings measure)."""
        return self.decoder.forward_styles(styles, noise, coarse, return_activations, return_styled_inputs)

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        return [(batch, 1, r, r) for r in self.decoder.layer_res]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(codes, coarse 4x4 feature if the decoder consumes it else None)."""
        codes, coarse = self.encoder(x)
        return codes, (coarse if self.cfg.decoder_input == "encoder" else None)

    def decode(
        self,
        codes: torch.Tensor,
        noise: list[torch.Tensor | None] | None = None,
        return_activations: bool = False,
        coarse: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Image (B, 3, size, size); with ``return_activations`` also ``{layer_name: (B, C, r, r)}``."""
        return self.decoder(codes, noise, coarse, return_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, coarse = self.encode_features(x)
        out = self.decode(codes, coarse=coarse)
        assert isinstance(out, torch.Tensor)
        return out
