"""The vector dream: one jitted call for N envs, equal to N single envs, autoreset, SB3 adapter."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import dreamenv  # noqa: F401  (registers the envs)
from dreamenv.envs.vector import DreamVectorEnv

N, STEPS, LIMIT = 3, 25, 7
ACTIONS = np.random.default_rng(1).uniform([-1, 0, 0], [1, 1, 1], (STEPS, N, 3)).astype(np.float32)


def make_vec(path, **kwargs):
    return gym.make_vec("DreamCarRacing-v0", num_envs=N, model=path, max_episode_steps=LIMIT, **kwargs)


def singles(path, seed, **kwargs):
    envs = [gym.make("DreamCarRacing-v0", model=path, max_episode_steps=LIMIT, **kwargs) for _ in range(N)]
    return envs, [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]


def test_make_vec_builds_one_batched_env_with_batched_spaces(bundle_path):
    venv = make_vec(bundle_path, obs="z")
    assert isinstance(venv, DreamVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.observation_space.shape == (N, 8) and venv.action_space.shape == (N, 3)
    single = gym.make("DreamCarRacing-v0", model=bundle_path, obs="z")
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, info = venv.reset(seed=0)
    assert venv.observation_space.contains(obs) and info == {}


def test_next_step_autoreset_equals_n_single_envs(bundle_path):
    venv = make_vec(bundle_path, temperature=0.8)
    envs, first = singles(bundle_path, 10, temperature=0.8)
    np.testing.assert_allclose(venv.reset(seed=10)[0], np.stack(first), atol=1e-5)
    ended = np.zeros(N, bool)
    seen = {"terminated": 0, "truncated": 0, "autoreset": 0}
    for actions in ACTIONS:
        obs_v, reward_v, term_v, trunc_v, _ = venv.step(actions)
        for i, env in enumerate(envs):
            if ended[i]:  # the step after an episode ends resets it: reward 0, no flags
                want, reward, term, trunc = env.reset()[0], 0.0, False, False
                seen["autoreset"] += 1
            else:
                want, reward, term, trunc, _ = env.step(actions[i])
            np.testing.assert_allclose(obs_v[i], want, atol=1e-5, err_msg=f"env {i}")  # batch 1 vs N
            assert abs(reward_v[i] - reward) < 1e-5 and (term_v[i], trunc_v[i]) == (term, trunc)
            seen["terminated"] += term
            seen["truncated"] += trunc
        ended = term_v | trunc_v
    assert all(seen.values()), seen  # the run went through every case


def test_same_step_autoreset_equals_sb3s_dummy_vec_env(bundle_path):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dreamenv.envs.sb3 import DreamSB3VecEnv

    ours = DreamSB3VecEnv(N, model=bundle_path, max_episode_steps=LIMIT)
    single = lambda: gym.make("DreamCarRacing-v0", model=bundle_path, max_episode_steps=LIMIT)
    theirs = DummyVecEnv([single] * N)
    ours.seed(5), theirs.seed(5)
    np.testing.assert_allclose(ours.reset(), theirs.reset(), atol=1e-5)
    ends = 0
    for actions in ACTIONS:
        obs, reward, done, info = ours.step(actions)
        obs_d, reward_d, done_d, info_d = theirs.step(actions)
        np.testing.assert_allclose(obs, obs_d, atol=1e-5)
        np.testing.assert_allclose(reward, reward_d, atol=1e-5)
        np.testing.assert_array_equal(done, done_d)
        assert reward.dtype == np.float32 and done.dtype == bool
        for mine, want in zip(info, info_d):
            assert mine.keys() <= want.keys()
            if "terminal_observation" in want:
                final, final_d = mine["terminal_observation"], want["terminal_observation"]
                np.testing.assert_allclose(final, final_d, atol=1e-5)
                assert mine["TimeLimit.truncated"] == want["TimeLimit.truncated"]
                ends += 1
    assert ends > 0


def test_gymnasium_same_step_mode_reports_final_observations(endless_path):
    venv = make_vec(endless_path, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    for t in range(LIMIT):
        obs, _, terminated, truncated, info = venv.step(ACTIONS[t])
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all() and all(o.shape == (8 + 16,) for o in info["final_obs"])
    assert not np.any(obs[:, 8:])  # already reset: h = 0


def test_per_env_seeds(bundle_path):
    venv = make_vec(bundle_path)
    by_list = venv.reset(seed=[4, 5, 6])[0]
    np.testing.assert_array_equal(by_list, venv.reset(seed=4)[0])
    assert not np.array_equal(by_list, venv.reset(seed=[4, 9, 6])[0])
    with pytest.raises(ValueError, match="expected num_envs=3"):
        venv.reset(seed=[1, 2])


@pytest.mark.parametrize(
    "bad, match", [(np.full((N, 3), np.nan), "not all finite"), (np.zeros((N, 2)), r"expected \(3, 3\)")]
)
def test_bad_actions_raise_and_leave_the_envs_unchanged(endless_path, bad, match):
    venv, twin = make_vec(endless_path), make_vec(endless_path)
    venv.reset(seed=0), twin.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        venv.step(bad)
    for got, want in zip(venv.step(ACTIONS[0])[:4], twin.step(ACTIONS[0])[:4]):
        np.testing.assert_array_equal(got, want)


def test_steps_never_retrace(bundle_path, traces):
    venv = make_vec(bundle_path)
    venv.reset(seed=0)
    venv.step(ACTIONS[0])
    traces.clear()
    for actions in ACTIONS:
        venv.step(actions)
    venv.reset(seed=1)
    assert not traces, traces


def test_pixels_are_the_rendered_frames(endless_path):
    venv = make_vec(endless_path, obs="pixels", render_mode="rgb_array", render_scale=2)
    for obs in (venv.reset(seed=0)[0], venv.step(ACTIONS[0])[0]):
        frames = venv.render()
        assert obs.shape == (N, 64, 64, 3) and frames.shape == (N, 128, 128, 3)
        # render() decodes in its own jitted call: XLA may round a few levels differently
        np.testing.assert_allclose(frames[:, ::2, ::2].astype(int), obs.astype(int), atol=3)


def test_ppo_learns_a_few_hundred_steps_on_the_sb3_adapter(bundle_path, one_torch_thread):
    from stable_baselines3 import PPO

    from dreamenv.envs.sb3 import DreamSB3VecEnv

    venv = DreamSB3VecEnv(4, model=bundle_path)
    agent = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    agent.learn(512)
    assert agent.num_timesteps == 512
