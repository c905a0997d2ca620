"""Per-image error of uint8 frames [B, H, W, C] against references: MSE, PSNR and SSIM (jitted).

SSIM is Wang et al. (2004): an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = 255,
computed per channel over the valid region (no padding) and averaged over positions and channels.
The window is separable, so the filter is two matmuls (XLA's CPU depthwise convolution is slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PEAK = 255.0
_C1, _C2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2


def _window(n: int, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The valid Gaussian filter over an axis of length n as a banded matrix [n - size + 1, n]."""
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    m = np.zeros((n - size + 1, n), np.float32)
    for i in range(len(m)):
        m[i, i : i + size] = w / w.sum()
    return m


def _blur(x):
    """Valid Gaussian filter over H and W, as two matmuls: [B, H, W, C] -> [B, H-10, W-10, C]."""
    x = jnp.einsum("ih,bhwc->biwc", _window(x.shape[1]), x)
    return jnp.einsum("jw,biwc->bijc", _window(x.shape[2]), x)


@jax.jit
def frame_mse(a, b):
    """Mean squared error in [0, 1] pixel units. a, b: uint8 [B, H, W, C] -> [B]"""
    d = (a.astype(jnp.float32) - b.astype(jnp.float32)) / PEAK
    return jnp.mean(d**2, axis=(1, 2, 3))


def psnr(mse):
    """PSNR in dB from MSE in [0, 1] units, capped at 100 dB (identical frames). -> same shape"""
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), 1e-10))


@jax.jit
def ssim(a, b):
    """Mean SSIM of each pair. a, b: uint8 [B, H, W, C] (H, W >= 11) -> [B] in [-1, 1]."""
    x, y = a.astype(jnp.float32), b.astype(jnp.float32)
    c = x.shape[-1]
    # (co)variances from the images less their own means: the same, with less float32 cancellation
    xc, yc = x - x.mean((1, 2), keepdims=True), y - y.mean((1, 2), keepdims=True)
    blurred = _blur(jnp.concatenate([x, y, xc, yc, xc * xc, yc * yc, xc * yc], axis=-1))
    mx, my, cx, cy, xx, yy, xy = (blurred[..., i * c : (i + 1) * c] for i in range(7))
    vx, vy, cov = xx - cx**2, yy - cy**2, xy - cx * cy
    s = ((2 * mx * my + _C1) * (2 * cov + _C2)) / ((mx**2 + my**2 + _C1) * (vx + vy + _C2))
    return jnp.mean(s, axis=(1, 2, 3))
