"""Train the paper's controller C by CMA-ES inside the dream: `python -m train.controller`.

C is linear: a = squash([z, h] W + b), steer = tanh, gas and brake = (tanh + 1) / 2 (867
parameters for the 288-d "zh" of the shipped model). Each generation asks evosax's CMA-ES for
--population candidates, runs --rollouts dream episodes of up to --steps steps for each (all
population × rollouts episodes in one jitted `world_model.rollout`, vmapped over candidates)
and tells it the mean returns. All candidates of a generation share the generation's random
dreams (common random numbers: candidates are ranked on the same episodes).

As in the paper, the best controller is chosen by the distribution's mean, scored every
--eval-every generations on --eval-rollouts dreams (fixed episodes, so scores compare), not by
the luckiest candidate. Checkpoints (CMA-ES state, best params) are written atomically every
--ckpt-every generations and a rerun resumes. At the end the best controller (OUT/controller.npz)
is scored on --final-episodes real CarRacing-v3 episodes and in the dream -> OUT/results.json.
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts: see dreamenv/envs/dream.py

import argparse  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from evosax.algorithms import CMA_ES  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dreamenv import MAX_EPISODE_STEPS  # noqa: E402
from dreamenv import world_model as wm  # noqa: E402
from dreamenv.atomic import atomic_write, atomic_write_bytes  # noqa: E402
from dreamenv.envs.dream import DEFAULT_MODEL, check_temperature, load_model, observation_space  # noqa: E402
from train.progress_log import read_progress, write_progress  # noqa: E402
from train.provenance import git_state  # noqa: E402
from train.evaluate import evaluate_dream, evaluate_real, record_video, summary  # noqa: E402
from train.trainstate import TrainCheckpoint  # noqa: E402

EVAL_KEY = 2**31 - 1  # the fixed dreams every mean-evaluation runs
FIELDS = ["generation", "fitness_mean", "fitness_max", "sigma", "eval_score", "wall_s"]


def init_params(obs_dim: int) -> dict:
    """Zero controller: steer 0, gas and brake 0.5. {"W": [D, 3], "b": [3]}"""
    return {"W": jnp.zeros((obs_dim, 3)), "b": jnp.zeros(3)}


def act(params: dict, obs):
    """obs [B, D] -> actions [B, 3] inside CarRacing-v3's action space."""
    y = jnp.tanh(obs @ params["W"] + params["b"])  # [B, 3]
    return jnp.concatenate([y[:, :1], (y[:, 1:] + 1.0) / 2.0], axis=-1)


def save_controller(path, params: dict) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **jax.device_get(params))
    return atomic_write_bytes(path, buf.getvalue())


def load_controller(path) -> dict:
    """A controller .npz -> {"W": [D, 3], "b": [3]} float32; ValueError naming what is wrong."""
    with np.load(path) as f:
        params = {k: f[k].astype(np.float32) for k in f.files}
    if set(params) != {"W", "b"} or params["W"].ndim != 2 or params["W"].shape[1:] != (3,) \
            or params["b"].shape != (3,):
        shapes = {k: v.shape for k, v in params.items()}
        raise ValueError(f"{path} is not a controller: arrays {shapes}, expected W [D, 3] and b [3]")
    return params


@functools.partial(jax.jit, static_argnames=("rollouts", "steps", "obs"))
def fitness(model, population, key, temperature, rollouts: int, steps: int, obs: str):
    """Mean dream return of each candidate over the same `rollouts` episodes. population leaves [P, ...] -> [P]."""
    episodes = lambda p: wm.rollout(model, act, p, key, rollouts, steps, temperature, obs=obs)[0]
    return jax.vmap(episodes)(population).mean(-1)


@functools.cache
def strategy(population: int, dim: int) -> CMA_ES:
    """evosax's CMA-ES over controllers for `dim`-d observations (one object per shape, so that
    `generation`, which takes it as a static argument, compiles once per process)."""
    return CMA_ES(population_size=population, solution=init_params(dim))


@functools.partial(jax.jit, static_argnames=("es", "rollouts", "steps", "obs"))
def generation(model, es, es_params, es_state, key, temperature, rollouts: int, steps: int, obs: str):
    """One CMA-ES generation in the dream -> (es_state', fitness [P])."""
    k_ask, k_dream, k_tell = jax.random.split(key, 3)
    population, es_state = es.ask(k_ask, es_state, es_params)
    fit = fitness(model, population, k_dream, temperature, rollouts, steps, obs)
    es_state, _ = es.tell(k_tell, population, -fit, es_state, es_params)  # evosax minimizes
    return es_state, fit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.controller", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("runs/controller"))
    p.add_argument("--obs", choices=("z", "zh"), default="zh")
    p.add_argument("--generations", type=int, default=300)
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=16, help="dream episodes per candidate")
    p.add_argument("--steps", type=int, default=MAX_EPISODE_STEPS, help="dream episode length")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sigma", type=float, default=0.1, help="CMA-ES initial step size")
    p.add_argument("--eval-every", type=int, default=25, help="generations between mean evaluations")
    p.add_argument("--eval-rollouts", type=int, default=1024)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--final-episodes", type=int, default=100, help="real episodes for the final score")
    p.add_argument("--max-steps", type=int, default=None, help="real episode length (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="real-evaluation subprocesses")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=True,
                   help="record one real episode of the best controller to OUT/video.gif")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("generations", "population", "rollouts", "steps", "eval_every", "eval_rollouts",
                 "ckpt_every", "final_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.population < 4:
        p.error(f"--population must be >= 4 for CMA-ES, got {args.population}")
    check_temperature(args.temperature)
    return args


def train(args) -> dict:
    """Run (or resume) CMA-ES to --generations; -> the state of the best controller so far."""
    model = load_model(args.model)
    dim = observation_space(model, args.obs).shape[0]
    es = strategy(args.population, dim)
    es_params = es.default_params.replace(std_init=jnp.float32(args.sigma))
    key, k_init = jax.random.split(jax.random.key(args.seed))
    es_state = es.init(k_init, init_params(dim), es_params)
    es_state = jax.tree_util.tree_map(lambda x: jnp.array(x, x.dtype), es_state)  # strong types: no retrace
    state = {"es": es_state, "step": 0, "key": jax.random.key_data(key),
             "best": init_params(dim), "best_score": -np.inf, "best_generation": -1, "wall_s": 0.0}
    ckpt = TrainCheckpoint(args.out / "checkpoint")
    state = ckpt.restore(state) or state
    temperature = jnp.float32(args.temperature)
    score_mean = lambda es_state: float(fitness(  # mean-controller score on the fixed eval dreams
        model, jax.tree_util.tree_map(lambda x: x[None], es.get_mean(es_state)), jax.random.key(EVAL_KEY),
        temperature, args.eval_rollouts, args.steps, args.obs)[0])

    progress = args.out / "progress.csv"
    rows = read_progress(progress, FIELDS, int(state["step"]))
    es_state, key, gen = state["es"], jax.random.wrap_key_data(jnp.asarray(state["key"])), int(state["step"])
    best = {k: state[k] for k in ("best", "best_score", "best_generation")}
    wall, t0, timed = float(state["wall_s"]), time.time(), (0, 0.0)  # timed: generations, seconds since compile
    dream_steps = args.population * args.rollouts * args.steps
    bar = tqdm(total=args.generations, initial=gen, unit="gen", desc="controller", dynamic_ncols=True)
    while gen < args.generations:
        t_gen = time.time()
        key, k_gen = jax.random.split(key)
        es_state, fit = generation(model, es, es_params, es_state, k_gen, temperature, args.rollouts,
                                   args.steps, args.obs)
        fit = np.asarray(fit)
        if not np.isfinite(fit).all():
            raise FloatingPointError(f"dream returns became non-finite at generation {gen}; the last "
                                     f"checkpoint in {ckpt.folder} is kept")
        gen += 1
        if gen > int(state["step"]) + 1:  # the first generation of a run includes compilation
            timed = (timed[0] + 1, timed[1] + time.time() - t_gen)
        row = {"generation": gen, "fitness_mean": float(fit.mean()), "fitness_max": float(fit.max()),
               "sigma": float(es_state.std), "eval_score": "", "wall_s": 0.0}
        if gen % args.eval_every == 0 or gen == args.generations:
            row["eval_score"] = score_mean(es_state)
            if row["eval_score"] > best["best_score"]:
                best = {"best": es.get_mean(es_state), "best_score": row["eval_score"], "best_generation": gen}
                save_controller(args.out / "controller.npz", best["best"])
        row["wall_s"] = wall + time.time() - t0
        rows.append(row)
        bar.update(1)
        rate = timed[0] / timed[1] if timed[1] else float("nan")
        bar.set_postfix(mean=f"{fit.mean():.1f}", max=f"{fit.max():.1f}", best=f"{best['best_score']:.1f}",
                        gen_s=f"{rate:.3f}", dream_sps=f"{rate * dream_steps:.0f}")
        if gen % args.ckpt_every == 0 or row["eval_score"] != "":
            ckpt.save({"es": es_state, "step": gen, "key": jax.random.key_data(key), **best,
                       "wall_s": row["wall_s"]})
            write_progress(progress, FIELDS, rows)
    bar.close()
    rate = timed[0] / timed[1] if timed[1] else None
    return {"generation": gen, "best_score": float(best["best_score"]), "best_generation": int(best["best_generation"]),
            "wall_s": float(rows[-1]["wall_s"]) if rows else wall, "generations_per_s": rate,
            "dream_steps_per_s": rate * dream_steps if rate else None}


def run(args) -> dict:
    """Train (or resume) then score the best controller on the real game -> results (also OUT/results.json)."""
    results_path = args.out / "results.json"
    trained = train(args)
    if results_path.exists():
        done = json.loads(results_path.read_text())
        if done["generations"] == trained["generation"]:
            return done
    agent = args.out / "controller.npz"
    real = evaluate_real(agent, args.model, args.final_episodes, args.seed, args.workers, args.max_steps)
    dream = evaluate_dream(agent, args.model, args.final_episodes, args.seed, args.temperature, args.steps)

    results = {
        "agent": str(agent), "algo": "cma-es", "generations": trained["generation"],
        "best_generation": trained["best_generation"], "best_dream_score": trained["best_score"],
        "real": summary(real), "dream": summary(dream), "temperature": args.temperature,
        "population": args.population, "rollouts": args.rollouts, "dream_steps": args.steps,
        "wall_s": trained["wall_s"], "generations_per_s": trained["generations_per_s"],
        "dream_steps_per_s": trained["dream_steps_per_s"],
        "bundle": str(args.model or DEFAULT_MODEL), **git_state(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.video:
        results["video"] = str(args.out / "video.gif")
        results["video_return"] = record_video(agent, args.model, results["video"], args.seed, args.max_steps)
    atomic_write(results_path, lambda f: f.write(json.dumps(results, indent=1).encode()))
    return results


def main(argv=None):
    results = run(parse_args(argv))
    real, dream = results["real"], results["dream"]
    print(f"real {real['mean']:.1f} ± {real['std']:.1f} over {real['episodes']} episodes; "
          f"dream {dream['mean']:.1f} ± {dream['std']:.1f} (τ={results['temperature']}); "
          f"{results['generations_per_s'] or float('nan'):.3f} generations/s")


if __name__ == "__main__":
    sys.exit(main())
