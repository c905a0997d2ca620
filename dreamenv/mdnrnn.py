"""MDN-RNN: an LSTM over (z_t, a_t) with a mixture-of-Gaussians head for z_{t+1},
plus reward and done heads.

Component means are absolute, mu_k = f_k(h_{t+1}), as in the paper (`residual=False`, the
default), or residual, mu_k = z_t + Δ_k(h_{t+1}) (`residual=True`). Residual means fit one step
better (zero Δ weights give exactly the persistence model) but have no pull back to the data:
dreamed open-loop, their errors add up like a random walk. Measured on a model trained on 240
rollouts, mean |z| grew from 0.5 to 6.8 in 150 dreamed steps at τ = 0 (real latents: 0.25), a
third of the dims hit the ±10 clip, and the done head fired within ~200 steps whatever the action.

With `sample_flag=True` the model knows whether z_t is a sample (s_t = 1: the dream feeds back its
own, and training draws z ~ N(mu, σ²)) or an encoder mean (s_t = 0: a real frame's). Trained on
samples, the dream responds to actions as the real game does, but from clean means such a model
predicts z_{t+1} worse than persistence (it treats an exact mean as noisy). The flag adds a *mean
path*: a second kernel and bias (`mean_kernel`, `mean_bias`, zero at init) in the LSTM and in the
head, whose outputs (gate pre-activations, head outputs) are added with weight 1 - s_t. A path in
the LSTM alone is not enough: fitted with the head frozen, its 1-step mixture mean got worse, since
the head's σ and π were made for noisy inputs. For samples the cell is exactly the model without
the flag, so fine-tuning only the mean path (train.mdnrnn --freeze-sampled) leaves the dream as it
was; a Python `sampled=1` (the dream's) skips the path, which then needs none of its params
(`samples_only`).

With `reward_input=True` the cell also reads r_{t-1}, the reward paid for the previous step (0 at
reset): CarRacing pays a tile's reward on the one step the car crosses it, and that phase is not in
the 64×64 frame, but the steps since the last tile (at the car's speed) tell it. Measured with probes
on a model's held-out rollouts: the next reward's correlation went from 0.49 (h alone) to 0.77 (h, the
last 8 rewards and the steps since the last tile). A model that reads its rewards must be able to
produce them in a dream, so its head gives the reward as two levels: `reward_logit` for P(r_t > 0) (a tile), `reward_low` and
`reward_high` its expected value below and above; `reward` is their expectation. The dream samples
which level it pays and feeds that back (`world_model.step`). But a dream that reads its own
rewards makes them feed themselves: trained so on both paths (the pipeline's 620 rollouts, 8000
steps), a fixed full throttle paid 746 ± 291 in the dream against −30 on the real game (174 in the
dream without the input), and a PPO agent trained in that dream scored 156 ± 203 on the real game
(604 ± 214 without). So the shipped model reads rewards on its mean path only (train.mdnrnn
--reward-input --freeze-sampled): its predictions from real data use them; on samples, its reward
row and levels are the base model's (zero, and high = low), so the dream pays the expected reward.

`MDNRNN.step` is one application of the cell; `MDNRNN.__call__` unrolls *that same cell*
(same submodule, same parameters) over time with `nn.scan`. The environments call `step`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamenv.mixture import LOG_SIGMA_MIN

Carry = tuple  # (c [B, H], h [B, H]) as flax's LSTMCell keeps it


def head_layout(num_mixtures: int, latent_dim: int, reward_levels: bool = False) -> dict:
    """Column slices of the head's single output layer: pi [K], mu [K·D], sigma [K·D], reward, done,
    and with `reward_levels` (MDNRNN.reward_input) reward_high, reward_event. `reward` is then the
    low level."""
    k, kd = num_mixtures, num_mixtures * latent_dim
    cols = dict(pi=slice(0, k), mu=slice(k, k + kd), sigma=slice(k + kd, k + 2 * kd),
                reward=slice(k + 2 * kd, k + 2 * kd + 1), done=slice(k + 2 * kd + 1, k + 2 * kd + 2))
    if reward_levels:
        end = cols["done"].stop
        cols.update(reward_high=slice(end, end + 1), reward_event=slice(end + 1, end + 2))
    return cols


def head_width(cols: dict) -> int:
    """The head's output columns."""
    return max(c.stop for c in cols.values())


REWARD_EVENT_ABOVE = 0.0  # a reward above this is the high level (CarRacing-v3: a new tile's 1000/N − 0.1)


class MDNHead(nn.Module):
    """(h_{t+1}, z_t) -> dict(log_pi [..,K], mu [..,K,D], log_sigma [..,K,D], reward [..], done_logit [..]),
    with `reward_levels` also reward_low, reward_high, reward_logit [..] (reward: their expectation).

    One Dense layer `out` [H, K + 2·K·D + 2 (+ 2)] computes every output (columns: `head_layout`).
    """

    latent_dim: int
    num_mixtures: int
    sigma_min: float
    residual: bool
    mean_path: bool = False  # a second output layer for encoder-mean inputs (MDNRNN.sample_flag)
    reward_levels: bool = False  # the reward as two levels and P(high) (MDNRNN.reward_input)

    @nn.compact
    def __call__(self, h, z, mean=None):
        # h: [B, H]; z: [B, D]; mean: the mean path's weight [B, 1] (None: skipped)
        k, d = self.num_mixtures, self.latent_dim
        cols = head_layout(k, d, self.reward_levels)
        width = head_width(cols)
        out = nn.Dense(width, bias_init=self._bias_init, name="out")(h)
        if self.mean_path and mean is not None:
            mean_kernel = self.param("mean_kernel", nn.initializers.zeros, (h.shape[-1], width))
            mean_bias = self.param("mean_bias", nn.initializers.zeros, (width,))
            out = out + mean * (h @ mean_kernel + mean_bias)
        means = out[..., cols["mu"]].reshape(*h.shape[:-1], k, d)
        # σ = σ_min + softplus(raw): smooth, never below the floor (no overconfidence).
        sigma = self.sigma_min + jax.nn.softplus(out[..., cols["sigma"]])
        heads = dict(
            log_pi=jax.nn.log_softmax(out[..., cols["pi"]], axis=-1),
            mu=z[..., None, :] + means if self.residual else means,
            log_sigma=jnp.maximum(jnp.log(sigma), LOG_SIGMA_MIN).reshape(*h.shape[:-1], k, d),
            reward=out[..., cols["reward"].start],
            done_logit=out[..., cols["done"].start],
        )
        if self.reward_levels:
            low, high = heads["reward"], out[..., cols["reward_high"].start]
            logit = out[..., cols["reward_event"].start]
            heads.update(reward=low + jax.nn.sigmoid(logit) * (high - low), reward_low=low, reward_high=high,
                         reward_logit=logit)
        return heads

    def _bias_init(self, key, shape, dtype=jnp.float32):
        """Zeros, but the K means start apart (bias ~ N(0, 0.1²), ≈ a step's motion) against mode collapse."""
        cols = head_layout(self.num_mixtures, self.latent_dim, self.reward_levels)
        mu = 0.1 * jax.random.normal(key, (cols["mu"].stop - cols["mu"].start,), dtype)
        return jnp.zeros(shape, dtype).at[cols["mu"]].set(mu)


class LSTMCell(nn.Module):
    """flax's `nn.LSTMCell` (same gates, same initialisation) with its eight matrices stored as one:
    `kernel` [n_in + H, 4H] applied to [x, h] and `bias` [4H], gates in the order i, f, g, o.

    One matmul per step instead of eight: at batch 1 (a single env) the step's cost is dispatch, so
    fewer, larger ops are what make it fast.
    """

    hidden_size: int
    mean_path: bool = False  # a second kernel and bias for encoder-mean inputs (MDNRNN.sample_flag)

    @nn.compact
    def __call__(self, carry, x, mean=None):
        # carry: (c, h) each [B, H]; x: [B, n_in]; mean: the mean path's weight [B, 1] (None: skipped)
        c, h = carry
        n_in, hid = x.shape[-1], self.hidden_size
        kernel = self.param("kernel", lstm_kernel_init(n_in, hid), (n_in + hid, 4 * hid))
        bias = self.param("bias", nn.initializers.zeros, (4 * hid,))
        xh = jnp.concatenate([x, h], axis=-1)
        gates = xh @ kernel + bias  # [B, 4H]
        if self.mean_path and mean is not None:  # declared here: a call on samples needs no mean params
            mean_kernel = self.param("mean_kernel", nn.initializers.zeros, (n_in + hid, 4 * hid))
            mean_bias = self.param("mean_bias", nn.initializers.zeros, (4 * hid,))
            gates = gates + mean * (xh @ mean_kernel + mean_bias)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


MEAN_PATH = ("mean_kernel", "mean_bias")  # the params of the mean path, in the LSTM and in the head


def samples_only(params):
    """MDN-RNN params without the mean path: all that a call on samples (`sampled=1`) reads, and what
    a model without the sample flag has."""
    cell = {layer: {k: v for k, v in p.items() if k not in MEAN_PATH} for layer, p in params["params"]["cell"].items()}
    return {**params, "params": {**params["params"], "cell": cell}}


def gain_reward_input(params, model: "MDNRNN"):
    """Params of `model` without `reward_input` -> params of `model` (with it) computing the same
    function: a zero LSTM row for r_{t-1} (after z and a, before h) and head columns
    reward_high = the reward column, reward_event = 0, so the expected reward is the old one."""
    cell = params["params"]["cell"]
    at = model.latent_dim + model.action_dim  # the new input row
    lstm = {k: jnp.insert(v, at, 0.0, axis=0) if k in ("kernel", "mean_kernel") else v for k, v in cell["lstm"].items()}
    reward = head_layout(model.num_mixtures, model.latent_dim)["reward"]
    grow = lambda w: jnp.concatenate([w, w[..., reward], jnp.zeros_like(w[..., reward])], axis=-1)
    head = {**cell["head"], "out": {k: grow(v) for k, v in cell["head"]["out"].items()}}
    head.update({k: grow(v) for k, v in cell["head"].items() if k in MEAN_PATH})
    return {**params, "params": {**params["params"], "cell": {**cell, "lstm": lstm, "head": head}}}


def drop_unread_reward_input(model: "MDNRNN", params):
    """A `reward_input` model's params on samples (`samples_only`) -> (module, params) without the
    input, when on samples it is not read (a zero LSTM row) and its levels are one (reward_high's
    column = reward's): the same function with one sampling less a dream step (the shipped model
    reads rewards on its mean path only). Anything else comes back as it was."""
    if not model.reward_input:
        return model, params
    cell = params["params"]["cell"]
    at = model.latent_dim + model.action_dim
    cols = head_layout(model.num_mixtures, model.latent_dim, reward_levels=True)
    out = {k: np.asarray(v) for k, v in cell["head"]["out"].items()}
    if np.any(np.asarray(cell["lstm"]["kernel"])[at]) or any(
            not np.array_equal(w[..., cols["reward_high"]], w[..., cols["reward"]]) for w in out.values()):
        return model, params
    width = cols["done"].stop  # as device arrays, as they came: numpy ones would be copied in every call
    lstm = {**cell["lstm"], "kernel": jnp.asarray(np.delete(np.asarray(cell["lstm"]["kernel"]), at, axis=0))}
    head = {**cell["head"], "out": {k: jnp.asarray(w[..., :width]) for k, w in out.items()}}
    return model.clone(reward_input=False), {**params, "params": {**params["params"],
                                                                  "cell": {**cell, "lstm": lstm, "head": head}}}


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
    """One time step: (carry, ([z_t, a_t(, r_t-1)], mean weight)) -> (carry', (h_t, head outputs))."""

    latent_dim: int
    hidden_size: int
    num_mixtures: int
    sigma_min: float
    residual: bool
    mean_path: bool = False
    reward_levels: bool = False

    @nn.compact
    def __call__(self, carry, inputs):
        # inputs: (x [B, D + A], mean path weight 1 - s_t [B, 1] or None); carry: (c, h) each [B, H]
        x, mean = inputs
        carry, h = LSTMCell(self.hidden_size, self.mean_path, name="lstm")(carry, x, mean)
        z = x[..., : self.latent_dim]
        out = MDNHead(self.latent_dim, self.num_mixtures, self.sigma_min, self.residual, self.mean_path,
                      self.reward_levels, name="head")(h, z, mean)
        return carry, dict(h=h, **out)


class MDNRNN(nn.Module):
    """The memory model M. Config fields are saved in bundles and rebuild the module."""

    latent_dim: int = 32
    action_dim: int = 3
    hidden_size: int = 256
    num_mixtures: int = 5
    sigma_min: float = 0.01
    residual: bool = False
    sample_flag: bool = False  # a mean path for encoder-mean inputs (s_t = 0); samples (s_t = 1) skip it
    reward_input: bool = False  # the cell reads r_{t-1}; the head gives the reward as two levels to sample

    def setup(self):
        self.cell = MDNCell(self.latent_dim, self.hidden_size, self.num_mixtures, self.sigma_min, self.residual,
                            self.sample_flag, self.reward_input)

    def initial_carry(self, batch: int) -> Carry:
        """Zero LSTM state: (c, h), each [batch, hidden_size]."""
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return (zeros, zeros)

    @property
    def input_size(self) -> int:
        """The cell's input width: z, a and, with reward_input, r_{t-1}."""
        return self.latent_dim + self.action_dim + int(self.reward_input)

    def inputs(self, z, action, sampled, prev_reward=None):
        """The cell's inputs: ([z, a(, r_prev)] [..., input_size], the mean path's weight 1 - s [..., 1] or None).

        `prev_reward` ([...]: r_{t-1}, 0 at an episode's first step) is required with reward_input
        and ignored without. `sampled` (s: a scalar or [...]) is read only with sample_flag; None (the
        path skipped) when it cannot matter: no flag, or a Python 1 (every input a sample, as in the
        dream)."""
        parts = [z, action]
        if self.reward_input:
            if prev_reward is None:
                raise ValueError("this MDN-RNN reads the previous step's reward (reward_input=True): pass "
                                 "prev_reward, r_{t-1} per step (0 at an episode's first step)")
            parts.append(jnp.broadcast_to(jnp.asarray(prev_reward, z.dtype), z.shape[:-1])[..., None])
        x = jnp.concatenate(parts, axis=-1)
        if not self.sample_flag or (isinstance(sampled, (int, float)) and sampled == 1):
            return x, None
        return x, 1.0 - jnp.broadcast_to(jnp.asarray(sampled, z.dtype), z.shape[:-1])[..., None]

    def step(self, carry: Carry, z, action, sampled=0.0, prev_reward=None):
        """One step. z: [B, D], action: [B, A], sampled: scalar or [B], prev_reward: [B] (reward_input)
        -> (carry', outputs with leading [B])."""
        return self.cell(carry, self.inputs(z, action, sampled, prev_reward))

    def __call__(self, carry: Carry, z, action, sampled=0.0, prev_reward=None):
        """Unroll over time. z: [B, T, D], action: [B, T, A], sampled: scalar, [B, 1] or [B, T],
        prev_reward: [B, T] (reward_input: `previous_rewards` of the steps' rewards) -> (carry', outputs [B, T, ...])."""
        scan = nn.scan(
            lambda cell, c, x: cell(c, x),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        return scan(self.cell, carry, self.inputs(z, action, sampled, prev_reward))


def previous_rewards(reward):
    """r_{t-1} for each step of whole episodes: reward [..., T] -> [..., T], 0 at the first step."""
    reward = jnp.asarray(reward)
    return jnp.concatenate([jnp.zeros_like(reward[..., :1]), reward[..., :-1]], axis=-1)
