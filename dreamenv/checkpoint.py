"""Model bundles: everything `dreamenv` needs to run a world model, in one folder.

    <bundle>/config.json     format version, VAE + MDN-RNN + frame configs, params checksum,
                             storage dtype, metadata (data size, metrics, command, commit)
    <bundle>/params.msgpack  flax-serialized {"vae": ..., "mdnrnn": ..., "start_latents": [N, D]}

A bundle is written into a temp folder and swapped into place, so a reader never sees a
half-written one. Loading validates the version, the checksum and every array's shape
against the modules the config rebuilds, and raises `BundleError` naming the path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from dreamenv.frames import FrameConfig
from dreamenv.mdnrnn import MDNRNN
from dreamenv.vae import VAE

# 5: the MDN-RNN config may set `sample_flag`; 4: its LSTM and head are one matrix each (3: flax's
# LSTMCell, 5 head layers). 4 reads as 5 without the flag; 3 is converted on load (`fuse_v3_mdnrnn`).
FORMAT_VERSION = 6
READABLE_VERSIONS = (3, 4, 5, 6)  # 2 had no `residual` field; 6 added the MDN-RNN's `reward_input`
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
STORAGE_DTYPES = ("float32", "float16")


class BundleError(ValueError):
    """A model bundle is missing, corrupted or inconsistent; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A trained (or random) world model: V and M, their params, and real start latents."""

    vae: VAE
    mdnrnn: MDNRNN
    frames: FrameConfig
    vae_params: Any
    mdnrnn_params: Any
    start_latents: np.ndarray  # [N, latent_dim] float32: encoded real first frames
    metadata: dict = dataclasses.field(default_factory=dict)


def module_config(module) -> dict:
    """A flax module's own fields (the hyperparameters that rebuild it) as a JSON-able dict."""
    skip = {"parent", "name"}
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip}


def init_params(vae: VAE, mdnrnn: MDNRNN, key) -> tuple[Any, Any]:
    """Fresh random params for both models."""
    k_vae, k_mdn, k_sample = jax.random.split(key, 3)
    frames = jnp.zeros((1, 64, 64, 3), jnp.float32)
    vae_params = vae.init(k_vae, frames, k_sample)
    z = jnp.zeros((1, 1, mdnrnn.latent_dim), jnp.float32)
    a = jnp.zeros((1, 1, mdnrnn.action_dim), jnp.float32)
    mdn_params = mdnrnn.init(k_mdn, mdnrnn.initial_carry(1), z, a, prev_reward=jnp.zeros((1, 1), jnp.float32))
    return vae_params, mdn_params


def random_bundle(key, vae: VAE = VAE(), mdnrnn: MDNRNN = MDNRNN(), n_start: int = 16) -> Bundle:
    """An untrained bundle (random weights, random start latents) for tests and smoke runs."""
    k_params, k_start = jax.random.split(key)
    vae_params, mdn_params = init_params(vae, mdnrnn, k_params)
    start = np.asarray(jax.random.normal(k_start, (n_start, mdnrnn.latent_dim)), np.float32)
    return Bundle(vae, mdnrnn, FrameConfig(), vae_params, mdn_params, start, {"trained": False})


def _to_numpy(tree, dtype):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=dtype), tree)


def save_bundle(path: str | Path, bundle: Bundle, dtype: str = "float32") -> Path:
    """Write `bundle` to folder `path` atomically (replacing any bundle there).

    dtype: "float32", or "float16" to halve the size (loaded back as float32).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"bundle storage dtype {dtype!r} is unknown, expected one of {STORAGE_DTYPES}")
    path = Path(path)
    start = np.asarray(bundle.start_latents, np.float32)
    if start.ndim != 2 or start.shape[1] != bundle.mdnrnn.latent_dim:
        raise ValueError(
            f"start_latents has shape {start.shape}, expected [N, {bundle.mdnrnn.latent_dim}]"
        )
    payload = serialization.msgpack_serialize(
        {
            "vae": _to_numpy(bundle.vae_params, dtype),
            "mdnrnn": _to_numpy(bundle.mdnrnn_params, dtype),
            "start_latents": start,
        }
    )
    config = {
        "format_version": FORMAT_VERSION,
        "vae": module_config(bundle.vae),
        "mdnrnn": module_config(bundle.mdnrnn),
        "frames": dataclasses.asdict(bundle.frames),
        "params_dtype": dtype,
        "params_sha256": hashlib.sha256(payload).hexdigest(),
        "num_start_latents": int(start.shape[0]),
        "metadata": bundle.metadata,
    }
    config_text = json.dumps(config, indent=2, sort_keys=True)  # fails here, before any write

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / PARAMS_FILE).write_bytes(payload)
        (tmp / CONFIG_FILE).write_text(config_text)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.replace(old / path.name)
        tmp.replace(path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise BundleError(
            f"model bundle not found at {path}: expected a folder with {CONFIG_FILE} and "
            f"{PARAMS_FILE} (build one with `python -m train.pipeline`, or pass model=PATH)"
        )
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (path / name).is_file():
            raise BundleError(f"model bundle {path} is incomplete: {name} is missing")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"model bundle {path}: {CONFIG_FILE} is not valid JSON ({e})") from e
    version = config.get("format_version") if isinstance(config, dict) else None
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"model bundle {path} has format version {version!r}; this dreamenv reads "
            f"versions {READABLE_VERSIONS} (re-export it with a matching dreamenv)"
        )
    return config


def _build(path: Path, cls, fields: dict):
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise BundleError(f"model bundle {path}: bad {cls.__name__} config {fields}: {e}") from e


def _check_shapes(path: Path, what: str, expected, got):
    flat_exp = traverse_util.flatten_dict(serialization.to_state_dict(expected), sep="/")
    flat_got = traverse_util.flatten_dict(got, sep="/") if isinstance(got, dict) else {}
    if set(flat_exp) != set(flat_got):
        missing = sorted(set(flat_exp) - set(flat_got))[:3]
        extra = sorted(set(flat_got) - set(flat_exp))[:3]
        raise BundleError(
            f"model bundle {path}: {what} params do not match its config "
            f"(missing {missing}, unexpected {extra})"
        )
    for name, spec in flat_exp.items():
        shape = np.shape(flat_got[name])
        if shape != spec.shape:
            raise BundleError(
                f"model bundle {path}: {what} param {name} has shape {shape}, "
                f"expected {spec.shape} from its config"
            )


def fuse_v3_mdnrnn(path: Path, tree) -> dict:
    """Format-3 MDN-RNN params (flax LSTMCell's ii..io / hi..ho, head layers pi, mu, sigma, reward,
    done) -> format 4's fused `lstm/kernel`, `lstm/bias`, `head/out`. Exact: the same function."""
    try:
        lstm, head = tree["params"]["cell"]["lstm"], tree["params"]["cell"]["head"]
        gates = "ifgo"  # flax's order, and LSTMCell's split
        kernel = np.concatenate([np.concatenate([lstm[f"i{g}"]["kernel"], lstm[f"h{g}"]["kernel"]]) for g in gates], 1)
        bias = np.concatenate([lstm[f"h{g}"]["bias"] for g in gates])
        parts = ("pi", "mu", "sigma", "reward", "done")  # head_layout's column order
        out = {n: np.concatenate([head[p][n] for p in parts], axis=-1) for n in ("kernel", "bias")}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"model bundle {path}: format-3 MDN-RNN params are incomplete ({e!r})") from e
    return {"params": {"cell": {"lstm": {"kernel": kernel, "bias": bias}, "head": {"out": out}}}}


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle folder; params come back as float32 numpy arrays."""
    path = Path(path)
    config = _read_config(path)
    payload = (path / PARAMS_FILE).read_bytes()
    if hashlib.sha256(payload).hexdigest() != config.get("params_sha256"):
        raise BundleError(
            f"model bundle {path}: {PARAMS_FILE} is truncated or corrupted "
            f"(checksum differs from {CONFIG_FILE}; {len(payload)} bytes)"
        )
    try:
        tree = serialization.msgpack_restore(payload)
    except Exception as e:  # msgpack raises several unrelated types
        raise BundleError(f"model bundle {path}: cannot decode {PARAMS_FILE} ({e})") from e
    if not isinstance(tree, dict) or set(tree) != {"vae", "mdnrnn", "start_latents"}:
        raise BundleError(f"model bundle {path}: {PARAMS_FILE} lacks vae/mdnrnn/start_latents")

    if config["format_version"] == 3:
        tree["mdnrnn"] = fuse_v3_mdnrnn(path, tree["mdnrnn"])
    vae = _build(path, VAE, config.get("vae", {}))
    mdnrnn = _build(path, MDNRNN, config.get("mdnrnn", {}))
    frames = _build(path, FrameConfig, config.get("frames", {}))
    expected_vae, expected_mdn = jax.eval_shape(lambda: init_params(vae, mdnrnn, jax.random.key(0)))
    _check_shapes(path, "VAE", expected_vae, tree["vae"])
    _check_shapes(path, "MDN-RNN", expected_mdn, tree["mdnrnn"])
    start = np.asarray(tree["start_latents"], np.float32)
    if start.ndim != 2 or start.shape[1] != mdnrnn.latent_dim or len(start) == 0:
        raise BundleError(
            f"model bundle {path}: start_latents has shape {start.shape}, "
            f"expected [N > 0, {mdnrnn.latent_dim}]"
        )
    as_f32 = lambda t: _to_numpy(t, np.float32)
    return Bundle(
        vae=vae,
        mdnrnn=mdnrnn,
        frames=frames,
        vae_params=as_f32(tree["vae"]),
        mdnrnn_params=as_f32(tree["mdnrnn"]),
        start_latents=start,
        metadata=config.get("metadata", {}),
    )
