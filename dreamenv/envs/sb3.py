"""Stable-Baselines3 adapter: the batched dream as one SB3 `VecEnv` (no N Python envs).

    from dreamenv.envs.sb3 import DreamSB3VecEnv
    venv = DreamSB3VecEnv(num_envs=64, model="runs/bundle", obs="zh")
    PPO("MlpPolicy", venv).learn(1_000_000)

SB3 is a training extra: import this module only when you need it (`import dreamenv` doesn't).
SB3 resets an env in the step that ends it, so the vector env runs with SAME_STEP autoreset; the
final observation is in infos[i]["terminal_observation"] and infos[i]["TimeLimit.truncated"]
says the episode was cut by the time limit, as in SB3's DummyVecEnv.
"""

from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from dreamenv.envs.vector import DreamVectorEnv


class DreamSB3VecEnv(VecEnv):
    """DreamVectorEnv(num_envs, **kwargs) behind SB3's VecEnv API; kwargs as for DreamCarRacing-v0."""

    def __init__(self, num_envs: int, **kwargs):
        if "autoreset_mode" in kwargs:
            raise ValueError("DreamSB3VecEnv sets autoreset_mode itself (SB3 needs SAME_STEP); drop it")
        self.venv = DreamVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions = None

    def reset(self):
        seeds = None if all(s is None for s in self._seeds) else self._seeds
        if seeds is not None and any(s is None for s in seeds):
            raise ValueError(f"seed every env or none of them, got seeds {seeds}")
        if any(self._options):
            raise ValueError(f"DreamCarRacing-v0 takes no reset options, got {self._options}")
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self):
        frames = self.venv.render()  # None (with a warning) unless render_mode="rgb_array"
        return [None] * self.num_envs if frames is None else list(frames)

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None):
        raise AttributeError(f"DreamSB3VecEnv's envs share one batched dream; no per-env {attr_name!r}")

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        raise AttributeError(f"DreamSB3VecEnv's envs share one batched dream; no per-env {method_name!r}")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))
