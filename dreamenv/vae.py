"""ConvVAE (the vision model V): 64×64×3 frames in [0, 1] <-> a 32-d latent z.

Encoder as in the paper: 4 convs (32, 64, 128, 256 filters, kernel 4, stride 2, ReLU) ->
dense mu, logvar. Two decoders, chosen by the `decoder` field:
  "paper":    dense 1024 -> transposed convs 128k5, 64k5, 32k6, 3k6 (stride 2) -> sigmoid.
  "subpixel": dense 4·4·256 -> four [3×3 conv to 4C channels + pixel shuffle] stages
              (4 -> 8 -> 16 -> 32 -> 64) -> sigmoid. Only regular convolutions, whose
              gradients XLA's CPU backend computes far faster than ConvTranspose's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

DECODERS = ("paper", "subpixel")


class Encoder(nn.Module):
    latent_dim: int

    @nn.compact
    def __call__(self, x):
        # x: [B, 64, 64, 3] -> mu, logvar: [B, latent]
        for i, feat in enumerate((32, 64, 128, 256)):
            x = nn.relu(nn.Conv(feat, (4, 4), strides=(2, 2), padding="VALID", name=f"conv{i}")(x))
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
            x = nn.ConvTranspose(feat, (k, k), strides=(2, 2), padding="VALID", name=f"deconv{i}")(x)
            x = nn.relu(x) if i < len(layers) - 1 else nn.sigmoid(x)
        return x


def pixel_shuffle(x, r: int = 2):
    """[B, H, W, C·r²] -> [B, H·r, W·r, C] (depth-to-space)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


class SubpixelDecoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        # z: [B, latent] -> [B, 64, 64, 3]
        x = nn.relu(nn.Dense(4 * 4 * 256, name="fc")(z)).reshape(z.shape[0], 4, 4, 256)
        layers = (128, 64, 32, 3)  # 4 -> 8 -> 16 -> 32 -> 64
        for i, feat in enumerate(layers):
            x = pixel_shuffle(nn.Conv(4 * feat, (3, 3), padding="SAME", name=f"conv{i}")(x))
            x = nn.relu(x) if i < len(layers) - 1 else nn.sigmoid(x)
        return x


class VAE(nn.Module):
    """The vision model V. Config fields are saved in bundles and rebuild the module."""

    latent_dim: int = 32
    decoder: str = "subpixel"

    def setup(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"VAE decoder {self.decoder!r} is unknown, expected one of {DECODERS}")
        self.encoder = Encoder(self.latent_dim)
        self.dec = PaperDecoder() if self.decoder == "paper" else SubpixelDecoder()

    def encode(self, frames):
        """frames: [B, 64, 64, 3] float in [0, 1] -> (mu, logvar), each [B, latent]."""
        return self.encoder(frames)

    def decode(self, z):
        """z: [B, latent] -> frames [B, 64, 64, 3] in [0, 1]."""
        return self.dec(z)

    def __call__(self, frames, key):
        """Encode, sample z = mu + σ·ε with `key`, decode. -> (recon, mu, logvar)."""
        mu, logvar = self.encode(frames)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        return self.decode(z), mu, logvar
