"""LatentCarRacing-v0: the real CarRacing-v3 seen through the world model's eyes and memory.

    env = gym.make("LatentCarRacing-v0", obs="zh", model="runs/bundle", domain_randomize=True)

Each real frame goes through `dreamenv.frames.preprocess` and the VAE encoder (its mean); for
"zh" the MDN-RNN carry advances on (z_t, a_t) with the action actually taken, exactly as in the
dream (`world_model.memory_step`), so h means the same in both and the observation spaces are
DreamCarRacing-v0's: an agent trained in one runs unchanged in the other. "pixels" is the
preprocessed real frame. Reward, terminated and truncated are the real env's; CarRacing-v3's
kwargs (domain_randomize, lap_complete_percent, ...) pass through. Actions are checked and
clipped as in the dream.

Subprocesses: JAX cannot survive fork() once it has started, so vectorize with the 'spawn' or
'forkserver' start method: `gym.make_vec(..., vectorization_mode="async",
vector_kwargs={"context": "spawn"})`, or SB3's SubprocVecEnv (forkserver by default).
"""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import jax
import numpy as np
from gymnasium.envs.box2d.car_racing import CarRacing

from dreamenv import world_model as wm
from dreamenv.envs.spaces import action_space, check_action, observation_space
from dreamenv.frames import preprocess
from dreamenv.model import load_model
from dreamenv.vae import CPU_OPTIONS

OPTIONS = {**wm.SEQUENTIAL_CPU, **CPU_OPTIONS}  # one frame's encoder and memory step: one thread, no YNNPACK convs


@partial(jax.jit, static_argnames="obs", compiler_options=OPTIONS)
def _observe_real(model, carry, z, action, frame, obs):
    """Encode the new real frame [64, 64, 3] uint8; for "zh" advance the carry on (z_t, a_t).

    -> (carry', z_{t+1} [1, D], obs)
    """
    z_next = wm.encode(model, frame[None])
    if obs == "z":
        return carry, z_next, z_next[0]
    carry, head = wm.memory_step(model, carry, z, action[None])  # as the dream runs it
    return carry, z_next, wm.observe(model, z_next, head["h"], obs)[0]


@partial(jax.jit, static_argnames="obs", compiler_options=OPTIONS)
def _observe_first(model, frame, obs):
    """The first real frame: z_0 and a zero carry. -> (carry, z_0 [1, D], obs)"""
    z = wm.encode(model, frame[None])
    carry = model.mdnrnn.initial_carry(1)
    return carry, z, wm.observe(model, z, carry[1], obs)[0]


class RealObserver:
    """Raw CarRacing-v3 frames -> the dream's observations, for one episode at a time.

    `first(raw)` starts an episode (z_0, a zero carry); `next(action, raw)` takes the action just
    applied and the frame it led to. Shared by LatentCarRacing-v0 and anything else that runs a
    dream-trained agent on the real game (e.g. collecting rollouts with it).
    """

    def __init__(self, model: wm.WorldModel, obs: str):
        self.model, self.obs = model, obs
        self._carry = self._z = None  # "pixels" needs neither

    def first(self, raw: np.ndarray) -> np.ndarray:
        """raw uint8 [96, 96, 3] -> obs"""
        frame = preprocess(raw, self.model.frames)
        if self.obs == "pixels":
            return frame
        self._carry, self._z, obs = _observe_first(self.model, frame, obs=self.obs)
        return np.array(obs)

    def next(self, action: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """action float32 [3] (taken), raw uint8 [96, 96, 3] (the frame after it) -> obs"""
        frame = preprocess(raw, self.model.frames)
        if self.obs == "pixels":
            return frame
        self._carry, self._z, obs = _observe_real(self.model, self._carry, self._z, action, frame, obs=self.obs)
        return np.array(obs)


class LatentCarRacing(gym.Env):
    """Real CarRacing-v3 with DreamCarRacing-v0's observations.

    Args:
        obs: "z" | "zh" (default) | "pixels".
        model: a bundle folder, a `Bundle`, a `WorldModel`; None: the shipped bundle.
        render_mode: CarRacing-v3's ("human", "rgb_array", "state_pixels"): renders the real game.
        **kwargs: passed to CarRacing-v3 (domain_randomize, lap_complete_percent, ...).
    """

    metadata = CarRacing.metadata

    def __init__(self, obs="zh", model=None, render_mode=None, **kwargs):
        if not kwargs.pop("continuous", True):
            raise ValueError("LatentCarRacing-v0 needs continuous actions; drop continuous=False")
        self.model = load_model(model)
        self.observation_space = observation_space(self.model, obs)
        self.action_space = action_space()
        self.obs_mode = obs
        self.render_mode = render_mode
        self.car = CarRacing(render_mode=render_mode, **kwargs)  # CarRacing-v3, unwrapped
        self.observer = RealObserver(self.model, obs)
        self._needs_reset = True

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        raw, info = self.car.reset(seed=seed, options=options)
        self._needs_reset = False
        return self.observer.first(raw), info

    def step(self, action):
        if self._needs_reset:
            raise gym.error.ResetNeeded("LatentCarRacing: call reset() before step()")
        action = np.clip(check_action(action, (3,)), wm.ACTION_LOW, wm.ACTION_HIGH)
        raw, reward, terminated, truncated, info = self.car.step(action)
        return self.observer.next(action, raw), float(reward), terminated, truncated, info

    def render(self):
        return self.car.render()

    def close(self):
        self.car.close()
