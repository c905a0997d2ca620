"""Encode + MDN-RNN training on tiny synthetic rollouts: shapes, done target, resume, bundle."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import serialization

from dreamenv.checkpoint import load_bundle
from dreamenv.mdnrnn import MDNRNN, samples_only
from dreamenv.shards import shard_name, write_shard
from train import encode, mdnrnn, vae
from train.latents import LatentError, LatentSet, load_latents
from train.trainstate import TrainCheckpoint

LENGTHS = [70, 64, 60, 66]
TINY = ["--hidden-size", "16", "--mixtures", "2", "--batch-size", "8", "--seq-len", "8"]


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


def mdn_args(root, out, steps):
    return mdnrnn.parse_args(["--latents", str(root / "latents"), "--vae", str(root / "vae"),
                              "--out", str(out), "--steps", str(steps), "--eval-every", "20",
                              "--ckpt-every", "10", *TINY])


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
    assert bundle.metadata["mdnrnn_metrics"] == held
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
    tuned = mdn_args(encoded, tmp_path / "tuned", steps=1)
    tuned.init, tuned.lr, tuned.lr_end = base, 1e-9, 1e-9  # one step that barely moves: starts at base
    mdnrnn.train(tuned)
    start, after = (load_bundle(p).mdnrnn_params for p in (base, tmp_path / "tuned" / "bundle"))
    for x, y in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    other = mdn_args(encoded, tmp_path / "other", steps=1)
    other.init, other.mixtures = base, 3
    with pytest.raises(SystemExit, match="--init .*num_mixtures.*pass matching"):
        mdnrnn.train(other)


def grown(encoded, tmp_path, steps=1, **options):
    """A 20-step base, then `steps` more from it (--init) with `options` (e.g. sample_flag=True); one
    step at lr 1e-9 barely moves. -> (base bundle, grown bundle)"""
    mdnrnn.train(mdn_args(encoded, tmp_path / "base", steps=20))
    tuned = mdn_args(encoded, tmp_path / "tuned", steps=steps)
    tuned.init = tmp_path / "base" / "bundle"
    if steps == 1:
        tuned.lr, tuned.lr_end = 1e-9, 1e-9
    for k, v in options.items():
        setattr(tuned, k, v)
    mdnrnn.train(tuned)
    return tuple(load_bundle(tmp_path / d / "bundle") for d in ("base", "tuned"))


def latents_and_actions():
    """Random inputs for two 5-step rollouts: z [2, 5, 8], a [2, 5, 3]."""
    rng = np.random.default_rng(1)
    return rng.normal(size=(2, 5, 8)).astype(np.float32), rng.uniform(size=(2, 5, 3)).astype(np.float32)


def test_init_without_the_sample_flag_gains_it_as_the_same_function(encoded, tmp_path):
    base, flagged = grown(encoded, tmp_path, sample_flag=True)
    assert flagged.mdnrnn.sample_flag and not base.mdnrnn.sample_flag
    z, a = latents_and_actions()
    want = base.mdnrnn.apply(base.mdnrnn_params, base.mdnrnn.initial_carry(2), z, a)[1]["mu"]
    for flag in (0.0, 1.0):
        got = flagged.mdnrnn.apply(flagged.mdnrnn_params, flagged.mdnrnn.initial_carry(2), z, a, flag)[1]["mu"]
        np.testing.assert_allclose(got, want, atol=1e-4)
    history = json.loads((tmp_path / "tuned" / "metrics.json").read_text())["history"]
    assert "mse_ratio_to_persistence" in history[-1]["heldout_as_sampled"]


def test_init_without_the_reward_input_gains_it_as_the_same_function_and_trains_it(encoded, tmp_path):
    base, reads = grown(encoded, tmp_path, reward_input=True)
    assert reads.mdnrnn.reward_input and not base.mdnrnn.reward_input
    z, a = latents_and_actions()
    r = np.random.default_rng(3).normal(size=(2, 5)).astype(np.float32)
    want = base.mdnrnn.apply(base.mdnrnn_params, base.mdnrnn.initial_carry(2), z, a)[1]
    got = reads.mdnrnn.apply(reads.mdnrnn_params, reads.mdnrnn.initial_carry(2), z, a, 0.0, r)[1]
    for k in ("mu", "reward"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-4)
    trained = mdn_args(encoded, tmp_path / "trained", steps=20)
    trained.init, trained.reward_input = tmp_path / "tuned" / "bundle", True
    mdnrnn.train(trained)
    history = json.loads((tmp_path / "trained" / "metrics.json").read_text())["history"]
    assert history[-1]["train"]["reward_event_bce"] > 0 and np.isfinite(history[-1]["heldout"]["reward_corr"])
    again = mdn_args(encoded, tmp_path / "again", steps=1)
    again.init = tmp_path / "trained" / "bundle"  # a model that reads rewards cannot lose the input
    with pytest.raises(SystemExit, match="pass --reward-input"):
        mdnrnn.train(again)


def test_freeze_sampled_trains_the_mean_path_and_keeps_the_model_on_samples(encoded, tmp_path):
    mdnrnn.train(mdn_args(encoded, tmp_path / "base", steps=20))
    tuned = mdn_args(encoded, tmp_path / "tuned", steps=20)
    with pytest.raises(SystemExit, match="pass --sample-flag and --init BUNDLE too"):
        mdnrnn.train(mdnrnn.parse_args([*map(str, ["--latents", encoded / "latents", "--out", tmp_path / "x",
                                                    "--freeze-sampled", "--sample-flag"])]))
    tuned.init, tuned.sample_flag, tuned.freeze_sampled = tmp_path / "base" / "bundle", True, True
    mdnrnn.train(tuned)
    base, frozen = (load_bundle(tmp_path / d / "bundle") for d in ("base", "tuned"))
    cell = frozen.mdnrnn_params["params"]["cell"]
    assert all(np.abs(cell[layer]["mean_kernel"]).max() > 1e-4 for layer in ("lstm", "head"))  # the path trained
    for x, y in zip(jax.tree_util.tree_leaves(base.mdnrnn_params),
                    jax.tree_util.tree_leaves(samples_only(frozen.mdnrnn_params)), strict=True):
        np.testing.assert_array_equal(x, y)  # everything else is the base's, bit for bit
    z = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)
    a = np.random.default_rng(2).uniform(size=(2, 5, 3)).astype(np.float32)
    want = base.mdnrnn.apply(base.mdnrnn_params, base.mdnrnn.initial_carry(2), z, a)[1]["mu"]
    run = lambda flag: frozen.mdnrnn.apply(frozen.mdnrnn_params, frozen.mdnrnn.initial_carry(2), z, a, flag)[1]["mu"]
    np.testing.assert_array_equal(run(1.0), want)
    assert float(np.abs(np.asarray(run(0.0)) - np.asarray(want)).max()) > 1e-5


def test_a_frozen_sample_path_gains_the_reward_input_without_reading_it(encoded, tmp_path):
    """--freeze-sampled --reward-input (the shipped recipe): the mean path learns to read rewards; on
    samples, whatever the rewards, the model is the base's, and the dream's two levels are one."""
    base, reads = grown(encoded, tmp_path, steps=20, sample_flag=True, freeze_sampled=True, reward_input=True)
    z, a = latents_and_actions()
    r = np.where(np.random.default_rng(2).uniform(size=(2, 5)) < 0.3, 3.2, -0.1).astype(np.float32)
    want = base.mdnrnn.apply(base.mdnrnn_params, base.mdnrnn.initial_carry(2), z, a)[1]
    run = lambda flag, rewards: reads.mdnrnn.apply(reads.mdnrnn_params, reads.mdnrnn.initial_carry(2), z, a,
                                                   flag, rewards)[1]
    for rewards in (r, np.zeros_like(r)):
        got = run(1.0, rewards)
        for k in ("mu", "reward"):
            np.testing.assert_allclose(got[k], want[k], atol=1e-6)
        np.testing.assert_allclose(got["reward_high"], got["reward_low"], atol=1e-6)
    assert float(np.abs(np.asarray(run(0.0, r)["reward"]) - np.asarray(run(0.0, 0 * r)["reward"])).max()) > 1e-5


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
