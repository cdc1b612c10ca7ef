"""Degradations: determinism per seed, parameter ranges, and each stage's specified effect."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.degrade import (
    DegradeParams,
    DegradeRanges,
    add_gaussian_noise,
    codec_degrade,
    codec_roundtrip,
    degrade,
    downsampled_size,
    jittered_sequence,
    random_degrade,
    sample_params,
)


def face_like(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth image with edges and texture (stands in for a face crop when shared data is absent)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    img = base.astype(np.float32)
    cv2.circle(img, (w // 3, h // 3), max(2, w // 10), (255, 255, 255), -1)
    cv2.rectangle(img, (w // 4, 2 * h // 3), (3 * w // 4, 2 * h // 3 + 4), (20, 20, 20), -1)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def hf_energy(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).var())


def test_deterministic_per_seed() -> None:
    img = face_like()
    a, pa = random_degrade(img, seed=7)
    b, pb = random_degrade(img, seed=7)
    c, pc = random_degrade(img, seed=8)
    assert pa == pb and np.array_equal(a, b)
    assert pa != pc and not np.array_equal(a, c)
    assert a.shape == img.shape and a.dtype == np.uint8


def test_sampled_parameters_stay_in_the_specified_ranges() -> None:
    rng = np.random.default_rng(0)
    r = DegradeRanges()
    ps = [sample_params(rng, r) for _ in range(500)]
    for name, (lo, hi) in (
        ("sigma", r.sigma),
        ("scale", r.scale),
        ("noise", r.noise),
        ("jpeg_quality", r.jpeg_quality),
    ):
        v = np.array([getattr(p, name) for p in ps])
        assert v.min() >= lo and v.max() <= hi
        assert v.max() - v.min() > 0.8 * (hi - lo)  # the range is actually covered
    assert all(isinstance(p.jpeg_quality, int) for p in ps)


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.3, 8.0])
def test_downsampling_factor(scale: float) -> None:
    img = face_like(96, 80)
    p = DegradeParams(sigma=0.5, scale=scale, noise=0.0, jpeg_quality=100)
    x = degrade(img, p, np.random.default_rng(0), resize_back=False)
    assert (x.shape[1], x.shape[0]) == downsampled_size(80, 96, scale) == (round(80 / scale), round(96 / scale))
    assert degrade(img, p, np.random.default_rng(0)).shape == img.shape


def test_blur_removes_high_frequencies_monotonically() -> None:
    img = face_like()
    energies = [
        hf_energy(degrade(img, DegradeParams(s, 1.0, 0.0, 100), np.random.default_rng(0)))
        for s in (0.2, 1.0, 3.0, 10.0)
    ]
    assert energies == sorted(energies, reverse=True) and energies[-1] < 0.05 * energies[0]


def test_noise_std_matches_delta() -> None:
    img = np.full((128, 128, 3), 128, np.uint8)
    for delta in (5.0, 15.0):
        n = add_gaussian_noise(img, delta, np.random.default_rng(1)) - 128.0
        assert np.std(n) == pytest.approx(delta, rel=0.03) and abs(np.mean(n)) < 0.2
    # Through the whole chain (JPEG's 4:2:0 chroma subsampling averages some of it away) noise still grows with δ.
    stds = [
        np.std(degrade(img, DegradeParams(0.0, 1.0, d, 100), np.random.default_rng(1)).astype(float))
        for d in (0, 5, 15)
    ]
    assert stds[0] < 0.5 < stds[1] < stds[2]


def test_lower_jpeg_quality_loses_more() -> None:
    img = face_like(128, 128)
    errs = [
        np.abs(degrade(img, DegradeParams(0.0, 1.0, 0.0, q), np.random.default_rng(0)).astype(int) - img).mean()
        for q in (100, 80, 60)
    ]
    assert errs[0] < errs[1] < errs[2]


@pytest.mark.parametrize("codec", ["libvpx", "libx264"])
def test_codec_roundtrip_deterministic_and_lossy(codec: str) -> None:
    img = face_like(65, 63)  # odd sizes: padded for 4:2:0 then cropped back
    seq = jittered_sequence(img, 5, np.random.default_rng(0))
    assert len(seq) == 5 and np.array_equal(seq[0], img) and not np.array_equal(seq[1], img)
    low = codec_roundtrip(seq, codec, bitrate_kbps=50)  # type: ignore[arg-type]
    assert len(low) == 5 and low[0].shape == img.shape
    assert all(np.array_equal(a, b) for a, b in zip(low, codec_roundtrip(seq, codec, 50), strict=True))  # type: ignore[arg-type]
    high = codec_roundtrip(seq, codec, bitrate_kbps=3000)  # type: ignore[arg-type]
    err_low = np.abs(low[-1].astype(int) - seq[-1]).mean()
    err_high = np.abs(high[-1].astype(int) - seq[-1]).mean()
    assert err_high < err_low
    a = codec_degrade(img, seed=3, codec=codec)  # type: ignore[arg-type]
    assert np.array_equal(a, codec_degrade(img, seed=3, codec=codec))  # type: ignore[arg-type]
    assert a.shape == img.shape and np.abs(a.astype(int) - img).mean() < 40  # degraded, still the same picture


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        degrade(np.zeros((8, 8), np.uint8), DegradeParams(1.0, 2.0, 0.0, 90), np.random.default_rng(0))
    with pytest.raises(ValueError):
        DegradeParams(1.0, 0.5, 0.0, 90)
    with pytest.raises(ValueError):
        codec_roundtrip([], "libx264")
    with pytest.raises(ValueError):
        codec_roundtrip([face_like()], "mpeg2")  # type: ignore[arg-type]


def test_real_face_crop(shared_data: Path) -> None:
    files = sorted((shared_data / "faces" / "lq512").glob("*.png"))
    if not files:
        pytest.skip("no faces/lq512 crops in the shared data")
    img = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    x, p = random_degrade(img, seed=0)
    assert x.shape == img.shape and p.scale >= 1
    assert hf_energy(x) != hf_energy(img)
