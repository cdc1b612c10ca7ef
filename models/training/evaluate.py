"""Held-out evaluation: metrics to ``report.json`` and a contact sheet (rows: input / output / target).

* autoencoder: PSNR and MS-SSIM of reconstructions;
* restorer: PSNR of the degraded input and of the output against the clean crop, and the gain (dB);
* generator: PSNR inside the lens region against the teacher's target (and of the unchanged input, the
  do-nothing baseline), plus the field's end-point error in pixels where the teacher knows the field;
* identity distance (optional): dlib's face-recognition embedding distance between output and target
  (< 0.6 is dlib's "same person"); skipped with the reason when ``dlib``/``face_recognition_models``
  are not installed.

Samples are fixed by index (sample seed = f(seed, index)): two checkpoints are compared on the same
degradations and pairs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from models.losses import ms_ssim, psnr
from models.training.config import TrainConfig, from_dict, merge
from models.training.data import FaceCrops, image_sample, sample_seed, split, to_uint8
from models.training.trainer import load_checkpoint

log = logging.getLogger(__name__)

LENS_THRESHOLD = 0.5


@dataclass
class Outputs:
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    targets: list[torch.Tensor]


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """(B,) PSNR over the pixels where ``mask`` (B, 1, H, W) is set; NaN for an empty mask."""
    m = mask.expand_as(x)
    n = m.flatten(1).sum(1)
    mse = ((x - y).square() * m).flatten(1).sum(1) / n.clamp_min(1.0)
    out = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def contact_sheet(rows: list[list[np.ndarray]], min_tile: int = 128) -> np.ndarray:
    """Grid of RGB uint8 tiles (rows x columns); small tiles are enlarged (nearest: pixels stay visible)."""
    tile = rows[0][0].shape[0]
    scale = max(1, -(-min_tile // tile))
    pad = 2
    ts = tile * scale
    h, w = len(rows) * (ts + pad) + pad, max(len(r) for r in rows) * (ts + pad) + pad
    sheet = np.full((h, w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = cv2.resize(img, (ts, ts), interpolation=cv2.INTER_NEAREST) if scale > 1 else img
            y0, x0 = pad + i * (ts + pad), pad + j * (ts + pad)
            sheet[y0:y0 + ts, x0:x0 + ts] = big
    return sheet


# -- identity (optional dlib) --------------------------------------------------------------------
def dlib_model_paths() -> tuple[Path, Path] | None:
    """(5-point shape predictor, ResNet face descriptor) from the face_recognition_models wheel, located by
    path: importing that package needs pkg_resources, which modern setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "models"
    sp, rec = d / "shape_predictor_5_face_landmarks.dat", d / "dlib_face_recognition_resnet_model_v1.dat"
    return (sp, rec) if sp.is_file() and rec.is_file() else None


class IdentityDistance:
    """dlib 128-D face descriptors of aligned crops (the whole crop is the face box: no detector)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError("identity distance needs dlib (pip install dlib-bin)") from e
        paths = dlib_model_paths()
        if paths is None:
            raise RuntimeError("identity distance needs the face_recognition_models wheel (its .dat files)")
        self._dlib = dlib
        self.shape = dlib.shape_predictor(str(paths[0]))
        self.rec = dlib.face_recognition_model_v1(str(paths[1]))

    def descriptor(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        box = self._dlib.rectangle(0, 0, w - 1, h - 1)
        img = np.ascontiguousarray(rgb)
        return np.asarray(self.rec.compute_face_descriptor(img, self.shape(img, box)))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(self.descriptor(a) - self.descriptor(b)))


def identity_metrics(outs: Outputs) -> dict[str, Any]:
    try:
        ident = IdentityDistance()
    except RuntimeError as e:
        log.warning("identity distance skipped: %s", e)
        return {"skipped": str(e)}
    d_out = [ident.distance(to_uint8(o), to_uint8(t)) for o, t in zip(outs.outputs, outs.targets, strict=True)]
    d_in = [ident.distance(to_uint8(i), to_uint8(t)) for i, t in zip(outs.inputs, outs.targets, strict=True)]
    return {"output_vs_target": float(np.mean(d_out)), "input_vs_target": float(np.mean(d_in)),
            "same_person_rate": float(np.mean(np.asarray(d_out) < 0.6)), "n": len(d_out)}  # fmt: skip


# -- per model -----------------------------------------------------------------------------------
EVAL_STEP = 10**9  # the sample-seed "step" of evaluation samples: never a training step


def _batches(dataset: Any, n: int, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        items = [dataset[(i % len(dataset), sample_seed(seed, EVAL_STEP, i))] for i in idx]
        yield {k: torch.stack([it[k] for it in items]) for k in items[0]}


def load_model(ckpt: dict[str, Any], cfg: TrainConfig, use_ema: bool = True) -> torch.nn.Module:
    from models.nets import CodebookRestorer, PrescriptionGenerator, StyleAutoencoder

    cls = {"autoencoder": StyleAutoencoder, "restorer": CodebookRestorer, "generator": PrescriptionGenerator}
    net = cls[cfg.model](cfg.net_config())
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["nets"]["net"]
    net.load_state_dict(state)
    return net.eval()


EVAL_SEED = 0


def evaluate(model: str, weights: str | Path, out_dir: str | Path, n_samples: int = 64, batch_size: int = 8,
             overrides: dict[str, Any] | None = None, use_ema: bool = True, fidelity: float = 0.5,
             identity: bool = True, sheet_columns: int = 8, dataset: Any = None) -> dict[str, Any]:
    """Evaluate checkpoint ``weights`` on the held-out split; writes report.json and contact_sheet.png."""
    ckpt = load_checkpoint(weights)
    if ckpt["model"] != model:
        raise ValueError(f"{weights} is a {ckpt['model']} checkpoint, not {model}")
    cfg: TrainConfig = from_dict(TrainConfig, merge(ckpt["config"], overrides or {}))
    net = load_model(ckpt, cfg, use_ema)
    # Fixed, not the run's seed: every checkpoint is judged on the same held-out samples and degradations.
    seed = EVAL_SEED
    if dataset is None:
        if model == "autoencoder":
            dataset = FaceCrops(split(cfg.data, "heldout", seed), cfg.data.size, image_sample, flip=False)
        elif model == "restorer":
            from models.training.restorer import DegradedSample

            dataset = FaceCrops(split(cfg.data, "heldout", seed), cfg.data.size, DegradedSample(cfg.restorer_loss),
                                flip=False)  # fmt: skip
        else:
            from models.training.generator import pair_source
            from models.training.pairs import PairDataset

            dataset = PairDataset(pair_source(cfg, "heldout"), n_samples)
    outs = Outputs([], [], [])
    metrics: dict[str, list[float]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        metrics.setdefault(name, []).extend(float(v) for v in values if torch.isfinite(v))

    with torch.no_grad():
        for batch in _batches(dataset, n_samples, batch_size, seed):
            if model == "autoencoder":
                x = batch["image"]
                inp, tgt = x, x
                out = net(x)
                add("psnr", psnr(out, x))
                add("ms_ssim", ms_ssim(out, x))
            elif model == "restorer":
                inp, tgt = batch["degraded"], batch["image"]
                out = net(inp, fidelity)
                add("psnr_input", psnr(inp, tgt))
                add("psnr_output", psnr(out, tgt))
            else:
                inp, tgt = batch["x"], batch["y"]
                g = net.generate(inp, batch["cond"])
                out = g.image
                lens = (batch["mask"] > LENS_THRESHOLD).float()
                add("psnr_lens", masked_psnr(out, tgt, lens))
                add("psnr_lens_identity", masked_psnr(inp, tgt, lens))
                valid = batch["field_valid"] > 0
                if valid.any():
                    px = (g.field - batch["field"])[valid] * (cfg.data.size / 2.0)  # normalised -> pixels
                    epe = px.square().sum(1).sqrt()
                    m = lens[valid][:, 0] > 0
                    add("field_epe_px", torch.stack([e[k].mean() for e, k in zip(epe, m, strict=True) if k.any()])
                        if m.any() else torch.empty(0))  # fmt: skip
            outs.inputs += list(inp)
            outs.outputs += list(out)
            outs.targets += list(tgt)
    report: dict[str, Any] = {"model": model, "weights": str(weights), "step": int(ckpt["step"]),
                              "ema": bool(use_ema and ckpt.get("ema") is not None), "n": len(outs.outputs),
                              "size": cfg.data.size}  # fmt: skip
    report.update({k: float(np.mean(v)) if v else float("nan") for k, v in metrics.items()})
    if model == "restorer":
        report["fidelity"] = fidelity
        report["psnr_gain_db"] = report["psnr_output"] - report["psnr_input"]
    if model == "generator":
        report["psnr_lens_gain_db"] = report["psnr_lens"] - report["psnr_lens_identity"]
    report["identity"] = identity_metrics(outs) if identity else {"skipped": "disabled"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = min(sheet_columns, len(outs.outputs))
    rows = [[to_uint8(t) for t in ts[:k]] for ts in (outs.inputs, outs.outputs, outs.targets)]
    sheet = contact_sheet(rows)
    if not cv2.imwrite(str(out / "contact_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {out / 'contact_sheet.png'}")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
