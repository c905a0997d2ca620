"""Collection throughput: one worker process against W, on the same episodes, in one run.

`python -m benchmarks.collect_speed` runs train/collect.py's `run` (stepping CarRacing-v3,
the policy, preprocessing, compressing and atomically saving shards) into temporary folders
with 1 worker and with W, alternating, `--repeats` times each, and reports the best frames/s
(wall clock, worker start-up included) and the scaling ratio rate_W / (W · rate_1); the target
is >= 0.8. The same run also times bare CarRacing-v3 stepping in this process (random actions, no
policy, preprocessing or saving) and reports rate_W / (W · that rate) beside it. Other jobs on the machine lower the ratio, so each run also records the load average
before it and the workers' CPU time per frame (equal for 1 and W when the code itself scales).
Prints a table, writes JSON (default benchmarks/out/collect_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

import gymnasium as gym

from benchmarks.throughput import env_stepper, random_actions
from dreamenv.shards import atomic_write
from train.collect import CollectConfig, default_workers, run


def measure(workers: int, episodes: int, policy: str, seed: int, max_steps: int) -> dict:
    """Collect `episodes` episodes with `workers` processes into a temp folder -> rate."""
    load = os.getloadavg()[0]
    cpu_before = _children_cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(out=Path(tmp), episodes=episodes, workers=workers, policy=policy, seed=seed,
                               max_steps=max_steps)
        result = run(config, progress=False)
    if result.failures:
        raise RuntimeError(f"benchmarks/collect_speed.py: collection failed: {result.failures}")
    return {
        "workers": workers,
        "episodes": episodes,
        "frames": result.frames,
        "seconds": result.seconds,
        "frames_per_s": result.frames / result.seconds,
        "cpu_ms_per_frame": 1000.0 * (_children_cpu_seconds() - cpu_before) / result.frames,
        "load_before": load,
    }


def _children_cpu_seconds() -> float:
    """User + system CPU time of finished (joined) child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collect_speed", description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=default_workers(), help="W (default: all cores)")
    p.add_argument("--episodes", type=int, default=0, help="episodes per run (default: 2·W)")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--policy", default="mix")
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2, help="runs per worker count; the best is kept")
    p.add_argument("--bare-seconds", type=float, default=10.0, help="time spent stepping bare CarRacing-v3")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/collect_speed.json"))
    args = p.parse_args(argv)
    episodes = args.episodes or 2 * args.workers

    runs = [
        measure(w, episodes, args.policy, args.seed, args.max_steps)
        for _ in range(args.repeats)
        for w in (1, args.workers)
    ]
    print(f"{'workers':>7}  {'frames':>6}  {'seconds':>7}  {'frames/s':>8}  {'cpu ms/frame':>12}  {'load':>4}")
    for r in runs:
        print(
            f"{r['workers']:>7}  {r['frames']:>6}  {r['seconds']:>7.1f}  {r['frames_per_s']:>8.1f}  "
            f"{r['cpu_ms_per_frame']:>12.2f}  {r['load_before']:>4.1f}"
        )
    env = gym.make("CarRacing-v3")
    bare, _ = env_stepper(env, random_actions((1000,)))(args.bare_seconds)
    env.close()
    single, multi = (max((r for r in runs if r["workers"] == w), key=lambda r: r["frames_per_s"]) for w in (1, args.workers))
    ratio = multi["frames_per_s"] / (args.workers * single["frames_per_s"])
    bare_ratio = multi["frames_per_s"] / (args.workers * bare)
    print(f"scaling (best runs): {multi['frames_per_s']:.1f} / ({args.workers} × {single['frames_per_s']:.1f}) = {ratio:.2f} (target >= 0.80)")
    print(f"against bare CarRacing-v3 stepping ({bare:.1f} steps/s): {multi['frames_per_s']:.1f} / "
          f"({args.workers} × {bare:.1f}) = {bare_ratio:.2f}")

    report = {"config": {**vars(args), "out": str(args.out), "episodes": episodes}, "runs": runs, "ratio": ratio,
              "bare_carracing_steps_per_s": bare, "ratio_to_bare": bare_ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
