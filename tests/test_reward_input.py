"""A memory model that reads the previous reward (MDNRNN.reward_input): the cell, the widening that
gives an old model the input, the loss of its two reward levels, the dream that samples them and
the real env that feeds them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, with_random_mean_path

from dreamenv import world_model as wm
from dreamenv.checkpoint import random_bundle
from dreamenv.envs.latent import RealObserver
from dreamenv.mdnrnn import MDNRNN, drop_unread_reward_input, gain_reward_input, head_layout, previous_rewards, samples_only
from train.mdnrnn_loss import reward_levels_loss

D, B, T = 8, 3, 6
MDN = TINY["mdnrnn"].clone(sample_flag=True, reward_input=True)


def inputs(seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    z = jax.random.normal(ks[0], (B, T, D))
    a = jax.random.uniform(ks[1], (B, T, 3))
    r = jnp.where(jax.random.bernoulli(ks[2], 0.3, (B, T)), 3.2, -0.1)
    return z, a, r


def reward_bundle(event_bias=0.0, seed=0):
    """A random tiny bundle that reads rewards, its mean path random, P(high) set by the event column's bias."""
    bundle = random_bundle(jax.random.key(seed), vae=TINY["vae"], mdnrnn=MDN, n_start=5)
    params = jax.tree_util.tree_map(np.array, with_random_mean_path(bundle.mdnrnn_params))
    out = params["params"]["cell"]["head"]["out"]
    cols = head_layout(MDN.num_mixtures, D, reward_levels=True)
    out["kernel"][:, cols["reward_event"]] = 0.0
    out["bias"][cols["reward_event"]] = event_bias
    out["bias"][cols["reward_high"]] = 3.0  # the high level well above the low one
    return dataclasses.replace(bundle, mdnrnn_params=params)


def test_the_cell_reads_the_previous_reward_and_its_reward_is_the_levels_expectation():
    bundle = reward_bundle(event_bias=0.4)
    z, a, r = inputs()
    run = lambda prev, flag=0.0: MDN.apply(bundle.mdnrnn_params, MDN.initial_carry(B), z, a, flag, prev)[1]
    out = run(previous_rewards(r))
    p = jax.nn.sigmoid(out["reward_logit"])
    np.testing.assert_allclose(out["reward"], out["reward_low"] + p * (out["reward_high"] - out["reward_low"]),
                               rtol=1e-6)
    for flag in (0.0, 1.0):  # both paths read it
        other = run(previous_rewards(r) + 1.0, flag)
        assert float(jnp.abs(other["mu"] - run(previous_rewards(r), flag)["mu"]).max()) > 1e-4
    np.testing.assert_array_equal(previous_rewards(r)[:, 0], 0.0)
    np.testing.assert_array_equal(previous_rewards(r)[:, 1:], r[:, :-1])
    with pytest.raises(ValueError, match="pass prev_reward"):
        MDN.apply(bundle.mdnrnn_params, MDN.initial_carry(B), z, a)
    # step by step is the unroll
    carry, prev = MDN.initial_carry(B), previous_rewards(r)
    for t in range(T):
        carry, o = MDN.apply(bundle.mdnrnn_params, carry, z[:, t], a[:, t], 0.0, prev[:, t], method=MDN.step)
        np.testing.assert_allclose(o["reward"], out["reward"][:, t], rtol=1e-5, atol=1e-6)


def test_gaining_the_reward_input_keeps_the_function():
    old_model = MDN.clone(reward_input=False)
    old = random_bundle(jax.random.key(3), vae=TINY["vae"], mdnrnn=old_model, n_start=5)
    old_params = with_random_mean_path(old.mdnrnn_params)
    grown = gain_reward_input(old_params, MDN)
    expected = jax.eval_shape(lambda: MDN.init(jax.random.key(0), MDN.initial_carry(1), jnp.zeros((1, 1, D)),
                                               jnp.zeros((1, 1, 3)), 0.0, jnp.zeros((1, 1))))
    assert jax.tree_util.tree_map(jnp.shape, grown) == jax.tree_util.tree_map(lambda s: s.shape, expected)
    z, a, r = inputs(1)
    for flag in (0.0, 1.0):
        want = old_model.apply(old_params, old_model.initial_carry(B), z, a, flag)[1]
        got = MDN.apply(grown, MDN.initial_carry(B), z, a, flag, previous_rewards(r))[1]
        for k in ("mu", "log_pi", "log_sigma", "reward", "done_logit"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_the_reward_levels_loss_is_least_at_each_levels_mean_and_the_events_log_odds():
    reward = jnp.array([[-0.1, 3.2, -0.1, -0.1, 3.4, -5.0]])
    w = jnp.array([[1.0, 1, 1, 1, 1, 0]])  # the last step is padding
    low, high, rate = -0.1, 3.3, 2 / 5  # the means over the valid steps of each level, the event's share

    def loss(values):
        out = {k: jnp.full(reward.shape, v) for k, v in zip(("reward_low", "reward_high", "reward_logit"), values)}
        return reward_levels_loss(out, reward, w)["reward_levels"]

    best = jnp.array([low, high, np.log(rate / (1 - rate))])
    np.testing.assert_allclose(jax.grad(loss)(best), 0.0, atol=1e-5)
    for nudge in np.eye(3) * 0.1:
        assert float(loss(best + nudge)) > float(loss(best)) and float(loss(best - nudge)) > float(loss(best))


def test_the_dream_samples_a_level_and_reads_it_at_the_next_step():
    model = wm.WorldModel.from_bundle(reward_bundle(event_bias=0.0))  # P(high) = 0.5
    state, _ = wm.reset(model, jax.random.key(0), B)
    a = jnp.full((B, 3), 0.5)
    np.testing.assert_array_equal(state.reward, 0.0)
    _, head = wm.memory_step(model, state.carry, state.z, a, 1.0, state.reward)
    paid = np.stack([wm.step(model, state, a, jax.random.key(k))[2] for k in range(40)])  # [40, B]
    is_high = np.isclose(paid, np.asarray(head["reward_high"]), atol=1e-6)
    assert np.all(is_high | np.isclose(paid, np.asarray(head["reward_low"]), atol=1e-6))
    assert 0.2 < is_high.mean() < 0.8  # both levels, about half each
    new, _, reward, _ = wm.step(model, state, a, jax.random.key(1))
    np.testing.assert_array_equal(new.reward, reward)
    h = lambda s: wm.step(model, s, a, jax.random.key(2))[1][:, D:]
    assert float(jnp.abs(h(new) - h(new.replace(reward=new.reward + 1.0))).max()) > 1e-4
    # a batch is its envs one at a time
    keys = jax.random.split(jax.random.key(5), B)
    batch = wm.step(model, state, a, keys)[2]
    for i in range(B):
        one = jax.tree_util.tree_map(lambda x: x[i : i + 1], state)
        np.testing.assert_allclose(wm.step(model, one, a[i : i + 1], keys[i : i + 1])[2], batch[i : i + 1], atol=1e-6)


def test_the_real_envs_memory_reads_the_real_reward_as_the_dream_reads_its_own():
    model = wm.WorldModel.from_bundle(reward_bundle())
    rng = np.random.default_rng(0)
    raws = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    a = np.array([0.1, 0.5, 0.0], np.float32)

    def h_after(rewards):
        observer = RealObserver(model, "zh")
        observer.first(raws[0])
        obs = [observer.next(a, raw, r) for raw, r in zip(raws[1:], rewards)]
        return obs[-1][D:]

    # the second step's h reads the first step's reward
    assert np.abs(h_after([3.2, -0.1]) - h_after([-0.1, -0.1])).max() > 1e-4
    # and is the dream's core teacher-forced on the same latents with that reward
    observer = RealObserver(model, "zh")
    z0 = observer.first(raws[0])[:D]
    z1 = observer.next(a, raws[1], 3.2)[:D]
    state = wm.start_state(model, jnp.asarray(z0)[None])
    state, *_ = wm.step(model, state, a[None], jax.random.key(0))
    state = state.replace(z=jnp.asarray(z1)[None], reward=jnp.array([3.2]))
    _, o, *_ = wm.step(model, state, a[None], jax.random.key(1))
    np.testing.assert_allclose(o[0, D:], h_after([3.2, -0.1]), atol=1e-5)


def test_a_reward_input_that_samples_do_not_read_is_dropped_for_the_dream():
    old_model = MDN.clone(reward_input=False)
    old = random_bundle(jax.random.key(3), vae=TINY["vae"], mdnrnn=old_model, n_start=5)
    grown = dataclasses.replace(old, mdnrnn=MDN, mdnrnn_params=gain_reward_input(old.mdnrnn_params, MDN))
    core = wm.WorldModel.from_bundle(grown).for_obs("zh")
    assert not core.mdnrnn.reward_input  # gained, never trained on samples: not read there
    want = wm.WorldModel.from_bundle(old).for_obs("zh")
    state, _ = wm.reset(want, jax.random.key(0), B)
    a = jnp.full((B, 3), 0.5)
    for got, expected in zip(wm.step(core, state, a, jax.random.key(1)), wm.step(want, state, a, jax.random.key(1))):
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y), got, expected)
    reads = wm.WorldModel.from_bundle(reward_bundle()).for_obs("zh")
    assert reads.mdnrnn.reward_input  # random weights read it on samples too: kept
    model, params = drop_unread_reward_input(MDN, samples_only(reward_bundle().mdnrnn_params))
    assert model is MDN
