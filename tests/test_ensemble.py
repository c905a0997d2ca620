"""Ensemble dreams: K MDN-RNNs stepped together, a member per step, a disagreement penalty."""

import dataclasses
import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_bundle
from conftest import tiny_ensemble as ensemble

import dreamenv  # noqa: F401  (registers the envs)
from dreamenv import world_model as wm
from dreamenv.checkpoint import BundleError, load_bundle, random_bundle, save_bundle
from dreamenv.envs.vector import DreamVectorEnv
from dreamenv.mdnrnn import MDNRNN
from dreamenv.mixture import mdn_mean
from train.ensemble import join
from train.ensemble import main as ensemble_main

B = 3


def actions(seed=0):
    return jax.random.uniform(jax.random.key(seed), (B, 3), minval=jnp.array([-1.0, 0, 0]), maxval=1.0)


def test_identical_members_dream_as_the_single_model_at_zero_temperature():
    single = wm.WorldModel.from_bundle(tiny_bundle())
    same = wm.WorldModel.from_bundle(ensemble(seeds=(0, 0, 0), penalty=3.0))
    assert same.ensemble_size == 3
    s1, _ = wm.reset(single, jax.random.key(1), B)
    s3, _ = wm.reset(same, jax.random.key(1), B)
    for t in range(4):
        k = jax.random.key(10 + t)
        s1, o1, r1, d1 = wm.step(single, s1, actions(t), k, 0.0)
        s3, o3, r3, d3 = wm.step(same, s3, actions(t), k, 0.0)
        np.testing.assert_allclose(o3, o1, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r3, r1, rtol=1e-5, atol=1e-6)  # no disagreement, no penalty
        np.testing.assert_array_equal(d3, d1)


def test_reward_is_the_members_mean_minus_the_penalty_times_their_disagreement():
    model = wm.WorldModel.from_bundle(ensemble(penalty=0.5))
    state, _ = wm.reset(model, jax.random.key(0), B)
    z, a = state.z, actions()
    heads = []
    for params in [model.mdnrnn_params] + [jax.tree_util.tree_map(lambda x: x[i], model.member_params) for i in range(2)]:
        _, head = model.mdnrnn.apply(params, model.mdnrnn.initial_carry(B), z, a, method=MDNRNN.step)
        heads.append(head)
    means = np.stack([mdn_mean(h["log_pi"], h["mu"]) for h in heads], 1)  # [B, K, D]
    u = np.sqrt(np.mean(np.var(means, axis=1), axis=-1))
    expected = np.mean([h["reward"] for h in heads], 0) - 0.5 * u
    new, obs, reward, _ = wm.step(model, state, a, jax.random.key(1))
    assert np.all(u > 0)
    np.testing.assert_allclose(reward, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs[:, 8:], heads[0]["h"], rtol=1e-6)  # the agent sees the primary's h
    assert new.member_carry[1].shape == (B, 2, 16)
    np.testing.assert_allclose(new.member_carry[1][:, 1], heads[2]["h"], rtol=1e-6)
    zero = model.with_penalty(0.0)
    np.testing.assert_allclose(wm.step(zero, state, a, jax.random.key(1))[2], expected + 0.5 * u, rtol=1e-5)


def test_each_step_samples_z_from_a_member_drawn_per_env():
    model = wm.WorldModel.from_bundle(ensemble(penalty=0.0))
    state, _ = wm.reset(model, jax.random.key(0), 64)
    a = jnp.tile(jnp.array([[0.0, 0.5, 0.0]]), (64, 1))
    _, obs, _, _ = wm.step(model, state, a, jax.random.key(3), 0.0)  # τ = 0: z is the member's top mean
    cands = []
    for params in [model.mdnrnn_params] + [jax.tree_util.tree_map(lambda x: x[i], model.member_params) for i in range(2)]:
        _, head = model.mdnrnn.apply(params, model.mdnrnn.initial_carry(64), state.z, a, method=MDNRNN.step)
        top = jnp.argmax(head["log_pi"], -1)
        cands.append(np.asarray(jnp.take_along_axis(head["mu"], top[:, None, None], 1)[:, 0]))
    dist = np.stack([np.abs(np.asarray(obs[:, :8]) - c).max(-1) for c in cands], 1)  # [64, K]
    assert np.all(dist.min(1) < 1e-5)  # every z is one member's prediction
    assert len(set(dist.argmin(1))) == 3  # and all members get drawn


def test_cli_joins_saved_bundles_and_the_round_trip_keeps_members_and_penalty(tmp_path):
    bundle = ensemble(penalty=0.25)
    members = []
    for i in range(3):
        params = bundle.mdnrnn_params if i == 0 else jax.tree_util.tree_map(lambda x: x[i - 1], bundle.member_params)
        single = dataclasses.replace(bundle, mdnrnn_params=params, member_params=None, penalty=0.0)
        members.append(str(save_bundle(tmp_path / f"m{i}", single)))
    assert ensemble_main(["--members", *members, "--penalty", "0.25", "--out", str(tmp_path / "ens")]) == 0
    loaded = load_bundle(tmp_path / "ens")
    assert loaded.ensemble_size == 3 and loaded.penalty == 0.25
    for x, y in zip(jax.tree_util.tree_leaves(loaded.member_params), jax.tree_util.tree_leaves(bundle.member_params)):
        np.testing.assert_array_equal(x, y)
    assert loaded.metadata["ensemble_members"] == members


def test_corrupt_ensemble_config_is_a_clear_error(tmp_path):
    path = save_bundle(tmp_path / "ens", ensemble())
    config = json.loads((path / "config.json").read_text())
    config["ensemble"] = {"size": 1, "penalty": 0.0}  # says one model; the params hold members
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"ens: params.msgpack holds .*members.*expected \['mdnrnn'"):
        load_bundle(path)
    config["ensemble"] = "three"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="'ensemble' is 'three'"):
        load_bundle(path)


def test_join_refuses_members_of_another_vae_or_size():
    with pytest.raises(ValueError, match="member m1 was trained on another VAE"):
        join([tiny_bundle(), tiny_bundle(seed=1)], 1.0, ["m0", "m1"])
    with pytest.raises(ValueError, match="member big has MDN-RNN config"):
        other = random_bundle(jax.random.key(0), n_start=5, vae=TINY["vae"],
                              mdnrnn=dataclasses.replace(TINY["mdnrnn"], hidden_size=8))
        join([tiny_bundle(), other], 1.0, ["m0", "big"])


def test_penalty_kwarg_is_checked_and_reaches_the_env(tmp_path):
    path = save_bundle(tmp_path / "ens", ensemble(penalty=0.0))
    with pytest.raises(ValueError, match="penalty must be a finite number >= 0"):
        gym.make("DreamCarRacing-v0", model=path, penalty=-1.0)
    with pytest.raises(ValueError, match="needs an ensemble bundle"):
        gym.make("DreamCarRacing-v0", model=tiny_bundle(), penalty=1.0)
    rewards = {}
    for penalty in (0.0, 100.0):
        env = gym.make("DreamCarRacing-v0", model=path, penalty=penalty)
        env.reset(seed=0)
        rewards[penalty] = sum(env.step(np.array([0.0, 1.0, 0.0]))[1] for _ in range(5))
    assert rewards[100.0] < rewards[0.0] - 1.0


def test_vector_env_of_an_ensemble_equals_single_envs_and_resets_every_member(tmp_path):
    path = save_bundle(tmp_path / "ens", ensemble(done_bias=-20.0))  # episodes end by the time limit only
    venv = DreamVectorEnv(2, model=path, max_episode_steps=3)
    envs = [gym.make("DreamCarRacing-v0", model=path) for _ in range(2)]
    obs, _ = venv.reset(seed=5)
    singles = [e.reset(seed=5 + i)[0] for i, e in enumerate(envs)]
    np.testing.assert_allclose(obs, np.stack(singles), rtol=1e-5, atol=1e-6)
    act = np.array([[0.1, 0.5, 0.0], [-0.3, 0.2, 0.1]], np.float32)
    for _ in range(3):
        obs, reward, *_ = venv.step(act)
        out = [e.step(act[i]) for i, e in enumerate(envs)]
        np.testing.assert_allclose(obs, np.stack([o[0] for o in out]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(reward, [o[1] for o in out], rtol=1e-4, atol=1e-5)
    venv.step(act)  # NEXT_STEP: the envs truncated last call reset now, every member's LSTM too
    assert not np.any(venv._state.member_carry[0]) and not np.any(venv._state.member_carry[1])


def test_scan_rollout_runs_the_ensemble():
    model = wm.WorldModel.from_bundle(ensemble(penalty=1.0))
    policy = lambda params, o: jnp.tile(params, (o.shape[0], 1))
    returns, lengths = wm.rollout(model, policy, jnp.array([0.0, 1.0, 0.0]), jax.random.key(0), 4, 10)
    free, _ = wm.rollout(model.with_penalty(0.0), policy, jnp.array([0.0, 1.0, 0.0]), jax.random.key(0), 4, 10)
    assert returns.shape == (4,) and np.all(np.isfinite(returns))
    assert np.all(returns <= free + 1e-5) and np.any(returns < free - 1e-4)  # same dreams, penalty paid
