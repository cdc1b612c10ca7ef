"""Turn a training checkpoint into the shipped weight format (``export.models.save_weights``: ``X.pt`` state
dict + ``X.json`` net config), which the filters, ``rxstream export`` and the latent methods load.

The EMA weights are published when the checkpoint has them (they are what ``rxstream eval`` measures by
default). A ``X.card.json`` beside the weights records where they came from: checkpoint step, the full
training config, the checkpoint's sha256, and the data licence caveat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.training.config import TrainConfig, from_dict, to_dict

# training kind -> exported network name (export/models.py)
EXPORT_NAMES = {"autoencoder": "style_autoencoder", "restorer": "restorer", "generator": "generator"}

LICENCE_CAVEAT = (
    "Trained on ../shared/data: CelebA (non-commercial research only), CodeFormer crops (S-Lab licence, "
    "non-commercial), LivePortrait example videos (repository MIT; the videos' own source and terms are not "
    "stated). These weights inherit those terms: research and testing use only."
)


def publish(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write ``out_dir/<export name>.pt`` (+ ``.json`` config, ``.card.json`` provenance); returns the ``.pt``."""
    from accel.cache import sha256_file
    from export.models import save_weights
    from models.training.evaluate import load_model
    from models.training.trainer import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    cfg = from_dict(TrainConfig, ckpt["config"])
    net = load_model(ckpt, cfg, use_ema=use_ema)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = EXPORT_NAMES[cfg.model]
    path = save_weights(net, cfg.net_config(), out_dir / f"{name}.pt")
    card: dict[str, Any] = {
        "model": name,
        "training_kind": cfg.model,
        "step": int(ckpt["step"]),
        "weights": "ema" if use_ema and ckpt.get("ema") is not None else "raw",
        "checkpoint_sha256": sha256_file(checkpoint),
        "fine_tuned_from": ckpt.get("init_weights"),
        "weights_sha256": sha256_file(path),
        "train_config": to_dict(cfg),
        "licence": LICENCE_CAVEAT,
    }
    path.with_suffix(".card.json").write_text(json.dumps(card, indent=1) + "\n")
    return path
