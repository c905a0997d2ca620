"""train.agent (PPO in the vector dream: learns, saves, resumes) and train.evaluate (real and dream scores)."""

import csv
import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from dreamenv.checkpoint import load_bundle, save_bundle
from dreamenv.mdnrnn import head_layout
from train import agent, controller_policy
from train.agent_config import AgentConfig, run_in_subprocess
from train.config import load_config
from train.evaluate import evaluate_dream, evaluate_real

# τ = 0 and 50-step episodes on a dream that pays for gas: learning shows in a few thousand steps.
TINY = dict(envs=16, n_steps=32, batch_size=128, epochs=5, lr=1e-3, temperature=0.0, eval_every=2048,
            eval_episodes=1, final_episodes=2, max_steps=50, workers=1)


def rows(out):
    with open(out / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gas_path(endless_path, tmp_path_factory):
    """The endless tiny bundle rewired so that hidden unit 0 = tanh(tanh(3·gas)) and reward = that unit."""
    bundle = load_bundle(endless_path)
    params = jax.tree_util.tree_map(np.array, bundle.mdnrnn_params)
    lstm, out = params["params"]["cell"]["lstm"], params["params"]["cell"]["head"]["out"]
    hidden = bundle.mdnrnn.hidden_size
    for g, gate in enumerate("ifgo"):  # unit 0 forgets its past and reads nothing but the gas
        lstm["kernel"][:, g * hidden] = 0.0  # the kernel's rows are [z, steer, gas, brake, h]
        lstm["bias"][g * hidden] = {"i": 10.0, "f": -10.0, "g": 0.0, "o": 10.0}[gate]
    lstm["kernel"][bundle.mdnrnn.latent_dim + 1, 2 * hidden] = 3.0
    reward = head_layout(bundle.mdnrnn.num_mixtures, bundle.mdnrnn.latent_dim)["reward"]
    out["kernel"][:, reward] = 0.0
    out["kernel"][0, reward] = 1.0
    out["bias"][reward] = 0.0
    return save_bundle(tmp_path_factory.mktemp("bundles") / "gas", dataclasses.replace(bundle, mdnrnn_params=params))


@pytest.fixture(scope="module")
def trained(gas_path, tmp_path_factory):
    """4096 PPO steps; real evaluations in one spawn subprocess; a video of the final agent."""
    config = AgentConfig(model=gas_path, out=tmp_path_factory.mktemp("agent"), timesteps=4096, **TINY)
    return config, agent.run(config)


def test_run_saves_the_agent_and_writes_results(trained):
    config, results = trained
    assert {p.name for p in config.out.iterdir()} >= {"agent.zip", "vecnormalize.pkl", "state.json", "progress.csv",
                                                      "results.json", "video.gif", "run_config.json"}
    assert json.loads((config.out / "results.json").read_text()) == results
    assert results["timesteps"] == 4096 and json.loads((config.out / "state.json").read_text())["timesteps"] == 4096
    assert len(results["real"]["returns"]) == 2 and np.isfinite(results["real"]["returns"]).all()
    assert results["real"]["mean"] == pytest.approx(np.mean(results["real"]["returns"]))
    assert [int(r["timesteps"]) for r in rows(config.out)] == [2048, 4096]
    assert load_config(config.out / "run_config.json", AgentConfig) == config
    assert results["config"]["envs"] == 16 and results["config"]["model"] == str(config.model)
    assert set(results) >= {"git_commit", "git_uncommitted_changes"}


def test_ppo_learns_to_press_the_gas_in_the_dream(trained, tmp_path):
    config, results = trained
    untrained = agent.new_agent(config, agent.make_env(config, agent.load_model(config.model)))
    untrained.save(tmp_path / "untrained.zip")
    before = evaluate_dream(tmp_path / "untrained.zip", config.model, 16, 0, 0.0, 50)
    after = evaluate_dream(config.out / "agent.zip", config.model, 16, 0, 0.0, 50)
    assert np.mean(before) < 5.0 and np.mean(after) > np.mean(before) + 10.0  # at most ≈ 0.76 × 50 = 38


def test_real_scores_are_reproducible_in_process(trained):
    """The subprocess scores of the final evaluation, replayed in this process."""
    config, results = trained
    assert evaluate_real(config.out / "agent.zip", config.model, 2, config.real_seed, 0, 50) == results["real"]["returns"]


def test_rerun_resumes_from_the_saved_agent(trained, tmp_path):
    config, _ = trained
    out = tmp_path / "resumed"
    shutil.copytree(config.out, out)
    before = rows(out)
    resumed = agent.run(dataclasses.replace(config, out=out, timesteps=6144, workers=0, video=False))
    after = rows(out)
    assert [int(r["timesteps"]) for r in after] == [2048, 4096, 6144] and after[:2] == before
    assert resumed["timesteps"] == 6144 and agent.PPO.load(out / "agent.zip").num_timesteps == 6144
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"other settings \(algo: 'ppo' -> 'sac'; lr: 0.001 -> 0.0003\)"):
        agent.run(dataclasses.replace(config, out=out, algo="sac", lr=3e-4))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files  # refused before writing anything
    (out / "run_config.json").unlink()  # a run folder from before run_config.json: the saved agent decides
    with pytest.raises(ValueError, match="is a PPO agent but --algo is sac"):
        agent.run(dataclasses.replace(config, out=out, algo="sac"))


@pytest.mark.parametrize("field, value", [("timesteps", 0), ("envs", 0), ("temperature", -1.0),
                                          ("temperature", float("inf")), ("batch_size", 1), ("workers", -1)])
def test_bad_values_are_named_before_anything_is_written(field, value, tmp_path):
    with pytest.raises(ValueError, match=rf"AgentConfig\.{field} \(--{field.replace('_', '-')}\) = "):
        AgentConfig(out=tmp_path / "run", **{field: value})
    with pytest.raises(SystemExit):  # the command line: tyro prints the message and exits with status 2
        agent.main(["--out", str(tmp_path / "run"), f"--{field.replace('_', '-')}", str(value)])
    assert not (tmp_path / "run").exists()


def test_quick_preset_and_flags(tmp_path):
    config = agent.cli(AgentConfig, ["--quick", "--eval-episodes", "3", "--no-video", "--algo", "sac"],
                       presets={"quick": agent.QUICK})
    assert config == dataclasses.replace(agent.QUICK, eval_episodes=3, video=False, algo="sac")
    assert agent.cli(AgentConfig, ["--batch-size", "64"]) == AgentConfig(batch_size=64)


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="AgentConfig.model: folder .*nope does not exist"):
        agent.run(AgentConfig(model=tmp_path / "nope", out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_run_in_subprocess_runs_the_config_and_returns_the_exit_code(gas_path, tmp_path):
    """The spawned child is handed the config (no argv): 0 once it wrote results, 1 when it failed."""
    config = AgentConfig(model=gas_path, out=tmp_path / "run", timesteps=512, **{**TINY, "eval_every": 512,
                         "final_episodes": 1, "workers": 0, "video": False})
    assert run_in_subprocess(config) == 0
    assert json.loads((config.out / "results.json").read_text())["timesteps"] == 512
    assert run_in_subprocess(AgentConfig(model=tmp_path / "nope", out=tmp_path / "bad")) == 1
    assert not (tmp_path / "bad").exists()


def test_evaluation_names_bad_input(endless_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zip does not exist"):
        evaluate_real(tmp_path / "missing.zip", endless_path, 1, 0, 0)
    controller_policy.save_controller(tmp_path / "other.npz", controller_policy.init_params(5))
    with pytest.raises(ValueError, match=r"reads observations of shape \(5,\)"):
        evaluate_dream(tmp_path / "other.npz", endless_path, 2)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.zip is not an SB3 agent"):
        evaluate_dream(tmp_path / "junk.zip", endless_path, 2)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        evaluate_real(tmp_path / "other.npz", endless_path, 0, 0, 0)
