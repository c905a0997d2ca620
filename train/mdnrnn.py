"""Train the MDN-RNN on encoded rollouts: `python -m train.mdnrnn` (`MDNRNNConfig`).

Reads the latent folder written by `python -m train.encode`, holds out whole rollouts (the
same split as the VAE), trains with Adam (lr decaying from --lr to --lr-end, gradients
clipped at global norm 1) on random windows of --seq-len steps, evaluates the held-out
rollouts every --eval-every steps (OUT/metrics.json), checkpoints atomically every --ckpt-every
steps and resumes when rerun (`train.loop.fit`). A NaN/inf loss stops with an error; the last
good checkpoint stays. At the end it writes the model bundle (VAE + MDN-RNN + start latents +
metrics) to --bundle (default OUT/bundle). --init BUNDLE fine-tunes that bundle's MDN-RNN.

Training latents are sampled afresh, z ~ N(mu, σ²), as the paper does (--z-noise 1): the dream
feeds the memory its own samples, so it must learn from inputs that noisy. A share
--start-fraction of the windows begin at an episode's first step, where every dream begins.

Rollouts driven by a privileged policy (`train.policies.PRIVILEGED`: the scripted track followers,
which read the simulator's track) are left out of training unless --privileged-data: their
actions tell what the road ahead does, so a model trained on them learns that the road follows
the car and pays any fixed control (docs/RESULTS.md, "Privileged data"). The held-out rollouts
keep every policy.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamenv.checkpoint import Bundle, load_bundle, module_config, save_bundle
from dreamenv.mdnrnn import MDNRNN
from train.config import cli, require, require_dir, save_config
from train.devices import constrain_batch, data_mesh, replicated, replicated_jit
from train.latents import LatentSet, read_policy, vae_fingerprint
from train.loop import LoopConfig, Trainer, fit
from train.mdnrnn_loss import evaluate, gather_windows, sample_windows, window_loss
from train.policies import PRIVILEGED
from train.split import split_rollouts
from train.vae_run import load_vae_config, load_vae_run


@dataclasses.dataclass(frozen=True)
class MDNRNNConfig:
    """Train (or fine-tune) the MDN-RNN on encoded rollouts and write the world-model bundle."""

    latents: Path = Path("data/latents")
    """latent folder (train.encode --out)"""
    vae: Path = Path("runs/vae")
    """VAE run folder (train.vae --out)"""
    out: Path = Path("runs/mdnrnn")
    """run folder: checkpoints, metrics.json"""
    bundle: Path | None = None
    """where to write the bundle (default OUT/bundle)"""
    init: Path | None = None
    """bundle whose MDN-RNN starts this run (fine-tuning; same sizes and VAE required)"""
    steps: int = 20_000
    batch_size: int = 64
    seq_len: int = 32
    lr: float = 1e-3
    lr_end: float = 1e-4
    hidden_size: int = 256
    mixtures: int = 5
    sigma_min: float = 0.01
    z_noise: float = 1.0
    """scale of the posterior noise in training latents (1: z ~ N(mu, σ²), the paper's; 0: means)"""
    start_fraction: float = 0.0
    """share of training windows that begin at an episode's first step (where dreams begin)"""
    privileged_data: bool = False
    """also train on rollouts of privileged policies (track followers); off: they confound action
    and road (docs/RESULTS.md, "Privileged data")"""
    reward_weight: float = 1.0
    done_weight: float = 1.0
    eval_every: int = 2000
    ckpt_every: int = 1000
    seed: int = 0
    bundle_dtype: Literal["float32", "float16"] = "float32"
    """float32 or float16 (half the size)"""

    def __post_init__(self):
        pos = ">= 1"
        require(self, steps=(self.steps >= 1, pos), batch_size=(self.batch_size >= 1, pos),
                seq_len=(self.seq_len >= 1, pos), lr=(self.lr > 0, "> 0"), lr_end=(0 < self.lr_end <= self.lr, "in (0, lr]"),
                hidden_size=(self.hidden_size >= 1, pos), mixtures=(self.mixtures >= 1, pos),
                sigma_min=(self.sigma_min > 0, "> 0"), z_noise=(self.z_noise >= 0, ">= 0"),
                start_fraction=(0 <= self.start_fraction <= 1, "in [0, 1]"), eval_every=(self.eval_every >= 1, pos),
                ckpt_every=(self.ckpt_every >= 1, pos))

    @property
    def bundle_path(self) -> Path:
        return self.bundle or self.out / "bundle"


def load_split(latents: Path, vae_run: Path, fingerprint: str,
               privileged_data: bool = False) -> tuple[LatentSet, LatentSet]:
    """Train and held-out latent rollouts, split exactly as the VAE run split its shards; the train
    side leaves out privileged policies' rollouts unless `privileged_data`. SystemExit if none is left."""
    paths = sorted(latents.glob("rollout_*.npz"))
    if not paths:
        raise SystemExit(f"no latent files in {latents}; run `python -m train.encode` first")
    vae_args = json.loads((vae_run / "run_config.json").read_text())
    train_paths, held_paths = split_rollouts(paths, vae_args["holdout"], vae_args["seed"])
    if not privileged_data:
        train_paths = [p for p in train_paths if read_policy(p) not in PRIVILEGED]
        if not train_paths:
            raise SystemExit(f"{latents}: every training rollout was driven by a privileged policy "
                             f"{sorted(PRIVILEGED)}; collect others (train/policies.py) or pass --privileged-data")
    return LatentSet.from_files(train_paths, fingerprint), LatentSet.from_files(held_paths, fingerprint)


def init_from(path: Path, model: MDNRNN, fingerprint: str):
    """The MDN-RNN params of bundle `path`, checked to fit `model` and the current VAE."""
    bundle = load_bundle(path)
    if module_config(bundle.mdnrnn) != module_config(model):
        raise SystemExit(f"--init {path}: its MDN-RNN is {module_config(bundle.mdnrnn)}, this run builds "
                         f"{module_config(model)}; pass matching --hidden-size/--mixtures")
    if bundle.metadata.get("vae_fingerprint") != fingerprint:
        raise SystemExit(f"--init {path}: its MDN-RNN was trained on another VAE's latents than --vae's; "
                         f"fine-tune only on latents of the VAE it was trained with")
    return jax.tree_util.tree_map(jnp.asarray, bundle.mdnrnn_params)


def optimizer(args: MDNRNNConfig):
    """Adam with clipped gradients and a cosine-decayed lr."""
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=args.lr_end / args.lr)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def done_pos_weight(data: LatentSet) -> float:
    """Terminal steps are rare: weight them by negatives/positives (capped at 1000)."""
    pos = int(data.done.sum())
    return float(np.clip((data.steps - pos) / max(pos, 1), 1.0, 1000.0))


def make_update(model: MDNRNN, opt, args: MDNRNNConfig, pos_weight: float):
    """-> jitted update(params, opt_state, data, key) -> (params, opt_state, terms). On several
    devices the sampled windows are split over `data_mesh(batch_size)`, the rest replicated
    (`train.devices`; `device_data` replicates the data); on one it is the plain jitted update."""
    mesh = data_mesh(args.batch_size)

    def update(params, opt_state, data, key):
        k_win, k_z = jax.random.split(key)
        rollout, start = sample_windows(k_win, data["length"], args.batch_size, args.seq_len, args.start_fraction)
        window = constrain_batch(gather_windows(data, rollout, start, args.seq_len), mesh)
        grad_fn = jax.value_and_grad(window_loss, argnums=1, has_aux=True)
        (_, terms), grads = grad_fn(model, params, window, k_z, pos_weight, args.reward_weight, args.done_weight,
                                     args.z_noise)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return replicated_jit(update, mesh, donate_argnums=(0, 1))


def device_data(data: LatentSet, seq_len: int, batch_size: int | None = None) -> dict:
    """Padded arrays on device (on each device of `data_mesh(batch_size)`), with seq_len + 1
    extra zero steps so every window slices."""
    pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], seq_len + 1, *x.shape[2:]), x.dtype)], 1)
    arrays = {k: pad(getattr(data, k)) for k in ("mu", "logvar", "action", "reward", "done")}
    mesh = None if batch_size is None else data_mesh(batch_size)
    return jax.device_put({**arrays, "length": data.length}, replicated(mesh))


def start_latents(data: LatentSet) -> np.ndarray:
    """The first encoded frame of each training rollout: [N, D].

    The dream starts where LatentCarRacing-v0 (the real game) does, at the frame reset() returns,
    zoom-in included, so an agent meets the same first ~50 steps in both.
    """
    return data.mu[:, 0].astype(np.float32)


def scalars(metrics: dict) -> dict:
    """The metrics that are numbers (what a bundle's flat metadata keeps)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


class MDNRNNTrainer(Trainer):
    """One MDN-RNN run for `train.loop.fit`: params, Adam state and the key chain on the device."""

    def __init__(self, config: MDNRNNConfig, model: MDNRNN, params, train_set: LatentSet, held: LatentSet, key):
        self.config, self.model, self.held = config, model, held
        self.opt = optimizer(config)
        self.params, self.opt_state, self.key, self.step = params, self.opt.init(params), key, 0
        self.data = device_data(train_set, config.seq_len, config.batch_size)
        self._update = make_update(model, self.opt, config, done_pos_weight(train_set))

    def state(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state, "step": self.step,
                "key": jax.random.key_data(self.key)}

    def load(self, state: dict) -> None:
        self.params, self.opt_state = jax.device_put((state["params"], state["opt_state"]))
        self.key, self.step = jax.random.wrap_key_data(jnp.asarray(state["key"])), int(state["step"])

    def update(self, step: int) -> dict:
        self.key, k_step = jax.random.split(self.key)
        self.params, self.opt_state, terms = self._update(self.params, self.opt_state, self.data,
                                                          jax.random.fold_in(k_step, step))
        self.step = step + 1
        return terms

    def evaluate(self, step: int) -> dict:
        return {"heldout": evaluate(self.model, self.params, self.held)}


def train(config: MDNRNNConfig) -> dict:
    """Train (or resume) the run in config.out and write its bundle. -> the last metrics record."""
    require_dir(config, latents=config.latents, vae=config.vae)
    vae, vae_params = load_vae_run(config.vae)
    _, frames = load_vae_config(config.vae)
    fingerprint = vae_fingerprint(vae, vae_params)
    train_set, held = load_split(config.latents, config.vae, fingerprint, config.privileged_data)
    left_out = len(list(config.latents.glob("rollout_*.npz"))) - len(train_set.length) - len(held.length)
    model = MDNRNN(latent_dim=train_set.mu.shape[-1], action_dim=train_set.action.shape[-1],
                   hidden_size=config.hidden_size, num_mixtures=config.mixtures, sigma_min=config.sigma_min)
    k_init, key = jax.random.split(jax.random.key(config.seed))
    z0 = jnp.zeros((1, 1, model.latent_dim))
    params = model.init(k_init, model.initial_carry(1), z0, jnp.zeros((1, 1, model.action_dim)))
    if config.init is not None:
        params = init_from(config.init, model, fingerprint)
    metrics_path, bundle_path = config.out / "metrics.json", config.bundle_path
    history = json.loads(metrics_path.read_text())["history"] if metrics_path.exists() else []
    if history and history[-1]["step"] >= config.steps and (bundle_path / "config.json").is_file():
        print(f"train/mdnrnn.py: {config.out} finished {config.steps} steps and wrote {bundle_path}; nothing to do")
        return history[-1]  # the bundle stays as written: rollouts added since then are not its data
    config.out.mkdir(parents=True, exist_ok=True)
    save_config(config.out / "run_config.json", config)
    trainer = MDNRNNTrainer(config, model, params, train_set, held, key)
    loop = LoopConfig(steps=config.steps, ckpt_every=config.ckpt_every, eval_every=config.eval_every)
    final = fit(trainer, config.out, loop, name="mdnrnn")[-1]
    bundle = Bundle(
        vae=vae, mdnrnn=model, frames=frames, vae_params=vae_params,
        mdnrnn_params=jax.device_get(trainer.params), start_latents=start_latents(train_set),
        metadata={"trained": True, "vae_fingerprint": fingerprint,
                  "train_rollouts": len(train_set.length), "train_steps": train_set.steps,
                  "heldout_rollouts": len(held.length), "left_out_rollouts": left_out,
                  "train_policies": dict(collections.Counter(train_set.policies)),
                  "mdnrnn_metrics": scalars(final["heldout"]),
                  "init": config.init and str(config.init)},
    )
    save_bundle(bundle_path, bundle, dtype=config.bundle_dtype)
    return final


def main(argv=None) -> int:
    final = train(cli(MDNRNNConfig, argv, prog="python -m train.mdnrnn"))
    print(json.dumps(final["heldout"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
