"""Evaluate an agent on the real game and in the dream; shared by the trainers and the benchmarks.

    scores = evaluate_real("runs/agent/agent.zip", "runs/bundle", episodes=100, seed=0, workers=2)
    scores = evaluate_dream("runs/controller/controller.npz", "runs/bundle", episodes=100, temperature=1.15)

An agent is a file: an SB3 .zip (PPO or SAC, loaded on the CPU, deterministic actions) or a
controller .npz (`train.controller_policy`, trained by `train.controller`). Its observation mode
("z" | "zh" | "pixels") is read off its observation shape. Real episodes run on LatentCarRacing-v0
(the real CarRacing-v3, real rewards, 1000-step episodes unless max_steps says otherwise); episode
i is reset with seed + i, so the scores are reproducible and the same for any number of workers.
Workers are 'spawn' subprocesses (JAX does not survive fork) with one torch thread each;
`RealEvaluator` keeps them alive between evaluations. backend="ray" runs the real episodes as Ray
tasks instead (train/ray_backend.py: a local Ray instance, or the cluster at `address`), with the
same seeds and so the same scores. Dream episodes run all at once in one DreamVectorEnv.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable

import gymnasium as gym
import jax
import numpy as np

from dreamenv import MAX_EPISODE_STEPS  # importing dreamenv registers LatentCarRacing-v0
from dreamenv import world_model as wm
from dreamenv.atomic import atomic_write
from dreamenv.envs.spaces import observation_space
from dreamenv.envs.vector import DreamVectorEnv
from dreamenv.model import load_model
from train import controller_policy

VIDEO_FPS = 25  # every 2nd frame of CarRacing-v3's 50


@dataclasses.dataclass
class Policy:
    """An agent as actions [B, 3] = act(obs [B, ...]), with the observation mode it reads."""

    act: Callable[[np.ndarray], np.ndarray]
    obs: str


def sb3_class(path: Path):
    """The SB3 algorithm (PPO or SAC) that saved the agent .zip at `path`."""
    from stable_baselines3 import PPO, SAC  # torch only for SB3 agents

    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not an SB3 agent .zip ({err})") from err
    if "clip_range" in data:
        return PPO
    if "target_entropy" in data:
        return SAC
    raise ValueError(f"{path} was saved by an SB3 algorithm other than PPO or SAC")


def obs_mode(model: wm.WorldModel, shape: tuple, path: Path) -> str:
    """The observation mode whose space has `shape` for this model."""
    for mode in wm.OBS_MODES:
        if observation_space(model, mode).shape == tuple(shape):
            return mode
    wanted = {m: observation_space(model, m).shape for m in wm.OBS_MODES}
    raise ValueError(f"agent {path} reads observations of shape {tuple(shape)}, but this world model's "
                     f"are {wanted}: it was trained with another model")


def load_policy(path, model: wm.WorldModel) -> Policy:
    """An SB3 .zip or a controller .npz -> Policy (deterministic) for `model`'s observations."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"agent {path} does not exist; expected an SB3 .zip or a controller .npz")
    if path.suffix == ".zip":
        agent = sb3_class(path).load(path, device="cpu")
        return Policy(lambda o: agent.predict(o, deterministic=True)[0],
                      obs_mode(model, agent.observation_space.shape, path))
    if path.suffix == ".npz":
        params = jax.device_put(controller_policy.load_controller(path))
        act = jax.jit(controller_policy.act)
        return Policy(lambda o: np.asarray(act(params, o)), obs_mode(model, params["W"].shape[:1], path))
    raise ValueError(f"agent {path} is neither an SB3 .zip nor a controller .npz")


def play(env: gym.Env, policy: Policy, seed: int, frames: list | None = None) -> float:
    """One episode reset with `seed` -> its return; appends half-size rendered frames to `frames`."""
    obs, _ = env.reset(seed=seed)
    total, done, t = 0.0, False, 0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs[None])[0])
        total, done, t = total + reward, terminated or truncated, t + 1
        if frames is not None and t % 2 == 0:
            frames.append(env.render()[::2, ::2])
    return total


class EpisodeRunner:
    """Real episodes in this process: one LatentCarRacing-v0 per observation mode, agents cached by file version."""

    def __init__(self, model=None, max_steps: int | None = None, render_mode: str | None = None):
        self.model = load_model(model)
        self.max_steps, self.render_mode = max_steps, render_mode
        self._envs, self._policy = {}, (None, None)

    def policy(self, path) -> Policy:
        stat = os.stat(path)  # a trainer overwrites its agent file between evaluations
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._policy[0] != key:
            self._policy = (key, load_policy(path, self.model))
        return self._policy[1]

    def env(self, obs: str) -> gym.Env:
        if obs not in self._envs:
            self._envs[obs] = gym.make("LatentCarRacing-v0", obs=obs, model=self.model,
                                       max_episode_steps=self.max_steps, render_mode=self.render_mode)
        return self._envs[obs]

    def __call__(self, path, seed: int, frames: list | None = None) -> float:
        policy = self.policy(path)
        return play(self.env(policy.obs), policy, seed, frames)


_RUNNER: EpisodeRunner | Exception | None = None  # a worker subprocess's


def _start_worker(model, max_steps):
    global _RUNNER
    os.environ["OMP_NUM_THREADS"] = "1"  # torch's thread count, read when SB3 first imports it
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # faster single-env stepping
    try:
        _RUNNER = EpisodeRunner(model, max_steps)
    except Exception as err:  # raised by the tasks instead: a Pool respawns failing initializers forever
        _RUNNER = err


def _worker_episode(path, seed):
    if isinstance(_RUNNER, Exception):
        raise _RUNNER
    return _RUNNER(path, seed)


BACKENDS = ("pool", "ray")


class RealEvaluator:
    """Real-game scores of agents, in `workers` spawn subprocesses (0: in this process).

    model: a bundle path, Bundle, WorldModel or None (shipped); max_steps: episode length
    (None: CarRacing-v3's 1000). backend="ray": Ray tasks instead, `workers` of them in flight
    (0: one per cluster CPU), on the cluster at `address` (None: a local Ray instance).
    Reusable for many agents; close() (or `with`) ends the workers.
    """

    def __init__(self, model=None, workers: int = 2, max_steps: int | None = None, backend: str = "pool",
                 address: str | None = None):
        if not (isinstance(workers, int) and workers >= 0):
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if address is not None and backend != "ray":
            raise ValueError(f"address is for backend='ray' only, got backend={backend!r}")
        self._pool = self._runner = self._ray = None
        if backend == "ray":
            from train.ray_backend import RayEpisodes

            self._ray = RayEpisodes(model, max_steps, workers, address)
        elif workers:
            self._pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_start_worker, initargs=(model, max_steps))
        else:
            self._runner = EpisodeRunner(model, max_steps)

    def __call__(self, path, episodes: int, seed: int = 0) -> list[float]:
        """Returns of `episodes` real episodes of the agent at `path`, episode i reset with seed + i."""
        if not (isinstance(episodes, int) and episodes >= 1):
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"agent {path} does not exist; expected an SB3 .zip or a controller .npz")
        seeds = [seed + i for i in range(episodes)]
        if self._ray is not None:
            return self._ray(path, seeds)
        if self._pool is None:
            return [float(self._runner(path, s)) for s in seeds]
        return [float(r) for r in self._pool.map(partial(_worker_episode, str(path)), seeds, chunksize=1)]

    def close(self):
        if self._ray is not None:
            self._ray.close()
            self._ray = None
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is not None and self._pool is not None:
            self._pool.terminate()
        self.close()


def evaluate_real(agent_path, model=None, episodes: int = 10, seed: int = 0, workers: int = 2,
                  max_steps: int | None = None, backend: str = "pool", address: str | None = None) -> list[float]:
    """Per-episode returns of the agent on `episodes` real CarRacing-v3 episodes (seeds seed + i);
    backend="ray": as Ray tasks (see RealEvaluator), the same returns."""
    with RealEvaluator(model, workers, max_steps, backend, address) as evaluate:
        return evaluate(agent_path, episodes, seed)


def evaluate_dream(agent_path, model=None, episodes: int = 100, seed: int = 0, temperature: float = 1.0,
                   max_steps: int | None = None) -> list[float]:
    """Per-episode returns of the agent on `episodes` dream episodes at τ = temperature, run in parallel."""
    if not (isinstance(episodes, int) and episodes >= 1):
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    model = load_model(model)
    policy = load_policy(agent_path, model)
    venv = DreamVectorEnv(episodes, obs=policy.obs, temperature=temperature, model=model,
                          max_episode_steps=max_steps or MAX_EPISODE_STEPS)
    obs, _ = venv.reset(seed=seed)
    returns, alive = np.zeros(episodes), np.ones(episodes, bool)  # [N]
    while alive.any():
        obs, reward, terminated, truncated, _ = venv.step(policy.act(obs))
        returns += np.where(alive, reward, 0.0)
        alive &= ~(terminated | truncated)
    return returns.tolist()


def record_video(agent_path, model, path, seed: int = 0, max_steps: int | None = None) -> float:
    """Record one real episode (reset with `seed`) to `path` (.gif; .mp4 needs imageio's ffmpeg
    plugin) at half size and 25 fps, written atomically. -> the episode's return."""
    import imageio.v3 as iio

    path, frames = Path(path), []
    score = EpisodeRunner(model, max_steps, render_mode="rgb_array")(agent_path, seed, frames)
    kwargs = {"duration": 1000 / VIDEO_FPS, "loop": 0} if path.suffix == ".gif" else {"fps": VIDEO_FPS}
    data = iio.imwrite("<bytes>", np.stack(frames), extension=path.suffix, **kwargs)
    atomic_write(path, lambda f: f.write(data))
    return score


def summary(returns: list[float]) -> dict:
    """{"returns", "mean", "std", "episodes"} of per-episode returns."""
    return {"returns": [float(r) for r in returns], "mean": float(np.mean(returns)),
            "std": float(np.std(returns)), "episodes": len(returns)}
