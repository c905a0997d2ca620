"""dreamenv: World Models for CarRacing-v3 in JAX, packaged as Gymnasium environments."""

from dreamenv.frames import FrameConfig, preprocess

__all__ = ["FrameConfig", "preprocess"]
__version__ = "0.1.0"
