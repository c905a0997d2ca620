"""ConvVAE (the vision model V): 64×64×3 frames in [0, 1] <-> a 32-d latent z.

Encoder as in the paper: 4 convs (32, 64, 128, 256 filters, kernel 4, stride 2, ReLU) ->
dense mu, logvar. Decoder as in the paper: dense 1024 -> transposed convs 128k5, 64k5, 32k6, 3k6
(stride 2) -> sigmoid.

    vae = VAE(latent_dim=32)
    mu, logvar = vae.apply(params, frames, method=VAE.encode)   # frames [B, 64, 64, 3] in [0, 1]
    frames = vae.apply(params, z, method=VAE.decode)            # z [B, D] -> [B, 64, 64, 3] in [0, 1]
    recon, mu, logvar = vae.apply(params, frames, key)          # training: z = mu + σ·ε

XLA's CPU backend computes gradients of strided and transposed convolutions with slow generic
loops. So the paper's layers are computed as exactly equal stride-1 convolutions on rearranged
tensors (`conv_stride2`, `conv_transpose_stride2`): same function, same parameters (flax's
`Conv` / `ConvTranspose` kernel layout and initialization), ~6× faster to train on CPU.
`jit_options()` holds the XLA CPU setting that makes those stride-1 convolutions fast too.
Inference without gradients (`encode(..., direct=True)`, what the envs run) uses XLA's own strided
convolution instead: the same function, ~2× faster for one frame (batch-1 encoder 789 -> 413 µs
here). The stride-1 form and `__call__` serve training (train/vae.py); `benchmarks/vae_speed.py`
measures it against PyTorch.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# On CPU, convolutions are kept out of YNNPACK (jaxlib 0.10's default sends some there and they
# train ~2× slower, and run ~1.5× slower at batch 1, than Eigen's); YNNPACK still runs the matmuls.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def jit_options() -> dict | None:
    """`jax.jit(..., compiler_options=...)` for VAE training/inference on this backend."""
    return CPU_OPTIONS if jax.default_backend() == "cpu" else None


def init_vae(vae: "VAE", key) -> dict:
    """Fresh random params for `vae`."""
    return _compiled_init(vae)(key, jnp.zeros((1, 64, 64, 3), jnp.float32), jax.random.fold_in(key, 1))


@functools.cache
def _compiled_init(vae: "VAE"):
    # Compiled without backend optimization: init runs once, and on CPU that cuts its compile
    # time from ~9 s to ~1 s.
    return jax.jit(vae.init, compiler_options={"xla_backend_optimization_level": 0})


def space_to_depth(x, r: int = 2):
    """[B, H·r, W·r, C] -> [B, H, W, r·r·C], channel index (dy·r + dx)·C + c."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // r, w // r, r * r * c)


def depth_to_space(x, r: int = 2):
    """[B, H, W, r·r·C] -> [B, H·r, W·r, C], the inverse of `space_to_depth`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c // (r * r))


def _conv(x, kernel):
    """Stride-1 VALID convolution. x: [B, H, W, I], kernel: [kh, kw, I, O]."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _full_conv(x, kernel):
    """Stride-1 convolution over x zero-padded by kernel size - 1 on each side ("full")."""
    kh, kw = kernel.shape[:2]
    # Pad explicitly: with the padding inside the conv, XLA:CPU computes the kernel's gradient
    # with swapped operands as a generic loop when the input is small (~8× slower).
    return _conv(jnp.pad(x, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0))), kernel)


def conv_stride2(x, kernel, bias):
    """Exactly flax `Conv(O, (k, k), strides=2, padding="VALID")`, k even, as a stride-1 conv.

    out[m] = Σ_t x[2m + t]·w[t] = Σ_a Σ_q x[2(m + a) + q]·w[2a + q]: a (k/2)×(k/2) convolution
    of the space-to-depth input (phase q moved into channels).
    x: [B, N, N, I], kernel: [k, k, I, O], bias: [O] -> [B, (N - k)//2 + 1, same, O]
    """
    k, _, i, o = kernel.shape
    if k % 2:
        raise ValueError(f"conv_stride2 needs an even kernel size, got {k}")
    half = k // 2
    n_out = (x.shape[1] - k) // 2 + 1
    x = x[:, : 2 * (n_out + half - 1), : 2 * (n_out + half - 1)]  # the rows the conv reads
    w = kernel.reshape(half, 2, half, 2, i, o).transpose(0, 2, 1, 3, 4, 5).reshape(half, half, 4 * i, o)
    return _conv(space_to_depth(x), w) + bias


def conv_transpose_stride2(x, kernel, bias):
    """Exactly flax `ConvTranspose(O, (k, k), strides=2, padding="VALID")` as stride-1 convs.

    flax's transposed conv scatters with the flipped kernel f[u] = w[k-1-u]:
    out[y] = Σ_i x[i]·f[y - 2i]. Each output phase p (y = 2m + p) is an ordinary convolution,
    out[2m + p] = Σ_j x[m - j]·f[2j + p], of x with the taps f[p::2]. Even k: every phase has
    k/2 taps, so one conv makes all four phases as 4·O channels and depth-to-space interleaves
    them. Odd k: phases have (k±1)/2 taps; one conv per phase (no zero taps). A 1×1 input
    makes it a matmul.
    x: [B, N, N, I], kernel: [k, k, I, O], bias: [O] -> [B, 2(N - 1) + k, same, O]
    """
    k, _, i, o = kernel.shape
    b, n = x.shape[:2]
    size = 2 * (n - 1) + k
    f = kernel[::-1, ::-1]
    if n == 1:
        return (x.reshape(b, i) @ f.transpose(2, 0, 1, 3).reshape(i, k * k * o)).reshape(b, k, k, o) + bias
    if k % 2 == 0:
        # [a, py, b, px, I, O] (tap a of phase py is f[2a + py]) -> [a, b, I, (py, px, O)], taps reversed
        w = f.reshape(k // 2, 2, k // 2, 2, i, o)[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5)
        return depth_to_space(_full_conv(x, w.reshape(k // 2, k // 2, i, 4 * o))) + bias
    m = (size + 1) // 2  # outputs of phase 0 (phase 1 has one fewer)
    grow = lambda y: jnp.pad(y, ((0, 0), (0, m - y.shape[1]), (0, m - y.shape[2]), (0, 0)))
    rows = [jnp.stack([grow(_full_conv(x, f[py::2, px::2][::-1, ::-1])) for px in (0, 1)], axis=3)
            for py in (0, 1)]  # each [B, m, m, 2 (px), O]
    out = jnp.stack(rows, axis=2).reshape(b, 2 * m, 2 * m, o)  # [B, m, 2 (py), m, 2 (px), O]
    return out[:, :size, :size] + bias


class Conv2(nn.Module):
    """The paper's k×k stride-2 VALID conv; params as flax `nn.Conv` (kernel [k, k, I, O], bias).

    `direct`: XLA's strided convolution (fast forward, slow gradient on CPU) instead of `conv_stride2`.
    """

    features: int
    kernel_size: int = 4

    @nn.compact
    def __call__(self, x, direct: bool = False):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if direct:
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=dims) + bias
        return conv_stride2(x, kernel, bias)


class ConvTranspose2(nn.Module):
    """The paper's k×k stride-2 VALID transposed conv; params as flax `nn.ConvTranspose`."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_transpose_stride2(x, kernel, bias)


class Encoder(nn.Module):
    latent_dim: int

    @nn.compact
    def __call__(self, x, direct: bool = False):
        # x: [B, 64, 64, 3] -> mu, logvar: [B, latent]
        for i, feat in enumerate((32, 64, 128, 256)):  # 64 -> 31 -> 14 -> 6 -> 2
            x = nn.relu(Conv2(feat, name=f"conv{i}")(x, direct))
        x = x.reshape(x.shape[0], -1)  # [B, 2·2·256]
        mu = nn.Dense(self.latent_dim, name="mu")(x)
        logvar = nn.Dense(self.latent_dim, name="logvar")(x)
        return mu, logvar


class PaperDecoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        # z: [B, latent] -> [B, 64, 64, 3]
        x = nn.Dense(1024, name="fc")(z).reshape(z.shape[0], 1, 1, 1024)
        layers = ((128, 5), (64, 5), (32, 6), (3, 6))  # 1 -> 5 -> 13 -> 30 -> 64
        for i, (feat, k) in enumerate(layers):
            x = ConvTranspose2(feat, k, name=f"deconv{i}")(x)
            x = nn.relu(x) if i < len(layers) - 1 else nn.sigmoid(x)
        return x


class VAE(nn.Module):
    """The vision model V. Config fields are saved in bundles and rebuild the module."""

    latent_dim: int = 32

    def setup(self):
        self.encoder = Encoder(self.latent_dim)
        self.dec = PaperDecoder()

    def encode(self, frames, direct: bool = False):
        """frames: [B, 64, 64, 3] float in [0, 1] -> (mu, logvar), each [B, latent].

        direct=True: strided convolutions computed directly, for inference (see `Conv2`)."""
        return self.encoder(frames, direct)

    def decode(self, z):
        """z: [B, latent] -> frames [B, 64, 64, 3] in [0, 1]."""
        return self.dec(z)

    def __call__(self, frames, key):
        """Encode, sample z = mu + σ·ε with `key`, decode. -> (recon, mu, logvar)."""
        mu, logvar = self.encode(frames)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        return self.decode(z), mu, logvar
