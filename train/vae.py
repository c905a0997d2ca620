"""Train the VAE on rollout shards: `python -m train.vae --data data/rollouts --out runs/vae` (`VAEConfig`).

Loss per image, batch-averaged (the paper's): summed squared reconstruction error plus the
KL to N(0, I), clamped below at kl_tolerance·latent_dim (free bits: 0.5·32 = 16 nats).
Whole rollouts are held out (`train.split`); the rest stream through a resumable shuffle
(`FrameStream`). The loop is `train.loop.fit`: every --ckpt-every steps the state is
checkpointed atomically; rerunning the same command resumes and continues exactly as an
uninterrupted run (a checkpoint made with other --latent-dim/--batch-size/--seed/--holdout/
--kl-tolerance is refused). A NaN/inf loss stops the run with an error, keeping the last good
checkpoint. Every --eval-every steps (and at the end) the held-out reconstruction MSE per pixel
goes to OUT/metrics.json and a grid of held-out frames above their reconstructions to
OUT/recon.png. The run's config is OUT/run_config.json (its "holdout" and "seed" define the
split later stages reuse); the finished VAE is OUT/vae.msgpack + OUT/vae_config.json
(`train.vae_run`).
"""

from __future__ import annotations

import dataclasses
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
from dreamenv.vae import VAE, init_vae, jit_options
from train.config import check_resume, cli, require, require_dir, save_config, to_json
from train.devices import batch_parallel
from train.loop import LoopConfig, Trainer, fit, write_metrics
from train.split import split_rollouts
from train.trainstate import TrainCheckpoint
from train.vae_run import save_vae_run

FRAME_BYTES = 64 * 64 * 3
LOG_EVERY = 10  # steps between loss checks (a host sync) and progress-bar updates
# Settings a resumed run must share with the checkpoint (shapes, data order, randomness).
RESUME_KEYS = ("latent_dim", "batch_size", "seed", "holdout", "kl_tolerance")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Train (or resume) the VAE on rollout shards, holding out whole rollouts."""

    data: Path = Path("data/rollouts")
    """rollout shard folder (train.collect --out)"""
    out: Path = Path("runs/vae")
    """run folder: checkpoints, run_config.json, metrics.json, recon.png, vae.msgpack"""
    steps: int = 20_000
    """total training steps"""
    batch_size: int = 64
    """frames per step"""
    lr: float = 1e-3
    """Adam learning rate"""
    latent_dim: int = 32
    """size of the latent z"""
    kl_tolerance: float = 0.5
    """free bits per latent dim"""
    holdout: float = 0.1
    """fraction of rollouts held out (later stages reuse this split)"""
    eval_every: int = 2000
    """steps between held-out evaluations"""
    eval_frames: int = 1024
    """held-out frames evaluated"""
    ckpt_every: int = 500
    """steps between checkpoints"""
    memory_gb: float = 4.0
    """frames kept in RAM; less than the data set means shuffling a group of shards at a time"""
    seed: int = 0
    """seed of the init, the noise, the data order and the held-out split"""

    def __post_init__(self):
        pos = ">= 1"
        require(self, steps=(self.steps >= 1, pos), batch_size=(self.batch_size >= 1, pos),
                lr=(self.lr > 0, "> 0"), latent_dim=(self.latent_dim >= 1, pos),
                kl_tolerance=(self.kl_tolerance >= 0, ">= 0"), holdout=(0 < self.holdout < 1, "in (0, 1)"),
                eval_every=(self.eval_every >= 1, pos), eval_frames=(self.eval_frames >= 1, pos),
                ckpt_every=(self.ckpt_every >= 1, pos), memory_gb=(self.memory_gb > 0, "> 0"),
                seed=(self.seed >= 0, ">= 0"))


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
    would. On several devices the frames are split over them, params and Adam state replicated
    (`train.devices.batch_parallel`); on one it is the plain jitted step. Cached: reruns in one
    process reuse the compile. (Donating params and opt_state made the step 2-5% slower on CPU.)
    """
    optimizer = optax.adam(lr)

    def step_fn(params, opt_state, key, step, frames):
        grad_fn = jax.value_and_grad(partial(vae_loss, model), has_aux=True)
        (loss, terms), grads = grad_fn(params, frames, jax.random.fold_in(key, step), kl_tolerance)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **terms}

    return batch_parallel(step_fn, batch_arg=4, compiler_options=jit_options())


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


class VAETrainer(Trainer):
    """One VAE run for `train.loop.fit`: params, Adam state, the (fixed) key and the frame stream.

    Step s's noise is fold_in(key, s) and its batch the stream's next, so a run restored from a
    checkpoint (stream position included) continues as an uninterrupted one would.
    """

    def __init__(self, config: VAEConfig, model: VAE, params, key, train_paths: list[Path], held: np.ndarray,
                 group_shards: int):
        self.config, self.model, self.train_paths, self.held = config, model, train_paths, held
        self.params, self.opt_state = params, optax.adam(config.lr).init(params)
        self.key, self.step = key, 0
        self.stream = FrameStream(train_paths, config.batch_size, config.seed, group_shards)
        self._train_step = make_train_step(model, config.lr, config.kl_tolerance)
        self._evaluate = make_evaluate(model)
        self._timer: tuple[float, int] | None = None  # (time, step) where images_per_second counts from

    def state(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state, "step": self.step,
                "key": jax.random.key_data(self.key),
                "data": {**self.stream.state_dict(), "group_shards": self.stream.group_shards}}

    def load(self, state: dict) -> None:
        self.params, self.opt_state = jax.device_put((state["params"], state["opt_state"]))
        self.key, self.step = jax.random.wrap_key_data(jnp.asarray(state["key"])), int(state["step"])
        self.stream = FrameStream(self.train_paths, self.config.batch_size, self.config.seed,
                                  int(state["data"]["group_shards"]))
        self.stream.load_state_dict(state["data"])

    def update(self, step: int) -> dict:
        if self._timer is None:
            self._timer = (time.perf_counter(), step)
        frames = to_float(self.stream.next_batch())
        self.params, self.opt_state, terms = self._train_step(self.params, self.opt_state, self.key, step, frames)
        self.step = step + 1
        return terms

    def heldout(self) -> float:
        """Held-out MSE per pixel; writes OUT/recon.png."""
        mse, png = self._evaluate(self.params, self.held)
        atomic_write_bytes(self.config.out / "recon.png", png)
        return mse

    def evaluate(self, step: int) -> dict:
        # fit has read this step's loss (a host sync), so the updates so far are done
        started, first = self._timer or (time.perf_counter(), step)
        speed = (step - first) * self.config.batch_size / max(time.perf_counter() - started, 1e-9)
        record = {"heldout_mse_per_pixel": self.heldout(), "images_per_second": speed}
        self._timer = (time.perf_counter(), step)
        return record


def record_config(config: VAEConfig) -> None:
    """Refuse to resume a checkpoint in config.out made with different RESUME_KEYS; then record
    the run's config in OUT/run_config.json."""
    path = config.out / "run_config.json"
    if TrainCheckpoint(config.out / "checkpoint").steps():
        check_resume(config, RESUME_KEYS, path)
    config.out.mkdir(parents=True, exist_ok=True)
    save_config(path, config)


def run(config: VAEConfig) -> dict:
    """Train (or resume) the run in config.out and write the finished VAE. -> the last metrics record."""
    require_dir(config, data=config.data)
    paths = list_shards(config.data)
    train_paths, held_paths = split_rollouts(paths, config.holdout, config.seed)
    if not train_paths or not held_paths:
        raise SystemExit(f"train/vae.py: {config.data} has {len(paths)} shards; need at least 2 "
                         f"(one to train on, one held out); run `python -m train.collect`")
    record_config(config)
    model = VAE(latent_dim=config.latent_dim)
    k_init, key = jax.random.split(jax.random.key(config.seed))
    params = init_vae(model, k_init)
    shard_frames = len(load_shard(train_paths[0])["obs"])  # to size the groups in RAM
    group = int(config.memory_gb * 2**30 // (shard_frames * FRAME_BYTES))
    held = heldout_frames(held_paths, config.eval_frames)
    trainer = VAETrainer(config, model, params, key, train_paths, held, group)
    info = {"train_rollouts": len(train_paths), "heldout_rollouts": len(held_paths),
            "heldout_frames": len(held), "config": to_json(config)}
    loop = LoopConfig(steps=config.steps, ckpt_every=config.ckpt_every, eval_every=config.eval_every,
                      log_every=LOG_EVERY)
    history = fit(trainer, config.out, loop, name="vae", info=info)
    if not history or history[-1]["step"] != trainer.step:  # rerun of a finished run: refresh outputs
        history.append({"step": trainer.step, "heldout_mse_per_pixel": trainer.heldout()})
        write_metrics(config.out, info, history)
    save_vae_run(config.out, model, trainer.params)
    return history[-1]


def main(argv=None) -> int:
    final = run(cli(VAEConfig, argv, prog="python -m train.vae"))
    print(json.dumps(final, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
