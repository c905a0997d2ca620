"""The VAE and MDN-RNN train steps on 2 forced host devices (train/devices.py) match 1 device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

STEPS, LR = 2, 1e-3
# STEPS steps of each trainer's own step function on tiny models and random data -> OUT (.npz):
# "{vae|mdnrnn}/{params|opt|terms}/{leaf path}" and how many devices the results live on.
SCRIPT = """
import sys
import jax, numpy as np, optax
from dreamenv.mdnrnn import MDNRNN
from dreamenv.vae import VAE, init_vae
from train import mdnrnn
from train.latents import LatentSet
from train.vae import make_train_step

out, rng, result = sys.argv[1], np.random.default_rng(0), {"devices": jax.device_count()}
steps, lr = int(sys.argv[2]), float(sys.argv[3])


def record(name, params, opt_state, terms):
    result[name + "_devices"] = len(jax.tree_util.tree_leaves(params)[0].sharding.device_set)
    for part, tree in (("params", params), ("opt", opt_state), ("terms", terms)):
        result.update({f"{name}/{part}/{jax.tree_util.keystr(k)}": v
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]})


vae = VAE(latent_dim=8)
params = init_vae(vae, jax.random.key(0))
opt_state, step, key = optax.adam(lr).init(params), make_train_step(vae, lr, 0.5), jax.random.key(1)
for i in range(steps):
    params, opt_state, terms = step(params, opt_state, key, i, rng.random((8, 64, 64, 3), np.float32))
record("vae", params, opt_state, terms)

config = mdnrnn.MDNRNNConfig(batch_size=8, seq_len=6, hidden_size=16, mixtures=3, steps=10, lr=lr)
model = MDNRNN(latent_dim=8, action_dim=3, hidden_size=16, num_mixtures=3)
n, t = 4, 20
latents = LatentSet(mu=rng.normal(size=(n, t, 8)).astype(np.float32),
                    logvar=rng.normal(-2, 0.3, (n, t, 8)).astype(np.float32),
                    action=rng.uniform(0, 1, (n, t, 3)).astype(np.float32),
                    reward=rng.normal(size=(n, t)).astype(np.float32), done=rng.random((n, t)) < 0.05,
                    length=np.array([20, 15, 12, 20], np.int32), names=list("abcd"),
                    policies=["ou"] * n)
params = model.init(jax.random.key(2), model.initial_carry(1), np.zeros((1, 1, 8)), np.zeros((1, 1, 3)))
opt = mdnrnn.optimizer(config)
opt_state, update = opt.init(params), mdnrnn.make_update(model, opt, config, 5.0)
data = mdnrnn.device_data(latents, config.seq_len, config.batch_size)
for i in range(steps):
    params, opt_state, terms = update(params, opt_state, data, jax.random.key(10 + i))
record("mdnrnn", params, opt_state, terms)
np.savez(out, **{str(k): np.asarray(v) for k, v in result.items()})
"""


def test_sharded_train_steps_match_one_device(tmp_path):
    """The losses match to 1e-5 and Adam's moments (the gradients) to 1e-3 of each leaf's scale.
    Params after Adam only to its step bound: a gradient within float noise of 0 may change sign
    (VAE kernels have such), and Adam then moves that weight by -lr instead of +lr."""
    runs = {}
    for count in (1, 2):  # both at once: each is mostly JAX's start-up and compiles
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        out = tmp_path / f"{count}.npz"
        runs[count] = (out, subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(STEPS), str(LR)], cwd=ROOT,
                                             env=env, stderr=subprocess.PIPE, text=True))
    for out, process in runs.values():
        assert process.wait(timeout=300) == 0, process.stderr.read()
    one, two = (dict(np.load(runs[c][0])) for c in (1, 2))
    assert [int(one[k]) for k in ("devices", "vae_devices", "mdnrnn_devices")] == [1, 1, 1]
    assert [int(two[k]) for k in ("devices", "vae_devices", "mdnrnn_devices")] == [2, 2, 2]
    assert one.keys() == two.keys() and len(one) > 20
    for key in (k for k in one if not k.endswith("devices")):
        part, scale = key.split("/")[1], float(np.abs(one[key]).max())
        atol = {"terms": 1e-5 * scale, "opt": 1e-3 * scale, "params": 2 * LR * STEPS}[part]
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=atol, err_msg=key)
    big = {k: np.abs(two[k] - one[k]).max() / np.abs(one[k]).max() for k in one if "/params/" in k}
    assert np.median(list(big.values())) < 1e-3, big  # most leaves far inside the bound
