"""Real-data collection: shards, resuming, corruption, failures, policies (tiny rollouts)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from dreamenv.shards import FIELDS, ShardError, list_shards, load_shard, read_manifest, shard_name, write_shard
from train import collect
from train.collect import CollectConfig, main, make_env, rollout
from train.config import cli
from train.policies import POLICIES, AgentPolicy, CallablePolicy, episode_policy, make_policy

STEPS = 50
KILL_MARKER = "DREAMENV_TEST_KILL_MARKER"


def _collect(out, episodes=2, **config):
    return collect.run(CollectConfig(out=out, episodes=episodes, workers=2, max_steps=STEPS, **config), progress=False)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts")
    result = _collect(out)
    assert not result.failures, result.failures
    return out, result


def _copy(collected, tmp_path):
    out = tmp_path / "rollouts"
    shutil.copytree(collected[0], out)
    return out


def test_shards_have_promised_fields(collected):
    out, result = collected
    assert [p.name for p in list_shards(out)] == [shard_name(0), shard_name(1)]
    assert result.collected == 2 and result.frames == 2 * STEPS
    for episode, path in enumerate(list_shards(out)):
        data = load_shard(path)
        steps = len(data["action"])
        assert steps == STEPS
        for key, (dtype, shape) in FIELDS.items():
            assert data[key].dtype == dtype and data[key].shape == (steps, *shape), key
        assert data["truncated"][-1] and not data["truncated"][:-1].any()
        assert np.all(data["action"] >= [-1, 0, 0]) and np.all(data["action"] <= [1, 1, 1])
        assert data["meta"]["episode"] == episode and data["meta"]["policy"] == "mix"
        assert data["meta"]["seed"] == 0 and data["meta"]["params"]["choice"] in POLICIES
    entries = read_manifest(out)["shards"]
    assert [e["file"] for e in entries] == [shard_name(0), shard_name(1)]
    assert len({e["env_seed"] for e in entries}) == 2


def test_rerun_skips_finished_shards(collected, tmp_path):
    out = _copy(collected, tmp_path)
    mtimes = [p.stat().st_mtime_ns for p in list_shards(out)]
    result = _collect(out)
    assert (result.collected, result.skipped, result.frames) == (0, 2, 0)
    assert [p.stat().st_mtime_ns for p in list_shards(out)] == mtimes


def test_another_policy_adds_episodes_after_the_first(collected, tmp_path):
    out = _copy(collected, tmp_path)
    config = CollectConfig(out=out, episodes=1, first_episode=2, workers=1, max_steps=STEPS, policy="track-perturbed")
    result = collect.run(config, progress=False)
    assert not result.failures and result.collected == 1
    entries = read_manifest(out)["shards"]
    assert [(e["file"], e["policy"]) for e in entries] == [
        (shard_name(0), "mix"), (shard_name(1), "mix"), (shard_name(2), "track-perturbed")]
    assert load_shard(out / shard_name(2))["meta"]["params"]["perturbed_share"] >= 0.2


def test_perturbed_follower_overrides_a_share_of_segments():
    """Some segments carry drawn actions (whatever the state), the rest the follower's own."""
    env = make_env(300)
    policy = make_policy("track-perturbed")
    obs, _ = env.reset(seed=5)
    policy.reset(np.random.default_rng(3), env)
    overridden = 0
    for _ in range(300):
        action = policy.act(obs, env)
        if policy.perturb.override is not None:
            overridden += 1
            for i, value in enumerate(policy.perturb.override):
                if value is not None:
                    assert action[i] == pytest.approx(value, abs=1e-6)
        obs, *_ = env.step(action)
    env.close()
    assert 0 < overridden < 300


def test_rerun_with_other_settings_refuses_to_mix(collected, tmp_path):
    out = _copy(collected, tmp_path)
    result = _collect(out, seed=1)
    assert sorted(result.failures) == [0, 1]
    assert "was collected with" in result.failures[0]


def test_truncated_or_malformed_shard_names_the_file(collected, tmp_path):
    path = tmp_path / shard_name(0)
    raw = (collected[0] / shard_name(0)).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ShardError, match=re.escape(str(path))):
        load_shard(path)

    data = load_shard(collected[0] / shard_name(0))
    np.savez(path, **{**{k: data[k] for k in FIELDS}, "obs": data["obs"].astype(np.float32)})
    with pytest.raises(ShardError, match=rf"{re.escape(str(path))}.*'obs' has dtype float32"):
        load_shard(path)
    np.savez(path, **{k: data[k] for k in FIELDS if k != "reward"})
    with pytest.raises(ShardError, match=rf"{re.escape(str(path))}.*missing fields \['reward'\]"):
        load_shard(path)
    with pytest.raises(ShardError, match="shape"):
        write_shard(path, {**data, "reward": data["reward"][:-1]}, {})


def test_corrupt_shard_manifest_and_temp_file_are_redone(collected, tmp_path):
    out = _copy(collected, tmp_path)
    first = out / shard_name(0)
    first.write_bytes(first.read_bytes()[:1000])  # truncated shard
    (out / shard_name(1)).unlink()
    (out / f".{shard_name(1)}.tmp").write_bytes(b"partial")  # a killed write
    (out / "manifest.json").write_text('{"shards": [')  # corrupted manifest
    result = _collect(out)
    assert (result.collected, result.skipped) == (2, 0) and not result.failures
    assert [p.name for p in list_shards(out)] == [shard_name(0), shard_name(1)]
    assert not list(out.glob(".*.tmp"))
    assert len(read_manifest(out)["shards"]) == 2
    for name in (shard_name(0), shard_name(1)):  # same seeds -> same data
        np.testing.assert_array_equal(load_shard(out / name)["obs"], load_shard(collected[0] / name)["obs"])


def _drive_straight():
    return lambda obs: np.array([0.0, 0.5, 0.0])


def _killed_once():
    """An agent whose first act in the whole test run kills its worker process."""

    def act(obs):
        try:
            os.close(os.open(os.environ[KILL_MARKER], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return np.array([0.0, 0.5, 0.0])
        os.kill(os.getpid(), signal.SIGKILL)

    return act


def test_dead_worker_is_reported_and_others_finish(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KILL_MARKER, str(tmp_path / "killed"))
    out = tmp_path / "rollouts"
    code = main(["--episodes", "3", "--workers", "2", "--max-steps", "20", "--out", str(out), "--policy", "test_collect:_killed_once"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 episode(s) failed" in err and "killed by SIGKILL" in err
    assert len(list_shards(out)) == 2


def test_policies_act_in_space_and_deterministically():
    env = make_env(20)
    for name in [*POLICIES, "test_collect:_drive_straight"]:
        runs = [rollout(env, make_policy(name), 5, 6)[0]["action"] for _ in range(2)]
        np.testing.assert_array_equal(*runs, err_msg=name)
        assert runs[0].dtype == np.float32 and runs[0].shape == (20, 3)
        assert np.all(runs[0] >= [-1, 0, 0]) and np.all(runs[0] <= [1, 1, 1]), name
    env.close()


def test_policy_errors_are_clear():
    with pytest.raises(ValueError, match="unknown policy 'nope'.*'controller'"):
        make_policy("nope")
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        CallablePolicy(lambda obs: np.zeros(2)).act(None, None)


@pytest.fixture(scope="module")
def controller_file(bundle_path, tmp_path_factory):
    """A random linear controller on the tiny bundle's [z, h] (an agent file like train.controller's)."""
    import gymnasium as gym

    from train.controller_policy import save_controller

    dim = gym.make("LatentCarRacing-v0", model=bundle_path).observation_space.shape[0]
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(0, 0.5, (dim, 3)).astype(np.float32), "b": np.array([0, 0.5, -1], np.float32)}
    return save_controller(tmp_path_factory.mktemp("agents") / "controller.npz", params)


def test_agent_policy_drives_as_on_the_latent_env_outside_perturbed_segments(controller_file, bundle_path):
    """Unperturbed, an agent file collects exactly what it does on LatentCarRacing-v0."""
    import gymnasium as gym

    from train.evaluate import load_policy

    latent = gym.make("LatentCarRacing-v0", model=bundle_path, max_episode_steps=40)
    agent = load_policy(controller_file, latent.unwrapped.model)
    obs, _ = latent.reset(seed=7)
    expected = []
    for _ in range(40):
        expected.append(np.clip(agent.act(obs[None])[0], [-1, 0, 0], [1, 1, 1]))
        obs, *_ = latent.step(expected[-1])
    policy = make_policy(str(controller_file), model=str(bundle_path))
    assert isinstance(policy, AgentPolicy)
    env = make_env(40)
    obs, _ = env.reset(seed=7)
    policy.reset(np.random.default_rng(0), env)
    policy.perturb.share = 0.0
    taken = []
    for _ in range(40):
        taken.append(policy.act(obs, env))
        obs, *_ = env.step(taken[-1])
    np.testing.assert_allclose(taken, expected, atol=1e-5)


def test_agent_rollouts_are_added_and_recorded(collected, controller_file, bundle_path, tmp_path):
    out = _copy(collected, tmp_path)
    config = CollectConfig(out=out, episodes=1, first_episode=2, workers=1, max_steps=STEPS,
                           policy=str(controller_file), model=bundle_path)
    result = collect.run(config, progress=False)
    assert not result.failures, result.failures
    meta = load_shard(out / shard_name(2))["meta"]
    assert meta["policy"] == str(controller_file) and meta["model"] == str(bundle_path)
    assert 0.1 <= meta["params"]["perturbed_share"] <= 0.3
    assert collect.run(config, progress=False).skipped == 1


def test_agent_policy_flags_are_checked(controller_file, tmp_path):
    out = tmp_path / "rollouts"
    missing = CollectConfig(policy=str(tmp_path / "missing.zip"), out=out)  # may not exist yet when built
    with pytest.raises(ValueError, match=r"CollectConfig\.policy: agent file .*missing\.zip does not exist"):
        collect.run(missing)
    with pytest.raises(ValueError, match=r"CollectConfig\.model: folder .* does not exist"):
        collect.run(CollectConfig(policy=str(controller_file), model=tmp_path / "no_bundle", out=out))
    with pytest.raises(ValueError, match=r"CollectConfig\.model \(--model\).*agent file"):
        CollectConfig(policy="ou", model=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--policy", "ou", "--model", str(controller_file), "--out", str(out)])
    assert exit_.value.code == 2
    assert not out.exists()


@pytest.mark.parametrize("fields, name", [
    (dict(policy="nope"), "policy"),
    (dict(episodes=-1), "episodes"),
    (dict(episodes=0), "episodes"),
    (dict(max_steps=0), "max_steps"),
    (dict(workers=0), "workers"),
    (dict(first_episode=-1), "first_episode"),
])
def test_bad_config_fails_naming_the_field_before_anything_is_written(fields, name, tmp_path, capsys):
    out = tmp_path / "rollouts"
    with pytest.raises(ValueError, match=rf"CollectConfig\.{name} \(--{name.replace('_', '-')}\)") as error:
        CollectConfig(out=out, **fields)
    if name == "policy":
        assert all(known in str(error.value) for known in POLICIES), error.value
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in fields.items()]
    with pytest.raises(SystemExit) as exit_:
        main([*flags, "--out", str(out)])
    assert exit_.value.code == 2 and f"CollectConfig.{name}" in capsys.readouterr().err
    assert not out.exists()


def test_config_fields_and_cli_flags_match():
    config = cli(CollectConfig, ["--episodes", "4", "--first-episode", "3", "--workers", "2", "--seed", "7",
                                         "--out", "data/x", "--policy", "track", "--max-steps", "50"])
    assert config == CollectConfig(episodes=4, first_episode=3, workers=2, seed=7, out=Path("data/x"),
                                   policy="track", max_steps=50)
    assert config.next_episode == 7
    assert cli(CollectConfig, ["--policy", "runs/it1/agent.zip", "--model", "b"]).model == Path("b")
    assert dataclasses.replace(config, workers=None).workers is None
    assert all(name in inspect.getsource(CollectConfig) for name in POLICIES)  # --policy's help lists them


def test_episode_policy_names_the_driver_of_an_episode():
    assert episode_policy({"policy": "mix", "params": {"choice": "track", "noise": 0.1}}) == "track"
    assert episode_policy({"policy": "runs/it1/agent.zip", "params": {"perturbed_share": 0.2}}) == "agent"
    assert episode_policy({"policy": "ou", "params": {"theta": 0.1}}) == "ou"
    assert episode_policy({"episode": 3}) == "unknown"
