"""Train the MDN-RNN on encoded rollouts: `python -m train.mdnrnn`.

Reads the latent folder written by `python -m train.encode`, holds out whole rollouts (the
same split as the VAE), trains with Adam (lr decaying from --lr to --lr-end, gradients
clipped at global norm 1) on random windows of --seq-len steps, evaluates the held-out
rollouts every --eval-every steps (metrics JSON), checkpoints atomically every --ckpt-every
steps and resumes when rerun. A NaN/inf loss stops with an error; the last good checkpoint
stays. At the end it writes the model bundle (VAE + MDN-RNN + start latents + metrics).

Training latents are sampled afresh, z ~ N(mu, σ²), as the paper does (--z-noise 1): the dream
feeds the memory its own samples, so it must learn from inputs that noisy. --z-noise 0 trains on
the encoder means (the z LatentCarRacing-v0 feeds it); with --residual means that fits one step
better (held-out 1-step MSE 0.51× persistence after 10k steps) but dreams diverge open-loop
(see dreamenv/mdnrnn.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from dreamenv.atomic import atomic_write_bytes
from dreamenv.checkpoint import Bundle, load_bundle, module_config, save_bundle
from dreamenv.mdnrnn import MEAN_PATH, MDNRNN, gain_reward_input, previous_rewards
from train.latents import LatentSet, vae_fingerprint
from train.mdnrnn_loss import evaluate, gather_windows, sample_windows, window_loss
from train.split import split_rollouts
from train.trainstate import TrainCheckpoint
from train.vae_run import load_vae_config, load_vae_run

LOG_EVERY = 50  # steps between loss checks (a host sync) and progress updates


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=Path, default=Path("data/latents"))
    p.add_argument("--vae", type=Path, default=Path("runs/vae"), help="VAE run folder (train.vae --out)")
    p.add_argument("--out", type=Path, default=Path("runs/mdnrnn"))
    p.add_argument("--bundle", type=Path, default=None, help="where to write the bundle (default OUT/bundle)")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-end", type=float, default=1e-4)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--mixtures", type=int, default=5)
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--z-noise", type=float, default=1.0,
                   help="scale of the posterior noise in training latents (1: z ~ N(mu, σ²), the paper's; 0: means)")
    p.add_argument("--start-fraction", type=float, default=0.0,
                   help="share of training windows that begin at an episode's first step (where dreams begin)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=False,
                   help="residual component means mu = z_t + Δ (see dreamenv/mdnrnn.py; default: absolute, the paper's)")
    p.add_argument("--sample-flag", action=argparse.BooleanOptionalAction, default=False,
                   help="tell the model whether z_t is a sample or an encoder mean; half the windows are each, all "
                        "means with --freeze-sampled (see dreamenv/mdnrnn.py). An --init model without the flag "
                        "gains it with zero weight")
    p.add_argument("--reward-input", action=argparse.BooleanOptionalAction, default=False,
                   help="the model reads the previous step's reward and predicts the reward as two levels the "
                        "dream samples (see dreamenv/mdnrnn.py). An --init model without it gains it, the same "
                        "function until trained")
    p.add_argument("--freeze-sampled", action="store_true",
                   help="with --sample-flag and --init: train only the mean path, on encoder means; the model "
                        "on samples (the dream) stays the --init one exactly")
    p.add_argument("--reward-weight", type=float, default=1.0)
    p.add_argument("--done-weight", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="bundle whose MDN-RNN starts this run (fine-tuning; same sizes and VAE required)")
    p.add_argument("--bundle-dtype", choices=("float32", "float16"), default="float32")
    return p.parse_args(argv)


def load_split(latents: Path, vae_run: Path, fingerprint: str) -> tuple[LatentSet, LatentSet]:
    """Train and held-out latent rollouts, split exactly as the VAE run split its shards."""
    paths = sorted(latents.glob("rollout_*.npz"))
    if not paths:
        raise SystemExit(f"no latent files in {latents}; run `python -m train.encode` first")
    vae_args = json.loads((vae_run / "run_config.json").read_text())
    train_paths, held_paths = split_rollouts(paths, vae_args["holdout"], vae_args["seed"])
    return LatentSet.from_files(train_paths, fingerprint), LatentSet.from_files(held_paths, fingerprint)


def init_from(path: Path, model: MDNRNN, fingerprint: str, fresh):
    """The MDN-RNN params of bundle `path`, checked to fit `model` and the current VAE (a model
    without the sample flag gains it: `fresh`'s zero mean path, the same function at any flag; one
    without the reward input gains it: `gain_reward_input`)."""
    bundle = load_bundle(path)
    gains_flag = model.sample_flag and not bundle.mdnrnn.sample_flag
    grown = {"sample_flag": model.sample_flag, "reward_input": model.reward_input}
    if bundle.mdnrnn.reward_input and not model.reward_input:
        raise SystemExit(f"--init {path}: its MDN-RNN reads the previous reward; pass --reward-input")
    if {**module_config(bundle.mdnrnn), **grown} != module_config(model):
        raise SystemExit(f"--init {path}: its MDN-RNN is {module_config(bundle.mdnrnn)}, this run builds "
                         f"{module_config(model)}; pass matching --hidden-size/--mixtures/--residual")
    if bundle.metadata.get("vae_fingerprint") != fingerprint:
        raise SystemExit(f"--init {path}: its MDN-RNN was trained on another VAE's latents than --vae's; "
                         f"fine-tune only on latents of the VAE it was trained with")
    params = jax.tree_util.tree_map(jnp.asarray, bundle.mdnrnn_params)
    if model.reward_input and not bundle.mdnrnn.reward_input:
        params = gain_reward_input(params, model)
    if gains_flag:
        for layer in ("lstm", "head"):
            params["params"]["cell"][layer].update({name: fresh["params"]["cell"][layer][name] for name in MEAN_PATH})
    return params


def optimizer(args):
    """Adam with clipped gradients and cosine-decayed lr; with --freeze-sampled, for the mean path only."""
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=args.lr_end / args.lr)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    if not args.freeze_sampled:
        return opt
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "mean" if path[-1].key in MEAN_PATH else "frozen", params)
    return optax.multi_transform({"mean": opt, "frozen": optax.set_to_zero()}, labels)


def done_pos_weight(data: LatentSet) -> float:
    """Terminal steps are rare: weight them by negatives/positives (capped at 1000)."""
    pos = int(data.done.sum())
    return float(np.clip((data.steps - pos) / max(pos, 1), 1.0, 1000.0))


def make_update(model: MDNRNN, opt, args, pos_weight: float):
    def update(params, opt_state, data, key):
        k_win, k_z = jax.random.split(key)
        rollout, start = sample_windows(k_win, data["length"], args.batch_size, args.seq_len, args.start_fraction)
        window = gather_windows(data, rollout, start, args.seq_len)
        grad_fn = jax.value_and_grad(window_loss, argnums=1, has_aux=True)
        (_, terms), grads = grad_fn(model, params, window, k_z, pos_weight, args.reward_weight, args.done_weight,
                                     args.z_noise, 1.0 if args.freeze_sampled else 0.5)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return jax.jit(update, donate_argnums=(0, 1))


def device_data(data: LatentSet, seq_len: int) -> dict:
    """Padded arrays on device, with seq_len + 1 extra zero steps so every window slices; prev_reward
    is r_{t-1} (0 at each rollout's first step)."""
    pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], seq_len + 1, *x.shape[2:]), x.dtype)], 1)
    arrays = {k: pad(getattr(data, k)) for k in ("mu", "logvar", "action", "reward", "done")}
    arrays["prev_reward"] = pad(np.asarray(previous_rewards(data.reward)))
    return jax.device_put({**arrays, "length": data.length})


def start_latents(data: LatentSet) -> np.ndarray:
    """The first encoded frame of each training rollout: [N, D].

    The dream starts where LatentCarRacing-v0 (the real game) does, at the frame reset() returns,
    zoom-in included, so an agent meets the same first ~50 steps in both.
    """
    return data.mu[:, 0].astype(np.float32)


def train(args) -> dict:
    if args.freeze_sampled and not (args.sample_flag and args.init):
        raise SystemExit("--freeze-sampled trains only the mean path of an --init model: pass --sample-flag "
                         "and --init BUNDLE too")
    vae, vae_params = load_vae_run(args.vae)
    _, frames = load_vae_config(args.vae)
    fingerprint = vae_fingerprint(vae, vae_params)
    train_set, held = load_split(args.latents, args.vae, fingerprint)
    model = MDNRNN(latent_dim=train_set.mu.shape[-1], action_dim=train_set.action.shape[-1],
                   hidden_size=args.hidden_size, num_mixtures=args.mixtures, sigma_min=args.sigma_min,
                   residual=args.residual, sample_flag=args.sample_flag, reward_input=args.reward_input)
    opt = optimizer(args)
    key = jax.random.key(args.seed)
    k_init, key = jax.random.split(key)
    z0 = jnp.zeros((1, 1, model.latent_dim))
    params = model.init(k_init, model.initial_carry(1), z0, jnp.zeros((1, 1, model.action_dim)),
                        prev_reward=jnp.zeros((1, 1)))
    if args.init is not None:
        params = init_from(args.init, model, fingerprint, params)
    metrics_path, bundle_path = args.out / "metrics.json", args.bundle or args.out / "bundle"
    history = json.loads(metrics_path.read_text())["history"] if metrics_path.exists() else []
    if history and history[-1]["step"] >= args.steps and (bundle_path / "config.json").is_file():
        # checked before the checkpoint is read: a finished run's checkpoint may predate this format
        print(f"train/mdnrnn.py: {args.out} finished {args.steps} steps and wrote {bundle_path}; nothing to do")
        return history[-1]  # the bundle stays as written: rollouts added since then are not its data
    state = {"params": params, "opt_state": opt.init(params), "step": 0, "key": jax.random.key_data(key)}
    ckpt = TrainCheckpoint(args.out / "checkpoint")
    state = ckpt.restore(state) or state
    history = [h for h in history if h["step"] <= state["step"]]
    update = make_update(model, opt, args, done_pos_weight(train_set))
    data = device_data(train_set, args.seq_len)
    params, opt_state = state["params"], state["opt_state"]
    key = jax.random.wrap_key_data(jnp.asarray(state["key"]))
    step = int(state["step"])
    bar = tqdm(total=args.steps, initial=step, desc="mdnrnn", dynamic_ncols=True)
    t0 = time.time()
    while step < args.steps:
        key, k_step = jax.random.split(key)
        params, opt_state, terms = update(params, opt_state, data, jax.random.fold_in(k_step, step))
        step += 1
        bar.update(1)
        last = step == args.steps
        save, run_eval = step % args.ckpt_every == 0 or last, step % args.eval_every == 0 or last
        if step % LOG_EVERY == 0 or save or run_eval:
            terms = {k: float(v) for k, v in terms.items()}
            if not np.isfinite(terms["loss"]):
                raise FloatingPointError(
                    f"MDN-RNN loss became {terms['loss']} at step {step}; the last good checkpoint "
                    f"in {ckpt.folder} is kept (lower --lr and rerun to resume from it)")
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
        if save:
            if not np.all([np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]):
                raise FloatingPointError(f"MDN-RNN params became non-finite by step {step}; "
                                         f"the last good checkpoint in {ckpt.folder} is kept")
            ckpt.save({"params": params, "opt_state": opt_state, "step": step,
                       "key": jax.random.key_data(key)})
        if run_eval:
            record = {"step": step, "train": terms, "heldout": evaluate(model, params, held)}
            if model.sample_flag:  # the same means, taken as samples: how the dream's mode predicts
                record["heldout_as_sampled"] = evaluate(model, params, held, sampled=1.0)
            record["seconds"] = time.time() - t0
            history.append(record)
            atomic_write_bytes(metrics_path, json.dumps({"history": history}, indent=1).encode())
            tqdm.write(json.dumps(record["heldout"]))
    bar.close()
    final = history[-1]
    bundle = Bundle(
        vae=vae, mdnrnn=model, frames=frames, vae_params=vae_params,
        mdnrnn_params=jax.device_get(params), start_latents=start_latents(train_set),
        metadata={"trained": True, "vae_fingerprint": fingerprint,
                  "train_rollouts": len(train_set.length), "train_steps": train_set.steps,
                  "heldout_rollouts": len(held.length), "mdnrnn_metrics": final["heldout"],
                  "mdnrnn_args": {k: str(v) for k, v in vars(args).items()}},
    )
    save_bundle(bundle_path, bundle, dtype=args.bundle_dtype)
    return final


def main(argv=None):
    args = parse_args(argv)
    final = train(args)
    print(json.dumps(final["heldout"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
