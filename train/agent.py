"""Train an SB3 agent (PPO, or SAC) inside the dream: `python -m train.agent --model BUNDLE` (`AgentConfig`).

The agent (MlpPolicy on --obs, default "zh" = [z, h]) learns on DreamSB3VecEnv: --envs dreams
stepped as one batch at τ = --temperature (the paper found τ > 1 stops the agent exploiting the
model's flaws), rewards normalised by a running return scale (VecNormalize; observations are
left raw, so the saved agent runs as is on LatentCarRacing-v0). Every --eval-every timesteps it
saves OUT/agent.zip (+ OUT/vecnormalize.pkl, OUT/state.json, atomically), scores it on
--eval-episodes real CarRacing-v3 episodes in --workers subprocesses, and logs that next to the
mean return of the last 100 dream episodes in OUT/progress.csv and the progress bar. Rerunning the
same command resumes from the last saved agent and continues to --timesteps. At the end: the
real score over --final-episodes episodes and the dream score -> OUT/results.json, and one real
episode -> OUT/video.gif.

PPO defaults (documented choices for a 288-d observation, 3-d continuous action, 64 envs):
n_steps 256 × 64 envs = 16384 transitions per update, minibatch 4096, 10 epochs, lr 3e-4,
γ 0.99, GAE λ 0.95, clip 0.2, no entropy bonus, initial action std e^-0.5 ≈ 0.6 (wide enough to
try braking and full throttle, narrow enough to drive), separate 64-64 tanh MLPs for π and V.
SAC: replay 100k, minibatch 256, one gradient step per 8 transitions, 256-256 MLPs; its replay
buffer is not saved (hundreds of MB), so a resumed SAC run refills it.
Training length: agents trained much longer learn the dream's flaws (their dream return climbs past
what the game pays while the real score falls; docs/RESULTS.md), hence the default of 262,144
steps; watch real_mean in progress.csv. The outcome varies a lot with --seed.
Torch runs on --torch-threads threads (1: on 2 cores, XLA's dream and torch share the machine).

From Python: `run(config)` in this process (which must have imported train.agent before JAX
started), or `train.agent_config.run_in_subprocess(config)` in a fresh 'spawn' process. `--quick`
starts from QUICK. The final real score is on tracks --real-seed + i, which no training used.
A rerun in the same OUT must keep the settings in MUST_MATCH (OUT/run_config.json holds the last
run's config): the saved agent carries its algorithm's hyperparameters, so a changed value would
be silently ignored or would train another task; ValueError names the fields that differ.
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts: see dreamenv/envs/dream.py

import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO, SAC  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dreamenv.atomic import atomic_write, atomic_write_bytes  # noqa: E402
from dreamenv.envs.sb3 import DreamSB3VecEnv  # noqa: E402
from dreamenv.model import DEFAULT_MODEL, load_model  # noqa: E402
from train.agent_config import MUST_MATCH, QUICK, AgentConfig  # noqa: E402
from train.config import check_resume, cli, require_dir, save_config, to_json  # noqa: E402
from train.evaluate import RealEvaluator, evaluate_dream, record_video, sb3_class, summary  # noqa: E402
from train.progress_log import read_progress, write_progress  # noqa: E402
from train.provenance import git_state  # noqa: E402

ALGOS = {"ppo": PPO, "sac": SAC}
GAMMA = 0.99
FIELDS = ["timesteps", "dream_return", "dream_episodes", "real_mean", "real_std", "steps_per_s", "wall_s"]
EVAL_SEED = 10**6  # periodic real evaluations replay the same episodes, apart from the final ones
def make_env(config: AgentConfig, model) -> VecNormalize:
    """The dream as SB3 sees it: DreamSB3VecEnv -> VecMonitor (raw dream returns) -> reward normalisation."""
    venv = VecMonitor(DreamSB3VecEnv(config.envs, model=model, obs=config.obs, temperature=config.temperature,
                                     max_episode_steps=config.max_steps))
    stats = config.out / "vecnormalize.pkl"
    if stats.exists():
        return VecNormalize.load(stats, venv)
    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=GAMMA)


def new_agent(config: AgentConfig, env):
    """A fresh PPO or SAC agent with the documented hyperparameters."""
    common = dict(env=env, learning_rate=config.lr, gamma=GAMMA, seed=config.seed, device="cpu", verbose=0)
    if config.algo == "ppo":
        return PPO("MlpPolicy", n_steps=config.n_steps, batch_size=config.batch_size or 4096, n_epochs=config.epochs,
                   gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                   policy_kwargs=dict(log_std_init=-0.5, net_arch=dict(pi=[64, 64], vf=[64, 64])), **common)
    return SAC("MlpPolicy", buffer_size=100_000, batch_size=config.batch_size or 256,
               learning_starts=10 * config.envs, train_freq=1, gradient_steps=max(1, config.envs // 8),
               policy_kwargs=dict(net_arch=[256, 256]), **common)


def load_agent(config: AgentConfig, env):
    """The saved agent of an earlier run in OUT, or None; ValueError if it is another algorithm's."""
    path = config.out / "agent.zip"
    if not path.exists():
        return None
    cls = sb3_class(path)
    if cls is not ALGOS[config.algo]:
        raise ValueError(f"{path} is a {cls.__name__} agent but --algo is {config.algo}; "
                         f"pass --algo {cls.__name__.lower()} or another --out")
    agent = cls.load(path, env=env, device="cpu")
    agent.set_random_seed(config.seed + agent.num_timesteps)  # fresh dreams, not the first run's again
    return agent


def save(config: AgentConfig, agent, env, state: dict) -> None:
    """agent.zip, the reward normaliser and state.json, each written atomically (state last)."""
    atomic_write(config.out / "agent.zip", agent.save)
    atomic_write(config.out / "vecnormalize.pkl", lambda f: pickle.dump(env, f))
    atomic_write_bytes(config.out / "state.json", json.dumps(state, indent=1).encode())


class Bar(BaseCallback):
    """Advances the tqdm bar by one batch of env steps; shows the dream return after each rollout."""

    def __init__(self, bar: tqdm, postfix: dict):
        super().__init__()
        self.bar, self.postfix = bar, postfix

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        self.postfix["dream"] = f"{dream_return(self.model):.1f}"
        self.bar.set_postfix(self.postfix, refresh=False)


def dream_return(agent) -> float:
    """Mean return of the last (up to 100) finished training episodes in the dream; NaN before any."""
    returns = [e["r"] for e in agent.ep_info_buffer]
    return float(np.mean(returns)) if returns else float("nan")


def train(config: AgentConfig, model, real: RealEvaluator) -> dict:
    """Train (or resume) to config.timesteps with periodic saves and real evaluations -> state.json's dict."""
    env = make_env(config, model)
    agent = load_agent(config, env) or new_agent(config, env)
    state_path = config.out / "state.json"
    saved = json.loads(state_path.read_text()) if state_path.exists() and agent.num_timesteps else {}
    rows = read_progress(config.out / "progress.csv", FIELDS, agent.num_timesteps)
    wall, t0 = float(saved.get("wall_s", 0.0)), time.time()
    state = lambda: {"algo": config.algo, "timesteps": agent.num_timesteps, "wall_s": wall + time.time() - t0,
                     "temperature": config.temperature, "bundle": str(config.model or DEFAULT_MODEL)}
    postfix = {"dream": "nan", "real": rows[-1]["real_mean"][:7] if rows else "nan"}
    bar = tqdm(total=config.timesteps, initial=agent.num_timesteps, unit="step", desc=config.algo, dynamic_ncols=True)
    while agent.num_timesteps < config.timesteps:
        start, t_learn = agent.num_timesteps, time.time()
        target = min((start // config.eval_every + 1) * config.eval_every, config.timesteps)
        agent.learn(target - start, reset_num_timesteps=False, callback=Bar(bar, postfix))
        rate = (agent.num_timesteps - start) / (time.time() - t_learn)
        save(config, agent, env, state())
        scores = real(config.out / "agent.zip", config.eval_episodes, config.seed + EVAL_SEED)
        rows.append({"timesteps": agent.num_timesteps, "dream_return": dream_return(agent),
                     "dream_episodes": len(agent.ep_info_buffer), "real_mean": float(np.mean(scores)),
                     "real_std": float(np.std(scores)), "steps_per_s": rate, "wall_s": state()["wall_s"]})
        write_progress(config.out / "progress.csv", FIELDS, rows)
        postfix["real"] = f"{rows[-1]['real_mean']:.1f}"
        bar.set_postfix(postfix)
    bar.close()
    env.close()
    return state()


def run(config: AgentConfig) -> dict:
    """Train (or resume), then the final real and dream scores -> results (also OUT/results.json)."""
    require_dir(config, model=config.model)
    check_resume(config, MUST_MATCH, config.out / "run_config.json")
    torch.set_num_threads(config.torch_threads)
    model = load_model(config.model)
    config.out.mkdir(parents=True, exist_ok=True)
    save_config(config.out / "run_config.json", config)
    results_path, agent = config.out / "results.json", config.out / "agent.zip"
    with RealEvaluator(config.model, config.workers, config.max_steps) as real:
        state = train(config, model, real)
        if results_path.exists():
            done = json.loads(results_path.read_text())
            if done["timesteps"] == state["timesteps"]:
                return done
        real_scores = real(agent, config.final_episodes, config.real_seed)
    dream = evaluate_dream(agent, model, config.final_episodes, config.seed, config.temperature, config.max_steps)

    results = {
        "agent": str(agent), "algo": config.algo, "timesteps": state["timesteps"], "wall_s": state["wall_s"],
        "real": summary(real_scores), "dream": summary(dream), "temperature": config.temperature,
        "envs": config.envs, "bundle": state["bundle"], **git_state(), "config": to_json(config),
    }
    if config.video:
        results["video"] = str(config.out / "video.gif")
        results["video_return"] = record_video(agent, model, results["video"], config.seed, config.max_steps)
    atomic_write_bytes(results_path, json.dumps(results, indent=1).encode())
    return results


def main(argv=None) -> int:
    config = cli(AgentConfig, argv, presets={"quick": QUICK}, prog="python -m train.agent")
    results = run(config)
    real, dream = results["real"], results["dream"]
    print(f"{results['algo']} after {results['timesteps']} steps: real {real['mean']:.1f} ± {real['std']:.1f} "
          f"over {real['episodes']} episodes; dream {dream['mean']:.1f} ± {dream['std']:.1f} "
          f"(τ={results['temperature']})")
    print(f"results: {config.out / 'results.json'}, learning curve: {config.out / 'progress.csv'}"
          + (f", video: {results['video']}" if "video" in results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
