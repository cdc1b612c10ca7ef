"""The style autoencoder for latent jobs: found, loaded once per process (thread-safe), inference only.

Weights, in order: an explicit path, ``$RXSTREAM_LATENT_WEIGHTS``, then ``style_autoencoder.pt`` in the
weights directory (``$RXSTREAM_WEIGHTS`` or ``models/weights``, as the model store). A path is either the
shipped format (``X.pt`` state dict + ``X.json`` config, ``export.models.save_weights``) or a training
checkpoint written by ``rxstream train autoencoder`` (its EMA weights are used): the latter serves
development while the shipped weights are still training.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from models.nets.style_autoencoder import StyleAutoencoder

WEIGHTS_ENV = "RXSTREAM_LATENT_WEIGHTS"
WEIGHTS_NAME = "style_autoencoder.pt"

_lock = threading.Lock()
_cache: dict[tuple[str, int], StyleAutoencoder] = {}  # (resolved path, mtime_ns)


def default_weights_path() -> Path:
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    from accel.model_store import default_weights_dir

    return default_weights_dir() / WEIGHTS_NAME


def _load(path: Path) -> StyleAutoencoder:
    cfg_path = path.with_suffix(".json")
    if cfg_path.is_file():
        from export.models import config_from_json, load_model, model_spec

        size = config_from_json(model_spec("style_autoencoder"), json.loads(cfg_path.read_text())).size
        net = load_model("style_autoencoder", size, path).module
    else:
        from models.training.config import TrainConfig, from_dict
        from models.training.evaluate import load_model as load_checkpoint_model
        from models.training.trainer import load_checkpoint

        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("model") != "autoencoder":
            raise ValueError(f"{path}: neither shipped weights (no {path.with_suffix('.json').name} beside it) "
                             "nor an autoencoder training checkpoint")  # fmt: skip
        net = load_checkpoint_model(ckpt, from_dict(TrainConfig, ckpt["config"]), use_ema=True)
    if not isinstance(net, StyleAutoencoder):
        raise ValueError(f"{path} does not hold a style autoencoder")
    net.eval()
    for p in net.parameters():  # inference only: gradients flow to latents, never into the weights
        p.requires_grad_(False)
    return net


def get_autoencoder(weights: str | Path | None = None) -> StyleAutoencoder:
    """The loaded autoencoder for ``weights`` (default: see the module doc), loaded on first use.

    Raises ``FileNotFoundError`` naming the expected file when there are no weights. The module is shared:
    callers must not train it or change its mode.
    """
    path = Path(weights) if weights else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"style autoencoder weights not found at {path}: train and publish them (rxstream train autoencoder; "
            f"rxstream publish), or point ${WEIGHTS_ENV} at a weights file or training checkpoint"
        )
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns)
    with _lock:  # one load per file version, however many jobs ask at once
        net = _cache.get(key)
        if net is None:
            net = _load(path)
            _cache.clear()  # a new file version replaces the old one
            _cache[key] = net
    return net
