"""Ship a pipeline run's model as the package default: `python -m train.ship --run DIR` (`ShipConfig`).

Evaluates the run's bundle (by default its last iteration's) stored as float32 and as float16 on
the same held-out rollouts (VAE reconstruction MSE per pixel; the MDN-RNN's held-out metrics,
teacher-forced on encoder means as LatentCarRacing-v0's memory reads them), keeps float16 when no
compared metric moves by more than --tolerance (relative), writes it to --dest (default
dreamenv/assets/default) and writes the model card (dreamenv/assets/MODEL_CARD.md) with its
figures in dreamenv/assets/card/: the run's held-out reconstruction grid and a strip of dreamed
frames under a held-out rollout's real actions at τ = 1, above the real frames.

Errors: SystemExit naming the run when it has no such model or no pipeline.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dreamenv import world_model as wm
from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import Bundle, load_bundle, save_bundle
from dreamenv.frames import to_float
from dreamenv.shards import list_shards, load_shard
from train.config import cli, require, require_dir
from train.iterate import bundle_of, iteration_dir
from train.latents import vae_fingerprint
from train.mdnrnn import load_split
from train.mdnrnn_loss import evaluate
from train.policies import episode_policy
from train.split import split_rollouts
from train.vae import heldout_frames, make_evaluate, recon_png

ASSETS = Path(__file__).resolve().parents[1] / "dreamenv" / "assets"
COMPARED = ("vae_mse_per_pixel", "nll_per_step", "mse_ratio_to_persistence", "reward_corr")


@dataclasses.dataclass(frozen=True)
class ShipConfig:
    """Install a pipeline run's model as the package default and write its model card."""

    run: Path = Path("runs/full")
    """pipeline output folder (train.pipeline --out)"""
    iteration: int | None = None
    """which model of the run (0: the base one; default: the last iteration's)"""
    tolerance: float = 0.01
    """relative metric change float16 storage may make"""
    eval_frames: int = 2048
    """held-out frames for the VAE MSE"""
    strip_steps: int = 300
    """dreamed steps in the card's strip"""
    strip_dreams: int = 3
    """dreams (rows) in the strip"""
    seed: int = 0
    dest: Path = ASSETS / "default"
    """where the bundle is installed"""
    card: Path = ASSETS / "MODEL_CARD.md"
    """the model card written (its figures go to card/ beside it)"""

    def __post_init__(self):
        require(self, iteration=(self.iteration is None or self.iteration >= 0, "None or >= 0"),
                tolerance=(self.tolerance >= 0, ">= 0"), eval_frames=(self.eval_frames >= 1, ">= 1"),
                strip_steps=(self.strip_steps >= 1, ">= 1"), strip_dreams=(self.strip_dreams >= 1, ">= 1"))


def heldout(run: Path) -> list[Path]:
    """The held-out rollout shards, split as the run's VAE split them."""
    vae_config = json.loads((run / "vae" / "run_config.json").read_text())
    return split_rollouts(list_shards(run / "rollouts"), vae_config["holdout"], vae_config["seed"])[1]


def metrics(bundle: Bundle, run: Path, frames: np.ndarray) -> dict:
    """Held-out VAE MSE per pixel and MDN-RNN metrics of `bundle` (params as stored, in float32)."""
    model = wm.WorldModel.from_bundle(bundle)
    mse, _ = make_evaluate(bundle.vae)(model.vae_params, frames)
    _, held = load_split(run / "latents", run / "vae", bundle.metadata["vae_fingerprint"])
    return {"vae_mse_per_pixel": mse, **evaluate(bundle.mdnrnn, model.mdnrnn_params, held)}


def dream_strip(bundle: Bundle, shard: Path, steps: int, seed: int, dreams: int = 3, every: int = 25) -> bytes:
    """PNG: real frames (top) and `dreams` dreams (one row each, keys from `seed`) from the same
    first frame under the same actions at τ = 1, every `every` steps from 0 to `steps`."""
    model = wm.WorldModel.from_bundle(bundle)
    data = load_shard(shard)
    steps = min(steps, len(data["action"]) - 1)
    z = jnp.repeat(wm.encode(model, jnp.asarray(data["obs"][:1])), dreams, axis=0)  # [dreams, D]
    state = wm.start_state(model, z)
    dreamed = [z]
    for t, key in enumerate(jax.random.split(jax.random.key(seed), steps)):
        action = jnp.repeat(jnp.asarray(data["action"][t : t + 1]), dreams, axis=0)
        state, z, _, _ = wm.step(model, state, action, key, 1.0, obs="z")
        dreamed.append(z)
    shown = np.arange(0, steps + 1, every)
    zs = jnp.stack([dreamed[t] for t in shown], axis=1)  # [dreams, shown, D]
    frames = np.asarray(wm.decode(model, zs.reshape(-1, zs.shape[-1]))).reshape(dreams, len(shown), 64, 64, 3)
    return recon_png(data["obs"][shown], *map(to_float, frames))  # decode gives uint8; the grid takes [0, 1]


LIMITS = """- Per-step reward is a tile-crossing spike the 64×64 frame barely shows, so the reward head
  predicts its expected rate; returns over many steps are better predicted than single steps
  (`python -m benchmarks.fidelity`).
- Terminations are rare in the data (lap completions, leaving the playfield): the done head ranks
  the steps that end an episode above the rest, but its P(done) seldom passes 0.5, so dreamed
  episodes mostly end at the time limit and leaving the playfield costs no −100 in the dream.
- Trained on sampled latents z ~ N(mu, σ²) (the paper's regulariser, which keeps open-loop dreams
  stable), its 1-step mixture mean from clean encoder means is about as good as persistence.
- The dream is only as good as the states the data covers, and actions are partly confounded with
  states (most drivers act on what they see; the perturbed segments show what each control does).
  An agent trained long in the dream learns its flaws: its dream return climbs while its real score
  falls (`python -m benchmarks.controls`, `python -m benchmarks.transfer`)."""


def card(run: Path, bundle: Bundle, table: dict, dtype: str, size_mb: float, config: ShipConfig) -> str:
    """The model card's markdown, from the run's records and the measured table."""
    meta, record = bundle.metadata, json.loads((run / "pipeline.json").read_text())
    settings, vae_hist = record["config"], json.loads((run / "vae" / "metrics.json").read_text())["history"]
    manifest = json.loads((run / "rollouts" / "manifest.json").read_text())["shards"]
    seen = meta["train_rollouts"] + meta["heldout_rollouts"] + meta["left_out_rollouts"]
    manifest = manifest[:seen]  # what this model's data held
    choices: dict[str, int] = {}
    for s in manifest:
        choices[episode_policy(s)] = choices.get(episode_policy(s), 0) + 1
    rounds = [r for r in record.get("iterations", []) if r["iteration"] <= meta["iteration"]]
    history = "\n".join(f"| {r['iteration']} | {r['rollouts']} | {r['dream']['mean']:.0f} | {r['real']['mean']:.0f} ± "
                        f"{r['real']['std']:.0f} ({r['real']['episodes']}) |" for r in rounds)
    rows = "\n".join(f"| {k} | {table['float32'][k]:.5g} | {table['float16'][k]:.5g} |" for k in table["float32"]
                     if isinstance(table["float32"][k], (int, float)))
    uncommitted = " with uncommitted changes" if record.get("git_uncommitted_changes") else ""
    return f"""# Model card: the default CarRacing-v3 world model

`gym.make("DreamCarRacing-v0")` and `gym.make("LatentCarRacing-v0")` load this bundle
(`dreamenv/assets/default`, stored as {dtype}, {size_mb:.1f} MB). Built from nothing by
`{record["command"]}`, then `python -m train.ship --run {run}` (git commit `{record["git_commit"]}`{uncommitted}).

## Data

{len(manifest)} real CarRacing-v3 rollouts ({sum(s["steps"] for s in manifest)} frames, up to
{settings["max_steps"]} steps each, seed {settings["seed"]}); episodes per policy (`mix` episodes by
the policy it drew): {json.dumps(choices)}. `track` is a noisy scripted follower that reads the
simulator's track and `track-perturbed` the same follower overridden in random segments by
state-independent actions (both privileged, data only); `ou` wanders off the road; `agent` rollouts
were driven by the previous iteration's dream-trained agent (see `train/policies.py`). Rollouts are
split by name hash: {meta["train_rollouts"]} train, {meta["heldout_rollouts"]} held out (the VAE and
the MDN-RNN hold out the same ones); {meta["left_out_rollouts"]} privileged training rollouts trained the
VAE only (the MDN-RNN trained on {json.dumps(meta["train_policies"])}).

## Training

- VAE (paper layout, latent 32, KL free bits 0.5/dim): {vae_hist[-1]["step"]} Adam steps of
  {settings["vae_batch"]} frames; held-out MSE/pixel by step: {", ".join(f'{h["step"]}: {h["heldout_mse_per_pixel"]:.5f}' for h in vae_hist)}.
- MDN-RNN (LSTM {bundle.mdnrnn.hidden_size}, {bundle.mdnrnn.num_mixtures} components): {settings["mdn_steps"]} steps on
  windows of {settings["seq_len"]} of sampled latents z ~ N(mu, σ²), a share {settings["start_fraction"]} of them starting
  at an episode's first step (where every dream starts); at each of {meta["iteration"]} iteration(s), one trained
  afresh for {settings["iter_mdn_steps"]} steps on all the data but the privileged drivers'.
- Iterative training (the paper's procedure): each iteration, the previous model's dream-trained
  PPO agent ({settings["agent_timesteps"]} dream steps) drove {settings["iter_episodes"]} new real rollouts (with
  perturbed segments as exploration); a fresh agent trained in each model's dream was scored on
  real episodes on tracks no training used (seeds from 100000):

| iteration | rollouts | agent's dream return | agent's real return (episodes) |
|---|---|---|---|
{history}

Wall seconds per stage (summed over invocations, resumes included): `{json.dumps(record["stage_seconds"])}`.

## Held-out metrics (float32 vs the shipped float16)

On every held-out rollout of the run ({table["float32"]["steps"]} steps), teacher-forced on the
encoder means as LatentCarRacing-v0's memory reads them.

| metric | float32 | float16 |
|---|---|---|
{rows}

## Figures

Held-out frames (top) and their reconstructions (bottom):

![reconstructions](card/recon.png)

{config.strip_dreams} dream(s) from a held-out rollout's first frame under its real actions at τ = 1, every 25 steps
(top: the real game; below: the dreams, one a row, not picked):

![dream strip](card/dream.png)

## Known limits

{LIMITS}
"""


def main(argv=None) -> int:
    return ship(cli(ShipConfig, argv, prog="python -m train.ship"))


def ship(config: ShipConfig) -> int:
    """Install the model and write the card; prints and returns 0."""
    run = config.run
    require_dir(config, run=run)
    if not (run / "pipeline.json").is_file():
        raise SystemExit(f"train/ship.py: {run} has no pipeline.json; run python -m train.pipeline --out {run} first")
    last = json.loads((run / "pipeline.json").read_text())["config"]["iterations"]
    iteration = last if config.iteration is None else config.iteration
    source = bundle_of(run, iteration)
    if not (source / "config.json").is_file() or not (iteration_dir(run, iteration) / "agent").is_dir():
        raise SystemExit(f"train/ship.py: no finished model of iteration {iteration} at {source}; "
                         f"run python -m train.pipeline --out {run} --iterations {max(iteration, 1)} first")
    bundle = load_bundle(source)
    if vae_fingerprint(bundle.vae, bundle.vae_params) != bundle.metadata.get("vae_fingerprint"):
        raise SystemExit(f"train/ship.py: {source}'s VAE is not the one its latents came from")
    held_paths = heldout(run)
    frames = heldout_frames(held_paths, config.eval_frames)
    with tempfile.TemporaryDirectory() as tmp:
        half = load_bundle(save_bundle(Path(tmp) / "f16", bundle, dtype="float16"))
        table = {"float32": metrics(bundle, run, frames), "float16": metrics(half, run, frames)}
    same = all(abs(table["float16"][k] - table["float32"][k]) <= config.tolerance * abs(table["float32"][k])
               for k in COMPARED if np.isfinite(table["float32"][k]))
    dtype = "float16" if same else "float32"
    save_bundle(config.dest, bundle, dtype=dtype)  # replaces any bundle there atomically
    size_mb = sum(f.stat().st_size for f in config.dest.rglob("*") if f.is_file()) / 2**20
    figures = config.card.parent / "card"
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "vae" / "recon.png", figures / "recon.png")
    atomic_write_bytes(figures / "dream.png", dream_strip(load_bundle(config.dest), held_paths[0], config.strip_steps,
                                                          config.seed, config.strip_dreams))
    atomic_write_bytes(config.card, card(run, bundle, table, dtype, size_mb, config).encode())
    print(json.dumps({"dtype": dtype, "size_mb": round(size_mb, 2), **table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
