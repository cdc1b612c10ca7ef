"""One-Euro filter against its definition: with beta = 0 it is an exponential smoother, so the
step response, noise reduction and ramp lag have closed forms."""

from __future__ import annotations

import math

import numpy as np

from stream.one_euro import OneEuroConfig, OneEuroFilter, smoothing_factor

RATE = 100.0  # Hz
DT = 1.0 / RATE


def run(cfg: OneEuroConfig, xs, scale: float = 1.0) -> np.ndarray:
    f = OneEuroFilter(cfg)
    return np.array([f(np.asarray(x), i * DT, scale=scale) for i, x in enumerate(xs)])


def test_smoothing_factor_closed_form():
    # tau = 1 / (2 pi fc); alpha = 1 / (1 + tau / dt): fc = 1/(2 pi) Hz and dt = 1 s give tau = 1, alpha = 1/2.
    assert math.isclose(float(smoothing_factor(1.0, 1.0 / (2.0 * math.pi))), 0.5)
    a = smoothing_factor(DT, np.array([0.5, 1.0, 10.0]))
    assert np.all(np.diff(a) > 0) and np.all((a > 0) & (a < 1))  # higher cutoff, less smoothing


def test_constant_input_gives_constant_output():
    out = run(OneEuroConfig(min_cutoff=1.0, beta=0.5), [np.array([3.5, -2.0])] * 200)
    assert out.shape == (200, 2) and np.allclose(out, [3.5, -2.0], rtol=0, atol=1e-12)


def test_step_matches_exponential_smoother_and_converges():
    cfg = OneEuroConfig(min_cutoff=2.0, beta=0.0)
    xs = [0.0] * 10 + [1.0] * 300
    out = run(cfg, xs)
    a = float(smoothing_factor(DT, cfg.min_cutoff))
    n = np.arange(1, 301)
    assert np.allclose(out[10:], 1.0 - (1.0 - a) ** n, atol=1e-12)  # y_n = 1 - (1 - a)^n
    assert np.all(np.diff(out) >= 0) and out.max() <= 1.0  # no overshoot
    assert abs(out[-1] - 1.0) < 1e-6


def test_step_converges_with_beta():
    out = run(OneEuroConfig(min_cutoff=1.0, beta=1.0), [0.0] * 10 + [5.0] * 400)
    assert abs(out[-1] - 5.0) < 1e-3 and out.max() <= 5.0 + 1e-9


def test_noise_reduction_matches_exponential_smoother_variance():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4000, 8))
    cfg = OneEuroConfig(min_cutoff=1.0, beta=0.0)
    out = run(cfg, noise)[500:]  # past the start-up transient
    a = float(smoothing_factor(DT, cfg.min_cutoff))
    expected = math.sqrt(a / (2.0 - a))  # std of an EMA of unit white noise
    assert abs(out.std() / expected - 1.0) < 0.15
    # With beta > 0 noise raises the cutoff a little, but the filter still removes most jitter.
    out_b = run(OneEuroConfig(min_cutoff=1.0, beta=0.05), noise)[500:]
    assert out_b.std() < 0.5


def test_higher_beta_lags_less_on_a_ramp():
    speed = 10.0  # units per second
    xs = speed * DT * np.arange(600)
    lags = {}
    for beta in (0.0, 0.05, 0.5):
        out = run(OneEuroConfig(min_cutoff=1.0, beta=beta), xs)
        lags[beta] = float(xs[-1] - out[-1])
    a = float(smoothing_factor(DT, 1.0))
    assert math.isclose(lags[0.0], speed * DT * (1.0 - a) / a, rel_tol=1e-3)  # steady-state EMA lag
    assert lags[0.0] > lags[0.05] > lags[0.5] > 0


def test_scale_makes_beta_unit_free():
    rng = np.random.default_rng(2)
    xs = np.cumsum(rng.standard_normal(300))
    cfg = OneEuroConfig(min_cutoff=1.0, beta=0.3)
    assert np.allclose(run(cfg, 40.0 * xs, scale=40.0), 40.0 * run(cfg, xs, scale=1.0), rtol=1e-9, atol=1e-9)


def test_non_increasing_time_restarts_and_reset():
    f = OneEuroFilter(OneEuroConfig())
    f(np.array([0.0]), 0.0)
    f(np.array([1.0]), 0.01)
    assert f(np.array([7.0]), 0.01)[0] == 7.0  # same timestamp: no dt, restart from the sample
    f.reset()
    assert f(np.array([-3.0]), 5.0)[0] == -3.0
