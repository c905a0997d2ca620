"""Mixture-of-diagonal-Gaussians math for the MDN-RNN head, in log space and jit-friendly.

Shapes: a leading batch shape [...], K components, D latent dims.
    log_pi    [..., K]      log mixture weights (log_softmax of logits)
    mu        [..., K, D]   component means
    log_sigma [..., K, D]   component log standard deviations
    target    [..., D]
Temperature τ follows the paper: π logits ÷ τ, σ × √τ; τ = 0 gives the most likely
component's mean. The dream runs `mdn_sample`; `mdn_log_prob`, `mdn_nll` and `mdn_mean` are
training and evaluation helpers (the MDN-RNN's loss and held-out metrics, the benchmarks).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_SIGMA_MIN = -9.0  # σ ≥ 1.2e-4: keeps 1/σ finite in float32 whatever the head emits
_MAX_STD_RESIDUAL = 1e6  # |target − μ| / σ is clipped here so its square stays finite
_LOG_2PI = math.log(2.0 * math.pi)


def mdn_log_prob(log_pi, mu, log_sigma, target):
    """log p(target) under the mixture.  -> [...]"""
    log_sigma = jnp.maximum(log_sigma, LOG_SIGMA_MIN)
    resid = (target[..., None, :] - mu) * jnp.exp(-log_sigma)  # [..., K, D]
    resid = jnp.clip(resid, -_MAX_STD_RESIDUAL, _MAX_STD_RESIDUAL)
    comp = -0.5 * jnp.sum(resid**2 + 2.0 * log_sigma + _LOG_2PI, axis=-1)  # [..., K]
    return jax.nn.logsumexp(log_pi + comp, axis=-1)


def mdn_nll(log_pi, mu, log_sigma, target, mask=None):
    """Mean negative log-likelihood of target; mask [...] (optional) weights the mean."""
    nll = -mdn_log_prob(log_pi, mu, log_sigma, target)
    if mask is None:
        return jnp.mean(nll)
    mask = mask.astype(nll.dtype)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mdn_mean(log_pi, mu):
    """The mixture's mean Σ_k π_k μ_k, the deterministic prediction.  -> [..., D]"""
    return jnp.sum(jnp.exp(log_pi)[..., None] * mu, axis=-2)


def mdn_sample(key, log_pi, mu, log_sigma, temperature=1.0):
    """One sample per batch element at temperature τ.  -> [..., D]

    One uniform draw per element feeds both choices (the component by Gumbel-max, the noise by the
    inverse normal CDF): on CPU a single random-bits call is several times faster than two.
    """
    temperature = jnp.asarray(temperature, mu.dtype)
    k = log_pi.shape[-1]
    u = jax.random.uniform(key, (*log_pi.shape[:-1], k + mu.shape[-1]), mu.dtype,
                           minval=jnp.finfo(mu.dtype).tiny)  # in (0, 1)
    gumbel = -jnp.log(-jnp.log(u[..., :k]))  # [..., K]
    sampled = jnp.argmax(log_pi / jnp.maximum(temperature, 1e-6) + gumbel, axis=-1)  # [...]
    comp = jnp.where(temperature > 0, sampled, jnp.argmax(log_pi, axis=-1))
    pick = lambda x: jnp.take_along_axis(x, comp[..., None, None], axis=-2)[..., 0, :]
    sigma = jnp.exp(jnp.maximum(pick(log_sigma), LOG_SIGMA_MIN))
    noise = jax.scipy.special.ndtri(u[..., k:])  # [..., D] standard normal
    return pick(mu) + sigma * jnp.sqrt(temperature) * noise
