"""Train an SB3 agent (PPO, or SAC) inside the dream: `python -m train.agent --model BUNDLE`.

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
Training length: on the base model (before iterative training) the real score peaked early and then
fell while the dream return kept climbing past what the real game can pay (the agent learns the
dream's flaws): 262k steps (69 s) -> real 384 ± 89 over 100 episodes, dream 306; 3M steps -> real
157 ± 144, dream 1289. Hence the default of 262,144 steps; watch real_mean in progress.csv. The
outcome varies a lot with --seed (in the shipped model's dream, seeds 0 / 1 / 2: real 669 / 184 / 412
over 100 / 30 / 30 episodes).
Torch runs on --torch-threads threads (1: on 2 cores, XLA's dream and torch share the machine).
"""

from __future__ import annotations

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX starts: see dreamenv/envs/dream.py

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO, SAC  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dreamenv import MAX_EPISODE_STEPS  # noqa: E402
from dreamenv.atomic import atomic_write, atomic_write_bytes  # noqa: E402
from dreamenv.envs.dream import DEFAULT_MODEL, check_temperature, load_model  # noqa: E402
from dreamenv.envs.sb3 import DreamSB3VecEnv  # noqa: E402
from train.progress_log import read_progress, write_progress  # noqa: E402
from train.provenance import git_state  # noqa: E402
from train.evaluate import RealEvaluator, evaluate_dream, record_video, sb3_class, summary  # noqa: E402

ALGOS = {"ppo": PPO, "sac": SAC}
GAMMA = 0.99
FIELDS = ["timesteps", "dream_return", "dream_episodes", "real_mean", "real_std", "steps_per_s", "wall_s"]
QUICK = dict(timesteps=131_072, eval_every=131_072, eval_episodes=2, final_episodes=4, out=Path("runs/agent-quick"))
EVAL_SEED = 10**6  # periodic real evaluations replay the same episodes, apart from the final ones


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("runs/agent"))
    p.add_argument("--algo", choices=tuple(ALGOS), default="ppo")
    p.add_argument("--obs", choices=("z", "zh"), default="zh")
    p.add_argument("--timesteps", type=int, default=262_144,
                   help="dream steps; longer runs learn to exploit the dream (see the module docstring)")
    p.add_argument("--envs", type=int, default=64, help="dreams stepped as one batch")
    p.add_argument("--temperature", type=float, default=1.0, help="dream τ")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--n-steps", type=int, default=256, help="PPO: steps per env per update")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch (default PPO 4096, SAC 256)")
    p.add_argument("--epochs", type=int, default=10, help="PPO: passes over each rollout")
    p.add_argument("--eval-every", type=int, default=65_536, help="timesteps between saves + real evaluations")
    p.add_argument("--eval-episodes", type=int, default=4)
    p.add_argument("--final-episodes", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS, help="episode length, dream and real")
    p.add_argument("--workers", type=int, default=2, help="real-evaluation subprocesses (0: in this process)")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=True,
                   help="record one real episode of the final agent to OUT/video.gif")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help=f"a few-minute run (flags given still win): {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    for name in ("timesteps", "envs", "n_steps", "epochs", "eval_every", "eval_episodes", "final_episodes",
                 "max_steps", "torch_threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 2:
        p.error(f"--batch-size must be >= 2, got {args.batch_size}")
    check_temperature(args.temperature)
    return args


def make_env(args, model) -> VecNormalize:
    """The dream as SB3 sees it: DreamSB3VecEnv -> VecMonitor (raw dream returns) -> reward normalisation."""
    venv = VecMonitor(DreamSB3VecEnv(args.envs, model=model, obs=args.obs, temperature=args.temperature,
                                     max_episode_steps=args.max_steps))
    stats = args.out / "vecnormalize.pkl"
    if stats.exists():
        return VecNormalize.load(stats, venv)
    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=GAMMA)


def new_agent(args, env):
    """A fresh PPO or SAC agent with the documented hyperparameters."""
    common = dict(env=env, learning_rate=args.lr, gamma=GAMMA, seed=args.seed, device="cpu", verbose=0)
    if args.algo == "ppo":
        return PPO("MlpPolicy", n_steps=args.n_steps, batch_size=args.batch_size or 4096, n_epochs=args.epochs,
                   gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                   policy_kwargs=dict(log_std_init=-0.5, net_arch=dict(pi=[64, 64], vf=[64, 64])), **common)
    return SAC("MlpPolicy", buffer_size=100_000, batch_size=args.batch_size or 256,
               learning_starts=10 * args.envs, train_freq=1, gradient_steps=max(1, args.envs // 8),
               policy_kwargs=dict(net_arch=[256, 256]), **common)


def load_agent(args, env):
    """The saved agent of an earlier run in OUT, or None; ValueError if it is another algorithm's."""
    path = args.out / "agent.zip"
    if not path.exists():
        return None
    cls = sb3_class(path)
    if cls is not ALGOS[args.algo]:
        raise ValueError(f"{path} is a {cls.__name__} agent but --algo is {args.algo}; "
                         f"pass --algo {cls.__name__.lower()} or another --out")
    agent = cls.load(path, env=env, device="cpu")
    agent.set_random_seed(args.seed + agent.num_timesteps)  # fresh dreams, not the first run's again
    return agent


def save(args, agent, env, state: dict) -> None:
    """agent.zip, the reward normaliser and state.json, each written atomically (state last)."""
    atomic_write(args.out / "agent.zip", agent.save)
    atomic_write(args.out / "vecnormalize.pkl", lambda f: pickle.dump(env, f))
    atomic_write_bytes(args.out / "state.json", json.dumps(state, indent=1).encode())


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


def train(args, model, real: RealEvaluator) -> dict:
    """Train (or resume) to --timesteps with periodic saves and real evaluations -> state.json's dict."""
    env = make_env(args, model)
    agent = load_agent(args, env) or new_agent(args, env)
    state_path = args.out / "state.json"
    saved = json.loads(state_path.read_text()) if state_path.exists() and agent.num_timesteps else {}
    rows = read_progress(args.out / "progress.csv", FIELDS, agent.num_timesteps)
    wall, t0 = float(saved.get("wall_s", 0.0)), time.time()
    state = lambda: {"algo": args.algo, "timesteps": agent.num_timesteps, "wall_s": wall + time.time() - t0,
                     "temperature": args.temperature, "bundle": str(args.model or DEFAULT_MODEL)}
    postfix = {"dream": "nan", "real": rows[-1]["real_mean"][:7] if rows else "nan"}
    bar = tqdm(total=args.timesteps, initial=agent.num_timesteps, unit="step", desc=args.algo, dynamic_ncols=True)
    while agent.num_timesteps < args.timesteps:
        start, t_learn = agent.num_timesteps, time.time()
        target = min((start // args.eval_every + 1) * args.eval_every, args.timesteps)
        agent.learn(target - start, reset_num_timesteps=False, callback=Bar(bar, postfix))
        rate = (agent.num_timesteps - start) / (time.time() - t_learn)
        save(args, agent, env, state())
        scores = real(args.out / "agent.zip", args.eval_episodes, args.seed + EVAL_SEED)
        rows.append({"timesteps": agent.num_timesteps, "dream_return": dream_return(agent),
                     "dream_episodes": len(agent.ep_info_buffer), "real_mean": float(np.mean(scores)),
                     "real_std": float(np.std(scores)), "steps_per_s": rate, "wall_s": state()["wall_s"]})
        write_progress(args.out / "progress.csv", FIELDS, rows)
        postfix["real"] = f"{rows[-1]['real_mean']:.1f}"
        bar.set_postfix(postfix)
    bar.close()
    env.close()
    return state()


def run(args) -> dict:
    """Train (or resume), then the final real and dream scores -> results (also OUT/results.json)."""
    torch.set_num_threads(args.torch_threads)
    model = load_model(args.model)
    results_path, agent = args.out / "results.json", args.out / "agent.zip"
    with RealEvaluator(args.model, args.workers, args.max_steps) as real:
        state = train(args, model, real)
        if results_path.exists():
            done = json.loads(results_path.read_text())
            if done["timesteps"] == state["timesteps"]:
                return done
        real_scores = real(agent, args.final_episodes, args.seed)
    dream = evaluate_dream(agent, model, args.final_episodes, args.seed, args.temperature, args.max_steps)

    results = {
        "agent": str(agent), "algo": args.algo, "timesteps": state["timesteps"], "wall_s": state["wall_s"],
        "real": summary(real_scores), "dream": summary(dream), "temperature": args.temperature,
        "envs": args.envs, "bundle": state["bundle"], **git_state(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.video:
        results["video"] = str(args.out / "video.gif")
        results["video_return"] = record_video(agent, model, results["video"], args.seed, args.max_steps)
    atomic_write_bytes(results_path, json.dumps(results, indent=1).encode())
    return results


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    real, dream = results["real"], results["dream"]
    print(f"{results['algo']} after {results['timesteps']} steps: real {real['mean']:.1f} ± {real['std']:.1f} "
          f"over {real['episodes']} episodes; dream {dream['mean']:.1f} ± {dream['std']:.1f} "
          f"(τ={results['temperature']})")
    print(f"results: {args.out / 'results.json'}, learning curve: {args.out / 'progress.csv'}"
          + (f", video: {results['video']}" if "video" in results else ""))


if __name__ == "__main__":
    sys.exit(main())
