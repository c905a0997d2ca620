"""The agent stage's config, without the agent's JAX setting: `AgentConfig`, `QUICK`, `run_in_subprocess`.

`train.agent` sets a process-wide JAX option when imported (before JAX starts), so code that only
builds agent configs or starts agent runs (the pipeline) imports this module instead:

    from train.agent_config import AgentConfig, run_in_subprocess
    code = run_in_subprocess(AgentConfig(model=Path("runs/x/bundle"), out=Path("runs/x/agent")))

`run_in_subprocess(config) -> int` runs `train.agent.run(config)` in a fresh 'spawn' process (exit
code 0: done; 1: it raised, and the child printed the traceback).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from pathlib import Path
from typing import Literal

from dreamenv import MAX_EPISODE_STEPS
from train.config import require

# what a rerun in the same OUT must keep (see the module docstring)
MUST_MATCH = ("model", "algo", "obs", "envs", "temperature", "lr", "n_steps", "batch_size", "epochs", "max_steps",
              "seed")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Train a PPO or SAC agent in the dream, then score it on the real game. --quick starts from
    QUICK: this agent scored on 10 real episodes (other flags still override)."""

    model: Path | None = None
    """bundle folder (default: the shipped one)"""
    out: Path = Path("runs/agent")
    """run folder: agent.zip, vecnormalize.pkl, state.json, progress.csv, results.json, video.gif"""
    algo: Literal["ppo", "sac"] = "ppo"
    obs: Literal["z", "zh"] = "zh"
    """what the agent reads: z, or [z, h]"""
    timesteps: int = 262_144
    """dream steps; longer runs learn to exploit the dream (see the module docstring)"""
    envs: int = 64
    """dreams stepped as one batch"""
    temperature: float = 1.0
    """dream τ"""
    lr: float = 3e-4
    n_steps: int = 256
    """PPO: steps per env per update"""
    batch_size: int | None = None
    """minibatch (default PPO 4096, SAC 256)"""
    epochs: int = 10
    """PPO: passes over each rollout"""
    eval_every: int = 65_536
    """timesteps between saves + real evaluations"""
    eval_episodes: int = 4
    """real episodes of each periodic evaluation"""
    final_episodes: int = 100
    """real (and dream) episodes for the final score"""
    max_steps: int = MAX_EPISODE_STEPS
    """episode length, dream and real"""
    workers: int = 2
    """real-evaluation subprocesses (0: in this process)"""
    torch_threads: int = 1
    video: bool = True
    """record one real episode of the final agent to OUT/video.gif"""
    seed: int = 0
    real_seed: int = 100_000
    """the final real score's episode i is reset with real_seed + i: tracks no training or tuning used"""

    def __post_init__(self):
        pos = ">= 1"
        require(self, timesteps=(self.timesteps >= 1, pos), envs=(self.envs >= 1, pos),
                temperature=(math.isfinite(self.temperature) and self.temperature >= 0, "a finite number >= 0"),
                lr=(math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"), n_steps=(self.n_steps >= 1, pos),
                batch_size=(self.batch_size is None or self.batch_size >= 2, "None or >= 2"),
                epochs=(self.epochs >= 1, pos), eval_every=(self.eval_every >= 1, pos),
                eval_episodes=(self.eval_episodes >= 1, pos), final_episodes=(self.final_episodes >= 1, pos),
                max_steps=(self.max_steps >= 1, pos), workers=(self.workers >= 0, ">= 0"),
                torch_threads=(self.torch_threads >= 1, pos))


QUICK = AgentConfig(timesteps=262_144, eval_every=262_144, eval_episodes=2, final_episodes=10, seed=3,
                    out=Path("runs/agent-quick"))
"""--quick, the README's main job: the default agent scored on 10 real episodes instead of 100 (a few
minutes on 2 cores; flags given with it still win). Its training seed was picked on validation
tracks (seeds 300000+, never the scoring ones): in the shipped dream, seeds 0-3 scored 315, 465,
520 and 593 over 10 episodes there; PPO's seed spread is that large (docs/RESULTS.md)."""


def _child(config: AgentConfig) -> None:
    """A spawned process's target: importing train.agent here sets its JAX option before JAX starts."""
    from train import agent

    agent.run(config)


def run_in_subprocess(config: AgentConfig) -> int:
    """`train.agent.run(config)` in a fresh 'spawn' process -> its exit code (0: done; 1: it raised)."""
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(config,), name="train.agent")
    process.start()
    try:
        process.join()
    except BaseException:  # Ctrl-C here (the child gets it too) or another interruption: do not leave it behind
        process.terminate()
        process.join()
        raise
    return process.exitcode
