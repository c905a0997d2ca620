"""Dream-to-real transfer of one agent: its return in the dream at several τ and on the real game.

`python -m benchmarks.transfer --agent runs/agent/agent.zip [--model BUNDLE] [--temperatures 0.75 1.0
1.15 1.3] [--real-episodes N] [--dream-episodes N] [--backend ray [--address ADDR]]` scores the
agent (an SB3 .zip or a controller .npz, see train/evaluate.py) on N dream episodes at each τ and
once on N real CarRacing-v3 episodes (the real game has no τ; --backend ray runs them as Ray
tasks, with the same scores), and reports mean ± std and the gap (dream − real) as a table like
the World Models paper's Doom table. Prints it and writes JSON (default
benchmarks/out/transfer.json). `--smoke`: 1 real and 4 dream episodes of 50 steps, for tests.
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts: see dreamenv/envs/dream.py

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import emit  # noqa: E402
from dreamenv.envs.spaces import check_temperature  # noqa: E402
from dreamenv.model import DEFAULT_MODEL, load_model  # noqa: E402
from train.evaluate import evaluate_dream, evaluate_real, summary  # noqa: E402

TEMPERATURES = (0.75, 1.0, 1.15, 1.3)
SMOKE = dict(real_episodes=1, dream_episodes=4, max_steps=50)


def table(rows: list[dict], real_episodes: int, dream_episodes: int) -> str:
    """Markdown: one line per τ, dream and real mean ± std and the gap."""
    lines = ["| τ | dream return | real return | gap (dream − real) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['temperature']:g} | {r['dream_mean']:.0f} ± {r['dream_std']:.0f} | "
              f"{r['real_mean']:.0f} ± {r['real_std']:.0f} | {r['gap']:+.0f} |" for r in rows]
    lines.append(f"\nMean ± std over {dream_episodes} dream episodes per τ and {real_episodes} real "
                 f"CarRacing-v3 episodes (the same for every row: the real game has no τ).")
    return "\n".join(lines)


def transfer(agent, model=None, temperatures=TEMPERATURES, real_episodes: int = 20, dream_episodes: int = 256,
             seed: int = 0, workers: int = 2, max_steps: int | None = None, backend: str = "pool",
             address: str | None = None) -> dict:
    """-> {"rows": [{temperature, dream_mean, dream_std, real_mean, real_std, gap}], "markdown", "real", ...}"""
    temperatures = [check_temperature(t) for t in temperatures]
    if not temperatures:
        raise ValueError("temperatures is empty; give at least one τ")
    real = summary(evaluate_real(agent, model, real_episodes, seed, workers, max_steps, backend, address))
    world = load_model(model)
    rows = []
    for t in temperatures:
        dream = summary(evaluate_dream(agent, world, dream_episodes, seed, t, max_steps))
        rows.append({"temperature": t, "dream_mean": dream["mean"], "dream_std": dream["std"],
                     "real_mean": real["mean"], "real_std": real["std"], "gap": dream["mean"] - real["mean"]})
    return {"agent": str(agent), "model": str(model or DEFAULT_MODEL), "seed": seed, "max_steps": max_steps,
            "real_episodes": real_episodes, "dream_episodes": dream_episodes, "real": real, "rows": rows,
            "markdown": table(rows, real_episodes, dream_episodes)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", type=Path, required=True, help="an SB3 .zip or a controller .npz")
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    p.add_argument("--real-episodes", type=int, default=20)
    p.add_argument("--dream-episodes", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="real-episode subprocesses (ray: tasks in flight, 0: all CPUs)")
    p.add_argument("--backend", choices=("pool", "ray"), default="pool", help="real episodes in local processes or Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--smoke", action="store_true", help=f"tiny run for tests: {SMOKE}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/transfer.json"))
    args = p.parse_args(argv)
    budget = SMOKE if args.smoke else dict(real_episodes=args.real_episodes, dream_episodes=args.dream_episodes,
                                           max_steps=args.max_steps)
    result = transfer(args.agent, args.model, args.temperatures, seed=args.seed, workers=args.workers,
                      backend=args.backend, address=args.address, **budget)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
