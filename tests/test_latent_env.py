"""LatentCarRacing-v0: the real CarRacing-v3 behind the encoder and the dream's memory."""

import multiprocessing
import warnings

import gymnasium as gym
import jax
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dreamenv  # noqa: F401  (registers the envs)
from dreamenv import world_model as wm
from dreamenv.envs.latent import LatentCarRacing
from dreamenv.frames import preprocess

MODES = ("z", "zh", "pixels")
ACTIONS = np.random.default_rng(2).uniform([-1, 0, 0], [1, 1, 1], (12, 3)).astype(np.float32)
SB3_ALLOWED = ".*symmetric and normalized Box action space.*"  # CarRacing-v3's own space triggers it


def make(path, **kwargs):
    return gym.make("LatentCarRacing-v0", model=path, **kwargs)


@pytest.mark.parametrize("obs", MODES)
def test_gymnasium_and_sb3_check_env(bundle_path, obs):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(bundle_path, obs=obs).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)
        warnings.filterwarnings("ignore", message=SB3_ALLOWED)
        sb3_check_env(env)


@pytest.mark.parametrize("obs", MODES)
def test_observation_and_action_spaces_are_the_dreams(bundle_path, obs):
    real = make(bundle_path, obs=obs)
    dream = gym.make("DreamCarRacing-v0", model=bundle_path, obs=obs)
    assert real.observation_space == dream.observation_space
    assert real.action_space == dream.action_space == gym.make("CarRacing-v3").action_space
    assert real.spec.max_episode_steps == gym.spec("CarRacing-v3").max_episode_steps


@pytest.fixture(scope="module")
def real_run(bundle_path):
    """The latent env ("zh") and the plain CarRacing-v3 driven by the same seed and actions."""
    latent, car = make(bundle_path, obs="zh"), gym.make("CarRacing-v3")
    obs, frames, outcomes, want = [latent.reset(seed=7)[0]], [car.reset(seed=7)[0]], [], []
    for a in ACTIONS:
        o, r, term, trunc, _ = latent.step(a)
        frame, r_car, term_car, trunc_car, _ = car.step(a)
        obs.append(o), frames.append(frame)
        outcomes.append((r, term, trunc)), want.append((r_car, term_car, trunc_car))
    return latent.unwrapped.model, np.stack(obs), np.stack(frames), outcomes, want


def test_rewards_and_episode_ends_are_the_real_envs(real_run):
    *_, outcomes, want = real_run
    assert outcomes == want


def test_z_is_the_encoders_mean_of_the_preprocessed_frame(real_run):
    model, obs, frames, *_ = real_run
    z = wm.encode(model, preprocess(frames, model.frames))
    np.testing.assert_allclose(obs[:, :8], z, atol=1e-5)


def test_h_means_what_it_means_in_the_dream(real_run):
    """Feeding the dream's core the real latents and actions gives the latent env's h, step by step."""
    model, obs, *_ = real_run
    z, h = obs[:, :8], obs[:, 8:]
    assert not np.any(h[0])  # zeros at reset
    state, _ = wm.reset(model, jax.random.key(0), 1)
    state = state.replace(z=z[:1])
    for t, a in enumerate(ACTIONS):
        state, o, *_ = wm.step(model, state, a[None], jax.random.key(t))
        np.testing.assert_allclose(o[0, 8:], h[t + 1], atol=1e-5, err_msg=f"step {t}")
        state = state.replace(z=z[t + 1 : t + 2])  # teacher-force the real next latent


def test_pixels_are_the_preprocessed_real_frame(bundle_path):
    latent, car = make(bundle_path, obs="pixels"), gym.make("CarRacing-v3")
    np.testing.assert_array_equal(latent.reset(seed=3)[0], preprocess(car.reset(seed=3)[0]))
    for a in ACTIONS[:3]:
        np.testing.assert_array_equal(latent.step(a)[0], preprocess(car.step(a)[0]))


def test_carracing_kwargs_pass_through(bundle_path):
    env = make(bundle_path, obs="z", domain_randomize=True, lap_complete_percent=0.5)
    assert env.unwrapped.car.domain_randomize and env.unwrapped.car.lap_complete_percent == 0.5
    with pytest.raises(ValueError, match="needs continuous actions"):
        LatentCarRacing(model=bundle_path, continuous=False)


@pytest.mark.parametrize(
    "bad, match", [([np.nan, 0.0, 0.0], "not all finite"), ([0.0, 1.0], r"shape \(2,\)")]
)
def test_bad_actions_raise_before_the_car_moves(bundle_path, bad, match):
    env, twin = make(bundle_path), make(bundle_path)
    env.reset(seed=1), twin.reset(seed=1)
    with pytest.raises(ValueError, match=match):
        env.step(np.array(bad))
    np.testing.assert_array_equal(env.step(ACTIONS[0])[0], twin.step(ACTIONS[0])[0])


def test_out_of_bounds_actions_are_clipped_for_the_car_and_the_memory(bundle_path):
    env, twin = make(bundle_path), make(bundle_path)
    env.reset(seed=1), twin.reset(seed=1)
    for _ in range(3):
        wild, tame = env.step(np.array([2.0, 3.0, -1.0])), twin.step(np.array([1.0, 1.0, 0.0]))
        np.testing.assert_array_equal(wild[0], tame[0])


def test_async_vector_env_with_spawned_workers(bundle_path):
    venv = gym.make_vec(
        "LatentCarRacing-v0", num_envs=2, vectorization_mode="async",
        vector_kwargs={"context": "spawn"}, model=str(bundle_path), obs="zh",
    )  # fmt: skip
    try:
        obs, _ = venv.reset(seed=0)
        for a in ACTIONS[:3]:
            obs, *_ = venv.step(np.stack([a, a]))
        assert obs.shape == (2, 24) and np.all(np.isfinite(obs))
    finally:
        venv.close()


def test_sb3_subproc_vec_env(bundle_path):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    path = str(bundle_path)
    make_one = lambda: gym.make("dreamenv:LatentCarRacing-v0", model=path, obs="z")
    venv = SubprocVecEnv([make_one] * 2)  # SB3's default start method: forkserver
    try:
        venv.reset()
        for a in ACTIONS[:3]:
            obs, *_ = venv.step(np.stack([a, a]))
        assert obs.shape == (2, 8) and np.all(np.isfinite(obs))
    finally:
        venv.close()


def _make_in_child(path, queue):
    try:
        gym.make("LatentCarRacing-v0", model=path)
        queue.put("created")
    except RuntimeError as e:
        queue.put(str(e))


@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")
def test_a_forked_worker_fails_fast_instead_of_deadlocking(bundle_path):
    ctx = multiprocessing.get_context("fork")  # this process has started JAX
    queue = ctx.Queue()
    child = ctx.Process(target=_make_in_child, args=(str(bundle_path), queue))
    child.start()
    child.join(60)
    assert not child.is_alive()
    assert "'spawn' or 'forkserver'" in queue.get(timeout=5)
