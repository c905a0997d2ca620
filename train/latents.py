"""Latent rollouts: the VAE-encoded form of rollout shards that the MDN-RNN trains on.

One `.npz` per rollout, named like its source shard, in a latent folder:

    mu, logvar  float32 [T, D]   the encoder's posterior for each frame
    action      float32 [T, A]   action taken after seeing frame t
    reward      float32 [T]      reward received after action t
    done        bool    [T]      true terminal step (not time-limit truncation)
    vae         str     []       fingerprint of the VAE that encoded it
    policy      str     []       the policy that drove the rollout (`train.policies.episode_policy`)

Training samples z ~ N(mu, σ²) afresh each time, which regularises the RNN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
from flax import serialization

from dreamenv.atomic import atomic_write
from dreamenv.checkpoint import module_config

FIELDS = ("mu", "logvar", "action", "reward", "done")


class LatentError(ValueError):
    """A latent file is unreadable, malformed, or was encoded by a different VAE."""


def vae_fingerprint(vae, params) -> str:
    """A short hash of a VAE's config and params: latents from different VAEs never mix."""
    h = hashlib.sha256(json.dumps(module_config(vae), sort_keys=True).encode())
    h.update(serialization.msgpack_serialize(serialization.to_state_dict(params)))
    return h.hexdigest()[:16]


def write_latents(path: Path, arrays: dict, fingerprint: str, policy: str) -> None:
    """Write one rollout's latent arrays (FIELDS), its VAE fingerprint and driving policy atomically."""
    data = {k: np.asarray(arrays[k]) for k in FIELDS}
    data["vae"], data["policy"] = np.array(fingerprint), np.array(policy)
    atomic_write(path, lambda f: np.savez(f, **data))


def _read_field(path: Path, key: str) -> str | None:
    """One string field of a latent file, or None if the file is unreadable or lacks it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz[key])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError):
        return None


def read_policy(path: Path) -> str | None:
    """The driving policy recorded in a latent file, or None if unreadable or not recorded."""
    return _read_field(path, "policy")


def read_fingerprint(path: Path) -> str | None:
    """The VAE fingerprint stored in a latent file, or None if the file is unreadable or records no
    driving policy (written before policies were recorded): either way it must be re-encoded."""
    return _read_field(path, "vae") if read_policy(path) is not None else None


def load_latents(path: Path, fingerprint: str | None = None) -> dict:
    """Load and check one latent file -> {FIELDS..., "policy": str}; `fingerprint` must match if given."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in (*FIELDS, "vae")}
            policy = str(npz["policy"]) if "policy" in npz.files else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise LatentError(f"{path}: unreadable latent file ({type(err).__name__}: {err}); "
                          f"rerun `python -m train.encode`") from err
    if policy is None:
        raise LatentError(f"{path}: no driving policy recorded (encoded before policies were); "
                          f"rerun `python -m train.encode` to re-encode it")
    if fingerprint is not None and str(data["vae"]) != fingerprint:
        raise LatentError(f"{path}: encoded by VAE {data['vae']}, expected {fingerprint}; "
                          f"rerun `python -m train.encode` to re-encode with the current VAE")
    steps = len(data["reward"])
    if data["mu"].shape != data["logvar"].shape or len(data["mu"]) != steps or len(data["action"]) != steps:
        raise LatentError(f"{path}: fields disagree on the number of steps")
    return {**{k: data[k] for k in FIELDS}, "policy": policy}


@dataclasses.dataclass
class LatentSet:
    """Rollouts padded to one length, for on-device window sampling.

    mu, logvar [N, Tmax, D]; action [N, Tmax, A]; reward, done [N, Tmax]; length [N];
    names, policies [N] (file stem, driving policy).
    """

    mu: np.ndarray
    logvar: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    length: np.ndarray
    names: list
    policies: list

    @classmethod
    def from_files(cls, paths: list[Path], fingerprint: str | None = None) -> "LatentSet":
        """Load `paths`, each checked against `fingerprint`; LatentError for a bad file or none."""
        if not paths:
            raise LatentError("no latent files given; run `python -m train.encode` first")
        rollouts = [load_latents(p, fingerprint) for p in paths]
        tmax = max(len(r["reward"]) for r in rollouts)

        def pad(key):
            first = rollouts[0][key]
            out = np.zeros((len(rollouts), tmax, *first.shape[1:]), first.dtype)
            for i, r in enumerate(rollouts):
                out[i, : len(r[key])] = r[key]
            return out

        lengths = np.array([len(r["reward"]) for r in rollouts], np.int32)
        return cls(*(pad(k) for k in FIELDS), length=lengths, names=[p.stem for p in paths],
                   policies=[r["policy"] for r in rollouts])

    @property
    def steps(self) -> int:
        return int(self.length.sum())
