"""The world-model core: pure, jitted `reset` / `step` / `rollout` / `decode` on explicit state.

Every consumer of the dream (the single env, the vector env, the latent env's memory, in-dream
evolution strategies, the benchmarks) calls these functions; none re-implements them.

    model = WorldModel.from_bundle(bundle)            # params as device arrays: a pytree
    state, obs = reset(model, key, batch)             # batch-first; obs mode "z" | "zh" | "pixels"
    state, obs, reward, terminated = step(model, state, action, key, temperature)
    returns, lengths = rollout(model, policy_fn, params, key, batch, steps)   # one lax.scan
    frames = decode(model, z); z = encode(model, frames)                        # uint8 <-> latents

`memory_step` is the MDN-RNN cell that `step` runs; LatentCarRacing-v0 runs it on real latents.

Definitions, shared by the dream and by LatentCarRacing-v0:
  z_t    the latent of frame t: sampled from the MDN-RNN in the dream, the VAE's mean on real
         frames; clipped to ±LATENT_BOUND (a guard against a diverging model that keeps obs in the
         observation space; real latents of a KL-regularised VAE lie well inside it).
  h_t    the LSTM hidden state after consuming (z_{t-1}, a_{t-1}); zeros at reset. The "zh"
         observation is [z_t, h_t], the paper's controller input.
  a_t    clipped to CarRacing-v3's action space [-1,1]×[0,1]×[0,1] before the MDN-RNN sees it.
  reward the reward head's expected reward for (z_t, a_t) (a float).
  terminated  thresholded, not sampled: done_logit > 0, i.e. P(done) > 0.5. The dream's only
         randomness is then z's sampling at temperature τ (τ = 0: z deterministic).

Keys: `key` is one PRNG key (split into `batch` per-env keys) or `batch` keys, one per env, so a
batch of envs equals the same envs run one at a time.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from dreamenv.checkpoint import Bundle
from dreamenv.frames import FrameConfig
from dreamenv.mdnrnn import MDNRNN
from dreamenv.mixture import mdn_sample
from dreamenv.vae import VAE

OBS_MODES = ("z", "zh", "pixels")
# XLA's CPU compiler orders ops by default so that independent ones can run on other threads. An
# env's per-step call is ~60 µs of small ops, and handing them between threads costs more than it
# saves; the memory-optimised order runs them in the calling thread (measured on 2 cores: one
# DreamCarRacing-v0 step's jitted call 139 -> 65 µs). Pass as `jax.jit(..., compiler_options=)`.
SEQUENTIAL_CPU = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
LATENT_BOUND = 10.0
ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)  # CarRacing-v3's action space: steer, gas, brake
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)


@struct.dataclass
class WorldModel:
    """V and M with their params on the device, and the bank of real start latents.

    A pytree: one jitted function serves every model whose configs and shapes match.
    """

    vae: VAE = struct.field(pytree_node=False)
    mdnrnn: MDNRNN = struct.field(pytree_node=False)
    frames: FrameConfig = struct.field(pytree_node=False)
    vae_params: Any
    mdnrnn_params: Any
    start_latents: jax.Array  # [N, D]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "WorldModel":
        """The bundle's modules and its params (as float32 device arrays)."""
        if bundle.mdnrnn.action_dim != len(ACTION_LOW):
            raise ValueError(
                f"the bundle's MDN-RNN takes {bundle.mdnrnn.action_dim}-d actions, expected "
                f"{len(ACTION_LOW)} (CarRacing-v3's steer, gas, brake)"
            )
        if bundle.vae.latent_dim != bundle.mdnrnn.latent_dim:
            raise ValueError(
                f"the bundle's VAE latent_dim {bundle.vae.latent_dim} differs from its MDN-RNN's "
                f"{bundle.mdnrnn.latent_dim}; rebuild the bundle from a matching pair"
            )
        put = partial(jax.tree_util.tree_map, lambda x: jnp.asarray(x, jnp.float32))
        return cls(
            vae=bundle.vae,
            mdnrnn=bundle.mdnrnn,
            frames=bundle.frames,
            vae_params=put(bundle.vae_params),
            mdnrnn_params=put(bundle.mdnrnn_params),
            start_latents=put(bundle.start_latents),
        )

    def for_obs(self, obs: str) -> "WorldModel":
        """This model without the VAE unless `step`/`reset` in mode `obs` read it ("pixels"): what
        the dream envs step (a jitted call's cost at batch 1 grows with the arrays passed)."""
        return self if obs == "pixels" else self.replace(vae_params=None)

    @property
    def latent_dim(self) -> int:
        return self.mdnrnn.latent_dim

    @property
    def hidden_size(self) -> int:
        return self.mdnrnn.hidden_size


@struct.dataclass
class DreamState:
    """The dream's whole state; batch dims lead."""

    z: jax.Array  # [B, D]  z_t
    carry: tuple  # (c, h), each [B, H]: LSTM state after consuming (z_{t-1}, a_{t-1})
    t: jax.Array  # [B] int32: steps since reset


def _env_keys(key, batch: int):
    """One key -> `batch` keys; `batch` keys pass through."""
    if key.shape == ():
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(f"key has shape {key.shape}, expected () or ({batch},): one key per env")
    return key


def memory_step(model: WorldModel, carry, z, action):
    """The MDN-RNN cell on (z_t, a_t), actions clipped to the action space. -> (carry', head)

    carry: (c, h) [B, H]; z: [B, D]; action: [B, 3]; head: MDNRNN.step's outputs, head["h"] = h_{t+1}.
    """
    action = jnp.clip(action, ACTION_LOW, ACTION_HIGH)
    return model.mdnrnn.apply(model.mdnrnn_params, carry, z, action, method=MDNRNN.step)


def start_state(model: WorldModel, z) -> DreamState:
    """Dreams (or real episodes) at their first step: z_0 [B, D], a zero carry, t = 0."""
    return DreamState(z=z, carry=model.mdnrnn.initial_carry(z.shape[0]), t=jnp.zeros(z.shape[0], jnp.int32))


@jax.jit
def decode(model: WorldModel, z):
    """z: [B, D] -> frames uint8 [B, 64, 64, 3]."""
    frames = model.vae.apply(model.vae_params, z, method=VAE.decode)
    return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@jax.jit
def encode(model: WorldModel, frames):
    """Preprocessed real frames uint8 [B, 64, 64, 3] -> their latents z (the VAE's mean) [B, D]."""
    mu, _ = model.vae.apply(model.vae_params, frames.astype(jnp.float32) / 255.0, direct=True, method=VAE.encode)
    return jnp.clip(mu, -LATENT_BOUND, LATENT_BOUND)


def observe(model: WorldModel, z, h, obs: str):
    """The observation of latent z [B, D] and hidden state h [B, H] in mode `obs`."""
    if obs == "z":
        return z
    if obs == "zh":
        return jnp.concatenate([z, h], axis=-1)  # [B, D + H]
    if obs == "pixels":
        return decode(model, z)  # [B, 64, 64, 3] uint8
    raise ValueError(f"observation mode {obs!r} is unknown, expected one of {OBS_MODES}")


@partial(jax.jit, static_argnames=("batch", "obs"))
def reset(model: WorldModel, key, batch: int, obs: str = "zh"):
    """`batch` fresh dreams: z_0 from the bank of real start latents, zero carry.

    -> (state, obs [B, ...])
    """
    keys = _env_keys(key, batch)
    n = model.start_latents.shape[0]
    index = jax.vmap(lambda k: jax.random.randint(k, (), 0, n))(keys)  # [B]
    state = start_state(model, model.start_latents[index])  # z: [B, D]
    return state, observe(model, state.z, state.carry[1], obs)


@partial(jax.jit, static_argnames=("obs",))
def step(model: WorldModel, state: DreamState, action, key, temperature=1.0, obs: str = "zh"):
    """One dream step for every env. action: [B, 3] -> (state', obs [B, ...], reward [B], terminated [B])."""
    keys = _env_keys(key, state.z.shape[0])
    carry, head = memory_step(model, state.carry, state.z, action)
    sample = partial(mdn_sample, temperature=jnp.asarray(temperature, jnp.float32))
    z = jax.vmap(sample)(keys, head["log_pi"], head["mu"], head["log_sigma"])
    z = jnp.clip(z, -LATENT_BOUND, LATENT_BOUND)  # [B, D]
    state = DreamState(z=z, carry=carry, t=state.t + 1)
    return state, observe(model, z, head["h"], obs), head["reward"], head["done_logit"] > 0.0


@partial(jax.jit, static_argnames=("policy_fn", "batch", "steps", "obs"))
def rollout(
    model: WorldModel,
    policy_fn: Callable,
    params,
    key,
    batch: int,
    steps: int,
    temperature=1.0,
    obs: str = "zh",
):
    """`batch` dream episodes of up to `steps` steps under policy_fn(params, obs [B, ...]) -> [B, 3],
    in one `lax.scan`. Rewards count until each episode's first termination (ended episodes keep
    stepping, uncounted: shapes stay fixed, so `jax.vmap` over a population of params works).

    -> (returns [B], lengths [B] int32: steps until termination, or `steps`)
    """
    k_reset, k_steps = jax.random.split(key)
    state, first_obs = reset(model, k_reset, batch, obs=obs)

    def body(carry, k):
        state, o, alive, ret, length = carry
        state, o, reward, terminated = step(model, state, policy_fn(params, o), k, temperature, obs=obs)
        ret = ret + jnp.where(alive, reward, 0.0)
        length = length + alive.astype(jnp.int32)
        return (state, o, alive & ~terminated, ret, length), None

    init = (state, first_obs, jnp.ones(batch, bool), jnp.zeros(batch), jnp.zeros(batch, jnp.int32))
    (_, _, _, returns, lengths), _ = jax.lax.scan(body, init, jax.random.split(k_steps, steps))
    return returns, lengths
