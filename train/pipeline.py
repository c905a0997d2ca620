"""Build a world model from nothing: `python -m train.pipeline [--quick] --out DIR`.

Runs collect -> VAE -> encode -> MDN-RNN in order, each stage as its own command would:

    DIR/rollouts/   real CarRacing-v3 shards          (python -m train.collect): --episodes of the
                    default mix, then --perturbed-episodes of the perturbed track-follower
                    (state-independent actions: what each action does, see train/policies.py)
    DIR/vae/        VAE run: checkpoints, metrics, recon.png, vae.msgpack (python -m train.vae)
    DIR/latents/    encoded rollouts                  (python -m train.encode)
    DIR/mdnrnn/     MDN-RNN run: checkpoints, metrics (python -m train.mdnrnn)
    DIR/bundle/     the model bundle: gym.make("DreamCarRacing-v0", model="DIR/bundle")

`--iterations K` then runs the paper's iterative training (train/iterate.py): an agent trained in
the dream collects new real rollouts, the MDN-RNN is fine-tuned on all the data, a new agent is
trained in the new dream and scored on the real game, K times; pipeline.json's "iterations" holds
each one's real and dream scores. `--policy` picks the base data's policy: the default `mix` with
the perturbed track-follower is the practical regime (privileged data); `--policy random
--perturbed-episodes 0` is the non-privileged one (random policies, then the agent's own data).
`--final-from I` then fine-tunes iteration I's MDN-RNN on all the data with the sample flag into
DIR/final/bundle and scores an agent trained in its dream (train/iterate.py `final_stages`); first
it collects --final-rollouts more rollouts of --final-policy for it (stage "final-collect", default
160 of `ou`: wandering off the road, where the data is thinnest and most episodes that leave the
playfield end).

`--base BUNDLE` starts from a trained model instead of training one: BUNDLE's VAE is the run's and
BUNDLE is its iteration 0 (train/adopt.py, stage "base", in place of "vae" and "mdnrnn");
`--base-agent AGENT` (BUNDLE's dream-trained agent) then drives --iter-episodes more real rollouts
through BUNDLE before encoding, as an iteration's collect does (stage "base-collect"). The shipped
model is `--base <a model shipped before> --base-agent <its driver> --final-from 0
--final-start-fraction 0.1 --final-reward-input`: that model's MDN-RNN with its dream path
fine-tuned on windows from episode starts (stage "final-dream"), then given the sample flag's mean
path, trained on fresh data (its driver's included); on samples, so in the dream and in
LatentCarRacing-v0's memory, it is the final-dream model exactly (see the README for the recipe).

Every stage skips what is already done (finished shards, encoded rollouts) or resumes from its
checkpoint, so rerunning the same command after an interruption carries on where it stopped.
`--quick` is a smoke-scale preset (a few short rollouts, a few hundred updates: minutes on
2 cores); without it the preset is the full-scale one used for the shipped model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import load_bundle, save_bundle
from dreamenv.shards import read_manifest
from train import adopt, collect, iterate, mdnrnn, vae
from train.provenance import git_state

PRESETS = {
    "quick": dict(episodes=4, perturbed_episodes=2, max_steps=200, vae_steps=300, vae_batch=32, mdn_steps=300,
                  seq_len=16, iter_episodes=2, iter_mdn_steps=100, agent_timesteps=8192, eval_episodes=2,
                  final_mdn_steps=100, final_rollouts=0),
    "full": dict(episodes=240, perturbed_episodes=120, max_steps=1000, vae_steps=6000, vae_batch=64,
                 mdn_steps=20_000, seq_len=32, iter_episodes=100, iter_mdn_steps=4000, agent_timesteps=262_144,
                 eval_episodes=100, final_mdn_steps=8000, final_rollouts=160),
}
ITER_LR = 3e-4  # fine-tuning starts from a trained model: lower than training's 1e-3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/pipeline"))
    p.add_argument("--quick", action="store_true", help="smoke-scale preset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="collection workers (default: all cores)")
    p.add_argument("--policy", default="mix", help="the base data's policy (train/policies.py)")
    p.add_argument("--iterations", type=int, default=0, help="iterative-training rounds after the base model")
    p.add_argument("--final-from", type=int, default=None,
                   help="fine-tune this iteration's MDN-RNN with the sample flag into DIR/final (0..--iterations)")
    p.add_argument("--final-reward-input", action="store_true",
                   help="the final model's mean path also reads the previous reward (train.mdnrnn "
                        "--reward-input); on samples, the dream's path, it stays the --final-from model")
    p.add_argument("--final-start-fraction", type=float, default=0.0,
                   help="first fine-tune the --final-from model's dream path with this share of windows starting "
                        "at an episode's first step (stage final-dream; see train/iterate.py final_stages)")
    p.add_argument("--final-policy", default="ou",
                   help="the policy of the --final-rollouts rollouts collected for the final model alone")
    p.add_argument("--base", type=Path, default=None,
                   help="start from this trained bundle (its VAE and MDN-RNN; nothing retrained) instead of training one")
    p.add_argument("--base-agent", type=Path, default=None,
                   help="with --base: its dream-trained agent, which collects --iter-episodes real rollouts through it")
    for name in PRESETS["full"]:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help="override the preset")
    return p.parse_args(argv)


def settings(args) -> dict:
    preset = dict(PRESETS["quick" if args.quick else "full"])
    preset.update({k: getattr(args, k) for k in preset if getattr(args, k) is not None})
    return {**preset, "policy": args.policy, "final_policy": args.final_policy, "iter_lr": ITER_LR,
            "final_reward_input": args.final_reward_input, "final_start_fraction": args.final_start_fraction}


def stages(args, s: dict) -> list[tuple[str, callable, list[str]]]:
    out = args.out
    workers = ["--workers", str(args.workers)] if args.workers else []
    eval_every = str(max(s["vae_steps"] // 4, 1))
    common = ["--max-steps", str(s["max_steps"]), "--seed", str(args.seed), "--out", str(out / "rollouts"), *workers]
    perturbed = [("collect-perturbed", collect.main, ["--policy", "track-perturbed", "--episodes",
                  str(s["perturbed_episodes"]), "--first-episode", str(s["episodes"]), *common])]
    train_vae = [("vae", vae.main, ["--data", str(out / "rollouts"), "--out", str(out / "vae"),
                                    "--steps", str(s["vae_steps"]), "--batch-size", str(s["vae_batch"]),
                                    "--eval-every", eval_every, "--seed", str(args.seed)])]
    train_mdnrnn = [("mdnrnn", mdnrnn.main, ["--latents", str(out / "latents"), "--vae", str(out / "vae"),
                                             "--out", str(out / "mdnrnn"), "--bundle", str(out / "bundle"),
                                             "--steps", str(s["mdn_steps"]), "--seq-len", str(s["seq_len"]),
                                             "--eval-every", str(max(s["mdn_steps"] // 4, 1)),
                                             "--seed", str(args.seed)])]
    base = [("base", adopt.main, ["--bundle", str(args.base), "--run", str(out), "--seed", str(args.seed)])]
    if args.base_agent:
        base.append(iterate.collect_stage(out, s, "base-collect", args.base_agent, args.base, 1, args.seed, workers))
    return [
        ("collect", collect.main, ["--episodes", str(s["episodes"]), "--policy", s["policy"], *common]),
        *(perturbed if s["perturbed_episodes"] else []),
        *(base if args.base else train_vae),
        iterate.encode_stage(out, "encode"),
        *([] if args.base else train_mdnrnn),
        *(iterate.stages(out, s, args.iterations, args.seed, workers) if args.iterations else []),
        *(final_data(args, s, common) if args.final_from is not None and s["final_rollouts"] else []),
        *(iterate.final_stages(out, s, args.final_from, args.seed) if args.final_from is not None else []),
    ]


def final_data(args, s: dict, common: list[str]) -> list[tuple]:
    """--final-rollouts rollouts of --final-policy for the final model alone (numbered after every
    other collection, so earlier models' data stays the first rollouts), and their encoding."""
    collected = max(args.iterations, 1 if args.base_agent else 0)  # rounds that collected before
    first = iterate.first_episode(s, collected + 1)
    return [("final-collect", collect.main, ["--policy", s["final_policy"], "--episodes", str(s["final_rollouts"]),
                                             "--first-episode", str(first), *common]),
            iterate.encode_stage(args.out, "final-encode")]


def data_size(rollouts: Path) -> dict:
    """Rollouts and frames in the collection's manifest."""
    shards = read_manifest(rollouts)["shards"]
    return {"rollouts": len(shards), "frames": sum(s["steps"] for s in shards)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.final_from is not None and not 0 <= args.final_from <= args.iterations:
        raise SystemExit(f"--final-from {args.final_from}: expected an iteration in 0..--iterations ({args.iterations})")
    if args.base_agent and not args.base:
        raise SystemExit("--base-agent: the agent of which model? pass --base BUNDLE too")
    if args.base_agent and args.iterations:
        raise SystemExit("--base-agent collects where iteration 1 would; use it with --iterations 0")
    s = settings(args)
    path = args.out / "pipeline.json"
    spent = json.loads(path.read_text())["stage_seconds"] if path.is_file() else {}
    record = {"command": " ".join(["python -m train.pipeline", *(argv if argv is not None else sys.argv[1:])]),
              "settings": s, "seed": args.seed, **git_state(), "stage_seconds": spent,
              **({"base": {"bundle": str(args.base)}, "base_agent": args.base_agent and str(args.base_agent)}
                 if args.base else {})}
    for name, run, stage_argv in stages(args, s):
        print(f"== {name}: python -m {getattr(run, 'module', run.__module__)} {' '.join(stage_argv)}", flush=True)
        t0 = time.time()
        code = run(stage_argv)
        # wall time summed over invocations: an interrupted-and-resumed stage counts all its runs
        spent[name] = round(spent.get(name, 0.0) + time.time() - t0, 1)
        atomic_write_bytes(path, json.dumps(record, indent=1).encode())
        if code:
            print(f"train/pipeline.py: stage {name} failed (exit {code}); rerun to resume", file=sys.stderr)
            return code
    record["data"] = data_size(args.out / "rollouts")
    if args.base:  # what the run started from: the base's path and its own metadata (how it was built)
        record["base"] = load_bundle(args.out / "bundle").metadata["base"]
    if args.iterations:
        record["iterations"] = iterate.records(args.out, args.iterations)
        print(iterate.table(record["iterations"]))
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    built = list(range(len(record.get("iterations", [])) or 1))
    if args.final_from is not None:
        record["final"] = (iterate.records(args.out, 0, ["final"]) or [None])[0]
        record["final_from"] = args.final_from
        built.append("final")
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    for i in built:  # every model built records how
        folder = iterate.bundle_of(args.out, i)
        bundle = load_bundle(folder)
        save_bundle(folder, dataclasses.replace(bundle, metadata={**bundle.metadata, "pipeline": record, "iteration": i}))
    print(f"bundle: {folder}  (gym.make('DreamCarRacing-v0', model='{folder}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
