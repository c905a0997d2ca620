"""The memory model M of World Models: an LSTM over (z_t, a_t) with a mixture-of-Gaussians head
for z_{t+1}, and reward and done heads.

Contract:
    model = MDNRNN(latent_dim=32, action_dim=3, hidden_size=256, num_mixtures=5, sigma_min=0.01)
    carry = model.initial_carry(B)                               # (c, h), each [B, H], zeros
    carry, out = model.apply(params, carry, z, a, method=MDNRNN.step)   # z [B, D], a [B, A]
    carry, out = model.apply(params, carry, z, a)                # z [B, T, D], a [B, T, A]: nn.scan

`out` (leading [B] or [B, T]):
    h          [.., H]     the LSTM output h_{t+1} after consuming (z_t, a_t)
    log_pi     [.., K]     log mixture weights (log_softmax)
    mu         [.., K, D]  component means, mu_k = f_k(h_{t+1}) as in the paper
    log_sigma  [.., K, D]  log σ, σ = sigma_min + softplus(raw) (never below the floor)
    reward     [..]        the expected reward r_t of (z_t, a_t)
    done_logit [..]        logit of P(the episode ends at step t)

`step` is one application of the cell; `__call__` unrolls that same cell (same submodule, same
params) over time with `nn.scan`, so stepping equals the scan. The environments call `step`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamenv.mixture import LOG_SIGMA_MIN

Carry = tuple  # (c [B, H], h [B, H]) as flax's LSTMCell keeps it


def head_layout(num_mixtures: int, latent_dim: int) -> dict:
    """Column slices of the head's single output layer: pi [K], mu [K·D], sigma [K·D], reward, done."""
    k, kd = num_mixtures, num_mixtures * latent_dim
    return dict(pi=slice(0, k), mu=slice(k, k + kd), sigma=slice(k + kd, k + 2 * kd),
                reward=slice(k + 2 * kd, k + 2 * kd + 1), done=slice(k + 2 * kd + 1, k + 2 * kd + 2))


class MDNHead(nn.Module):
    """h_{t+1} [B, H] -> dict(log_pi [B, K], mu [B, K, D], log_sigma [B, K, D], reward [B], done_logit [B]).

    One Dense layer `out` [H, K + 2·K·D + 2] computes every output (columns: `head_layout`).
    """

    latent_dim: int
    num_mixtures: int
    sigma_min: float

    @nn.compact
    def __call__(self, h):
        k, d = self.num_mixtures, self.latent_dim
        cols = head_layout(k, d)
        out = nn.Dense(cols["done"].stop, bias_init=self._bias_init, name="out")(h)
        sigma = self.sigma_min + jax.nn.softplus(out[..., cols["sigma"]])
        return dict(
            log_pi=jax.nn.log_softmax(out[..., cols["pi"]], axis=-1),
            mu=out[..., cols["mu"]].reshape(*h.shape[:-1], k, d),
            log_sigma=jnp.maximum(jnp.log(sigma), LOG_SIGMA_MIN).reshape(*h.shape[:-1], k, d),
            reward=out[..., cols["reward"].start],
            done_logit=out[..., cols["done"].start],
        )

    def _bias_init(self, key, shape, dtype=jnp.float32):
        """Zeros, but the K means start apart (bias ~ N(0, 0.1²), ≈ a step's motion) against mode collapse."""
        mu = head_layout(self.num_mixtures, self.latent_dim)["mu"]
        return jnp.zeros(shape, dtype).at[mu].set(0.1 * jax.random.normal(key, (mu.stop - mu.start,), dtype))


def lstm_kernel_init(n_in: int, hidden: int):
    """flax LSTMCell's init for the fused kernel: lecun-normal input rows, an orthogonal [H, H] per gate."""

    def init(key, shape, dtype=jnp.float32):
        k_in, k_rec = jax.random.split(key)
        w_in = nn.initializers.lecun_normal()(k_in, (n_in, 4 * hidden), dtype)
        orth = nn.initializers.orthogonal()
        w_rec = jnp.concatenate([orth(k, (hidden, hidden), dtype) for k in jax.random.split(k_rec, 4)], axis=1)
        return jnp.concatenate([w_in, w_rec], axis=0)

    return init


class LSTMCell(nn.Module):
    """flax's `nn.LSTMCell` (same gates, same initialisation) with its eight matrices stored as one:
    `kernel` [n_in + H, 4H] applied to [x, h] and `bias` [4H], gates in the order i, f, g, o.

    One matmul per step instead of eight: at batch 1 (a single env) the step's cost is dispatch, so
    fewer, larger ops are what make it fast.
    """

    hidden_size: int

    @nn.compact
    def __call__(self, carry, x):
        # carry: (c, h) each [B, H]; x: [B, n_in]
        c, h = carry
        n_in, hid = x.shape[-1], self.hidden_size
        kernel = self.param("kernel", lstm_kernel_init(n_in, hid), (n_in + hid, 4 * hid))
        bias = self.param("bias", nn.initializers.zeros, (4 * hid,))
        gates = jnp.concatenate([x, h], axis=-1) @ kernel + bias  # [B, 4H]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


class MDNCell(nn.Module):
    """One time step: (carry, [z_t, a_t] [B, D + A]) -> (carry', dict(h, head outputs))."""

    latent_dim: int
    hidden_size: int
    num_mixtures: int
    sigma_min: float

    @nn.compact
    def __call__(self, carry, x):
        carry, h = LSTMCell(self.hidden_size, name="lstm")(carry, x)
        out = MDNHead(self.latent_dim, self.num_mixtures, self.sigma_min, name="head")(h)
        return carry, dict(h=h, **out)


class MDNRNN(nn.Module):
    """The memory model M. Its fields are saved in bundles and rebuild the module."""

    latent_dim: int = 32
    action_dim: int = 3
    hidden_size: int = 256
    num_mixtures: int = 5
    sigma_min: float = 0.01

    def setup(self):
        self.cell = MDNCell(self.latent_dim, self.hidden_size, self.num_mixtures, self.sigma_min)

    def initial_carry(self, batch: int) -> Carry:
        """Zero LSTM state: (c, h), each [batch, hidden_size]."""
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return (zeros, zeros)

    def step(self, carry: Carry, z, action):
        """One step. z: [B, D], action: [B, A] -> (carry', outputs with leading [B])."""
        return self.cell(carry, jnp.concatenate([z, action], axis=-1))

    def __call__(self, carry: Carry, z, action):
        """Unroll over time. z: [B, T, D], action: [B, T, A] -> (carry', outputs with leading [B, T])."""
        scan = nn.scan(
            lambda cell, c, x: cell(c, x),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        return scan(self.cell, carry, jnp.concatenate([z, action], axis=-1))
