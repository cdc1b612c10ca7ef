"""Face-crop datasets for training and evaluation, and the deterministic held-out split.

Sources (read in place from ``<repo>/../shared/data``, never copied into the repo):

* CelebA jpgs (89x109): centre-cropped to a square and resized. There is no identity file here, so the
  held-out split is by a hash of the **file name** (``holdout_by_hash``): deterministic and disjoint, but
  two photos of one person can land on both sides (identity leakage is possible and not measured).
* Talking-head clips: tracked once with ``FaceTracker`` and aligned with ``models.align``; crops, full
  frames and the tracked ``Face`` objects are cached under ``~/.cache/rxstream/crops/<hash>/`` with a
  manifest. Clips are held out **whole** (``DataConfig.holdout_clips``): frames of one clip are near
  duplicates, so a per-frame split would leak.

Batches are drawn by ``StepBatchSampler``: batch ``k`` and every sample's augmentation seed are pure
functions of (seed, k), so resuming at step k replays exactly what an uninterrupted run would have seen,
with any number of DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from models.training.config import DataConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_VERSION = 1  # bump when the cache layout or the cropping changes


class DataError(RuntimeError):
    pass


# -- locations -----------------------------------------------------------------------------------
def data_root(cfg: DataConfig | None = None) -> Path:
    root = Path(cfg.data_root) if cfg is not None and cfg.data_root else REPO_ROOT / ".." / "shared" / "data"
    if not root.is_dir():
        raise DataError(f"training data not found at {root.resolve()}: expected ../shared/data next to the repo "
                        "(or set data.data_root in the config)")  # fmt: skip
    return root.resolve()


def cache_root(cfg: DataConfig | None = None) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg is not None and cfg.cache_dir else (
        Path.home() / ".cache" / "rxstream" / "crops")  # fmt: skip


# -- split ---------------------------------------------------------------------------------------
def unit_hash(name: str) -> float:
    """A stable float in [0, 1) from a name (sha256: identical on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64


def holdout_by_hash(name: str, fraction: float) -> bool:
    return unit_hash(name) < fraction


@dataclass(frozen=True)
class CropItem:
    key: str  # unique, e.g. "celeba/000001" or "liveportrait_d0/0042"
    group: str  # what the split is by: the file (CelebA) or the clip
    path: Path
    kind: str  # "celeba" (needs a centre square crop) or "aligned" (already an aligned square crop)


def split_items(items: list[CropItem], cfg: DataConfig) -> tuple[list[CropItem], list[CropItem]]:
    """(train, held-out): CelebA by name hash, clips by the configured clip list."""
    train, held = [], []
    for it in items:
        by_hash = it.kind == "celeba"
        out = holdout_by_hash(it.group, cfg.holdout_fraction) if by_hash else it.group in cfg.holdout_clips
        (held if out else train).append(it)
    return train, held


# -- CelebA --------------------------------------------------------------------------------------
def celeba_items(root: Path) -> list[CropItem]:
    d = root / "faces" / "celeba"
    if not d.is_dir():
        raise DataError(f"CelebA folder not found: {d}")
    return [CropItem(f"celeba/{p.stem}", p.stem, p, "celeba") for p in sorted(d.glob("*.jpg"))]


def centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return image[y0:y0 + s, x0:x0 + s]


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise DataError(f"cannot write {path}")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


# -- clip crop cache -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRecord:
    """One tracked frame of a clip: its aligned crop, the full frame and the tracked face."""

    key: str
    clip: str
    crop_path: Path
    frame_path: Path
    face_index: int  # into the clip's faces.pkl


def clip_cache_dir(video: Path, cfg: DataConfig) -> Path:
    st = video.stat()
    ident = json.dumps([CACHE_VERSION, video.name, st.st_size, cfg.crop_size, cfg.frames_per_clip])
    return cache_root(cfg) / hashlib.sha256(ident.encode()).hexdigest()[:16]


def evenly_spaced(n_total: int, n_keep: int) -> list[int]:
    if n_keep <= 0 or n_total <= 0:
        return []
    if n_keep >= n_total:
        return list(range(n_total))
    return sorted({int(np.rint(i)) for i in np.linspace(0, n_total - 1, n_keep)})


def build_clip_cache(video: Path, cfg: DataConfig) -> Path:
    """Track every frame (the tracker's smoothing needs the sequence), keep ``frames_per_clip`` evenly
    spaced ones with a face, write crops/frames/faces and then the manifest (its presence marks the cache
    complete, so an interrupted build is redone)."""
    import av

    from models.align import align
    from stream.config import TrackerConfig
    from stream.tracking import FaceTracker

    out = clip_cache_dir(video, cfg)
    manifest = out / "manifest.json"
    if manifest.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    clip = video.stem
    with av.open(str(video)) as c:
        n_total = c.streams.video[0].frames
    keep = set(evenly_spaced(n_total, cfg.frames_per_clip)) if n_total > 0 else None
    log.info("tracking %s (%d frames) into %s", video.name, n_total, out)
    faces: list[Any] = []
    entries: list[dict[str, Any]] = []
    # mediapipe's graph on every frame, as when the shipped weights were trained: same crops, same weights.
    tracker_cfg = TrackerConfig(direct_landmarks=False)
    with av.open(str(video)) as c, FaceTracker(tracker_cfg) as tracker:
        stream = c.streams.video[0]
        for i, frame in enumerate(c.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")
            t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 25)
            tracked = tracker.track(rgb, t)
            if (keep is not None and i not in keep) or not tracked:
                continue
            face = max(tracked, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            crop, m = align(rgb, face, cfg.crop_size)
            name = f"{clip}_{i:05d}"
            write_rgb(out / f"{name}_crop.png", crop)
            write_rgb(out / f"{name}_frame.png", rgb)
            entries.append({"key": f"{clip}/{i:05d}", "clip": clip, "frame": i, "crop": f"{name}_crop.png",
                            "full": f"{name}_frame.png", "face_index": len(faces), "matrix": m.tolist()})
            faces.append(face)
    if not entries:
        raise DataError(f"no face tracked in {video}")
    with open(out / "faces.pkl", "wb") as f:
        pickle.dump(faces, f)
    manifest.write_text(json.dumps({"version": CACHE_VERSION, "video": str(video), "crop_size": cfg.crop_size,
                                    "frames": entries}, indent=1))
    return out


def clip_records(video: Path, cfg: DataConfig) -> list[FrameRecord]:
    d = build_clip_cache(video, cfg)
    man = json.loads((d / "manifest.json").read_text())
    return [FrameRecord(e["key"], e["clip"], d / e["crop"], d / e["full"], int(e["face_index"]))
            for e in man["frames"]]  # fmt: skip


def load_faces(record: FrameRecord) -> list[Any]:
    with open(record.crop_path.parent / "faces.pkl", "rb") as f:
        return pickle.load(f)


def clip_videos(root: Path) -> list[Path]:
    d = root / "video"
    if not d.is_dir():
        raise DataError(f"video folder not found: {d}")
    return sorted(d.glob("*.mp4"))


def all_items(cfg: DataConfig) -> list[CropItem]:
    root = data_root(cfg)
    items: list[CropItem] = []
    if cfg.celeba:
        items += celeba_items(root)
    if cfg.clips:
        for v in clip_videos(root):
            items += [CropItem(r.key, r.clip, r.crop_path, "aligned") for r in clip_records(v, cfg)]
    if not items:
        raise DataError("no training images: enable data.celeba and/or data.clips")
    return items


def split(cfg: DataConfig, which: str, seed: int = 0) -> list[CropItem]:
    """``which`` = "train" | "heldout"; ``max_items`` keeps a seeded random subset (quick runs)."""
    if which not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {which!r}")
    train, held = split_items(all_items(cfg), cfg)
    items = train if which == "train" else held
    if cfg.max_items and len(items) > cfg.max_items:
        order = np.random.default_rng(seed).permutation(len(items))[: cfg.max_items]
        items = [items[i] for i in sorted(order)]
    return items


# -- dataset -------------------------------------------------------------------------------------
def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 HxWx3 -> float32 3xHxW in [-1, 1] (the networks' convention)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """3xHxW in [-1, 1] -> RGB uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def colour_jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Small brightness/contrast/saturation change, each factor in [1 - amount, 1 + amount]."""
    if amount <= 0:
        return image
    b, c, s = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_item(item: CropItem, size: int) -> np.ndarray:
    img = read_rgb(item.path)
    if item.kind == "celeba":
        img = centre_square(img)
    return resize_square(img, size)


SampleFn = Callable[[np.ndarray, np.random.Generator], dict[str, torch.Tensor]]


def image_sample(image: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {"image": to_tensor(image)}


class FaceCrops(Dataset):
    """Indexed by ``(item index, sample seed)``: the seed drives augmentation and ``sample_fn`` (e.g. the
    restorer's degradation), so a sample is reproducible from its index and seed alone."""

    def __init__(self, items: list[CropItem], size: int, sample_fn: SampleFn = image_sample,
                 flip: bool = True, jitter: float = 0.0, images: list[np.ndarray] | None = None) -> None:
        if not items and not images:
            raise DataError("empty dataset")
        self.items, self.size, self.sample_fn = items, size, sample_fn
        self.flip, self.jitter = flip, jitter
        self.images = images  # in-memory images instead of files (tests, tiny runs)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.items)

    def load(self, index: int) -> np.ndarray:
        if self.images is not None:
            return resize_square(self.images[index], self.size)
        return load_item(self.items[index], self.size)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        img = self.load(index)
        if self.flip and rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        img = colour_jitter(img, self.jitter, rng)
        return self.sample_fn(img, rng)


def sample_seed(seed: int, step: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0])


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of ``(index, sample seed)``; epoch e is a permutation seeded by (seed, e).

    Batch k holds positions [kB, (k+1)B) of the concatenated epochs, so starting at ``start_step``
    reproduces exactly the batches an uninterrupted run draws from that step on.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0) -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError("need a non-empty dataset and batch_size > 0")
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        out = []
        for slot in range(self.batch_size):
            pos = step * self.batch_size + slot
            out.append((int(self._perm(pos // self.n)[pos % self.n]), sample_seed(self.seed, step, slot)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def make_loader(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0,
                num_workers: int = 0) -> DataLoader:
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step)  # type: ignore[arg-type]
    # Its own generator: creating a DataLoader iterator draws a base seed, and drawing it from the global
    # torch RNG would shift every later random number on resume (the iterator is created at a new step).
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, generator=gen,
                      persistent_workers=num_workers > 0)  # fmt: skip
