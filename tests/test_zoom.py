"""The zoom benchmark: its view classifier, its dreams, and a smoke run on tiny shards."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import zoom as Z
from conftest import tiny_bundle, write_shards
from dreamenv import world_model as wm


def test_classifier_separates_the_two_views_and_generalises():
    rng = np.random.default_rng(0)
    center = rng.normal(size=8)
    out = rng.normal(size=(300, 8)) + 2.0 * center  # zoomed-out latents on one side
    drive = rng.normal(size=(300, 8)) - 2.0 * center
    classifier = Z.fit_view_classifier(np.concatenate([out[:200], drive[:200]]),
                                       np.r_[np.ones(200, bool), np.zeros(200, bool)])
    assert Z.is_zoomed_out(classifier, out[200:]).mean() > 0.97
    assert Z.is_zoomed_out(classifier, drive[200:]).mean() < 0.03


def test_labels_take_the_clearly_zoomed_out_and_the_driving_steps():
    rollouts = [np.arange(100, dtype=np.float32)[:, None], np.arange(30, dtype=np.float32)[:, None]]
    z, zoomed_out = Z.labelled(rollouts)
    np.testing.assert_array_equal(z[zoomed_out, 0], np.r_[np.arange(20), np.arange(20)])
    np.testing.assert_array_equal(z[~zoomed_out, 0], np.arange(60, 100))  # the 30-step rollout has no driving view


def test_dream_latents_are_the_cores_steps():
    model = wm.WorldModel.from_bundle(tiny_bundle())
    action = jnp.array([0.3, 0.5, 0.0])
    z = Z.dream_latents(model, action, jax.random.key(3), 4, 5, jnp.float32(1.0))
    assert z.shape == (6, 4, model.latent_dim)
    k_reset, k_steps = jax.random.split(jax.random.key(3))
    state, _ = wm.reset(model, k_reset, 4, obs="z")
    np.testing.assert_array_equal(z[0], state.z)
    for t, k in enumerate(jax.random.split(k_steps, 5)):
        state, _, _, _ = wm.step(model, state, jnp.broadcast_to(action, (4, 3)), k, 1.0, obs="z")
        np.testing.assert_allclose(z[t + 1], state.z, atol=1e-6)


def test_smoke_run_writes_json(tmp_path, bundle_path):
    shards = write_shards(tmp_path / "shards", lengths=(70, 65, 80, 62))
    result = Z.main(["--model", str(bundle_path), "--shards", str(shards), "--episodes", "3", "--steps", "20",
                     "--at", "0", "10", "50", "--out", str(tmp_path / "zoom.json")])
    assert json.loads((tmp_path / "zoom.json").read_text()) == result
    (model,) = result["results"]
    assert 0.0 <= model["classifier_accuracy"] <= 1.0
    assert [r["control"] for r in model["dreams"]] == list(Z.CONTROLS)
    for row in model["dreams"]:
        assert all(0.0 <= x <= 1.0 for x in row["zoomed_out"][:2]) and row["zoomed_out"][2] is None  # past --steps
    assert all(0.0 <= x <= 1.0 for x in model["real_zoomed_out"])


def test_too_few_rollouts_is_a_clear_error(tmp_path, bundle_path):
    shards = write_shards(tmp_path / "one", lengths=(70,))
    with pytest.raises(ValueError, match="needs at least 2 rollouts"):
        Z.zoom([bundle_path], shards, episodes=2, steps=5)
