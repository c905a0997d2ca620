"""MDN-RNN: an LSTM over (z_t, a_t) with a mixture-of-Gaussians head for z_{t+1},
plus reward and done heads.

Component means are absolute, mu_k = f_k(h_{t+1}), as in the paper (`residual=False`, the
default), or residual, mu_k = z_t + Δ_k(h_{t+1}) (`residual=True`). Residual means fit one step
better (zero Δ weights give exactly the persistence model) but have no pull back to the data:
dreamed open-loop, their errors add up like a random walk. Measured on a model trained on 240
rollouts, mean |z| grew from 0.5 to 6.8 in 150 dreamed steps at τ = 0 (real latents: 0.25), a
third of the dims hit the ±10 clip, and the done head fired within ~200 steps whatever the action.

With `sample_flag=True` the cell also reads s_t: 1 when z_t is a sample (the dream feeds back its
own, and training draws z ~ N(mu, σ²)), 0 when z_t is an encoder mean (a real frame's). One model
then serves both: trained on sampled inputs, the dream responds to actions as the real game does,
but from clean means a sample-trained model predicts z_{t+1} worse than persistence (it treats an
exact mean as noisy); with the flag it learns both regimes (see train/mdnrnn_loss.window_loss).

`MDNRNN.step` is one application of the cell; `MDNRNN.__call__` unrolls *that same cell*
(same submodule, same parameters) over time with `nn.scan`. The environments call `step`.
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
    """(h_{t+1}, z_t) -> dict(log_pi [..,K], mu [..,K,D], log_sigma [..,K,D], reward [..], done_logit [..]).

    One Dense layer `out` [H, K + 2·K·D + 2] computes every output (columns: `head_layout`).
    """

    latent_dim: int
    num_mixtures: int
    sigma_min: float
    residual: bool

    @nn.compact
    def __call__(self, h, z):
        k, d = self.num_mixtures, self.latent_dim
        cols = head_layout(k, d)
        out = nn.Dense(cols["done"].stop, bias_init=self._bias_init, name="out")(h)
        means = out[..., cols["mu"]].reshape(*h.shape[:-1], k, d)
        # σ = σ_min + softplus(raw): smooth, never below the floor (no overconfidence).
        sigma = self.sigma_min + jax.nn.softplus(out[..., cols["sigma"]])
        return dict(
            log_pi=jax.nn.log_softmax(out[..., cols["pi"]], axis=-1),
            mu=z[..., None, :] + means if self.residual else means,
            log_sigma=jnp.maximum(jnp.log(sigma), LOG_SIGMA_MIN).reshape(*h.shape[:-1], k, d),
            reward=out[..., cols["reward"].start],
            done_logit=out[..., cols["done"].start],
        )

    def _bias_init(self, key, shape, dtype=jnp.float32):
        """Zeros, but the K means start apart (bias ~ N(0, 0.1²), ≈ a step's motion) against mode collapse."""
        cols = head_layout(self.num_mixtures, self.latent_dim)
        mu = 0.1 * jax.random.normal(key, (cols["mu"].stop - cols["mu"].start,), dtype)
        return jnp.zeros(shape, dtype).at[cols["mu"]].set(mu)


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


def lstm_kernel_init(n_in: int, hidden: int):
    """flax LSTMCell's init for the fused kernel: lecun-normal input rows, an orthogonal [H, H] per gate."""

    def init(key, shape, dtype=jnp.float32):
        k_in, k_rec = jax.random.split(key)
        w_in = nn.initializers.lecun_normal()(k_in, (n_in, 4 * hidden), dtype)
        orth = nn.initializers.orthogonal()
        w_rec = jnp.concatenate([orth(k, (hidden, hidden), dtype) for k in jax.random.split(k_rec, 4)], axis=1)
        return jnp.concatenate([w_in, w_rec], axis=0)

    return init


class MDNCell(nn.Module):
    """One time step: (carry, [z_t, a_t(, s_t)]) -> (carry', (h_t, head outputs))."""

    latent_dim: int
    hidden_size: int
    num_mixtures: int
    sigma_min: float
    residual: bool

    @nn.compact
    def __call__(self, carry, x):
        # x: [B, D + A (+ 1)]; carry: (c, h) each [B, H]
        carry, h = LSTMCell(self.hidden_size, name="lstm")(carry, x)
        z = x[..., : self.latent_dim]
        out = MDNHead(self.latent_dim, self.num_mixtures, self.sigma_min, self.residual, name="head")(h, z)
        return carry, dict(h=h, **out)


class MDNRNN(nn.Module):
    """The memory model M. Config fields are saved in bundles and rebuild the module."""

    latent_dim: int = 32
    action_dim: int = 3
    hidden_size: int = 256
    num_mixtures: int = 5
    sigma_min: float = 0.01
    residual: bool = False
    sample_flag: bool = False  # the cell also reads s_t (1: z_t is a sample, 0: an encoder mean)

    def setup(self):
        self.cell = MDNCell(self.latent_dim, self.hidden_size, self.num_mixtures, self.sigma_min, self.residual)

    def initial_carry(self, batch: int) -> Carry:
        """Zero LSTM state: (c, h), each [batch, hidden_size]."""
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return (zeros, zeros)

    def inputs(self, z, action, sampled):
        """The cell's input [..., D + A (+ 1)]; `sampled` (a scalar or [...]) is read only with sample_flag."""
        if not self.sample_flag:
            return jnp.concatenate([z, action], axis=-1)
        flag = jnp.broadcast_to(jnp.asarray(sampled, z.dtype), z.shape[:-1])[..., None]
        return jnp.concatenate([z, action, flag], axis=-1)

    def step(self, carry: Carry, z, action, sampled=0.0):
        """One step. z: [B, D], action: [B, A], sampled: scalar or [B] -> (carry', outputs with leading [B])."""
        return self.cell(carry, self.inputs(z, action, sampled))

    def __call__(self, carry: Carry, z, action, sampled=0.0):
        """Unroll over time. z: [B, T, D], action: [B, T, A], sampled: scalar, [B, 1] or [B, T]
        -> (carry', outputs [B, T, ...])."""
        scan = nn.scan(
            lambda cell, c, x: cell(c, x),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        return scan(self.cell, carry, self.inputs(z, action, sampled))
