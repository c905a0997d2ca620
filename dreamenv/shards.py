"""Rollout shards: one compressed `.npz` per real CarRacing-v3 episode.

A shard holds T steps, step-aligned with the action taken:

    obs         uint8   [T, 64, 64, 3]  preprocessed frame seen BEFORE action[t]
    action      float32 [T, 3]          steer [-1, 1], gas [0, 1], brake [0, 1]
    reward      float32 [T]             reward received after action[t]
    terminated  bool    [T]             only the last step may be True
    truncated   bool    [T]             only the last step may be True
    meta        str     []              JSON: seed, policy and its parameters, episode stats

Shards are written atomically (`dreamenv.atomic`), so a file named
`rollout_*.npz` is either complete or raises `ShardError` naming it when loaded.
Numpy only. The data format of training and evaluation: no environment reads shards; the
training code and the benchmarks do.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path
import numpy as np

from dreamenv.atomic import atomic_write

FRAME_SHAPE = (64, 64, 3)
ACTION_DIM = 3
SHARD_GLOB = "rollout_*.npz"
MANIFEST = "manifest.json"

# key -> (dtype, shape after the leading T)
FIELDS = {
    "obs": (np.uint8, FRAME_SHAPE),
    "action": (np.float32, (ACTION_DIM,)),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}


class ShardError(ValueError):
    """A shard (or manifest) file is missing fields, malformed, truncated or corrupted."""


def shard_name(episode: int) -> str:
    """Episode index -> its shard's file name, e.g. 7 -> 'rollout_000007.npz'."""
    if episode < 0:
        raise ValueError(f"episode index must be non-negative, got {episode}")
    return f"rollout_{episode:06d}.npz"


def list_shards(folder: str | os.PathLike) -> list[Path]:
    """The shard files in `folder`, sorted by name (temp files are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"shard folder {folder} does not exist; run `python -m train.collect`")
    return sorted(folder.glob(SHARD_GLOB))


def validate_episode(data: dict, where: str) -> int:
    """Check keys, dtypes, shapes and a shared T; returns T. Raises ShardError naming `where`."""
    missing = sorted(set(FIELDS) - set(data))
    if missing:
        raise ShardError(f"{where}: missing fields {missing}, expected {sorted(FIELDS)}")
    steps = len(data["action"]) if np.ndim(data["action"]) else 0
    if steps < 1:
        raise ShardError(f"{where}: holds no steps")
    for key, (dtype, shape) in FIELDS.items():
        value = data[key]
        if value.dtype != dtype or value.shape != (steps, *shape):
            raise ShardError(
                f"{where}: field '{key}' has dtype {value.dtype} and shape {value.shape}, "
                f"expected {np.dtype(dtype)} {(steps, *shape)}"
            )
    for key in ("terminated", "truncated"):
        if data[key][:-1].any():
            raise ShardError(f"{where}: '{key}' is set before the last step")
    return steps


def encode_shard(episode: dict, meta: dict, where: str = "shard") -> bytes:
    """Validate `episode` (the FIELDS arrays) -> the bytes of its shard file, with JSON `meta`."""
    validate_episode(episode, where)
    arrays = {key: episode[key] for key in FIELDS}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_shard(path: str | os.PathLike, episode: dict, meta: dict) -> None:
    """Validate `episode` (the FIELDS arrays) and write it with JSON `meta`, atomically."""
    write_shard_bytes(path, encode_shard(episode, meta, str(path)))


def write_shard_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a shard file's bytes (`encode_shard`) atomically."""
    atomic_write(path, lambda f: f.write(data))


def load_shard(path: str | os.PathLike) -> dict:
    """Load and validate one shard -> {FIELDS arrays..., 'meta': dict}. Raises ShardError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise ShardError(
            f"{path}: unreadable shard ({type(err).__name__}: {err}); it is truncated or "
            f"corrupted, delete it and rerun collection to redo it"
        ) from err
    validate_episode(data, str(path))
    data["meta"] = _parse_meta(data.get("meta"), path)
    return data


def _parse_meta(raw: np.ndarray | None, path: Path) -> dict:
    """The shard's JSON meta field -> dict ({} when absent)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: field 'meta' is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ShardError(f"{path}: field 'meta' is {type(meta).__name__}, expected a JSON object")
    return meta


def read_manifest(folder: str | os.PathLike) -> dict:
    """`folder/manifest.json` -> dict. Raises FileNotFoundError, or ShardError when corrupted."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: corrupted manifest ({err}); rerun collection to rebuild it") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ShardError(f"{path}: manifest has no 'shards' list; rerun collection to rebuild it")
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    """Write `folder/manifest.json` atomically."""
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(Path(folder) / MANIFEST, lambda f: f.write(text))
