"""The spaces and input checks that DreamCarRacing-v0, its vector form and LatentCarRacing-v0 share.

    action_space()                 CarRacing-v3's Box([-1, 0, 0], [1, 1, 1]) (world_model.ACTION_LOW/HIGH)
    observation_space(model, obs)  "z" [D], "zh" [D + H] or "pixels" [64, 64, 3] uint8
    check_action(a, shape)         -> float32 array of `shape`; ValueError for a wrong shape or NaN/inf
    check_temperature(τ)           -> float; ValueError unless a finite number >= 0
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from dreamenv import world_model as wm


def action_space() -> gym.spaces.Box:
    """CarRacing-v3's action space: steer [-1, 1], gas [0, 1], brake [0, 1]."""
    return gym.spaces.Box(wm.ACTION_LOW, wm.ACTION_HIGH, dtype=np.float32)


def observation_space(model: wm.WorldModel, obs: str) -> gym.spaces.Box:
    """The space of observation mode `obs`; the dream and the latent env share it."""
    d, h = model.latent_dim, model.hidden_size
    if obs == "z":
        return gym.spaces.Box(-wm.LATENT_BOUND, wm.LATENT_BOUND, (d,), np.float32)
    if obs == "zh":  # h = o ⊙ tanh(c) lies in [-1, 1]
        high = np.concatenate([np.full(d, wm.LATENT_BOUND), np.ones(h)]).astype(np.float32)
        return gym.spaces.Box(-high, high, dtype=np.float32)
    if obs == "pixels":
        size = model.frames.size
        return gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    raise ValueError(f"obs={obs!r} is unknown, expected one of {wm.OBS_MODES}")


def check_action(action, shape: tuple) -> np.ndarray:
    """-> action as float32 of `shape`; raises ValueError for a wrong shape or NaN/inf (no clipping)."""
    a = np.asarray(action)
    if a.shape != shape:
        raise ValueError(
            f"action has shape {a.shape}, expected {shape} (steer in [-1, 1], gas and brake in [0, 1])"
        )
    if a.dtype.kind not in "biuf" or not np.isfinite(a).all():
        raise ValueError(f"action {a.tolist()} is not all finite numbers; expected {shape} finite floats")
    return a.astype(np.float32, copy=False)


def check_temperature(temperature) -> float:
    """τ -> float; raises ValueError unless it is a finite number >= 0."""
    number = isinstance(temperature, (int, float, np.number))
    if not (number and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return float(temperature)
