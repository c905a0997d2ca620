"""Model bundles: everything `dreamenv` needs to run a world model, in one folder.

    <bundle>/config.json     format version, VAE + MDN-RNN + frame configs, params checksum,
                             storage dtype, metadata (flat and small: data size, metrics, and the
                             command and commit that built it)
    <bundle>/params.msgpack  flax-serialized {"vae": ..., "mdnrnn": ..., "start_latents": [N, D]}

A bundle is written into a temp folder and swapped into place, so a reader never sees a
half-written one. Loading validates the version, the checksum and every array's shape
against the modules the config rebuilds, and raises `BundleError` naming the path. There is one
format, FORMAT_VERSION; a bundle of another version raises `BundleError` saying how to rebuild it.
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

# 7: the plain MDN-RNN (fused LSTM kernel, one head layer) and the paper's VAE, nothing else. Versions
# 3-6 held model variants that no environment runs (see docs/RESULTS.md, "Removed experiments").
FORMAT_VERSION = 7
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
STORAGE_DTYPES = ("float32", "float16")
METADATA_LIMIT = 5 * 1024  # bytes of JSON: provenance is a commit, a command and a checksum, not a parent's record


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
    mdn_params = mdnrnn.init(k_mdn, mdnrnn.initial_carry(1), z, a)
    return vae_params, mdn_params


def random_bundle(key, vae: VAE = VAE(), mdnrnn: MDNRNN = MDNRNN(), n_start: int = 16) -> Bundle:
    """An untrained bundle (random weights, random start latents) for tests and smoke runs."""
    k_params, k_start = jax.random.split(key)
    vae_params, mdn_params = init_params(vae, mdnrnn, k_params)
    start = np.asarray(jax.random.normal(k_start, (n_start, mdnrnn.latent_dim)), np.float32)
    return Bundle(vae, mdnrnn, FrameConfig(), vae_params, mdn_params, start, {"trained": False})


def check_metadata(metadata: dict) -> str:
    """-> metadata as JSON; ValueError unless it is flat (values: scalars, or lists/dicts of scalars)
    and at most METADATA_LIMIT bytes."""
    scalar = lambda v: v is None or isinstance(v, (bool, int, float, str))
    for key, value in metadata.items():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        if not all(scalar(v) for v in items):
            raise ValueError(f"bundle metadata[{key!r}] nests deeper than one level; keep metadata flat "
                             f"(scalars, or lists/dicts of scalars)")
    text = json.dumps(metadata, sort_keys=True)
    if len(text) > METADATA_LIMIT:
        raise ValueError(f"bundle metadata is {len(text)} bytes of JSON, expected at most {METADATA_LIMIT}")
    return text


def _to_numpy(tree, dtype):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=dtype), tree)


def save_bundle(path: str | Path, bundle: Bundle, dtype: str = "float32") -> Path:
    """Write `bundle` to folder `path` atomically (replacing any bundle there).

    dtype: "float32", or "float16" to halve the size (loaded back as float32).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"bundle storage dtype {dtype!r} is unknown, expected one of {STORAGE_DTYPES}")
    path = Path(path)
    check_metadata(bundle.metadata)
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
    if version != FORMAT_VERSION:
        raise BundleError(
            f"model bundle {path} has format version {version!r}; this dreamenv reads version "
            f"{FORMAT_VERSION} only: rebuild it with `python -m train.pipeline --out DIR` "
            f"(or load it with the dreamenv release that wrote it)"
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
