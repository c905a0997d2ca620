"""What each control pays, in the dream and on the real game: does the world model know what actions do?

`python -m benchmarks.controls [--model BUNDLE ...] [--temperature 1.0] [--dream-episodes 256]
[--real-episodes 4]` holds one fixed action for a whole episode (idle, full and half throttle,
full brake, hard left/right with half throttle) and reports the mean return of each in the dream
of each model (`world_model.rollout`, one `lax.scan` per action) and on real CarRacing-v3 (episode
i reset with seed + i), with each model's rank correlation to the real column: a dream an agent
can learn from ranks the controls as the real game does. Prints a table, writes JSON (default
benchmarks/out/controls.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import emit
from dreamenv import MAX_EPISODE_STEPS
from dreamenv import world_model as wm
from dreamenv.envs.spaces import check_temperature
from dreamenv.model import DEFAULT_MODEL, load_model
from train.mdnrnn_loss import average_ranks

CONTROLS = {  # name -> (steer, gas, brake)
    "idle": (0.0, 0.0, 0.0),
    "full throttle": (0.0, 1.0, 0.0),
    "half throttle": (0.0, 0.5, 0.0),
    "full brake": (0.0, 0.0, 1.0),
    "left + half throttle": (-1.0, 0.5, 0.0),
    "right + half throttle": (1.0, 0.5, 0.0),
}


def constant(params, obs):
    """policy_fn for world_model.rollout: the action `params` [3] for every env."""
    return jnp.broadcast_to(params, (obs.shape[0], 3))


def dream_returns(model: wm.WorldModel, action, episodes: int, steps: int, temperature: float, seed: int):
    returns, _ = wm.rollout(model, constant, jnp.asarray(action, jnp.float32), jax.random.key(seed), episodes,
                            steps, temperature, obs="z")
    return np.asarray(returns)


def real_returns(action, episodes: int, steps: int, seed: int) -> np.ndarray:
    env = gym.make("CarRacing-v3", max_episode_steps=steps)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(np.asarray(action, np.float32))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def rank_correlation(x, y) -> float:
    """Spearman's ρ (ties share their average rank); NaN when a column is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 0 and ry.std() > 0 else float("nan")


def controls(models=(None,), temperature: float = 1.0, dream_episodes: int = 256, real_episodes: int = 4,
             steps: int = MAX_EPISODE_STEPS, seed: int = 0) -> dict:
    """-> {"rows": [{control, action, real_mean, real_std, dream: [{mean, std} per model]}], "rank_correlation": [per model], ...}"""
    worlds = [load_model(m) for m in models]
    temperature = check_temperature(temperature)
    rows = []
    for name, action in CONTROLS.items():
        real = real_returns(action, real_episodes, steps, seed)
        dreams = [dream_returns(w, action, dream_episodes, steps, temperature, seed) for w in worlds]
        rows.append({"control": name, "action": list(action), "real_mean": float(real.mean()),
                     "real_std": float(real.std()),
                     "dream": [{"mean": float(d.mean()), "std": float(d.std())} for d in dreams]})
    real_means = [r["real_mean"] for r in rows]
    rho = [rank_correlation([r["dream"][i]["mean"] for r in rows], real_means) for i in range(len(models))]
    names = [str(m or DEFAULT_MODEL) for m in models]
    lines = ["| control (held all episode) | real return | " + " | ".join(f"dream: {n}" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    lines += [f"| {r['control']} | {r['real_mean']:.0f} ± {r['real_std']:.0f} | "
              + " | ".join(f"{d['mean']:.0f} ± {d['std']:.0f}" for d in r["dream"]) + " |" for r in rows]
    lines.append("| rank correlation with real | 1 | " + " | ".join(f"{x:.2f}" for x in rho) + " |")
    lines.append(f"\n{dream_episodes} dream episodes per control at τ = {temperature:g}, {real_episodes} real "
                 f"episodes (seeds {seed}..), {steps} steps; rank correlation = Spearman's ρ over the controls.")
    return {"models": names, "temperature": temperature, "dream_episodes": dream_episodes,
            "real_episodes": real_episodes, "steps": steps, "seed": seed, "rows": rows,
            "rank_correlation": rho, "markdown": "\n".join(lines)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.controls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, nargs="+", default=[None], help="bundle folders (default: the shipped one)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--dream-episodes", type=int, default=256)
    p.add_argument("--real-episodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=MAX_EPISODE_STEPS, help="episode length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/controls.json"))
    args = p.parse_args(argv)
    for name in ("dream_episodes", "real_episodes", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    result = controls(args.model, args.temperature, args.dream_episodes, args.real_episodes, args.steps, args.seed)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
