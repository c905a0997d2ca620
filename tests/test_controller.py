"""train.controller: the linear controller C, CMA-ES in the dream (improves, checkpoints, resumes)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import controller
from train.evaluate import evaluate_real

# τ = 0: the tiny dream is deterministic given its start latent, so improvement is not noise.
TINY = ["--population", "16", "--rollouts", "4", "--steps", "50", "--temperature", "0", "--sigma", "0.5",
        "--eval-every", "3", "--eval-rollouts", "16", "--final-episodes", "2", "--max-steps", "20",
        "--workers", "0", "--no-video"]


def rows(out):
    with open(out / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(endless_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("controller")
    args = controller.parse_args(["--model", str(endless_path), "--out", str(out), "--generations", "6", *TINY])
    return args, controller.run(args)


def test_actions_are_squashed_into_the_action_space():
    params = {"W": jax.random.normal(jax.random.key(0), (24, 3)) * 10, "b": jnp.array([5.0, -5.0, 5.0])}
    a = np.asarray(controller.act(params, jax.random.normal(jax.random.key(1), (100, 24))))
    assert a.shape == (100, 3)
    assert (a[:, 0] >= -1).all() and (a <= 1).all() and (a[:, 1:] >= 0).all()
    np.testing.assert_allclose(controller.act(controller.init_params(24), jnp.ones((1, 24))), [[0, 0.5, 0.5]])


def test_cma_es_improves_the_dream_return(trained, endless_path):
    args, results = trained
    model = controller.load_model(endless_path)
    zero = jax.tree_util.tree_map(lambda x: x[None], controller.init_params(24))
    start = float(controller.fitness(model, zero, jax.random.key(controller.EVAL_KEY), jnp.float32(0),
                                     16, 50, "zh")[0])  # the zero controller on the same eval dreams
    assert results["best_dream_score"] > start + 2.0
    assert results["generations"] == 6 and results["generations_per_s"] > 0
    assert len(results["real"]["returns"]) == 2 and len(results["dream"]["returns"]) == 2


def test_saved_controller_replays_its_real_score(trained):
    args, results = trained
    assert evaluate_real(args.out / "controller.npz", args.model, 2, args.seed, 0, 20) == results["real"]["returns"]


def test_rerun_resumes_from_the_checkpoint(trained):
    args, results = trained
    before = rows(args.out)
    args.generations = 8
    resumed = controller.run(args)
    after = rows(args.out)
    assert [int(r["generation"]) for r in after] == list(range(1, 9))
    assert after[:6] == before  # generations 1..6 were not run again
    assert resumed["generations"] == 8 and resumed["best_dream_score"] >= results["best_dream_score"]


def test_bad_controller_file_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", W=np.zeros((24, 2)), b=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz is not a controller"):
        controller.load_controller(tmp_path / "bad.npz")
