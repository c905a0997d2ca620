"""Join K trained MDN-RNN bundles into one ensemble bundle: `python -m train.ensemble` (`EnsembleConfig`).

    python -m train.mdnrnn --seed 0 --out runs/m0      # K runs on the same latents and VAE,
    python -m train.mdnrnn --seed 1 --out runs/m1      # differing only in their seed
    python -m train.ensemble --members runs/m0/bundle runs/m1/bundle --penalty 1.0 --out runs/ens

The first member is the primary (its h is what agents observe, and what LatentCarRacing-v0 runs
on real latents); its VAE, frames and start latents become the ensemble's. Every member must share
the primary's VAE params (bit for bit) and MDN-RNN config, else ValueError naming the member.
The dream's use of the ensemble is `dreamenv.world_model`'s (a member per step, the penalty).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from dreamenv.checkpoint import Bundle, load_bundle, module_config, save_bundle
from train.config import cli, require
from train.provenance import git_state


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Join K MDN-RNN bundles (same VAE, same sizes) into one ensemble bundle."""

    members: tuple[Path, ...] = ()
    """member bundle folders; the first is the primary"""
    out: Path = Path("runs/ensemble")
    """the ensemble bundle folder to write"""
    penalty: float = 1.0
    """the dream's default disagreement penalty (reward -= penalty × u_t)"""

    def __post_init__(self):
        require(self, members=(len(self.members) >= 2, "at least 2 bundles"),
                penalty=(np.isfinite(self.penalty) and self.penalty >= 0, "a finite number >= 0"))


def _same(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(la, lb))


def join(bundles: list[Bundle], penalty: float, names: list[str]) -> Bundle:
    """K >= 2 single-model bundles -> one ensemble bundle (the first is the primary)."""
    primary = bundles[0]
    for name, b in zip(names[1:], bundles[1:]):
        if b.ensemble_size != 1:
            raise ValueError(f"member {name} is itself an ensemble (K={b.ensemble_size}); join single models")
        if module_config(b.mdnrnn) != module_config(primary.mdnrnn):
            raise ValueError(f"member {name} has MDN-RNN config {module_config(b.mdnrnn)}, expected the "
                             f"primary's {module_config(primary.mdnrnn)}")
        if not _same(b.vae_params, primary.vae_params):
            raise ValueError(f"member {name} was trained on another VAE's latents than the primary {names[0]}; "
                             f"train every member on the same latent folder")
    stacked = jax.tree_util.tree_map(lambda *x: np.stack(x), *(b.mdnrnn_params for b in bundles[1:]))
    metadata = {**primary.metadata, "ensemble_members": names, **git_state()}  # mdnrnn_metrics: the primary's
    return dataclasses.replace(primary, member_params=stacked, penalty=float(penalty), metadata=metadata)


def main(argv=None) -> int:
    config = cli(EnsembleConfig, argv, prog="python -m train.ensemble")
    bundles = [load_bundle(p) for p in config.members]
    path = save_bundle(config.out, join(bundles, config.penalty, [str(p) for p in config.members]))
    print(f"train/ensemble.py: wrote {path} (K={len(bundles)}, penalty {config.penalty})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
