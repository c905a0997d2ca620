"""Steps per second: the real CarRacing-v3 against the dream, every figure from one run.

`python -m benchmarks.throughput` times, on the same random actions: raw CarRacing-v3,
LatentCarRacing-v0 ("zh"), DreamCarRacing-v0 through `gym.make` (1 env, Gymnasium's wrappers),
the vector dream at 1 / 64 / 1024 envs and a fully-jitted `lax.scan` rollout of 1024 envs
(`world_model.rollout`). Each is timed in `--rounds` short slices, interleaved, and reported as
the median, with its ratio to CarRacing-v3 (other jobs on the machine move every figure; the
ratios from one run are what to compare) and the process CPU time per step (all threads). Then a stability run: `--stability-steps` batched dream
steps must stay finite with bounded latents and no memory growth (max |z|, RSS before/after).

The model is the full-size architecture with random weights unless `--model PATH` is given; its
done head is biased to -10 so that episodes run to the time limit, as CarRacing-v3's do (a random
head would end half the steps). JAX's asynchronous CPU dispatch is off, as recommended for env
stepping (see dreamenv/envs/dream.py). Prints a table, writes JSON
(benchmarks/out/throughput.json).
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dreamenv  # noqa: E402, F401  (registers the envs)
from dreamenv import world_model as wm  # noqa: E402
from dreamenv.atomic import atomic_write  # noqa: E402
from dreamenv.checkpoint import load_bundle, random_bundle  # noqa: E402
from dreamenv.mdnrnn import head_layout  # noqa: E402

TARGETS = {  # ratio to CarRacing-v3
    "DreamCarRacing-v0 (gym.make, 1 env)": 50.0,
    "vector env, 1024 envs": 1000.0,
    "LatentCarRacing-v0": 0.8,
}


def random_actions(shape, seed=0) -> np.ndarray:
    """Uniform actions in CarRacing-v3's space, [..., 3] float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(wm.ACTION_LOW, wm.ACTION_HIGH, (*shape, 3)).astype(np.float32)


def timed(steps_per_call):
    """Decorate `call() -> None` into `run(seconds) -> (steps/s, CPU seconds per step)`."""

    def wrap(call):
        def run(seconds):
            n, start, cpu = 0, time.perf_counter(), time.process_time()
            while n == 0 or time.perf_counter() - start < seconds:
                call()
                n += 1
            steps = n * steps_per_call
            return steps / (time.perf_counter() - start), (time.process_time() - cpu) / steps

        return run

    return wrap


def env_stepper(env, actions):
    """Steps `env` with `actions` in turn, resetting when an episode ends."""
    env.reset(seed=0)
    i = itertools.count()

    @timed(1)
    def call():
        _, _, terminated, truncated, _ = env.step(actions[next(i) % len(actions)])
        if terminated or truncated:
            env.reset()

    return call


def vector_stepper(venv, actions):
    """Steps a vector env (it autoresets); every env's step counts."""
    venv.reset(seed=0)
    i = itertools.count()

    @timed(venv.num_envs)
    def call():
        venv.step(actions[next(i) % len(actions)])

    return call


def controller(params, obs):
    """The paper's controller shape: a = squash(W [z, h] + b). obs: [B, D + H] -> [B, 3]."""
    x = obs @ params["w"] + params["b"]
    return jnp.concatenate([jnp.tanh(x[:, :1]), jax.nn.sigmoid(x[:, 1:])], axis=1)


def scan_stepper(model, batch, steps):
    """A fully-jitted rollout of `batch` envs for `steps` steps per call."""
    dim = model.latent_dim + model.hidden_size
    params = {"w": 0.1 * jax.random.normal(jax.random.key(0), (dim, 3)), "b": jnp.zeros(3)}
    keys = iter(jax.random.split(jax.random.key(0), 10_000))

    @timed(batch * steps)
    def call():
        jax.block_until_ready(wm.rollout(model, controller, params, next(keys), batch, steps))

    return call


def rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stability(model, total_steps: int, num_envs: int) -> dict:
    """`total_steps` batched steps of the vector dream with random actions: finite, bounded, no leak."""
    venv = gym.make_vec("DreamCarRacing-v0", num_envs=num_envs, model=model, obs="zh")
    actions = random_actions((16, num_envs), seed=1)
    venv.reset(seed=0)
    venv.step(actions[0])  # compile before measuring memory
    rss_before, start = rss_mb(), time.perf_counter()
    calls = math.ceil(total_steps / num_envs)
    d = model.latent_dim
    max_z = at_bound = ends = 0.0
    finite = True
    for i in range(calls):
        obs, reward, terminated, truncated, _ = venv.step(actions[i % len(actions)])
        z = np.abs(obs[:, :d])
        max_z = max(max_z, float(z.max()))
        at_bound += float(np.mean(z >= wm.LATENT_BOUND))
        ends += float(np.sum(terminated | truncated))
        finite = finite and bool(np.isfinite(obs).all() and np.isfinite(reward).all())
    seconds = time.perf_counter() - start
    return {
        "steps": calls * num_envs,
        "num_envs": num_envs,
        "seconds": seconds,
        "steps_per_s": calls * num_envs / seconds,
        "finite": finite,
        "max_abs_z": max_z,
        "latent_bound": wm.LATENT_BOUND,
        "fraction_of_z_at_bound": at_bound / calls,
        "episodes_ended": int(ends),
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a bundle folder (default: random full-size)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one timed slice")
    p.add_argument("--rounds", type=int, default=3, help="slices per benchmark, interleaved; median kept")
    p.add_argument("--scan-steps", type=int, default=1000, help="steps per lax.scan rollout call")
    p.add_argument("--stability-steps", type=int, default=1_000_000, help="batched steps in all (0: skip)")
    p.add_argument("--stability-envs", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/throughput.json"))
    args = p.parse_args(argv)

    if args.model is None:
        bundle = random_bundle(jax.random.key(0))
        params = jax.tree_util.tree_map(np.array, bundle.mdnrnn_params)
        done = head_layout(bundle.mdnrnn.num_mixtures, bundle.mdnrnn.latent_dim)["done"]
        params["params"]["cell"]["head"]["out"]["bias"][done] = -10.0
        bundle = dataclasses.replace(bundle, mdnrnn_params=params)
        model_name = "random weights, full-size architecture, done bias -10"
    else:
        bundle, model_name = load_bundle(args.model), str(args.model)
    model = wm.WorldModel.from_bundle(bundle)

    single = random_actions((1000,))
    batched = {n: random_actions((16, n), seed=n) for n in (1, 64, 1024)}
    make, make_vec = gym.make, lambda n: gym.make_vec("DreamCarRacing-v0", num_envs=n, model=model, obs="zh")
    benches = {
        "CarRacing-v3 (random actions)": env_stepper(make("CarRacing-v3"), single),
        "LatentCarRacing-v0": env_stepper(make("LatentCarRacing-v0", model=bundle, obs="zh"), single),
        "DreamCarRacing-v0 (gym.make, 1 env)": env_stepper(make("DreamCarRacing-v0", model=model), single),
        **{f"vector env, {n} envs": vector_stepper(make_vec(n), batched[n]) for n in (1, 64, 1024)},
        "lax.scan rollout, 1024 envs": scan_stepper(model, 1024, args.scan_steps),
    }
    for run in benches.values():
        run(0.2)  # warm-up: compile, first episodes
    samples = {name: [] for name in benches}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, run in benches.items():
            samples[name].append(run(args.seconds))
    rates = {name: float(np.median([rate for rate, _ in s])) for name, s in samples.items()}
    cpu_us = {name: 1e6 * float(np.median([cpu for _, cpu in s])) for name, s in samples.items()}
    base = rates["CarRacing-v3 (random actions)"]

    print(f"\n{'benchmark':38s} {'steps/s':>10s} {'x CarRacing-v3':>15s} {'target':>8s} {'CPU us/step':>12s}")
    for name, rate in rates.items():
        target = f">= {TARGETS[name]:g}" if name in TARGETS else ""
        print(f"{name:38s} {rate:10,.0f} {rate / base:15.2f} {target:>8s} {cpu_us[name]:12.1f}")

    stable = stability(model, args.stability_steps, args.stability_envs) if args.stability_steps > 0 else None
    if stable:
        print(
            f"\nstability: {stable['steps']:,} batched steps ({stable['num_envs']} envs) "
            f"in {stable['seconds']:.1f} s, finite={stable['finite']}, "
            f"max |z| = {stable['max_abs_z']:.2f} (bound {wm.LATENT_BOUND:g}, "
            f"{stable['fraction_of_z_at_bound']:.1e} of z at it), RSS {stable['rss_mb_before']:.0f} -> "
            f"{stable['rss_mb_after']:.0f} MiB"
        )
    report = {
        "model": model_name,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_before": load_before},
        "jax": jax.__version__,
        "jax_cpu_async_dispatch": False,
        "gymnasium": gym.__version__,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "benchmarks": {
            name: {
                "steps_per_s": rates[name],
                "ratio_to_carracing": rates[name] / base,
                "target_ratio": TARGETS.get(name),
                "cpu_us_per_step": cpu_us[name],
                "samples_steps_per_s": [rate for rate, _ in samples[name]],
            }
            for name in benches
        },
        "stability": stable,
    }
    atomic_write(args.out, lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
