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
from train import agent, controller
from train.evaluate import evaluate_dream, evaluate_real

# τ = 0 and 50-step episodes on a dream that pays for gas: learning shows in a few thousand steps.
TINY = ["--envs", "16", "--n-steps", "32", "--batch-size", "128", "--epochs", "5", "--lr", "1e-3",
        "--temperature", "0", "--eval-every", "2048", "--eval-episodes", "1", "--final-episodes", "2",
        "--max-steps", "50", "--workers", "1"]


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
    out = tmp_path_factory.mktemp("agent")
    args = agent.parse_args(["--model", str(gas_path), "--out", str(out), "--timesteps", "4096", *TINY])
    return args, agent.run(args)


def test_run_saves_the_agent_and_writes_results(trained):
    args, results = trained
    assert {p.name for p in args.out.iterdir()} >= {"agent.zip", "vecnormalize.pkl", "state.json",
                                                    "progress.csv", "results.json", "video.gif"}
    assert json.loads((args.out / "results.json").read_text()) == results
    assert results["timesteps"] == 4096 and json.loads((args.out / "state.json").read_text())["timesteps"] == 4096
    assert len(results["real"]["returns"]) == 2 and np.isfinite(results["real"]["returns"]).all()
    assert results["real"]["mean"] == pytest.approx(np.mean(results["real"]["returns"]))
    assert [int(r["timesteps"]) for r in rows(args.out)] == [2048, 4096]


def test_ppo_learns_to_press_the_gas_in_the_dream(trained, tmp_path):
    args, results = trained
    untrained = agent.new_agent(args, agent.make_env(args, agent.load_model(args.model)))
    untrained.save(tmp_path / "untrained.zip")
    before = evaluate_dream(tmp_path / "untrained.zip", args.model, 16, 0, 0.0, 50)
    after = evaluate_dream(args.out / "agent.zip", args.model, 16, 0, 0.0, 50)
    assert np.mean(before) < 5.0 and np.mean(after) > np.mean(before) + 10.0  # at most ≈ 0.76 × 50 = 38


def test_real_scores_are_reproducible_in_process(trained):
    """The subprocess scores of the final evaluation, replayed in this process."""
    args, results = trained
    assert evaluate_real(args.out / "agent.zip", args.model, 2, args.seed, 0, 50) == results["real"]["returns"]


def test_rerun_resumes_from_the_saved_agent(trained, tmp_path):
    args, _ = trained
    out = tmp_path / "resumed"
    shutil.copytree(args.out, out)
    before = rows(out)
    resumed = agent.run(agent.parse_args(["--model", str(args.model), "--out", str(out), "--timesteps", "6144",
                                          *TINY, "--workers", "0", "--no-video"]))
    after = rows(out)
    assert [int(r["timesteps"]) for r in after] == [2048, 4096, 6144] and after[:2] == before
    assert resumed["timesteps"] == 6144 and agent.PPO.load(out / "agent.zip").num_timesteps == 6144
    with pytest.raises(ValueError, match="is a PPO agent but --algo is sac"):
        agent.run(agent.parse_args(["--model", str(args.model), "--out", str(out), "--algo", "sac", *TINY]))


def test_evaluation_names_bad_input(endless_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zip does not exist"):
        evaluate_real(tmp_path / "missing.zip", endless_path, 1, 0, 0)
    controller.save_controller(tmp_path / "other.npz", controller.init_params(5))
    with pytest.raises(ValueError, match=r"reads observations of shape \(5,\)"):
        evaluate_dream(tmp_path / "other.npz", endless_path, 2)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.zip is not an SB3 agent"):
        evaluate_dream(tmp_path / "junk.zip", endless_path, 2)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        evaluate_real(tmp_path / "other.npz", endless_path, 0, 0, 0)
