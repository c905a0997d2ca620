"""The one frame preprocessing: CarRacing-v3's 96×96 RGB frame -> the VAE's 64×64 input.

The dashboard (bottom 12 rows: speed, ABS, steering and gyro bars) is cropped, as in the
World Models paper. At 64×64 those bars are a few pixels the VAE blurs away, and what they
show (speed, turning) is carried by the MDN-RNN's hidden state, which sees successive z.
The crop keeps the full width, so the resize is an exact area average: a 84×96 -> 64×64
linear map done as two small matrix products (no image library needed at run time).
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
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights: output pixel i averages input span [i, i+1)·n_in/n_out."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / (n_in / n_out)).astype(np.float32)


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
    rows = _area_matrix(crop.shape[-3], config.size)  # [S, H]
    cols = _area_matrix(crop.shape[-2], config.size)  # [S, W]
    out = np.einsum("ih,...hwc,jw->...ijc", rows, crop, cols, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 64, 64, 3] -> float32 in [0, 1], the VAE's input range."""
    return np.asarray(frames, dtype=np.float32) / 255.0
