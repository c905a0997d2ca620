"""The shipped dream is unchanged by the move to the plain MDN-RNN (bundle format 7).

tests/fixtures/shipped_golden.npz was recorded at commit 09460f0, before the plain model, from the
format-6 bundle (sample flag, mean path, reward input) as the envs ran it: a seeded 300-step
DreamCarRacing-v0 trajectory and a LatentCarRacing-v0 memory trace over a seeded 200-step real
episode, under fixed random actions. The re-saved plain bundle reproduced both exactly on the
recording machine (XLA compiles the same graph: the envs never ran the removed paths).

Observations are compared to float32 rounding (ATOL), not bit for bit: XLA picks its CPU kernels
(the VAE encoder's convolutions) per CPU, so another CPU rounds the last bits differently (an AMD
EPYC with AVX2 gives up to 2.4e-7 in z and 6.6e-7 in h, from identical frames). Nudging one
action by 1e-3 moves the traces by 8e-4 (dream) to 4e-3 (latent env). Rewards and
terminations must match exactly.
"""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import dreamenv  # noqa: F401  (registers the environments)
from dreamenv.model import DEFAULT_MODEL

GOLDEN = Path(__file__).parent / "fixtures" / "shipped_golden.npz"
ATOL = 1e-5  # float32 rounding across CPUs; nudging one action by 1e-3 moves the traces 8e-4 to 4e-3
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


def test_dream_trajectory_is_the_recorded_one(golden):
    obs, rewards, terminated = replay(gym.make("DreamCarRacing-v0", obs="zh"), int(golden["seed"]),
                                      golden["dream_actions"])
    np.testing.assert_allclose(obs, golden["dream_obs"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(rewards, golden["dream_reward"])
    np.testing.assert_array_equal(terminated, golden["dream_terminated"])


def test_latent_env_memory_trace_is_the_recorded_one(golden):
    obs, rewards, _ = replay(gym.make("LatentCarRacing-v0", obs="zh"), int(golden["seed"]), golden["real_actions"])
    np.testing.assert_allclose(obs, golden["real_obs"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(rewards, golden["real_reward"])
