"""Style autoencoder training step: L1 + MS-SSIM reconstruction, then (after a warm-up) a patch
discriminator's feature matching and non-saturating adversarial loss for sharper detail."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from models.losses import l1_loss, ms_ssim_loss
from models.nets import StyleAutoencoder
from models.training.config import TrainConfig
from models.training.data import FaceCrops, split
from models.training.gan import discriminator_loss, generator_adversarial, null_condition
from models.training.trainer import TrainTask


def r1_weight_at(step: int, weight: float, every: int) -> float:
    """Lazy R1 (StyleGAN2): applied every ``every`` D steps and scaled by ``every`` to keep its strength."""
    return weight * every if weight > 0 and every > 0 and step % every == 0 else 0.0


class AutoencoderTask(TrainTask):
    ema_of = "net"

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.with_plain_discriminator(StyleAutoencoder(cfg.autoencoder))

    def dataset(self, which: str) -> Dataset:
        d = self.cfg.data
        return FaceCrops(split(d, which, self.cfg.run.seed), d.size, flip=d.flip and which == "train",
                         jitter=d.jitter if which == "train" else 0.0)  # fmt: skip

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        w = self.cfg.autoencoder_loss
        net, disc = self.nets["net"], self.nets["disc"]
        x = batch["image"]
        cond = null_condition(x.shape[0], x.device)
        adversarial = step >= w.adv_start and (w.adversarial > 0 or w.feature_matching > 0)
        logs: dict[str, float] = {}
        with self.autocast():
            y = net(x)
        y = y.float()
        if adversarial:  # D first, on the detached reconstruction: one generator forward per step
            with self.autocast():
                loss_d, d_logs = discriminator_loss(disc, x, y, cond, None, r1_weight_at(step, w.r1, w.r1_every),
                                                    None)
            logs.update(d_logs)
            self.optimise("disc", loss_d)
        l1 = l1_loss(y, x)
        ssim = ms_ssim_loss(y, x)
        loss = w.l1 * l1 + w.ms_ssim * ssim
        logs.update({"l1": l1.item(), "ms_ssim_loss": ssim.item()})
        if adversarial:
            with self.autocast():
                adv, fm = generator_adversarial(disc, x, y, cond, None, None)
            loss = loss + w.adversarial * adv + w.feature_matching * fm
            logs.update({"g_adv": adv.item(), "feature_matching": fm.item()})
        logs["grad_norm"] = self.optimise("net", loss)
        logs["loss"] = loss.item()
        return logs
