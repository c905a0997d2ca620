"""The paper's iterative training, as stages of `python -m train.pipeline --iterations K`.

After the base model (DIR/bundle, "iteration 0"):

    DIR/iter0/agent/      agent A_0 trained in the base dream (python -m train.agent), real score
    for i = 1..K:
      DIR/rollouts/       + --iter-episodes real rollouts driven by A_{i-1} through its own world
                          model, perturbed segments as exploration (train/policies.py AgentPolicy),
                          numbered after the earlier ones, so the held-out split keeps its rollouts
      DIR/latents/        + those rollouts encoded by the same VAE (the VAE is not retrained)
      DIR/iter{i}/mdnrnn  M_{i-1}'s MDN-RNN fine-tuned on all the data (train.mdnrnn --init)
      DIR/iter{i}/bundle  the new world model M_i
      DIR/iter{i}/agent/  a fresh agent A_i trained in M_i's dream; its real score

Each stage is its command's own (finished shards skipped, checkpoints resumed), so a rerun carries
on. `records(out, K)` collects every iteration's real and dream scores and data size for
pipeline.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from train import collect, encode, mdnrnn


def iteration_dir(out: Path, i: int | str) -> Path:
    return out / ("final" if i == "final" else f"iter{i}")


def bundle_of(out: Path, i: int | str) -> Path:
    """The world model of iteration i (0: the base pipeline's; "final": the sample-flag fine-tune's)."""
    return out / "bundle" if i == 0 else iteration_dir(out, i) / "bundle"


def dream_bundle(out: Path) -> Path:
    """The final model's dream path when fine-tuned first (stage "final-dream", see `final_stages`)."""
    return iteration_dir(out, "final") / "dream" / "bundle"


def agent_file(out: Path, i: int) -> Path:
    return iteration_dir(out, i) / "agent" / "agent.zip"


def first_episode(s: dict, i: int) -> int:
    """Index of iteration i's first collected rollout (after the base data and earlier iterations)."""
    return s["episodes"] + s["perturbed_episodes"] + (i - 1) * s["iter_episodes"]


def train_agent(argv: list[str]) -> int:
    """`python -m train.agent ARGV` in its own process (its JAX settings must precede JAX's start)."""
    return subprocess.run([sys.executable, "-m", train_agent.module, *argv]).returncode


train_agent.module = "train.agent"  # what the pipeline prints as the stage's command


def agent_stage(out: Path, s: dict, i: int, seed: int, name: str | None = None) -> tuple:
    """A fresh agent trained in iteration i's dream (i = "final": the final model's), scored on the real game."""
    argv = ["--model", str(bundle_of(out, i)), "--out", str(iteration_dir(out, i) / "agent"),
            "--timesteps", str(s["agent_timesteps"]), "--eval-every", str(s["agent_timesteps"]),
            "--final-episodes", str(s["eval_episodes"]), "--eval-episodes", "2", "--max-steps", str(s["max_steps"]),
            "--seed", str(seed)]
    return name or f"iter{i}-agent", train_agent, argv


def collect_stage(out: Path, s: dict, name: str, agent: Path, model: Path, i: int, seed: int,
                  workers: list[str]) -> tuple:
    """--iter-episodes real rollouts driven by `agent` through world model `model`, numbered as
    iteration i's (train.collect --policy AGENT --model BUNDLE)."""
    return name, collect.main, ["--policy", str(agent), "--model", str(model), "--episodes", str(s["iter_episodes"]),
                                "--first-episode", str(first_episode(s, i)), "--max-steps", str(s["max_steps"]),
                                "--seed", str(seed), "--out", str(out / "rollouts"), *workers]


def encode_stage(out: Path, name: str) -> tuple:
    """Encode the run's rollouts not yet encoded by its VAE (train.encode skips the rest)."""
    return name, encode.main, ["--data", str(out / "rollouts"), "--vae", str(out / "vae"), "--out", str(out / "latents")]


def stages(out: Path, s: dict, iterations: int, seed: int, workers: list[str]) -> list[tuple]:
    """(name, main, argv) of every iteration stage, in order."""
    result = [agent_stage(out, s, 0, seed)]
    for i in range(1, iterations + 1):
        here = iteration_dir(out, i)
        result += [
            collect_stage(out, s, f"iter{i}-collect", agent_file(out, i - 1), bundle_of(out, i - 1), i, seed, workers),
            encode_stage(out, f"iter{i}-encode"),
            (f"iter{i}-mdnrnn", mdnrnn.main,
             ["--latents", str(out / "latents"), "--vae", str(out / "vae"), "--out", str(here / "mdnrnn"),
              "--bundle", str(bundle_of(out, i)), "--init", str(bundle_of(out, i - 1)),
              "--steps", str(s["iter_mdn_steps"]), "--seq-len", str(s["seq_len"]), "--lr", str(s["iter_lr"]),
              "--lr-end", f"{s['iter_lr'] / 10:g}", "--eval-every", str(max(s["iter_mdn_steps"] // 2, 1)),
              "--seed", str(seed + i)]),
            agent_stage(out, s, i, seed),
        ]
    return result


def final_stages(out: Path, s: dict, source: int, seed: int) -> list[tuple]:
    """DIR/final: iteration `source`'s MDN-RNN given the sample flag's mean path, trained on all the
    data's encoder means (train.mdnrnn --sample-flag --freeze-sampled: on samples, so in the dream
    and in LatentCarRacing-v0's memory, it is iteration `source`'s model exactly; 1-step predictions
    from real latents use the new path), and a fresh agent trained in its dream, scored on the real game.
    With s["final_reward_input"] the model also gains the reward input (--reward-input), which only
    the mean path learns to read: on samples it stays iteration `source`'s model (see
    dreamenv/mdnrnn.py for why the dream's path does not read rewards).

    With s["final_start_fraction"] F > 0 the dream's path changes first (stage "final-dream",
    DIR/final/dream): iteration `source`'s MDN-RNN fine-tuned on all the data (samples, as an
    iteration's) with a share F of its windows starting at an episode's first step, where every dream
    starts (train.mdnrnn --start-fraction: the dream then zooms in as the game does); the mean path is
    then trained on that model."""
    steps, data = s["final_mdn_steps"], ["--latents", str(out / "latents"), "--vae", str(out / "vae")]
    paths = ["--freeze-sampled", *(["--reward-input"] if s.get("final_reward_input") else [])]
    dream, init = [], bundle_of(out, source)
    if s.get("final_start_fraction"):
        dream_steps = s["iter_mdn_steps"]
        dream = [("final-dream", mdnrnn.main,
                  [*data, "--out", str(dream_bundle(out).parent / "mdnrnn"), "--bundle", str(dream_bundle(out)),
                   "--init", str(init),
                   "--start-fraction", f"{s['final_start_fraction']:g}", "--steps", str(dream_steps),
                   "--seq-len", str(s["seq_len"]), "--lr", str(s["iter_lr"]), "--lr-end", f"{s['iter_lr'] / 10:g}",
                   "--eval-every", str(max(dream_steps // 2, 1)), "--seed", str(seed + 1)])]
        init = dream_bundle(out)
    return [
        *dream,
        ("final-mdnrnn", mdnrnn.main,
         [*data, "--out", str(out / "final" / "mdnrnn"),
          "--bundle", str(bundle_of(out, "final")), "--init", str(init), "--sample-flag",
          *paths, "--steps", str(steps), "--seq-len", str(s["seq_len"]),
          "--eval-every", str(max(steps // 4, 1)), "--seed", str(seed + 1)]),
        agent_stage(out, s, "final", seed, name="final-agent"),
    ]


def records(out: Path, iterations: int, which: list | None = None) -> list[dict]:
    """Per finished iteration (0..iterations, or those in `which`): its agent's real and dream
    scores, its model's held-out metrics and data."""
    rows = []
    for i in range(iterations + 1) if which is None else which:
        results = iteration_dir(out, i) / "agent" / "results.json"
        if not results.is_file():
            break
        r = json.loads(results.read_text())
        config = json.loads((bundle_of(out, i) / "config.json").read_text())["metadata"]
        rows.append({"iteration": i, "real": r["real"], "dream": r["dream"], "agent": r["agent"],
                     "bundle": str(bundle_of(out, i)), "mdnrnn_heldout": config.get("mdnrnn_metrics"),
                     "train_rollouts": config.get("train_rollouts"), "train_steps": config.get("train_steps"),
                     "rollouts": config.get("train_rollouts", 0) + config.get("heldout_rollouts", 0)})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the records."""
    lines = ["| iteration | train rollouts | dream return | real return (mean ± std, episodes) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['iteration']} | {r['train_rollouts']} | {r['dream']['mean']:.1f} | "
                     f"{r['real']['mean']:.1f} ± {r['real']['std']:.1f} ({r['real']['episodes']}) |")
    return "\n".join(lines)
