"""Ship a pipeline run's bundle as the package default: `python -m train.ship --run runs/ship [--iteration I|final]`.

Evaluates the run's bundle stored as float32 and as float16 on the same held-out rollouts (VAE
reconstruction MSE per pixel; the MDN-RNN's held-out metrics), keeps float16 when no metric moves
by more than --tolerance (relative), writes it to --dest (default dreamenv/assets/default), and
writes the model card (dreamenv/assets/MODEL_CARD.md) with its figures in dreamenv/assets/card/:
the run's held-out reconstruction grid and a strip of dreamed frames under a held-out rollout's
real actions at τ = 1, above the real frames.
"""

from __future__ import annotations

import argparse
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
from dreamenv.mdnrnn import drop_unread_reward_input, samples_only
from dreamenv.shards import list_shards, load_shard
from train.iterate import bundle_of, dream_bundle
from train.latents import vae_fingerprint
from train.mdnrnn import load_split
from train.mdnrnn_loss import evaluate
from train.policies import episode_policy
from train.split import split_rollouts
from train.vae import heldout_frames, make_evaluate, recon_png

ASSETS = Path(__file__).resolve().parents[1] / "dreamenv" / "assets"
FLAG_NOTE = (", with the sample flag: half the windows sampled z ~ N(mu, σ²) (flag 1), half the "
             "encoder means (flag 0)")
FROZEN_NOTE = (", with the sample flag's mean path trained alone (`--freeze-sampled`) on encoder means "
               "(flag 0); on samples (flag 1) the model is the `--init` one exactly")
REWARD_NOTE = ("; it reads the previous step's reward (`--reward-input`, gained as the same function) and "
               "gives the reward as two levels and P(tile), which the dream samples and reads back")
MEAN_REWARD_NOTE = ("; its mean path also reads the previous step's reward (`--reward-input`, gained as the "
                    "same function) and gives the reward as two levels and P(tile); on samples, the dream's "
                    "path, the reward input has no weight and the levels are one, so the dream pays the "
                    "expected reward")
FLAG_METRICS = """The MDN-RNN reads these real latents as what they are, encoder means (sample flag 0); rows marked
"(flag 1)" feed the same latents with the dream's flag, as LatentCarRacing-v0's memory runs.
"""
NOISE_LIMIT = """- Trained on sampled latents z ~ N(mu, σ²) (the paper's regulariser, needed for stable
  open-loop dreams), its 1-step mixture mean from clean latents is worse than persistence.
"""
FLAG_LIMIT = """- The memory has two modes (`MDNRNN.sample_flag`): the dream runs it on its own samples (flag 1,
  trained on z ~ N(mu, σ²), the paper's regulariser that keeps open-loop dreams stable), and so does
  LatentCarRacing-v0's memory; 1-step predictions from real encoder means use flag 0, which adds the
  mean path (the default of `MDNRNN.__call__`/`step` and `world_model.memory_step`). With flag 1 on
  clean latents the mixture mean is worse than persistence (the rows marked "(flag 1)").
"""
COMPARED = ("vae_mse_per_pixel", "nll_per_step", "mse_ratio_to_persistence", "reward_corr")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="pipeline output folder (train.pipeline --out)")
    p.add_argument("--iteration", type=iteration_arg, default=0,
                   help="which model of an iterative run (train.pipeline --iterations): 0 = the base one, "
                        "final = the sample-flag fine-tune (train.pipeline --final-from)")
    p.add_argument("--dest", type=Path, default=ASSETS / "default")
    p.add_argument("--card", type=Path, default=ASSETS / "MODEL_CARD.md")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative metric change float16 may make")
    p.add_argument("--eval-frames", type=int, default=2048, help="held-out frames for the VAE MSE")
    p.add_argument("--strip-steps", type=int, default=300, help="dreamed steps in the strip")
    p.add_argument("--strip-dreams", type=int, default=3, help="dreams (rows) in the strip")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def iteration_arg(text: str) -> int | str:
    """--iteration's value: an iteration number, or "final"."""
    if text == "final":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an iteration number or 'final', got {text!r}") from None


def heldout(run: Path) -> list[Path]:
    """The held-out rollout shards, split as the run's VAE split them."""
    vae_args = json.loads((run / "vae" / "run_config.json").read_text())
    return split_rollouts(list_shards(run / "rollouts"), vae_args["holdout"], vae_args["seed"])[1]


def metrics(bundle: Bundle, run: Path, frames: np.ndarray) -> dict:
    """Held-out VAE MSE per pixel and MDN-RNN metrics of `bundle` (params as stored, in float32)."""
    model = wm.WorldModel.from_bundle(bundle)
    mse, _ = make_evaluate(bundle.vae)(model.vae_params, frames)
    _, held = load_split(run / "latents", run / "vae", bundle.metadata["vae_fingerprint"])
    result = {"vae_mse_per_pixel": mse, **evaluate(bundle.mdnrnn, model.mdnrnn_params, held)}
    if bundle.mdnrnn.sample_flag:  # the dream's mode (flag 1), also how LatentCarRacing-v0's memory runs
        dream_mode = evaluate(bundle.mdnrnn, model.mdnrnn_params, held, sampled=1.0)
        result.update({f"{k} (flag 1)": dream_mode[k] for k in ("mse_ratio_to_persistence", "reward_corr", "done_auc")})
    return result


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


def flag_note(bundle: Bundle, mdn_args: dict) -> str:
    """The card's words on how the MDN-RNN's sample flag was trained (none without the flag) and on
    its reward input."""
    frozen = mdn_args.get("freeze_sampled") == "True"  # stored as strings: "False" is truthy
    flag = "" if not bundle.mdnrnn.sample_flag else FROZEN_NOTE if frozen else FLAG_NOTE
    return flag + ((REWARD_NOTE if dream_reads_rewards(bundle) else MEAN_REWARD_NOTE)
                   if bundle.mdnrnn.reward_input else "")


def dream_reads_rewards(bundle: Bundle) -> bool:
    """Whether the dream's path (on samples) reads the previous reward: the check the envs make
    before they drop an unread input (`drop_unread_reward_input`)."""
    return drop_unread_reward_input(bundle.mdnrnn, samples_only(bundle.mdnrnn_params))[0].reward_input


def reward_limit(bundle: Bundle) -> str:
    """The card's known limit on the per-step reward."""
    if bundle.mdnrnn.reward_input and not dream_reads_rewards(bundle):
        return """- Per-step reward is a tile-crossing spike the 64×64 frame barely shows. Fed the real rewards
  (the mean path, teacher-forced), the model times the next one from the last ones; the dream, which
  has only its own, pays the expected rate: its path does not read rewards, since trained to, its
  rewards fed themselves (dreamenv/mdnrnn.py). The reward correlation marked "(flag 1)" is the dream
  path's, the rate's."""
    if bundle.mdnrnn.reward_input:
        return """- Per-step reward is a tile-crossing spike the 64×64 frame barely shows; the model times the
  next one from the rewards it has read (the real ones teacher-forced, its own samples in the dream),
  so a dream's spikes are only as well timed as its own earlier ones, and can feed themselves
  (dreamenv/mdnrnn.py)."""
    return """- Per-step reward is a tile-crossing spike the 64×64 frame barely shows, so the reward head
  predicts its expected rate; returns over many steps are much better predicted than single steps
  (see `python -m benchmarks.fidelity`)."""


def dream_line(run: Path, started: str) -> str:
    """The card's line on a final model whose dream path was fine-tuned first (stage final-dream)."""
    args = load_bundle(dream_bundle(run)).metadata["mdnrnn_args"]
    return (f"- The dream's path (the model on samples, flag 1) is {started} MDN-RNN fine-tuned first, on all the data: "
            f"{args['steps']} steps at lr {args['lr']} to {args['lr_end']}, a share {args['start_fraction']} of the "
            f"windows\n  starting at an episode's first step, where every dream starts "
            f"(`--final-start-fraction`, stage `final-dream`); the mean path was then trained on it.\n")


def zoom_limit(start_trained: bool) -> str:
    """The card's known limit on the dream's zoom-in (start_trained: its path saw windows from episode starts)."""
    if start_trained:
        return """- The real game zooms in over its first 50 steps whatever the actions. This dream's path was
  fine-tuned on windows from episode starts (above), so most dreams zoom in on time, but a few per
  cent stay in, or fall back to, a dark frame for a while. `python -m benchmarks.zoom` measures
  both, per fixed control, against real rollouts."""
    return """- The dream's zoom-in at the start is off: the real game zooms in over its first 50 steps whatever
  the actions; some dreams zoom in far sooner, and some stay in the zoomed-out map view (a dark
  frame) for hundreds of steps (the strip above may show one). `python -m benchmarks.zoom`
  measures both, per fixed control, against real rollouts."""


def vae_line(history: list[dict]) -> str:
    """The card's line on a VAE trained by the run (train.vae's metrics history)."""
    return (f"- VAE (paper layout, latent 32, KL free bits 0.5/dim): {history[-1]['step']} Adam steps of 64\n"
            f"  frames; held-out MSE/pixel by step: "
            + ", ".join(f'{h["step"]}: {h["heldout_mse_per_pixel"]:.5f}' for h in history) + ".")


def vae_seen(vae_info: dict) -> str:
    """What the card says of the VAE's training data."""
    if vae_info.get("adopted_from"):
        return "the VAE is the base model's, trained on that model's data (below)"
    return f"the VAE saw the {vae_info['train_rollouts']} training rollouts that\nexisted when it trained"


def changed(record: dict) -> str:
    """" with uncommitted changes" where a record's git state (train.provenance) says so."""
    return " with uncommitted changes" if record.get("git_uncommitted_changes") else ""


def base_lines(meta: dict, vae_info: dict) -> str:
    """The card's lines on the base model a `train.pipeline --base` run started from (train/adopt.py)."""
    base = meta.get("pipeline", {}).get("base", {}).get("metadata", {})
    built = base.get("pipeline", {})
    rounds = {r["iteration"]: r for r in built.get("iterations", [])}
    agent = rounds.get(base.get("iteration"))
    scored = (f"; its dream-trained agent scored {agent['real']['mean']:.0f} ± {agent['real']['std']:.0f} over "
              f"{agent['real']['episodes']} real episodes" if agent else "")
    held = meta.get("pipeline", {}).get("base", {})  # the checkout that held the base when it was adopted
    return (f"- Base model: `{vae_info['adopted_from']}` as it was at git commit `{held.get('git_commit', 'unknown')}`"
            f"{changed(held)}"
            f"\n  (built by `{built.get('command')}` at commit `{built.get('git_commit')}`, iteration "
            f"{base.get('iteration', 0)}: {base.get('train_rollouts')} training rollouts{scored}). Its VAE is used as is:\n"
            f"  held-out MSE/pixel on this run's held-out frames {vae_info['history'][-1]['heldout_mse_per_pixel']:.5f}.")


def card(run: Path, bundle: Bundle, table: dict, dtype: str, size_mb: float, dreams: int = 3) -> str:
    """The model card's markdown, from the run's records and the measured table."""
    meta = bundle.metadata
    pipeline = meta.get("pipeline", {})
    vae_info = json.loads((run / "vae" / "metrics.json").read_text())
    vae_hist = vae_info["history"]
    mdn_args = meta.get("mdnrnn_args", {})
    manifest = json.loads((run / "rollouts" / "manifest.json").read_text())["shards"]
    manifest = manifest[: meta.get("train_rollouts", 0) + meta.get("heldout_rollouts", 0)]  # what this model saw
    frames = sum(s["steps"] for s in manifest)
    choices = {}
    for s in manifest:
        choice = episode_policy(s)
        choices[choice] = choices.get(choice, 0) + 1
    iteration = meta.get("iteration", 0)
    final = iteration == "final"
    source = pipeline.get("final_from") if final else iteration
    rounds = [r for r in pipeline.get("iterations", []) if r["iteration"] <= source]
    rounds += [pipeline["final"]] if final and pipeline.get("final") else []
    history = "\n".join(f"| {r['iteration']} | {r['rollouts']} | {r['dream']['mean']:.0f} | {r['real']['mean']:.0f} ± "
                        f"{r['real']['std']:.0f} ({r['real']['episodes']}) |" for r in rounds)
    started = "the base model's (`--base`)" if vae_info.get("adopted_from") and source == 0 else f"iteration {source}'s"
    extra = pipeline.get("settings", {}).get("final_rollouts", 0) if final else 0
    extra = (f"; the data includes {extra} rollout{'s' * (extra != 1)} of `{pipeline['settings']['final_policy']}` collected for it "
             f"alone, `--final-rollouts`" if extra else "")
    gained = "the sample flag and the reward input" if bundle.mdnrnn.reward_input else "the sample flag"
    dreamed = final and pipeline.get("settings", {}).get("final_start_fraction")
    which = (f"this is {started} MDN-RNN{' (its dream path fine-tuned as above)' if dreamed else ''} given {gained}, "
             f"trained on all\n  the data "
             f"(`--final-from {source}`, row \"final\"{extra})" if final else f"this is the model of\n  iteration {iteration}")
    episodes = pipeline.get("settings", {}).get("iter_episodes")
    how = (f"""The base model's dream-trained agent (`--base-agent`) drove {episodes} new real rollouts through it (with
  perturbed segments as exploration); then a fresh agent trained in the final dream was scored on the real game:
""" if pipeline.get("base_agent") else f"""Each iteration, the previous model's dream-trained PPO agent drove
  {episodes} new real rollouts (with perturbed segments as
  exploration) and the MDN-RNN was fine-tuned on all the data; then a fresh agent trained in the new
  dream was scored on the real game:
""")
    iterations = f"""- Iterative training (the paper's procedure, `train.pipeline --iterations`): {which}. {how}
| iteration | rollouts | agent's dream return | agent's real return (episodes) |
|---|---|---|---|
{history}

""" if rounds else ""
    rows = "\n".join(
        f"| {k} | {table['float32'][k]:.5g} | {table['float16'][k]:.5g} |" for k in table["float32"]
        if isinstance(table["float32"][k], (int, float))
    )
    return f"""# Model card: the default CarRacing-v3 world model

`gym.make("DreamCarRacing-v0")` and `gym.make("LatentCarRacing-v0")` load this bundle
(`dreamenv/assets/default`, stored as {dtype}, {size_mb:.1f} MB). Rebuild it with
`{pipeline.get("command", "python -m train.pipeline")}` then `python -m train.ship --run RUN{f" --iteration {iteration}" if iteration else ""}`
(git commit of the build: `{pipeline.get("git_commit", "unknown")}`{changed(pipeline)}).

## Data

{len(manifest)} real CarRacing-v3 rollouts ({frames} frames, up to 1000 steps each, seed
{manifest[0]["seed"]}); episodes per policy (`mix` episodes by the policy it drew):
{json.dumps(choices)}. `track` is a noisy scripted follower that reads the simulator's track and
`track-perturbed` the same follower overridden in random segments by state-independent actions
(both privileged, data only; see `train/policies.py`). Rollouts are split by name hash:
{meta.get("train_rollouts")} train, {meta.get("heldout_rollouts")} held out (the VAE and the
MDN-RNN hold out the same ones; {vae_seen(vae_info)}).

## Training

{base_lines(meta, vae_info) if vae_info.get("adopted_from") else vae_line(vae_hist)}
- MDN-RNN (LSTM 256, 5 components, {"residual" if bundle.mdnrnn.residual else "absolute"} means): {mdn_args.get("steps")} steps{" (this iteration's fine-tuning)" if iteration else ""}, batch
  {mdn_args.get("batch_size")}, windows of {mdn_args.get("seq_len")}, z noise {mdn_args.get("z_noise")}{flag_note(bundle, mdn_args)}.
{dream_line(run, started) if dreamed else ""}{iterations}- Pipeline settings: `{json.dumps(pipeline.get("settings", {}))}`; wall seconds per stage (summed
  over invocations, resumes included): `{json.dumps(pipeline.get("stage_seconds", {}))}`.

## Held-out metrics (float32 vs the shipped float16)

On every held-out rollout of the run ({table["float32"]["steps"]} steps; rollouts collected after
this model was built, by later iterations, are held out from it too).

Targets: VAE MSE/pixel ≤ 0.0015; 1-step mixture-mean MSE ≤ 0.5 × persistence; reward
correlation ≥ 0.5; done AUC ≥ 0.9 (NaN: no terminal step among the held-out rollouts).
{FLAG_METRICS if bundle.mdnrnn.sample_flag else ""}
| metric | float32 | float16 |
|---|---|---|
{rows}

## Figures

Held-out frames (top) and their reconstructions (bottom):

![reconstructions](card/recon.png)

{dreams} dream{'s' if dreams > 1 else ''} from a held-out rollout's first frame under its real actions at τ = 1, every 25 steps
(top: the real game; below: the dreams, one a row, not picked):

![dream strip](card/dream.png)

## Known limits

{zoom_limit(bool(dreamed))}
{reward_limit(bundle)}
- Terminations are rare in the data (lap completions, leaving the playfield). The done head ranks
  the steps that end an episode above the rest (the AUC of `python -m benchmarks.fidelity`, which
  also counts where P(done) > 0.5 would end one), but on the dream's own path (flag 1) its P(done)
  stays far below 0.5: dreamed episodes end at the time limit, and leaving the playfield costs no
  −100 in the dream.
- The dream is only as good as the states the data covers; see the fidelity benchmark for
  open-loop error by horizon.
- Actions are partly confounded with states: most rollouts come from drivers whose actions are
  (nearly) a function of what they see; the perturbed segments (state-independent actions) are what
  show the model what each control does (`python -m benchmarks.controls` compares fixed-action
  returns in the dream and on the real game). An agent trained long in the dream learns its flaws:
  its dream return climbs while its real score falls.
{FLAG_LIMIT if bundle.mdnrnn.sample_flag else NOISE_LIMIT}"""


def main(argv=None) -> int:
    args = parse_args(argv)
    source = bundle_of(args.run, args.iteration)
    if not (source / "config.json").is_file():
        how = "--final-from I" if args.iteration == "final" else f"--iterations {max(args.iteration, 1)}"
        raise SystemExit(f"train/ship.py: no bundle at {source}; run train.pipeline --out {args.run} {how} first")
    bundle = load_bundle(source)
    if vae_fingerprint(bundle.vae, bundle.vae_params) != bundle.metadata.get("vae_fingerprint"):
        raise SystemExit(f"train/ship.py: {source}'s VAE is not the one its latents came from")
    held_paths = heldout(args.run)
    frames = heldout_frames(held_paths, args.eval_frames)
    with tempfile.TemporaryDirectory() as tmp:
        half = load_bundle(save_bundle(Path(tmp) / "f16", bundle, dtype="float16"))
        table = {"float32": metrics(bundle, args.run, frames), "float16": metrics(half, args.run, frames)}
        same = all(abs(table["float16"][k] - table["float32"][k]) <= args.tolerance * abs(table["float32"][k])
                   for k in COMPARED if np.isfinite(table["float32"][k]))
        dtype = "float16" if same else "float32"
        save_bundle(args.dest, bundle, dtype=dtype)  # replaces any bundle there atomically
    size_mb = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file()) / 2**20
    (args.card.parent / "card").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "vae" / "recon.png", args.card.parent / "card" / "recon.png")
    atomic_write_bytes(args.card.parent / "card" / "dream.png",
                       dream_strip(load_bundle(args.dest), held_paths[0], args.strip_steps, args.seed,
                                   args.strip_dreams))
    atomic_write_bytes(args.card, card(args.run, bundle, table, dtype, size_mb, args.strip_dreams).encode())
    print(json.dumps({"dtype": dtype, "size_mb": round(size_mb, 2), **table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
