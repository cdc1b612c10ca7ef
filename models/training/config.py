"""Training configuration: nested frozen dataclasses, loaded from JSON or TOML and overridden from the CLI.

Unknown keys are errors (a typo in a config must not silently train with a default). Network configs are
the models' own dataclasses (``StyleAutoencoderConfig`` etc.); their ``channels`` tables come from
JSON/TOML with string keys and are converted back to ints.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.nets import GeneratorConfig, RestorerConfig, StyleAutoencoderConfig

ModelKind = Literal["autoencoder", "restorer", "generator"]
MODEL_KINDS: tuple[str, ...] = ("autoencoder", "restorer", "generator")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    size: int = 128  # network input size; crops are made at ``crop_size`` and resized
    crop_size: int = 128  # aligned clip crops (models.align sizes: 128/256/512)
    celeba: bool = True
    clips: bool = True
    frames_per_clip: int = 48  # evenly spaced tracked frames kept per clip in the crop cache
    holdout_fraction: float = 0.1  # CelebA: by file-name hash
    holdout_clips: tuple[str, ...] = ("liveportrait_d11", "liveportrait_d20")
    max_items: int = 0  # 0: all; else the first N of the split (after a seeded shuffle): quick runs
    flip: bool = True
    jitter: float = 0.05  # colour jitter amplitude (brightness/contrast/saturation, fraction)
    num_workers: int = 0
    pairs: Literal["optics", "analytic"] = "optics"  # generator pair teacher (models.training.pairs)
    data_root: str = ""  # "" = <repo>/../shared/data
    cache_dir: str = ""  # "" = ~/.cache/rxstream/crops


@dataclass(frozen=True)
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global L2 norm per optimiser step; 0 disables
    ema_decay: float = 0.999  # EMA of generator weights (the weights evaluated/exported); 0 disables


@dataclass(frozen=True)
class RunConfig:
    max_steps: int = 100_000
    max_minutes: float = 0.0  # 0: no time limit
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"
    amp: Literal["none", "bf16", "fp16"] = "none"  # CUDA autocast dtype
    checkpoint_every: int = 1000
    log_every: int = 50
    keep_checkpoints: int = 3
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    progress: bool = True


@dataclass(frozen=True)
class AutoencoderLoss:
    l1: float = 1.0
    ms_ssim: float = 0.5
    feature_matching: float = 1.0
    adversarial: float = 0.05
    r1: float = 1.0
    r1_every: int = 4  # lazy R1 (StyleGAN2): every N discriminator steps, scaled by N
    adv_start: int = 5000  # adversarial + feature-matching terms start after this many steps


@dataclass(frozen=True)
class RestorerLoss:
    l1: float = 1.0
    feature_matching: float = 1.0
    adversarial: float = 0.05
    commitment: float = 1.0
    r1: float = 1.0
    r1_every: int = 4
    adv_start: int = 5000
    fidelity: tuple[float, float] = (0.0, 1.0)  # fidelity weight drawn uniformly per sample
    # Share of samples trained at exactly the range's top (w = 1, where fidelity to the input is judged);
    # the rest stay uniform, so every w of the filter's control keeps being trained.
    fidelity_top_fraction: float = 0.0
    codec_fraction: float = 0.2  # share of samples degraded by a VP8/H.264 round trip instead of JPEG


@dataclass(frozen=True)
class GeneratorLoss:
    l1: float = 1.0
    lens_l1: float = 1.0  # extra L1 averaged over the lens pixels only (they are ~4% of the crop)
    field: float = 0.2  # mean end-point error in crop pixels, over the lens (see generator.field_loss)
    mask: float = 0.5
    mirrored: float = 0.5
    adversarial: float = 0.05
    r1: float = 1.0
    r1_every: int = 4
    adv_start: int = 5000
    remove_fraction: float = 0.5  # share of pairs in "remove" mode (input with lens -> without)


@dataclass(frozen=True)
class DiscConfig:
    """Plain (unconditional) patch discriminator for the autoencoder and the restorer."""

    channels: dict[int, int] = field(default_factory=lambda: {128: 32, 64: 64, 32: 128, 16: 192, 8: 256})
    bottleneck: int = 16


@dataclass(frozen=True)
class TrainConfig:
    model: ModelKind = "autoencoder"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    autoencoder: StyleAutoencoderConfig = field(default_factory=StyleAutoencoderConfig)
    autoencoder_loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)
    restorer: RestorerConfig = field(default_factory=RestorerConfig)
    restorer_loss: RestorerLoss = field(default_factory=RestorerLoss)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generator_loss: GeneratorLoss = field(default_factory=GeneratorLoss)

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ConfigError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        net = self.net_config()
        if net.size != self.data.size:
            raise ConfigError(f"data.size {self.data.size} != {self.model}.size {net.size}")

    def net_config(self) -> Any:
        return getattr(self, self.model)


# -- (de)serialisation ---------------------------------------------------------------------------
def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return {_convert(kt, k, f"{where}.{k}"): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe dict (int dict keys become strings; tuples lists) that ``from_dict`` reads back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: tables merge, everything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.suffix.lower() == ".toml":
            return tomllib.loads(p.read_text())
        if p.suffix.lower() == ".json":
            return json.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: {e}") from None
    raise ConfigError(f"{p}: config files must be .json or .toml")


def default_config_path(model: str) -> Path:
    return CONFIG_DIR / f"{model}.json"


def load_config(model: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- models/configs/<model>.json <- ``path`` <- ``overrides`` (CLI flags)."""
    if model not in MODEL_KINDS:
        raise ConfigError(f"model must be one of {MODEL_KINDS}, got {model!r}")
    data: dict[str, Any] = {"model": model}
    default = default_config_path(model)
    if default.is_file():
        data = merge(data, read_file(default))
    if path is not None:
        data = merge(data, read_file(path))
    data = merge(data, overrides or {})
    if data.get("model") != model:
        raise ConfigError(f"config is for model {data.get('model')!r}, not {model!r}")
    return from_dict(TrainConfig, data)
