"""The world model run against real rollouts: teacher-forced and open-loop unrolls, jitted.

    warm, tf = teacher_forced(model, z, action, start_rollout, start_t)
    mean, sampled = open_loop(model, warm, z0, actions, targets, key, temperature, samples)

Indexing follows the shards: action a_t is taken after frame t, so the cell on (z_t, a_t) predicts
z_{t+1}, the reward r_t and terminated_t. A start s is warmed up teacher-forced on the real
(z_0, a_0) … (z_{s-1}, a_{s-1}) from a zero carry (as the dream starts); open-loop, it is then fed
the real z_s and the real actions a_s … a_{s+H-1}, and its own predictions in place of z. The
sampled dream is `world_model.step` itself; the deterministic dream feeds back the mixture mean.
Teacher-forced, the memory reads the real latents as LatentCarRacing-v0's does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from dreamenv import world_model as wm
from dreamenv.mixture import mdn_log_prob, mdn_mean


def _prediction(head):
    """The deterministic prediction of z_{t+1}: the mixture mean, clipped as the dream clips. [B, D]"""
    return jnp.clip(mdn_mean(head["log_pi"], head["mu"]), -wm.LATENT_BOUND, wm.LATENT_BOUND)


def _time_major(x):
    return jnp.swapaxes(x, 0, 1)


@jax.jit
def teacher_forced(model: wm.WorldModel, z, action, start_rollout, start_t):
    """One unroll of every rollout on its real latents, capturing the carry at each start.

    z: [R, T, D] real latents, action: [R, T, 3] (zero-padded past a rollout's end);
    start_rollout, start_t: [N] int. -> (warm carry (c, h) [N, Hid] before consuming z_s,
    dict of [R, T] per step t: pred [R, T, D] (of z_{t+1}), log_prob (of the real z_{t+1}; the
    last step's target is padding), reward, done_logit).
    """
    rollouts, n = z.shape[0], start_t.shape[0]
    target = jnp.concatenate([z[:, 1:], z[:, -1:]], axis=1)  # [R, T, D]: z_{t+1}

    def body(state, x):
        carry, warm = state
        t, z_t, a_t, z_next = x
        hit = (start_t == t)[:, None]  # [N, 1]
        warm = tuple(jnp.where(hit, c[start_rollout], w) for c, w in zip(carry, warm))
        carry, head = wm.memory_step(model, carry, z_t, a_t)
        out = dict(
            pred=_prediction(head),
            log_prob=mdn_log_prob(head["log_pi"], head["mu"], head["log_sigma"], z_next),
            reward=head["reward"],
            done_logit=head["done_logit"],
        )
        return (carry, warm), out

    init = (model.mdnrnn.initial_carry(rollouts), model.mdnrnn.initial_carry(n))
    xs = (jnp.arange(z.shape[1]), _time_major(z), _time_major(action), _time_major(target))
    (_, warm), out = jax.lax.scan(body, init, xs)
    return warm, jax.tree_util.tree_map(_time_major, out)


@partial(jax.jit, static_argnames=("samples",))
def open_loop(model: wm.WorldModel, warm, z0, actions, targets, key, temperature, samples: int):
    """Dream H steps from each start on the real actions, deterministically and sampled.

    warm: carry (c, h) [N, Hid]; z0: [N, D] real z_s; actions: [N, H, 3] real a_s … a_{s+H-1};
    targets: [N, H, D] real z_{s+1} … z_{s+H} (scored only, never fed in).
    -> (mean: dict z [N, H, D], log_prob [N, H] of the targets, reward [N, H], done_logit [N, H];
        sampled: dict z [S, N, H, D], reward [S, N, H], terminated [S, N, H]) at temperature τ.
    """
    actions_t, targets_t = _time_major(actions), _time_major(targets)

    def mean_body(state, x):
        carry, z = state
        action, target = x
        carry, head = wm.memory_step(model, carry, z, action)  # a dream: its own outputs
        z = _prediction(head)
        log_prob = mdn_log_prob(head["log_pi"], head["mu"], head["log_sigma"], target)
        return (carry, z), dict(z=z, log_prob=log_prob, reward=head["reward"], done_logit=head["done_logit"])

    _, mean = jax.lax.scan(mean_body, (warm, z0), (actions_t, targets_t))

    def dream(k):
        state = wm.start_state(model, z0).replace(carry=warm)

        def body(state, x):
            action, k_step = x
            state, z, reward, terminated = wm.step(model, state, action, k_step, temperature, obs="z")
            return state, dict(z=z, reward=reward, terminated=terminated)

        _, out = jax.lax.scan(body, state, (actions_t, jax.random.split(k, actions.shape[1])))
        return jax.tree_util.tree_map(_time_major, out)  # [N, H, ...]

    sampled = jax.vmap(dream)(jax.random.split(key, samples))
    return jax.tree_util.tree_map(_time_major, mean), sampled
