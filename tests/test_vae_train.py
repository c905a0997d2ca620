"""VAE training on tiny synthetic shards: the rollout split, the resumable frame stream, the
checkpoints, loss falling, exact resume, and a NaN stopping the run with its last good state;
the typed config (validation, run_config.json round trip, changed settings refused on resume)."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

from dreamenv.shards import list_shards, shard_name, write_shard
from train import vae as train_vae
from train.split import split_rollouts
from train.trainstate import TrainCheckpoint
from train.config import load_config
from train.vae import FrameStream, VAEConfig, main, run
from train.vae_run import load_vae_run


def synthetic_episode(rng, steps: int, first: int = 0) -> dict:
    """A gray road square moving over green grass at a random place; frame i's top-left pixel
    holds `first + i` so tests can tell frames apart."""
    obs = np.empty((steps, 64, 64, 3), np.uint8)
    obs[:] = (100, 200, 100)
    for i in range(steps):
        y, x = rng.integers(0, 48, 2)
        obs[i, y : y + 16, x : x + 16] = (110, 110, 110)
        obs[i, 0, 0, 0] = first + i
    return {
        "obs": obs,
        "action": rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
        "reward": rng.normal(size=steps).astype(np.float32),
        "terminated": np.zeros(steps, bool),
        "truncated": np.arange(steps) == steps - 1,
    }


def make_shards(folder, lengths) -> list:
    rng = np.random.default_rng(0)
    first = 0
    for i, steps in enumerate(lengths):
        write_shard(folder / shard_name(i), synthetic_episode(rng, steps, first), {"episode": i})
        first += steps
    return list_shards(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollouts")
    make_shards(folder, [24, 24, 24, 24])
    return folder


def run_config(data, out, **extra) -> VAEConfig:
    return VAEConfig(**{"data": data, "out": out, "batch_size": 4, "eval_frames": 8, "holdout": 0.25,
                        "lr": 3e-3, **extra})


@pytest.mark.parametrize("field, value", [("steps", -1), ("batch_size", 0), ("lr", 0.0), ("holdout", 1.0),
                                          ("holdout", 0.0), ("eval_every", 0), ("memory_gb", -1.0)])
def test_bad_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"VAEConfig.{field} \\(--{field.replace('_', '-')}\\) = "):
        VAEConfig(**{field: value})


def test_cli_flags_build_the_config(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_vae, "run", lambda config: seen.append(config) or {"step": 0})
    assert main(["--data", str(tmp_path), "--batch-size", "8", "--kl-tolerance", "0.25", "--memory-gb", "1"]) == 0
    assert seen == [VAEConfig(data=tmp_path, batch_size=8, kl_tolerance=0.25, memory_gb=1.0)]
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    with pytest.raises(SystemExit):
        main(["--decoder", "paper"])  # the only decoder is the paper's: no such option


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="VAEConfig.data: folder .*nowhere does not exist"):
        run(VAEConfig(data=tmp_path / "nowhere", out=tmp_path / "run"))


def test_split_is_by_name_stable_and_disjoint(tmp_path):
    paths = [tmp_path / shard_name(i) for i in range(300)]
    train_paths, held = split_rollouts(paths, 0.1, seed=0)
    assert sorted(train_paths + held) == sorted(paths) and not set(train_paths) & set(held)
    assert 15 <= len(held) <= 45
    assert split_rollouts(list(reversed(paths)), 0.1, seed=0) == (train_paths, held)
    sub_train, sub_held = split_rollouts(paths[:150], 0.1, seed=0)  # adding rollouts moves none
    assert set(sub_held) == set(held) & set(paths[:150]) and set(sub_train) <= set(train_paths)
    assert split_rollouts(paths, 0.1, seed=1)[1] != held
    assert all(split_rollouts(paths[:2], f)[1] for f in (0.01, 0.9))  # both sides non-empty


@pytest.mark.parametrize("group_shards", [1, 2, 3])
def test_frame_stream_covers_each_epoch_and_resumes(tmp_path, group_shards):
    paths = make_shards(tmp_path, [5, 7, 4])
    stream = FrameStream(paths, batch_size=3, seed=0, group_shards=group_shards)
    ids = np.concatenate([stream.next_batch()[:, 0, 0, 0] for _ in range(32)])  # 96 frames = 6 epochs
    for epoch in range(6):
        assert sorted(ids[16 * epoch : 16 * (epoch + 1)]) == list(range(16))
    assert list(ids[:16]) != list(ids[16:32])  # reshuffled each epoch

    replay = FrameStream(paths, batch_size=3, seed=0, group_shards=group_shards)
    for _ in range(7):
        replay.next_batch()
    resumed = FrameStream(paths, batch_size=3, seed=0, group_shards=group_shards)
    resumed.load_state_dict(replay.state_dict())
    assert list(np.concatenate([resumed.next_batch()[:, 0, 0, 0] for _ in range(9)])) == list(ids[21:48])


def test_checkpoint_keeps_last_good(tmp_path):
    ckpt = TrainCheckpoint(tmp_path / "ckpt", keep=2)
    template = {"params": {"w": np.zeros((2, 3), np.float32)}, "step": 0, "data": {"epoch": 0}}
    for step in (1, 2, 3):
        ckpt.save({"params": {"w": np.full((2, 3), step, np.float32)}, "step": step, "data": {"epoch": step}})
    assert ckpt.steps() == [2, 3]
    assert ckpt.restore(template)["data"]["epoch"] == 3
    ckpt.path(3).write_bytes(ckpt.path(3).read_bytes()[:20])  # damaged newest file
    restored = ckpt.restore(template)
    assert restored["step"] == 2 and float(restored["params"]["w"][0, 0]) == 2.0
    with pytest.raises(ValueError, match="ckpt_000000002.msgpack.*shape"):
        ckpt.restore({**template, "params": {"w": np.zeros((3, 3), np.float32)}})
    assert TrainCheckpoint(tmp_path / "none").restore(template) is None


def test_train_loss_falls_and_writes_outputs(data, tmp_path):
    out = tmp_path / "run"
    config = run_config(data, out, steps=40, ckpt_every=20, eval_every=10)
    final = run(config)
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert metrics["train_rollouts"] == 3 and metrics["heldout_rollouts"] == 1 and metrics["heldout_frames"] == 8
    assert metrics["config"]["batch_size"] == 4 and metrics["config"]["data"] == str(data)
    assert all(h["images_per_second"] > 0 for h in history)
    assert [h["step"] for h in history] == [10, 20, 30, 40] and final["step"] == 40
    assert history[-1]["train"]["loss"] < 0.3 * history[0]["train"]["loss"]
    assert history[-1]["heldout_mse_per_pixel"] < 0.5 * history[0]["heldout_mse_per_pixel"]
    assert (out / "recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vae, params = load_vae_run(out)
    assert vae.latent_dim == 32
    last = serialization.msgpack_restore(TrainCheckpoint(out / "checkpoint").path(40).read_bytes())
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(last["params"])):
        np.testing.assert_array_equal(a, b)
    saved = load_config(out / "run_config.json", VAEConfig)  # typed values back, equal config
    assert saved == config and isinstance(saved.data, Path) and isinstance(saved.lr, float)
    raw = json.loads((out / "run_config.json").read_text())
    assert raw["holdout"] == 0.25 and raw["seed"] == 0  # what later stages read for the split

    # a rerun of the finished run trains nothing, keeps the history and rewrites the VAE
    (out / "vae.msgpack").unlink()
    (out / "metrics.json").unlink()  # lost records: the rerun evaluates afresh
    again = run(config)
    assert again["step"] == 40 and (out / "vae.msgpack").is_file()
    assert [h["step"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [40]
    assert again["heldout_mse_per_pixel"] == pytest.approx(final["heldout_mse_per_pixel"])


def test_resumed_run_continues_identically(data, tmp_path, monkeypatch):
    config = lambda out, **extra: run_config(data, tmp_path / out, **{"steps": 20, "ckpt_every": 5,
                                                                      "eval_every": 100, **extra})
    run(config("a"))
    batches = []

    def killed_at_13th_batch(frames):
        batches.append(1)
        if len(batches) == 13:
            raise KeyboardInterrupt
        return np.asarray(frames, np.float32) / 255.0

    with monkeypatch.context() as patch:
        patch.setattr(train_vae, "to_float", killed_at_13th_batch)
        with pytest.raises(KeyboardInterrupt):
            run(config("b"))
    assert TrainCheckpoint(tmp_path / "b" / "checkpoint").steps() == [5, 10]
    run(config("b"))  # the same command again: resumes from step 10
    a, b = ((tmp_path / name / "vae.msgpack").read_bytes() for name in ("a", "b"))
    assert a == b
    with pytest.raises(ValueError, match="batch_size: 4 -> 8; holdout: 0.25 -> 0.5"):
        run(config("b", batch_size=8, holdout=0.5))
    before = (tmp_path / "b" / "run_config.json").read_text()
    with pytest.raises(ValueError, match="kl_tolerance"):
        run(dataclasses.replace(config("b"), kl_tolerance=1.0))
    assert (tmp_path / "b" / "run_config.json").read_text() == before  # the refused run recorded nothing
    run(config("b", steps=25))  # settings that do not shape the state may change
    assert load_config(tmp_path / "b" / "run_config.json", VAEConfig).steps == 25


def test_nan_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = []

    def poisoned(frames):  # the 7th batch is NaN
        calls.append(1)
        x = np.asarray(frames, np.float32) / 255.0
        return x * np.nan if len(calls) == 7 else x

    monkeypatch.setattr(train_vae, "to_float", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="step 10.*step 5"):  # noticed at the save at step 10
        run(run_config(data, out, steps=20, ckpt_every=5, eval_every=100))
    ckpt = TrainCheckpoint(out / "checkpoint")
    assert ckpt.steps() == [5]
    state = serialization.msgpack_restore(ckpt.path(5).read_bytes())
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state["params"]))
