"""DreamCarRacing-v0: API checkers, seeding, equality with the pure core, bad actions, no retracing."""

import subprocess
import sys
import warnings

import gymnasium as gym
import jax
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dreamenv  # noqa: F401  (registers the envs)
from dreamenv import world_model as wm
from dreamenv.checkpoint import BundleError
from dreamenv.envs.dream import DreamCarRacing
from dreamenv.model import DEFAULT_MODEL

MODES = ("z", "zh", "pixels")
ACTIONS = np.random.default_rng(0).uniform([-1, 0, 0], [1, 1, 1], (40, 3)).astype(np.float32)
SB3_ALLOWED = ".*symmetric and normalized Box action space.*"  # CarRacing-v3's own space triggers it


def make(path, **kwargs):
    return gym.make("DreamCarRacing-v0", model=path, **kwargs)


def run(env, seed, actions=ACTIONS):
    """(obs, reward, terminated, truncated) per step, resetting without a seed when an episode ends."""
    out = [(env.reset(seed=seed)[0], 0.0, False, False)]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            out.append((env.reset()[0], 0.0, False, False))
    return out


def assert_same_run(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


@pytest.mark.parametrize("obs", MODES)
def test_gymnasium_check_env(bundle_path, obs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(make(bundle_path, obs=obs, render_mode="rgb_array").unwrapped)


@pytest.mark.parametrize("obs", MODES)
def test_sb3_check_env(bundle_path, obs):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=SB3_ALLOWED)
        sb3_check_env(make(bundle_path, obs=obs).unwrapped)


def test_registered_with_carracings_action_space_and_time_limit(bundle_path):
    env = gym.make("dreamenv:DreamCarRacing-v0", model=bundle_path)
    assert env.spec.max_episode_steps == 1000
    car = gym.make("CarRacing-v3")
    assert env.action_space == car.action_space and env.action_space.dtype == np.float32
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.observation_space.shape == (8 + 16,)


def test_importing_dreamenv_leaves_the_training_extras_alone():
    code = "import sys, dreamenv; print([m for m in ('torch', 'stable_baselines3', 'optax') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_returned_types(bundle_path):
    env = make(bundle_path)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(ACTIONS[0])
    assert obs.dtype == np.float32 and type(reward) is float and type(terminated) is bool
    assert truncated is False and info == {}


def test_a_seed_reproduces_its_episodes_and_another_seed_does_not(bundle_path):
    first, again, other = (run(make(bundle_path), seed) for seed in (3, 3, 4))
    assert_same_run(first, again)
    assert any(t for _, _, t, _ in first)  # the random done head ended some episodes on the way
    assert not np.array_equal(first[1][0], other[1][0])


def test_steps_are_the_pure_cores(bundle_path):
    env = make(bundle_path, temperature=1.3)
    model = env.unwrapped.model
    rng, _ = gym.utils.seeding.np_random(8)  # the env's documented key chain
    chain = jax.random.wrap_key_data(rng.integers(0, 2**32, 2, dtype=np.uint32), impl="threefry2x32")
    chain, now = jax.random.split(chain)
    state, want = wm.reset(model, now[None], 1)
    np.testing.assert_array_equal(env.reset(seed=8)[0], want[0])
    for a in ACTIONS[:10]:
        chain, now = jax.random.split(chain)
        state, want, reward, terminated = wm.step(model, state, a[None], now[None], 1.3)
        obs, r, term, _, _ = env.step(a)
        np.testing.assert_array_equal(obs, want[0])
        assert r == float(reward[0]) and term == bool(terminated[0])
        if term:
            break


@pytest.mark.parametrize(
    "bad, match",
    [
        ([np.nan, 0.5, 0.0], "not all finite"),
        ([0.0, np.inf, 0.0], "not all finite"),
        (["left", 0, 0], "not all finite"),
        ([0.0, 0.5], r"shape \(2,\), expected \(3,\)"),
        ([[0.0, 0.5, 0.0]], r"shape \(1, 3\), expected \(3,\)"),
    ],
)
def test_bad_actions_raise_and_leave_the_env_unchanged(endless_path, bad, match):
    env, twin = make(endless_path), make(endless_path)
    env.reset(seed=1), twin.reset(seed=1)
    env.step(ACTIONS[0]), twin.step(ACTIONS[0])
    with pytest.raises(ValueError, match=match):
        env.step(np.array(bad, dtype=object) if isinstance(bad[0], str) else np.array(bad))
    assert_same_run([env.step(ACTIONS[1])[:4]], [twin.step(ACTIONS[1])[:4]])


def test_out_of_bounds_actions_are_clipped_to_the_space(endless_path):
    env, twin = make(endless_path), make(endless_path)
    env.reset(seed=2), twin.reset(seed=2)
    wild = [env.step(np.array([3.0, 1.5, -2.0]))[:4] for _ in range(3)]
    tame = [twin.step(np.array([1.0, 1.0, 0.0]))[:4] for _ in range(3)]
    assert_same_run(wild, tame)


def test_steps_and_resets_never_retrace(bundle_path, traces):
    env = make(bundle_path)
    run(env, 0, ACTIONS[:2])  # warm-up: the first reset and step compile
    traces.clear()
    run(env, 1)
    assert not traces, traces


def test_the_time_limit_truncates(endless_path):
    env = make(endless_path, max_episode_steps=6)  # the registered TimeLimit (1000), shortened
    env.reset(seed=0)
    outcomes = [env.step(ACTIONS[0])[2:4] for _ in range(6)]
    assert outcomes == [(False, False)] * 5 + [(False, True)]


def test_rgb_array_render_is_the_decoded_frame_upscaled(endless_path):
    env = make(endless_path, obs="pixels", render_mode="rgb_array", render_scale=3)
    env.reset(seed=0)
    obs = env.step(ACTIONS[0])[0]
    frame = env.render()
    assert frame.shape == (192, 192, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[::3, ::3], obs)


def test_human_render_opens_a_window(endless_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    env = make(endless_path, render_mode="human", render_scale=2)
    env.reset(seed=0)
    env.step(ACTIONS[0])
    assert env.unwrapped._screen.window.get_size() == (128, 128)
    env.close()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(obs="rgb"), ValueError, r"obs='rgb' is unknown, expected one of \('z', 'zh', 'pixels'\)"),
        (dict(temperature=-1.0), ValueError, "temperature must be a finite number >= 0"),
        (dict(render_mode="ascii"), ValueError, "render_mode='ascii' is unknown"),
        (dict(model=42), TypeError, "model is a int, expected a bundle folder path"),
    ],
)
def test_bad_arguments_are_named(bundle_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        DreamCarRacing(**{"model": bundle_path, **kwargs})


def test_step_before_reset_is_refused(bundle_path):
    with pytest.raises(gym.error.ResetNeeded):
        make(bundle_path, disable_env_checker=True).unwrapped.step(ACTIONS[0])


@pytest.mark.skipif(DEFAULT_MODEL.is_dir(), reason="a shipped bundle exists")
def test_without_a_shipped_bundle_the_error_says_how_to_build_one():
    with pytest.raises(BundleError, match=r"python -m train.pipeline.*model="):
        gym.make("DreamCarRacing-v0")


@pytest.mark.skipif(not DEFAULT_MODEL.is_dir(), reason="no shipped bundle at dreamenv/assets/default")
def test_the_shipped_bundle_loads_with_plain_make():
    env = gym.make("DreamCarRacing-v0")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.observation_space.contains(env.step(env.action_space.sample())[0])


def test_ppo_learns_a_few_hundred_steps(bundle_path, one_torch_thread):
    from stable_baselines3 import PPO

    agent = PPO("MlpPolicy", make(bundle_path), n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    agent.learn(256)
    assert agent.num_timesteps == 256
