"""The pure world-model core: reset / step / rollout / decode / encode on explicit state."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_bundle

from dreamenv import world_model as wm
from dreamenv.mdnrnn import MDNRNN
from dreamenv.mixture import mdn_sample

D, H, B = 8, 16, 3  # one batch size throughout: each new shape costs a compile
cell = jax.jit(lambda m, carry, z, a: m.mdnrnn.apply(m.mdnrnn_params, carry, z, a, method=MDNRNN.step))


@pytest.fixture(scope="module")
def model():
    return wm.WorldModel.from_bundle(tiny_bundle())


def actions(seed=0):
    return jax.random.uniform(jax.random.key(seed), (B, 3), minval=jnp.array([-1.0, 0, 0]), maxval=1.0)


@pytest.mark.parametrize(
    "obs, shape, dtype",
    [("z", (D,), jnp.float32), ("zh", (D + H,), jnp.float32), ("pixels", (64, 64, 3), jnp.uint8)],
)
def test_reset_starts_from_the_bank_with_zero_memory(model, obs, shape, dtype):
    state, o = wm.reset(model, jax.random.key(0), B, obs=obs)
    assert o.shape == (B, *shape) and o.dtype == dtype
    bank = np.asarray(model.start_latents)
    assert all(any(np.array_equal(z, s) for s in bank) for z in np.asarray(state.z))
    assert not np.any(state.carry[0]) and not np.any(state.carry[1]) and not np.any(state.t)
    if obs == "zh":
        np.testing.assert_array_equal(o[:, :D], state.z)
        assert not np.any(o[:, D:])  # h_0 = 0


def test_step_is_the_cell_then_the_mixture_sample(model):
    state, _ = wm.reset(model, jax.random.key(0), B)
    a, keys = actions(), jax.random.split(jax.random.key(1), B)
    new, o, reward, terminated = wm.step(model, state, a, keys, 1.3)
    carry, head = cell(model, state.carry, state.z, a)
    sample = jax.jit(jax.vmap(mdn_sample, in_axes=(0, 0, 0, 0, None)))  # each env from its own key
    z = sample(keys, head["log_pi"], head["mu"], head["log_sigma"], 1.3)
    np.testing.assert_allclose(new.z, z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new.carry[1], carry[1], atol=1e-6)
    np.testing.assert_allclose(o, np.concatenate([new.z, carry[1]], axis=1), atol=1e-6)  # h_{t+1}
    np.testing.assert_allclose(reward, head["reward"], atol=1e-6)
    np.testing.assert_array_equal(terminated, np.asarray(head["done_logit"]) > 0)
    np.testing.assert_array_equal(new.t, np.ones(B))


def test_temperature_zero_is_the_most_likely_components_mean(model):
    state, _ = wm.reset(model, jax.random.key(0), B)
    new, *_ = wm.step(model, state, actions(), jax.random.key(5), 0.0)
    _, head = cell(model, state.carry, state.z, actions())
    best = np.argmax(head["log_pi"], axis=-1)
    np.testing.assert_allclose(new.z, np.asarray(head["mu"])[np.arange(B), best], atol=1e-6)


def test_a_batch_equals_its_envs_one_at_a_time(model):
    keys = jax.random.split(jax.random.key(3), B)
    state, _ = wm.reset(model, keys, B)
    batch = wm.step(model, state, actions(), keys, 1.0)
    for i in range(B):
        env_i = jax.tree_util.tree_map(lambda x: x[i : i + 1], state)
        one = wm.step(model, env_i, actions()[i : i + 1], keys[i : i + 1], 1.0)
        for got, want in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(batch)):
            np.testing.assert_allclose(got[0], want[i], atol=1e-6)


def test_actions_are_clipped_to_the_action_space(model):
    state, _ = wm.reset(model, jax.random.key(0), B)
    wild = wm.step(model, state, jnp.tile(jnp.array([4.0, 2.0, -3.0]), (B, 1)), jax.random.key(1))
    tame = wm.step(model, state, jnp.tile(jnp.array([1.0, 1.0, 0.0]), (B, 1)), jax.random.key(1))
    for got, want in zip(jax.tree_util.tree_leaves(wild), jax.tree_util.tree_leaves(tame)):
        np.testing.assert_array_equal(got, want)


def test_keys_of_the_wrong_shape_are_refused(model):
    state, _ = wm.reset(model, jax.random.key(0), B)
    with pytest.raises(ValueError, match=r"key has shape \(2,\), expected \(\) or \(3,\)"):
        wm.step(model, state, actions(), jax.random.split(jax.random.key(0), 2))


def test_decode_and_encode_shapes(model):
    frames = wm.decode(model, jnp.zeros((B, D)))
    assert frames.shape == (B, 64, 64, 3) and frames.dtype == jnp.uint8
    z = wm.encode(model, frames)
    assert z.shape == (B, D) and bool(jnp.all(jnp.abs(z) <= wm.LATENT_BOUND))


def linear_policy(params, obs):
    return jnp.tanh(obs @ params)  # [B, D + H] @ [D + H, 3]


def test_rollout_is_the_step_loop_under_scan(model):
    params = 0.3 * jax.random.normal(jax.random.key(7), (D + H, 3))
    key, batch, steps = jax.random.key(11), B, 12
    returns, lengths = wm.rollout(model, linear_policy, params, key, batch, steps, 1.1)

    k_reset, k_steps = jax.random.split(key)
    state, o = wm.reset(model, k_reset, batch)
    alive, ret, length = np.ones(batch, bool), np.zeros(batch), np.zeros(batch, int)
    for k in jax.random.split(k_steps, steps):
        state, o, r, term = wm.step(model, state, linear_policy(params, o), k, 1.1)
        ret += np.where(alive, r, 0.0)
        length += alive
        alive &= ~np.asarray(term)
    np.testing.assert_allclose(returns, ret, atol=1e-5)
    np.testing.assert_array_equal(lengths, length)
    assert 0 < lengths.min() and lengths.min() < steps  # the random done head does end some


def test_rollout_vmaps_over_a_population_and_compiles_once(model, traces):
    population = 0.3 * jax.random.normal(jax.random.key(0), (4, D + H, 3))
    @jax.jit
    @jax.vmap
    def fitness(params, key):
        return wm.rollout(model, linear_policy, params, key, B, 10)[0].mean()

    for seed in range(3):
        out = fitness(population, jax.random.split(jax.random.key(seed), 4))
    assert out.shape == (4,) and bool(jnp.all(jnp.isfinite(out)))
    assert traces["fitness"] == 1, traces


def test_step_never_retraces_for_another_model_state_or_temperature(model, traces):
    other = wm.WorldModel.from_bundle(tiny_bundle(seed=1))  # same shapes, other weights
    state, _ = wm.reset(model, jax.random.key(0), B)
    state, *_ = wm.step(model, state, actions(), jax.random.key(0), 1.0)
    traces.clear()
    for i, temperature in enumerate([1.0, 0.5, 0.0, 2.0]):
        state, *_ = wm.step([model, other][i % 2], state, actions(i), jax.random.key(i), temperature)
    assert not traces, traces
