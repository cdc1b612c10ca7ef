"""LOHO-style two-stage latent optimisation of a keyframe in the style autoencoder's per-layer latent space.

After LOHO (Saha et al., CVPR 2021), with glasses in place of hair:

* **stage 1** (structure): from the keyframe's own codes, minimise identity + structure. Identity: φ-feature
  distance and pixel L1 to the keyframe on the face region outside the glasses area; structure: the same
  against the structure reference (the keyframe with the chosen frame rendered on) inside the region.
* **stage 2** (appearance and style): add the appearance loss (mean φ features pooled in the region, against
  the second reference's in its own region) and the style loss (Gram matrices, likewise). The structure
  gradient is projected per layer onto the subspace orthogonal to the gradient of appearance+style
  (``projection.project_orthogonal``) before the step, so structure keeps what it can without undoing them.

The ignore band around the region's edge is in neither loss. The optimiser is Adam with a cosine-decayed
learning rate, restarted per stage. For ``decoder_input="encoder"`` models the decoder's coarse 4x4 input is
the only spatial part of the latent: with ``spatial`` stage 1 optimises it with the codes (the frame's
geometry needs somewhere to live), and stage 2 changes the per-layer codes only, so appearance and style
are edited on the layout stage 1 built. ``optimise_joint`` is the one-stage baseline: every loss at once on
the same variables, for the same number of steps, without projection.

Each step records the losses; stage 2 also records the per-layer cosine between the raw structure and
appearance+style gradients, and the largest per-layer |dot| left after projection (zero up to rounding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from models.latent.features import (
    encoder_pyramid,
    masked_feature_distance,
    masked_gram,
    masked_l1,
    masked_mean,
    relative_sq_error,
)
from models.latent.projection import global_cosine, layer_cosine, layer_dot, project_orthogonal
from models.nets.style_autoencoder import StyleAutoencoder


class StageTimes:
    """Wall-clock and CPU milliseconds of named stages. CPU time is this thread's (torch at one thread
    computes on the calling thread), so it shows a job's cost even on a machine busy with other work."""

    def __init__(self) -> None:
        self.wall_ms: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall_ms[name] = self.wall_ms.get(name, 0.0) + (time.perf_counter() - w) * 1e3
            self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (time.thread_time() - c) * 1e3


class Cancelled(Exception):
    """The job's ``cancel()`` returned True: the optimisation stopped between two steps."""


@dataclass(frozen=True)
class LohoConfig:
    steps_stage1: int = 60
    steps_stage2: int = 60
    lr: float = 0.1  # Adam step size as a fraction of each latent tensor's initial RMS (checkpoint-independent)
    lr_stage2: float = 1.0  # stage 2 step size relative to ``lr`` (its own cosine schedule restarts)
    lr_final: float = 0.05  # cosine decay ends at lr * lr_final
    feature_levels: int = 3  # encoder levels in φ beyond the stem (3: 128, 64, 32, 16 px at size 128)
    identity: float = 1.0  # φ distance to the keyframe on the face region
    identity_l1: float = 1.0  # pixel L1 likewise
    structure: float = 1.0  # φ distance to the structure reference inside the region
    structure_l1: float = 2.0
    appearance: float = 1.0  # relative error of region-pooled mean φ vs the appearance reference
    style: float = 1.0  # relative error of region Gram matrices
    project: bool = True  # stage-2 gradient orthogonalisation (False: plain sum, for ablations)
    spatial: bool = True  # also optimise the coarse 4x4 input (decoder_input="encoder") in stage 1 / joint

    def __post_init__(self) -> None:
        if self.steps_stage1 < 0 or self.steps_stage2 < 0:
            raise ValueError("step counts must be >= 0")
        if not self.lr > 0 or not self.lr_stage2 > 0 or not 0 <= self.lr_final <= 1:
            raise ValueError(
                f"need lr, lr_stage2 > 0 and lr_final in [0, 1], got {self.lr}, {self.lr_stage2}, {self.lr_final}"
            )
        weights = (self.identity, self.identity_l1, self.structure, self.structure_l1, self.appearance, self.style)
        if min(weights) < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass
class LohoInputs:
    """Images (1, 3, S, S) in [-1, 1] and masks (1, 1, S, S) in [0, 1], all in aligned-crop coordinates."""

    keyframe: torch.Tensor
    structure: torch.Tensor  # structure reference (the keyframe with the frame rendered on)
    appearance: torch.Tensor  # appearance/style reference
    face_mask: torch.Tensor  # identity region on the keyframe
    region_mask: torch.Tensor  # glasses region minus the ignore band, keyframe/structure coordinates
    appearance_mask: torch.Tensor  # the same region on the appearance reference (its own landmarks)

    def __post_init__(self) -> None:
        ref = self.keyframe.shape
        if len(ref) != 4 or ref[0] != 1 or ref[1] != 3:
            raise ValueError(f"keyframe must be (1, 3, S, S), got {tuple(ref)}")
        for name in ("structure", "appearance"):
            if getattr(self, name).shape != ref:
                raise ValueError(f"{name} must be {tuple(ref)}, got {tuple(getattr(self, name).shape)}")
        for name in ("face_mask", "region_mask", "appearance_mask"):
            m = getattr(self, name)
            if m.shape != (1, 1, *ref[2:]):
                raise ValueError(f"{name} must be (1, 1, {ref[2]}, {ref[3]}), got {tuple(m.shape)}")
            if float(m.sum()) < 1.0:
                raise ValueError(f"{name} is empty: the face is too small or outside the crop")


@dataclass
class Targets:
    """What the losses compare against, computed once (no gradients)."""

    key_feats: list[torch.Tensor]
    struct_feats: list[torch.Tensor]
    app_means: list[torch.Tensor]
    app_grams: list[torch.Tensor]


@dataclass
class StepRecord:
    stage: int  # 1, 2, or 0 for the joint baseline
    step: int
    lr: float
    losses: dict[str, float]
    cos_layers: list[float] | None = None  # stage 2: per-layer cosine(raw structure grad, app+style grad)
    cos_global: float | None = None
    max_abs_dot_after: float | None = None  # stage 2: max over layers |<projected structure grad, ref grad>|


@dataclass
class LohoResult:
    codes: torch.Tensor  # (1, n_layers, w_dim), detached
    coarse: torch.Tensor | None  # the decoder's coarse input after optimisation (decoder_input="encoder")
    init_codes: torch.Tensor  # the keyframe's own codes
    init_coarse: torch.Tensor | None  # ... and coarse feature
    history: list[StepRecord] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)
    stage1: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (codes, coarse) after stage 1

    def decode(self, net: StyleAutoencoder, which: Literal["final", "initial", "stage1"] = "final") -> torch.Tensor:
        """The edited image; ``initial``: the keyframe's own reconstruction; ``stage1``: after stage 1."""
        if which == "stage1" and self.stage1 is None:
            raise ValueError("no stage-1 result (the joint baseline has no stages)")
        codes, coarse = {"final": (self.codes, self.coarse), "initial": (self.init_codes, self.init_coarse),
                         "stage1": self.stage1}[which]  # fmt: skip
        with torch.no_grad():
            out = net.decode(codes, coarse=coarse)
        assert isinstance(out, torch.Tensor)
        return out

    def stage2_cosines(self) -> list[float]:
        """Mean over layers of the per-layer cosine, per stage-2 step."""
        return [sum(r.cos_layers) / len(r.cos_layers) for r in self.history if r.stage == 2 and r.cos_layers]


def cosine_lr(base: float, final_frac: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` (step 0) to ``base * final_frac`` (last step)."""
    if total <= 1:
        return base
    t = step / (total - 1)
    return base * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * t)))


def prepare_targets(net: StyleAutoencoder, inputs: LohoInputs, levels: int) -> Targets:
    with torch.no_grad():
        key = encoder_pyramid(net, inputs.keyframe, levels)
        struct = encoder_pyramid(net, inputs.structure, levels)
        app = encoder_pyramid(net, inputs.appearance, levels)
        means = [masked_mean(f, inputs.appearance_mask) for f in app]
        grams = [masked_gram(f, inputs.appearance_mask) for f in app]
    return Targets(key, struct, means, grams)


def loss_terms(
    net: StyleAutoencoder,
    codes: torch.Tensor,
    coarse: torch.Tensor | None,
    inputs: LohoInputs,
    targets: Targets,
    cfg: LohoConfig,
    with_reference: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({identity, structure[, appearance, style]: scalar}, decoded image); each term already weighted."""
    out = net.decode(codes, coarse=coarse)
    assert isinstance(out, torch.Tensor)
    feats = encoder_pyramid(net, out, cfg.feature_levels)
    n = len(feats)
    fm, rm = inputs.face_mask, inputs.region_mask
    ident = sum(masked_feature_distance(f, t, fm) for f, t in zip(feats, targets.key_feats, strict=True)) / n
    struct = sum(masked_feature_distance(f, t, rm) for f, t in zip(feats, targets.struct_feats, strict=True)) / n
    terms = {
        "identity": (cfg.identity * ident + cfg.identity_l1 * masked_l1(out, inputs.keyframe, fm)).sum(),
        "structure": (cfg.structure * struct + cfg.structure_l1 * masked_l1(out, inputs.structure, rm)).sum(),
    }
    if with_reference:
        app = sum(relative_sq_error(masked_mean(f, rm), t) for f, t in zip(feats, targets.app_means, strict=True))
        sty = sum(relative_sq_error(masked_gram(f, rm), t) for f, t in zip(feats, targets.app_grams, strict=True))
        terms["appearance"] = (cfg.appearance * app / n).sum()
        terms["style"] = (cfg.style * sty / n).sum()
    return terms, out


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("latent optimisation cancelled")


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {k: float(v.detach()) for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out


def encode_keyframe(net: StyleAutoencoder, keyframe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        codes, coarse = net.encode_features(keyframe)
    return codes.detach(), None if coarse is None else coarse.detach()


def _rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt().clamp_min(1e-6))


class _Latent:
    """The variables being optimised: the per-layer codes and, when ``spatial``, the coarse input feature.
    Adam step sizes are relative to each tensor's RMS at the start (checkpoint-independent)."""

    def __init__(self, codes: torch.Tensor, coarse: torch.Tensor | None, cfg: LohoConfig) -> None:
        self.codes = codes.clone().requires_grad_(True)
        self.coarse = None if coarse is None else coarse.clone().requires_grad_(cfg.spatial)
        self.scale = {"codes": _rms(codes), "coarse": 0.0 if coarse is None else _rms(coarse)}

    def params(self, with_coarse: bool) -> list[torch.Tensor]:
        if with_coarse and self.coarse is not None and self.coarse.requires_grad:
            return [self.codes, self.coarse]
        return [self.codes]

    def optimiser(self, with_coarse: bool, lr: float) -> torch.optim.Adam:
        groups = [{"params": [p], "scale": self.scale["codes" if p is self.codes else "coarse"]}
                  for p in self.params(with_coarse)]  # fmt: skip
        opt = torch.optim.Adam(groups, lr=lr)
        set_lr(opt, lr)
        return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` is relative: each group steps ``lr`` times its tensor's initial RMS."""
    for g in opt.param_groups:
        g["lr"] = lr * g["scale"]


def _start(
    net: StyleAutoencoder,
    inputs: LohoInputs,
    cfg: LohoConfig,
    init: tuple[torch.Tensor, torch.Tensor | None] | None,
) -> tuple[Targets, _Latent, LohoResult]:
    """Loss targets, the variables (from ``init`` or the keyframe's encoding) and an empty result."""
    times = StageTimes()
    with times.stage("targets"):
        codes0, coarse0 = init if init is not None else encode_keyframe(net, inputs.keyframe)
        targets = prepare_targets(net, inputs, cfg.feature_levels)
    z = _Latent(codes0, coarse0, cfg)
    return targets, z, LohoResult(codes0.clone(), coarse0, codes0.clone(), coarse0, times=times)


def _descend(
    net: StyleAutoencoder,
    inputs: LohoInputs,
    targets: Targets,
    cfg: LohoConfig,
    z: _Latent,
    result: LohoResult,
    steps: int,
    stage: int,
    cancel: Callable[[], bool] | None,
) -> None:
    """Plain Adam on codes and coarse input over every loss term, one cosine schedule at ``cfg.lr``: stage 1
    (identity + structure) or, with ``stage`` 0, the joint baseline (appearance and style too)."""
    params = z.params(with_coarse=True)
    opt = z.optimiser(True, cfg.lr)
    for step in range(steps):
        _check_cancel(cancel)
        lr = cosine_lr(cfg.lr, cfg.lr_final, step, steps)
        set_lr(opt, lr)
        terms, _ = loss_terms(net, z.codes, z.coarse, inputs, targets, cfg, with_reference=stage == 0)
        grads = torch.autograd.grad(sum(terms.values()), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        result.history.append(StepRecord(stage, step, lr, _floats(terms)))


def optimise_two_stage(
    net: StyleAutoencoder,
    inputs: LohoInputs,
    cfg: LohoConfig = LohoConfig(),
    cancel: Callable[[], bool] | None = None,
    init: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> LohoResult:
    """Stage 1 (identity + structure), then stage 2 (+ appearance and style, structure gradient projected).
    ``init``: the keyframe's (codes, coarse) if already encoded."""
    targets, z, result = _start(net, inputs, cfg, init)
    with result.times.stage("stage1"):
        _descend(net, inputs, targets, cfg, z, result, cfg.steps_stage1, 1, cancel)

    # Stage 2 edits the per-layer codes only: the spatial layout (coarse input) is what stage 1 built.
    coarse = None if z.coarse is None else z.coarse.detach()
    result.stage1 = (z.codes.detach().clone(), None if coarse is None else coarse.clone())
    w = z.codes
    with result.times.stage("stage2"):
        lr2 = cfg.lr * cfg.lr_stage2
        opt = z.optimiser(False, lr2)
        for step in range(cfg.steps_stage2):
            _check_cancel(cancel)
            lr = cosine_lr(lr2, cfg.lr_final, step, cfg.steps_stage2)
            set_lr(opt, lr)
            terms, _ = loss_terms(net, w, coarse, inputs, targets, cfg, with_reference=True)
            # Three gradients from one forward pass: the reference's (appearance + style), structure, identity.
            (g_ref,) = torch.autograd.grad(terms["appearance"] + terms["style"], [w], retain_graph=True)
            (g_struct,) = torch.autograd.grad(terms["structure"], [w], retain_graph=True)
            (g_id,) = torch.autograd.grad(terms["identity"], [w])
            g_proj = project_orthogonal(g_struct, g_ref) if cfg.project else g_struct
            w.grad = g_id + g_proj + g_ref
            opt.step()
            result.history.append(StepRecord(
                2, step, lr, _floats(terms),
                cos_layers=[float(c) for c in layer_cosine(g_struct, g_ref)[0]],
                cos_global=global_cosine(g_struct, g_ref),
                max_abs_dot_after=float(layer_dot(g_proj, g_ref).abs().max()),
            ))  # fmt: skip
    result.codes, result.coarse = w.detach().clone(), coarse
    return result


def optimise_joint(
    net: StyleAutoencoder,
    inputs: LohoInputs,
    cfg: LohoConfig = LohoConfig(),
    cancel: Callable[[], bool] | None = None,
    init: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> LohoResult:
    """One-stage baseline: identity + structure + appearance + style together on the same variables, no
    projection, for ``steps_stage1 + steps_stage2`` steps (one cosine schedule at stage 1's rate)."""
    targets, z, result = _start(net, inputs, cfg, init)
    with result.times.stage("joint"):
        _descend(net, inputs, targets, cfg, z, result, cfg.steps_stage1 + cfg.steps_stage2, 0, cancel)
    result.codes = z.codes.detach().clone()
    result.coarse = None if z.coarse is None else z.coarse.detach().clone()
    return result


# -- region structure metrics --------------------------------------------------------------------
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of 1-D values: the cut maximising the between-class variance (histogram of
    ``bins`` equal bins over the values' range; the cut is a bin edge)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to threshold")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / v.size
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(p)[:-1]  # class 0 = bins [0, k], cut after bin k
    m0 = np.cumsum(p * centres)[:-1]
    mt = float((p * centres).sum())
    w1 = 1.0 - w0
    between = np.where((w0 > 0) & (w1 > 0), (mt * w0 - m0) ** 2 / np.maximum(w0 * w1, 1e-300), 0.0)
    return float(edges[int(np.argmax(between)) + 1])


def change_map(edited: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """(H, W) mean absolute colour change in [0, 1] units (images in [-1, 1], batch of one)."""
    return ((edited - base).abs().mean(dim=1)[0] / 2.0).detach().cpu().numpy()


def mask_iou(a: np.ndarray, b: np.ndarray, within: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks, counting only pixels where ``within`` (if given)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if within is not None:
        w = np.asarray(within) > 0.5
        a, b = a & w, b & w
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def structure_iou(
    edited: torch.Tensor,
    recon: torch.Tensor,
    frame_mask: np.ndarray,
    region: np.ndarray,
    threshold: float | None = None,
) -> float:
    """How well an edit drew the frame: inside the region, IoU between the pixels the edit changed (against
    the keyframe's own reconstruction) and the rendered frame's mask.

    "Changed" is above Otsu's threshold of the region's change map (``threshold=None``) or a fixed colour
    change. Otsu adapts to how strongly the edit changed the region as a whole, so transferring appearance
    (a colour shift over the whole region, the point of stage 2) is not counted as structure.
    """
    d = change_map(edited, recon)
    r = np.asarray(region) > 0.5
    if not r.any():
        raise ValueError("empty region")
    t = otsu_threshold(d[r]) if threshold is None else threshold
    return mask_iou(d > t, np.asarray(frame_mask) > 0.5, r)


def gradient_magnitude(image: torch.Tensor) -> np.ndarray:
    """(H, W) colour gradient magnitude of a (1, 3, H, W) image: sqrt of the summed squared 3x3 Sobel
    responses of all channels (an edge in any channel counts, whatever its colour), borders replicated."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype) / 8.0
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    x = torch.nn.functional.pad(image.detach()[0][:, None], (1, 1, 1, 1), mode="replicate")  # (3, 1, H+2, W+2)
    g = torch.nn.functional.conv2d(x, k)  # (3, 2, H, W)
    return g.square().sum(dim=(0, 1)).sqrt().cpu().numpy()


def edge_structure(edited: torch.Tensor, structure: torch.Tensor, region: np.ndarray) -> float:
    """How much of the structure reference's shape an edit drew: inside the region, the Pearson correlation
    between the edit's and the structure reference's gradient magnitudes, in [-1, 1] (0 when either has no
    edges there).

    Structure is where the edges are, not their colour: a uniform gain or offset on the edit (appearance
    transfer recolouring the rim) leaves the score unchanged, while edges missing, moved or blurred away lower
    it. Unlike ``structure_iou`` it compares with the reference itself, so an edit that sharpens the whole
    region towards the keyframe is not scored as having drawn "change" everywhere.
    """
    r = np.asarray(region) > 0.5
    if not r.any():
        raise ValueError("empty region")
    a = gradient_magnitude(edited)[r].astype(np.float64)
    b = gradient_magnitude(structure)[r].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0
