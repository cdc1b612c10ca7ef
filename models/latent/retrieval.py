"""Retrieval by facial feature in style space: a gallery index, nearest items, k-means sub-groups.

A gallery item's vector for feature k (glasses/eyes, mouth, nose, hair) is its style code restricted, softly,
to the channels that draw that feature:

    v_k = concat_l [ u_l / ||u_l|| ] / sqrt(L),   u_l = q_{k,l} ⊙ (σ_l − μ_l)

q_k comes from the channel mappings (``interpolation``) averaged over the gallery and soft-assigned with
temperature τ, so every item is measured on the same channels; μ is the gallery's mean style (without
centring every item would look alike: styles sit around 1). Layer-wise normalisation keeps the many-channel,
large-magnitude coarse layers from drowning the fine ones; v_k has unit norm and similarity is the cosine.

Galleries: CelebA faces from the shared data (aligned with their own landmarks, like keyframes), or the
catalogue's frames rendered on one face (the query's own, or any face photo) -- "which of our frames looks
like the glasses in this photo", and, combining both, ``suggest_frames``: the frames people whose faces look
like yours wear.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.latent.interpolation import channel_mappings, density_mapping
from models.latent.masks import FEATURES, PARTITION, canonical_feature, feature_partition
from models.nets.style_autoencoder import StyleAutoencoder

if TYPE_CHECKING:
    from stream.face import Face

log = logging.getLogger(__name__)


# -- k-means -------------------------------------------------------------------------------------
@dataclass
class KMeansResult:
    labels: np.ndarray  # (N,) cluster per row
    centres: np.ndarray  # (k, D)
    inertia: float  # sum of squared distances to the assigned centres


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None], 0.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100, restarts: int = 4) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding; the best of ``restarts`` seeded runs (deterministic)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not 1 <= k <= len(x):
        raise ValueError(f"need (N, D) data with 1 <= k <= N, got {x.shape} and k={k}")
    rng = np.random.default_rng(seed)
    best: KMeansResult | None = None
    for _ in range(max(1, restarts)):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: next centre with probability ∝ squared distance to the nearest
            d = _sq_dist(x, np.array(centres)).min(axis=1)
            p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1.0 / len(x))
            centres.append(x[rng.choice(len(x), p=p)])
        c = np.array(centres)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            new = _sq_dist(x, c).argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    c[j] = members.mean(axis=0)
                else:  # an emptied cluster restarts at the point farthest from its centre
                    c[j] = x[_sq_dist(x, c)[np.arange(len(x)), labels].argmax()]
        inertia = float(_sq_dist(x, c)[np.arange(len(x)), labels].sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels.copy(), c.copy(), inertia)
    assert best is not None
    return best


# -- per-feature vectors (pure) ------------------------------------------------------------------
def layer_slices(channels: Sequence[int]) -> list[slice]:
    ends = np.cumsum(channels)
    return [slice(int(e - c), int(e)) for c, e in zip(channels, ends, strict=True)]


def feature_vectors(styles: np.ndarray, mean: np.ndarray, q: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """(N, C_total) unit vectors v = concat_l normalise(q_l ⊙ (σ_l − μ_l)) / sqrt(L) (see the module doc)."""
    s = np.atleast_2d(np.asarray(styles, np.float64))
    u = (s - np.asarray(mean, np.float64)[None]) * np.asarray(q, np.float64)[None]
    out = np.zeros_like(u)
    for sl in slices:
        n = np.linalg.norm(u[:, sl], axis=1, keepdims=True)
        out[:, sl] = np.where(n > 1e-12, u[:, sl] / np.maximum(n, 1e-12), 0.0)
    return out / np.sqrt(len(slices))


def softmax(x: np.ndarray, tau: float, axis: int = 0) -> np.ndarray:
    z = x / tau
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


# -- encoded faces -------------------------------------------------------------------------------
@dataclass
class FaceBank:
    """Aligned faces encoded once: styles (flattened over layers) and channel mappings per item."""

    keys: list[str]
    codes: np.ndarray  # (N, L, D) float32
    styles: np.ndarray  # (N, C_total) float32, layers in style_names order
    mappings: np.ndarray  # (N, len(PARTITION), C_total) float32: each channel's energy share per region
    areas: np.ndarray  # (N, len(PARTITION)) float32: each region's share of the crop
    channels: list[int]  # channels per style layer

    def __post_init__(self) -> None:
        n = len(self.keys)
        rows = (self.codes, self.styles, self.mappings, self.areas)
        if not n or any(a.shape[0] != n for a in rows):
            raise ValueError("a face bank needs one row per key (and at least one)")

    def mapped(self, kind: str) -> np.ndarray:
        """(N, K, C_total) mappings as ``kind`` ("share" or "density", see ``interpolation``) defines them."""
        if kind == "share":
            return self.mappings
        return np.stack([density_mapping(torch.from_numpy(m), torch.from_numpy(a)).numpy()
                         for m, a in zip(self.mappings, self.areas, strict=True)])  # fmt: skip


def encode_faces(
    net: StyleAutoencoder,
    keys: Sequence[str],
    crops: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    batch: int = 8,
) -> FaceBank:
    """Encode aligned crops (RGB uint8, the net's size) and measure their channel mappings."""
    from models.latent.job import to_tensor

    if not len(keys) == len(crops) == len(landmarks) or not keys:
        raise ValueError("need one crop and one landmark set per key, and at least one key")
    size = net.cfg.size
    codes, styles, maps, areas = [], [], [], []
    for start in range(0, len(keys), batch):
        chunk = range(start, min(len(keys), start + batch))
        x = torch.cat([to_tensor(crops[i]) for i in chunk])
        if x.shape[-1] != size:
            raise ValueError(f"crops must be {size}x{size} (the model's size), got {tuple(x.shape[-2:])}")
        with torch.no_grad():
            c, coarse = net.encode_features(x)
            st = net.styles(c)
            _, inputs = net.decode_styles(st, coarse=coarse, return_styled_inputs=True)
        for j, i in enumerate(chunk):
            part = torch.from_numpy(feature_partition(landmarks[i], size))
            m = channel_mappings({n: v[j : j + 1] for n, v in inputs.items()}, part)
            maps.append(torch.cat([m[n] for n in net.style_names], dim=1).numpy())
            areas.append(part.mean(dim=(1, 2)).numpy())
        codes.append(c.numpy())
        styles.append(torch.cat(st, dim=1).numpy())
    return FaceBank(list(keys), np.concatenate(codes).astype(np.float32), np.concatenate(styles).astype(np.float32),
                    np.stack(maps).astype(np.float32), np.stack(areas).astype(np.float32),
                    list(net.decoder.style_channels))  # fmt: skip


# -- the index -----------------------------------------------------------------------------------
@dataclass
class Match:
    key: str
    score: float  # cosine similarity in [-1, 1]


@dataclass
class GalleryIndex:
    keys: list[str]
    channels: list[int]
    mean: np.ndarray  # (C_total,) gallery mean style
    q: dict[str, np.ndarray]  # feature -> (C_total,) channel weights
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> (N, C_total) unit rows
    tau: float = 0.1

    @classmethod
    def build(
        cls, bank: FaceBank, tau: float = 0.1, features: Iterable[str] = FEATURES, mapping: str = "density"
    ) -> GalleryIndex:
        """Index ``bank``: q per feature from its mean channel mappings, then every item's vectors."""
        q_all = softmax(bank.mapped(mapping).mean(axis=0).astype(np.float64), tau, axis=0)  # (K, C_total)
        feats = [canonical_feature(f) for f in features]
        q = {f: q_all[PARTITION.index(f)] for f in feats}
        idx = cls(list(bank.keys), list(bank.channels), bank.styles.astype(np.float64).mean(axis=0), q, tau=tau)
        idx.vectors = {f: idx.vector(bank.styles, f) for f in feats}
        return idx

    def vector(self, styles: np.ndarray, feature: str) -> np.ndarray:
        """(N, C_total) feature vectors of flattened styles, on this gallery's channels and mean."""
        f = canonical_feature(feature)
        if f not in self.q:
            raise ValueError(f"feature {feature!r} is not indexed (indexed: {sorted(self.q)})")
        s = np.atleast_2d(styles)
        if s.shape[1] != self.mean.shape[0]:
            raise ValueError(f"styles have {s.shape[1]} channels, the index {self.mean.shape[0]}")
        return feature_vectors(s, self.mean, self.q[f], layer_slices(self.channels))

    def nearest(self, query: np.ndarray, feature: str, k: int = 5, exclude: Iterable[str] = ()) -> list[Match]:
        """The ``k`` items most similar to a query vector (from ``vector``) on ``feature``."""
        f = canonical_feature(feature)
        v = np.asarray(query, np.float64).reshape(-1)
        sims = self.vectors[f] @ v
        skip = set(exclude)
        order = [i for i in np.argsort(-sims, kind="stable") if self.keys[i] not in skip]
        return [Match(self.keys[i], float(sims[i])) for i in order[:k]]

    def cluster(self, feature: str, k: int, seed: int = 0) -> KMeansResult:
        """k-means of the items' vectors for ``feature`` (unit rows: Euclidean ~ cosine)."""
        return kmeans(self.vectors[canonical_feature(feature)], k, seed)


# -- galleries -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    from stream.model_asset import cache_dir as rx_cache

    return rx_cache() / "latent"


@dataclass
class AlignedSet:
    keys: list[str]
    crops: np.ndarray  # (N, S, S, 3) uint8
    landmarks: np.ndarray  # (N, 478, 2) float32


def celeba_files(
    n: int, attribute: str | None = None, value: bool = True, seed: int = 0, root: Path | None = None
) -> list[str]:
    """A seeded sample of ``n`` CelebA file names (all if fewer), optionally only those with
    ``attribute == value`` (e.g. ``Eyeglasses``)."""
    from models.latent.photos import celeba_attribute, celeba_dir

    if attribute is None:
        files = sorted(p.name for p in celeba_dir(root).glob("*.jpg"))
    else:
        files = sorted(f for f, v in celeba_attribute(attribute, root).items() if v == value)
    if n < len(files):
        pick = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def align_celeba(files: Sequence[str], size: int, root: Path | None = None) -> AlignedSet:
    """Aligned crops and crop landmarks of CelebA files (photos without a detected face are left out),
    cached on disk by file list and size (independent of any weights)."""
    from models.latent.photos import NoFaceError, PhotoFaces, celeba_dir, read_rgb

    d = celeba_dir(root)
    key = hashlib.sha256(json.dumps([1, size, str(d), list(files)]).encode()).hexdigest()[:16]
    path = cache_dir() / f"celeba_aligned_{key}.npz"
    if path.is_file():
        z = np.load(path)
        return AlignedSet([str(k) for k in z["keys"]], z["crops"], z["landmarks"])
    keys, crops, lms = [], [], []
    with PhotoFaces() as faces:
        for f in files:
            try:
                a = faces.align(read_rgb(d / f), size)
            except NoFaceError:
                log.info("no face found in CelebA %s: left out", f)
                continue
            keys.append(f)
            crops.append(a.crop)
            lms.append(a.landmarks.astype(np.float32))
    if not keys:
        raise ValueError("no face found in any of the CelebA files")
    out = AlignedSet(keys, np.stack(crops), np.stack(lms))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, keys=np.array(keys), crops=out.crops, landmarks=out.landmarks)
    tmp.replace(path)
    return out


def catalogue_set(
    frame_rgb: np.ndarray, face: Face, size: int, frames: Sequence[str] | None = None, anchor: str = "eyes"
) -> AlignedSet:
    """Every catalogue frame (or ``frames``) rendered on ``face`` in ``frame_rgb``, aligned like a keyframe."""
    from models.align import align
    from models.glasses import load_catalogue
    from models.latent.job import render_structure
    from models.latent.masks import crop_landmarks

    names = list(frames) if frames else list(load_catalogue())
    _, m = align(frame_rgb, face, size)
    lm = crop_landmarks(face.landmarks_px, m).astype(np.float32)
    crops = [render_structure(frame_rgb, face, n, m, size, anchor).crop for n in names]
    return AlignedSet(names, np.stack(crops), np.repeat(lm[None], len(names), axis=0))


def bank_from_set(net: StyleAutoencoder, aligned: AlignedSet) -> FaceBank:
    return encode_faces(net, aligned.keys, list(aligned.crops), list(aligned.landmarks))


@dataclass
class Suggestion:
    frame: str
    score: float  # similarity-weighted votes of the look-alikes
    lookalikes: list[str]  # the gallery faces whose glasses voted for this frame


def suggest_frames(
    query: FaceBank,
    wearers: GalleryIndex,
    frames: FaceBank,
    k_faces: int = 8,
    face_features: Sequence[str] = ("nose", "mouth", "hair"),
) -> list[Suggestion]:
    """Frames that suit faces like the query's: its ``k_faces`` nearest glasses wearers by the features
    outside the glasses (mean of the per-feature cosines), then each wearer's glasses voting, weighted by
    that face similarity, for the most similar catalogue frame (rendered on the query's face).

    Both galleries use the wearers' glasses channels; each is centred on its own mean, so a vector says how
    an item's glasses differ from its gallery's average (the frames share one face, the wearers do not).
    """
    if len(query.keys) != 1:
        raise ValueError("query must hold exactly one face")
    if "glasses" not in wearers.vectors:
        raise ValueError("the wearers' index must include the glasses feature")
    sims = np.mean([wearers.vectors[canonical_feature(f)] @ wearers.vector(query.styles, f)[0]
                    for f in face_features], axis=0)  # fmt: skip
    order = np.argsort(-sims, kind="stable")[:k_faces]
    frame_idx = GalleryIndex(list(frames.keys), list(frames.channels), frames.styles.astype(np.float64).mean(axis=0),
                             {"glasses": wearers.q["glasses"]}, tau=wearers.tau)  # fmt: skip
    frame_idx.vectors = {"glasses": frame_idx.vector(frames.styles, "glasses")}
    votes: dict[str, Suggestion] = {}
    for i in order:
        best = frame_idx.nearest(wearers.vectors["glasses"][i], "glasses", 1)[0]
        s = votes.setdefault(best.key, Suggestion(best.key, 0.0, []))
        s.score += max(float(sims[i]), 0.0) * max(best.score, 0.0)
        s.lookalikes.append(wearers.keys[i])
    return sorted(votes.values(), key=lambda s: -s.score)
