"""Model bundles: exact round trip, atomic replacement, and each documented load error."""

import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from dreamenv.checkpoint import (
    PARAMS_FILE,
    BundleError,
    load_bundle,
    random_bundle,
    save_bundle,
)
from dreamenv.mdnrnn import MDNRNN, head_layout
from dreamenv.vae import VAE

TINY = dict(vae=VAE(latent_dim=8), mdnrnn=MDNRNN(latent_dim=8, hidden_size=16, num_mixtures=3))


@pytest.fixture(scope="module")
def bundle():
    b = random_bundle(jax.random.key(0), n_start=5, **TINY)
    return b.__class__(**{**b.__dict__, "metadata": {"trained": False, "rollouts": 2}})


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def assert_same(a, b):
    assert a.vae == b.vae and a.mdnrnn == b.mdnrnn and a.frames == b.frames
    assert a.metadata == b.metadata
    np.testing.assert_array_equal(a.start_latents, b.start_latents)
    for x, y in zip(leaves((a.vae_params, a.mdnrnn_params)), leaves((b.vae_params, b.mdnrnn_params)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    assert_same(load_bundle(tmp_path / "m"), bundle)


def test_float16_storage_is_smaller_and_close(tmp_path, bundle):
    save_bundle(tmp_path / "f32", bundle)
    save_bundle(tmp_path / "f16", bundle, dtype="float16")
    size = lambda d: (tmp_path / d / PARAMS_FILE).stat().st_size
    assert size("f16") < 0.6 * size("f32")
    loaded = load_bundle(tmp_path / "f16")
    for x, y in zip(leaves(loaded.mdnrnn_params), leaves(bundle.mdnrnn_params)):
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


def test_save_replaces_and_failed_save_keeps_old(tmp_path, bundle):
    path = tmp_path / "m"
    save_bundle(path, bundle)
    newer = bundle.__class__(**{**bundle.__dict__, "metadata": {"version": 2}})
    save_bundle(path, newer)
    assert load_bundle(path).metadata == {"version": 2}
    broken = bundle.__class__(**{**bundle.__dict__, "metadata": {"bad": object()}})
    with pytest.raises(TypeError):
        save_bundle(path, broken)
    assert load_bundle(path).metadata == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found at .*nowhere"):
        load_bundle(tmp_path / "nowhere")


def test_missing_params_file(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    (tmp_path / "m" / PARAMS_FILE).unlink()
    with pytest.raises(BundleError, match=f"{PARAMS_FILE} is missing"):
        load_bundle(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_params(tmp_path, bundle, damage):
    save_bundle(tmp_path / "m", bundle)
    f = tmp_path / "m" / PARAMS_FILE
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{tmp_path / 'm'}.*truncated or corrupted"):
        load_bundle(tmp_path / "m")


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    (path / "config.json").write_text(json.dumps(cfg))


def test_wrong_shapes(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    edit_config(tmp_path / "m", mdnrnn__hidden_size=32)
    with pytest.raises(BundleError, match=r"MDN-RNN param .* has shape \(.*16.*\), expected"):
        load_bundle(tmp_path / "m")


def test_unknown_format_version(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    edit_config(tmp_path / "m", format_version=99)
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(tmp_path / "m")


def test_bad_config_json(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    (tmp_path / "m" / "config.json").write_text('{"format_version": 1, ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "m")


def test_unknown_config_field(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    edit_config(tmp_path / "m", vae__channels=7)
    with pytest.raises(BundleError, match="bad VAE config"):
        load_bundle(tmp_path / "m")


def write_format_3(path, bundle, rng):
    """`bundle` saved as format 3 wrote it: flax LSTMCell's eight matrices, five head layers.
    -> the legacy MDN-RNN params, random (the LSTM from nn.LSTMCell's own init)."""
    m = bundle.mdnrnn
    carry, x = m.initial_carry(1), jnp.zeros((1, m.latent_dim + m.action_dim))
    lstm = nn.LSTMCell(m.hidden_size).init(jax.random.key(1), carry, x)["params"]
    lstm = jax.tree_util.tree_map(lambda w: np.asarray(w) + rng.normal(0, 0.1, w.shape).astype(np.float32), lstm)
    head = {name: {"kernel": rng.normal(0, 0.3, (m.hidden_size, cols.stop - cols.start)).astype(np.float32),
                   "bias": rng.normal(0, 0.3, cols.stop - cols.start).astype(np.float32)}
            for name, cols in head_layout(m.num_mixtures, m.latent_dim).items()}
    legacy = {"params": {"cell": {"lstm": lstm, "head": head}}}
    save_bundle(path, bundle)
    payload = serialization.msgpack_serialize(
        {"vae": bundle.vae_params, "mdnrnn": legacy, "start_latents": bundle.start_latents})
    (path / PARAMS_FILE).write_bytes(payload)
    edit_config(path, format_version=3, params_sha256=hashlib.sha256(payload).hexdigest())
    return legacy


def test_format_3_bundle_loads_as_the_same_model(tmp_path, bundle):
    """Format 3's LSTM and head layers become the fused ones exactly: same carry, same outputs."""
    rng = np.random.default_rng(0)
    legacy = write_format_3(tmp_path / "v3", bundle, rng)["params"]["cell"]
    loaded = load_bundle(tmp_path / "v3")
    m = loaded.mdnrnn
    carry = tuple(rng.normal(0, 0.5, (4, m.hidden_size)).astype(np.float32) for _ in range(2))
    z = rng.normal(size=(4, m.latent_dim)).astype(np.float32)
    a = rng.uniform(0, 1, (4, m.action_dim)).astype(np.float32)

    (c, h), _ = nn.LSTMCell(m.hidden_size).apply({"params": legacy["lstm"]}, carry, np.concatenate([z, a], 1))
    dense = lambda name: h @ legacy["head"][name]["kernel"] + legacy["head"][name]["bias"]
    (c2, h2), out = m.apply(loaded.mdnrnn_params, carry, z, a, method=MDNRNN.step)
    np.testing.assert_allclose(c2, c, atol=1e-5)
    np.testing.assert_allclose(h2, h, atol=1e-5)
    np.testing.assert_allclose(out["log_pi"], jax.nn.log_softmax(dense("pi")), atol=1e-5)
    np.testing.assert_allclose(out["mu"], dense("mu").reshape(4, m.num_mixtures, m.latent_dim), atol=1e-5)
    sigma = m.sigma_min + jax.nn.softplus(dense("sigma"))
    np.testing.assert_allclose(out["log_sigma"], np.log(sigma).reshape(4, m.num_mixtures, m.latent_dim), atol=1e-5)
    np.testing.assert_allclose(out["reward"], dense("reward")[:, 0], atol=1e-5)
    np.testing.assert_allclose(out["done_logit"], dense("done")[:, 0], atol=1e-5)


def test_format_3_bundle_with_missing_params(tmp_path, bundle):
    legacy = write_format_3(tmp_path / "v3", bundle, np.random.default_rng(0))
    del legacy["params"]["cell"]["lstm"]["hg"]
    payload = serialization.msgpack_serialize(
        {"vae": bundle.vae_params, "mdnrnn": legacy, "start_latents": bundle.start_latents})
    (tmp_path / "v3" / PARAMS_FILE).write_bytes(payload)
    edit_config(tmp_path / "v3", params_sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(BundleError, match=r"v3: format-3 MDN-RNN params are incomplete .*hg"):
        load_bundle(tmp_path / "v3")
