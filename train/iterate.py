"""The paper's iterative training, as stages of `python -m train.pipeline` (`PipelineConfig.iterations`).

After the base model (DIR/bundle, "iteration 0"):

    DIR/iter0/agent/      agent A_0 trained in the base dream (train.agent), scored on the real game
    for i = 1..K:
      DIR/rollouts/       + iter_episodes real rollouts driven by A_{i-1} through its own world
                          model, perturbed segments as exploration (train/policies.py AgentPolicy),
                          numbered after the earlier ones, so the held-out split keeps its rollouts
      DIR/latents/        + those rollouts encoded by the same VAE (the VAE is not retrained)
      DIR/iter{i}/mdnrnn  an MDN-RNN trained afresh on all the data but the privileged drivers'
                          (a fine-tune of M_{i-1} keeps the bias they taught it: docs/RESULTS.md)
      DIR/iter{i}/bundle  the new world model M_i
      DIR/iter{i}/agent/  a fresh agent A_i trained in M_i's dream; its real score

Each stage is its function's own (finished shards skipped, checkpoints resumed), so a rerun carries
on. `records(out, K)` collects every iteration's real and dream scores and data size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from train import collect, encode, mdnrnn


def iteration_dir(out: Path, i: int) -> Path:
    return out / f"iter{i}"


def bundle_of(out: Path, i: int) -> Path:
    """The world model of iteration i (0: the base model)."""
    return out / "bundle" if i == 0 else iteration_dir(out, i) / "bundle"


def agent_file(out: Path, i: int) -> Path:
    return iteration_dir(out, i) / "agent" / "agent.zip"


def encode_config(out: Path) -> encode.EncodeConfig:
    """Encode the run's rollouts not yet encoded by its VAE (train.encode skips the rest)."""
    return encode.EncodeConfig(data=out / "rollouts", vae=out / "vae", out=out / "latents")


def agent_config(config, i: int):
    """A fresh agent trained in iteration i's dream, scored on `eval_episodes` real episodes."""
    from train.agent import AgentConfig

    return AgentConfig(model=bundle_of(config.out, i), out=iteration_dir(config.out, i) / "agent",
                       timesteps=config.agent_timesteps, eval_every=config.agent_timesteps, eval_episodes=2,
                       final_episodes=config.eval_episodes, max_steps=config.max_steps, seed=config.seed)


def stages(config, collect_base: collect.CollectConfig) -> list[tuple[str, object]]:
    """(name, stage config) of every iteration stage, in order; `collect_base` holds the shared
    collection settings (out, seed, workers, max_steps)."""
    out = config.out
    result = [("iter0-agent", agent_config(config, 0))]
    for i in range(1, config.iterations + 1):
        result += [
            (f"iter{i}-collect", dataclasses.replace(
                collect_base, policy=str(agent_file(out, i - 1)), model=bundle_of(out, i - 1),
                episodes=config.iter_episodes, first_episode=config.first_episode(i))),
            (f"iter{i}-encode", encode_config(out)),
            (f"iter{i}-mdnrnn", mdnrnn.MDNRNNConfig(
                latents=out / "latents", vae=out / "vae", out=iteration_dir(out, i) / "mdnrnn",
                bundle=bundle_of(out, i), steps=config.iter_mdn_steps, seq_len=config.seq_len,
                start_fraction=config.start_fraction, privileged_data=config.privileged_data,
                eval_every=max(config.iter_mdn_steps // 2, 1),
                seed=config.seed + i)),
            (f"iter{i}-agent", agent_config(config, i)),
        ]
    return result


def records(out: Path, iterations: int) -> list[dict]:
    """Per finished iteration 0..iterations: its agent's real and dream scores, its model's held-out
    metrics and data."""
    rows = []
    for i in range(iterations + 1):
        results = iteration_dir(out, i) / "agent" / "results.json"
        if not results.is_file():
            break
        r = json.loads(results.read_text())
        meta = json.loads((bundle_of(out, i) / "config.json").read_text())["metadata"]
        rows.append({"iteration": i, "real": r["real"], "dream": r["dream"], "agent": r["agent"],
                     "bundle": str(bundle_of(out, i)), "mdnrnn_heldout": meta.get("mdnrnn_metrics"),
                     "train_rollouts": meta.get("train_rollouts"), "train_steps": meta.get("train_steps"),
                     "rollouts": sum(meta.get(k, 0) for k in ("train_rollouts", "heldout_rollouts", "left_out_rollouts"))})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the records."""
    lines = ["| iteration | train rollouts | dream return | real return (mean ± std, episodes) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['iteration']} | {r['train_rollouts']} | {r['dream']['mean']:.1f} | "
                     f"{r['real']['mean']:.1f} ± {r['real']['std']:.1f} ({r['real']['episodes']}) |")
    return "\n".join(lines)
