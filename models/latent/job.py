"""The keyframe job: LOHO-style latent try-on of a catalogue frame on one tracked face.

This is the interface the stream side runs in the background on keyframes (``run_latent_tryon``); its result
is a layer in aligned-crop coordinates that every later frame warps with its own alignment matrix and
alpha-blends, so the live stream never waits for the optimisation.

Per job: aligned crop of the face (models.align) -> the catalogue frame rendered on the full frame with the
optics try-on's renderer and aligned the same way (structure reference, exact geometry) -> the appearance and
style reference (a photo of a face wearing glasses; a CelebA ``Eyeglasses`` photo by default) aligned with
its own landmarks -> masks from the landmarks -> two-stage optimisation (``loho``) -> decode. The layer's
alpha is the feathered glasses region; its colour is the decoded edited crop (``colour="decoded"``) or the
keyframe plus the edit's change (``"residual"``: keeps the keyframe's detail where a modest decoder blurs).

Interpolation vectors follow the same split: ``run_interpolation_mask`` (keyframe: the channel mask of a
facial feature from the keyframe and a reference) and ``apply_interpolation`` (every later frame: its own
styles moved by α on those channels).

The autoencoder is loaded once per process (``models.latent.model``); torch's thread count is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models.latent.loho import (
    Cancelled,
    LohoConfig,
    LohoInputs,
    StageTimes,
    edge_structure,
    optimise_two_stage,
    structure_iou,
)
from models.latent.masks import MaskConfig, TryonMasks, crop_landmarks, tryon_masks

if TYPE_CHECKING:
    import torch

    from models.latent.interpolation import InterpolationConfig, InterpolationMask
    from models.latent.photos import AlignedPhoto
    from stream.face import Face

__all__ = [
    "Cancelled",
    "KeyframeLayer",
    "LatentItem",
    "LatentTryonConfig",
    "apply_interpolation",
    "run_interpolation_mask",
    "run_latent_tryon",
]


@dataclass(frozen=True)
class LatentItem:
    frame: str  # catalogue frame name (models/glasses catalogue)
    reference: str | None = None  # appearance/style reference image path; None = a default CelebA glasses photo


@dataclass
class KeyframeLayer:
    rgba: np.ndarray  # (S, S, 4) float32 in [0, 1], aligned-crop coordinates (models.align, size S)
    size: int  # S
    timings_ms: dict[str, float]  # wall ms: load, prepare, encode, stage1, stage2, decode, total
    diagnostics: dict[str, Any] = field(default_factory=dict)  # losses, cosines, IoU (CLI, benchmarks, tests)


@dataclass(frozen=True)
class LatentTryonConfig:
    weights: str = ""  # "" = models.latent.model.default_weights_path()
    loho: LohoConfig = field(default_factory=LohoConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    colour: Literal["decoded", "residual"] = "decoded"
    anchor: str = "eyes"  # frame placement (as the optics try-on): rigid with the head
    iou_threshold: float | None = None  # "drawn" in the IoU diagnostic: Otsu (None) or a fixed colour change

    def __post_init__(self) -> None:
        if self.colour not in ("decoded", "residual"):
            raise ValueError(f"colour must be 'decoded' or 'residual', got {self.colour!r}")
        if self.anchor not in ("eyes", "pupils"):
            raise ValueError(f"anchor must be 'eyes' or 'pupils', got {self.anchor!r}")


# -- image <-> tensor ----------------------------------------------------------------------------
def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (S, S, 3) -> (1, 3, S, S) float in [-1, 1] (the networks' convention)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def to_unit_rgb(x: torch.Tensor) -> np.ndarray:
    """(1, 3, S, S) in [-1, 1] -> (S, S, 3) float32 in [0, 1]."""
    return ((x[0].detach().clamp(-1, 1) + 1.0) / 2.0).permute(1, 2, 0).cpu().numpy().astype(np.float32)


# -- structure reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class StructureReference:
    crop: np.ndarray  # (S, S, 3) uint8: the keyframe crop with the frame drawn
    alpha: np.ndarray  # (S, S) float32: the frame's coverage in the crop


def render_structure(
    frame_rgb: np.ndarray, face: Face, frame_name: str, m: np.ndarray, size: int, anchor: str = "eyes"
) -> StructureReference:
    """The catalogue frame drawn on the full frame (optics try-on renderer, mediapipe camera), aligned with
    the keyframe's matrix. Coverage comes from drawing it over black and over white: where a pixel went from
    b to r, alpha = 1 - (r_white - r_black) / 255, whatever the frame's colour."""
    from models.align import warp_crop
    from models.glasses import CatalogueError, RenderStyle, get_frame, place_glasses, render_glasses
    from stream.camera import mediapipe_camera

    h, w = frame_rgb.shape[:2]
    try:
        spec = get_frame(frame_name)
    except (CatalogueError, KeyError) as e:
        raise ValueError(f"unknown catalogue frame {frame_name!r}: {e}") from None
    camera = mediapipe_camera(w, h)
    placement = place_glasses(face, spec, camera, anchor=anchor)
    style = RenderStyle()
    drawn = render_glasses(frame_rgb, placement, spec, style, face, camera)
    black = render_glasses(np.zeros_like(frame_rgb), placement, spec, style, face, camera, inplace=True)
    white = render_glasses(np.full_like(frame_rgb, 255), placement, spec, style, face, camera, inplace=True)
    alpha_full = 1.0 - (white.astype(np.float32) - black.astype(np.float32)).mean(axis=2) / 255.0
    alpha = np.clip(warp_crop(alpha_full.astype(np.float32), m, size), 0.0, 1.0)
    return StructureReference(warp_crop(drawn, m, size), alpha)


# -- photos (references; cached: one reference serves many keyframes) ------------------------------
@lru_cache(maxsize=16)
def _aligned_photo(path: str, mtime_ns: int, size: int) -> AlignedPhoto:
    from models.latent.photos import PhotoFaces, read_rgb

    # A landmarker per cache miss (~50 ms): a process-wide one cannot be closed cleanly at interpreter exit.
    with PhotoFaces() as faces:
        return faces.align(read_rgb(path), size)


def align_photo(path: str | Path, size: int) -> AlignedPhoto:
    """A photo's largest face as an aligned crop with landmarks (cached by path and modification time).
    ``FileNotFoundError`` for a missing file, ``ValueError`` when no face is found."""
    from models.latent.photos import NoFaceError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        return _aligned_photo(str(p.resolve()), p.stat().st_mtime_ns, size)
    except NoFaceError:
        raise ValueError(f"no face found in {p}") from None


def aligned_reference(reference: str | None, size: int) -> tuple[AlignedPhoto, str]:
    """(aligned appearance/style reference, its path); the default is a CelebA glasses photo (shared data)."""
    from models.latent.photos import default_reference_path

    path = Path(reference) if reference else default_reference_path()
    return align_photo(path, size), str(path)


# -- the job -------------------------------------------------------------------------------------
def _check_inputs(frame_rgb: np.ndarray, face: Face) -> None:
    is_array = isinstance(frame_rgb, np.ndarray)
    if not (is_array and frame_rgb.dtype == np.uint8 and frame_rgb.ndim == 3 and frame_rgb.shape[2] == 3):
        got = f"{frame_rgb.dtype} {frame_rgb.shape}" if is_array else type(frame_rgb).__name__
        raise ValueError(f"frame must be an RGB uint8 image, got {got}")
    lm = np.asarray(getattr(face, "landmarks_px", None))
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2 or not np.all(np.isfinite(lm[:, :2])):
        raise ValueError("face must carry finite (478, 3) landmarks_px")


def build_inputs(
    keyframe: np.ndarray,
    structure: StructureReference,
    reference: AlignedPhoto,
    masks: TryonMasks,
    mask_cfg: MaskConfig,
) -> LohoInputs:
    ref_masks = tryon_masks(reference.landmarks, keyframe.shape[0], None, mask_cfg)
    return LohoInputs(
        keyframe=to_tensor(keyframe), structure=to_tensor(structure.crop), appearance=to_tensor(reference.crop),
        face_mask=mask_tensor(masks.face), region_mask=mask_tensor(masks.inner),
        appearance_mask=mask_tensor(ref_masks.inner),
    )  # fmt: skip


def run_latent_tryon(
    frame_rgb: np.ndarray,
    face: Face,
    item: LatentItem,
    config: LatentTryonConfig | None = None,
    cancel: Callable[[], bool] | None = None,
) -> KeyframeLayer:
    """LOHO-style latent try-on of ``item`` on ``face`` in ``frame_rgb`` (RGB uint8): a layer in the face's
    aligned-crop coordinates. ``cancel`` is polled between optimisation steps; when it returns True the job
    raises ``Cancelled``. Missing weights raise ``FileNotFoundError``; bad input ``ValueError``."""
    import torch

    from models.align import align
    from models.latent.model import get_autoencoder

    cfg = config or LatentTryonConfig()
    if not isinstance(item, LatentItem):
        raise ValueError(f"item must be a LatentItem, got {type(item).__name__}")
    _check_inputs(frame_rgb, face)
    times = StageTimes()
    with times.stage("total"):
        with times.stage("load"):
            net = get_autoencoder(cfg.weights or None)
        size = net.cfg.size
        with times.stage("prepare"):
            crop, m = align(frame_rgb, face, size)
            lm = crop_landmarks(face.landmarks_px, m)
            structure = render_structure(frame_rgb, face, item.frame, m, size, cfg.anchor)
            reference, ref_path = aligned_reference(item.reference, size)
            masks = tryon_masks(lm, size, structure.alpha, cfg.masks)
            inputs = build_inputs(crop, structure, reference, masks, cfg.masks)
        if cancel is not None and cancel():
            raise Cancelled("latent try-on cancelled")
        with times.stage("encode"), torch.no_grad():
            codes, coarse = net.encode_features(inputs.keyframe)
        result = optimise_two_stage(net, inputs, cfg.loho, cancel, init=(codes, coarse))
        with times.stage("decode"):
            edited = result.decode(net)
            recon = result.decode(net, "initial")
            colour = to_unit_rgb(edited)
            if cfg.colour == "residual":
                colour = np.clip(crop.astype(np.float32) / 255.0 + colour - to_unit_rgb(recon), 0.0, 1.0)
            rgba = np.concatenate([colour, masks.alpha[..., None]], axis=2).astype(np.float32)
    # "encode" also counts the loss targets (φ of the keyframe and both references, in the optimiser)
    for clock, loho_clock in ((times.wall_ms, result.times.wall_ms), (times.cpu_ms, result.times.cpu_ms)):
        clock["encode"] += loho_clock["targets"]
        clock["stage1"], clock["stage2"] = loho_clock["stage1"], loho_clock["stage2"]

    last = result.history[-1].losses if result.history else {}
    cos = result.stage2_cosines()
    iou = structure_iou(edited, recon, masks.frame, masks.inner, cfg.iou_threshold)
    diagnostics = {
        "frame": item.frame,
        "reference": ref_path,
        "steps": {"stage1": cfg.loho.steps_stage1, "stage2": cfg.loho.steps_stage2},
        "final_losses": last,
        "stage2_mean_layer_cosine": {"first": cos[0], "last": cos[-1]} if cos else None,
        "structure_iou": iou,
        "edge_structure": edge_structure(edited, inputs.structure, masks.inner),
        "region_fraction": float(masks.region.mean()),
        "cpu_ms": times.cpu_ms,  # this thread's CPU time per stage (the cost, whatever the machine's load)
    }
    return KeyframeLayer(rgba, size, times.wall_ms, diagnostics)


# -- interpolation vectors: the mask on the keyframe, applied on every later frame ----------------
def run_interpolation_mask(
    frame_rgb: np.ndarray,
    face: Face,
    reference: str | None,
    feature: str = "eyes",
    config: InterpolationConfig | None = None,
    weights: str = "",
) -> InterpolationMask:
    """Keyframe job for interpolation vectors: the channel mask q of ``feature`` from the keyframe's and the
    reference photo's channel mappings (``interpolation``). Cheap (two encodes, two decodes)."""
    from models.align import align
    from models.latent.interpolation import interpolation_mask, style_sample
    from models.latent.masks import feature_partition
    from models.latent.model import get_autoencoder

    _check_inputs(frame_rgb, face)
    net = get_autoencoder(weights or None)
    size = net.cfg.size
    crop, m = align(frame_rgb, face, size)
    key = style_sample(net, to_tensor(crop), feature_partition(crop_landmarks(face.landmarks_px, m), size))
    ref_photo, _ = aligned_reference(reference, size)
    ref = style_sample(net, to_tensor(ref_photo.crop), feature_partition(ref_photo.landmarks, size))
    if config is None:
        from models.latent.interpolation import InterpolationConfig

        config = InterpolationConfig()
    return interpolation_mask(key, ref, feature, config)


def apply_interpolation(
    frame_rgb: np.ndarray, face: Face, mask: InterpolationMask, alpha: float, weights: str = ""
) -> np.ndarray:
    """A frame's own aligned crop with its styles moved by ``alpha`` towards the reference on the mask's
    channels: (S, S, 3) float32 in [0, 1], aligned-crop coordinates (paste back with the frame's matrix)."""
    from models.align import align
    from models.latent.interpolation import decode_edit, style_sample
    from models.latent.model import get_autoencoder

    _check_inputs(frame_rgb, face)
    net = get_autoencoder(weights or None)
    crop, _ = align(frame_rgb, face, net.cfg.size)
    return to_unit_rgb(decode_edit(net, style_sample(net, to_tensor(crop)), mask, alpha))
