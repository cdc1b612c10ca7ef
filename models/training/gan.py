"""Adversarial pieces shared by the three tasks: the patch discriminator, its step, the generator's terms.

The autoencoder and the restorer reuse ``ConditionalPatchDiscriminator`` unconditionally: fed a constant
all-zero conditioning vector its projection term ``<embed(0), h>`` is just one more learnt linear head,
so it is a plain patch discriminator (no separate class to keep in sync).
"""

from __future__ import annotations

import torch

from models.losses import d_loss_nonsaturating, diff_augment, feature_matching_loss, g_loss_nonsaturating, r1_penalty
from models.nets import ConditionalPatchDiscriminator, GeneratorConfig
from models.nets.conditioning import COND_DIM
from models.training.config import DiscConfig


def plain_discriminator(size: int, disc: DiscConfig) -> ConditionalPatchDiscriminator:
    cfg = GeneratorConfig(size=size, disc_channels=dict(disc.channels), disc_bottleneck=disc.bottleneck,
                          disc_paired=False, emb_dim=16)  # fmt: skip
    return ConditionalPatchDiscriminator(cfg)


def null_condition(batch: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(batch, COND_DIM, device=device)


def _augment(tensors: list[torch.Tensor], generator: torch.Generator | None) -> list[torch.Tensor]:
    return tensors if generator is None else list(diff_augment(*tensors, generator=generator))


def discriminator_loss(
    disc: ConditionalPatchDiscriminator, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor,
    src: torch.Tensor | None, r1_weight: float, augment: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Non-saturating D loss (+ R1 on the reals when ``r1_weight`` > 0). ``augment``: DiffAugment with this
    generator, the same parameters for real, fake and the paired source."""
    fake = fake.detach()
    extra = [] if src is None else [src, src]
    aug = _augment([real, fake, *extra], augment)
    real_a, fake_a = aug[0], aug[1]
    src_r, src_f = (aug[2], aug[3]) if src is not None else (None, None)
    if r1_weight > 0:
        real_a = real_a.detach().requires_grad_(True)
    d_real = disc.discriminate(real_a, cond, src_r)
    d_fake = disc.discriminate(fake_a, cond, src_f)
    loss = d_loss_nonsaturating(d_real.patches, d_fake.patches)
    logs = {"loss_d": loss.item(), "d_real": d_real.score.mean().item(), "d_fake": d_fake.score.mean().item()}
    if r1_weight > 0:
        r1 = r1_penalty(d_real.patches.sum(dim=(1, 2, 3)), real_a)
        loss = loss + 0.5 * r1_weight * r1
        logs["r1"] = r1.item()
    return loss, logs


def generator_adversarial(
    disc: ConditionalPatchDiscriminator, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor,
    src: torch.Tensor | None, augment: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(non-saturating G loss, feature matching vs the reals), D seen through the same augmentation."""
    extra = [] if src is None else [src]
    aug = _augment([real, fake, *extra], augment)
    s = aug[2] if src is not None else None
    with torch.no_grad():
        d_real = disc.discriminate(aug[0], cond, s)
    disc.requires_grad_(False)  # gradients only to the generator: no wasted D weight gradients
    try:
        d_fake = disc.discriminate(aug[1], cond, s)
    finally:
        disc.requires_grad_(True)
    return g_loss_nonsaturating(d_fake.patches), feature_matching_loss(d_real.features, d_fake.features)
