"""Shared fixtures for the environment tests: tiny random world models and a JAX trace counter."""

import collections
import dataclasses

import jax
import numpy as np
import pytest

from dreamenv.checkpoint import random_bundle, save_bundle
from dreamenv.mdnrnn import MDNRNN, head_layout
from dreamenv.shards import shard_name, write_shard
from dreamenv.vae import VAE

TINY = dict(vae=VAE(latent_dim=8), mdnrnn=MDNRNN(latent_dim=8, hidden_size=16, num_mixtures=3))


def tiny_bundle(seed=0, done_bias=None):
    """A random tiny bundle; done_bias (e.g. -20 / +20) makes episodes never / always terminate."""
    bundle = random_bundle(jax.random.key(seed), n_start=5, **TINY)
    if done_bias is not None:
        params = jax.tree_util.tree_map(np.array, bundle.mdnrnn_params)
        done = head_layout(bundle.mdnrnn.num_mixtures, bundle.mdnrnn.latent_dim)["done"]
        params["params"]["cell"]["head"]["out"]["bias"][done] = done_bias
        bundle = dataclasses.replace(bundle, mdnrnn_params=params)
    return bundle


def write_shards(folder, lengths=(12, 12, 12), seed=0, terminal=True, policies=None):
    """Random-frame shards; the first one ends terminated (when `terminal`); `policies` [R] go in the meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(lengths):
        episode = {
            "obs": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
            "action": rng.uniform([-1, 0, 0], [1, 1, 1], (n, 3)).astype(np.float32),
            "reward": rng.normal(size=n).astype(np.float32),
            "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool),
        }
        episode["terminated" if terminal and i == 0 else "truncated"][-1] = True
        write_shard(folder / shard_name(i), episode, {"episode": i, **({"policy": policies[i]} if policies else {})})
    return folder


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory):
    """A saved tiny bundle whose done head fires on ~10% of steps."""
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny", tiny_bundle(done_bias=-0.15))


@pytest.fixture(scope="session")
def endless_path(tmp_path_factory):
    """A saved tiny bundle that never terminates (episodes end by the time limit)."""
    return save_bundle(tmp_path_factory.mktemp("bundles") / "endless", tiny_bundle(done_bias=-20.0))


@pytest.fixture
def traces():
    """Counts JAX traces by function name while the test runs."""
    counts = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            counts[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield counts
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def one_torch_thread():
    """Torch's thread pool and XLA's fight over 2 cores: a tiny MLP then takes 10 ms a call."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
