"""train.controller: the linear controller C, CMA-ES in the dream (improves, checkpoints, resumes)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import controller, controller_policy
from train.config import load_config
from train.controller import ControllerConfig
from train.evaluate import evaluate_real

# τ = 0: the tiny dream is deterministic given its start latent, so improvement is not noise.
TINY = dict(population=16, rollouts=4, steps=50, temperature=0.0, sigma=0.5, eval_every=3, eval_rollouts=16,
            final_episodes=2, max_steps=20, workers=0, video=False)


def history(out):
    return json.loads((out / "metrics.json").read_text())["history"]


@pytest.fixture(scope="module")
def trained(endless_path, tmp_path_factory):
    config = ControllerConfig(model=endless_path, out=tmp_path_factory.mktemp("controller"), generations=6, **TINY)
    return config, controller.run(config)


def test_actions_are_squashed_into_the_action_space():
    params = {"W": jax.random.normal(jax.random.key(0), (24, 3)) * 10, "b": jnp.array([5.0, -5.0, 5.0])}
    a = np.asarray(controller_policy.act(params, jax.random.normal(jax.random.key(1), (100, 24))))
    assert a.shape == (100, 3)
    assert (a[:, 0] >= -1).all() and (a <= 1).all() and (a[:, 1:] >= 0).all()
    np.testing.assert_allclose(controller_policy.act(controller_policy.init_params(24), jnp.ones((1, 24))),
                               [[0, 0.5, 0.5]])


def test_cma_es_improves_the_dream_return(trained, endless_path):
    config, results = trained
    model = controller.load_model(endless_path)
    zero = jax.tree_util.tree_map(lambda x: x[None], controller_policy.init_params(24))
    start = float(controller.fitness(model, zero, jax.random.key(controller.EVAL_KEY), jnp.float32(0),
                                     16, 50, "zh")[0])  # the zero controller on the same eval dreams
    assert results["best_dream_score"] > start + 2.0
    assert results["generations"] == 6 and results["generations_per_s"] > 0
    assert len(results["real"]["returns"]) == 2 and len(results["dream"]["returns"]) == 2
    assert results["config"]["population"] == 16 and load_config(config.out / "run_config.json",
                                                                   ControllerConfig) == config


def test_history_has_one_record_per_generation_and_the_best_mean(trained):
    config, results = trained
    records = history(config.out)
    assert [h["step"] for h in records] == list(range(1, 7))
    evals = {h["step"]: h["eval_score"] for h in records if h["eval_score"] is not None}
    assert set(evals) == {3, 6}  # every --eval-every generations and the last
    assert results["best_dream_score"] == max(evals.values()) == records[-1]["best_score"]
    assert results["best_generation"] == max(evals, key=evals.get)
    assert all(h["train"]["loss"] == pytest.approx(-h["fitness_mean"]) for h in records)


def test_saved_controller_replays_its_real_score(trained):
    config, results = trained
    assert evaluate_real(config.out / "controller.npz", config.model, 2, config.real_seed, 0, 20) == \
        results["real"]["returns"]


def test_rerun_resumes_from_the_checkpoint(trained):
    config, results = trained
    before = history(config.out)
    resumed = controller.run(dataclasses.replace(config, generations=8))
    after = history(config.out)
    assert [h["step"] for h in after] == list(range(1, 9))
    assert after[:6] == before  # generations 1..6 were not run again
    assert resumed["generations"] == 8 and resumed["best_dream_score"] >= results["best_dream_score"]


def test_rerun_with_other_search_settings_is_refused(trained):
    config, _ = trained
    files = {p.name: p.stat().st_mtime_ns for p in config.out.iterdir()}
    with pytest.raises(ValueError, match=r"other settings \(population: 16 -> 8; sigma: 0.5 -> 0.25\)"):
        controller.run(dataclasses.replace(config, population=8, sigma=0.25))
    assert {p.name: p.stat().st_mtime_ns for p in config.out.iterdir()} == files


@pytest.mark.parametrize("field, value", [("generations", 0), ("population", 3), ("temperature", float("nan")),
                                          ("sigma", 0.0), ("workers", -1), ("max_steps", 0)])
def test_bad_values_are_named_before_anything_is_written(field, value, tmp_path):
    with pytest.raises(ValueError, match=rf"ControllerConfig\.{field} \(--{field.replace('_', '-')}\) = "):
        ControllerConfig(out=tmp_path / "run", **{field: value})
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):  # the command line: tyro prints the message and exits with status 2
        controller.main(["--out", str(tmp_path / "run"), f"--{field.replace('_', '-')}", str(value)])
    assert not (tmp_path / "run").exists()


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="ControllerConfig.model: folder .*nope does not exist"):
        controller.run(ControllerConfig(model=tmp_path / "nope", out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bad_controller_file_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", W=np.zeros((24, 2)), b=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz is not a controller"):
        controller_policy.load_controller(tmp_path / "bad.npz")


def imported(module: str) -> set[str]:
    """The train.* modules that train/MODULE.py imports (anywhere in it)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(controller.__file__).parent / f"{module}.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            names |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
    return {x for x in names if x and x.startswith("train.")}


def test_the_policy_is_its_own_room():
    """evaluate and the trainer both use controller_policy; evaluate does not reach back into the trainer."""
    assert "train.controller_policy" in imported("controller") and "train.controller_policy" in imported("evaluate")
    assert not {"train.controller", "train.agent"} & imported("evaluate")
    assert not {"train.controller", "train.evaluate"} & imported("controller_policy")
