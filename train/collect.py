"""Collect real CarRacing-v3 rollouts into shards: `python -m train.collect` (`CollectConfig`).

Writes episodes --first-episode .. --first-episode + --episodes - 1 into --out: episode i runs
with env and policy seeds derived from (--seed, i) and is saved as `<out>/rollout_<i>.npz` (see
dreamenv/shards.py), with one entry in `<out>/manifest.json`. Worker processes (spawned, never
forked) each own one env. Rerunning the same config skips valid shards and redoes missing or
corrupted ones; the shards, not the manifest, say what is done (the manifest is an index rebuilt
from them). A shard collected with another policy, seed, --max-steps or --model is never
overwritten: its episode fails. A failed episode, or a worker process that dies, is reported
with its episode and error; the others finish, `run` returns them in `CollectResult.failures`
and the command exits 1.

--backend ray [--address ADDR] runs the episodes as Ray tasks on a cluster (or a local Ray
instance) instead: the same shards, manifest, seeds and resume rules (train/ray_backend.py; needs
`pip install -e ".[ray]"`). The manifest is rewritten when the run ends and, during it, at most
every MANIFEST_EVERY_S seconds and in at most MANIFEST_SHARE of the time (a rewrite per episode
would be quadratic in the folder's size: 10,000 entries take ~0.3 s to write).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from dreamenv.frames import preprocess
from dreamenv.shards import (
    ShardError,
    load_shard,
    read_manifest,
    shard_name,
    write_manifest,
    write_shard,
)
from train.config import cli, require, require_dir
from train.policies import AGENT_SUFFIXES, POLICIES, Policy, make_policy


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Collect real CarRacing-v3 rollouts into shards (episodes first..first+N-1 of a seeded run)."""

    episodes: int = 240
    """number of rollouts"""
    first_episode: int = 0
    """index of the first (episodes first..first+N-1): add rollouts of another policy to a folder"""
    workers: int | None = None
    """worker processes (None: all cores)"""
    seed: int = 0
    """base seed; episode i derives its seeds from (seed, i)"""
    out: Path = Path("data/rollouts")
    """output folder for shards and manifest.json"""
    policy: str = "mix"
    """ou | controller | track | track-perturbed | mix | random (train/policies.py), an agent file
    (.zip / .npz) or package.module:factory"""
    model: Path | None = None
    """bundle an agent --policy reads through (None: the shipped one)"""
    max_steps: int = 1000
    """steps per episode before truncation"""
    backend: Literal["pool", "ray"] = "pool"
    """pool: worker processes on this machine; ray: Ray tasks on a cluster (pip install -e ".[ray]"),
    --workers then caps the tasks in flight (None: one per cluster CPU)"""
    address: str | None = None
    """Ray cluster address, e.g. ray://head:10001 or auto (None: start a local Ray instance)"""
    max_retries: int = 2
    """Ray: reruns of an episode whose worker dies before the episode is reported failed"""

    def __post_init__(self):
        known = (f"one of {', '.join(POLICIES)}, an agent file ({' / '.join(AGENT_SUFFIXES)}) "
                 f"or package.module:factory")
        require(self, episodes=(self.episodes >= 1, ">= 1"), first_episode=(self.first_episode >= 0, ">= 0"),
                workers=(self.workers is None or self.workers >= 1, "None (all cores) or >= 1"),
                max_steps=(self.max_steps >= 1, ">= 1"),
                address=(self.address is None or self.backend == "ray", "None unless --backend ray"),
                max_retries=(self.max_retries >= 0, ">= 0"),
                policy=(self.policy in POLICIES or ":" in self.policy or self.is_agent, known),
                model=(self.model is None or self.is_agent,
                       "None unless --policy is an agent file (it is the world model an agent reads through)"))

    @property
    def is_agent(self) -> bool:
        """Whether `policy` is an agent file (read through `model`)."""
        return self.policy.endswith(AGENT_SUFFIXES)

    @property
    def next_episode(self) -> int:
        """The index after this run's last episode: where a further collection into `out` starts."""
        return self.first_episode + self.episodes

    def expected_meta(self, episode: int) -> dict:
        """What a shard's content depends on; a rerun must match it to reuse the shard."""
        meta = {"episode": episode, "policy": self.policy, "seed": self.seed, "max_steps": self.max_steps}
        return meta if self.model is None else {**meta, "model": str(self.model)}


@dataclasses.dataclass
class CollectResult:
    """What one `run` did (its episodes only)."""

    entries: dict[str, dict]  # shard file name -> manifest entry, for this run's episodes
    failures: dict[int, str]  # episode -> error
    collected: int = 0
    skipped: int = 0
    frames: int = 0  # frames collected by this run (skipped shards not counted)
    seconds: float = 0.0


def episode_seeds(seed: int, episode: int) -> tuple[int, int]:
    """(env seed, policy seed) for episode `episode` of a run seeded `seed`; independent streams."""
    env_seed, policy_seed = np.random.SeedSequence([seed, episode]).generate_state(2)
    return int(env_seed), int(policy_seed)


def make_env(max_steps: int) -> gym.Env:
    """Headless CarRacing-v3, truncated after max_steps."""
    return gym.make("CarRacing-v3", max_episode_steps=max_steps)


def rollout(env: gym.Env, policy: Policy, env_seed: int, policy_seed: int) -> tuple[dict, dict]:
    """Run one episode -> (shard arrays, stats). obs[t] is the frame seen before action[t]."""
    obs, _ = env.reset(seed=env_seed)
    policy.reset(np.random.default_rng(policy_seed), env)
    car = env.unwrapped.car
    frames, actions, rewards, speeds, on_grass = [], [], [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        frames.append(preprocess(obs))
        actions.append(policy.act(obs, env))
        obs, reward, terminated, truncated, _ = env.step(actions[-1])
        rewards.append(reward)
        speeds.append(np.hypot(*car.hull.linearVelocity))
        on_grass.append(not any(wheel.tiles for wheel in car.wheels))
    rewards = np.asarray(rewards, np.float32)  # [T]
    episode = {
        "obs": np.stack(frames),  # [T, 64, 64, 3]
        "action": np.stack(actions).astype(np.float32),  # [T, 3]
        "reward": rewards,
        "terminated": _at_last_step(len(rewards), terminated),  # [T]
        "truncated": _at_last_step(len(rewards), truncated),  # [T]
    }
    stats = {
        "steps": len(rewards),
        "return": float(rewards.sum()),
        "positive_reward_share": float(np.mean(rewards > 0)),
        "tiles_visited": int(env.unwrapped.tile_visited_count),
        "track_tiles": len(env.unwrapped.track),
        "grass_share": float(np.mean(on_grass)),  # steps with no wheel on the road
        "speed_mean": float(np.mean(speeds)),
        "speed_p90": float(np.percentile(speeds, 90)),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
    }
    return episode, stats


def _at_last_step(steps: int, flag: bool) -> np.ndarray:
    """bool [steps]: `flag` at the last step, False before."""
    flags = np.zeros(steps, bool)
    flags[-1] = flag
    return flags


def episode_shard(env: gym.Env, policy: Policy, config: CollectConfig, episode: int) -> tuple[dict, dict]:
    """Run episode `episode` of the run `config` -> (shard arrays, meta): what its shard holds."""
    env_seed, policy_seed = episode_seeds(config.seed, episode)
    arrays, stats = rollout(env, policy, env_seed, policy_seed)
    meta = {
        **config.expected_meta(episode),
        "env_seed": env_seed,
        "policy_seed": policy_seed,
        "params": policy.params,
        **stats,
    }
    return arrays, meta


def collect_episode(env: gym.Env, policy: Policy, config: CollectConfig, episode: int) -> tuple[dict, bool]:
    """Collect and save episode `episode` unless a valid matching shard exists -> (meta, skipped)."""
    path = config.out / shard_name(episode)
    existing = finished_meta(path, config.expected_meta(episode))
    if existing is not None:
        return existing, True
    arrays, meta = episode_shard(env, policy, config, episode)
    write_shard(path, arrays, meta)
    return meta, False


def finished_meta(path: Path, expected: dict) -> dict | None:
    """The meta of a valid shard at path, None when it must be (re)done; raises on a mismatch."""
    if not path.exists():
        return None
    try:
        meta = load_shard(path)["meta"]
    except ShardError as err:
        print(f"train/collect.py: redoing {path.name}: {err}", file=sys.stderr)
        return None
    found = {key: meta.get(key) for key in expected}
    if found != expected:
        raise RuntimeError(
            f"{path} was collected with {found}, but this run asks {expected}; "
            f"use another --out, or delete the shard"
        )
    return meta


def _worker_loop(conn, config: CollectConfig) -> None:
    """Worker process: receive episode indices, reply ('ok', meta, skipped) or ('error', text)."""
    env, policy = make_env(config.max_steps), make_policy(config.policy, config.model)
    while (episode := conn.recv()) is not None:
        try:
            conn.send(("ok", *collect_episode(env, policy, config, episode)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    env.close()


BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_blas():
    """Processes started inside inherit one BLAS thread each.

    W workers already fill W cores; extra OpenBLAS threads on busy cores made the
    preprocessing einsum ~50× slower (20 ms instead of 0.3 ms a frame).
    """
    saved = {key: os.environ.get(key) for key in BLAS_THREAD_VARS}
    os.environ.update(dict.fromkeys(BLAS_THREAD_VARS, "1"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Worker:
    """One spawned worker process, its pipe, and the episode it is working on."""

    def __init__(self, ctx, config: CollectConfig):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child, config), daemon=True)
        with _single_threaded_blas():
            self.process.start()
        child.close()
        self.episode: int | None = None

    def assign(self, episode: int) -> None:
        self.conn.send(episode)
        self.episode = episode

    def outcome(self) -> tuple | None:
        """The reply for the current episode; an error when the process died; None if running."""
        alive = self.process.is_alive()
        if self.conn.poll():
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                alive = False
        if alive:
            return None
        self.process.join()
        return ("error", f"worker process died ({_describe_exit(self.process.exitcode)})")

    def stop(self) -> None:
        if self.process.is_alive() and self.episode is None:
            self.conn.send(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_workers(config: CollectConfig, episodes: list[int], workers: int, on_outcome) -> None:
    """Run episodes on `workers` spawned processes; on_outcome(episode, outcome) for each.

    A worker that dies is replaced; its episode gets an ('error', ...) outcome.
    """
    ctx = mp.get_context("spawn")
    todo = deque(episodes)
    pool = [_Worker(ctx, config) for _ in range(min(workers, len(todo)))]
    try:
        while todo or any(w.episode is not None for w in pool):
            for w in pool:
                if w.episode is None and todo:
                    w.assign(todo.popleft())
            wait([obj for w in pool if w.episode is not None for obj in (w.conn, w.process.sentinel)])
            for i, w in enumerate(pool):
                result = w.outcome() if w.episode is not None else None
                if result is None:
                    continue
                on_outcome(w.episode, result)
                w.episode = None
                if not w.process.is_alive():
                    pool[i] = _Worker(ctx, config)
    finally:
        for w in pool:
            w.stop()


def _load_manifest_entries(folder: Path) -> dict[str, dict]:
    """Entries of an existing manifest whose shard still exists; {} if none or corrupted."""
    try:
        entries = read_manifest(folder)["shards"]
    except FileNotFoundError:
        return {}
    except ShardError as err:
        print(f"train/collect.py: rebuilding the manifest: {err}", file=sys.stderr)
        return {}
    return {e["file"]: e for e in entries if isinstance(e, dict) and (folder / str(e.get("file"))).is_file()}


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_inputs(config: CollectConfig) -> None:
    """ValueError naming the field of a missing agent file or model bundle (checked when a run
    starts, not in CollectConfig: a pipeline builds configs before earlier stages write these)."""
    if config.is_agent and not Path(config.policy).is_file():
        raise ValueError(f"CollectConfig.policy: agent file {config.policy} does not exist")
    require_dir(config, model=config.model)


MANIFEST_EVERY_S = 2.0  # seconds at least between manifest rewrites during a run (and one at its end)
MANIFEST_SHARE = 0.1  # and at most this share of the run's time spent rewriting it


def load_backend(config: CollectConfig):
    """train.ray_backend for --backend ray (ImportError with the install hint when Ray is missing),
    None for the process pool."""
    if config.backend != "ray":
        return None
    from train import ray_backend

    ray_backend.import_ray()
    return ray_backend


def run(config: CollectConfig, *, progress: bool = True) -> CollectResult:
    """Collect episodes first_episode..next_episode-1 into config.out (skipping finished shards);
    keeps manifest.json up to date. Failed episodes are in the result's `failures`, not raised."""
    backend = load_backend(config)  # before any work: a missing Ray says how to install it
    check_inputs(config)
    make_policy(config.policy, config.model)  # fail fast on a bad policy or agent, before spawning workers
    config.out.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest_entries(config.out)
    result = CollectResult(entries={}, failures={})
    start = time.perf_counter()
    written = [start, True, 0.0]  # [time of the last manifest write, whether it holds every entry, its duration]
    bar = tqdm(total=config.episodes, unit="rollout", desc="collect", disable=not progress, dynamic_ncols=True)

    def save_manifest(force: bool = False) -> None:
        wait = max(MANIFEST_EVERY_S, written[2] / MANIFEST_SHARE)
        if written[1] or not force and time.perf_counter() - written[0] < wait:
            return
        began = time.perf_counter()
        write_manifest(config.out, {"format": 1, "shards": [manifest[k] for k in sorted(manifest)]})
        written[:] = [time.perf_counter(), True, time.perf_counter() - began]

    def on_outcome(episode: int, outcome: tuple) -> None:
        name = shard_name(episode)
        if outcome[0] == "error":
            result.failures[episode] = outcome[1]
            bar.write(f"train/collect.py: episode {episode} ({name}) failed:\n{outcome[1]}", file=sys.stderr)
        else:
            _, meta, skipped = outcome
            result.entries[name] = manifest[name] = {"file": name, **meta}
            written[1] = False
            save_manifest()
            result.skipped += skipped
            result.collected += not skipped
            result.frames += 0 if skipped else meta["steps"]
        result.seconds = time.perf_counter() - start
        bar.update()
        bar.set_postfix(
            frames=result.frames,
            fps=f"{result.frames / result.seconds:.0f}",
            skipped=result.skipped,
            failed=len(result.failures),
        )

    episodes = list(range(config.first_episode, config.next_episode))
    try:
        if backend is None:
            run_workers(config, episodes, config.workers or default_workers(), on_outcome)
        else:
            backend.run_episodes(config, episodes, on_outcome)
    finally:
        save_manifest(force=True)
        bar.close()
    return result


def report_failures(result: CollectResult) -> None:
    """One line per failed episode (its error's last line) on stderr."""
    print(f"train/collect.py: {len(result.failures)} episode(s) failed:", file=sys.stderr)
    for episode, error in sorted(result.failures.items()):
        print(f"  episode {episode} ({shard_name(episode)}): {error.strip().splitlines()[-1]}", file=sys.stderr)


def main(argv=None) -> int:
    config = cli(CollectConfig, argv, prog="python -m train.collect")
    from train.ray_backend import RayMissing

    try:
        result = run(config)
    except RayMissing as err:
        print(f"train/collect.py: {err}", file=sys.stderr)
        return 2
    print(
        f"collected {result.collected}, skipped {result.skipped} finished, "
        f"{result.frames} frames in {result.seconds:.0f}s -> {config.out}"
    )
    if result.failures:
        report_failures(result)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
