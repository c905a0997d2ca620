"""The Ray backend (train/ray_backend.py) on a local 2-CPU Ray instance: the pool's shards, resume and
failure reports, and the local evaluation's scores (tiny episodes)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from dreamenv.shards import FIELDS, list_shards, load_shard, read_manifest, shard_name
from train import collect
from train.collect import CollectConfig, episode_seeds, make_env
from train.evaluate import RealEvaluator, evaluate_real

STEPS = 40
KILL_DIR = "DREAMENV_TEST_KILL_DIR"  # set before Ray starts, so its workers see it
KILL_EPISODE, KILL_STEP = 1, 5
HINT = 'pip install -e ".[ray]"'


@pytest.fixture(scope="module")
def ray(tmp_path_factory):
    """One local Ray instance with 2 CPUs for the module; its workers can import this module."""
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in (KILL_DIR, "PYTHONPATH")}
    os.environ[KILL_DIR] = str(tmp_path_factory.mktemp("kills"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved["PYTHONPATH"]]))
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def _config(out, episodes=2, **fields):
    return CollectConfig(out=out, episodes=episodes, workers=2, max_steps=STEPS, **fields)


@pytest.fixture(scope="module")
def both(ray, tmp_path_factory):
    """The same 2 episodes collected by the pool and by Ray."""
    folders = {b: tmp_path_factory.mktemp(b) for b in ("pool", "ray")}
    for backend, out in folders.items():
        result = collect.run(_config(out, backend=backend), progress=False)
        assert not result.failures and result.collected == 2, result.failures
    return folders


def test_ray_collects_the_pools_shards(both):
    pool, ray_ = (list_shards(both[b]) for b in ("pool", "ray"))
    assert [p.name for p in ray_] == [p.name for p in pool] == [shard_name(0), shard_name(1)]
    for a, b in zip(pool, ray_):
        a, b = load_shard(a), load_shard(b)
        for key in FIELDS:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a["meta"] == b["meta"]
    assert read_manifest(both["ray"]) == read_manifest(both["pool"])


def test_ray_rerun_skips_finished_shards_and_redoes_a_corrupted_one(both, tmp_path):
    out = tmp_path / "rollouts"
    shutil.copytree(both["ray"], out)
    first, second = out / shard_name(0), out / shard_name(1)
    first.write_bytes(first.read_bytes()[:1000])
    mtime = second.stat().st_mtime_ns
    result = collect.run(_config(out, backend="ray"), progress=False)
    assert (result.collected, result.skipped, result.frames) == (1, 1, STEPS) and not result.failures
    assert second.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(load_shard(first)["obs"], load_shard(both["ray"] / shard_name(0))["obs"])
    assert len(read_manifest(out)["shards"]) == 2


def _first_frame_digest(episode: int) -> str:
    env = make_env(STEPS)
    obs, _ = env.reset(seed=episode_seeds(0, episode)[0])
    env.close()
    return hashlib.sha256(obs.tobytes()).hexdigest()


def _killer():
    """Drives straight, but kills its worker process KILL_STEP steps into episode KILL_EPISODE
    (recognised by its first frame), leaving a file per attempt in $DREAMENV_TEST_KILL_DIR."""
    target, countdown = _first_frame_digest(KILL_EPISODE), [None]

    def act(obs):
        if countdown[0] is None and hashlib.sha256(obs.tobytes()).hexdigest() == target:
            countdown[0] = KILL_STEP
        if countdown[0] is not None:
            countdown[0] -= 1
            if countdown[0] == 0:
                Path(os.environ[KILL_DIR], f"attempt_{os.getpid()}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return np.array([0.0, 0.5, 0.0])

    return act


def test_killed_task_is_retried_then_reported_and_the_others_land(ray, tmp_path):
    out = tmp_path / "rollouts"
    config = _config(out, episodes=3, backend="ray", max_retries=1, policy="test_ray_backend:_killer")
    result = collect.run(config, progress=False)
    assert sorted(result.failures) == [KILL_EPISODE], result.failures
    assert "worker process died, 1 retries spent" in result.failures[KILL_EPISODE]
    assert len(list(Path(os.environ[KILL_DIR]).glob("attempt_*"))) == 2  # the first try and one retry
    assert [p.name for p in list_shards(out)] == [shard_name(0), shard_name(2)]
    assert [e["file"] for e in read_manifest(out)["shards"]] == [shard_name(0), shard_name(2)]


@pytest.fixture(scope="module")
def agent(bundle_path, tmp_path_factory):
    """A random linear controller on the tiny bundle's 24-d [z, h]."""
    from train.controller_policy import save_controller

    rng = np.random.default_rng(0)
    params = {"W": rng.normal(0, 0.5, (24, 3)).astype(np.float32), "b": np.array([0, 0.5, -1], np.float32)}
    return save_controller(tmp_path_factory.mktemp("agents") / "controller.npz", params)


def test_ray_evaluation_scores_equal_the_local_ones(ray, agent, bundle_path):
    local = evaluate_real(agent, bundle_path, episodes=3, seed=4, workers=0, max_steps=STEPS)
    with RealEvaluator(bundle_path, workers=2, max_steps=STEPS, backend="ray") as evaluate:
        assert evaluate(agent, 3, seed=4) == local
        assert evaluate(agent, 1, seed=5) == local[1:2]  # workers keep their runner between calls
    assert len(set(local)) == 3


def test_transfer_scores_real_episodes_on_ray(ray, agent, bundle_path, tmp_path):
    from benchmarks.transfer import main

    result = main(["--agent", str(agent), "--model", str(bundle_path), "--smoke", "--temperatures", "1.0",
                   "--backend", "ray", "--out", str(tmp_path / "transfer.json")])
    assert result["real"]["returns"] == evaluate_real(agent, bundle_path, 1, 0, 0, max_steps=50)


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch, tmp_path, capsys, agent):
    from train.ray_backend import RayMissing

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "rollouts"
    with pytest.raises(RayMissing, match=rf"install it with: {HINT}".replace("[", r"\[").replace(".", r"\.")):
        collect.run(_config(out, backend="ray"), progress=False)
    assert collect.main(["--backend", "ray", "--out", str(out), "--episodes", "1"]) == 2
    assert HINT in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(RayMissing, match="install it with"):
        evaluate_real(agent, None, episodes=1, workers=0, backend="ray")
