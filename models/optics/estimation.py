"""Estimate the sphere power of worn glasses from video (``remove --rx=auto``).

What a lens does at its rim is the measurable part (this generalises "the face outline steps in at
the rim" to every edge and shading ramp along the rim). Candidate spheres F are tested with the same
3-D thin-lens trace as ``tryon`` (so the face depth d behind each lens point and the head angle
enter, i.e. the 1/(1 − dF) magnification is modelled, not assumed): for pixels just inside the rim,
the trace gives the true point s_F(p) each one shows.

- Minus lenses: s_F(p) lies *outside* the lens for a band inside the rim, whose content is then
  seen twice (through the lens and directly). The observed pixels must agree: |I(p) − I(s_F(p))|,
  divided by the mismatch over the same displacement v = s_F(p) − p taken entirely inside and
  entirely outside the rim (exactly 1 on any locally linear image, so smooth skin is neutral at every
  F). ~0.1–0.4 at the true power, ~0.7–1 elsewhere. The tracked rim of a lens seen through itself is
  off by up to ~1 px, so each frame and lens also fits a rim offset (±0.5 px).
- Any sign (models/optics/rim_step.py): the grey-level step across the rim, extrapolated from both
  sides, must equal ∇T·(s_F(rim) − rim). It measures weak lenses (−1 D within ±0.4 D) and gives
  plus lenses the right sign, but underestimates them (by 0.5–1.5 D at +1…+5 D): the hidden ring's
  texture is not first-order. Its confidence is capped below what ``remove`` acts on.

Costs are accumulated over frames; the minimum (parabola-refined) is the estimate. Limits, measured
on six glasses-free 512 px talking heads (LivePortrait d0, d3, d6, d10, d14, d18), "round" 47 mm
frame, refraction-only renders re-tracked as a live stream would be, no rim drawn, 4 frames:

- −8…−3 D: within ±0.5 D and confident (≥ 0.4) on all six; worst d3 (−4 → −4.42, −3 → −3.35),
  whose re-tracked rim is ~1 px off (with the render's own rim: −4.04).
- −2 D: within ±0.5 D and confident on five (read −2.1…−2.4: the test's first candidate whose band
  is wide enough to test); not confident on d3.
- −1 D: never confident; its band is narrower than the test resolves (the capped rim step reads
  −2.0…+0.5 D).
- No lens, plano, +1/+3/+5 D: never confident; the duplicate ratio stays ≥ 0.69 there (threshold
  0.4). The earlier test (decoys 2 px beyond s_F(p), i.e. farther than v) read smooth skin as a
  −2.3 D lens with confidence 0.47–0.59 on d6 and d10, and −1 D as −2.35 D on four clips.
- Plus lenses are not within ±0.5 D (capped rim step; see tests/test_estimation.py).

A real rim hides the band next to the lens edge, so with a visible rim only strong minus lenses are
measurable confidently, as for a human observer. Rim misregistration beyond ~1 px, textureless skin
with a strong step at the rim (a +5 D lens on a pure ramp reads 0.78) and real (not rendered) lenses
are not covered by these measurements. Cylinder and prism are not estimated.

Why plus lenses stay capped: at 512 px a +1 D lens shifts the rim by only 0.1–0.8 px (mean 0.33), and
nothing inside a plus lens is seen twice, so every plus cue rests on a prior that the face continues
smoothly across the hidden ring. Fits tried on whole pixels with F-dependent world coordinates (joint
plane/quadratic residual, a step term with a shared gradient, a Gaussian-process likelihood with a
variogram fitted outside the rim) reached ±0.5 D on one clip for one setting only and were 1–4 D
off on the other glasses-free clips (d3, d10, d14), so none replaces the rim step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from models.optics.face_depth import FaceDepth
from models.optics.lens_geometry import LensLike
from models.optics.power import power_matrix
from models.optics.refraction import LensPower, trace_lens
from models.optics.rim_step import RimStepConfig, outward_normals, resample_closed, step_costs
from stream.camera import Pinhole

__all__ = [
    "EstimationConfig",
    "SphereEstimate",
    "SphereEstimator",
    "duplicate_ratio",
    "duplicate_ratios",
    "minimum_sigma",
    "outward_normals",
    "refine_minimum",
    "resample_closed",
    "sample",
]


@dataclass(frozen=True)
class EstimationConfig:
    sphere_min: float = -10.0
    sphere_max: float = 8.0
    step: float = 0.25
    min_seen: float = 0.03  # duplicate test needs this fraction of tested pixels seen directly
    # Averaged duplicate ratio below this: a minus lens. Measured on six glasses-free clips (d0, d3, d6,
    # d10, d14, d18; 4 frames): no lens, plano and plus renders stay ≥ 0.69, −1 D (band narrower than
    # the test resolves) ≥ 0.53, while −8…−2 D dip to 0.08–0.37: the threshold sits between the two.
    duplicate_threshold: float = 0.4
    max_step_confidence: float = 0.25  # the rim-step cue is biased for plus lenses: never enough to act on
    step_sigma: float = 0.25  # D: a rim-step minimum this sharp (standard error) earns the full capped confidence
    rim_points: int = 96  # samples along each rim
    inner_px: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)  # tested pixels inside the rim
    outer_gap_px: float = 0.5  # outside points closer than this to the opening are not trusted (rim, blur)
    clip: float = 40.0  # grey levels: one bad sample (eyelash, specular) or edge cannot dominate
    # The tracked outline of a lens seen through itself is off by up to ~1 px (measured on re-tracked
    # renders): the test is repeated with the lens translated by these offsets (each axis) and each frame
    # and lens keeps the offset with the deepest dip, a nuisance parameter fitted per frame. Kept within
    # the tested pixels' distance from the rim (0.5 px): larger offsets let a pair slip past a step at
    # the true rim (a plus lens on smooth skin) while the null pairs cross it, a false dip.
    rim_offsets_px: tuple[float, ...] = (-0.5, 0.0, 0.5)
    rim_step: RimStepConfig = field(default_factory=RimStepConfig)

    @property
    def spheres(self) -> np.ndarray:
        n = round((self.sphere_max - self.sphere_min) / self.step) + 1
        return self.sphere_min + self.step * np.arange(n)

    @property
    def offsets(self) -> np.ndarray:
        """(K, 2) rim offsets in pixels (x, y), the grid of ``rim_offsets_px`` on both axes."""
        o = np.asarray(self.rim_offsets_px, np.float64)
        return np.stack(np.meshgrid(o, o), axis=-1).reshape(-1, 2)


def sample(gray: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear grey values at (..., 2) points (replicated border)."""
    shp = pts.shape[:-1]
    flat = pts.reshape(-1, 2).astype(np.float32)
    n = len(flat)
    # Laid out as rows of 1024: remap maps must stay below 32767 in each dimension.
    cols = min(max(n, 1), 1024)
    rows = -(-n // cols)
    p = np.zeros((rows * cols, 2), np.float32)
    p[:n] = flat
    p = p.reshape(rows, cols, 2)
    v = cv2.remap(gray, p[..., 0], p[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return v.reshape(-1)[:n].reshape(shp)


def duplicate_ratio(gray: np.ndarray, p: np.ndarray, q: np.ndarray, offsets: np.ndarray, clip: float) -> np.ndarray:
    """Per rim offset (K, 2): how much better the pixels ``p`` (M, 2) match their predicted duplicates ``q``
    than chance at the same displacement; ~0 for a true duplicate, ~1 for none.

    The pair (p, q) straddles the rim. The null takes the same displacement v = q − p entirely on each
    side, (2p − q, p) inside and (q, 2q − p) outside, so it sees the same texture scale and the same
    local gradients: on any locally linear image every pair differs by |∇I·v| and the ratio is exactly
    1, however smooth the skin (decoys at another distance than v made smooth skin look duplicated).
    """
    pts = np.stack([p, q, 2.0 * p - q, 2.0 * q - p])  # (4, M, 2)
    v = sample(gray, pts[None] + offsets[:, None, None, :])  # (K, 4, M)
    straddle = np.minimum(np.abs(v[:, 0] - v[:, 1]), clip).mean(axis=1)
    inside = np.minimum(np.abs(v[:, 0] - v[:, 2]), clip)
    outside = np.minimum(np.abs(v[:, 1] - v[:, 3]), clip)
    null = 0.5 * (inside + outside).mean(axis=1)
    return straddle / np.maximum(null, 1e-6)


def duplicate_ratios(
    gray: np.ndarray,
    lenses: tuple[LensLike, ...],
    depth: FaceDepth,
    camera: Pinhole,
    spheres: np.ndarray,
    cfg: EstimationConfig,
) -> np.ndarray:
    """Per candidate sphere: the duplicate ratio (minus lenses), averaged over the lenses; NaN if no rim.

    Tested pixels whose true point lies outside the lens must equal the pixel seen there directly
    (``duplicate_ratio``, ~0 at the true power, ~1 when wrong); 1 when too few tested pixels are seen
    directly (the candidate predicts no duplicate band). Per lens, the rim offset with the deepest dip
    over all candidates is kept (one registration per lens and frame, not one per candidate).
    """
    h, w = gray.shape
    offsets = cfg.offsets
    margin = float(np.max(np.abs(offsets))) if len(offsets) else 0.0
    dup_all = []
    for lens in lenses:
        rim = resample_closed(lens.outline_px, cfg.rim_points)
        nrm = outward_normals(rim)
        a = np.asarray(cfg.inner_px)
        p_in = rim[:, None, :] - a[None, :, None] * nrm[:, None, :]  # (N, A, 2) tested pixels inside the rim
        base = rim + cfg.outer_gap_px * nrm  # first directly seen line
        ok = np.all((base >= 1 + margin) & (base <= [w - 2 - margin, h - 2 - margin]), axis=1) & np.all(
            (p_in >= margin) & (p_in <= [w - 1 - margin, h - 1 - margin]), axis=(1, 2)
        )
        if ok.sum() < 8:
            continue
        rim, nrm, p_in = rim[ok], nrm[ok], p_in[ok]
        n3 = nrm[:, None, :]
        flat = p_in.reshape(-1, 2)
        dup = np.ones((len(spheres), len(offsets)))
        for i, s in enumerate(spheres):
            src = trace_lens(flat, lens, LensPower(power_matrix(s, 0.0, None), np.zeros(2)), depth, camera)
            src = src.reshape(p_in.shape)
            seen = np.sum((src - rim[:, None, :]) * n3, axis=2) >= cfg.outer_gap_px  # true point outside the rim
            if seen.mean() >= cfg.min_seen:
                dup[i] = duplicate_ratio(gray, p_in[seen], src[seen], offsets, cfg.clip)
        dup_all.append(dup[:, int(np.argmin(dup.min(axis=0)))])
    if not dup_all:
        return np.full(len(spheres), np.nan)
    return np.mean(dup_all, axis=0)


def minimum_sigma(x: np.ndarray, y: np.ndarray) -> float:
    """Standard error of the arg-min of a (negative log-likelihood-like) cost: 1/sqrt(curvature); inf when
    the minimum is on the grid's edge or flat."""
    i = int(np.nanargmin(y))
    if not 0 < i < len(y) - 1:
        return float("inf")
    curv = (y[i - 1] - 2 * y[i] + y[i + 1]) / (x[1] - x[0]) ** 2
    # The rim-step cost sums log(1 + r²) ≈ r² near the minimum, i.e. twice a negative log-likelihood.
    return float(np.sqrt(2.0 / curv)) if curv > 1e-12 else float("inf")


def refine_minimum(x: np.ndarray, y: np.ndarray) -> float:
    """Arg-min with a parabola through the lowest sample and its neighbours."""
    i = int(np.nanargmin(y))
    if 0 < i < len(y) - 1 and np.all(np.isfinite(y[i - 1 : i + 2])):
        y0, y1, y2 = y[i - 1 : i + 2]
        den = y0 - 2 * y1 + y2
        if den > 1e-12:
            return float(x[i] + 0.5 * (y0 - y2) / den * (x[1] - x[0]))
    return float(x[i])


@dataclass
class SphereEstimate:
    sphere: float
    confidence: float  # 0..1: how sharply the evidence singles out this sphere
    frames: int
    cue: str = "duplicate"  # "duplicate" (minus band seen twice) or "rim_step" (first-order step, capped)


@dataclass
class SphereEstimator:
    """Accumulates per-frame rim evidence; ``estimate()`` at any time.

    A minus lens leaves an unmistakable trace (a duplicated band inside the rim); if the averaged
    duplicate ratio dips below ``duplicate_threshold`` the sphere is its arg-min. Otherwise the rim
    step decides (weak lenses of either sign, plus lenses), with capped confidence.
    """

    config: EstimationConfig = field(default_factory=EstimationConfig)
    _dup: np.ndarray | None = None
    _step: np.ndarray | None = None
    _frames: int = 0

    @property
    def frames(self) -> int:
        return self._frames

    def add_frame(
        self, rgb: np.ndarray, lenses: tuple[LensLike, ...], depth: FaceDepth, camera: Pinhole, rim_px: float = 0.0
    ) -> bool:
        """Add one frame (observed RGB, the placed lenses, face depth); False if nothing was measurable.

        ``rim_px``: face-on width of a real frame's rim in pixels; what lies under it is not seen, so
        the directly seen content starts that much further out (a minus lens's duplicated band must
        be wider than the rim to be measurable, as in reality).
        """
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        cfg = replace(self.config, outer_gap_px=self.config.outer_gap_px + max(rim_px, 0.0))
        x = cfg.spheres
        dup = duplicate_ratios(gray, lenses, depth, camera, x, cfg)
        if not np.any(np.isfinite(dup)):
            return False
        step, _ = step_costs(gray, lenses, depth, camera, x, cfg.rim_step, rim_px)
        self._dup = dup if self._dup is None else self._dup + dup
        self._step = step if self._step is None else self._step + step
        self._frames += 1
        return True

    def estimate(self) -> SphereEstimate | None:
        if self._dup is None or self._step is None:
            return None
        cfg = self.config
        x = cfg.spheres
        dup = self._dup / self._frames
        settle = 1.0 - 0.5**self._frames  # one frame is a hint, several agreeing frames are evidence
        if np.min(dup) < cfg.duplicate_threshold:
            sphere = refine_minimum(x, dup)
            conf = float(np.clip(1.0 - np.min(dup), 0.0, 1.0))
            cue = "duplicate"
        else:
            sphere = refine_minimum(x, self._step)
            sigma = minimum_sigma(x, self._step)
            # Statistically sharp is not enough: this cue's bias for plus lenses (see rim_step) exceeds its
            # noise, so its confidence stays below what rx=auto acts on with default settings.
            conf = cfg.max_step_confidence / (1.0 + (sigma / cfg.step_sigma) ** 2)
            cue = "rim_step"
        return SphereEstimate(float(np.clip(sphere, x[0], x[-1])), conf * settle, self._frames, cue)
