"""The generic training loop: seeding, optimiser steps with clipping/AMP, EMA, checkpoints, resume, logs.

A ``TrainTask`` (autoencoder/restorer/generator) owns its networks, optimisers and per-step losses; the
``Trainer`` owns everything around them. Resume is bit-exact on the same device/threads: the checkpoint
holds model, optimiser, EMA and GradScaler states, the step, every RNG state (torch, CUDA, numpy,
python, and the task's own generators), and the data order is a pure function of (seed, step)
(``data.StepBatchSampler``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from models.training.config import TrainConfig, to_dict
from models.training.data import make_loader
from models.training.gan import plain_discriminator

log = logging.getLogger(__name__)

CHECKPOINT_GLOB = "step_*.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for float parameters; buffers (codebooks, ...) copied."""
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up (as in many GAN codebases): early EMA follows the fast-moving weights closely."""
    return min(decay, (1.0 + step) / (10.0 + step))


def grad_norm_clip(params: list[nn.Parameter], max_norm: float) -> float:
    if max_norm <= 0:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


class TrainTask:
    """Base of the per-model tasks: networks in ``nets``, optimisers in ``opts``, ``ema_of`` names the
    network whose EMA is kept (the one evaluated and exported)."""

    ema_of: str | None = None

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.nets: dict[str, nn.Module] = {}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.scaler: torch.amp.GradScaler | None = None
        # Task-owned randomness (DiffAugment, fidelity draws): its own generator, checkpointed.
        self.gen = torch.Generator().manual_seed(cfg.run.seed + 1)

    # -- to implement ----------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def with_plain_discriminator(self, net: nn.Module) -> None:
        """``net`` and an unconditioned patch discriminator, their Adam optimisers, and fp16 loss scaling."""
        cfg, device = self.cfg, self.device
        self.nets = {"net": net.to(device), "disc": plain_discriminator(cfg.data.size, cfg.disc).to(device)}
        self.opts = {"net": self.adam(self.nets["net"], cfg.optim.lr_g),
                     "disc": self.adam(self.nets["disc"], cfg.optim.lr_d)}  # fmt: skip
        if device.type == "cuda" and cfg.run.amp == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")

    def adam(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return torch.optim.Adam(module.parameters(), lr=lr, betas=o.betas, weight_decay=o.weight_decay)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        amp = self.cfg.run.amp
        if self.device.type != "cuda" or amp == "none":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def optimise(self, name: str, loss: torch.Tensor) -> float:
        """zero_grad, backward (scaled under fp16), clip, step; returns the pre-clip gradient norm."""
        opt = self.opts[name]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {name} loss {float(loss)}")
        opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            norm = grad_norm_clip(params, self.cfg.optim.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            norm = grad_norm_clip(params, self.cfg.optim.grad_clip)
            opt.step()
        return norm

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # per step of this run: losses
    checkpoint: Path | None = None
    stopped_by: str = "max_steps"


def checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob(CHECKPOINT_GLOB))


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    # weights_only=False: our own files hold numpy/python RNG states; never load untrusted checkpoints.
    return torch.load(p, map_location=map_location, weights_only=False)


class ScalarLog:
    """Always a JSONL file; TensorBoard event files too when the ``tensorboard`` package is importable."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "scalars.jsonl"
        self._f = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self._tb: Any = None
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self._f.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


class Trainer:
    def __init__(self, task: TrainTask, out_dir: str | Path, dataset: Dataset | None = None) -> None:
        self.task, self.cfg = task, task.cfg
        self.out_dir = Path(out_dir)
        self.dataset = dataset if dataset is not None else task.dataset("train")
        self.step = 0
        self.init_weights: dict[str, str] | None = None  # shipped weights this run was fine-tuned from (provenance)
        self.ema: nn.Module | None = None
        if task.ema_of is not None and self.cfg.optim.ema_decay > 0:
            self.ema = copy.deepcopy(task.nets[task.ema_of]).eval().requires_grad_(False)

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self) -> Path:
        d = self.out_dir / "checkpoints"
        d.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.cfg.model,
            "config": to_dict(self.cfg),
            "nets": {k: m.state_dict() for k, m in self.task.nets.items()},
            "opts": {k: o.state_dict() for k, o in self.task.opts.items()},
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": None if self.task.scaler is None else self.task.scaler.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "init_weights": self.init_weights,
        }
        path = d / f"step_{self.step:09d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a crash mid-save never leaves a truncated "latest" checkpoint
        for old in checkpoints(self.out_dir)[: -max(1, self.cfg.run.keep_checkpoints)]:
            old.unlink()
        return path

    def init_from(self, weights: str | Path) -> None:
        """Load a shipped state dict into the trained net (and its EMA copy); optimisers start fresh."""
        name = self.task.ema_of
        if name is None:
            raise ValueError(f"{self.cfg.model}: no main network to initialise")
        state = torch.load(Path(weights), map_location=self.task.device, weights_only=True)
        self.task.nets[name].load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state)
        from accel.cache import sha256_file

        self.init_weights = {"path": str(weights), "sha256": sha256_file(weights)}
        log.info("initialised %s from %s", name, weights)

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.task.device)
        if state["model"] != self.cfg.model:
            raise ValueError(f"{path} is a {state['model']} checkpoint, not {self.cfg.model}")
        for k, m in self.task.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.task.opts.items():
            o.load_state_dict(state["opts"][k])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.task.scaler is not None and state["scaler"] is not None:
            self.task.scaler.load_state_dict(state["scaler"])
        self.task.load_state_dict(state["task"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.init_weights = state.get("init_weights")

    # -- loop ------------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        run = self.cfg.run
        loader = make_loader(self.dataset, run.batch_size, run.seed, self.step, self.cfg.data.num_workers)
        yield from loader

    def train(self, resume: bool = False, max_steps: int | None = None) -> TrainResult:
        run = self.cfg.run
        if resume:
            latest = latest_checkpoint(self.out_dir)
            if latest is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.out_dir)
            else:
                self.restore(latest)
                log.info("resumed from %s (step %d)", latest, self.step)
        total = run.max_steps if max_steps is None else max_steps
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        scalars = ScalarLog(self.out_dir)
        result = TrainResult(self.step)
        deadline = time.monotonic() + run.max_minutes * 60.0 if run.max_minutes > 0 else None
        for net in self.task.nets.values():
            net.train()
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, disable=not run.progress, desc=self.cfg.model, unit="step")
            with bar:
                for batch in self.batches():
                    if self.step >= total:
                        break
                    t0 = time.perf_counter()
                    losses = self.task.train_step(self.task.to_device(batch), self.step)
                    if self.ema is not None:
                        name = self.task.ema_of
                        assert name is not None
                        ema_update(self.ema, self.task.nets[name], ema_decay_at(self.step, self.cfg.optim.ema_decay))
                    self.step += 1
                    losses["step_s"] = time.perf_counter() - t0
                    result.history.append(losses)
                    if self.step % run.log_every == 0 or self.step == total:
                        scalars.write(self.step, losses)
                        bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k.startswith("loss")})
                    bar.update(1)
                    if run.checkpoint_every > 0 and self.step % run.checkpoint_every == 0:
                        result.checkpoint = self.save()
                    if deadline is not None and time.monotonic() >= deadline:
                        result.stopped_by = "max_minutes"
                        break
        finally:
            scalars.close()
        if result.checkpoint is None or int(result.checkpoint.stem.split("_")[1]) != self.step:
            result.checkpoint = self.save()
        result.step = self.step
        return result


def configure_torch(cfg: TrainConfig) -> torch.device:
    """Threads, device and cuDNN autotuning; fails clearly when CUDA is asked for and absent."""
    run = cfg.run
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    if run.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch.cuda.is_available() is False")
        torch.backends.cudnn.benchmark = True  # fixed input sizes: autotuned kernels pay off
    elif run.device != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {run.device!r}")
    return torch.device(run.device)


def build_task(cfg: TrainConfig, device: torch.device, **kw: Any) -> TrainTask:
    if cfg.model == "autoencoder":
        from models.training.autoencoder import AutoencoderTask

        return AutoencoderTask(cfg, device, **kw)
    if cfg.model == "restorer":
        from models.training.restorer import RestorerTask

        return RestorerTask(cfg, device, **kw)
    from models.training.generator import GeneratorTask

    return GeneratorTask(cfg, device, **kw)


def run_training(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
                 dataset: Dataset | None = None, init: str | Path | None = None, **task_kw: Any) -> TrainResult:
    """Seed, build the task (fresh weights are drawn after seeding), train; the CLI entry point.

    ``init``: a shipped weight file (``rxstream publish`` output) to fine-tune from instead of fresh weights;
    ignored when ``resume`` finds a checkpoint (the checkpoint already holds the fine-tuned weights).
    """
    device = configure_torch(cfg)
    seed_everything(cfg.run.seed)
    task = build_task(cfg, device, **task_kw)
    trainer = Trainer(task, out_dir, dataset)
    if init is not None and not (resume and latest_checkpoint(Path(out_dir)) is not None):
        trainer.init_from(init)
    return trainer.train(resume=resume)
