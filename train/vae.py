"""Train the VAE on rollout shards: `python -m train.vae --data data/rollouts --out runs/vae`.

Loss per image, batch-averaged (the paper's): summed squared reconstruction error plus the
KL to N(0, I), clamped below at kl_tolerance·latent_dim (free bits: 0.5·32 = 16 nats).
Whole rollouts are held out (`train.split`); the rest stream through a resumable shuffle
(`FrameStream`). Every --ckpt-every steps the state is checkpointed atomically; rerunning
the same command resumes and continues exactly as an uninterrupted run. A NaN/inf loss stops
the run with an error, keeping the last good checkpoint. Every --eval-every steps (and at the
end) the held-out reconstruction MSE per pixel goes to OUT/metrics.json and a grid of held-out
frames above their reconstructions to OUT/recon.png. The finished VAE is OUT/vae.msgpack +
OUT/vae_config.json (`train.vae_run`).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from dreamenv.atomic import atomic_write_bytes
from dreamenv.frames import to_float
from dreamenv.shards import list_shards, load_shard
from dreamenv.vae import DECODERS, VAE, init_vae, jit_options
from train.split import split_rollouts
from train.trainstate import TrainCheckpoint
from train.vae_run import save_vae_run

FRAME_BYTES = 64 * 64 * 3
LOG_EVERY = 10  # steps between loss checks (a host sync) and progress-bar updates
# Settings a resumed run must share with the checkpoint (shapes, data order, randomness).
RESUME_KEYS = ("decoder", "latent_dim", "batch_size", "seed", "holdout", "kl_tolerance")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.vae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/rollouts"), help="rollout shard folder")
    p.add_argument("--out", type=Path, default=Path("runs/vae"), help="run folder")
    p.add_argument("--steps", type=int, default=20_000, help="total training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--decoder", choices=DECODERS, default="paper")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--kl-tolerance", type=float, default=0.5, help="free bits per latent dim")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of rollouts held out")
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-frames", type=int, default=1024, help="held-out frames evaluated")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--memory-gb", type=float, default=4.0,
                   help="frames kept in RAM; less than the data set means shuffling a group of shards at a time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "eval_every", "eval_frames", "ckpt_every", "latent_dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


class FrameStream:
    """Shuffled uint8 training batches from shards, holding at most ~2 groups of shards in RAM.

    Epoch e visits the shards in a seeded order, `group_shards` at a time; each group's frames
    are loaded together and served in a seeded permutation, batches running on across group and
    epoch ends. With one group (data within the memory budget) the shards load once and each
    epoch is a full shuffle. The position {"epoch", "group", "offset"} is the whole state.
    """

    def __init__(self, paths: list[Path], batch_size: int, seed: int, group_shards: int):
        if not paths:
            raise ValueError("FrameStream needs at least one training shard")
        self.paths, self.batch_size, self.seed = list(paths), batch_size, seed
        self.group_shards = max(1, min(group_shards, len(self.paths)))
        self.epoch = self.group = self.offset = 0
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def num_groups(self) -> int:
        return -(-len(self.paths) // self.group_shards)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "group": self.group, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.group, self.offset = (int(state[k]) for k in ("epoch", "group", "offset"))

    def _members(self, epoch: int, group: int) -> tuple[int, ...]:
        if self.num_groups == 1:
            return tuple(range(len(self.paths)))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
        return tuple(sorted(order[group * self.group_shards : (group + 1) * self.group_shards]))

    def _frames(self, members: tuple[int, ...]) -> np.ndarray:
        if members not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            shards = tqdm(members, desc="loading shards", leave=False, disable=len(members) < 8)
            self._cache[members] = np.concatenate([load_shard(self.paths[i])["obs"] for i in shards])
        return self._cache[members]

    def next_batch(self) -> np.ndarray:
        """-> uint8 [batch_size, 64, 64, 3]; advances the position."""
        parts, need = [], self.batch_size
        while need:
            frames = self._frames(self._members(self.epoch, self.group))
            order = np.random.default_rng([self.seed, self.epoch, self.group]).permutation(len(frames))
            take = order[self.offset : self.offset + need]
            parts.append(frames[take])
            need -= len(take)
            self.offset += len(take)
            if self.offset == len(frames):
                self.offset, self.group = 0, self.group + 1
                if self.group == self.num_groups:
                    self.group, self.epoch = 0, self.epoch + 1
        return np.concatenate(parts)


def heldout_frames(paths: list[Path], count: int) -> np.ndarray:
    """About `count` frames evenly spaced through each held-out shard -> uint8 [N, 64, 64, 3]."""
    per_shard = -(-count // max(len(paths), 1))
    picked = []
    for path in tqdm(paths, desc="held-out frames", leave=False):
        obs = load_shard(path)["obs"]
        picked.append(obs[np.linspace(0, len(obs) - 1, min(per_shard, len(obs))).astype(int)])
    return np.concatenate(picked)[:count]


def vae_loss(model: VAE, params, frames, key, kl_tolerance: float):
    """frames: [B, 64, 64, 3] in [0, 1] -> (loss, {"recon", "kl"}), each batch-averaged."""
    recon, mu, logvar = model.apply(params, frames, key)
    r_loss = jnp.sum(jnp.square(recon - frames), axis=(1, 2, 3))  # [B]
    kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)  # [B]
    kl_loss = jnp.maximum(kl, kl_tolerance * model.latent_dim)
    return jnp.mean(r_loss + kl_loss), {"recon": jnp.mean(r_loss), "kl": jnp.mean(kl)}


@functools.cache
def make_train_step(model: VAE, lr: float, kl_tolerance: float):
    """-> jitted step(params, opt_state, key, step, frames) -> (params, opt_state, terms), Adam(lr).

    The step's noise is fold_in(key, step), so a resumed run draws what an uninterrupted one
    would. Cached: reruns in one process reuse the compile. (Donating params and opt_state
    made the step 2-5% slower on CPU.)
    """
    optimizer = optax.adam(lr)

    def step_fn(params, opt_state, key, step, frames):
        grad_fn = jax.value_and_grad(partial(vae_loss, model), has_aux=True)
        (loss, terms), grads = grad_fn(params, frames, jax.random.fold_in(key, step), kl_tolerance)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **terms}

    return jax.jit(step_fn, compiler_options=jit_options())


@functools.cache
def make_evaluate(model: VAE, batch_size: int = 256, shown: int = 8):
    """-> evaluate(params, frames uint8 [N, 64, 64, 3]) -> (MSE per pixel, PNG bytes).

    Frames are reconstructed from the posterior mean; the PNG shows `shown` frames spread
    through `frames` above their reconstructions.
    """
    recon_fn = jax.jit(lambda p, x: model.apply(p, model.apply(p, x, method=VAE.encode)[0], method=VAE.decode),
                       compiler_options=jit_options())

    def evaluate(params, frames: np.ndarray) -> tuple[float, bytes]:
        total = 0.0
        for i in range(0, len(frames), batch_size):
            x = to_float(frames[i : i + batch_size])
            total += float(np.sum(np.square(np.asarray(recon_fn(params, x)) - x), dtype=np.float64))
        picked = frames[np.linspace(0, len(frames) - 1, shown).astype(int)]
        return total / frames.size, recon_png(picked, np.asarray(recon_fn(params, to_float(picked))))

    return evaluate


def recon_png(frames: np.ndarray, *recons: np.ndarray) -> bytes:
    """PNG bytes: held-out frames (uint8 [N, 64, 64, 3]) above one row per reconstruction ([0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [to_float(frames), *(np.clip(r, 0.0, 1.0) for r in recons)]
    pad = lambda x: np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
    grid = np.concatenate([np.concatenate(list(pad(r)), axis=1) for r in rows], axis=0)
    buf = io.BytesIO()
    plt.imsave(buf, np.repeat(np.repeat(grid, 2, 0), 2, 1), format="png")
    return buf.getvalue()


def mean_terms(pending: list[dict], step: int, ckpt: TrainCheckpoint) -> dict:
    """Mean of the steps' loss terms (a host sync); raises FloatingPointError on a NaN/inf loss.

    pending: the terms of steps step - len(pending) + 1 .. step.
    """
    losses = [float(t["loss"]) for t in pending]
    bad = [i for i, loss in enumerate(losses) if not np.isfinite(loss)]
    if bad:
        good = ckpt.steps()
        raise FloatingPointError(
            f"train/vae.py: VAE loss became {losses[bad[0]]} at step {step - len(pending) + bad[0] + 1}; "
            f"stopped. The last good checkpoint ({'step ' + str(good[-1]) if good else 'none'}) in "
            f"{ckpt.folder} is kept: lower --lr and rerun to resume from it")
    return {k: float(np.mean([float(t[k]) for t in pending])) for k in pending[-1]}


def write_eval(out: Path, info: dict, history: list, png: bytes) -> None:
    """OUT/metrics.json (info + history) and OUT/recon.png, each atomically."""
    atomic_write_bytes(out / "metrics.json", json.dumps({**info, "history": history}, indent=1).encode())
    atomic_write_bytes(out / "recon.png", png)


def check_resume(out: Path, args: argparse.Namespace, resuming: bool) -> None:
    """Record the run's settings; refuse to resume a checkpoint made with different ones."""
    path = out / "run_config.json"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if resuming and path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if old.get(k) != config[k]]
        if changed:
            raise SystemExit(
                f"train/vae.py: {out} holds a checkpoint made with different settings "
                + ", ".join(f"--{k.replace('_', '-')} {old.get(k)} (now {config[k]})" for k in changed)
                + "; rerun with those, or use another --out"
            )
    atomic_write_bytes(path, json.dumps(config, indent=1, sort_keys=True).encode())


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) the run in args.out; returns the last metrics record."""
    paths = list_shards(args.data)
    train_paths, held_paths = split_rollouts(paths, args.holdout, args.seed)
    if not train_paths or not held_paths:
        raise SystemExit(f"train/vae.py: {args.data} has {len(paths)} shards; need at least 2 "
                         f"(one to train on, one held out); run `python -m train.collect`")
    model = VAE(latent_dim=args.latent_dim, decoder=args.decoder)
    k_init, key = jax.random.split(jax.random.key(args.seed))
    params = init_vae(model, k_init)
    shard_frames = len(load_shard(train_paths[0])["obs"])  # to size the groups in RAM
    group = int(args.memory_gb * 2**30 // (shard_frames * FRAME_BYTES))
    state = {"params": params, "opt_state": optax.adam(args.lr).init(params), "step": 0,
             "key": jax.random.key_data(key), "data": {"epoch": 0, "group": 0, "offset": 0, "group_shards": group}}
    ckpt = TrainCheckpoint(args.out / "checkpoint")
    check_resume(args.out, args, resuming=bool(ckpt.steps()))
    state = ckpt.restore(state) or state
    step = int(state["step"])

    stream = FrameStream(train_paths, args.batch_size, args.seed, int(state["data"]["group_shards"]))
    stream.load_state_dict(state["data"])
    held = heldout_frames(held_paths, args.eval_frames)
    train_step = make_train_step(model, args.lr, args.kl_tolerance)
    evaluate = make_evaluate(model)
    params, opt_state = jax.device_put((state["params"], state["opt_state"]))
    key = jax.random.wrap_key_data(jnp.asarray(state["key"]))

    metrics_path = args.out / "metrics.json"
    history = json.loads(metrics_path.read_text())["history"] if metrics_path.is_file() and step else []
    history = [h for h in history if h["step"] <= step]
    info = {"train_rollouts": len(train_paths), "heldout_rollouts": len(held_paths),
            "heldout_frames": len(held), "args": {k: str(v) for k, v in vars(args).items()}}
    bar = tqdm(total=args.steps, initial=step, desc="vae", dynamic_ncols=True)
    pending, terms, timed, t0 = [], {}, 0, time.perf_counter()
    while step < args.steps:
        frames = to_float(stream.next_batch())
        params, opt_state, step_terms = train_step(params, opt_state, key, step, frames)
        pending.append(step_terms)
        step += 1
        bar.update(1)
        last = step == args.steps
        save, run_eval = step % args.ckpt_every == 0 or last, step % args.eval_every == 0 or last
        if step % LOG_EVERY == 0 or save or run_eval:
            terms = mean_terms(pending, step, ckpt)
            timed, pending = timed + len(pending), []
            bar.set_postfix({k: f"{v:.2f}" for k, v in terms.items()})
        if save:
            if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(params)):
                raise FloatingPointError(f"train/vae.py: VAE params became non-finite by step {step}; "
                                         f"the last good checkpoint in {ckpt.folder} is kept")
            ckpt.save({"params": params, "opt_state": opt_state, "step": step,
                       "key": jax.random.key_data(key),
                       "data": {**stream.state_dict(), "group_shards": stream.group_shards}})
        if run_eval:
            seconds = time.perf_counter() - t0
            mse, png = evaluate(params, held)
            history.append({"step": step, "heldout_mse_per_pixel": mse, "train": terms,
                            "images_per_second": timed * args.batch_size / seconds})
            write_eval(args.out, info, history, png)
            tqdm.write(f"step {step}: held-out MSE/pixel {mse:.5f}, train loss {terms['loss']:.2f}")
            timed, t0 = 0, time.perf_counter()
    bar.close()
    if not history or history[-1]["step"] != step:  # rerun of a finished run: refresh outputs
        mse, png = evaluate(params, held)
        history.append({"step": step, "heldout_mse_per_pixel": mse})
        write_eval(args.out, info, history, png)
    save_vae_run(args.out, model, params)
    return history[-1]


def main(argv=None) -> int:
    final = train(parse_args(argv))
    print(json.dumps(final, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
