"""The fidelity benchmark on a tiny random bundle and tiny shards written here."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from benchmarks.fidelity import run
from benchmarks.fidelity_data import choose_starts
from benchmarks.image_metrics import ssim
from conftest import tiny_bundle, write_shards
from dreamenv.mdnrnn import head_layout
from dreamenv.shards import ShardError

STEPS = 12  # conftest.write_shards's default rollout length
SIZE = dict(horizon=6, starts=3, samples=2)  # the smoke size: every run shares one compile


def zero_mean_bundle(constant_latents=False):
    """A bundle whose MDN-RNN's component means are all 0 (zero mean-head weights); optionally an
    encoder whose latent is 0 for every frame (zero mean kernel; its bias starts at 0)."""
    bundle = tiny_bundle()
    mdn = jax.tree_util.tree_map(np.array, bundle.mdnrnn_params)
    out, mu = mdn["params"]["cell"]["head"]["out"], head_layout(bundle.mdnrnn.num_mixtures, bundle.mdnrnn.latent_dim)["mu"]
    out["kernel"][:, mu], out["bias"][mu] = 0.0, 0.0
    vae = jax.tree_util.tree_map(np.array, bundle.vae_params)
    if constant_latents:
        vae["params"]["encoder"]["mu"]["kernel"][:] = 0.0
    return dataclasses.replace(bundle, mdnrnn_params=mdn, vae_params=vae)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "rollouts")


def test_smoke_writes_the_promised_json_and_figures(tmp_path, shards, bundle_path):
    result = run(bundle_path, shards, out=tmp_path, smoke=True)
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved == result
    promised = {"settings", "data", "horizons", "latent", "frames", "reward", "done", "headline", "files", "seconds"}
    assert promised <= set(saved)
    curves = {"open_loop_mean", "open_loop_sampled", "teacher_forced", "persistence", "data_mean"}
    assert set(saved["latent"]["mse"]) == set(saved["latent"]["mse_stderr"]) == curves
    assert set(saved["latent"]["nll"]) == {"teacher_forced", "open_loop_mean"}
    assert saved["settings"] == {**saved["settings"], **SIZE}
    assert len(saved["latent"]["mse"]["open_loop_mean"]) == 6 == len(saved["horizons"])
    assert saved["frames"]["horizons"] == [1, 2, 5, 6]
    assert set(saved["frames"]["ssim"]) >= {"dream_mean", "persistence", "data_mean", "vae_reconstruction"}
    assert set(saved["reward"]["summary"]) == {"teacher_forced", "open_loop_mean", "open_loop_sampled"}
    assert saved["done"]["terminal_steps"] >= 0 and saved["done"]["reliability"]
    assert set(saved["headline"]) == {"h1"}
    for name in saved["files"].values():
        assert (tmp_path / name).stat().st_size > 0
    # h = 1 open-loop is the teacher-forced prediction from the same warmed-up state
    mse, nll = saved["latent"]["mse"], saved["latent"]["nll"]
    assert mse["open_loop_mean"][0] == pytest.approx(mse["teacher_forced"][0], rel=1e-5)
    assert nll["open_loop_mean"][0] == pytest.approx(nll["teacher_forced"][0], rel=1e-5)


def test_a_model_whose_means_are_zero_dreams_zero_whether_sampled_or_not(tmp_path, shards):
    """All K means at 0: at τ = 0 the sampled dream (the likeliest component's mean) is the
    mixture-mean dream, and both predict 0 at every horizon, as teacher-forced does."""
    result = run(zero_mean_bundle(), shards, temperature=0.0, out=tmp_path, **SIZE)
    mse = result["latent"]["mse"]
    assert mse["persistence"][-1] > 0
    np.testing.assert_allclose(mse["open_loop_sampled"], mse["open_loop_mean"], rtol=1e-5)
    assert mse["teacher_forced"][0] == pytest.approx(mse["open_loop_mean"][0], rel=1e-5)
    assert result["latent"]["one_step_every_step"]["steps"] == 3 * (STEPS - 1)


def test_constant_latents_and_a_zero_mean_model_give_zero_latent_error(tmp_path, shards):
    result = run(zero_mean_bundle(constant_latents=True), shards, temperature=0.0, out=tmp_path, **SIZE)
    for curve in result["latent"]["mse"].values():
        assert max(curve) < 1e-10
    ssim_ = result["frames"]["ssim"]
    assert ssim_["dream_mean"] == pytest.approx(ssim_["vae_reconstruction"])


def test_ssim_of_identical_images_is_one_and_of_flat_images_is_the_luminance_term():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(ssim(a, a), 1.0, rtol=1e-6)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert (np.asarray(ssim(a, noisy)) < 0.9).all()
    np.testing.assert_allclose(ssim(a, noisy), ssim(noisy, a), rtol=1e-6)
    x, y = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert float(ssim(x, y)[0]) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1), rel=1e-5)


def test_ssim_matches_a_float64_reference():
    """Wang et al.'s formula written out with scipy's 2-D correlation, per channel, valid region."""
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def reference(x, y):
        f = lambda im: signal.correlate2d(im, w, mode="valid")
        mx, my = f(x), f(y)
        vx, vy, cov = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        return (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()

    expected = [np.mean([reference(x[..., c].astype(float), y[..., c].astype(float)) for c in range(3)])
                for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-4)


def test_starts_are_deterministic_spread_and_fit_the_horizon():
    lengths = [30, 5, 50, 40]
    used, rollout, t = choose_starts(lengths, horizon=10, starts=7, seed=3)
    again = choose_starts(lengths, horizon=10, starts=7, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((used, rollout, t), again))
    assert 1 not in used and len(set(used)) == 3 and set(rollout) == {0, 1, 2}
    assert all(s + 10 <= lengths[used[r]] - 1 for r, s in zip(rollout, t))


def test_rollouts_too_short_for_a_start_still_count_in_the_per_step_metrics(tmp_path, bundle_path):
    # rollout 0 (5 steps, terminated) cannot hold a 6-step window; its steps and its end still count
    folder = write_shards(tmp_path / "mixed", lengths=(5, 12, 12), policies=("ou", "agents/a.zip", "ou"))
    result = run(bundle_path, folder, out=tmp_path / "o", smoke=True)
    assert result["data"]["rollouts"] == ["rollout_000000.npz", "rollout_000001.npz", "rollout_000002.npz"]
    assert result["data"]["steps_encoded"] == 29 == result["done"]["steps"]
    assert result["done"]["terminal_steps"] == 1
    assert result["latent"]["one_step_every_step"]["steps"] == 26
    assert all(name != "rollout_000000.npz" for name, _ in result["data"]["starts"])
    done = result["done"]
    assert done["terminal_steps_predicted"] + done["false_terminations"] == sum(
        b["count"] for b in done["reliability"] if b["lo"] >= 0.5)
    ou, agent = result["by_policy"]["ou"], result["by_policy"]["agent"]
    assert set(result["by_policy"]) == {"ou", "agent"}
    assert (ou["rollouts"], ou["steps"], ou["terminal_steps"], agent["steps"], agent["terminal_steps"]) == (2, 17, 1, 12, 0)
    assert agent["done_auc"] is None and 0.0 <= ou["done_auc"] <= 1.0


def test_bad_input_is_named(tmp_path, bundle_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        run(bundle_path, tmp_path / "empty", out=tmp_path / "o")
    short = write_shards(tmp_path / "short", lengths=(6, 9))
    with pytest.raises(ValueError, match=r"horizon 20 .*rollout_000001\.npz with 9"):
        run(bundle_path, short, horizon=20, out=tmp_path / "o")
    latents = tmp_path / "latents"
    latents.mkdir()
    np.savez(latents / "rollout_000000.npz", mu=np.zeros((9, 8)), reward=np.zeros(9))
    with pytest.raises(ShardError, match="rollout_000000.npz.*not of encoded latents"):
        run(bundle_path, latents, horizon=4, out=tmp_path / "o")
