"""Start a pipeline run from a trained bundle: `python -m train.adopt --bundle B --run DIR`.

What `train.pipeline --base B` runs in place of training the VAE and the base MDN-RNN, so a
shipped model can be fine-tuned on fresh data (`--final-from 0`) without retraining what it has:

    DIR/vae/      B's VAE as a VAE run (vae_config.json, vae.msgpack) with the run's held-out split
                  (run_config.json), its MSE on DIR/rollouts' held-out frames (metrics.json, with
                  "adopted_from") and their reconstructions (recon.png)
    DIR/bundle/   B as the run's iteration 0, stored float32; metadata["vae_fingerprint"] is that
                  of the VAE as stored in B (what DIR/latents will be encoded with), and
                  metadata["base"] keeps B's path and its own metadata (how B was built)

Rerunning it with the same B does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import load_bundle, save_bundle
from dreamenv.shards import list_shards
from train import vae as vae_train
from train.latents import vae_fingerprint
from train.provenance import git_state
from train.split import split_rollouts
from train.vae_run import save_vae_run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.adopt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="the trained bundle to start from")
    p.add_argument("--run", type=Path, required=True, help="pipeline output folder (its rollouts/ collected)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (its held-out split, as train.vae's)")
    p.add_argument("--eval-frames", type=int, default=1024, help="held-out frames the VAE is measured on")
    return p.parse_args(argv)


def adopted(run: Path, source: Path) -> bool:
    """Whether `run` already holds `source` as its VAE and base bundle."""
    config = run / "bundle" / "config.json"
    return (run / "vae" / "vae.msgpack").is_file() and config.is_file() and \
        json.loads(config.read_text())["metadata"].get("base", {}).get("bundle") == str(source)


def adopt(source: Path, run: Path, seed: int = 0, eval_frames: int = 1024) -> dict:
    """Write `source`'s VAE run and base bundle into `run` -> the VAE's held-out metrics."""
    bundle = load_bundle(source)
    if not bundle.metadata.get("trained"):
        raise SystemExit(f"train/adopt.py: {source} is an untrained bundle; start from a trained one")
    vae_args = vae_train.parse_args(["--data", str(run / "rollouts"), "--out", str(run / "vae"), "--seed", str(seed)])
    paths = list_shards(vae_args.data)
    train_paths, held_paths = split_rollouts(paths, vae_args.holdout, vae_args.seed)
    if not train_paths or not held_paths:
        raise SystemExit(f"train/adopt.py: {vae_args.data} has {len(paths)} shards; need at least 2 "
                         f"(one to train on, one held out); run `python -m train.collect`")
    frames = vae_train.heldout_frames(held_paths, eval_frames)
    mse, png = vae_train.make_evaluate(bundle.vae)(bundle.vae_params, frames)
    info = {"adopted_from": str(source), "train_rollouts": len(train_paths), "heldout_rollouts": len(held_paths),
            "heldout_frames": len(frames)}
    save_vae_run(vae_args.out, bundle.vae, bundle.vae_params, bundle.frames)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(vae_args).items()}
    atomic_write_bytes(vae_args.out / "run_config.json",
                       json.dumps({**config, "adopted_from": str(source)}, indent=1, sort_keys=True).encode())
    vae_train.write_eval(vae_args.out, info, [{"step": 0, "heldout_mse_per_pixel": mse}], png)
    metadata = {**bundle.metadata, "vae_fingerprint": vae_fingerprint(bundle.vae, bundle.vae_params),
                "base": {"bundle": str(source), "metadata": bundle.metadata, **git_state()}}  # the code that held it
    save_bundle(run / "bundle", dataclasses.replace(bundle, metadata=metadata))
    return {"heldout_mse_per_pixel": mse, **info}


def main(argv=None) -> int:
    args = parse_args(argv)
    if adopted(args.run, args.bundle):
        print(f"train/adopt.py: {args.run} already starts from {args.bundle}; nothing to do")
        return 0
    print(json.dumps(adopt(args.bundle, args.run, args.seed, args.eval_frames), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
