"""MDN-RNN training math: window sampling, masks, the done target, AUC."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dreamenv.mdnrnn import MDNRNN, head_layout
from train.mdnrnn_loss import auc, gather_windows, sample_windows, window_loss


def padded(lengths, d=4, extra=6):
    n, tmax = len(lengths), max(lengths) + extra
    t = np.arange(tmax, dtype=np.float32)
    data = {
        "mu": np.broadcast_to(t[None, :, None] + 1000 * np.arange(n)[:, None, None], (n, tmax, d)).copy(),
        "logvar": np.full((n, tmax, d), -20.0, np.float32),
        "action": np.zeros((n, tmax, 3), np.float32),
        "reward": np.zeros((n, tmax), np.float32),
        "done": np.zeros((n, tmax), bool),
        "length": np.asarray(lengths, np.int32),
    }
    for i, length in enumerate(lengths):
        data["done"][i, length - 1] = True
    return data


def test_windows_stay_inside_rollouts():
    data = padded([40, 7, 25])
    rollout, start = sample_windows(jax.random.key(0), data["length"], 512, seq_len=5)
    rollout, start = np.asarray(rollout), np.asarray(start)
    assert set(rollout) == {0, 1, 2}
    assert np.all(start + 5 <= data["length"][rollout])
    # rollouts are drawn in proportion to their number of windows (36 : 3 : 21)
    share = np.bincount(rollout, minlength=3) / 512
    np.testing.assert_allclose(share, np.array([36, 3, 21]) / 60, atol=0.07)


def test_a_share_of_windows_begins_at_the_first_step():
    data = padded([400, 300, 500])
    uniform = sample_windows(jax.random.key(0), data["length"], 4000, seq_len=5)
    rollout, start = sample_windows(jax.random.key(0), data["length"], 4000, seq_len=5, start_fraction=0.3)
    np.testing.assert_array_equal(rollout, uniform[0])  # same rollouts; starts moved to 0 or kept
    moved = np.asarray(start) != np.asarray(uniform[1])
    assert np.all(np.asarray(start)[moved] == 0)
    np.testing.assert_allclose(np.mean(np.asarray(start) == 0), 0.3, atol=0.03)


def test_gather_marks_steps_past_the_end_invalid():
    data = padded([4, 30])
    window = gather_windows(jax.device_put(data), jnp.array([0, 1]), jnp.array([0, 10]), seq_len=6)
    np.testing.assert_array_equal(window["valid"][0], [True] * 4 + [False] * 3)
    assert window["valid"][1].all()
    np.testing.assert_array_equal(window["mu"][1, :, 0], np.arange(10, 17) + 1000)
    np.testing.assert_array_equal(window["done"][0], [False, False, False, True, False, False, False])


def test_loss_ignores_padding_and_weights_done():
    model = MDNRNN(latent_dim=4, hidden_size=8, num_mixtures=2)
    data = padded([4, 30])
    window = gather_windows(jax.device_put(data), jnp.array([0, 1]), jnp.array([0, 10]), seq_len=6)
    params = model.init(jax.random.key(0), model.initial_carry(1), jnp.zeros((1, 1, 4)), jnp.zeros((1, 1, 3)))
    loss = lambda w, pw: window_loss(model, params, w, jax.random.key(1), pw, 1.0, 1.0)[1]
    base = loss(window, 1.0)
    # garbage in padded steps changes nothing
    noisy = dict(window, mu=jnp.where(window["valid"][..., None], window["mu"], 1e6))
    for k, v in loss(noisy, 1.0).items():
        np.testing.assert_allclose(v, base[k], rtol=1e-5)
    # the terminal step's BCE grows with its weight
    assert float(loss(window, 10.0)["done_bce"]) > float(base["done_bce"])


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # with ties
    labels = rng.random(300) < 0.2
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
    np.testing.assert_allclose(auc(scores, labels), pairwise, rtol=1e-9)
    assert np.isnan(auc(scores, np.zeros(300, bool)))


def test_weighted_done_loss_keeps_the_head_calibrated():
    """Whatever the terminal weight, the BCE's best constant logit is the log-odds of done."""
    model = MDNRNN(latent_dim=4, hidden_size=8, num_mixtures=2)
    window = gather_windows(jax.device_put(padded([4, 30])), jnp.array([0, 1]), jnp.array([0, 10]), seq_len=6)
    steps = window["valid"][:, :-1]
    rate = float(window["done"][:, :-1][steps].mean())  # one terminal among the valid steps
    params = model.init(jax.random.key(0), model.initial_carry(1), jnp.zeros((1, 1, 4)), jnp.zeros((1, 1, 3)))
    done = head_layout(model.num_mixtures, model.latent_dim)["done"]

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, None))
    def bce(bias, weight):  # a constant done logit = bias
        out = params["params"]["cell"]["head"]["out"]
        out = {"kernel": out["kernel"].at[:, done].set(0.0), "bias": out["bias"].at[done].set(bias)}
        p = {"params": {**params["params"], "cell": {**params["params"]["cell"], "head": {"out": out}}}}
        return window_loss(model, p, window, jax.random.key(1), weight, 1.0, 1.0)[1]["done_bce"]

    grid = jnp.linspace(-5.0, 2.0, 141)
    for weight in (1.0, 30.0):
        best = float(grid[jnp.argmin(bce(grid, weight))])
        np.testing.assert_allclose(best, np.log(rate / (1 - rate)), atol=0.05)


def test_training_latents_are_posterior_samples():
    """window_loss feeds z = mu + z_noise·σ·ε: at z_noise 0 the loss is that of the means exactly."""
    data = padded([40] * 4)
    data["logvar"][:] = 0.0  # σ = 1
    window = gather_windows(jax.device_put(data), jnp.zeros(8, jnp.int32), jnp.zeros(8, jnp.int32), seq_len=5)
    model = MDNRNN(latent_dim=4, hidden_size=8, num_mixtures=2)
    params = model.init(jax.random.key(0), model.initial_carry(1), jnp.zeros((1, 1, 4)), jnp.zeros((1, 1, 3)))
    loss = lambda key, noise: float(window_loss(model, params, window, key, 1.0, 1.0, 1.0, noise)[0])
    assert loss(jax.random.key(1), 0.0) == loss(jax.random.key(2), 0.0)
    assert loss(jax.random.key(1), 1.0) != loss(jax.random.key(2), 1.0)
