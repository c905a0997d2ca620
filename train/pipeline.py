"""Build a world model from nothing: `python -m train.pipeline [--quick] --out DIR` (`PipelineConfig`).

Runs every stage in order, each as its own command would (the stage functions, called with configs):

    DIR/rollouts/   real CarRacing-v3 shards (train.collect): `episodes` of `policy`, then
                    `perturbed_episodes` of the perturbed track-follower (state-independent actions:
                    what each control does) and `offroad_episodes` of `ou` (wandering off the road,
                    where most episodes that leave the playfield end); see train/policies.py
    DIR/vae/        VAE run: checkpoints, metrics, recon.png, vae.msgpack (train.vae)
    DIR/latents/    encoded rollouts (train.encode)
    DIR/mdnrnn/     MDN-RNN run: checkpoints, metrics (train.mdnrnn; it trains on the track
                    followers' rollouts too, the iterations' MDN-RNNs do not: `privileged_data`)
    DIR/bundle/     the base model, iteration 0: gym.make("DreamCarRacing-v0", model="DIR/bundle")
    DIR/iter{i}/    `iterations` rounds of the paper's iterative training (train/iterate.py): an
                    agent trained in the last dream collects real rollouts, an MDN-RNN is trained afresh
                    on all the data, and a fresh agent is trained in the new dream and scored on the
                    real game; DIR/iter{K}/ holds the last model and its agent
    DIR/pipeline.json  the command, the config, the git commit, seconds per stage, data size and
                    every iteration's real and dream scores

`python -m train.ship --run DIR` then installs the last model as the package default. Every stage
skips what is done (finished shards, encoded rollouts) or resumes from its checkpoint, so rerunning
the same command carries on where it stopped. `--quick` starts from QUICK (a smoke run: minutes on
2 cores); without it the preset is FULL, the recipe of the shipped kind of model. Flags given with
either override its fields.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Literal

from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import load_bundle, save_bundle
from dreamenv.shards import read_manifest
from train import collect, encode, iterate, mdnrnn, vae
from train.agent_config import AgentConfig, run_in_subprocess
from train.config import cli, require, to_json
from train.policies import POLICIES
from train.provenance import git_state


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Collect real data, train the VAE and the MDN-RNN, iterate with agents, train the final agent.
    The defaults are FULL's; --quick starts from QUICK, a smoke run (other flags still override)."""

    out: Path = Path("runs/pipeline")
    """run folder"""
    seed: int = 0
    workers: int | None = None
    """collection workers (default: all cores; with the ray backend: one per cluster CPU)"""
    backend: Literal["pool", "ray"] = "pool"
    """where the real rollouts are collected: local processes, or Ray tasks (train.collect --backend)"""
    address: str | None = None
    """Ray cluster address (None: a local Ray instance)"""
    policy: str = "mix"
    """the base data's policy (train/policies.py)"""
    episodes: int = 240
    """base rollouts of `policy`"""
    perturbed_episodes: int = 120
    """rollouts of the perturbed track-follower"""
    offroad_episodes: int = 160
    """rollouts of `ou`, off the road"""
    max_steps: int = 1000
    """steps per real rollout and per dream episode"""
    vae_steps: int = 6000
    vae_batch: int = 64
    mdn_steps: int = 20_000
    seq_len: int = 32
    start_fraction: float = 0.1
    """share of MDN-RNN training windows that begin at an episode's first step, where dreams begin"""
    base_privileged_data: bool = True
    """the base MDN-RNN trains on the track followers' rollouts too: its agent must drive well enough
    to collect useful data (without them iteration 0 scored -82: docs/RESULTS.md)"""
    privileged_data: bool = False
    """the iterations' MDN-RNNs train on them too (off: they train the VAE only and are scored as
    held-out data; train.mdnrnn --privileged-data)"""
    iterations: int = 1
    """rounds of iterative training after the base model"""
    iter_episodes: int = 100
    """real rollouts each iteration's agent collects"""
    iter_mdn_steps: int = 8000
    """MDN-RNN training steps per iteration"""
    agent_timesteps: int = 262_144
    """PPO steps in the dream for each iteration's agent"""
    eval_episodes: int = 100
    """real episodes scoring each iteration's agent (tracks real_seed + i, unused by training)"""

    def __post_init__(self):
        pos, nonneg = ">= 1", ">= 0"
        require(self, workers=(self.workers is None or self.workers >= 1, "None or >= 1"),
                address=(self.address is None or self.backend == "ray", "None unless --backend ray"),
                policy=(self.policy in POLICIES, f"one of {sorted(POLICIES)}"),
                episodes=(self.episodes >= 1, pos), perturbed_episodes=(self.perturbed_episodes >= 0, nonneg),
                offroad_episodes=(self.offroad_episodes >= 0, nonneg), max_steps=(self.max_steps >= 1, pos),
                vae_steps=(self.vae_steps >= 1, pos), vae_batch=(self.vae_batch >= 1, pos),
                mdn_steps=(self.mdn_steps >= 1, pos), seq_len=(self.seq_len >= 1, pos),
                start_fraction=(0 <= self.start_fraction <= 1, "in [0, 1]"),
                iterations=(self.iterations >= 0, nonneg), iter_episodes=(self.iter_episodes >= 1, pos),
                iter_mdn_steps=(self.iter_mdn_steps >= 1, pos),
                agent_timesteps=(self.agent_timesteps >= 1, pos), eval_episodes=(self.eval_episodes >= 1, pos))

    @property
    def base_episodes(self) -> int:
        """Rollouts collected before any iteration."""
        return self.episodes + self.perturbed_episodes + self.offroad_episodes

    def first_episode(self, i: int) -> int:
        """Index of iteration i's first collected rollout (after the base data and earlier iterations)."""
        return self.base_episodes + (i - 1) * self.iter_episodes


FULL = PipelineConfig(out=Path("runs/full"))
"""The recipe of the shipped kind of model (about 3 hours on 2 cores)."""
QUICK = PipelineConfig(out=Path("runs/quick"), episodes=4, perturbed_episodes=2, offroad_episodes=0, max_steps=200,
                       vae_steps=300, vae_batch=32, mdn_steps=300, seq_len=16, iterations=0, iter_episodes=2,
                       iter_mdn_steps=100, agent_timesteps=8192, eval_episodes=2)
"""--quick: a smoke run at tiny scale (its agent does not drive)."""


def collect_all(config: collect.CollectConfig) -> None:
    """train.collect's run; RuntimeError (after reporting them) when episodes failed."""
    result = collect.run(config)
    if result.failures:
        collect.report_failures(result)
        raise RuntimeError(f"{len(result.failures)} episodes failed")


def train_agent(config: AgentConfig) -> None:
    """train.agent's run in a fresh process (its JAX setting must precede JAX's start)."""
    if run_in_subprocess(config):
        raise RuntimeError("the agent's process failed")


RUNS: dict[type, Callable] = {collect.CollectConfig: collect_all, vae.VAEConfig: vae.run,
                              encode.EncodeConfig: encode.run, mdnrnn.MDNRNNConfig: mdnrnn.train,
                              AgentConfig: train_agent}
"""Each stage config's function."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: object  # a stage config: a key of RUNS

    def run(self) -> None:
        RUNS[type(self.config)](self.config)


def stages(config: PipelineConfig) -> list[Stage]:
    out = config.out
    base = collect.CollectConfig(out=out / "rollouts", policy=config.policy, episodes=config.episodes, seed=config.seed,
                                 workers=config.workers, max_steps=config.max_steps, backend=config.backend,
                                 address=config.address)
    extra = [("collect-perturbed", "track-perturbed", config.perturbed_episodes), ("collect-offroad", "ou", config.offroad_episodes)]
    data, first = [Stage("collect", base)], config.episodes
    for name, policy, episodes in extra:
        if episodes:
            data.append(Stage(name, dataclasses.replace(base, policy=policy, episodes=episodes, first_episode=first)))
            first += episodes
    return [
        *data,
        Stage("vae", vae.VAEConfig(data=out / "rollouts", out=out / "vae", steps=config.vae_steps,
                                   batch_size=config.vae_batch, eval_every=max(config.vae_steps // 4, 1),
                                   seed=config.seed)),
        Stage("encode", iterate.encode_config(out)),
        Stage("mdnrnn", mdnrnn.MDNRNNConfig(latents=out / "latents", vae=out / "vae", out=out / "mdnrnn",
                                            bundle=out / "bundle", steps=config.mdn_steps, seq_len=config.seq_len,
                                            start_fraction=config.start_fraction,
                                            privileged_data=config.base_privileged_data,
                                            eval_every=max(config.mdn_steps // 4, 1), seed=config.seed)),
        *(Stage(name, c) for name, c in iterate.stages(config, base)),
    ]


def data_size(rollouts: Path) -> dict:
    """Rollouts and frames in the collection's manifest."""
    shards = read_manifest(rollouts)["shards"]
    return {"rollouts": len(shards), "frames": sum(s["steps"] for s in shards)}


def provenance(record: dict, i: int, rounds: list[dict]) -> dict:
    """The flat metadata a built model keeps of how it was built (no copy of any other record)."""
    meta = {"command": record["command"], "git_commit": record["git_commit"],
            "git_uncommitted_changes": record["git_uncommitted_changes"], "iteration": i,
            "data_rollouts": record["data"]["rollouts"], "data_frames": record["data"]["frames"]}
    for r in rounds[i : i + 1]:  # this model's own agent
        meta.update(agent_real_mean=r["real"]["mean"], agent_real_std=r["real"]["std"],
                    agent_real_episodes=r["real"]["episodes"], agent_dream_mean=r["dream"]["mean"])
    return meta


def run(config: PipelineConfig, command: str = "python -m train.pipeline") -> dict:
    """Every stage in order (resuming); -> the pipeline record written to OUT/pipeline.json."""
    path = config.out / "pipeline.json"
    spent = json.loads(path.read_text())["stage_seconds"] if path.is_file() else {}
    record = {"command": command, "config": to_json(config), **git_state(), "stage_seconds": spent}
    config.out.mkdir(parents=True, exist_ok=True)
    for stage in stages(config):
        print(f"== {stage.name}: {stage.config}", flush=True)
        t0 = time.time()
        try:
            stage.run()
        finally:  # wall time summed over invocations: an interrupted-and-resumed stage counts all its runs
            spent[stage.name] = round(spent.get(stage.name, 0.0) + time.time() - t0, 1)
            atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    record["data"] = data_size(config.out / "rollouts")
    record["iterations"] = iterate.records(config.out, config.iterations)
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    print(iterate.table(record["iterations"]))
    for i in range(config.iterations + 1):  # every model built records how
        folder = iterate.bundle_of(config.out, i)
        bundle = load_bundle(folder)
        meta = {**bundle.metadata, **provenance(record, i, record["iterations"])}
        save_bundle(folder, dataclasses.replace(bundle, metadata=meta))
    print(f"bundle: {folder}  (gym.make('DreamCarRacing-v0', model='{folder}'); "
          f"install it with python -m train.ship --run {config.out})")
    return record


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = cli(PipelineConfig, args, presets={"quick": QUICK}, default=FULL, prog="python -m train.pipeline")
    try:
        run(config, command=" ".join(["python -m train.pipeline", *args]))
    except RuntimeError as e:
        print(f"train/pipeline.py: {e}; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
