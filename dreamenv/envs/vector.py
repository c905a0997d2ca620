"""The vector form of DreamCarRacing-v0: N dreams stepped by ONE jitted call.

    venv = gym.make_vec("DreamCarRacing-v0", num_envs=1024, obs="zh")

Same observation modes, kwargs and action handling as the single env; each env has its own
1000-step time limit (truncation) and its own key chain, so env i equals a single
DreamCarRacing-v0 reset with seed + i (proven in tests/test_vector_env.py).

Autoreset (Gymnasium 1.x, `autoreset_mode=`):
  NEXT_STEP (default)  the step after an env ends resets it: that step ignores its action and
                       returns the reset obs, reward 0, terminated = truncated = False.
  SAME_STEP            an env that ends is reset in the same call: obs is the reset obs; the
                       final obs is info["final_obs"][i] (mask info["_final_obs"]). The SB3
                       adapter (dreamenv.envs.sb3) uses this mode.
"""

from __future__ import annotations


import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from dreamenv import world_model as wm
from dreamenv.envs.dream import RENDER_FPS, Screen, key_chains, reset_envs, split_chains
from dreamenv.envs.spaces import action_space, check_action, check_temperature, observation_space
from dreamenv.model import load_model


def _select(mask, new, old):
    """Per env: `new` where mask [N], else `old` (pytrees with leading [N])."""
    pick = lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree_util.tree_map(pick, new, old)


def _vector_step(model, state, keys, ended, action, temperature, max_steps, obs, same_step):
    """Step all N envs; reset those that `ended` on the previous call (NEXT_STEP) or now (SAME_STEP).

    action: [N, 3]; ended: [N] bool
    -> (state, keys, ended', (obs [N, ...], [reward, terminated, truncated] [3, N]), final obs or None)
    """
    n = keys.shape[0]
    observe = lambda s: wm.observe(model, s.z, s.carry[1], obs)
    keys, now = split_chains(keys)
    stepped, _, reward, terminated = wm.step(model, state, action, now, temperature, obs="z")
    truncated = stepped.t >= max_steps
    if same_step:
        ended = terminated | truncated
        spec = jax.eval_shape(observe, stepped)  # decode final frames only when some env ended
        final_obs = jax.lax.cond(ended.any(), observe, lambda s: jnp.zeros(spec.shape, spec.dtype), stepped)
        keys, now = _select(ended, split_chains(keys), (keys, now))
        fresh, _ = wm.reset(model, now, n, obs="z")
        state = _select(ended, fresh, stepped)
    else:  # NEXT_STEP: `now` resets the envs that ended last call instead of stepping them
        fresh, _ = wm.reset(model, now, n, obs="z")
        state = _select(ended, fresh, stepped)
        reward = jnp.where(ended, 0.0, reward)
        terminated, truncated = terminated & ~ended, truncated & ~ended
        ended, final_obs = terminated | truncated, None
    flags = jnp.stack([reward, terminated.astype(jnp.float32), truncated.astype(jnp.float32)])  # [3, N]
    return state, keys, ended, (observe(state), flags), final_obs


# One env's step runs fastest in one thread (see wm.SEQUENTIAL_CPU); measured: from 4 envs on, the
# default order that spreads ops over threads wins (4 envs 18.7k vs 16.4k steps/s, 64: 104k vs 97k).
_STEP_FNS = {
    False: jax.jit(_vector_step, static_argnames=("obs", "same_step")),
    True: jax.jit(_vector_step, static_argnames=("obs", "same_step"), compiler_options=wm.SEQUENTIAL_CPU),
}


class DreamVectorEnv(gym.vector.VectorEnv):
    """N DreamCarRacing-v0 envs in one batched dream, stepped by one jitted call.

    Args: num_envs, max_episode_steps (per-env truncation, 1000 from the registration),
    autoreset_mode (NEXT_STEP or SAME_STEP), and DreamCarRacing-v0's obs, temperature, model,
    render_mode (None or "rgb_array": frames [N, H, W, 3]) and render_scale.
    """

    def __init__(
        self,
        num_envs: int,
        obs="zh",
        temperature=1.0,
        model=None,
        render_mode=None,
        render_scale=None,
        max_episode_steps=1000,
        autoreset_mode=AutoresetMode.NEXT_STEP,
    ):
        if not (isinstance(num_envs, int) and num_envs >= 1):
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode == "human":
            raise ValueError("vector DreamCarRacing-v0 renders rgb_array only: pass render_mode='rgb_array'")
        autoreset_mode = AutoresetMode(autoreset_mode)
        if autoreset_mode == AutoresetMode.DISABLED:
            raise ValueError("autoreset_mode DISABLED is not supported; use NEXT_STEP or SAME_STEP")
        if max_episode_steps is None or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps!r}")
        self.model = load_model(model)
        self.num_envs = num_envs
        self.obs_mode = obs
        self.temperature = check_temperature(temperature)
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self.metadata = {
            "autoreset_mode": autoreset_mode,
            "render_modes": ["rgb_array"],
            "render_fps": RENDER_FPS,
        }
        self.single_observation_space = observation_space(self.model, obs)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._screen = Screen(render_mode, render_scale)
        self._same_step = autoreset_mode == AutoresetMode.SAME_STEP
        self._temperature = jnp.float32(self.temperature)
        self._max_steps = jnp.int32(self.max_episode_steps)
        self._core = self.model.for_obs(obs)
        self._step_fn = _STEP_FNS[num_envs == 1]
        self._state = self._keys = self._ended = None

    def reset(self, *, seed=None, options=None):
        """seed: None, an int (env i gets seed + i, as SyncVectorEnv does) or a list of N seeds/None.

        Without a seed, envs continue their key chains (as a single env's reset() does).
        """
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))
            seed = [int(seed) + i for i in range(self.num_envs)]
        if seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"seed is a list of {len(seed)} seeds, expected num_envs={self.num_envs}")
            self._keys = key_chains(gym.utils.seeding.np_random(s)[0] for s in seed)
        elif self._keys is None:
            self._keys = key_chains(gym.utils.seeding.np_random()[0] for _ in range(self.num_envs))
        self._state, self._keys, obs = reset_envs(self._core, self._keys, obs=self.obs_mode)
        self._ended = jnp.zeros(self.num_envs, bool)
        return np.array(obs), {}

    def step(self, actions):
        if self._state is None:
            raise gym.error.ResetNeeded("DreamCarRacing vector env: call reset() before step()")
        actions = check_action(actions, (self.num_envs, 3))
        self._state, self._keys, self._ended, out, final = self._step_fn(
            self._core, self._state, self._keys, self._ended, actions, self._temperature,
            self._max_steps, obs=self.obs_mode, same_step=self._same_step,
        )  # fmt: skip
        obs, flags = np.array(out[0]), np.asarray(out[1])  # obs writable, as torch wants
        terminated, truncated = flags[1] > 0, flags[2] > 0
        info = {}
        if self._same_step and (terminated | truncated).any():
            ended = terminated | truncated
            final, info["final_obs"] = np.array(final), np.full(self.num_envs, None, object)
            for i in np.flatnonzero(ended):
                info["final_obs"][i] = final[i]
            info["final_info"], info["_final_obs"], info["_final_info"] = {}, ended, ended
        return obs, flags[0].astype(np.float64), terminated, truncated, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        if self._state is None:
            raise gym.error.ResetNeeded("DreamCarRacing vector env: call reset() before render()")
        return self._screen(np.asarray(wm.decode(self.model, self._state.z)))
