"""Collection throughput: one worker process against W, on the same episodes, in one run.

`python -m benchmarks.collect_speed` runs train/collect.py's `run` (stepping CarRacing-v3,
the policy, preprocessing, compressing and atomically saving shards) into temporary folders
with 1 worker and with W, alternating, `--repeats` times each, and reports the best frames/s
(wall clock, worker start-up included) and the scaling ratio rate_W / (W · rate_1); the target
is >= 0.8. The same run also times bare CarRacing-v3 stepping in this process (random actions, no
policy, preprocessing or saving) and reports rate_W / (W · that rate) beside it. Other jobs on the machine lower the ratio, so each run also records the load average
before it and the workers' CPU time per frame (equal for 1 and W when the code itself scales).
Prints a table, writes JSON (default benchmarks/out/collect_speed.json).

`--backend ray [--address ADDR]` measures the Ray backend (train/ray_backend.py) against the pool
instead: frames/s of both for 1 and W workers and the Ray/pool ratio (target >= 0.9), then the
per-episode costs (the worker's rollout and compression, the shard's size, the driver's task
round trip, write and manifest rewrite, measured here) and the wall time they project for
--rollouts episodes on 2, 64 and 512 cores (see `project` for what it assumes). Ray's runs share
one Ray instance, started before they are timed; its start-up is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import gymnasium as gym

from benchmarks.throughput import env_stepper, random_actions
from dreamenv.shards import atomic_write, encode_shard, shard_name, write_manifest, write_shard_bytes
from train.collect import MANIFEST_EVERY_S, MANIFEST_SHARE, CollectConfig, default_workers, episode_shard, make_env, run
from train.policies import make_policy

CORES = (2, 64, 512)
LINK_BYTES_PER_S = 1e9  # assumed: shards reach a cluster's driver at 1 GB/s (a 10 Gbit/s link, less overhead)


def measure(workers: int, episodes: int, policy: str, seed: int, max_steps: int, backend: str = "pool",
            address: str | None = None) -> dict:
    """Collect `episodes` episodes with `workers` processes (or Ray tasks) into a temp folder -> rate."""
    load = os.getloadavg()[0]
    cpu_before = _children_cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(out=Path(tmp), episodes=episodes, workers=workers, policy=policy, seed=seed,
                               max_steps=max_steps, backend=backend, address=address)
        result = run(config, progress=False)
    if result.failures:
        raise RuntimeError(f"benchmarks/collect_speed.py: collection failed: {result.failures}")
    return {
        "backend": backend,
        "workers": workers,
        "episodes": episodes,
        "frames": result.frames,
        "seconds": result.seconds,
        "frames_per_s": result.frames / result.seconds,
        # Ray's workers are not this process's children: their CPU time is not counted here
        "cpu_ms_per_frame": None if backend == "ray" else
        1000.0 * (_children_cpu_seconds() - cpu_before) / result.frames,
        "load_before": load,
    }


def _children_cpu_seconds() -> float:
    """User + system CPU time of finished (joined) child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def episode_costs(policy: str, seed: int, max_steps: int, manifest_entries: int) -> dict:
    """Seconds per episode of each part of a Ray collection, measured in this process (and on
    the running Ray instance for the task round trip and the shard's transfer)."""
    import ray

    config = CollectConfig(policy=policy, seed=seed, max_steps=max_steps)
    env, pol = make_env(max_steps), make_policy(policy)
    episode_shard(env, pol, config, 0)  # warm-up: first-call costs are not per-episode ones
    start = time.perf_counter()
    arrays, meta = episode_shard(env, pol, config, 1)
    rollout = time.perf_counter() - start
    env.close()
    start = time.perf_counter()
    data = encode_shard(arrays, meta)
    encode = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i in range(5):
            write_shard_bytes(Path(tmp) / shard_name(i), data)
        write = (time.perf_counter() - start) / 5
        entries = [{"file": shard_name(i), **meta, "episode": i} for i in range(manifest_entries)]
        start = time.perf_counter()
        write_manifest(tmp, {"format": 1, "shards": entries})
        manifest = time.perf_counter() - start
    noop, blob = ray.remote(num_cpus=1)(lambda: None), ray.remote(num_cpus=1)(lambda n: bytes(n))
    ray.get([noop.remote() for _ in range(20)])  # warm-up
    start = time.perf_counter()
    ray.get([noop.remote() for _ in range(200)])
    task = (time.perf_counter() - start) / 200
    start = time.perf_counter()
    for _ in range(10):
        ray.get(blob.remote(len(data)))
    receive = (time.perf_counter() - start) / 10 - task
    return {"steps": int(meta["steps"]), "rollout_s": rollout, "encode_s": encode, "shard_bytes": len(data),
            "task_roundtrip_s": task, "local_receive_s": max(receive, 0.0), "write_s": write,
            "manifest_entries": manifest_entries, "manifest_write_s": manifest}


def project(costs: dict, per_core_fps: float, rollouts: int, cores=CORES) -> list[dict]:
    """Wall time for `rollouts` episodes on each core count, assuming:
    - every core runs one worker at `per_core_fps` (measured with all of this machine's cores
      busy), no slower with more cores, and the driver has a core of its own;
    - the driver handles one episode at a time: a task round trip, receiving the shard over the
      network at LINK_BYTES_PER_S, writing it (at this machine's disk speed); and rewrites the
      manifest (of `manifest_entries` entries: its final size) every MANIFEST_EVERY_S seconds, or
      less often, in at most MANIFEST_SHARE of its time (train.collect);
    - the two overlap, so the slower one sets the pace; Ray's start-up is not counted.
    """
    worker_s = costs["steps"] / per_core_fps
    driver_s = costs["task_roundtrip_s"] + costs["shard_bytes"] / LINK_BYTES_PER_S + costs["write_s"]
    # the driver's time left to episodes
    driver_share = 1.0 - min(costs["manifest_write_s"] / MANIFEST_EVERY_S, MANIFEST_SHARE)
    rows = []
    for c in cores:
        workers_wall, driver_wall = rollouts * worker_s / c, rollouts * driver_s / driver_share
        wall = max(workers_wall, driver_wall)
        rows.append({"cores": c, "workers_bound_s": workers_wall, "driver_bound_s": driver_wall, "wall_s": wall,
                     "bound": "workers" if workers_wall >= driver_wall else "driver",
                     "driver_disk_mb_per_s": rollouts * costs["shard_bytes"] / wall / 1e6})
    return rows


def compare_ray(args) -> dict:
    """--backend ray: pool and Ray runs for 1 and W workers, per-episode costs and a projection."""
    from train.ray_backend import import_ray

    ray = import_ray()
    start = time.perf_counter()
    ray.init(address=args.address) if args.address else ray.init(include_dashboard=False)
    startup = time.perf_counter() - start
    try:
        episodes = args.episodes or 2 * args.workers
        runs = [measure(w, episodes, args.policy, args.seed, args.max_steps, b, args.address if b == "ray" else None)
                for _ in range(args.repeats) for w in (1, args.workers) for b in ("pool", "ray")]
        costs = episode_costs(args.policy, args.seed, args.max_steps, args.rollouts)
    finally:
        ray.shutdown()
    best = {(b, w): max((r for r in runs if (r["backend"], r["workers"]) == (b, w)), key=lambda r: r["frames_per_s"])
            for b in ("pool", "ray") for w in (1, args.workers)}
    ratios = {w: best["ray", w]["frames_per_s"] / best["pool", w]["frames_per_s"] for w in (1, args.workers)}
    per_core = best["ray", args.workers]["frames_per_s"] / args.workers
    projection = project(costs, per_core, args.rollouts)

    print(f"{'backend':>7}  {'workers':>7}  {'frames':>6}  {'seconds':>7}  {'frames/s':>8}  {'load':>4}")
    for r in runs:
        print(f"{r['backend']:>7}  {r['workers']:>7}  {r['frames']:>6}  {r['seconds']:>7.1f}  "
              f"{r['frames_per_s']:>8.1f}  {r['load_before']:>4.1f}")
    for w, ratio in ratios.items():
        print(f"Ray / pool, {w} worker(s) (best runs): {best['ray', w]['frames_per_s']:.1f} / "
              f"{best['pool', w]['frames_per_s']:.1f} = {ratio:.2f} (target >= 0.90)")
    print(f"Ray start-up (not in the runs): {startup:.1f} s")
    print(f"\nper-episode costs ({costs['steps']} steps, policy {args.policy}):")
    print(f"  worker: rollout {costs['rollout_s']:.2f} s, compress {costs['encode_s']:.2f} s; "
          f"shard {costs['shard_bytes'] / 1e6:.2f} MB")
    print(f"  driver: task round trip {1e3 * costs['task_roundtrip_s']:.1f} ms, local receive "
          f"{1e3 * costs['local_receive_s']:.1f} ms, write {1e3 * costs['write_s']:.1f} ms; manifest of "
          f"{costs['manifest_entries']} entries {1e3 * costs['manifest_write_s']:.0f} ms, every {MANIFEST_EVERY_S:g} s or "
          f"in at most {MANIFEST_SHARE:.0%} of the time")
    print(f"\nprojected wall time for {args.rollouts} rollouts at {per_core:.1f} frames/s per core "
          f"(shards to the driver at {LINK_BYTES_PER_S / 1e9:g} GB/s):")
    print(f"{'cores':>5}  {'workers-bound':>13}  {'driver-bound':>12}  {'wall':>9}  {'bound':>7}  {'disk MB/s':>9}")
    for r in projection:
        print(f"{r['cores']:>5}  {r['workers_bound_s']:>12.0f}s  {r['driver_bound_s']:>11.0f}s  "
              f"{r['wall_s'] / 3600:>8.2f}h  {r['bound']:>7}  {r['driver_disk_mb_per_s']:>9.1f}")
    return {"config": {**vars(args), "out": str(args.out), "episodes": episodes}, "runs": runs,
            "ray_over_pool": {str(w): r for w, r in ratios.items()}, "ray_startup_s": startup, "costs": costs,
            "per_core_frames_per_s": per_core, "link_bytes_per_s": LINK_BYTES_PER_S,
            "manifest_every_s": MANIFEST_EVERY_S, "manifest_share": MANIFEST_SHARE, "projection": projection}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collect_speed", description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=default_workers(), help="W (default: all cores)")
    p.add_argument("--episodes", type=int, default=0, help="episodes per run (default: 2·W)")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--policy", default="mix")
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2, help="runs per worker count; the best is kept")
    p.add_argument("--bare-seconds", type=float, default=10.0, help="time spent stepping bare CarRacing-v3")
    p.add_argument("--backend", choices=("pool", "ray"), default="pool",
                   help="ray: Ray against the pool, per-episode costs and a projection")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--rollouts", type=int, default=10_000, help="--backend ray: rollouts the projection is for")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/collect_speed.json"))
    args = p.parse_args(argv)
    if args.backend == "ray":
        report = compare_ray(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda f: f.write(json.dumps(report, indent=1).encode()))
        print(f"wrote {args.out}")
        return
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
