"""The MDN-RNN: head shapes and constraints; the fused cell is flax's LSTMCell; the single step is
exactly the scanned cell."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import flax.linen as nn

from dreamenv.mdnrnn import MDNRNN, LSTMCell, head_layout


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


def test_component_means_start_apart_and_are_absolute():
    """mu_k = f_k(h) as in the paper: zero mean-head weights give zero means exactly; at init the K means differ."""
    model = MDNRNN()
    params, carry, z, a = setup_model(model)
    _, out = model.apply(params, model.initial_carry(3), z, a)
    mu = np.asarray(out["mu"][0, 0])  # [K, D]
    gaps = [np.linalg.norm(mu[i] - mu[j]) for i in range(5) for j in range(i + 1, 5)]
    assert min(gaps) > 0.3
    zeroed = jax.tree_util.tree_map(np.array, params)
    out, mu = zeroed["params"]["cell"]["head"]["out"], head_layout(model.num_mixtures, model.latent_dim)["mu"]
    out["kernel"][:, mu], out["bias"][mu] = 0.0, 0.0
    _, out = model.apply(zeroed, carry, z, a)
    np.testing.assert_array_equal(out["mu"], np.zeros(out["mu"].shape))


def test_fused_cell_is_flax_lstm_cell():
    """The one [x, h] -> 4H kernel computes flax's nn.LSTMCell (gates i, f, g, o) exactly."""
    hidden, n_in, rng = 16, 7, np.random.default_rng(0)
    carry = tuple(rng.normal(0, 0.5, (4, hidden)).astype(np.float32) for _ in range(2))
    x = rng.normal(size=(4, n_in)).astype(np.float32)
    flax_params = nn.LSTMCell(hidden).init(jax.random.key(1), carry, x)["params"]
    gates = "ifgo"
    kernel = np.concatenate([np.concatenate([flax_params[f"i{g}"]["kernel"], flax_params[f"h{g}"]["kernel"]])
                             for g in gates], 1)
    bias = np.concatenate([flax_params[f"h{g}"]["bias"] for g in gates])
    (c, h), _ = nn.LSTMCell(hidden).apply({"params": flax_params}, carry, x)
    (c2, h2), _ = LSTMCell(hidden).apply({"params": {"kernel": kernel, "bias": bias}}, carry, x)
    np.testing.assert_allclose(c2, c, atol=1e-5)
    np.testing.assert_allclose(h2, h, atol=1e-5)


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
