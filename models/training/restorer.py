"""Codebook restorer training step.

Inputs are degraded on the fly from the clean crop (``models.degrade``: blur/downscale/noise/JPEG, or a
VP8/H.264 round trip for a share of the samples), seeded per sample so any batch can be replayed. Losses:
L1 to the clean crop, commitment, and after a warm-up DiffAugment'ed feature matching + non-saturating
GAN. The codebooks learn by EMA from the *clean* crop's features (``restore(..., x_clean=)``), so they
stay a prior of clean faces.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from models.degrade import codec_degrade, random_degrade
from models.losses import l1_loss, psnr
from models.nets import CodebookRestorer
from models.training.autoencoder import r1_weight_at
from models.training.config import RestorerLoss, TrainConfig
from models.training.data import FaceCrops, split, to_tensor
from models.training.gan import discriminator_loss, generator_adversarial, null_condition
from models.training.trainer import TrainTask

CODECS = ("libx264", "libvpx")


def degraded_pair(image: np.ndarray, rng: np.random.Generator, codec_fraction: float) -> dict[str, torch.Tensor]:
    """{"image": clean, "degraded": x}: the degradation is drawn from ``rng`` (reproducible per sample)."""
    seed = int(rng.integers(0, 2**63 - 1))
    if rng.random() < codec_fraction:
        lq = codec_degrade(image, seed, CODECS[int(rng.integers(0, len(CODECS)))])
    else:
        lq, _ = random_degrade(image, seed)
    return {"image": to_tensor(image), "degraded": to_tensor(lq)}


class DegradedSample:
    """Picklable sample function (DataLoader workers) binding the codec share."""

    def __init__(self, loss: RestorerLoss) -> None:
        self.codec_fraction = loss.codec_fraction

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return degraded_pair(image, rng, self.codec_fraction)


class RestorerTask(TrainTask):
    ema_of = "net"

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.with_plain_discriminator(CodebookRestorer(cfg.restorer))

    def dataset(self, which: str) -> Dataset:
        d = self.cfg.data
        return FaceCrops(split(d, which, self.cfg.run.seed), d.size, DegradedSample(self.cfg.restorer_loss),
                         flip=d.flip and which == "train", jitter=d.jitter if which == "train" else 0.0)

    def fidelity(self, batch: int) -> torch.Tensor:
        w = self.cfg.restorer_loss
        lo, hi = w.fidelity
        fid = lo + (hi - lo) * torch.rand(batch, generator=self.gen)
        if w.fidelity_top_fraction > 0:
            top = torch.rand(batch, generator=self.gen) < w.fidelity_top_fraction
            fid = torch.where(top, torch.full_like(fid, hi), fid)
        return fid.to(self.device)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        w = self.cfg.restorer_loss
        net, disc = self.nets["net"], self.nets["disc"]
        clean, lq = batch["image"], batch["degraded"]
        cond = null_condition(clean.shape[0], clean.device)
        fid = self.fidelity(clean.shape[0])
        adversarial = step >= w.adv_start and (w.adversarial > 0 or w.feature_matching > 0)
        logs: dict[str, float] = {}
        with self.autocast():
            # EMA codebook update happens here (training mode, clean features), once per step.
            out, commit, _ = net.restore(lq, fid, x_clean=clean)
        out = out.float()
        if adversarial:
            with self.autocast():
                loss_d, d_logs = discriminator_loss(disc, clean, out, cond, None,
                                                    r1_weight_at(step, w.r1, w.r1_every), self.gen)
            logs.update(d_logs)
            self.optimise("disc", loss_d)
        l1 = l1_loss(out, clean)
        loss = w.l1 * l1 + w.commitment * commit.float()
        logs.update({"l1": l1.item(), "commitment": commit.item()})
        if adversarial:
            with self.autocast():
                adv, fm = generator_adversarial(disc, clean, out, cond, None, self.gen)
            loss = loss + w.adversarial * adv + w.feature_matching * fm
            logs.update({"g_adv": adv.item(), "feature_matching": fm.item()})
        logs["grad_norm"] = self.optimise("net", loss)
        logs["loss"] = loss.item()
        with torch.no_grad():
            logs["psnr_in"] = float(psnr(lq, clean).mean())
            logs["psnr_out"] = float(psnr(out.detach(), clean).mean())
        return logs
