"""dreamenv: World Models for CarRacing-v3 in JAX, packaged as Gymnasium environments.

`import dreamenv` registers DreamCarRacing-v0 (with its vector form) and LatentCarRacing-v0.
"""

from gymnasium.envs.registration import register

from dreamenv.checkpoint import Bundle, BundleError, load_bundle, random_bundle, save_bundle
from dreamenv.envs.dream import DreamCarRacing
from dreamenv.envs.latent import LatentCarRacing
from dreamenv.envs.vector import DreamVectorEnv
from dreamenv.frames import FrameConfig, preprocess
from dreamenv.world_model import DreamState, WorldModel

__all__ = [
    "Bundle",
    "BundleError",
    "DreamCarRacing",
    "DreamState",
    "DreamVectorEnv",
    "FrameConfig",
    "LatentCarRacing",
    "WorldModel",
    "load_bundle",
    "preprocess",
    "random_bundle",
    "save_bundle",
]
__version__ = "0.1.0"

MAX_EPISODE_STEPS = 1000  # CarRacing-v3's

register(
    id="DreamCarRacing-v0",
    entry_point="dreamenv.envs.dream:DreamCarRacing",
    vector_entry_point="dreamenv.envs.vector:DreamVectorEnv",
    max_episode_steps=MAX_EPISODE_STEPS,
)
register(
    id="LatentCarRacing-v0",
    entry_point="dreamenv.envs.latent:LatentCarRacing",
    max_episode_steps=MAX_EPISODE_STEPS,
)
