"""The exportable inference networks: how to build each (random init or a trained ``.pt`` + config JSON),
its named inputs with their encodings, and example inputs for tracing and parity checks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_NORM = "RGB NCHW float in [-1, 1] (x / 127.5 - 1)"


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: Callable[[int, int], tuple[int, ...]]  # (batch, size) -> shape
    normalisation: str
    low: float = -1.0  # range of random example values
    high: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type
    module_cls: type
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    output_normalisation: str = IMAGE_NORM
    # ONNX node-name prefixes kept in fp32 in fp16 exports. Nearest-code search computes
    # ||z||^2 - 2 z.e + ||e||^2, which cancels catastrophically in fp16; a flipped argmin swaps a whole
    # code (a patch of the output), not a rounding error.
    fp32_nodes: tuple[str, ...] = ()
    # The weights family it loads (``<weights_name>.pt``) when that is another model's: a graph that is
    # the same network with other outputs shares its weights.
    weights_name: str | None = None

    @property
    def weights(self) -> str:
        return self.weights_name or self.name


def _image(b: int, s: int) -> tuple[int, ...]:
    return (b, 3, s, s)


def _specs() -> dict[str, ModelSpec]:
    from models.nets import (
        CodebookRestorer,
        GeneratorConfig,
        GeneratorHeads,
        PrescriptionGenerator,
        RestorerConfig,
        StyleAutoencoder,
        StyleAutoencoderConfig,
    )
    from models.nets.conditioning import COND_DIM

    image = InputSpec("image", _image, IMAGE_NORM)
    cond = InputSpec("cond", lambda b, s: (b, COND_DIM),
                     "PrescriptionCondition.to_tensor() (16 floats, see models/nets/conditioning.py)", 0.0, 1.0)
    return {
        "style_autoencoder": ModelSpec(
            "style_autoencoder", StyleAutoencoderConfig, StyleAutoencoder, (image,), ("out",)
        ),
        "restorer": ModelSpec(
            "restorer", RestorerConfig, CodebookRestorer,
            (image, InputSpec("fidelity", lambda b, s: (b,), "per-image fidelity in [0, 1] (0 = pure codebook)",
                              0.0, 1.0)),
            ("out",),
            fp32_nodes=("/pre_quant.", "/quantizers."),
        ),
        "generator": ModelSpec(
            "generator", GeneratorConfig, PrescriptionGenerator,
            (image, cond),
            ("out",),
        ),
        "generator_heads": ModelSpec(
            "generator_heads", GeneratorConfig, GeneratorHeads, (image, cond), ("field", "residual", "mask"),
            output_normalisation="field (B,2,S,S) in normalised grid units, residual (B,3,S,S) in image units, "
                                 "mask (B,1,S,S) in [0, 1]; composed by models/heads_compose.py",
            weights_name="generator",
        ),
    }  # fmt: skip


MODEL_NAMES = ("style_autoencoder", "restorer", "generator", "generator_heads")


def model_spec(name: str) -> ModelSpec:
    specs = _specs()
    if name not in specs:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(specs)}")
    return specs[name]


def weights_family(name: str) -> str:
    """The ``<family>.pt`` weights a model loads: its own name, or the network's whose weights it shares.
    Names that are no exportable model (e.g. test doubles) are their own family."""
    try:
        return model_spec(name).weights
    except ValueError:
        return name


def config_for_size(spec: ModelSpec, size: int, overrides: dict[str, Any] | None = None) -> Any:
    """The default config at ``size``. Channel tables are extended past their finest entry by halving
    (min 8) per doubling: finer levels carry texture, not capacity, and memory grows 4x per level."""
    cfg = spec.config_cls()
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {"size": size}
    for table in ("channels", "disc_channels"):
        if table in fields:
            ch = dict(getattr(cfg, table))
            # the main table only needs the levels the net runs at (below a space-to-depth stem)
            top = size // getattr(cfg, "stem_stride", 1) if table == "channels" else size
            r = max(ch)
            while r < top:
                ch[r * 2] = max(8, ch[r] // 2)
                r *= 2
            changes[table] = ch
    changes.update(overrides or {})
    return dataclasses.replace(cfg, **changes)


def config_to_json(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_json(spec: ModelSpec, d: dict[str, Any]) -> Any:
    """Inverse of ``config_to_json``: JSON object keys are strings, the channel tables need int keys."""
    fixed = {k: ({int(r): c for r, c in v.items()} if isinstance(v, dict) and k.endswith("channels") else v)
             for k, v in d.items()}  # fmt: skip
    return spec.config_cls(**fixed)


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module in eval mode
    config: Any
    source: str  # "sha256:<hex> <file>" or "random-init seed N"


def load_model(
    name: str,
    size: int = 128,
    weights: str | Path | None = None,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build ``name``: from ``weights`` (a state dict ``X.pt`` with its config ``X.json`` beside it) or,
    without weights, randomly initialised with ``torch.manual_seed(seed)`` (reproducible)."""
    import torch

    from accel.cache import sha256_file

    spec = model_spec(name)
    if weights is None:
        cfg = config_for_size(spec, size, config_overrides)
        with torch.random.fork_rng():  # seed locally: do not disturb the caller's RNG stream
            torch.manual_seed(seed)
            module = spec.module_cls(cfg)
        return LoadedModel(module.eval(), cfg, f"random-init seed {seed}")
    weights = Path(weights)
    cfg_path = weights.with_suffix(".json")
    if not weights.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(f"{name}: need weights {weights} and its config {cfg_path}")
    cfg = config_from_json(spec, json.loads(cfg_path.read_text()))
    if cfg.size != size:
        raise ValueError(f"{name}: weights are for size {cfg.size}, asked for {size}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # a training checkpoint wrapping the weights
        state = state["state_dict"]
    module = spec.module_cls(cfg)
    module.load_state_dict(state, strict=True)
    return LoadedModel(module.eval(), cfg, f"sha256:{sha256_file(weights)} {weights.name}")


def save_weights(module: Any, config: Any, path: str | Path) -> Path:
    """The weight-file format ``load_model`` reads: ``X.pt`` state dict + ``X.json`` config."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(config_to_json(config), indent=2) + "\n")
    return path


def example_inputs(spec: ModelSpec, batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 inputs in each input's valid range."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.uniform(i.low, i.high, i.shape(batch, size)).astype(np.float32) for i in spec.inputs}
