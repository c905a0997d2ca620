"""The paper's linear controller C as a policy: its parameters, its actions and its .npz file.

    params = init_params(obs_dim)                  # {"W": [D, 3], "b": [3]}, the zero controller
    actions = act(params, obs)                     # obs [B, D] -> actions [B, 3]
    save_controller("runs/controller/controller.npz", params)
    params = load_controller("runs/controller/controller.npz")

Shared by the trainer (`train.controller`, CMA-ES in the dream) and the evaluators
(`train.evaluate`, `train.policies`), which import this module and not each other.

Contract:
- Parameters are a dict {"W": [D, 3], "b": [3]} of floats, D the observation size (e.g. 288 for
  the shipped model's "zh" = [z, h], 32 for "z"); any pytree with these leaves (jax or numpy) works.
- act: a = squash(obs W + b) with steer = tanh, gas and brake = (tanh + 1) / 2, so every action lies
  in CarRacing-v3's Box([-1, 0, 0], [1, 1, 1]). obs [B, D] float -> [B, 3] float32 (a jax array);
  pure and jittable (`jax.jit(act)`), vmappable over stacked parameters (leaves [P, ...]).
- save_controller(path, params) writes an uncompressed .npz with arrays "W" and "b", atomically
  (temp file + rename), and returns the path.
- load_controller(path) -> {"W": [D, 3], "b": [3]} as float32 numpy arrays. Errors: ValueError
  naming the file when its arrays are not exactly W [D, 3] and b [3]; the OSError / ValueError of
  `np.load` for a missing or unreadable file.
"""

from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dreamenv.atomic import atomic_write_bytes

ACTION_DIM = 3  # steer, gas, brake


def init_params(obs_dim: int) -> dict:
    """Zero controller: steer 0, gas and brake 0.5. {"W": [D, 3], "b": [3]}"""
    return {"W": jnp.zeros((obs_dim, ACTION_DIM)), "b": jnp.zeros(ACTION_DIM)}


def act(params: dict, obs):
    """obs [B, D] -> actions [B, 3] inside CarRacing-v3's action space."""
    y = jnp.tanh(obs @ params["W"] + params["b"])  # [B, 3]
    return jnp.concatenate([y[:, :1], (y[:, 1:] + 1.0) / 2.0], axis=-1)


def save_controller(path, params: dict) -> Path:
    """Write params ({"W", "b"}) to the .npz at `path`, atomically. -> the path."""
    buf = io.BytesIO()
    np.savez(buf, **jax.device_get(params))
    return atomic_write_bytes(path, buf.getvalue())


def load_controller(path) -> dict:
    """A controller .npz -> {"W": [D, 3], "b": [3]} float32; ValueError naming what is wrong."""
    with np.load(path) as f:
        params = {k: f[k].astype(np.float32) for k in f.files}
    if set(params) != {"W", "b"} or params["W"].ndim != 2 or params["W"].shape[1:] != (ACTION_DIM,) \
            or params["b"].shape != (ACTION_DIM,):
        shapes = {k: v.shape for k, v in params.items()}
        raise ValueError(f"{path} is not a controller: arrays {shapes}, expected W [D, 3] and b [3]")
    return params
