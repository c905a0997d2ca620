"""MDN-RNN training math: window sampling, the loss, and held-out evaluation. Pure JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamenv.mdnrnn import MDNRNN
from dreamenv.mixture import mdn_log_prob, mdn_mean, mdn_nll


def sample_windows(key, length, batch: int, seq_len: int, start_fraction=0.0):
    """Random training windows. length [N] -> (rollout [B], start [B]).

    Rollout i is drawn with weight ∝ its number of windows; the window's start is uniform
    in [0, length_i − seq_len] (0 for rollouts shorter than seq_len, masked later). A share
    `start_fraction` of windows begin at the episode's first step instead, where every dream begins
    (uniform starts alone put 1 window in ~1000 there).
    """
    k_roll, k_start = jax.random.split(key)
    n_windows = jnp.maximum(length - seq_len + 1, 1)  # [N]
    rollout = jax.random.categorical(k_roll, jnp.log(n_windows.astype(jnp.float32)), shape=(batch,))
    start = jax.random.randint(k_start, (batch,), 0, n_windows[rollout])
    if start_fraction > 0:  # a Python number; 0 keeps the uniform windows' draws as they were
        first = jax.random.uniform(jax.random.fold_in(key, 1), (batch,)) < start_fraction
        start = jnp.where(first, 0, start)
    return rollout, start


def gather_windows(data: dict, rollout, start, seq_len: int) -> dict:
    """Slices [start, start + seq_len + 1) of each array: {name: [B, L + 1, ...]}, plus
    `valid` [B, L + 1] (step inside the rollout)."""

    def one(i, s):
        window = {
            k: jax.lax.dynamic_slice_in_dim(v[i], s, seq_len + 1, axis=0)
            for k, v in data.items() if k != "length"
        }
        window["valid"] = s + jnp.arange(seq_len + 1) < data["length"][i]
        return window

    return jax.vmap(one)(rollout, start)


def window_loss(model: MDNRNN, params, window: dict, key, done_pos_weight, reward_weight, done_weight,
                z_noise=0.0):
    """Loss on windows: mixture NLL of z_{t+1} (per latent dim), squared-error reward, weighted BCE done.

    The reward head is fit by squared error, so it predicts the expected reward: CarRacing's is a
    rare tile spike (+1000/N) over −0.1 a step, and a robust loss (Huber) would fit something near
    the median instead, under-predicting returns.

    Terminal steps are rare, so the done BCE weights them by done_pos_weight (w). It is taken on
    done_logit + log w: weighted BCE's optimum is then done_logit = log(p / (1 − p)), so the head
    stays calibrated and the env's "P(done) > 0.5" means what it says.

    window: mu, logvar [B, L+1, D]; action [B, L+1, A]; reward, done, valid [B, L+1].
    z = mu + z_noise·σ·ε is sampled afresh for inputs and targets alike (z_noise = 1: z ~ N(mu, σ²)
    as in the paper; 0: the encoder means). -> (loss, dict of its terms)
    """
    eps = jax.random.normal(key, window["mu"].shape)
    z = window["mu"] + z_noise * jnp.exp(0.5 * window["logvar"]) * eps  # [B, L+1, D]
    _, out = model.apply(params, model.initial_carry(z.shape[0]), z[:, :-1], window["action"][:, :-1])
    step_valid = window["valid"][:, :-1]  # [B, L]: the transition from step t exists
    next_valid = window["valid"][:, 1:] & step_valid  # z_{t+1} was observed
    nll = mdn_nll(out["log_pi"], out["mu"], out["log_sigma"], z[:, 1:], mask=next_valid)
    nll = nll / model.latent_dim
    w = step_valid.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    r = window["reward"][:, :-1]
    reward = jnp.sum(jnp.square(out["reward"] - r) * w) / n
    done = window["done"][:, :-1].astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(out["done_logit"] + jnp.log(done_pos_weight), done)
    bce = jnp.sum(bce * (1.0 + (done_pos_weight - 1.0) * done) * w) / n
    total = nll + reward_weight * reward + done_weight * bce
    return total, dict(loss=total, nll_per_dim=nll, reward_mse=reward, done_bce=bce)


def unroll_rollouts(model: MDNRNN, params, mu, action):
    """Teacher-forced unroll from a zero carry, as LatentCarRacing-v0's memory runs. mu [N, T, D],
    action [N, T, A] -> the head's outputs [N, T, ...]."""
    _, out = model.apply(params, model.initial_carry(mu.shape[0]), mu, action)
    return out


def average_ranks(scores) -> np.ndarray:
    """1-based ranks of scores [N], ties sharing their average rank -> float64 [N]."""
    scores = np.asarray(scores)
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged); NaN when one class is absent."""
    labels = labels.astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(model: MDNRNN, params, data, chunk: int = 16) -> dict:
    """Held-out metrics on whole rollouts (LatentSet), unrolled from a zero carry like the env.

    Inputs and targets are the encoder means; persistence predicts mu_{t+1} = mu_t.
    """
    run = jax.jit(lambda p, mu, a: unroll_rollouts(model, p, mu, a))
    sums = dict(nll=0.0, mse=0.0, persist=0.0, n_next=0)
    rewards, reward_pred, dones, done_logit, usage = [], [], [], [], []
    for lo in range(0, len(data.length), chunk):
        sl = slice(lo, lo + chunk)
        mu, action, length = data.mu[sl], data.action[sl], data.length[sl]
        out = jax.device_get(run(params, mu, action))
        t = np.arange(mu.shape[1])
        step_valid = t[None, :] < length[:, None]  # [n, T]
        next_valid = t[None, :] < (length[:, None] - 1)
        target = np.concatenate([mu[:, 1:], mu[:, -1:]], axis=1)
        mean = np.asarray(mdn_mean(out["log_pi"], out["mu"]))
        logp = np.asarray(mdn_log_prob(out["log_pi"], out["mu"], out["log_sigma"], target))
        sums["nll"] += float(-logp[next_valid].sum())
        sums["mse"] += float(((mean - target) ** 2).mean(-1)[next_valid].sum())
        sums["persist"] += float(((mu - target) ** 2).mean(-1)[next_valid].sum())
        sums["n_next"] += int(next_valid.sum())
        rewards.append(data.reward[sl][step_valid])
        reward_pred.append(out["reward"][step_valid])
        dones.append(data.done[sl][step_valid])
        done_logit.append(out["done_logit"][step_valid])
        usage.append(np.exp(out["log_pi"])[step_valid])
    r, rp = np.concatenate(rewards), np.concatenate(reward_pred)
    n = max(sums["n_next"], 1)
    mse, persist = sums["mse"] / n, sums["persist"] / n
    return dict(
        nll_per_step=sums["nll"] / n,
        mse_mixture_mean=mse,
        mse_persistence=persist,
        mse_ratio_to_persistence=mse / persist if persist > 0 else float("nan"),
        reward_mae=float(np.abs(r - rp).mean()),
        reward_bias=float(rp.mean() - r.mean()),
        reward_corr=float(np.corrcoef(r, rp)[0, 1]) if r.std() > 0 and rp.std() > 0 else float("nan"),
        done_auc=auc(np.concatenate(done_logit), np.concatenate(dones)),
        done_steps=int(np.concatenate(dones).sum()),
        component_usage=np.concatenate(usage).mean(0).round(4).tolist(),
        steps=int(sum(len(x) for x in rewards)),
    )
