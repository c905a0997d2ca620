"""A finished VAE run's artifacts, what later stages (encode, MDN-RNN, bundle) load:

    <run>/vae_config.json   {"vae": VAE fields, "frames": FrameConfig fields}
    <run>/vae.msgpack       flax-serialized VAE params

Both are written atomically, params first, so a config always points at complete params.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import serialization

from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import module_config
from dreamenv.frames import FrameConfig
from dreamenv.vae import VAE
from train.trainstate import check_shapes

CONFIG_FILE = "vae_config.json"
PARAMS_FILE = "vae.msgpack"


def save_vae_run(folder: str | os.PathLike, vae: VAE, params: Any, frames: FrameConfig = FrameConfig()) -> None:
    """Write the VAE's params and the config that rebuilds it into `folder`."""
    folder = Path(folder)
    atomic_write_bytes(folder / PARAMS_FILE, serialization.to_bytes(jax.device_get(params)))
    config = {"vae": module_config(vae), "frames": dataclasses.asdict(frames)}
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True).encode())


def load_vae_config(folder: str | os.PathLike) -> tuple[VAE, FrameConfig]:
    """Rebuild the VAE module and its frame preprocessing from `folder`'s config."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train the VAE first (`python -m train.vae --out {folder}`)")
    try:
        config = json.loads(path.read_text())
        return VAE(**config["vae"]), FrameConfig(**config["frames"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: corrupted VAE config ({type(err).__name__}: {err})") from err


def load_vae_run(folder: str | os.PathLike) -> tuple[VAE, Any]:
    """-> (VAE module, params as numpy) from a run folder; checks params against the config."""
    vae, _ = load_vae_config(folder)
    path = Path(folder) / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the VAE run in {folder} did not finish")
    template = jax.eval_shape(
        lambda: vae.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jax.random.key(1))
    )
    try:
        params = serialization.from_bytes(template, path.read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable VAE params ({err}); rerun `python -m train.vae`") from err
    check_shapes(template, params, path)
    return vae, params
