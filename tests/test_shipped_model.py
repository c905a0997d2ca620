"""The shipped default model (dreamenv/assets/default): loads through plain gym.make, steps a whole
episode with finite outputs, and its metadata tells the truth about its arrays."""

import json

import gymnasium as gym
import numpy as np
import pytest

import dreamenv  # noqa: F401  (registers the environments)
from dreamenv.checkpoint import CONFIG_FILE, load_bundle
from dreamenv.model import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_dir(), reason="no shipped bundle at dreamenv/assets/default")
STEPS = 1000


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_MODEL)


def run_episode(env, steps: int, seed: int = 0) -> tuple[list, list]:
    """Steps `env` with random actions for `steps` steps (resetting when an episode ends)."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs)
    return observations, rewards


@pytest.mark.parametrize("env_id", ["DreamCarRacing-v0", "LatentCarRacing-v0"])
def test_plain_make_steps_a_thousand_times_with_finite_outputs(env_id):
    env = gym.make(env_id)  # no model=: the shipped bundle
    observations, rewards = run_episode(env, STEPS)
    env.close()
    obs = np.stack(observations)
    assert obs.shape[1:] == env.observation_space.shape and obs.dtype == env.observation_space.dtype
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rewards))
    assert all(env.observation_space.contains(o) for o in observations)


def test_dream_frames_are_real_images():
    """The decoded dream is a picture (varied pixels), not a constant or saturated frame."""
    env = gym.make("DreamCarRacing-v0", obs="pixels")
    observations, _ = run_episode(env, 50)
    frames = np.stack(observations).astype(np.float32)
    assert frames.shape[1:] == (64, 64, 3)
    assert 20.0 < frames.mean() < 235.0 and frames.std() > 10.0


def test_metadata_matches_the_arrays(bundle):
    config = json.loads((DEFAULT_MODEL / CONFIG_FILE).read_text())
    meta = bundle.metadata
    assert meta["trained"] is True
    assert len(json.dumps(config["metadata"])) <= 5 * 1024  # flat and small: provenance, not a parent's record
    assert bundle.start_latents.shape == (meta["train_rollouts"], bundle.vae.latent_dim)
    assert np.all(np.isfinite(bundle.start_latents))
    assert bundle.mdnrnn.latent_dim == bundle.vae.latent_dim == config["vae"]["latent_dim"]
    assert config["mdnrnn"]["hidden_size"] == bundle.mdnrnn.hidden_size
    assert meta["command"].startswith("python -m train.pipeline") and len(meta["git_commit"]) == 40
    assert meta["train_rollouts"] + meta["heldout_rollouts"] <= meta["data_rollouts"]
    for key in ("mse_ratio_to_persistence", "reward_corr", "done_auc"):
        assert key in meta["mdnrnn_metrics"]
