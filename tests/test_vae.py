"""The VAE: shapes, and the paper's layers computed as stride-1 convolutions
equal flax's own strided `Conv` / `ConvTranspose` (values and gradients), layer by layer and
for the whole model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamenv.vae import (
    VAE,
    conv_stride2,
    conv_transpose_stride2,
    depth_to_space,
    init_vae,
    space_to_depth,
)

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def test_shapes():
    vae = VAE(latent_dim=8)
    frames = RNG.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    params = init_vae(vae, KEY)
    recon, mu, logvar = jax.jit(vae.apply)(params, frames, KEY)
    assert recon.shape == (2, 64, 64, 3) and mu.shape == logvar.shape == (2, 8)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert jax.eval_shape(lambda z: vae.apply(params, z, method=VAE.decode), jnp.zeros((5, 8))).shape == (5, 64, 64, 3)
    mu2, logvar2 = jax.eval_shape(lambda x: vae.apply(params, x, method=VAE.encode), jnp.zeros((5, 64, 64, 3)))
    assert mu2.shape == logvar2.shape == (5, 8)


def test_space_depth_round_trip():
    x = normal(2, 6, 4, 5)
    assert space_to_depth(x).shape == (2, 3, 2, 20)
    close(depth_to_space(space_to_depth(x)), x, tol=0)


def _check_layer(fast, ref, x, features, kernel):
    """`fast(x, kernel, bias)` equals the flax layer `ref` with the same params, and so do grads."""
    layer = ref(features, (kernel, kernel), strides=(2, 2), padding="VALID")
    p = {"kernel": 0.3 * normal(kernel, kernel, x.shape[-1], features), "bias": 0.3 * normal(features)}
    slow = lambda x, p: layer.apply({"params": p}, x)
    quick = lambda x, p: fast(x, p["kernel"], p["bias"])

    @jax.jit
    def outputs_and_grads(x, p):
        grads = lambda f: jax.grad(lambda x, p: jnp.sum(jnp.sin(f(x, p))), argnums=(0, 1))(x, p)
        return (quick(x, p), grads(quick)), (slow(x, p), grads(slow))

    mine, flax_ref = outputs_and_grads(x, p)
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(flax_ref)):
        close(a, b, tol=1e-4)


@pytest.mark.parametrize("size, kernel", [(1, 5), (5, 5), (13, 6), (30, 6), (4, 3), (3, 4)])
def test_conv_transpose_stride2_equals_flax(size, kernel):
    x = normal(2, size, size, 4)
    _check_layer(conv_transpose_stride2, nn.ConvTranspose, x, features=3, kernel=kernel)


@pytest.mark.parametrize("size, kernel", [(64, 4), (31, 4), (14, 4), (6, 4), (9, 2), (11, 6)])
def test_conv_stride2_equals_flax(size, kernel):
    x = normal(2, size, size, 3)
    _check_layer(conv_stride2, nn.Conv, x, features=5, kernel=kernel)


def test_conv_stride2_rejects_odd_kernel():
    with pytest.raises(ValueError, match="even kernel"):
        conv_stride2(jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 1)), jnp.zeros(1))


class FlaxPaperVAE(nn.Module):
    """The paper's VAE written with flax's strided Conv / ConvTranspose, same parameter names."""

    latent_dim: int = 32

    @nn.compact
    def __call__(self, x):
        for i, feat in enumerate((32, 64, 128, 256)):
            x = nn.relu(nn.Conv(feat, (4, 4), strides=(2, 2), padding="VALID", name=f"encoder.conv{i}")(x))
        x = x.reshape(x.shape[0], -1)
        mu = nn.Dense(self.latent_dim, name="encoder.mu")(x)
        x = nn.Dense(1024, name="dec.fc")(mu).reshape(-1, 1, 1, 1024)
        for i, (feat, k) in enumerate(((128, 5), (64, 5), (32, 6), (3, 6))):
            x = nn.ConvTranspose(feat, (k, k), strides=(2, 2), padding="VALID", name=f"dec.deconv{i}")(x)
            x = nn.relu(x) if i < 3 else nn.sigmoid(x)
        return x


def test_paper_vae_equals_flax_strided_layers():
    vae = VAE(latent_dim=8)
    frames = RNG.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    params = init_vae(vae, KEY)["params"]
    flat = {f"{outer}.{inner}": leaf for outer, sub in params.items() for inner, leaf in sub.items()}
    ref = {k: v for k, v in flat.items() if k != "encoder.logvar"}
    mine = jax.jit(lambda p, x: vae.apply(p, vae.apply(p, x, method=VAE.encode)[0], method=VAE.decode))
    close(mine({"params": params}, frames), jax.jit(FlaxPaperVAE(latent_dim=8).apply)({"params": ref}, frames))


def test_direct_encoder_equals_the_training_one():
    """encode(direct=True), the inference path (XLA's strided convs), computes the same latents."""
    vae = VAE(latent_dim=8)
    frames = RNG.uniform(size=(3, 64, 64, 3)).astype(np.float32)
    params = init_vae(vae, KEY)
    direct = jax.jit(lambda p, x: vae.apply(p, x, direct=True, method=VAE.encode))(params, frames)
    close(direct, jax.jit(lambda p, x: vae.apply(p, x, method=VAE.encode))(params, frames))
