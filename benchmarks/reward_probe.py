"""Is the reward predictable from what the memory model sees? Probes on its hidden state.

`python -m benchmarks.reward_probe --model BUNDLE --latents DIR --vae VAE_RUN [--train-rollouts 120]`
unrolls the bundle's MDN-RNN over a run's latent rollouts (teacher-forced on encoder means from a
zero carry, as the held-out metrics are), fits probes for r_t on (a sample of) the training split
and reports their correlation with r_t on the held-out split (split as the VAE run split its
shards) beside the reward head's own: ridge regression and a 2-layer MLP (256-256, Adam), on
h_{t+1} alone and on [h_{t+1}, z_t, z_{t+1}]. Probes no better than the head mean the features, not
the head's training, limit the reward correlation. Prints a table, writes JSON (default
benchmarks/out/reward_probe.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import emit
from dreamenv.checkpoint import load_bundle
from train.mdnrnn import load_split
from train.mdnrnn_loss import unroll_rollouts

FEATURES = {"h": ("h",), "h, z_t, z_t+1": ("h", "z", "z_next")}


def features(bundle, data, rollouts, chunk: int = 16) -> dict:
    """Every transition t < length − 1 of rollouts [R] of `data` (LatentSet) -> {h [N, H], z, z_next
    [N, D], reward, head [N]}: h = h_{t+1}, the state the reward head reads."""
    run = jax.jit(lambda p, mu, a: unroll_rollouts(bundle.mdnrnn, p, mu, a))
    out = {k: [] for k in ("h", "z", "z_next", "reward", "head")}
    for lo in range(0, len(rollouts), chunk):
        idx = rollouts[lo : lo + chunk]
        mu, action, length = data.mu[idx], data.action[idx], data.length[idx]
        head = jax.device_get(run(bundle.mdnrnn_params, mu, action))
        valid = np.arange(mu.shape[1] - 1)[None, :] < (length[:, None] - 1)  # [n, T-1]
        out["h"].append(head["h"][:, :-1][valid])
        out["z"].append(mu[:, :-1][valid])
        out["z_next"].append(mu[:, 1:][valid])
        out["reward"].append(data.reward[idx][:, :-1][valid])
        out["head"].append(head["reward"][:, :-1][valid])
    return {k: np.concatenate(v) for k, v in out.items()}


def ridge(x, y, x_test, penalty: float = 1.0) -> np.ndarray:
    """Ridge regression with a bias: fit on (x [N, F], y [N]), predict x_test [M, F] -> [M]."""
    a, a_test = np.c_[x, np.ones(len(x))], np.c_[x_test, np.ones(len(x_test))]
    w = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ y)
    return a_test @ w


def mlp(x, y, x_test, steps: int = 3000, batch: int = 512, seed: int = 0) -> np.ndarray:
    """A 256-256 ReLU MLP fit by Adam on squared error over standardised inputs -> predictions [M]."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = jnp.asarray((x - mean) / std), jnp.asarray((x_test - mean) / std)
    y = jnp.asarray(y)
    net = nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(256), nn.relu, nn.Dense(1)])
    params, opt = net.init(jax.random.key(seed), x[:1]), optax.adam(1e-3)

    @jax.jit
    def update(params, state, key):
        i = jax.random.randint(key, (batch,), 0, x.shape[0])
        grads = jax.grad(lambda p: jnp.mean((net.apply(p, x[i])[:, 0] - y[i]) ** 2))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for key in jax.random.split(jax.random.key(seed + 1), steps):
        params, state = update(params, state, key)
    return np.asarray(net.apply(params, x_test)[:, 0])


def corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def probe(model, latents, vae_run, train_rollouts: int = 120, mlp_steps: int = 3000, seed: int = 0) -> dict:
    bundle = load_bundle(model)
    train_set, held_set = load_split(Path(latents), Path(vae_run), bundle.metadata.get("vae_fingerprint"))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(train_set.length))[:train_rollouts])
    fit, test = features(bundle, train_set, chosen), features(bundle, held_set, np.arange(len(held_set.length)))
    stack = lambda f, keys: np.concatenate([f[k] for k in keys], axis=1)
    rows = [{"probe": "the reward head", "features": "h", "held_out_corr": corr(test["head"], test["reward"])}]
    for name, keys in FEATURES.items():
        x, x_test = stack(fit, keys), stack(test, keys)
        rows.append({"probe": "ridge", "features": name,
                     "held_out_corr": corr(ridge(x, fit["reward"], x_test), test["reward"])})
        rows.append({"probe": "MLP 256-256", "features": name,
                     "held_out_corr": corr(mlp(x, fit["reward"], x_test, mlp_steps, seed=seed), test["reward"])})
    lines = ["| predictor of r_t | features | held-out correlation |", "|---|---|---:|"]
    lines += [f"| {r['probe']} | {r['features']} | {r['held_out_corr']:.3f} |" for r in rows]
    lines.append(f"\nFit on {len(fit['reward'])} transitions of {len(chosen)} training rollouts; scored on "
                 f"{len(test['reward'])} of {len(held_set.length)} held-out rollouts (h = h_t+1, z = encoder means).")
    return {"model": str(model), "latents": str(latents), "vae_run": str(vae_run), "train_rollouts": int(len(chosen)),
            "fit_steps": int(len(fit["reward"])), "heldout_steps": int(len(test["reward"])),
            "heldout_rollouts": int(len(held_set.length)), "mlp_steps": mlp_steps, "seed": seed, "rows": rows,
            "markdown": "\n".join(lines)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reward_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a bundle folder")
    p.add_argument("--latents", type=Path, required=True, help="the run's latent folder (train.encode --out)")
    p.add_argument("--vae", type=Path, required=True, help="the VAE run folder whose split to use")
    p.add_argument("--train-rollouts", type=int, default=120, help="training rollouts the probes are fit on")
    p.add_argument("--mlp-steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/reward_probe.json"))
    args = p.parse_args(argv)
    if args.train_rollouts < 1 or args.mlp_steps < 1:
        p.error("--train-rollouts and --mlp-steps must be >= 1")
    return emit(probe(args.model, args.latents, args.vae, args.train_rollouts, args.mlp_steps, args.seed), args.out)


if __name__ == "__main__":
    main()
