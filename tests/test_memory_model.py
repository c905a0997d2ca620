"""Encode + MDN-RNN training on tiny synthetic rollouts: shapes, done target, resume, bundle."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import serialization

from dreamenv.checkpoint import load_bundle
from dreamenv.mdnrnn import MDNRNN
from dreamenv.shards import shard_name, write_shard
from train import encode, mdnrnn, vae
from train.latents import FIELDS, LatentError, LatentSet, load_latents
from train.trainstate import TrainCheckpoint

LENGTHS = [70, 64, 60, 66]
TINY = dict(hidden_size=16, mixtures=2, batch_size=8, seq_len=8)


def synthetic_episode(rng, steps, terminal):
    """A dark square drifting across a grey field; `terminal` ends it with terminated=True."""
    obs = np.full((steps, 64, 64, 3), 110, np.uint8)
    for t in range(steps):
        x = (3 * t) % 56
        obs[t, 20:28, x : x + 8] = 20
    episode = dict(
        obs=obs,
        action=rng.uniform([-1, 0, 0], [1, 1, 1], (steps, 3)).astype(np.float32),
        reward=rng.normal(size=steps).astype(np.float32),
        terminated=np.arange(steps) == steps - 1 if terminal else np.zeros(steps, bool),
        truncated=np.zeros(steps, bool) if terminal else np.arange(steps) == steps - 1,
    )
    return episode


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    (root / "rollouts").mkdir()
    for i, steps in enumerate(LENGTHS):
        write_shard(root / "rollouts" / shard_name(i), synthetic_episode(rng, steps, terminal=i % 2 == 0), {})
    vae.main(["--data", str(root / "rollouts"), "--out", str(root / "vae"), "--steps", "4",
              "--batch-size", "8", "--latent-dim", "8", "--eval-every", "4", "--eval-frames", "16",
              "--holdout", "0.25"])
    encode.main(["--data", str(root / "rollouts"), "--vae", str(root / "vae"), "--out", str(root / "latents")])
    return root


@pytest.fixture(scope="module")
def driven(tmp_path_factory, encoded):
    """`encoded`'s VAE over six rollouts driven by named policies: two of them privileged."""
    root = tmp_path_factory.mktemp("driven")
    rng = np.random.default_rng(1)
    policies = ["track", "ou", "track-perturbed", "controller", "agent", "ou"]
    for i, policy in enumerate(policies):
        meta = {"policy": "runs/a/agent.zip"} if policy == "agent" else {"policy": "mix", "params": {"choice": policy}}
        write_shard(root / "rollouts" / shard_name(i), synthetic_episode(rng, 40, terminal=False), meta)
    (root / "vae").symlink_to(encoded / "vae")
    encode.main(["--data", str(root / "rollouts"), "--vae", str(root / "vae"), "--out", str(root / "latents")])
    return root, policies


def mdn_args(root, out, steps, **changes) -> mdnrnn.MDNRNNConfig:
    base = dict(latents=root / "latents", vae=root / "vae", out=out, steps=steps, eval_every=20, ckpt_every=10)
    return mdnrnn.MDNRNNConfig(**{**base, **TINY, **changes})


def test_encoded_latents_have_promised_shapes_and_done(encoded):
    for i, steps in enumerate(LENGTHS):
        data = load_latents(encoded / "latents" / shard_name(i))
        assert data["mu"].shape == data["logvar"].shape == (steps, 8)
        assert data["action"].shape == (steps, 3) and data["reward"].shape == (steps,)
        # done marks the true terminal step only, never a time-limit truncation
        expected = np.arange(steps) == steps - 1 if i % 2 == 0 else np.zeros(steps, bool)
        np.testing.assert_array_equal(data["done"], expected)


def test_rerun_skips_and_other_vae_is_detected(encoded, capsys):
    encode.main(["--data", str(encoded / "rollouts"), "--vae", str(encoded / "vae"), "--out", str(encoded / "latents")])
    assert f"skipped {len(LENGTHS)} already encoded" in capsys.readouterr().out
    with pytest.raises(LatentError, match="encoded by VAE .* expected deadbeef"):
        LatentSet.from_files([encoded / "latents" / shard_name(0)], fingerprint="deadbeef")


def test_training_loss_falls_and_bundle_reproduces_training(encoded, tmp_path):
    args = mdn_args(encoded, tmp_path / "m", steps=200)
    mdnrnn.train(args)
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["history"]
    assert history[-1]["train"]["nll_per_dim"] < history[0]["train"]["nll_per_dim"] - 0.2
    held = history[-1]["heldout"]
    for key in ("nll_per_step", "mse_mixture_mean", "mse_persistence", "mse_ratio_to_persistence",
                "reward_mae", "reward_corr", "done_auc", "component_usage"):
        assert key in held
    np.testing.assert_allclose(sum(held["component_usage"]), 1.0, atol=1e-3)

    bundle = load_bundle(tmp_path / "m" / "bundle")
    assert bundle.mdnrnn == MDNRNN(latent_dim=8, hidden_size=16, num_mixtures=2)
    assert bundle.metadata["mdnrnn_metrics"] == mdnrnn.scalars(held)
    ckpt = TrainCheckpoint(tmp_path / "m" / "checkpoint")
    state = serialization.msgpack_restore(ckpt.path(ckpt.steps()[-1]).read_bytes())
    z = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)
    a = np.zeros((2, 5, 3), np.float32)
    run = lambda p: bundle.mdnrnn.apply(p, bundle.mdnrnn.initial_carry(2), z, a)[1]["mu"]
    np.testing.assert_array_equal(run(bundle.mdnrnn_params), run(state["params"]))
    # start latents: the first encoded frame of training rollouts only
    assert bundle.start_latents.shape[1] == 8 and 1 <= len(bundle.start_latents) <= len(LENGTHS)
    train_mu = [load_latents(p)["mu"][0] for p in sorted((encoded / "latents").glob("*.npz"))]
    for start in bundle.start_latents:
        assert any(np.array_equal(start, m) for m in train_mu)


def test_killed_and_resumed_run_continues_identically(encoded, tmp_path, monkeypatch):
    mdnrnn.train(mdn_args(encoded, tmp_path / "full", steps=40))
    save = TrainCheckpoint.save

    def save_then_die(self, state):
        save(self, state)
        if int(state["step"]) == 20:
            raise KeyboardInterrupt  # killed right after the step-20 checkpoint

    monkeypatch.setattr(TrainCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mdnrnn.train(mdn_args(encoded, tmp_path / "resumed", steps=40))
    monkeypatch.setattr(TrainCheckpoint, "save", save)
    mdnrnn.train(mdn_args(encoded, tmp_path / "resumed", steps=40))
    full, resumed = (load_bundle(tmp_path / d / "bundle").mdnrnn_params for d in ("full", "resumed"))
    for x, y in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_init_fine_tunes_from_a_bundle_and_refuses_a_mismatch(encoded, tmp_path):
    mdnrnn.train(mdn_args(encoded, tmp_path / "base", steps=20))
    base = tmp_path / "base" / "bundle"
    tuned = mdn_args(encoded, tmp_path / "tuned", steps=1, init=base, lr=1e-9, lr_end=1e-9)  # barely moves
    mdnrnn.train(tuned)
    start, after = (load_bundle(p).mdnrnn_params for p in (base, tmp_path / "tuned" / "bundle"))
    for x, y in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    other = mdn_args(encoded, tmp_path / "other", steps=1, init=base, mixtures=3)
    with pytest.raises(SystemExit, match="--init .*num_mixtures.*pass matching"):
        mdnrnn.train(other)


def test_bad_values_and_missing_folders_fail_before_any_work(encoded, tmp_path):
    with pytest.raises(ValueError, match=r"MDNRNNConfig.steps \(--steps\) = -1: expected >= 1"):
        mdn_args(encoded, tmp_path / "m", steps=-1)
    with pytest.raises(ValueError, match=r"MDNRNNConfig.latents: folder .*nowhere does not exist"):
        mdnrnn.train(mdn_args(encoded, tmp_path / "m", steps=1, latents=tmp_path / "nowhere"))
    assert not (tmp_path / "m").exists()


def test_run_config_is_saved_with_real_types(encoded, tmp_path):
    from train.config import load_config

    config = mdn_args(encoded, tmp_path / "m", steps=2, start_fraction=0.5)
    mdnrnn.train(config)
    assert load_config(tmp_path / "m" / "run_config.json", mdnrnn.MDNRNNConfig) == config


def test_finished_run_keeps_its_bundle_when_rerun(encoded, tmp_path):
    args = mdn_args(encoded, tmp_path / "m", steps=10)
    first = mdnrnn.train(args)
    config = tmp_path / "m" / "bundle" / "config.json"
    mtime = config.stat().st_mtime_ns
    assert json.dumps(mdnrnn.train(args)) == json.dumps(first)  # (NaN != NaN: compare as text)
    assert config.stat().st_mtime_ns == mtime


def test_reward_probe_reports_the_head_and_each_probe(encoded, tmp_path):
    """benchmarks.reward_probe on a tiny trained model: the head's held-out correlation matches the
    model's own evaluation (which also counts each rollout's last step), and every probe reports one."""
    from benchmarks import reward_probe

    args = mdn_args(encoded, tmp_path / "mdn", 20)
    metrics = mdnrnn.train(args)
    bundle = tmp_path / "mdn" / "bundle"
    result = reward_probe.main(["--model", str(bundle), "--latents", str(encoded / "latents"), "--vae",
                                str(encoded / "vae"), "--train-rollouts", "2", "--mlp-steps", "20",
                                "--out", str(tmp_path / "probe.json")])
    assert json.loads((tmp_path / "probe.json").read_text()) == result
    head, *probes = result["rows"]
    assert head["probe"] == "the reward head"
    assert head["held_out_corr"] == pytest.approx(metrics["heldout"]["reward_corr"], abs=0.05)
    assert [(r["probe"], r["features"]) for r in probes] == [
        (p, f) for f in reward_probe.FEATURES for p in ("ridge", "MLP 256-256")]
    assert all(-1.0 <= r["held_out_corr"] <= 1.0 for r in probes)


def test_encode_records_policies_and_training_leaves_privileged_ones_out(driven, tmp_path):
    root, policies = driven
    recorded = [load_latents(root / "latents" / shard_name(i))["policy"] for i in range(len(policies))]
    assert recorded == policies
    mdnrnn.train(mdn_args(root, tmp_path / "m", steps=2))
    meta = load_bundle(tmp_path / "m" / "bundle").metadata
    train_policies = meta["train_policies"]
    assert "track" not in train_policies and "track-perturbed" not in train_policies
    held = meta["heldout_rollouts"]
    assert meta["train_rollouts"] == sum(train_policies.values()) >= 1
    assert meta["train_rollouts"] + held + meta["left_out_rollouts"] == len(policies)
    assert meta["left_out_rollouts"] >= 1  # at least one privileged rollout is on the train side

    mdnrnn.train(mdn_args(root, tmp_path / "p", steps=2, privileged_data=True))
    meta = load_bundle(tmp_path / "p" / "bundle").metadata
    assert meta["left_out_rollouts"] == 0 and meta["train_rollouts"] + meta["heldout_rollouts"] == len(policies)


def test_only_privileged_training_data_is_a_clear_error(encoded, tmp_path):
    root = tmp_path / "track_only"
    (root / "rollouts").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(4):
        write_shard(root / "rollouts" / shard_name(i), synthetic_episode(rng, 30, terminal=False), {"policy": "track"})
    (root / "vae").symlink_to(encoded / "vae")
    encode.main(["--data", str(root / "rollouts"), "--vae", str(root / "vae"), "--out", str(root / "latents")])
    with pytest.raises(SystemExit, match="privileged policy .*--privileged-data"):
        mdnrnn.train(mdn_args(root, tmp_path / "m", steps=2))
    mdnrnn.train(mdn_args(root, tmp_path / "m", steps=2, privileged_data=True))
    meta = load_bundle(tmp_path / "m" / "bundle").metadata
    assert meta["train_policies"] == {"track": meta["train_rollouts"]} and meta["left_out_rollouts"] == 0


def test_latents_without_a_policy_are_re_encoded_not_trained_on(encoded, tmp_path, capsys):
    old = tmp_path / "latents"
    old.mkdir()
    for i in range(len(LENGTHS)):  # the format before policies were recorded
        data = load_latents(encoded / "latents" / shard_name(i))
        np.savez(old / shard_name(i), **{k: data[k] for k in FIELDS}, vae=np.array("x"))
    with pytest.raises(LatentError, match="no driving policy recorded.*train.encode"):
        load_latents(old / shard_name(0))
    encode.main(["--data", str(encoded / "rollouts"), "--vae", str(encoded / "vae"), "--out", str(old)])
    assert f"encoded {len(LENGTHS)} rollouts ({len(LENGTHS)} re-encoded" in capsys.readouterr().out
    assert load_latents(old / shard_name(0))["policy"] == "unknown"
