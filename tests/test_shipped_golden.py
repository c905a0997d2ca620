"""The shipped dream is unchanged by the move to the plain MDN-RNN (bundle format 7).

tests/fixtures/shipped_golden.npz was recorded at commit 09460f0, before the plain model, from the
format-6 bundle (sample flag, mean path, reward input) as the envs ran it: a seeded 300-step
DreamCarRacing-v0 trajectory and a LatentCarRacing-v0 memory trace over a seeded 200-step real
episode, under fixed random actions. The re-saved plain bundle reproduces both exactly (XLA
compiles the same graph: the envs never ran the removed paths).
"""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import dreamenv  # noqa: F401  (registers the environments)
from dreamenv.model import DEFAULT_MODEL

GOLDEN = Path(__file__).parent / "fixtures" / "shipped_golden.npz"
pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_dir(), reason="no shipped bundle at dreamenv/assets/default")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def replay(env, seed: int, actions):
    obs, _ = env.reset(seed=seed)
    observations, rewards, terminated = [obs], [], []
    for a in actions:
        obs, reward, term, _, _ = env.step(a)
        observations.append(obs)
        rewards.append(reward)
        terminated.append(term)
    env.close()
    return np.stack(observations), np.array(rewards, np.float32), np.array(terminated)


def test_dream_trajectory_is_bit_for_bit_the_recorded_one(golden):
    obs, rewards, terminated = replay(gym.make("DreamCarRacing-v0", obs="zh"), int(golden["seed"]),
                                      golden["dream_actions"])
    np.testing.assert_array_equal(obs, golden["dream_obs"])
    np.testing.assert_array_equal(rewards, golden["dream_reward"])
    np.testing.assert_array_equal(terminated, golden["dream_terminated"])


def test_latent_env_memory_trace_is_bit_for_bit_the_recorded_one(golden):
    obs, rewards, _ = replay(gym.make("LatentCarRacing-v0", obs="zh"), int(golden["seed"]), golden["real_actions"])
    np.testing.assert_array_equal(obs, golden["real_obs"])
    np.testing.assert_array_equal(rewards, golden["real_reward"])
