"""Prescription generator training step: image L1 + field and mask supervision from the pair teacher,
the mirrored (add<->remove) reconstruction, and a conditional, paired patch GAN after a warm-up."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.nets import ConditionalPatchDiscriminator, PrescriptionGenerator, mirrored_loss
from models.nets.conditioning import STRENGTH_INDEX
from models.training.autoencoder import r1_weight_at
from models.training.config import TrainConfig
from models.training.data import FaceCrops, clip_records, clip_videos, data_root, load_faces, split
from models.training.gan import discriminator_loss, generator_adversarial
from models.training.pairs import AnalyticLensPairSource, OpticsPairSource, PairDataset, PairSource, RxRanges
from models.training.trainer import TrainTask

PAIRS_PER_EPOCH = 4096  # pairs are drawn on the fly: this only sets how often the permutation turns over


def crop_sampler(crops: FaceCrops) -> Callable[[np.random.Generator], np.ndarray]:
    def draw(rng: np.random.Generator) -> np.ndarray:
        return crops.load(int(rng.integers(0, len(crops))))

    return draw


def pair_source(cfg: TrainConfig, which: str) -> PairSource:
    """The configured teacher over the ``which`` split ("train" | "heldout")."""
    d, w = cfg.data, cfg.generator_loss
    if d.pairs == "analytic":
        crops = FaceCrops(split(d, which, cfg.run.seed), d.size, flip=False)
        return AnalyticLensPairSource(crop_sampler(crops), d.size,
                                      RxRanges(remove_fraction=w.remove_fraction, tint_probability=0.3))
    records, faces = [], {}
    for v in clip_videos(data_root(d)):
        if (v.stem in d.holdout_clips) != (which == "heldout"):
            continue
        recs = clip_records(v, d)
        records += recs
        faces[v.stem] = load_faces(recs[0])
    return OpticsPairSource(records, faces, d.size, d.crop_size, RxRanges(remove_fraction=w.remove_fraction))


def field_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               lens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |pred - target| in crop pixels over samples whose field the teacher knows (``valid`` (B,) in
    {0, 1}). With ``lens`` (B,1,H,W), the mean is over the lens pixels (plus the whole image at 1/10
    weight, so the field stays zero outside): the lens covers ~4% of a crop, and a plain mean would
    make its sub-pixel displacements invisible to the optimiser."""
    err = (pred - target).abs().sum(1, keepdim=True) * (pred.shape[-1] / 2.0)  # normalised -> pixels
    per = err.flatten(1).mean(1)
    if lens is not None:
        per = 0.1 * per + (err * lens).flatten(1).sum(1) / lens.flatten(1).sum(1).clamp_min(1.0)
    return (per * valid).sum() / valid.sum().clamp_min(1.0)


def lens_l1(a: torch.Tensor, b: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """L1 averaged over the lens pixels of each sample (samples without a lens count zero)."""
    per = ((a - b).abs().mean(1, keepdim=True) * lens).flatten(1).sum(1) / lens.flatten(1).sum(1).clamp_min(1.0)
    return per.mean()


class GeneratorTask(TrainTask):
    ema_of = "net"

    def __init__(self, cfg: TrainConfig, device: torch.device, source: PairSource | None = None) -> None:
        super().__init__(cfg, device)
        self.source = source
        self.nets = {"net": PrescriptionGenerator(cfg.generator).to(device),
                     "disc": ConditionalPatchDiscriminator(cfg.generator).to(device)}  # fmt: skip
        self.opts = {"net": self.adam(self.nets["net"], cfg.optim.lr_g),
                     "disc": self.adam(self.nets["disc"], cfg.optim.lr_d)}  # fmt: skip
        if device.type == "cuda" and cfg.run.amp == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")

    def dataset(self, which: str) -> Dataset:
        src = self.source if self.source is not None else pair_source(self.cfg, which)
        return PairDataset(src, PAIRS_PER_EPOCH)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        w = self.cfg.generator_loss
        net, disc = self.nets["net"], self.nets["disc"]
        x, y, c = batch["x"], batch["y"], batch["cond"]
        adversarial = step >= w.adv_start and w.adversarial > 0
        logs: dict[str, float] = {}
        with self.autocast():
            out = net.generate(x, c)
        image, fld, mask = out.image.float(), out.field.float(), out.mask.float()
        if adversarial:
            with self.autocast():
                loss_d, d_logs = discriminator_loss(disc, y, image, c, x, r1_weight_at(step, w.r1, w.r1_every),
                                                    self.gen)
            logs.update(d_logs)
            self.optimise("disc", loss_d)
        lens = (batch["mask"] > 0.5).float()
        l1 = F.l1_loss(image, y) + w.lens_l1 * lens_l1(image, y, lens)
        lf = field_loss(fld, batch["field"], batch["field_valid"], lens)
        # The net's mask is scaled by strength by construction: so is its target.
        lm = F.l1_loss(mask, batch["mask"] * c[:, STRENGTH_INDEX, None, None, None])
        loss = w.l1 * l1 + w.field * lf + w.mask * lm
        logs.update({"l1": l1.item(), "field": lf.item(), "mask": lm.item()})
        if w.mirrored > 0:
            with self.autocast():
                mir = mirrored_loss(net, x, c).float()
            loss = loss + w.mirrored * mir
            logs["mirrored"] = mir.item()
        if adversarial:
            with self.autocast():
                adv, _ = generator_adversarial(disc, y, image, c, x, self.gen)
            loss = loss + w.adversarial * adv
            logs["g_adv"] = adv.item()
        logs["grad_norm"] = self.optimise("net", loss)
        logs["loss"] = loss.item()
        return logs
