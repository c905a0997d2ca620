"""The one frame preprocessing: CarRacing-v3's 96×96 RGB frame -> the VAE's 64×64 input.

The dashboard (bottom 12 rows: speed, ABS, steering and gyro bars) is cropped, as in the
World Models paper. At 64×64 those bars are a few pixels the VAE blurs away, and what they
show (speed, turning) is carried by the MDN-RNN's hidden state, which sees successive z.
The resize is an exact area average, done per axis as a few weighted gathers: no image
library at run time and no BLAS call (whose spinning threads cost more than the resize).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

RAW_SHAPE = (96, 96, 3)


@dataclasses.dataclass(frozen=True)
class FrameConfig:
    """Rows [crop_top, crop_bottom) of the raw frame are kept, then resized to size×size."""

    crop_top: int = 0
    crop_bottom: int = 84
    size: int = 64

    def __post_init__(self):
        if not 0 <= self.crop_top < self.crop_bottom <= RAW_SHAPE[0]:
            raise ValueError(
                f"FrameConfig crop rows [{self.crop_top}, {self.crop_bottom}) must lie "
                f"inside [0, {RAW_SHAPE[0]}) and be non-empty"
            )
        if self.size < 1:
            raise ValueError(f"FrameConfig size must be positive, got {self.size}")


@lru_cache(maxsize=16)
def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel i averages input span [i, i+1)·n_in/n_out, which touches at most
    ceil(n_in/n_out) + 1 input pixels. -> (index [n_out, taps] int, weight [n_out, taps] float32)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)  # [n_out, n_in]
    taps = int((overlap > 0).sum(1).max())
    index = np.argsort(overlap <= 0, axis=1, kind="stable")[:, :taps]  # the touched cells first
    weight = np.take_along_axis(overlap, index, axis=1) / (n_in / n_out)
    return index, weight.astype(np.float32)


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-resize float32 `x` along `axis` to n_out: a few weighted gathers, no BLAS."""
    axis = axis % x.ndim
    index, weight = _area_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1 :], np.float32)
    for k in range(index.shape[1]):
        out += np.take(x, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def preprocess(frames: np.ndarray, config: FrameConfig = FrameConfig()) -> np.ndarray:
    """Raw CarRacing frames -> VAE input frames.

    frames: uint8 [..., 96, 96, 3]  ->  uint8 [..., size, size, 3]
    """
    frames = np.asarray(frames)
    if frames.shape[-3:] != RAW_SHAPE or frames.dtype != np.uint8:
        raise ValueError(
            f"frames have shape {frames.shape} and dtype {frames.dtype}, expected uint8 "
            f"[..., 96, 96, 3] (CarRacing-v3 observations)"
        )
    crop = frames[..., config.crop_top : config.crop_bottom, :, :].astype(np.float32)
    out = _resize_axis(_resize_axis(crop, config.size, axis=-3), config.size, axis=-2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 64, 64, 3] -> float32 in [0, 1], the VAE's input range."""
    return np.asarray(frames, dtype=np.float32) / 255.0
