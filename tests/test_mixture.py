"""Mixture math against an independent numpy/scipy computation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp as np_logsumexp
from scipy.stats import norm

from dreamenv.mixture import mdn_log_prob, mdn_mean, mdn_nll, mdn_sample


def random_mixture(seed, batch=(6, 4), k=5, d=32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*batch, k))
    log_pi = logits - np_logsumexp(logits, axis=-1, keepdims=True)
    mu = rng.normal(size=(*batch, k, d))
    log_sigma = rng.uniform(-2.0, 0.5, size=(*batch, k, d))
    target = rng.normal(size=(*batch, d))
    return [np.asarray(x, np.float32) for x in (log_pi, mu, log_sigma, target)]


def scipy_nll(log_pi, mu, log_sigma, target):
    comp = norm.logpdf(target[..., None, :], mu, np.exp(log_sigma)).sum(-1)  # [..., K]
    return -np.mean(np_logsumexp(log_pi.astype(np.float64) + comp, axis=-1))


@pytest.mark.parametrize("seed", range(3))
def test_nll_matches_scipy(seed):
    args = random_mixture(seed)
    np.testing.assert_allclose(float(mdn_nll(*args)), scipy_nll(*args), rtol=1e-5, atol=1e-5)


def test_nll_mask_averages_only_masked_steps():
    log_pi, mu, log_sigma, target = random_mixture(7)
    mask = np.zeros(log_pi.shape[:-1], bool)
    mask[:2] = True
    expected = scipy_nll(log_pi[:2], mu[:2], log_sigma[:2], target[:2])
    got = float(mdn_nll(log_pi, mu, log_sigma, target, mask=mask))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_nll_and_grads_finite_on_extreme_inputs():
    log_pi, mu, log_sigma, target = random_mixture(1)
    cases = {
        "tiny sigma": (log_pi, mu, np.full_like(log_sigma, -80.0), target),
        "huge residual": (log_pi, mu, log_sigma, target + 1e20),
        "huge sigma": (log_pi, mu, np.full_like(log_sigma, 40.0), target),
        "near-zero weight": (np.where(np.arange(5) == 0, 0.0, -1e30).astype(np.float32), mu, log_sigma, target),
    }
    grad = jax.grad(lambda *a: mdn_nll(*a), argnums=(0, 1, 2))
    for name, args in cases.items():
        assert np.isfinite(float(mdn_nll(*args))), name
        for g in grad(*map(jnp.asarray, args)):
            assert np.all(np.isfinite(np.asarray(g))), name


def analytic_moments(log_pi, mu, log_sigma):
    pi = np.exp(log_pi)[..., None]
    mean = (pi * mu).sum(-2)
    second = (pi * (np.exp(2 * log_sigma) + mu**2)).sum(-2)
    return mean, second - mean**2


def test_sample_moments_match_mixture():
    log_pi, mu, log_sigma, _ = random_mixture(3, batch=(), d=4)
    n = 200_000
    keys = jax.random.split(jax.random.key(0), n)
    samples = np.asarray(jax.vmap(lambda k: mdn_sample(k, log_pi, mu, log_sigma))(keys))
    mean, var = analytic_moments(log_pi, mu, log_sigma)
    se = np.sqrt(var / n)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * se + 1e-4)
    np.testing.assert_allclose(samples.var(0), var, rtol=0.03)
    np.testing.assert_allclose(np.asarray(mdn_mean(log_pi, mu)), mean, rtol=1e-5, atol=1e-6)


def test_temperature_zero_collapses_to_most_likely_mean():
    log_pi, mu, log_sigma, _ = random_mixture(4)
    best = np.take_along_axis(mu, np.argmax(log_pi, -1)[..., None, None], axis=-2)[..., 0, :]
    for t in (0.0, 1e-6):
        got = np.asarray(mdn_sample(jax.random.key(1), log_pi, mu, log_sigma, temperature=t))
        np.testing.assert_allclose(got, best, atol=1e-2 if t else 0.0)


def test_higher_temperature_widens():
    log_pi, mu, log_sigma, _ = random_mixture(5, batch=(), d=4)
    keys = jax.random.split(jax.random.key(2), 50_000)
    spread = {
        t: np.asarray(jax.vmap(lambda k: mdn_sample(k, log_pi, mu, log_sigma, t))(keys)).var(0).sum()
        for t in (0.5, 1.0, 1.5)
    }
    assert spread[0.5] < spread[1.0] < spread[1.5]


def test_jitted_functions_trace_once():
    log_pi, mu, log_sigma, target = random_mixture(6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def both(key, log_pi, mu, log_sigma, target, temperature):
        return mdn_nll(log_pi, mu, log_sigma, target), mdn_sample(key, log_pi, mu, log_sigma, temperature)

    for i in range(5):
        both(jax.random.key(i), log_pi, mu + i, log_sigma, target, 1.0 + 0.1 * i)
