"""DreamCarRacing-v0: CarRacing-v3 as dreamed by a world model, a thin Gymnasium env over the core.

    env = gym.make("DreamCarRacing-v0", obs="zh", temperature=1.15, model="runs/bundle")

Observations (`obs=`): "z" the 32-d latent, "zh" [z_t, h_t] (see `dreamenv.world_model` for the
exact definitions, which LatentCarRacing-v0 shares), "pixels" the decoded 64×64×3 uint8 frame.
Actions: CarRacing-v3's Box([-1, 0, 0], [1, 1, 1]); values outside it are clipped to it (as the
MDN-RNN sees them); NaN/inf or a wrong shape raise ValueError and leave the env unchanged.
terminated = P(done) > 0.5 from the done head; truncation comes from the 1000-step TimeLimit.

Randomness: each env owns a chain of JAX keys, seeded with 64 bits of `self.np_random` by
reset(seed=...) (or by its first reset) and split once per reset or step: (chain, key used now) =
split(chain). A seed reproduces an episode, and the vector env (one chain per env) equals N of
these envs.

Speed: a step is one jitted call (compiled to run in the calling thread, `wm.SEQUENTIAL_CPU`; in
zh/z mode it is passed no VAE params) and one host transfer. On CPU, JAX's asynchronous dispatch
hands each call to a worker thread and back, which costs about as much as this sub-0.1 ms step;
programs that mostly step single envs run faster with
`jax.config.update("jax_cpu_enable_async_dispatch", False)` before JAX starts (before importing
dreamenv). dreamenv leaves that process-wide choice to you.
"""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from dreamenv import world_model as wm
from dreamenv.envs.spaces import action_space, check_action, check_temperature, observation_space
from dreamenv.model import load_model

RENDER_FPS = 50  # CarRacing-v3's


def key_chains(generators) -> jax.Array:
    """np.random.Generators, one per env -> [N, 2] uint32: the raw data of N threefry key chains, each
    seeded with 64 bits of its generator. Envs keep their chains raw between calls: passing typed key
    arrays into and out of the jitted call cost a single env ~9 µs a step (measured back to back, 97–102
    -> 90–91 µs)."""
    return jnp.asarray(np.stack([g.integers(0, 2**32, 2, dtype=np.uint32) for g in generators]))


def split_chains(chains):
    """[N, 2] raw key chains -> (advanced chains [N, 2] raw, keys to use now [N])."""
    pair = jax.vmap(jax.random.split)(jax.random.wrap_key_data(chains, impl="threefry2x32"))  # [N, 2]
    return jax.random.key_data(pair[:, 0]), pair[:, 1]


@partial(jax.jit, static_argnames="obs", compiler_options=wm.SEQUENTIAL_CPU)
def reset_envs(model, keys, obs):
    """Reset every env from its own key chain. keys: [N] -> (state, keys', obs [N, ...])."""
    keys, now = split_chains(keys)
    state, o = wm.reset(model, now, keys.shape[0], obs=obs)
    return state, keys, o


class Screen:
    """Frames [..., H, W, 3] -> nearest-neighbour upscaled by an integer factor; a pygame window."""

    def __init__(self, render_mode, scale):
        if render_mode not in (None, "rgb_array", "human"):
            raise ValueError(f"render_mode={render_mode!r} is unknown, expected None, 'rgb_array' or 'human'")
        scale = (8 if render_mode == "human" else 1) if scale is None else scale
        if not (isinstance(scale, int) and scale >= 1):
            raise ValueError(f"render_scale must be an integer >= 1, got {scale!r}")
        self.scale, self.window, self.clock = scale, None, None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return frame.repeat(self.scale, -3).repeat(self.scale, -2) if self.scale > 1 else frame

    def show(self, frame: np.ndarray):
        import pygame  # only for render_mode="human"

        frame = self(frame)
        if self.window is None:
            pygame.init()
            pygame.display.set_caption("DreamCarRacing-v0")
            self.window = pygame.display.set_mode(frame.shape[1::-1])
            self.clock = pygame.time.Clock()
        pygame.event.pump()
        self.window.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
        pygame.display.flip()
        self.clock.tick(RENDER_FPS)

    def close(self):
        if self.window is not None:
            import pygame

            pygame.display.quit()
            pygame.quit()
            self.window = None


@partial(jax.jit, static_argnames="obs", compiler_options=wm.SEQUENTIAL_CPU)
def _step_one(model, state, keys, action, temperature, obs):
    """One env's step, outputs gathered for a single host transfer. action: [3]."""
    keys, now = split_chains(keys)
    state, o, reward, terminated = wm.step(model, state, action[None], now, temperature, obs=obs)
    if obs == "pixels":
        return state, keys, (o[0], jnp.stack([reward[0], terminated[0].astype(jnp.float32)]))
    return state, keys, jnp.concatenate([o[0], reward, terminated.astype(jnp.float32)])


class DreamCarRacing(gym.Env):
    """CarRacing-v3 dreamed by a world model: one jitted core call and one host transfer per step.

    Args:
        obs: "z" | "zh" (default) | "pixels".
        temperature: τ for sampling z_{t+1} (π logits ÷ τ, σ × √τ); 0 is deterministic.
        model: a bundle folder, a `Bundle`, a `WorldModel`; None: the shipped bundle.
        render_mode: None | "rgb_array" (the decoded frame, uint8 H×W×3) | "human" (pygame window).
        render_scale: integer upscaling of rendered frames (default 1, or 8 for "human").
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": RENDER_FPS}

    def __init__(self, obs="zh", temperature=1.0, model=None, render_mode=None, render_scale=None):
        self.model = load_model(model)
        self.observation_space = observation_space(self.model, obs)
        self.action_space = action_space()
        self.obs_mode = obs
        self.temperature = check_temperature(temperature)
        self.render_mode = render_mode
        self._screen = Screen(render_mode, render_scale)
        self._temperature = jnp.float32(self.temperature)
        self._dim = self.observation_space.shape[0]
        self._core = self.model.for_obs(obs)
        self._state = self._keys = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None or self._keys is None:
            self._keys = key_chains([self.np_random])
        self._state, self._keys, obs = reset_envs(self._core, self._keys, obs=self.obs_mode)
        if self.render_mode == "human":
            self.render()
        return np.array(obs[0]), {}

    def step(self, action):
        if self._state is None:
            raise gym.error.ResetNeeded("DreamCarRacing: call reset() before step()")
        action = check_action(action, (3,))
        self._state, self._keys, out = _step_one(
            self._core, self._state, self._keys, action, self._temperature, obs=self.obs_mode
        )
        if self.obs_mode == "pixels":
            obs, (reward, done) = np.array(out[0]), np.asarray(out[1])
        else:
            out = np.array(out)
            obs, reward, done = out[: self._dim], out[-2], out[-1]
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), bool(done), False, {}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("DreamCarRacing.render() called without a render_mode; pass render_mode=...")
            return None
        if self._state is None:
            raise gym.error.ResetNeeded("DreamCarRacing: call reset() before render()")
        frame = np.asarray(wm.decode(self.model, self._state.z))[0]
        if self.render_mode == "human":
            return self._screen.show(frame)
        return self._screen(frame)

    def close(self):
        self._screen.close()
