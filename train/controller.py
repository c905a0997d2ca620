"""Train the paper's controller C by CMA-ES inside the dream: `python -m train.controller` (`ControllerConfig`).

C is linear (`train.controller_policy`): a = squash([z, h] W + b), steer = tanh, gas and brake =
(tanh + 1) / 2 (867 parameters for the 288-d "zh" of the shipped model). Each generation asks
evosax's CMA-ES for --population candidates, runs --rollouts dream episodes of up to --steps steps
for each (all population × rollouts episodes in one jitted `world_model.rollout`, vmapped over
candidates) and tells it the mean returns. All candidates of a generation share the generation's
random dreams (common random numbers: candidates are ranked on the same episodes).

As in the paper, the best controller is chosen by the distribution's mean, scored every
--eval-every generations on --eval-rollouts dreams (fixed episodes, so scores compare), not by
the luckiest candidate. The loop is `train.loop.fit` (`ControllerTrainer`, one update = one
generation): checkpoints (CMA-ES state, key, best params) are written atomically every
--ckpt-every generations, a rerun resumes, non-finite dream returns stop the run with the last
good checkpoint kept, and OUT/metrics.json holds one record per generation (fitness mean and max,
σ, the mean's eval score where one ran, the best so far). At the end the best controller
(OUT/controller.npz) is scored on --final-episodes real CarRacing-v3 episodes and in the dream
-> OUT/results.json.
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts: see dreamenv/envs/dream.py

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from evosax.algorithms import CMA_ES  # noqa: E402

from dreamenv import MAX_EPISODE_STEPS  # noqa: E402
from dreamenv import world_model as wm  # noqa: E402
from dreamenv.atomic import atomic_write_bytes  # noqa: E402
from dreamenv.envs.spaces import observation_space  # noqa: E402
from dreamenv.model import DEFAULT_MODEL, load_model  # noqa: E402
from train.config import check_resume, cli, require, require_dir, save_config, to_json  # noqa: E402
from train.controller_policy import act, init_params, save_controller  # noqa: E402
from train.evaluate import evaluate_dream, evaluate_real, record_video, summary  # noqa: E402
from train.loop import LoopConfig, Trainer, fit  # noqa: E402
from train.provenance import git_state  # noqa: E402

EVAL_KEY = 2**31 - 1  # the fixed dreams every mean-evaluation runs
# what a rerun in the same OUT must keep: they define the search and what its scores mean
MUST_MATCH = ("model", "obs", "population", "rollouts", "steps", "temperature", "sigma", "eval_rollouts", "seed")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Train the linear controller by CMA-ES in the dream, then score the best one on the real game."""

    model: Path | None = None
    """bundle folder (default: the shipped one)"""
    out: Path = Path("runs/controller")
    """run folder: checkpoint/, metrics.json, controller.npz, results.json"""
    obs: Literal["z", "zh"] = "zh"
    """what the controller reads: z, or [z, h]"""
    generations: int = 300
    population: int = 64
    """CMA-ES candidates per generation (>= 4)"""
    rollouts: int = 16
    """dream episodes per candidate"""
    steps: int = MAX_EPISODE_STEPS
    """dream episode length"""
    temperature: float = 1.0
    """dream τ"""
    sigma: float = 0.1
    """CMA-ES initial step size"""
    eval_every: int = 25
    """generations between mean evaluations"""
    eval_rollouts: int = 1024
    """fixed dream episodes of each mean evaluation"""
    ckpt_every: int = 5
    """generations between checkpoints"""
    final_episodes: int = 100
    """real (and dream) episodes for the final score"""
    max_steps: int | None = None
    """real episode length (default 1000)"""
    workers: int = 2
    """real-evaluation subprocesses (0: in this process)"""
    video: bool = True
    """record one real episode of the best controller to OUT/video.gif"""
    seed: int = 0
    real_seed: int = 100_000
    """the final real score's episode i is reset with real_seed + i: tracks no training or tuning used"""

    def __post_init__(self):
        pos = ">= 1"
        require(self, generations=(self.generations >= 1, pos),
                population=(self.population >= 4, ">= 4 (CMA-ES)"), rollouts=(self.rollouts >= 1, pos),
                steps=(self.steps >= 1, pos),
                temperature=(math.isfinite(self.temperature) and self.temperature >= 0, "a finite number >= 0"),
                sigma=(math.isfinite(self.sigma) and self.sigma > 0, "a finite number > 0"),
                eval_every=(self.eval_every >= 1, pos), eval_rollouts=(self.eval_rollouts >= 1, pos),
                ckpt_every=(self.ckpt_every >= 1, pos), final_episodes=(self.final_episodes >= 1, pos),
                max_steps=(self.max_steps is None or self.max_steps >= 1, "None or >= 1"),
                workers=(self.workers >= 0, ">= 0"))


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


class ControllerTrainer(Trainer):
    """One CMA-ES run for `train.loop.fit`: an update is one generation.

    Checkpointed state: {"es": CMA-ES state, "step": generations done, "key": key data, "best":
    the best mean's params, "best_score": its eval score, "best_generation" (-1: none yet; the score
    is then a finite placeholder, since fit never saves non-finite leaves), "wall_s"}. The "loss"
    fit watches for NaN/inf is minus the generation's mean fitness. OUT/controller.npz is rewritten
    whenever an eval finds a better mean, and again on restore, so it is always the state's best.
    """

    def __init__(self, config: ControllerConfig, model: wm.WorldModel):
        self.config, self.model = config, model
        dim = observation_space(model, config.obs).shape[0]
        self.es = strategy(config.population, dim)
        self.es_params = self.es.default_params.replace(std_init=jnp.float32(config.sigma))
        self.key, k_init = jax.random.split(jax.random.key(config.seed))
        es_state = self.es.init(k_init, init_params(dim), self.es_params)
        self.es_state = jax.tree_util.tree_map(lambda x: jnp.array(x, x.dtype), es_state)  # strong types: no retrace
        self.step, self.best, self.best_score, self.best_generation = 0, init_params(dim), 0.0, -1
        self.temperature = jnp.float32(config.temperature)
        self.dream_steps = config.population * config.rollouts * config.steps  # per generation
        self.timed, self.warm = (0, 0.0), False  # generations timed in this run (not its first), seconds
        self.wall_base, self.t0, self.record = 0.0, time.time(), {}

    def wall(self) -> float:
        """Training seconds, over all runs in OUT."""
        return self.wall_base + time.time() - self.t0

    def state(self) -> dict:
        return {"es": self.es_state, "step": self.step, "key": jax.random.key_data(self.key), "best": self.best,
                "best_score": self.best_score, "best_generation": self.best_generation, "wall_s": self.wall()}

    def load(self, state: dict) -> None:
        self.es_state, self.best = jax.device_put((state["es"], state["best"]))
        self.key, self.step = jax.random.wrap_key_data(jnp.asarray(state["key"])), int(state["step"])
        self.best_score, self.best_generation = float(state["best_score"]), int(state["best_generation"])
        self.wall_base, self.t0 = float(state["wall_s"]), time.time()
        if self.best_generation >= 0:  # a generation after the checkpoint may have saved another best
            save_controller(self.config.out / "controller.npz", self.best)

    def score_mean(self) -> float:
        """The distribution mean's score on the fixed eval dreams."""
        mean = jax.tree_util.tree_map(lambda x: x[None], self.es.get_mean(self.es_state))
        c = self.config
        return float(fitness(self.model, mean, jax.random.key(EVAL_KEY), self.temperature, c.eval_rollouts,
                             c.steps, c.obs)[0])

    def update(self, step: int) -> dict:
        c, t_gen = self.config, time.time()
        self.key, k_gen = jax.random.split(self.key)
        self.es_state, fit = generation(self.model, self.es, self.es_params, self.es_state, k_gen, self.temperature,
                                        c.rollouts, c.steps, c.obs)
        fit = np.asarray(fit)  # [P], a host sync: the timing below is the generation's
        if self.warm:  # the first generation of a run includes compilation
            self.timed = (self.timed[0] + 1, self.timed[1] + time.time() - t_gen)
        self.warm, gen = True, step + 1
        self.step = gen
        eval_score = None
        if gen % c.eval_every == 0 or gen == c.generations:
            eval_score = self.score_mean()
            if math.isfinite(eval_score) and (self.best_generation < 0 or eval_score > self.best_score):
                self.best, self.best_score, self.best_generation = self.es.get_mean(self.es_state), eval_score, gen
                save_controller(c.out / "controller.npz", self.best)
        self.record = {"fitness_mean": float(fit.mean()), "fitness_max": float(fit.max()),
                       "sigma": float(self.es_state.std), "eval_score": eval_score,
                       "best_score": self.best_score if self.best_generation >= 0 else None,
                       "wall_s": self.wall()}
        return {"loss": -fit.mean(), "fitness_max": fit.max()}

    def evaluate(self, step: int) -> dict:
        return dict(self.record)

    def speed(self) -> dict:
        """Generations and dream steps per second of this process's timed generations (None: none timed)."""
        rate = self.timed[0] / self.timed[1] if self.timed[1] else None
        return {"generations_per_s": rate, "dream_steps_per_s": rate * self.dream_steps if rate else None}


def train(config: ControllerConfig) -> dict:
    """Run (or resume) CMA-ES to config.generations -> {generation, best_score, best_generation, wall_s,
    generations_per_s, dream_steps_per_s}."""
    trainer = ControllerTrainer(config, load_model(config.model))
    loop = LoopConfig(steps=config.generations, ckpt_every=config.ckpt_every, eval_every=1, log_every=1)
    fit(trainer, config.out, loop, name="controller")
    return {"generation": trainer.step, "best_score": trainer.best_score, "best_generation": trainer.best_generation,
            "wall_s": float(trainer.state()["wall_s"]), **trainer.speed()}


def run(config: ControllerConfig) -> dict:
    """Train (or resume) then score the best controller on the real game -> results (also OUT/results.json)."""
    require_dir(config, model=config.model)
    check_resume(config, MUST_MATCH, config.out / "run_config.json")
    config.out.mkdir(parents=True, exist_ok=True)
    save_config(config.out / "run_config.json", config)
    results_path = config.out / "results.json"
    trained = train(config)
    if results_path.exists():
        done = json.loads(results_path.read_text())
        if done["generations"] == trained["generation"]:
            return done
    agent = config.out / "controller.npz"
    real = evaluate_real(agent, config.model, config.final_episodes, config.real_seed, config.workers, config.max_steps)
    dream = evaluate_dream(agent, config.model, config.final_episodes, config.seed, config.temperature, config.steps)

    results = {
        "agent": str(agent), "algo": "cma-es", "generations": trained["generation"],
        "best_generation": trained["best_generation"], "best_dream_score": trained["best_score"],
        "real": summary(real), "dream": summary(dream), "temperature": config.temperature,
        "population": config.population, "rollouts": config.rollouts, "dream_steps": config.steps,
        "wall_s": trained["wall_s"], "generations_per_s": trained["generations_per_s"],
        "dream_steps_per_s": trained["dream_steps_per_s"],
        "bundle": str(config.model or DEFAULT_MODEL), **git_state(), "config": to_json(config),
    }
    if config.video:
        results["video"] = str(config.out / "video.gif")
        results["video_return"] = record_video(agent, config.model, results["video"], config.seed, config.max_steps)
    atomic_write_bytes(results_path, json.dumps(results, indent=1).encode())
    return results


def main(argv=None) -> int:
    results = run(cli(ControllerConfig, argv, prog="python -m train.controller"))
    real, dream = results["real"], results["dream"]
    print(f"real {real['mean']:.1f} ± {real['std']:.1f} over {real['episodes']} episodes; "
          f"dream {dream['mean']:.1f} ± {dream['std']:.1f} (τ={results['temperature']}); "
          f"{results['generations_per_s'] or float('nan'):.3f} generations/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
