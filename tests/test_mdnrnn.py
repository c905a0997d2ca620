"""The MDN-RNN: head shapes and constraints; the single step is exactly the scanned cell."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import with_random_mean_path

from dreamenv.mdnrnn import MDNRNN, head_layout, samples_only


def setup_model(model, batch=3, steps=9, seed=0):
    k_init, k_z, k_a, k_c = jax.random.split(jax.random.key(seed), 4)
    z = jax.random.normal(k_z, (batch, steps, model.latent_dim))
    a = jax.random.uniform(k_a, (batch, steps, model.action_dim), minval=-1.0, maxval=1.0)
    params = model.init(k_init, model.initial_carry(batch), z, a)
    carry = tuple(jax.random.normal(k, (batch, model.hidden_size)) for k in jax.random.split(k_c))
    return params, carry, z, a


def test_outputs_shapes_and_constraints():
    model = MDNRNN(latent_dim=8, hidden_size=32, num_mixtures=4, sigma_min=0.05)
    params, carry, z, a = setup_model(model)
    _, out = model.apply(params, carry, z, a)
    chex.assert_shape(out["log_pi"], (3, 9, 4))
    chex.assert_shape([out["mu"], out["log_sigma"]], (3, 9, 4, 8))
    chex.assert_shape([out["reward"], out["done_logit"]], (3, 9))
    chex.assert_shape(out["h"], (3, 9, 32))
    np.testing.assert_allclose(jax.nn.logsumexp(out["log_pi"], -1), 0.0, atol=1e-5)
    assert float(jnp.exp(out["log_sigma"]).min()) >= 0.05 * (1 - 1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_component_means_start_apart_and_are_absolute_or_residual(residual):
    """Absolute: mu_k = f_k(h); residual: mu_k = z_t + Δ_k(h). Zero mean-head weights give zeros
    (absolute) or persistence (residual) exactly; at init the K means differ."""
    model = MDNRNN(residual=residual)
    params, carry, z, a = setup_model(model)
    _, out = model.apply(params, model.initial_carry(3), z, a)
    mu = np.asarray(out["mu"][0, 0])  # [K, D]
    gaps = [np.linalg.norm(mu[i] - mu[j]) for i in range(5) for j in range(i + 1, 5)]
    assert min(gaps) > 0.3
    zeroed = jax.tree_util.tree_map(np.array, params)
    out, mu = zeroed["params"]["cell"]["head"]["out"], head_layout(model.num_mixtures, model.latent_dim)["mu"]
    out["kernel"][:, mu], out["bias"][mu] = 0.0, 0.0
    _, out = model.apply(zeroed, carry, z, a)
    expected = z[:, :, None] if residual else np.zeros_like(z[:, :, None])
    np.testing.assert_array_equal(out["mu"], np.broadcast_to(expected, out["mu"].shape))


def test_step_by_step_equals_scan():
    model = MDNRNN()
    params, carry, z, a = setup_model(model, steps=12)
    final_scan, seq = model.apply(params, carry, z, a)
    step = jax.jit(lambda c, zt, at: model.apply(params, c, zt, at, method=MDNRNN.step))
    c = carry
    for t in range(z.shape[1]):
        c, out = step(c, z[:, t], a[:, t])
        for name in seq:
            np.testing.assert_allclose(out[name], seq[name][:, t], atol=1e-5, rtol=1e-5, err_msg=name)
    for got, want in zip(c, final_scan):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_step_traces_once():
    model = MDNRNN(hidden_size=16)
    params, carry, z, a = setup_model(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, c, zt, at):
        return model.apply(params, c, zt, at, method=MDNRNN.step)

    c = carry
    for t in range(z.shape[1]):
        c, _ = step(params, c, z[:, t], a[:, t])


def test_sample_flag_adds_a_mean_path_that_samples_skip():
    """Without `sample_flag` the flag is ignored. With it, samples (s = 1) run exactly the model
    without the flag, and encoder means (s = 0) add the mean path's gates, per env."""
    plain, flagged = MDNRNN(hidden_size=16), MDNRNN(hidden_size=16, sample_flag=True)
    params, carry, z, a = setup_model(plain)
    base = plain.apply(params, carry, z, a)[1]["mu"]
    np.testing.assert_array_equal(plain.apply(params, carry, z, a, 0.0)[1]["mu"], base)
    fparams, *_ = setup_model(flagged)
    cell = fparams["params"]["cell"]
    assert cell["lstm"]["kernel"].shape == cell["lstm"]["mean_kernel"].shape == (32 + 3 + 16, 4 * 16)
    assert cell["head"]["out"]["kernel"].shape == cell["head"]["mean_kernel"].shape
    assert not any(np.any(cell[layer][name]) for layer in ("lstm", "head") for name in ("mean_kernel", "mean_bias"))
    shared = samples_only(fparams)
    fparams = with_random_mean_path(fparams)
    want = plain.apply(shared, carry, z, a)[1]["mu"]
    for sampled in (1.0, jnp.ones(3)[:, None]):  # a Python 1 skips the path, an array weighs it by 0
        np.testing.assert_allclose(flagged.apply(fparams, carry, z, a, sampled)[1]["mu"], want, atol=1e-6)
    mean_in = np.asarray(flagged.apply(fparams, carry, z, a, 0.0)[1]["mu"])
    assert float(np.abs(mean_in - np.asarray(want)).max()) > 1e-3
    mixed = np.asarray(flagged.apply(fparams, carry, z, a, jnp.array([[0.0], [1.0], [0.0]]))[1]["mu"])
    np.testing.assert_allclose(mixed[[0, 2]], mean_in[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(mixed[1], np.asarray(want)[1], atol=1e-6)
    stepped = flagged.apply(fparams, carry, z[:, 0], a[:, 0], jnp.array([0.0, 1.0, 0.0]), method=MDNRNN.step)[1]
    np.testing.assert_allclose(stepped["mu"], mixed[:, 0], atol=1e-5)
