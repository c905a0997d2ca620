"""Data parallelism over this machine's devices for the train steps (train.vae, train.mdnrnn).

    step = batch_parallel(step_fn, batch_arg=4)       # the VAE: the batch is an argument
    mesh = data_mesh(batch_size)                       # the MDN-RNN: it samples its batch inside,
    window = constrain_batch(window, mesh)             #   then splits it over the mesh

`data_mesh(B)` is a 1-D mesh, axis "data", over the first k of `jax.devices()`, k the most devices
that divide B; None when k is 1. The batch is split over "data" (`NamedSharding(mesh, P("data"))`)
and everything else, params and optimizer state included, is replicated (`P()`), so each device
runs its slice and XLA all-reduces the gradients: the single-device update up to float
reassociation (random draws are the same, JAX's threefry being partitionable). With one device
nothing here applies a sharding: the step is exactly the plain `jax.jit` one.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


@functools.cache
def data_mesh(batch_size: int) -> Mesh | None:
    """The data mesh for batches of `batch_size` (None: one device would hold it all)."""
    devices = jax.devices()
    k = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    return None if k == 1 else Mesh(np.array(devices[:k]), (AXIS,))


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """Every device of `mesh` holds the whole array (None: no mesh, no sharding)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def constrain_batch(tree, mesh: Mesh | None):
    """Inside a jitted function: split the leading axis of every array in `tree` over `mesh`
    (unchanged for None)."""
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def replicated_jit(fn, mesh: Mesh | None, **jit_kwargs):
    """jax.jit(fn) with all inputs and outputs replicated over `mesh`, inputs put there first
    (a no-op for arrays already there); exactly jax.jit(fn, **jit_kwargs) for None."""
    if mesh is None:
        return jax.jit(fn, **jit_kwargs)
    rep = replicated(mesh)
    jitted = jax.jit(fn, in_shardings=rep, out_shardings=rep, **jit_kwargs)
    return lambda *args: jitted(*jax.device_put(args, rep))


def batch_parallel(step_fn, batch_arg: int, **jit_kwargs):
    """jax.jit(step_fn, **jit_kwargs), and on more than one device: argument `batch_arg` (an array
    [B, ...]) split over `data_mesh(B)`, the other arguments and the outputs replicated."""
    plain = jax.jit(step_fn, **jit_kwargs)
    if jax.device_count() == 1:
        return plain
    compiled: dict[Mesh, object] = {}

    def step(*args):
        mesh = data_mesh(len(args[batch_arg]))
        if mesh is None:
            return plain(*args)
        if mesh not in compiled:
            shardings = [replicated(mesh)] * len(args)
            shardings[batch_arg] = batch_sharded(mesh)
            compiled[mesh] = (jax.jit(step_fn, in_shardings=tuple(shardings), out_shardings=replicated(mesh),
                                      **jit_kwargs), shardings)
        jitted, shardings = compiled[mesh]
        return jitted(*(jax.device_put(a, s) for a, s in zip(args, shardings)))

    return step
