"""Encode rollout shards into latent rollouts: `python -m train.encode` (`EncodeConfig`).

Runs the trained VAE's encoder (batched, jitted) over every shard in --data and writes one
latent file per rollout into --out (`train.latents`: mu, logvar, action, reward, done, the VAE's
fingerprint and the policy that drove the rollout). Reruns skip rollouts already encoded by the
same VAE; files encoded by a different VAE, or recording no policy, are re-encoded (and counted),
never mixed in.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from dreamenv.frames import to_float
from dreamenv.shards import list_shards, load_shard
from dreamenv.vae import VAE, jit_options
from train.config import cli, require
from train.latents import read_fingerprint, vae_fingerprint, write_latents
from train.policies import episode_policy
from train.vae_run import load_vae_run


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
    """Encode every rollout shard not yet encoded by this VAE into one latent file per rollout."""

    data: Path = Path("data/rollouts")
    """rollout shard folder (train.collect --out)"""
    vae: Path = Path("runs/vae")
    """VAE run folder (train.vae --out)"""
    out: Path = Path("data/latents")
    """latent folder"""
    batch_size: int = 250
    """frames per encoder call"""

    def __post_init__(self):
        require(self, batch_size=(self.batch_size >= 1, ">= 1"))


def make_encoder(vae: VAE, params, batch_size: int):
    """-> encode(obs uint8 [T, 64, 64, 3]) -> (mu, logvar) float32 [T, D], in fixed-size batches
    (the last one padded) so the jitted encoder compiles once."""
    fn = jax.jit(lambda p, x: vae.apply(p, x, direct=True, method=VAE.encode), compiler_options=jit_options())
    params = jax.device_put(params)

    def encode(obs: np.ndarray):
        mus, logvars = [], []
        for lo in range(0, len(obs), batch_size):
            chunk = to_float(obs[lo : lo + batch_size])
            n = len(chunk)
            chunk = np.pad(chunk, ((0, batch_size - n), (0, 0), (0, 0), (0, 0)))
            mu, logvar = jax.device_get(fn(params, chunk))
            mus.append(mu[:n])
            logvars.append(logvar[:n])
        return np.concatenate(mus), np.concatenate(logvars)

    return encode


def run(config: EncodeConfig) -> dict:
    """Encode every shard of config.data not yet encoded by this VAE -> counts {encoded, skipped, replaced, vae}."""
    data, out, batch_size = config.data, config.out, config.batch_size
    vae, params = load_vae_run(config.vae)
    fingerprint = vae_fingerprint(vae, params)
    encode = make_encoder(vae, params, batch_size)
    counts = dict(encoded=0, skipped=0, replaced=0)
    shards = list_shards(data)
    if not shards:
        raise SystemExit(f"no rollout shards in {data}; run `python -m train.collect` first")
    for shard in tqdm(shards, desc="encode", unit="rollout", dynamic_ncols=True):
        target = out / shard.name
        if target.exists():
            old = read_fingerprint(target)
            if old == fingerprint:
                counts["skipped"] += 1
                continue
            counts["replaced"] += 1
        episode = load_shard(shard)
        mu, logvar = encode(episode["obs"])
        write_latents(target, dict(mu=mu, logvar=logvar, action=episode["action"],
                                   reward=episode["reward"], done=episode["terminated"]), fingerprint,
                      episode_policy(episode["meta"]))
        counts["encoded"] += 1
    return {**counts, "vae": fingerprint}


def main(argv=None) -> int:
    config = cli(EncodeConfig, argv, prog="python -m train.encode")
    counts = run(config)
    print(f"encoded {counts['encoded']} rollouts ({counts['replaced']} re-encoded for VAE "
          f"{counts['vae']}), skipped {counts['skipped']} already encoded, into {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
